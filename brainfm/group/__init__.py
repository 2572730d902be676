"""Group level: aggregate participant-level outputs, brain-age gap, bias correction, metrics.

Plain functions over tables (no workflow engine): :mod:`~brainfm.group.read_outputs` reads the
output dataset, :mod:`~brainfm.group.brainage` computes the brain-age gap and its bias correction,
:mod:`~brainfm.group.metrics` the accuracy metrics, :mod:`~brainfm.group.table` merges them into
the group table; :mod:`~brainfm.group.models` checks that one model made the predictions,
:mod:`~brainfm.group.left_out` names the participants without one,
:mod:`~brainfm.group.age_ranges` and :mod:`~brainfm.group.age_accuracy` give the accuracy per age
band and against the model's training range; :mod:`~brainfm.group.result` computes everything
in memory
(:func:`~brainfm.group.result.compute_group`); :func:`brainfm.bidsapp.group.run_group_level`
writes the group outputs.
"""

from brainfm.group.brainage import (
    BIAS_METHODS,
    apply_bias_correction,
    brain_age_gap,
    cross_validated_bias_correction,
    fit_bias_correction,
)
from brainfm.group.experts import ExpertWeights, read_expert_weights
from brainfm.group.metrics import pearson_r, regression_metrics
from brainfm.group.participants import read_participants
from brainfm.group.read_outputs import find_prediction_files, read_predictions, read_run_qc

__all__ = [
    "BIAS_METHODS",
    "ExpertWeights",
    "apply_bias_correction",
    "brain_age_gap",
    "cross_validated_bias_correction",
    "find_prediction_files",
    "fit_bias_correction",
    "pearson_r",
    "read_expert_weights",
    "read_participants",
    "read_predictions",
    "read_run_qc",
    "regression_metrics",
]
