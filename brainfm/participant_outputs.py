"""Write participant-level derivatives: ROI time series, connectivity, coverage and QC.

The workflow's per-run nodes leave their results in the working directory; the functions here
give them their BIDS names (XCP-D conventions, ``atlas-<label>`` entities) and JSON sidecars and
write them atomically into the output dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from brainfm import __version__
from brainfm.atlases import Atlas
from brainfm.derivatives import (
    ATLAS_DATASET,
    atlas_image_path,
    bids_version,
    build_name,
    find_atlas_images,
    parse_entities,
    participant_report_path,
    software_filters,
    subject_func_dir,
)
from brainfm.fileio import (
    copy_nifti_atomic,
    output_lock,
    read_tsv,
    write_json_atomic,
    write_tsv_atomic,
)
from brainfm.postproc.confounds import get_strategy, is_strategy_file


def _source_uri(path: str | Path, root: str | Path, dataset: str = "preprocessed") -> str:
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return str(path)
    return f"bids:{dataset}:{rel.as_posix()}"


def write_run_outputs(result_dir: str | Path, run: Mapping[str, Any], output_dir: str | Path,
                      settings: Mapping[str, Any]) -> list[str]:
    """Write the derivatives of one run from its denoising node's result folder.

    Parameters
    ----------
    result_dir : path
        Folder written by :func:`brainfm.interfaces.denoise.denoise_run`.
    run : mapping
        The run description: ``entities`` (sub, ses, task, run ...), ``space``, ``bold_file``,
        ``mask_file``, ``confounds_file``, ``repetition_time``.
    output_dir : path
        The output dataset root.
    settings : mapping
        Denoising settings recorded in the sidecars (``strategy``, ``fd_thresh``, ``dummy_scans``,
        ``lower_bpf``, ``upper_bpf``, ``min_coverage``, ``min_time``, ``fmriprep_dir``).

    Returns
    -------
    list of str
        The files written.
    """
    result_dir, output_dir = Path(result_dir), Path(output_dir)
    info = json.loads((result_dir / "run.json").read_text())
    entities = dict(run["entities"])
    func_dir = subject_func_dir(output_dir, entities["sub"], entities.get("ses"))
    tr = float(run["repetition_time"])
    root = settings.get("fmriprep_dir", "")
    sources = [_source_uri(run[k], root) for k in ("bold_file", "mask_file", "confounds_file")]
    common = {
        "RepetitionTime": tr,
        "SamplingFrequency": 1.0 / tr,
        "DenoisingStrategy": get_strategy(settings["strategy"]).name,
        **({"DenoisingStrategyFile": settings["strategy"]}
           if is_strategy_file(settings["strategy"]) else {}),
        "NuisanceRegressors": info.get("nuisance_regressors", []),
        "FDThreshold": settings["fd_thresh"],
        "DummyScans": info.get("dummy_scans", settings["dummy_scans"]),
        "SoftwareFilters": software_filters(info.get("high_pass"), info.get("low_pass")),
        "NumberOfVolumes": info.get("n_volumes"),
        "NumberOfVolumesRetained": info.get("n_retained"),
        "RetainedSeconds": info.get("retained_seconds"),
    }
    written: list[Path] = []

    def put_tsv(src: Path, ents: dict, suffix: str, sidecar: dict, index: bool = False) -> None:
        target = func_dir / build_name(ents, suffix, ".tsv")
        table = read_tsv(src)
        if index:
            table = table.set_index(table.columns[0])
        written.append(write_tsv_atomic(target, table, index=index))
        written.append(write_json_atomic(target.with_suffix(".json"), sidecar))

    run_ents = {k: v for k, v in entities.items()}
    put_tsv(result_dir / "motion.tsv", run_ents, "motion",
            {"Description": "fMRIPrep motion parameters (mm, rad) and framewise displacement "
                            "(Power 2012, mm) of every volume.",
             "RepetitionTime": tr, "Sources": [sources[2]]})
    put_tsv(result_dir / "outliers.tsv", run_ents, "outliers",
            {"Description": "Volumes censored (outlier=1: FD above threshold; dummy=1: initial "
                            "volumes dropped).",
             "FDThreshold": settings["fd_thresh"], "Sources": [sources[2]]})
    put_tsv(result_dir / "design.tsv", {**run_ents, "desc": "preproc"}, "design",
            {"Description": "Design matrix regressed out of the ROI signals: the strategy's "
                            "nuisance regressors and polynomial trends, one row per volume "
                            "(censored volumes included; the band-pass is applied to signals "
                            "and regressors alike by nilearn.signal.clean).",
             **common, "Sources": [sources[2]]})
    for label, atlas_info in info["atlases"].items():
        ents = {**run_ents, "space": run["space"], "atlas": label}
        images = find_atlas_images(output_dir, label, run["space"])
        atlas_source = ("bids:atlases:" + (images[0].relative_to(output_dir / ATLAS_DATASET)
                                            .as_posix() if images
                                            else f"atlas-{label}_description.json"))
        # where the atlas was drawn and how it reached the BOLD's space (brainfm.atlas_spaces)
        placement = {k: v for k, v in (run.get("atlas_placement") or {}).get(label, {}).items()
                     if v is not None}
        put_tsv(result_dir / f"atlas-{label}_coverage.tsv", {**ents, "stat": "coverage"}, "bold",
                {"Description": "Fraction of each parcel's voxels inside the brain mask with a "
                                "valid signal.", **placement,
                 "CoverageThreshold": settings["min_coverage"],
                 "LowCoverageROIs": atlas_info["low_coverage"],
                 "Sources": [sources[0], sources[1], atlas_source]})
        if info.get("excluded_reason"):
            continue
        put_tsv(result_dir / f"atlas-{label}_timeseries.tsv", {**ents, "stat": "mean"},
                "timeseries",
                {**common, "Atlas": label, **placement,
                 "CoverageThreshold": settings["min_coverage"],
                 "LowCoverageROIs": atlas_info["low_coverage"],
                 "Sources": [*sources, atlas_source]})
        put_tsv(result_dir / f"atlas-{label}_relmat.tsv",
                {**ents, "stat": "pearsoncorrelation"}, "relmat",
                {**common, "Atlas": label, **placement, "Measure": "Pearson correlation",
                 "Sources": [*sources, atlas_source]}, index=True)
    return [str(p) for p in written]


def qc_row(result_dir: str | Path, run: Mapping[str, Any]) -> dict[str, Any]:
    """One row of the participant's run QC table (included or excluded, and why)."""
    info = json.loads((Path(result_dir) / "run.json").read_text())
    entities = dict(run["entities"])
    return {
        "participant_id": f"sub-{entities['sub']}",
        "session_id": f"ses-{entities['ses']}" if entities.get("ses") else "n/a",
        "run": "_".join(f"{k}-{v}" for k, v in entities.items() if k not in ("sub", "ses")),
        "n_volumes": info.get("n_volumes"),
        "n_retained": info.get("n_retained"),
        "retained_seconds": info.get("retained_seconds"),
        "mean_fd": info.get("mean_fd"),
        "status": "excluded" if info.get("excluded_reason") else "included",
        "reason": info.get("excluded_reason") or "n/a",
    }


def write_subject_outputs(result_dirs: list[str], runs: list[Mapping[str, Any]],
                          output_dir: str | Path, settings: Mapping[str, Any]) -> list[str]:
    """Write every run of one participant, then the participant's run QC table.

    Nothing is written unless every run of the participant finished (the workflow calls this
    only after all its runs' nodes succeeded), and each file is replaced atomically.
    """
    written: list[str] = []
    rows = []
    subject = dict(runs[0]["entities"])["sub"]
    # not complete until the report is written again, last (see participant_report_path)
    participant_report_path(output_dir, subject).unlink(missing_ok=True)
    for result_dir, run in zip(result_dirs, runs, strict=True):
        written += write_run_outputs(result_dir, run, output_dir, settings)
        rows.append(qc_row(result_dir, run))
    qc_path = Path(output_dir) / f"sub-{subject}" / f"sub-{subject}_desc-runs_qc.tsv"
    written.append(str(write_tsv_atomic(qc_path, pd.DataFrame(rows))))
    written.append(str(write_json_atomic(qc_path.with_suffix(".json"), {
        "Description": "Runs of the participant, with retained time after censoring and "
                       "whether they were included; excluded runs give the reason.",
        "MinimumRetainedSeconds": settings["min_time"],
    })))
    return written


def atlas_description(atlas: Atlas) -> dict[str, Any]:
    """``atlas-<label>_description.json`` of an atlas (BIDS 1.11 atlas description fields)."""
    licence = (atlas.licence_file.read_text(encoding="utf-8").strip() if atlas.licence_file
               else "Unknown: a user-supplied atlas; see its provider's terms.")
    return {"AtlasName": atlas.name, "License": licence,
            "Description": f"{atlas.name}: {len(atlas.labels)} regions, drawn in "
                           f"{atlas.space} (brainfm source: {atlas.source}).",
            "ReferencesAndLinks": [atlas.citation] if atlas.citation else []}


def copy_atlases(output_dir: str | Path, atlases: list[Atlas]) -> list[str]:
    """Copy the atlases used into the outputs' atlas dataset (shared files, under lock).

    The layout is a BIDS atlas derivative dataset at
    :data:`~brainfm.derivatives.ATLAS_DATASET` (where XCP-D 26 puts its atlases): its own
    ``dataset_description.json``, one ``atlas-<label>_description.json`` per atlas (name,
    licence, references) and the image, its ROI table and sidecar under ``tpl-<space>/anat/``.
    """
    output_dir = Path(output_dir)
    root = output_dir / ATLAS_DATASET
    written = []
    with output_lock(output_dir):
        written.append(write_json_atomic(root / "dataset_description.json", {
            "Name": "Atlases used by brainfm", "BIDSVersion": bids_version(),
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "brainfm", "Version": __version__}]}))
        for atlas in atlases:
            res = parse_entities(Path(atlas.image).name).get("res")
            image = atlas_image_path(output_dir, atlas.label, atlas.space, res)
            written.append(copy_nifti_atomic(atlas.image, image))
            table = image.with_name(image.name.replace(".nii.gz", ".tsv"))
            written.append(write_tsv_atomic(table, atlas.labels))
            sidecar: dict[str, Any] = {
                "Description": f"{atlas.name} label image (0 = background) and its ROI table.",
                "Source": atlas.source}
            if res:  # the schema requires the meaning of the res- label
                zooms = nib.load(image).header.get_zooms()[:3]
                sidecar["Resolution"] = {res: " x ".join(f"{z:g}" for z in zooms) + " mm voxels"}
            if "network" in atlas.labels.columns:
                sidecar["network"] = {"Description": "Yeo 2011 7-network the parcel belongs to"}
            if atlas.transform is not None:
                sidecar["Transform"] = str(atlas.transform)
            written.append(write_json_atomic(table.with_suffix(".json"), sidecar))
            written.append(write_json_atomic(
                root / f"atlas-{atlas.label}_description.json", atlas_description(atlas)))
    return [str(p) for p in written]
