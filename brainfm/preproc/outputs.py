"""The fMRIPrep-style derivatives folder written by the minimal preprocessing.

Layout (``res-2``, or ``res-3`` for the 3 mm grid)::

    <out>/dataset_description.json        DatasetType derivative, GeneratedBy
                                          brainfm-minimal-preproc
    <out>/sub-X[/ses-Y]/func/
        <run>_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz + .json  (RepetitionTime, ...)
        <run>_space-MNI152NLin6Asym_res-2_desc-brain_mask.nii.gz + .json
        <run>_desc-confounds_timeseries.tsv + .json

These are the files :func:`brainfm.bidsapp.inputs.collect_runs` reads from fMRIPrep outputs.
Every file is written atomically, the BOLD image last, so that an interrupted run is never
found half written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainfm import __version__
from brainfm.derivatives import bids_version, build_name
from brainfm.fileio import (
    copy_atomic,
    copy_nifti_atomic,
    output_lock,
    read_json,
    write_json_atomic,
)
from brainfm.preproc.templates import SPACE

#: ``GeneratedBy`` name of the minimal preprocessing.
GENERATED_BY = "brainfm-minimal-preproc"

_DESCRIPTION = (
    "brainfm's minimal preprocessing: nipy space-time realignment (head motion and slice "
    "timing), slice-timing correction to the middle of the slice times, affine registration "
    "of the mean EPI to the MNI152NLin6Asym template (brain outline, then intensities), one "
    "cubic-spline resampling per volume, fMRIPrep-style confounds from template tissue masks. "
    "Coarser than fMRIPrep: affine only, no susceptibility-distortion correction, no field "
    "maps, no T1w-based coregistration, no ICA-AROMA."
)


def write_dataset_description(out_dir: str | Path, bids_dir: str | Path) -> Path:
    """Write (or keep) the derivatives' ``dataset_description.json``, under the output lock.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        The derivatives folder.
    bids_dir : str or pathlib.Path
        The raw dataset (``DatasetLinks.raw`` and ``SourceDatasets``).

    Returns
    -------
    pathlib.Path
        The description file.
    """
    out = Path(out_dir)
    desc_path = out / "dataset_description.json"
    content = {
        "Name": "brainfm minimal preprocessing",
        "BIDSVersion": bids_version(),
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": GENERATED_BY,
            "Version": __version__,
            "Description": _DESCRIPTION,
        }],
        "DatasetLinks": {"raw": Path(bids_dir).absolute().as_uri()},
        "SourceDatasets": [{"URL": Path(bids_dir).absolute().as_uri()}],
    }
    with output_lock(out):
        if desc_path.exists():
            generated = read_json(desc_path).get("GeneratedBy") or []
            if generated and generated[0].get("Name") == GENERATED_BY \
                    and generated[0].get("Version") == __version__:
                return desc_path
        write_json_atomic(desc_path, content)
    return desc_path


def run_entities(entities: Mapping[str, str]) -> dict[str, str]:
    """Short-key entities of a run (``{"sub": "01", "task": "rest", ...}``).

    Parameters
    ----------
    entities : mapping
        Short-key entities (as in :meth:`brainfm.preproc.inputs.RawBoldRun.to_dict`).

    Returns
    -------
    dict of str to str
        The same, without empty values.
    """
    return {k: str(v) for k, v in entities.items() if v not in (None, "")}


def write_run_derivatives(
    out_dir: str | Path,
    entities: Mapping[str, str],
    *,
    bold_file: str | Path,
    mask_file: str | Path,
    confounds_file: str | Path,
    confounds_json: str | Path,
    raw_bold: str | Path,
    bids_dir: str | Path,
    repetition_time: float,
    resolution: int = 2,
    start_time: float | None = None,
    registration: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write one run's fMRIPrep-style files.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        The derivatives folder.
    entities : mapping
        Short-key entities of the run.
    bold_file, mask_file : str or pathlib.Path
        Standard-space BOLD and brain mask.
    confounds_file, confounds_json : str or pathlib.Path
        Confounds table and its sidecar content.
    raw_bold : str or pathlib.Path
        The raw BOLD (recorded in ``Sources``).
    bids_dir : str or pathlib.Path
        The raw dataset root.
    repetition_time : float
        TR (s).
    resolution : int
        Grid resolution (the ``res-`` entity).
    start_time : float, optional
        Reference time of the slice-timing correction (``StartTime``); None when slice
        timing was not corrected.
    registration : mapping, optional
        Registration QC (``similarity``, ``stage``, ``dice``) recorded in the BOLD sidecar.

    Returns
    -------
    dict of str to pathlib.Path
        ``bold``, ``bold_json``, ``mask``, ``mask_json``, ``confounds``, ``confounds_json``.
    """
    ents = run_entities(entities)
    func = Path(out_dir) / f"sub-{ents['sub']}"
    if ents.get("ses"):
        func = func / f"ses-{ents['ses']}"
    func = func / "func"
    func.mkdir(parents=True, exist_ok=True)
    std = {**ents, "space": SPACE, "res": str(resolution)}
    names = {
        "bold": build_name({**std, "desc": "preproc"}, "bold", ".nii.gz"),
        "bold_json": build_name({**std, "desc": "preproc"}, "bold", ".json"),
        "mask": build_name({**std, "desc": "brain"}, "mask", ".nii.gz"),
        "mask_json": build_name({**std, "desc": "brain"}, "mask", ".json"),
        "confounds": build_name({**ents, "desc": "confounds"}, "timeseries", ".tsv"),
        "confounds_json": build_name({**ents, "desc": "confounds"}, "timeseries", ".json"),
    }
    paths = {key: func / name for key, name in names.items()}
    try:
        rel = Path(raw_bold).absolute().relative_to(Path(bids_dir).absolute()).as_posix()
        source = f"bids:raw:{rel}"
    except ValueError:
        source = Path(raw_bold).absolute().as_uri()
    copy_nifti_atomic(Path(mask_file), paths["mask"])
    write_json_atomic(paths["mask_json"], {"Type": "Brain", "Sources": [source]})
    copy_atomic(Path(confounds_file), paths["confounds"])
    write_json_atomic(paths["confounds_json"], json.loads(Path(confounds_json).read_text()))
    sidecar: dict[str, Any] = {
        "RepetitionTime": float(repetition_time),
        "SkullStripped": False,
        "SliceTimingCorrected": start_time is not None,
        "Sources": [source],
    }
    if ents.get("task"):
        sidecar["TaskName"] = ents["task"]
    if start_time is not None:
        sidecar["StartTime"] = float(start_time)
    processing: dict[str, Any] = {
        "GeneratedBy": GENERATED_BY,
        "HeadMotion": "nipy SpaceTimeRealign (rigid, relative to volume 0)",
        "Registration": "affine, EPI to MNI152NLin6Asym template (no distortion correction)",
        "Interpolation": "cubic B-spline, one resampling per volume",
    }
    if registration:
        processing["RegistrationSimilarity"] = registration.get("similarity")
        processing["RegistrationStage"] = registration.get("stage")
        processing["RegistrationDice"] = registration.get("dice")
    sidecar["brainfm"] = processing
    write_json_atomic(paths["bold_json"], sidecar)
    copy_nifti_atomic(Path(bold_file), paths["bold"])
    return paths
