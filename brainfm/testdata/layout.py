"""Writing a test dataset: the raw BIDS tree and the fMRIPrep-style derivatives."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm import __version__
from brainfm.fileio import write_json_atomic
from brainfm.preproc.realign import MOTION_COLUMNS
from brainfm.testdata.grid import N_ROIS, Grid
from brainfm.testdata.paint import anatomy, nifti_image, paint_run, roi_mean, stream_rng
from brainfm.testdata.signals import (
    network_assignment,
)
from brainfm.testdata.truth import (
    ARTEFACT_PER_MM,
    BIDS_VERSION,
    FMRIPREP_VERSION,
    NOISE_SD,
    S_ANATOMY,
    S_FILL,
    S_MOTION,
    S_NETWORK,
    S_NOISE,
    S_NUISANCE,
    S_SIGNAL,
    SIGNAL_SD,
    TASK,
    TRUTH_JSON,
    WM_SIGNAL_GAIN,
    Subject,
)


def na_format(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:g}"


def write_all(
    root: Path,
    *,
    grid: Grid,
    subjects: list[Subject],
    n_sessions: int,
    n_runs: int,
    n_volumes: int,
    tr: float,
    space: str,
    motion: bool,
    artefact: bool,
    seed: int,
    abide_dir: str | Path | None,
) -> dict[str, Any]:
    bids = root / "bids"
    fmriprep = bids / "derivatives" / "fmriprep"
    truth_dir = root / "truth"
    for d in (bids, fmriprep, truth_dir):
        d.mkdir(parents=True)
    use_abide = subjects[0].abide is not None

    # grid-level files (shared by all runs)
    vs = grid.voxel_size
    atlas_rel = f"truth/space-{space}_atlas-CC200_dseg.nii.gz"
    wm_rel = f"truth/space-{space}_label-WM_mask.nii.gz"
    csf_rel = f"truth/space-{space}_label-CSF_mask.nii.gz"
    nib.save(nifti_image(grid.labels.astype(np.int16), grid.affine, (vs,) * 3, 4), root / atlas_rel)
    nib.save(nifti_image(grid.wm.astype(np.uint8), grid.affine, (vs,) * 3, 4), root / wm_rel)
    nib.save(nifti_image(grid.csf.astype(np.uint8), grid.affine, (vs,) * 3, 4), root / csf_rel)
    mask_img = nifti_image(grid.brain.astype(np.uint8), grid.affine, (vs,) * 3, 4)

    lab = grid.labels[grid.brain].astype(np.int64)
    counts = np.bincount(lab, minlength=N_ROIS + 1)[1:].astype(np.float64)
    in_wm = grid.wm[grid.brain]
    in_csf = grid.csf[grid.brain]
    coords = np.argwhere(grid.brain)
    xyz = coords @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    centroids = roi_mean(lab, counts, xyz)
    networks = network_assignment(centroids, 7, stream_rng(seed, S_NETWORK))

    write_raw_top(bids, subjects, tr, use_abide)
    write_json_atomic(fmriprep / "dataset_description.json", fmriprep_description(use_abide))

    run_entries: list[dict[str, Any]] = []
    subject_entries: list[dict[str, Any]] = []
    ses_labels = [f"{i + 1:02d}" for i in range(n_sessions)] if n_sessions > 1 else [None]
    run_labels = [str(i + 1) for i in range(n_runs)] if n_runs > 1 else [None]
    for si, subj in enumerate(subjects):
        anat = anatomy(grid, stream_rng(seed, S_ANATOMY, si))
        roi_gain = roi_mean(lab, counts, anat.neural_gain)
        roi_baseline = roi_mean(lab, counts, anat.baseline)
        roi_nuis_gain = roi_mean(lab, counts, anat.nuisance_gain)
        roi_betas = roi_mean(lab, counts, anat.betas)
        k = 0
        for ses in ses_labels:
            for run in run_labels:
                keys = (si, k)
                entry = paint_run(
                    root,
                    grid=grid,
                    subj=subj,
                    ses=ses,
                    run=run,
                    run_index=k,
                    n=n_volumes,
                    tr=tr,
                    space=space,
                    motion=motion,
                    artefact=artefact,
                    anat=anat,
                    lab=lab,
                    in_wm=in_wm,
                    in_csf=in_csf,
                    networks=networks,
                    mask_img=mask_img,
                    roi={
                        "gain": roi_gain,
                        "baseline": roi_baseline,
                        "nuisance_gain": roi_nuis_gain,
                        "betas": roi_betas,
                        "voxels": counts,
                    },
                    rngs={
                        "signal": stream_rng(seed, S_SIGNAL, *keys),
                        "fill": stream_rng(seed, S_FILL, si),
                        "nuisance": stream_rng(seed, S_NUISANCE, *keys),
                        "noise": stream_rng(seed, S_NOISE, *keys),
                        "motion": stream_rng(seed, S_MOTION, *keys),
                    },
                )
                run_entries.append(entry)
                k += 1
        a = subj.abide
        subject_entries.append(
            {
                "subject": subj.label,
                "age": subj.age,
                "sex": subj.sex,
                "fluid_intelligence": subj.fluid_intelligence,
                "abide_file_id": a.file_id if a else None,
                "abide_site": a.site if a else None,
                "abide_site_tr": a.site_tr if a else None,
                "abide_n_volumes": int(a.series.shape[0]) if a else None,
            }
        )

    meta = {
        "generator": "brainfm-make-testdata",
        "brainfm_version": __version__,
        "signal_source": "abide" if use_abide else "synthetic",
        "parameters": {
            "n_subjects": len(subjects),
            "n_sessions": n_sessions,
            "n_runs": n_runs,
            "n_volumes": n_volumes,
            "tr": tr,
            "space": space,
            "voxel_size": vs,
            "motion": bool(motion),
            "artefact": bool(artefact),
            "abide_dir": str(abide_dir) if abide_dir is not None else None,
            "seed": int(seed),
        },
        "bids_dir": "bids",
        "fmriprep_dir": "bids/derivatives/fmriprep",
        "grid": {
            "shape": list(grid.shape),
            "affine": grid.affine.tolist(),
            "atlas": atlas_rel,
            "wm_mask": wm_rel,
            "csf_mask": csf_rel,
            "n_brain_voxels": int(grid.brain.sum()),
        },
        "model": {
            "signal_sd": SIGNAL_SD,
            "wm_signal_gain": WM_SIGNAL_GAIN,
            "noise_sd": NOISE_SD,
            "artefact_per_mm": ARTEFACT_PER_MM,
            "nuisance_sources": ["drift", "white_matter", "csf"],
            "motion_columns": list(MOTION_COLUMNS),
        },
        "subjects": subject_entries,
        "runs": run_entries,
    }
    write_json_atomic(truth_dir / TRUTH_JSON, meta)
    return meta


def write_raw_top(bids: Path, subjects: list[Subject], tr: float, use_abide: bool) -> None:
    desc: dict[str, Any] = {
        "Name": "brainfm synthetic resting-state test data",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC-BY-NC-SA-3.0" if use_abide else "CC0-1.0",
        "Authors": ["brainfm-make-testdata"],
        "GeneratedBy": [
            {
                "Name": "brainfm-make-testdata",
                "Version": __version__,
                "Description": "Painted synthetic BOLD; not a real acquisition.",
            }
        ],
    }
    if use_abide:
        desc["ReferencesAndLinks"] = [
            "Di Martino et al. 2014, Molecular Psychiatry 19:659 (ABIDE)",
            "Craddock et al. 2013, Front. Neuroinform., The Neuro Bureau Preprocessing Initiative",
        ]
    write_json_atomic(bids / "dataset_description.json", desc)
    origin = (
        "Each subject's CC200 parcel signals are the real ROI time series of one ABIDE I "
        "subject as processed by the Preprocessed Connectomes Project (C-PAC, filt_global); "
        "age, sex and PIQ (as fluid_intelligence) come from the PCP phenotype sheet. ABIDE data "
        "are shared for non-commercial research under CC BY-NC-SA 3.0; credit Di Martino et al. "
        "2014 and Craddock et al. 2013."
        if use_abide
        else "Parcel signals are synthetic band-limited (0.01-0.1 Hz) noise with a shared "
        "network structure; participant values are synthetic."
    )
    (bids / "README").write_text(
        "brainfm synthetic resting-state test data\n"
        "=========================================\n\n"
        "Written by brainfm-make-testdata for tests and demos. The BOLD images are painted on "
        "the CC200 atlas grid (MNI152NLin6Asym, cropped): every voxel is a baseline plus its "
        "parcel's signal, physiological nuisance, an optional motion artefact and white noise. "
        "The raw images here are the same painted data rounded to int16: they are NOT "
        "realistically in native space and carry no real anatomy.\n\n"
        f"{origin}\n\n"
        "derivatives/fmriprep holds files named like fMRIPrep's outputs (preprocessed BOLD, "
        "brain mask, confounds) that were synthesised by brainfm-make-testdata, not produced "
        "by fMRIPrep. The ground truth lives outside this dataset (../truth).\n"
    )
    rows = [
        {
            "participant_id": f"sub-{s.label}",
            "age": na_format(s.age),
            "sex": s.sex or "n/a",
            "fluid_intelligence": na_format(s.fluid_intelligence),
        }
        for s in subjects
    ]
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    fi_desc = (
        "Performance IQ (ABIDE PCP PIQ), the closest available proxy for fluid intelligence"
        if use_abide
        else "Synthetic fluid-intelligence score on an IQ scale (mean 105, SD 15)"
    )
    write_json_atomic(
        bids / "participants.json",
        {
            "participant_id": {"Description": "Participant identifier"},
            "age": {"Description": "Age at scan", "Units": "year"},
            "sex": {
                "Description": "Sex",
                "Levels": {"M": "male", "F": "female"},
            },
            "fluid_intelligence": {"Description": fi_desc},
        },
    )
    write_json_atomic(bids / f"task-{TASK}_bold.json", {"TaskName": TASK, "RepetitionTime": tr})


def fmriprep_description(use_abide: bool) -> dict[str, Any]:
    return {
        "Name": "fMRIPrep - synthetic outputs from brainfm-make-testdata",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "fMRIPrep",
                "Version": FMRIPREP_VERSION,
                "Description": (
                    "Synthesised by brainfm-make-testdata (brainfm "
                    f"{__version__}): files named and laid out like fMRIPrep 25 outputs, "
                    "painted from "
                    + ("real ABIDE PCP CC200 ROI series" if use_abide else "synthetic signals")
                    + "; fMRIPrep was NOT run."
                ),
                "CodeURL": "https://github.com/nipreps/fmriprep",
            },
            {"Name": "brainfm-make-testdata", "Version": __version__},
        ],
        "DatasetLinks": {"raw": "../.."},
        "License": "CC-BY-NC-SA-3.0" if use_abide else "CC0-1.0",
    }
