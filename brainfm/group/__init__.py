"""Group level: aggregate participant-level outputs, brain-age gap, bias correction, metrics.

Plain functions over tables (no workflow engine): :mod:`~brainfm.group.collect` reads the output
dataset, :mod:`~brainfm.group.brainage` computes the brain-age gap and its bias correction,
:mod:`~brainfm.group.metrics` the accuracy metrics. :func:`brainfm.bidsapp.group.run_group_level`
puts them together and writes the group outputs.
"""

from brainfm.group.brainage import (
    BIAS_METHODS,
    apply_bias_correction,
    brain_age_gap,
    cross_validated_bias_correction,
    fit_bias_correction,
)
from brainfm.group.collect import (
    ExpertWeights,
    find_prediction_files,
    read_expert_weights,
    read_participants,
    read_predictions,
    read_run_qc,
)
from brainfm.group.metrics import pearson_r, regression_metrics

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
