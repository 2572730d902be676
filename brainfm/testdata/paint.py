"""Painting: the anatomy, ROI sources, nuisance and noise of each voxel of a test run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from brainfm.fileio import write_json_atomic
from brainfm.preproc.realign import framewise_displacement
from brainfm.testdata.confounds import build_confounds, write_confounds_tsv
from brainfm.testdata.grid import N_ROIS, Grid, smooth_field
from brainfm.testdata.motion import simulate_motion
from brainfm.testdata.signals import (
    bandlimited_noise,
    reflect_tile,
    synthetic_roi_signals,
)
from brainfm.testdata.truth import (
    ARTEFACT_PER_MM,
    CSF_AMPLITUDE,
    DRIFT_AMPLITUDE,
    NOISE_SD,
    SIGNAL_SD,
    TASK,
    WM_AMPLITUDE,
    WM_SIGNAL_GAIN,
    Subject,
)

LOGGER = logging.getLogger(__name__)


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def nifti_image(
    data: np.ndarray, affine: np.ndarray, zooms: Sequence[float], code: int
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_zooms(tuple(zooms))
    return img


def roi_mean(labels: np.ndarray, counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Parcel means of per-voxel ``values`` (V,) or (V, k); NaN for parcels without voxels."""
    v = values.reshape(values.shape[0], -1)
    out = np.stack(
        [np.bincount(labels, weights=v[:, j], minlength=N_ROIS + 1)[1:] for j in range(v.shape[1])],
        axis=1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = out / counts[:, None]
    return out.reshape((N_ROIS,) + values.shape[1:])


@dataclass
class Anatomy:
    baseline: np.ndarray  # (V,)
    neural_gain: np.ndarray  # (V,)
    nuisance_gain: np.ndarray  # (V, 3): drift, wm, csf
    betas: np.ndarray  # (V, 6)


def anatomy(grid: Grid, rng: np.random.Generator) -> Anatomy:
    lab = grid.labels[grid.brain]
    wm = grid.wm[grid.brain]
    csf = grid.csf[grid.brain]
    depth = grid.depth_mm[grid.brain]
    edge = np.exp(-np.clip(depth - grid.voxel_size, 0.0, None) / 10.0)
    baseline = np.clip(1100.0 + 60.0 * smooth_field(rng, grid, 40.0), 1000.0, 1200.0)
    neural_gain = np.where(lab > 0, np.where(wm, WM_SIGNAL_GAIN, 1.0), 0.0)
    drift_gain = 1.0 + 0.3 * smooth_field(rng, grid)
    wm_gain = np.where(wm, 1.0, np.clip(0.2 + 0.07 * smooth_field(rng, grid), 0.05, None))
    csf_gain = np.where(
        csf, 1.0, np.clip(0.03 + 0.15 * edge + 0.03 * smooth_field(rng, grid), 0, 1)
    )
    per_unit = np.array([ARTEFACT_PER_MM] * 3 + [ARTEFACT_PER_MM * 50.0] * 3)
    betas = np.column_stack([smooth_field(rng, grid) for _ in range(6)])
    betas *= (0.5 + 1.5 * edge)[:, None] * per_unit[None, :]
    return Anatomy(
        baseline=baseline,
        neural_gain=neural_gain,
        nuisance_gain=np.column_stack([drift_gain, wm_gain, csf_gain]),
        betas=betas,
    )


def roi_source(
    subj: Subject,
    run_index: int,
    n: int,
    tr: float,
    networks: np.ndarray,
    rng: np.random.Generator,
    fill_rng: np.random.Generator,
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """(source (n, 200), scale, synthetic_rois (200,), abide_row_index (n,))."""
    if subj.abide is None:
        src = synthetic_roi_signals(rng, n, tr, networks) * subj.amplitude[None, :]
        return src, SIGNAL_SD, np.ones(N_ROIS, dtype=bool), np.full(n, -1)
    series = subj.abide.series.astype(np.float64)
    sd = series.std(axis=0)
    zero = ~(sd > 0)
    median_sd = float(np.median(sd[~zero]))
    if zero.any():
        t_full = series.shape[0]
        fill = synthetic_roi_signals(fill_rng, t_full, tr, networks)[:, zero] * median_sd
        series = series.copy()
        series[:, zero] = fill
    rows, index = reflect_tile(series, n, start=run_index * n)
    return rows, SIGNAL_SD / median_sd, zero, index


def paint_run(
    root: Path,
    *,
    grid: Grid,
    subj: Subject,
    ses: str | None,
    run: str | None,
    run_index: int,
    n: int,
    tr: float,
    space: str,
    motion: bool,
    artefact: bool,
    anat: Anatomy,
    lab: np.ndarray,
    in_wm: np.ndarray,
    in_csf: np.ndarray,
    networks: np.ndarray,
    mask_img: nib.Nifti1Image,
    roi: dict[str, np.ndarray],
    rngs: dict[str, np.random.Generator],
) -> dict[str, Any]:
    prefix = "_".join(
        [f"sub-{subj.label}"]
        + ([f"ses-{ses}"] if ses else [])
        + [f"task-{TASK}"]
        + ([f"run-{run}"] if run else [])
    )
    rel_func = Path(f"sub-{subj.label}") / (f"ses-{ses}" if ses else "") / "func"
    raw_func = root / "bids" / rel_func
    der_func = root / "bids" / "derivatives" / "fmriprep" / rel_func
    raw_func.mkdir(parents=True, exist_ok=True)
    der_func.mkdir(parents=True, exist_ok=True)
    LOGGER.info("painting %s", prefix)

    # time courses
    source, scale, synthetic_rois, row_index = roi_source(
        subj, run_index, n, tr, networks, rngs["signal"], rngs["fill"]
    )
    scaled = source * scale  # (n, 200)
    t = np.linspace(-1.0, 1.0, n)
    rn = rngs["nuisance"]
    drift = DRIFT_AMPLITUDE * (
        rn.uniform(-1, 1) * t + 0.3 * np.cos(np.pi * (t + 1) / 2 + rn.uniform(0, np.pi))
    )
    wm_sig = WM_AMPLITUDE * bandlimited_noise(rn, n, tr, (0.005, 0.08))[:, 0]
    csf_sig = CSF_AMPLITUDE * bandlimited_noise(rn, n, tr, (0.05, 1.0))[:, 0]
    nuisance = np.column_stack([drift, wm_sig, csf_sig])  # (n, 3)
    params, spikes = simulate_motion(rngs["motion"], n, still=not motion)

    # voxel data (V, n), float32
    data = np.empty((lab.shape[0], n), dtype=np.float32)
    data[:] = anat.baseline[:, None]
    padded = np.concatenate([np.zeros((n, 1)), scaled], axis=1).astype(np.float32)
    data += anat.neural_gain[:, None].astype(np.float32) * padded[:, lab].T
    f32 = np.float32
    data += anat.nuisance_gain.astype(f32) @ nuisance.T.astype(f32)
    if artefact:
        data += anat.betas.astype(f32) @ params.T.astype(f32)
    noise = rngs["noise"].standard_normal(data.shape, dtype=f32)
    noise *= f32(NOISE_SD)
    data += noise
    del noise

    # images
    vs = grid.voxel_size
    vol = np.zeros(grid.shape + (n,), dtype=np.float32)
    vol[grid.brain] = data
    preproc = der_func / f"{prefix}_space-{space}_desc-preproc_bold.nii.gz"
    nib.save(nifti_image(vol, grid.affine, (vs, vs, vs, tr), 4), preproc)
    raw = raw_func / f"{prefix}_bold.nii.gz"
    del vol
    raw_vol = np.zeros(grid.shape + (n,), dtype=np.int16)
    raw_vol[grid.brain] = np.rint(data).astype(np.int16)
    raw_img = nifti_image(raw_vol, grid.affine, (vs, vs, vs, tr), 1)
    raw_img.header.set_slope_inter(1.0, 0.0)
    nib.save(raw_img, raw)
    del raw_vol, raw_img
    mask = der_func / f"{prefix}_space-{space}_desc-brain_mask.nii.gz"
    nib.save(mask_img, mask)

    raw_uri = f"bids:raw:{(rel_func / raw.name).as_posix()}"
    write_json_atomic(raw.with_name(f"{prefix}_bold.json"),
                      {"RepetitionTime": tr, "TaskName": TASK})
    write_json_atomic(
        preproc.with_name(preproc.name.replace(".nii.gz", ".json")),
        {
            "RepetitionTime": tr,
            "SkullStripped": True,
            "TaskName": TASK,
            "SliceTimingCorrected": False,
            "Sources": [raw_uri],
        },
    )
    write_json_atomic(mask.with_name(mask.name.replace(".nii.gz", ".json")), {"Type": "Brain"})

    # confounds from the written data
    table, conf_meta = build_confounds(data, data[in_wm], data[in_csf], params, tr)
    confounds = der_func / f"{prefix}_desc-confounds_timeseries.tsv"
    write_confounds_tsv(table, confounds)
    write_json_atomic(confounds.with_suffix(".json"), conf_meta)

    # ground truth at parcel level (float64, exact)
    roi_signal = scaled * roi["gain"][None, :]
    roi_nuisance = nuisance @ roi["nuisance_gain"].T
    roi_artefact = params @ roi["betas"].T if artefact else np.zeros_like(roi_signal)
    truth_rel = Path("truth") / f"{prefix}_truth.npz"
    np.savez_compressed(
        root / truth_rel,
        roi_signal=roi_signal,
        roi_source=source,
        scale=np.float64(scale),
        roi_gain=roi["gain"],
        synthetic_rois=synthetic_rois,
        abide_row_index=row_index.astype(np.int64),
        roi_artefact=roi_artefact,
        roi_motion_betas=roi["betas"],
        roi_nuisance=roi_nuisance,
        nuisance_sources=nuisance,
        roi_baseline=roi["baseline"],
        roi_voxels=roi["voxels"],
        motion_params=params,
        framewise_displacement=framewise_displacement(params),
        spike_volumes=spikes.astype(np.int64),
        tr=np.float64(tr),
    )
    der_rel = Path("bids") / "derivatives" / "fmriprep" / rel_func
    return {
        "subject": subj.label,
        "session": ses,
        "run": run,
        "n_volumes": n,
        "tr": tr,
        "raw_bold": (Path("bids") / rel_func / raw.name).as_posix(),
        "preproc_bold": (der_rel / preproc.name).as_posix(),
        "brain_mask": (der_rel / mask.name).as_posix(),
        "confounds": (der_rel / confounds.name).as_posix(),
        "truth": truth_rel.as_posix(),
        "abide_file_id": subj.abide.file_id if subj.abide else None,
        "abide_rows": [int(row_index.min()), int(row_index.max()) + 1] if subj.abide else None,
        "abide_tiled": bool(subj.abide and subj.abide.series.shape[0] < (run_index + 1) * n),
        "n_synthetic_rois": int(synthetic_rois.sum()),
        "spike_volumes": [int(s) for s in spikes],
    }
