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

import json
import logging
import math
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from brainfm import __version__
from brainfm.errors import InputError, UsageError
from brainfm.testdata.confounds import build_confounds, write_confounds_tsv
from brainfm.testdata.grid import N_ROIS, Grid, build_grid, smooth_field
from brainfm.testdata.motion import MOTION_COLUMNS, framewise_displacement, simulate_motion
from brainfm.testdata.signals import (
    AbideSubject,
    bandlimited_noise,
    network_assignment,
    reflect_tile,
    select_abide_subjects,
    synthetic_roi_signals,
)

LOGGER = logging.getLogger(__name__)

TASK = "rest"
BIDS_VERSION = "1.10.0"
FMRIPREP_VERSION = "25.2.0-brainfm-testdata"
TRUTH_JSON = "truth.json"

#: SD (BOLD units) of a typical parcel's painted neural signal (1 % of the baseline).
SIGNAL_SD = 10.0
#: Neural-signal gain inside the white-matter-like core (1 elsewhere in the parcels).
WM_SIGNAL_GAIN = 0.5
#: SD of the white noise added to every voxel and volume.
NOISE_SD = 1.0
#: Artefact weight per mm of translation (and per 1/50 rad of rotation), before edge boosting.
ARTEFACT_PER_MM = 20.0
#: Amplitudes of the physiological nuisance sources (BOLD units).
DRIFT_AMPLITUDE = 10.0
WM_AMPLITUDE = 6.0
CSF_AMPLITUDE = 8.0

# Independent random streams (the same stream ids give identical draws in every variant).
_S_ANATOMY, _S_NETWORK, _S_PHENO, _S_SIGNAL, _S_NUISANCE, _S_NOISE, _S_MOTION, _S_FILL = range(8)


@dataclass(frozen=True)
class RunTruth:
    """One painted run: where its files are and how to load its ground truth.

    Attributes
    ----------
    subject, session, run : str or None
        BIDS labels (``session``/``run`` are None when the dataset has one session/run).
    raw_bold : pathlib.Path
        Raw BIDS ``..._bold.nii.gz`` (int16 copy of the painted image).
    preproc_bold : pathlib.Path
        fMRIPrep-style ``..._space-<S>_desc-preproc_bold.nii.gz`` (float32).
    brain_mask : pathlib.Path
        ``..._space-<S>_desc-brain_mask.nii.gz``.
    confounds : pathlib.Path
        ``..._desc-confounds_timeseries.tsv`` (its ``.json`` sits beside it).
    truth_file : pathlib.Path
        The ``.npz`` of ground-truth arrays (see :meth:`load`).
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).
    abide_file_id : str or None
        PCP ``FILE_ID`` whose series were painted (None for synthetic signals).
    """

    subject: str
    session: str | None
    run: str | None
    raw_bold: Path
    preproc_bold: Path
    brain_mask: Path
    confounds: Path
    truth_file: Path
    n_volumes: int
    tr: float
    abide_file_id: str | None = None

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities of the run (``subject``, ``session``, ``task``, ``run`` when set)."""
        ent = {"subject": self.subject}
        if self.session is not None:
            ent["session"] = self.session
        ent["task"] = TASK
        if self.run is not None:
            ent["run"] = self.run
        return ent

    def load(self) -> dict[str, np.ndarray]:
        """Load the ground-truth arrays of the run.

        Returns
        -------
        dict of str to numpy.ndarray
            See :func:`make_dataset` for the keys (``roi_signal``, ``roi_artefact``,
            ``motion_params``, ...).
        """
        with np.load(self.truth_file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def load_confounds(self) -> pd.DataFrame:
        """Load the run's confounds table (``n/a`` as NaN).

        Returns
        -------
        pandas.DataFrame
            The fMRIPrep-style confounds.
        """
        return pd.read_csv(self.confounds, sep="\t", na_values=["n/a"])


@dataclass(frozen=True)
class DatasetTruth:
    """What :func:`make_dataset` wrote, with loaders for the ground truth.

    Attributes
    ----------
    out_dir : pathlib.Path
        The folder given to :func:`make_dataset`.
    bids_dir : pathlib.Path
        The raw BIDS dataset (``out_dir/bids``).
    fmriprep_dir : pathlib.Path
        The fMRIPrep-style derivatives (``out_dir/bids/derivatives/fmriprep``).
    truth_dir : pathlib.Path
        Ground truth, outside the BIDS dataset (``out_dir/truth``).
    atlas : pathlib.Path
        The CC200 labels on the written grid (``truth/space-<S>_atlas-CC200_dseg.nii.gz``).
    wm_mask, csf_mask : pathlib.Path
        The white-matter-like and CSF-like masks used for the nuisance signals.
    runs : tuple of RunTruth
        Every run, in subject / session / run order.
    signal_source : str
        ``"abide"`` or ``"synthetic"``.
    motion : bool
        Whether the subjects moved (random walk and spikes in the motion parameters) or were
        very still.
    artefact : bool
        Whether the motion artefact was painted into the BOLD.
    tr : float
        Repetition time (s).
    space : str
        The ``space-`` label of the derivatives.
    """

    out_dir: Path
    bids_dir: Path
    fmriprep_dir: Path
    truth_dir: Path
    atlas: Path
    wm_mask: Path
    csf_mask: Path
    runs: tuple[RunTruth, ...] = field(default_factory=tuple)
    signal_source: str = "synthetic"
    motion: bool = True
    artefact: bool = True
    tr: float = 2.0
    space: str = "MNI152NLin6Asym"

    @property
    def subjects(self) -> list[str]:
        """Subject labels (without ``sub-``), in order."""
        return sorted({r.subject for r in self.runs})

    def get_run(self, subject: str, session: str | None = None, run: str | None = None) -> RunTruth:
        """Return one run.

        Parameters
        ----------
        subject : str
            Subject label, with or without ``sub-``.
        session, run : str, optional
            Session and run labels (with or without ``ses-``/``run-``); leave out when the
            dataset has a single session/run.

        Returns
        -------
        RunTruth
            The run.

        Raises
        ------
        KeyError
            If no run matches.
        """
        sub = subject.removeprefix("sub-")
        ses = session.removeprefix("ses-") if session is not None else None
        rn = str(run).removeprefix("run-") if run is not None else None
        for r in self.runs:
            if r.subject == sub and r.session == ses and r.run == rn:
                return r
        raise KeyError(f"no run sub-{sub} ses-{ses} run-{rn} in {self.truth_dir}")

    def load_run(
        self, subject: str, session: str | None = None, run: str | None = None
    ) -> dict[str, np.ndarray]:
        """Load one run's ground-truth arrays (see :meth:`RunTruth.load`).

        Parameters
        ----------
        subject : str
            Subject label.
        session, run : str, optional
            Session and run labels.

        Returns
        -------
        dict of str to numpy.ndarray
            The arrays.
        """
        return self.get_run(subject, session, run).load()

    def participants(self) -> pd.DataFrame:
        """Read ``participants.tsv`` of the raw dataset.

        Returns
        -------
        pandas.DataFrame
            ``participant_id``, ``age``, ``sex``, ``fluid_intelligence``.
        """
        return pd.read_csv(self.bids_dir / "participants.tsv", sep="\t", na_values=["n/a"])

    def metadata(self) -> dict[str, Any]:
        """Return the parsed ``truth.json``.

        Returns
        -------
        dict
            Parameters, grid, subjects (with ABIDE FILE_IDs) and runs.
        """
        return json.loads((self.truth_dir / TRUTH_JSON).read_text())

    @classmethod
    def from_dir(cls, out_dir: str | Path) -> DatasetTruth:
        """Re-open a dataset written by :func:`make_dataset`.

        Parameters
        ----------
        out_dir : str or pathlib.Path
            The folder given to :func:`make_dataset`.

        Returns
        -------
        DatasetTruth
            The dataset.

        Raises
        ------
        InputError
            If ``out_dir/truth/truth.json`` is missing or malformed.
        """
        out = Path(out_dir)
        path = out / "truth" / TRUTH_JSON
        try:
            meta = json.loads(path.read_text())
            runs = tuple(
                RunTruth(
                    subject=r["subject"],
                    session=r["session"],
                    run=r["run"],
                    raw_bold=out / r["raw_bold"],
                    preproc_bold=out / r["preproc_bold"],
                    brain_mask=out / r["brain_mask"],
                    confounds=out / r["confounds"],
                    truth_file=out / r["truth"],
                    n_volumes=int(r["n_volumes"]),
                    tr=float(r["tr"]),
                    abide_file_id=r["abide_file_id"],
                )
                for r in meta["runs"]
            )
            return cls(
                out_dir=out,
                bids_dir=out / meta["bids_dir"],
                fmriprep_dir=out / meta["fmriprep_dir"],
                truth_dir=out / "truth",
                atlas=out / meta["grid"]["atlas"],
                wm_mask=out / meta["grid"]["wm_mask"],
                csf_mask=out / meta["grid"]["csf_mask"],
                runs=runs,
                signal_source=meta["signal_source"],
                motion=bool(meta["parameters"]["motion"]),
                artefact=bool(meta["parameters"]["artefact"]),
                tr=float(meta["parameters"]["tr"]),
                space=meta["parameters"]["space"],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"cannot read test-data truth {path}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# helpers


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *keys])


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _image(
    data: np.ndarray, affine: np.ndarray, zooms: Sequence[float], code: int
) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_zooms(tuple(zooms))
    return img


def _roi_mean(labels: np.ndarray, counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Parcel means of per-voxel ``values`` (V,) or (V, k); NaN for parcels without voxels."""
    v = values.reshape(values.shape[0], -1)
    out = np.stack(
        [np.bincount(labels, weights=v[:, j], minlength=N_ROIS + 1)[1:] for j in range(v.shape[1])],
        axis=1,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        out = out / counts[:, None]
    return out.reshape((N_ROIS,) + values.shape[1:])


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:g}"


@dataclass
class _Subject:
    label: str
    age: float | None
    sex: str | None
    fluid_intelligence: float | None
    abide: AbideSubject | None
    amplitude: np.ndarray  # (200,) synthetic per-ROI amplitude


def _validate(
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


# --------------------------------------------------------------------------------------------
# the maker


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
    _validate(n_subjects, n_sessions, n_runs, n_volumes, tr, space, seed)
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

    subjects = _make_subjects(
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
        _write_all(
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


def _make_subjects(
    *,
    n_subjects: int,
    need_volumes: int,
    tr: float,
    abide_dir: Path | None,
    abide_file_ids: Sequence[str] | None,
    seed: int,
) -> list[_Subject]:
    width = max(2, len(str(n_subjects)))
    labels = [f"{i + 1:0{width}d}" for i in range(n_subjects)]
    if abide_dir is None:
        if abide_file_ids is not None:
            raise UsageError("abide_file_ids needs abide_dir (the ABIDE PCP CC200 folder)")
        rng = _rng(seed, _S_PHENO)
        out = []
        for lab in labels:
            out.append(
                _Subject(
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
        _Subject(
            label=lab,
            age=s.age,
            sex=s.sex,
            fluid_intelligence=s.piq,
            abide=s,
            amplitude=np.ones(N_ROIS),
        )
        for lab, s in zip(labels, chosen, strict=True)
    ]


@dataclass
class _Anatomy:
    baseline: np.ndarray  # (V,)
    neural_gain: np.ndarray  # (V,)
    nuisance_gain: np.ndarray  # (V, 3): drift, wm, csf
    betas: np.ndarray  # (V, 6)


def _anatomy(grid: Grid, rng: np.random.Generator) -> _Anatomy:
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
    return _Anatomy(
        baseline=baseline,
        neural_gain=neural_gain,
        nuisance_gain=np.column_stack([drift_gain, wm_gain, csf_gain]),
        betas=betas,
    )


def _roi_source(
    subj: _Subject,
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


def _write_all(
    root: Path,
    *,
    grid: Grid,
    subjects: list[_Subject],
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
    nib.save(_image(grid.labels.astype(np.int16), grid.affine, (vs,) * 3, 4), root / atlas_rel)
    nib.save(_image(grid.wm.astype(np.uint8), grid.affine, (vs,) * 3, 4), root / wm_rel)
    nib.save(_image(grid.csf.astype(np.uint8), grid.affine, (vs,) * 3, 4), root / csf_rel)
    mask_img = _image(grid.brain.astype(np.uint8), grid.affine, (vs,) * 3, 4)

    lab = grid.labels[grid.brain].astype(np.int64)
    counts = np.bincount(lab, minlength=N_ROIS + 1)[1:].astype(np.float64)
    in_wm = grid.wm[grid.brain]
    in_csf = grid.csf[grid.brain]
    coords = np.argwhere(grid.brain)
    xyz = coords @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    centroids = _roi_mean(lab, counts, xyz)
    networks = network_assignment(centroids, 7, _rng(seed, _S_NETWORK))

    _write_raw_top(bids, subjects, tr, use_abide)
    _write_json(fmriprep / "dataset_description.json", _fmriprep_description(use_abide))

    run_entries: list[dict[str, Any]] = []
    subject_entries: list[dict[str, Any]] = []
    ses_labels = [f"{i + 1:02d}" for i in range(n_sessions)] if n_sessions > 1 else [None]
    run_labels = [str(i + 1) for i in range(n_runs)] if n_runs > 1 else [None]
    for si, subj in enumerate(subjects):
        anat = _anatomy(grid, _rng(seed, _S_ANATOMY, si))
        roi_gain = _roi_mean(lab, counts, anat.neural_gain)
        roi_baseline = _roi_mean(lab, counts, anat.baseline)
        roi_nuis_gain = _roi_mean(lab, counts, anat.nuisance_gain)
        roi_betas = _roi_mean(lab, counts, anat.betas)
        k = 0
        for ses in ses_labels:
            for run in run_labels:
                keys = (si, k)
                entry = _paint_run(
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
                        "signal": _rng(seed, _S_SIGNAL, *keys),
                        "fill": _rng(seed, _S_FILL, si),
                        "nuisance": _rng(seed, _S_NUISANCE, *keys),
                        "noise": _rng(seed, _S_NOISE, *keys),
                        "motion": _rng(seed, _S_MOTION, *keys),
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
    _write_json(truth_dir / TRUTH_JSON, meta)
    return meta


def _paint_run(
    root: Path,
    *,
    grid: Grid,
    subj: _Subject,
    ses: str | None,
    run: str | None,
    run_index: int,
    n: int,
    tr: float,
    space: str,
    motion: bool,
    artefact: bool,
    anat: _Anatomy,
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
    source, scale, synthetic_rois, row_index = _roi_source(
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
    nib.save(_image(vol, grid.affine, (vs, vs, vs, tr), 4), preproc)
    raw = raw_func / f"{prefix}_bold.nii.gz"
    del vol
    raw_vol = np.zeros(grid.shape + (n,), dtype=np.int16)
    raw_vol[grid.brain] = np.rint(data).astype(np.int16)
    raw_img = _image(raw_vol, grid.affine, (vs, vs, vs, tr), 1)
    raw_img.header.set_slope_inter(1.0, 0.0)
    nib.save(raw_img, raw)
    del raw_vol, raw_img
    mask = der_func / f"{prefix}_space-{space}_desc-brain_mask.nii.gz"
    nib.save(mask_img, mask)

    raw_uri = f"bids:raw:{(rel_func / raw.name).as_posix()}"
    _write_json(raw.with_name(f"{prefix}_bold.json"), {"RepetitionTime": tr, "TaskName": TASK})
    _write_json(
        preproc.with_name(preproc.name.replace(".nii.gz", ".json")),
        {
            "RepetitionTime": tr,
            "SkullStripped": True,
            "TaskName": TASK,
            "SliceTimingCorrected": False,
            "Sources": [raw_uri],
        },
    )
    _write_json(mask.with_name(mask.name.replace(".nii.gz", ".json")), {"Type": "Brain"})

    # confounds from the written data
    table, conf_meta = build_confounds(data, data[in_wm], data[in_csf], params, tr)
    confounds = der_func / f"{prefix}_desc-confounds_timeseries.tsv"
    write_confounds_tsv(table, confounds)
    _write_json(confounds.with_suffix(".json"), conf_meta)

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


def _write_raw_top(bids: Path, subjects: list[_Subject], tr: float, use_abide: bool) -> None:
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
    _write_json(bids / "dataset_description.json", desc)
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
            "age": _fmt(s.age),
            "sex": s.sex or "n/a",
            "fluid_intelligence": _fmt(s.fluid_intelligence),
        }
        for s in subjects
    ]
    pd.DataFrame(rows).to_csv(bids / "participants.tsv", sep="\t", index=False)
    fi_desc = (
        "Performance IQ (ABIDE PCP PIQ), the closest available proxy for fluid intelligence"
        if use_abide
        else "Synthetic fluid-intelligence score on an IQ scale (mean 105, SD 15)"
    )
    _write_json(
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
    _write_json(bids / f"task-{TASK}_bold.json", {"TaskName": TASK, "RepetitionTime": tr})


def _fmriprep_description(use_abide: bool) -> dict[str, Any]:
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
