"""Nipype interface: denoise the ROI signals of one run and compute their connectivity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from brainfm.fileio import read_tsv
from brainfm.postproc.censoring import resolve_dummy_scans
from brainfm.postproc.connectivity import pearson_connectivity
from brainfm.postproc.denoise import denoise_roi_signals, signal_exclusion
from brainfm.postproc.parcellate import load_parcel_signals

MOTION_COLUMNS = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                  "framewise_displacement"]


def denoise_run(signals_file: str | Path, confounds_file: str | Path, out_dir: Path, *,
                tr: float, strategy: str, fd_thresh: float, dummy_scans: int | str,
                lower_bpf: float | None, upper_bpf: float | None, min_time: float) -> Path:
    """Denoise every atlas' ROI signals of one run and write the results to ``out_dir``.

    Writes ``design.tsv`` (the design matrix), ``outliers.tsv``, ``motion.tsv``, per atlas
    ``atlas-<label>_timeseries.tsv``, ``_relmat.tsv`` and ``_coverage.tsv``, and ``run.json``
    (retained time, exclusion reason, low-coverage ROIs, the dummy scans dropped: ``auto``
    counts fMRIPrep's non-steady-state columns). Excluded runs get no time series.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    confounds = read_tsv(confounds_file)
    dummy_scans = resolve_dummy_scans(dummy_scans, confounds)
    signals = load_parcel_signals(signals_file)
    labels = list(signals)
    # one denoising call for the ROIs of every atlas (same design matrix and censoring)
    stacked = np.concatenate([signals[label].timeseries for label in labels], axis=1)
    result = denoise_roi_signals(
        stacked, confounds, tr=tr, strategy=strategy, fd_thresh=fd_thresh,
        dummy_scans=dummy_scans, lower_bpf=lower_bpf, upper_bpf=upper_bpf,
        min_time=min_time, confounds_file=str(confounds_file),
    )
    reason = result.excluded_reason
    start = 0
    for label in labels:  # no prediction, no time series from a run without signal
        stop = start + len(signals[label].roi_names)
        if reason is None:
            reason = signal_exclusion(result.timeseries[:, start:stop], label)
        start = stop
    result.design_matrix.to_csv(out_dir / "design.tsv", sep="\t", index=False, na_rep="n/a")
    result.outliers.to_csv(out_dir / "outliers.tsv", sep="\t", index=False, na_rep="n/a")
    motion = confounds[[c for c in MOTION_COLUMNS if c in confounds.columns]]
    motion.to_csv(out_dir / "motion.tsv", sep="\t", index=False, na_rep="n/a")
    summary: dict = {
        "n_volumes": int(len(result.sample_mask)),
        "n_retained": int(np.sum(result.sample_mask)),
        "dummy_scans": dummy_scans,
        "retained_seconds": float(result.retained_seconds),
        "excluded_reason": reason,
        "mean_fd": float(np.nanmean(confounds["framewise_displacement"]))
        if "framewise_displacement" in confounds else None,
        "nuisance_regressors": list(result.design_matrix.columns),
        "high_pass": result.high_pass,
        "low_pass": result.low_pass,
        "atlases": {},
    }
    start = 0
    for label in labels:
        sig = signals[label]
        stop = start + len(sig.roi_names)
        summary["atlases"][label] = {"low_coverage": sig.low_coverage}
        coverage = pd.DataFrame({"Node": sig.roi_names, "coverage": sig.coverage})
        coverage.to_csv(out_dir / f"atlas-{label}_coverage.tsv", sep="\t", index=False)
        if reason is None:
            denoised = result.timeseries[:, start:stop]
            series = pd.DataFrame(denoised, columns=sig.roi_names)
            series.to_csv(out_dir / f"atlas-{label}_timeseries.tsv", sep="\t", index=False,
                          na_rep="n/a")
            relmat = pd.DataFrame(pearson_connectivity(denoised), index=sig.roi_names,
                                  columns=sig.roi_names)
            relmat.index.name = "Node"
            relmat.to_csv(out_dir / f"atlas-{label}_relmat.tsv", sep="\t", na_rep="n/a")
        start = stop
    (out_dir / "run.json").write_text(json.dumps(summary, indent=2))
    return out_dir


class _DenoiseInputSpec(BaseInterfaceInputSpec):
    signals_file = File(exists=True, mandatory=True, desc="ROI signals (.npz)")
    confounds_file = File(exists=True, mandatory=True, desc="fMRIPrep confounds TSV")
    repetition_time = traits.Float(mandatory=True, desc="repetition time (s)")
    strategy = traits.Str("pcp", usedefault=True, desc="denoising strategy")
    fd_thresh = traits.Float(0.5, usedefault=True, desc="FD threshold (mm), 0 disables")
    dummy_scans = traits.Either(traits.Int, traits.Enum("auto"), default=0, usedefault=True,
                                desc="initial volumes to drop, or 'auto'")
    lower_bpf = traits.Either(None, traits.Float, usedefault=True, desc="high-pass cutoff (Hz)")
    upper_bpf = traits.Either(None, traits.Float, usedefault=True, desc="low-pass cutoff (Hz)")
    min_time = traits.Float(120.0, usedefault=True, desc="minimum retained time (s)")


class _DenoiseOutputSpec(TraitedSpec):
    result_dir = Directory(exists=True, desc="denoised series, connectivity, QC of the run")


class DenoiseROISignals(SimpleInterface):
    """Confound regression, censoring and band-pass of a run's ROI signals (all atlases)."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec

    def _run_interface(self, runtime):
        out = denoise_run(
            self.inputs.signals_file, self.inputs.confounds_file, Path(runtime.cwd) / "result",
            tr=self.inputs.repetition_time, strategy=self.inputs.strategy,
            fd_thresh=self.inputs.fd_thresh, dummy_scans=self.inputs.dummy_scans,
            lower_bpf=self.inputs.lower_bpf, upper_bpf=self.inputs.upper_bpf,
            min_time=self.inputs.min_time,
        )
        self._results["result_dir"] = str(out)
        return runtime
