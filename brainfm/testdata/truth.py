"""The known answer of a test dataset: its constants and the truth written beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.errors import InputError
from brainfm.testdata.signals import AbideSubject

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

S_ANATOMY, S_NETWORK, S_PHENO, S_SIGNAL, S_NUISANCE, S_NOISE, S_MOTION, S_FILL = range(8)


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


@dataclass
class Subject:
    label: str
    age: float | None
    sex: str | None
    fluid_intelligence: float | None
    abide: AbideSubject | None
    amplitude: np.ndarray  # (200,) synthetic per-ROI amplitude
