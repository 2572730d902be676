"""Find the inputs of each BOLD run in fMRIPrep derivatives with pybids, and check them.

Per participant, session and run: the preprocessed BOLD in a standard space
(``MNI152NLin6Asym`` preferred, ``MNI152NLin2009cAsym`` accepted), its brain mask, the
``desc-confounds_timeseries.tsv`` and the repetition time. Cheap checks (header, volume count
against the confounds rows, repetition time) run here, before any workflow is built, so that
bad input fails fast with a message that names the file.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nb
import nibabel.affines
import numpy as np

from brainfm.derivatives import index_ignore
from brainfm.errors import BrainfmError, InputError, NothingSelectedError
from brainfm.preproc.inputs import task_labels

LOGGER = logging.getLogger(__name__)

#: Standard spaces brainfm accepts, most preferred first.
SUPPORTED_SPACES = ("MNI152NLin6Asym", "MNI152NLin2009cAsym")

#: Entities that identify a run (all but space, resolution, description, suffix).
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction",
                "direction", "run", "echo")
_SHORT = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq",
          "ceagent": "ce", "reconstruction": "rec", "direction": "dir", "run": "run",
          "echo": "echo"}


@dataclass(frozen=True)
class BoldRun:
    """The inputs of one preprocessed BOLD run."""

    entities: tuple[tuple[str, str], ...]
    space: str
    bold_file: Path
    mask_file: Path
    confounds_file: Path
    repetition_time: float
    n_volumes: int

    @property
    def subject(self) -> str:
        """Participant label without ``sub-``."""
        return dict(self.entities)["sub"]

    @property
    def session(self) -> str | None:
        """Session label without ``ses-``, or None."""
        return dict(self.entities).get("ses")

    def to_dict(self) -> dict:
        """A plain-dict description (JSON friendly, hashable by nipype) for the workflows."""
        return {
            "entities": dict(self.entities),
            "space": self.space,
            "bold_file": str(self.bold_file),
            "mask_file": str(self.mask_file),
            "confounds_file": str(self.confounds_file),
            "repetition_time": self.repetition_time,
            "n_volumes": self.n_volumes,
        }


#: fMRIPrep folders a participant run never reads (indexing them costs most of the time).
_UNUSED_DATATYPES = ("anat", "figures", "log", "fmap", "dwi", "perf")


def _layout(fmriprep_dir: Path, participants: Sequence[str] | None = None):
    from bids import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False,
                                ignore=index_ignore(participants, _UNUSED_DATATYPES))
    try:
        return BIDSLayout(str(fmriprep_dir), validate=False, is_derivative=True,
                          config=["bids", "derivatives"], indexer=indexer)
    except (ValueError, OSError) as err:  # pybids' BIDSValidationError is a ValueError
        raise InputError(
            f"cannot index {fmriprep_dir} as a BIDS derivatives dataset ({err}); it needs a "
            "dataset_description.json with DatasetType 'derivative' (as fMRIPrep writes)."
        ) from err


def _entities(bids_file) -> tuple[tuple[str, str], ...]:
    ents = bids_file.get_entities()
    return tuple((_SHORT[k], str(ents[k])) for k in RUN_ENTITIES if ents.get(k) is not None)


def _query_entities(entities: tuple[tuple[str, str], ...]) -> dict[str, object]:
    long = {v: k for k, v in _SHORT.items()}
    query: dict[str, object] = {long[k]: v for k, v in entities}
    for key in RUN_ENTITIES:
        query.setdefault(key, None)
    return query


def _one(layout, what: str, bold: Path, *layouts: dict, **query) -> Path:
    """The file of ``query`` (updated with each of ``layouts`` in turn: fMRIPrep versions)."""
    for version in layouts or ({},):
        found = layout.get(return_type="file", invalid_filters="allow", **{**query, **version})
        if found:
            return Path(sorted(found)[0])
    old = sorted(bold.parent.glob("*_confounds.tsv")) + sorted(bold.parent.glob("*_brainmask.*"))
    if old:
        raise InputError(
            f"no {what} found for {bold}, but {old[0].name} is there: a layout of fMRIPrep "
            "before 1.4, which brainfm does not read (its confound names differ). Rerun "
            "fMRIPrep (20.2 or newer) on the raw data.")
    raise InputError(f"no {what} found for {bold}; fMRIPrep writes it next to the BOLD. "
                     "Rerun fMRIPrep or restore the file.")


#: Names of the brain mask and the confounds table across fMRIPrep versions, newest first:
#: ``desc-brain_mask`` and ``desc-confounds_timeseries`` (20.2 on); ``desc-confounds_regressors``
#: (1.4 to 20.1, same column names); ``label-brain_mask`` (some 1.x derivatives).
MASK_LAYOUTS = ({"desc": "brain"}, {"label": "brain", "desc": None})
CONFOUNDS_LAYOUTS = ({"suffix": "timeseries"}, {"suffix": "regressors"})


#: Longest plausible repetition time (s); above it the value is taken to be milliseconds.
MAX_REPETITION_TIME = 30.0


def _sidecar_name(bold: Path) -> str:
    name = bold.name.removesuffix(".gz").removesuffix(".nii")
    return str(bold.with_name(name + ".json"))


def repetition_time_seconds(value: object, source: str) -> float:
    """Check a ``RepetitionTime`` value: a number of seconds, positive and at most 30 s.

    Parameters
    ----------
    value : object
        The value as read (JSON number, or whatever the sidecar holds).
    source : str
        Where it was read (named in the message).

    Returns
    -------
    float
        The repetition time in seconds.

    Raises
    ------
    InputError
        Not a number, not positive, or above 30 s (BIDS gives seconds; 2000 is milliseconds).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"RepetitionTime {value!r} in {source} is not a number; BIDS gives it "
                         "in seconds (e.g. 2.0). Fix the sidecar.")
    tr = float(value)
    if not np.isfinite(tr) or tr <= 0:
        raise InputError(f"RepetitionTime {value!r} in {source} must be a positive number of "
                         "seconds (e.g. 2.0). Fix the sidecar.")
    if tr > MAX_REPETITION_TIME:
        raise InputError(
            f"RepetitionTime {value!r} in {source} is above {MAX_REPETITION_TIME:g} s; BIDS "
            f"gives it in seconds. If it is milliseconds, write {tr / 1000:g} instead.")
    return tr


#: Largest angle (degrees) between a voxel axis and the world axes of an image in a template
#: space: images resampled to a template lie on its axis-aligned grid.
MAX_TEMPLATE_OBLIQUITY_DEG = 1.0


def _header_repetition_time(img: Any) -> float | None:
    """The NIfTI header's volume spacing in seconds, or None when it says none."""
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        return None
    try:
        unit = img.header.get_xyzt_units()[1]
    except (AttributeError, IndexError):
        return None
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)  # 'unknown': no statement
    return float(zooms[3]) * scale if scale else None


def _warn_if_oblique(bold: Path, affine: np.ndarray, space: str) -> None:
    """Warn when an image labelled with a template space has an oblique (rotated) grid."""
    angle = float(np.degrees(np.max(nb.affines.obliquity(affine))))
    if angle > MAX_TEMPLATE_OBLIQUITY_DEG:
        LOGGER.warning(
            "%s is labelled space-%s but its voxel grid is oblique (%.1f degrees off the axes), "
            "unlike an image resampled to that template: check that it really is in %s (the "
            "atlases are placed on its grid as if it were)", bold, space, angle, space)


def _check_run(bold: Path, confounds: Path, layout_file,
               space: str | None = None) -> tuple[float, int]:
    try:
        img = nb.load(str(bold))
        shape = img.shape
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise InputError(f"cannot read the NIfTI header of {bold} ({err}); the file is corrupt "
                         "or not a NIfTI image. Re-create it (rerun fMRIPrep).") from err
    if len(shape) != 4 or shape[3] < 2:
        raise InputError(f"{bold} has shape {shape}; a BOLD run must be a 4-D time series.")
    n_vols = int(shape[3])
    try:
        with open(confounds, encoding="utf-8") as handle:
            n_rows = sum(1 for line in handle if line.strip()) - 1
    except OSError as err:
        raise InputError(f"cannot read confounds file {confounds} ({err})") from err
    if n_rows != n_vols:
        raise InputError(
            f"{confounds} has {n_rows} rows but {bold} has {n_vols} volumes; the confounds file "
            "must come from the same fMRIPrep run as the BOLD (one row per volume)."
        )
    if space is not None and space.startswith("MNI"):
        _warn_if_oblique(bold, img.affine, space)
    metadata = layout_file.get_metadata()
    if "RepetitionTime" in metadata:
        tr = repetition_time_seconds(metadata["RepetitionTime"], _sidecar_name(bold))
        header_tr = _header_repetition_time(img)
        if header_tr is not None and abs(header_tr - tr) > max(1e-3, 0.01 * tr):
            LOGGER.warning(
                "RepetitionTime %g s in %s disagrees with the NIfTI header of %s (%g s): brainfm "
                "uses the sidecar's, as BIDS says; correct whichever is wrong", tr,
                _sidecar_name(bold), bold, header_tr)
        return tr, n_vols
    zooms = img.header.get_zooms()
    if len(zooms) < 4 or not zooms[3] > 0:
        raise InputError(f"no RepetitionTime for {bold}: add it (in seconds) to its JSON "
                         f"sidecar {_sidecar_name(bold)}.")
    tr = repetition_time_seconds(float(zooms[3]), f"the NIfTI header of {bold}")
    LOGGER.warning("No RepetitionTime in the sidecar of %s; using the NIfTI header (%.3f s)",
                   bold.name, tr)
    return tr, n_vols


def _collect_run(layout, entities: tuple[tuple[str, str], ...], files: list,
                 filters: dict[str, dict] | None = None) -> BoldRun:
    """One run's BOLD in the preferred standard space, its mask and confounds, checked."""
    spaces = {f.get_entities().get("space"): f for f in files}
    space = next((s for s in SUPPORTED_SPACES if s in spaces), None)
    if space is None:
        names = ", ".join(sorted(Path(f.path).name for f in files))
        raise InputError(
            f"no BOLD in a standard space for {'_'.join(f'{k}-{v}' for k, v in entities)} "
            f"(found: {names}). brainfm needs fMRIPrep outputs in MNI152NLin6Asym (preferred) "
            "or MNI152NLin2009cAsym: rerun fMRIPrep with "
            "--output-spaces MNI152NLin6Asym:res-2."
        )
    if space != SUPPORTED_SPACES[0]:
        LOGGER.info("Using %s BOLD for %s (the atlases are placed in that space before "
                    "parcellation: brainfm.atlas_spaces)", space, Path(spaces[space].path).name)
    bold_file = spaces[space]
    bold = Path(bold_file.path)
    ents = bold_file.get_entities()
    base = _query_entities(entities)
    filters = filters or {}
    mask = _one(layout, "brain mask (desc-brain_mask)", bold, *MASK_LAYOUTS, **base, space=space,
                res=ents.get("res"), suffix="mask", extension=[".nii.gz", ".nii"],
                **filters.get("mask", {}))
    confounds = _one(layout, "confounds file (desc-confounds_timeseries.tsv)", bold,
                     *CONFOUNDS_LAYOUTS, **base, desc="confounds", extension=".tsv", space=None,
                     **filters.get("confounds", {}))
    tr, n_vols = _check_run(bold, confounds, bold_file, space)
    return BoldRun(entities, space, bold, mask, confounds, tr, n_vols)


def collect_runs(fmriprep_dir: Path, participant_labels: list[str] | None = None,
                 session_labels: list[str] | None = None,
                 task: str | Sequence[str] = "rest",
                 failed: dict[str, BrainfmError] | None = None,
                 filters: dict[str, dict] | None = None) -> dict[str, list[BoldRun]]:
    """Collect and check the preprocessed BOLD runs of each selected participant.

    Parameters
    ----------
    fmriprep_dir : Path
        An fMRIPrep derivatives dataset.
    participant_labels : list of str, optional
        Participants to process (without ``sub-``); all when empty.
    session_labels : list of str, optional
        Sessions to process (without ``ses-``); all when empty.
    task : str or sequence of str
        The task label(s) (``rest``).
    failed : dict, optional
        When given, a participant whose run fails its checks is left out and its error put
        here (participant label to error), so that the others can go on; by default the first
        error is raised.
    filters : dict, optional
        ``--bids-filter-file`` queries by input type (``bold``, ``mask``, ``confounds``).

    Returns
    -------
    dict
        Participant label to its runs, sorted.

    Raises
    ------
    NothingSelectedError
        A requested participant does not exist, or the filters match no BOLD run (exit 18).
    InputError
        A run lacks a standard-space BOLD, its mask or confounds, or they disagree (exit 66).
    """
    layout = _layout(Path(fmriprep_dir), participant_labels)
    indexed = sorted(layout.get_subjects())
    wanted = list(participant_labels or indexed)
    missing = [p for p in wanted if p not in indexed]
    if missing:
        available = sorted(p.name[len("sub-"):] for p in Path(fmriprep_dir).glob("sub-*")
                           if p.is_dir())
        raise NothingSelectedError(
            f"participant(s) {', '.join('sub-' + p for p in missing)} not found in "
            f"{fmriprep_dir} (available: {', '.join('sub-' + p for p in available) or 'none'})"
        )
    tasks = task_labels(task)
    query = {"subject": wanted, "task": tasks, "suffix": "bold", "desc": "preproc",
             "extension": [".nii.gz", ".nii"]}
    if session_labels:
        query["session"] = list(session_labels)
    query.update((filters or {}).get("bold", {}))
    candidates = layout.get(invalid_filters="allow", **query)
    if not candidates:
        sessions = f" and session(s) {', '.join(session_labels)}" if session_labels else ""
        chosen = f" matching {filters['bold']} (--bids-filter-file)" if (
            filters or {}).get("bold") else ""
        raise NothingSelectedError(
            f"no preprocessed BOLD (desc-preproc_bold) for task {', '.join(tasks)}{sessions}"
            f"{chosen} of "
            f"{', '.join('sub-' + p for p in wanted)} in {fmriprep_dir}"
        )
    by_run: dict[tuple, list] = defaultdict(list)
    for bids_file in candidates:
        by_run[_entities(bids_file)].append(bids_file)
    runs: dict[str, list[BoldRun]] = defaultdict(list)
    failed_here: dict[str, BrainfmError] = {}
    for entities, files in sorted(by_run.items()):
        subject = dict(entities)["sub"]
        if subject in failed_here:
            continue
        try:
            run = _collect_run(layout, entities, files, filters)
        except InputError as err:
            if failed is None:
                raise
            failed_here[subject] = err
            LOGGER.error("sub-%s is left out: %s", subject, err)
            continue
        runs[run.subject].append(run)
    for subject, err in failed_here.items():
        runs.pop(subject, None)
        if failed is not None:
            failed[subject] = err
    for subject in wanted:
        if subject not in runs and subject not in failed_here:
            raise NothingSelectedError(
                f"sub-{subject} has no preprocessed BOLD for task {', '.join(tasks)} in "
                f"{fmriprep_dir}")
    return dict(runs)
