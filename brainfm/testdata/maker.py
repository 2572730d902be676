"""Build a small synthetic BIDS + fMRIPrep-derivatives dataset with a known ground truth.

Every voxel of the brain mask is painted as

    BOLD(v, t) = baseline(v)                                   1000-1200, smooth in space
               + g(v) * scale * s_p(v)(t)                      neural signal of v's CC200 parcel
               + a(v) drift(t) + b(v) wm(t) + c(v) csf(t)      physiological nuisance
               + sum_k beta_k(v) * m_k(t)                      motion artefact (artefact=True)
               + white noise (SD 1)

where ``s_p`` is the parcel's ABIDE PCP ROI series (``abide_dir`` given) or a synthetic
band-limited series with shared network structure, ``m_k`` are the six motion parameters written
to the confounds file and ``beta_k`` are smooth per-voxel weights, stronger near the brain's
edge. The artefact is therefore *exactly* a linear combination of the six motion columns. The
raw BIDS BOLD is the same painted image rounded to int16: it is *not* realistically in native
space (it already sits on the MNI grid).
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainfm.errors import UsageError
from brainfm.testdata.grid import N_ROIS, build_grid
from brainfm.testdata.layout import write_all
from brainfm.testdata.paint import stream_rng
from brainfm.testdata.signals import select_abide_subjects
from brainfm.testdata.truth import S_PHENO, DatasetTruth, Subject


def validate_options(
    n_subjects: int, n_sessions: int, n_runs: int, n_volumes: int, tr: float, space: str, seed: int
) -> None:
    for name, value, lo, hi in (
        ("n_subjects", n_subjects, 1, 999),
        ("n_sessions", n_sessions, 1, 99),
        ("n_runs", n_runs, 1, 99),
        ("n_volumes", n_volumes, 16, 5000),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UsageError(f"{name} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise UsageError(f"{name} must be between {lo} and {hi}, got {value}")
    if not (isinstance(tr, (int, float)) and 0.1 <= float(tr) <= 10.0):
        raise UsageError(f"tr (repetition time) must be between 0.1 and 10 s, got {tr!r}")
    if not re.fullmatch(r"[A-Za-z0-9]+", str(space)):
        raise UsageError(f"space must be an alphanumeric BIDS label, got {space!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")


def make_dataset(
    out_dir: str | Path,
    *,
    n_subjects: int = 2,
    n_sessions: int = 1,
    n_runs: int = 1,
    n_volumes: int = 120,
    tr: float = 2.0,
    space: str = "MNI152NLin6Asym",
    voxel_size: float = 3.0,
    motion: bool = True,
    artefact: bool | None = None,
    abide_dir: str | Path | None = None,
    seed: int = 0,
    abide_file_ids: Sequence[str] | None = None,
    overwrite: bool = False,
) -> DatasetTruth:
    """Write a synthetic raw BIDS dataset, fMRIPrep-style derivatives and their ground truth.

    Layout under ``out_dir``::

        bids/                                   raw BIDS (passes bids-validator)
          dataset_description.json README participants.tsv participants.json task-rest_bold.json
          sub-01[/ses-01]/func/sub-01[_ses-01]_task-rest[_run-1]_bold.nii.gz + .json
          derivatives/fmriprep/                 fMRIPrep-style derivatives
            dataset_description.json
            sub-01[/ses-01]/func/<run>_space-<S>_desc-preproc_bold.nii.gz + .json
                                 <run>_space-<S>_desc-brain_mask.nii.gz + .json
                                 <run>_desc-confounds_timeseries.tsv + .json
        truth/                                  ground truth (outside the BIDS dataset)
          truth.json  space-<S>_atlas-CC200_dseg.nii.gz  space-<S>_label-{WM,CSF}_mask.nii.gz
          <run>_truth.npz

    The derivatives carry no ``res-`` entity: as with fMRIPrep's ``res-native`` outputs, the
    images stay at the grid's own resolution (the bundled CC200 3 mm grid, cropped to the brain's
    bounding box; nearest-neighbour resampling of the bundled atlas onto them is exact).

    Each ``<run>_truth.npz`` holds (T volumes, 200 CC200 parcels in label order):

    - ``roi_signal`` (T, 200): parcel mean of the painted neural signal
      (= ``roi_gain * scale * roi_source``), BOLD units;
    - ``roi_source`` (T, 200): the unscaled source series (the ABIDE ROI values, or synthetic);
      ``scale`` (): their scale factor; ``roi_gain`` (200,): parcel mean of the neural gain
      (1 in grey matter, 0.5 in the white-matter-like core); ``synthetic_rois`` (200,) bool:
      ROIs whose ABIDE column was all zero and got a synthetic series;
      ``abide_row_index`` (T,): ABIDE row used at each volume (-1 for synthetic signals);
    - ``roi_artefact`` (T, 200): parcel mean of the motion artefact
      (= ``motion_params @ roi_motion_betas.T``, zeros when ``artefact`` is off);
      ``roi_motion_betas`` (200, 6);
    - ``roi_nuisance`` (T, 200): parcel mean of the physiological nuisance;
      ``nuisance_sources`` (T, 3): drift, white-matter-like and CSF-like sources;
    - ``roi_baseline`` (200,), ``roi_voxels`` (200,): parcel mean baseline and voxel count;
    - ``motion_params`` (T, 6): exactly the confounds' ``trans_x .. rot_z`` columns;
      ``framewise_displacement`` (T,), NaN first; ``spike_volumes``: volumes where a spike starts;
    - ``tr`` ().

    The parcel mean of the written preproc BOLD equals ``roi_baseline + roi_signal +
    roi_nuisance + roi_artefact`` up to white noise (SD 1 / sqrt(voxels)).

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder (created). ``out_dir/bids`` and ``out_dir/truth`` must not exist unless
        ``overwrite`` is set.
    n_subjects, n_sessions, n_runs : int
        Numbers of subjects, sessions per subject and runs per session. With one session (run)
        the ``ses-`` (``run-``) entity is left out.
    n_volumes : int
        Volumes per run.
    tr : float
        Repetition time (s).
    space : str
        ``space-`` label of the derivatives (the data always sit on the MNI152NLin6Asym grid).
    voxel_size : float
        Isotropic voxel size (mm); 3 uses the atlas grid, others resample it (nearest).
    motion : bool
        Moving subjects: the motion parameters are a smooth random walk plus a few spikes
        (framewise displacement > 0.5 mm). ``False``: very still subjects (a tenth of the random
        walk, no spikes) and, by default, no artefact.
    artefact : bool, optional
        Paint the motion artefact into the BOLD (default: the value of ``motion``).
        ``motion=True, artefact=False`` writes the same motion parameters (hence the same FD
        and censoring) as ``motion=True`` but a clean image: with the same ``seed`` the two
        variants differ *only* by the artefact in the BOLD (and the confounds computed from
        it), which makes exact before/after comparisons of denoising possible. Signals,
        nuisance and noise depend on ``seed`` only, never on these two flags.
    abide_dir : str or pathlib.Path, optional
        Folder with ``rois_cc200.tar.xz`` (or ``rois_cc200/*.1D``) and
        ``Phenotypic_V1_0b_preprocessed1.csv``: paint one real ABIDE subject's CC200 series per
        fixture subject and take age, sex and PIQ (as fluid intelligence) from the phenotype.
        None paints synthetic signals and plausible synthetic phenotypes.
    seed : int
        Random seed.
    abide_file_ids : sequence of str, optional
        PCP ``FILE_ID`` per subject (default: the first suitable subjects in the archive, i.e.
        with age, sex and PIQ, a site TR equal to ``tr`` and enough volumes).
    overwrite : bool
        Replace existing ``out_dir/bids`` and ``out_dir/truth``.

    Returns
    -------
    DatasetTruth
        Paths and loaders.

    Raises
    ------
    UsageError
        Bad options, or the output exists (exit 64).
    InputError
        ``abide_dir`` missing or malformed (exit 66).
    """
    validate_options(n_subjects, n_sessions, n_runs, n_volumes, tr, space, seed)
    tr = float(tr)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    for name in ("bids", "truth"):
        if (out / name).exists() and not overwrite:
            raise UsageError(
                f"{out / name} already exists: choose another output folder, or replace it "
                "with overwrite=True (--overwrite)"
            )
    grid = build_grid(voxel_size)

    subjects = make_subjects(
        n_subjects=n_subjects,
        need_volumes=n_volumes * n_sessions * n_runs,
        tr=tr,
        abide_dir=Path(abide_dir) if abide_dir is not None else None,
        abide_file_ids=abide_file_ids,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".brainfm-testdata-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write_all(
            tmp,
            grid=grid,
            subjects=subjects,
            n_sessions=n_sessions,
            n_runs=n_runs,
            n_volumes=n_volumes,
            tr=tr,
            space=space,
            motion=motion,
            artefact=motion if artefact is None else bool(artefact),
            seed=seed,
            abide_dir=abide_dir,
        )
        for name in ("bids", "truth"):
            if (out / name).exists():
                shutil.rmtree(out / name)
            (tmp / name).rename(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DatasetTruth.from_dir(out)


def make_subjects(
    *,
    n_subjects: int,
    need_volumes: int,
    tr: float,
    abide_dir: Path | None,
    abide_file_ids: Sequence[str] | None,
    seed: int,
) -> list[Subject]:
    width = max(2, len(str(n_subjects)))
    labels = [f"{i + 1:0{width}d}" for i in range(n_subjects)]
    if abide_dir is None:
        if abide_file_ids is not None:
            raise UsageError("abide_file_ids needs abide_dir (the ABIDE PCP CC200 folder)")
        rng = stream_rng(seed, S_PHENO)
        out = []
        for lab in labels:
            out.append(
                Subject(
                    label=lab,
                    age=round(float(rng.uniform(8.0, 60.0)), 1),
                    sex=str(rng.choice(["M", "F"])),
                    fluid_intelligence=float(round(np.clip(rng.normal(105, 15), 70, 145))),
                    abide=None,
                    amplitude=rng.uniform(0.7, 1.3, size=N_ROIS),
                )
            )
        return out
    chosen = select_abide_subjects(
        abide_dir, n_subjects, min_volumes=need_volumes, tr=tr, file_ids=abide_file_ids
    )
    return [
        Subject(
            label=lab,
            age=s.age,
            sex=s.sex,
            fluid_intelligence=s.piq,
            abide=s,
            amplitude=np.ones(N_ROIS),
        )
        for lab, s in zip(labels, chosen, strict=True)
    ]
