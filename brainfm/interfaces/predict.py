"""Nipype interface: predict a participant's targets (age, fluid intelligence) per session."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from brainfm.derivatives import build_name, subject_func_dir
from brainfm.errors import InputError
from brainfm.fileio import read_tsv, write_json_atomic, write_tsv_atomic


def model_card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The parts of a model card worth repeating in every predictions sidecar.

    Parameters
    ----------
    card : dict
        A model card (``model_card.json``).

    Returns
    -------
    dict
        ``Name``, ``License``, ``Terms``, atlas, denoising, targets and their labels, training
        cohort, ``OutOfSiteAccuracy`` (the card's ``metrics.leave_site_out_summary``), network
        weights and the training and reliable ranges.
    """
    training = card.get("training") or {}
    return {
        "Name": card.get("name"),
        "License": card.get("license"),
        "Terms": card.get("terms"),
        "Atlas": card.get("atlas"),
        "DenoisingStrategy": card.get("denoising_strategy"),
        "Targets": [t.get("name") for t in card.get("targets") or []],
        "TargetColumns": {t.get("name"): t.get("column") for t in card.get("targets") or []},
        "TargetLabels": {t.get("name"): t.get("label") or t.get("name")
                         for t in card.get("targets") or []},
        "TrainingCohort": training.get("cohort"),
        "TrainingSubjects": training.get("n_subjects"),
        "Window": card.get("window"),
        "SamplingRateHz": card.get("sampling_rate_hz"),
        "BrainfmVersion": card.get("brainfm_version"),
        "OutOfSiteAccuracy": (card.get("metrics") or {}).get("leave_site_out_summary"),
        "NetworkWeights": network_weights(card),
        **reliability_summary(card),
    }


def reliability_summary(card: dict[str, Any]) -> dict[str, Any]:
    """``TrainingRange``, ``ReliableRange`` and ``BandEdges`` of an ensemble card's targets."""
    targets = (card.get("ensemble") or {}).get("targets") or []
    out: dict[str, Any] = {}
    training = {t["name"]: t["training_range"] for t in targets if t.get("training_range")}
    if training:
        out["TrainingRange"] = training
    reliable = {t["name"]: t["reliable"]["range"] for t in targets if t.get("reliable")}
    if reliable:
        out["ReliableRange"] = reliable
    edges = next((t["band_edges"] for t in targets if t.get("band_edges")), None)
    if edges:
        out["BandEdges"] = edges
    return out


def network_weights(card: dict[str, Any]) -> dict[str, float] | None:
    """Per target, the weight of the network members in an ensemble card (``None`` for a
    single network, whose only member is the network)."""
    targets = (card.get("ensemble") or {}).get("targets")
    if not targets:
        return None
    return {t["name"]: float(t["network_weight"]) for t in targets if "network_weight" in t}


def target_notes(card: dict[str, Any]) -> dict[str, str]:
    """Plain-words caveats per target from the model card (e.g. "not predictable out of site")."""
    return {t["name"]: t["note"] for t in card.get("targets") or [] if t.get("note")}


def target_column_descriptions(card: dict[str, Any]) -> dict[str, dict[str, str]]:
    """BIDS column descriptions of the target columns of a predictions table.

    ``LongName`` is the target's real name from the card (e.g. "performance IQ (ABIDE PIQ),
    our fluid-intelligence proxy" for ``fluid_intelligence``), ``Description`` adds its caveat.
    """
    out = {}
    for t in card.get("targets") or []:
        label = t.get("label") or t["name"]
        text = f"Predicted {label} (model trained on column '{t.get('column', t['name'])}')."
        out[t["name"]] = {"LongName": label,
                          "Description": f"{text} {t['note']}" if t.get("note") else text}
    return out


def _prediction_columns(card: dict[str, Any]) -> list[str]:
    """Value columns of a predictions row: each target, its std and (ensembles) intervals."""
    from brainfm.derivatives import reliability_columns
    from brainfm.models.ensemble import interval_columns

    reliable = {t["name"] for t in (card.get("ensemble") or {}).get("targets") or []
                if "reliable" in t}
    cols = []
    for t in card["targets"]:
        cols += [t["name"], f"{t['name']}_std"]
        if card.get("ensemble"):
            cols += interval_columns(t["name"])
        if t["name"] in reliable:
            cols += reliability_columns(t["name"])
    return cols


_DESCRIPTION = ("brainfm predictions: mean over sliding windows of all included runs; "
                "<target>_std combines the model's predicted variance and the spread over "
                "windows.")
_DESCRIPTION_ENSEMBLE = (
    "brainfm predictions: network members (mean over sliding windows of all included runs) "
    "stacked with a ridge member on the session's connectivity, as the model card says. "
    "<target>_lower90/_upper90 (and 50) are calibrated central intervals: conformal quantiles "
    "of held-out-site residuals of the training cohort, per band of the predicted value and "
    "asymmetric, so about 90 % of true values of new sites like the training sites fall "
    "inside; <target>_std is their Gaussian-equivalent spread ((upper90 - lower90) / 3.29). "
    "<target>_reliable is false where the card's out-of-fold evidence says the model cannot "
    "resolve the target (predictions in a band where the training cohort's held-out "
    "predictions were biased, ModelCard.ReliableRange) or the data are shorter than one model "
    "window; <target>_expected_mae is the held-out MAE of the band the prediction falls in. "
    "out_of_distribution is true when the session's "
    "connectivity is less like the training cohort than 99 % of its subjects, or the "
    "prediction lies outside the training range: treat such predictions with caution.")


def _session_runs(result_dirs: list[str], runs: list[dict]) -> dict[str | None, list[tuple]]:
    by_session: dict[str | None, list[tuple]] = defaultdict(list)
    for result_dir, run in zip(result_dirs, runs, strict=True):
        by_session[run["entities"].get("ses")].append((Path(result_dir), run))
    return dict(by_session)


def predict_participant(result_dirs: list[str], runs: list[dict], model_dir: str | Path,
                        atlas_label: str, output_dir: str | Path,
                        device: str = "cpu") -> list[str]:
    """Predict every target for each session of one participant and write the derivatives.

    Runs of a session are combined (sliding windows over all included runs, averaged). Writes
    ``sub-X[_ses-Y]_desc-brainfm_predictions.tsv`` (+ JSON sidecar with the model hash over
    weights and card, ``ModelSHA256``, and the weights' own, ``WeightsSHA256``, a model
    card summary, the sources and the runs excluded by QC with their reason) and
    ``sub-X[_ses-Y]_atlas-<A>_desc-rwmoe_expertweights.tsv`` (ROI x expert gate weights).

    Parameters
    ----------
    result_dirs : list of str
        The runs' denoising result folders (see :func:`brainfm.interfaces.denoise.denoise_run`).
    runs : list of dict
        The run descriptions, in the same order.
    model_dir : path
        A model folder (``model.safetensors`` + ``model_card.json``).
    atlas_label : str
        BIDS label of the model's atlas (its time series are used).
    output_dir : path
        The output dataset root.
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    list of str
        Files written.
    """
    from brainfm.models.checkpoint import load_checkpoint
    from brainfm.models.predict import predict_subject

    model, card = load_checkpoint(model_dir, map_location=device)
    written: list[str] = []
    for session, items in sorted(_session_runs(result_dirs, runs).items(),
                                 key=lambda kv: kv[0] or ""):
        subject = items[0][1]["entities"]["sub"]
        included, excluded, sources, seconds = [], [], [], 0.0
        for result_dir, run in items:
            info = json.loads((result_dir / "run.json").read_text())
            run_name = "_".join(f"{k}-{v}" for k, v in run["entities"].items())
            if info.get("excluded_reason"):
                excluded.append({"Run": run_name, "Reason": info["excluded_reason"]})
                continue
            table = read_tsv(result_dir / f"atlas-{atlas_label}_timeseries.tsv")
            if list(table.columns) != list(card["roi_names"]):
                from brainfm.models.sessions import header_difference

                raise InputError(
                    f"the {atlas_label} time series of {run_name} do not have the ROIs of the "
                    f"model {model_dir}: "
                    f"{header_difference(list(table.columns), card['roi_names'])}; use a model "
                    f"trained on the atlas' ROIs in its dseg.tsv order")
            included.append((table.to_numpy(dtype=float), float(run["repetition_time"])))
            seconds += float(info["retained_seconds"])
            sources.append(build_name({**run["entities"], "space": run["space"],
                                       "atlas": atlas_label, "stat": "mean"},
                                      "timeseries", ".tsv"))
        row: dict[str, Any] = {"participant_id": f"sub-{subject}",
                               "session_id": f"ses-{session}" if session else "n/a"}
        gates = None
        row.update({k: None for k in _prediction_columns(card)})
        if card.get("ensemble"):
            row["out_of_distribution"] = None
        if included:
            result = predict_subject(model, card, included, device=device)
            row.update(result["predictions"])
            if "ood" in result:
                row["out_of_distribution"] = result["ood"]
            gates = result["gate_weights"]
        row.update(n_runs=len(included), retained_seconds=seconds)
        ents = {"sub": subject, "ses": session}
        func_dir = subject_func_dir(Path(output_dir), subject, session)
        tsv = func_dir / build_name({**ents, "desc": "brainfm"}, "predictions", ".tsv")
        written.append(str(write_tsv_atomic(tsv, pd.DataFrame([row]))))
        written.append(str(write_json_atomic(tsv.with_suffix(".json"), {
            "Description": _DESCRIPTION_ENSEMBLE if card.get("ensemble") else _DESCRIPTION,
            # the model is its weights and its card: an edited card gives another hash
            "ModelSHA256": card.get("model_sha256"),
            "WeightsSHA256": card.get("weights_sha256"),
            "License": card.get("license"),
            "ModelCard": model_card_summary(card),
            "TargetNotes": target_notes(card),
            **target_column_descriptions(card),
            "Sources": sources,
            "ExcludedRuns": excluded,
        })))
        if gates is not None:
            weights = pd.DataFrame(gates, columns=[f"expert_{i}" for i in range(gates.shape[1])])
            weights.insert(0, "Node", card["roi_names"])
            path = func_dir / build_name({**ents, "atlas": atlas_label, "desc": "rwmoe"},
                                         "expertweights", ".tsv")
            written.append(str(write_tsv_atomic(path, weights)))
            written.append(str(write_json_atomic(path.with_suffix(".json"), {
                "Description": "Mean RWMoE gate weight of each ROI for each expert over the "
                               "session's windows (rows sum to 1; 0 for masked ROIs).",
                "ModelSHA256": card.get("model_sha256"),
                "WeightsSHA256": card.get("weights_sha256"),
            })))
    return written


class _PredictInputSpec(BaseInterfaceInputSpec):
    result_dirs = traits.List(Directory(exists=True), mandatory=True, desc="run result folders")
    runs = traits.List(traits.Dict, mandatory=True, desc="run descriptions")
    model_dir = Directory(exists=True, mandatory=True, desc="model folder")
    atlas_label = traits.Str(mandatory=True, desc="BIDS label of the model's atlas")
    output_dir = Directory(mandatory=True, desc="output dataset root")
    device = traits.Enum("cpu", "cuda", usedefault=True, desc="torch device")


class _PredictOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="files written")


class PredictParticipant(SimpleInterface):
    """Predict age and fluid intelligence per session with a brainfm model."""

    input_spec = _PredictInputSpec
    output_spec = _PredictOutputSpec

    def _run_interface(self, runtime):
        self._results["out_files"] = predict_participant(
            list(self.inputs.result_dirs), list(self.inputs.runs), self.inputs.model_dir,
            self.inputs.atlas_label, self.inputs.output_dir, self.inputs.device,
        )
        return runtime
