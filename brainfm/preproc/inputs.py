"""Find and check the raw BOLD runs of a BIDS dataset for preprocessing.

:func:`find_raw_bold` is a cheap file-name search (no indexing) that tells whether a dataset
holds raw BOLD at all; :func:`collect_raw_runs` indexes the dataset with pybids (so that
sidecar metadata is inherited the BIDS way), and checks each run before any processing starts:
a 4-D image with at least 2 volumes, a ``RepetitionTime``, and a ``SliceTiming`` list (when
present) that matches the slices and the repetition time. Problems raise
:class:`~brainfm.errors.InputError` naming the file (exit 66).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from brainfm.derivatives import index_ignore
from brainfm.errors import InputError, NothingSelectedError
from brainfm.preproc.realign import slice_info

#: Entities that identify a run, in BIDS order (long pybids name, short file-name key).
RUN_ENTITIES = (("subject", "sub"), ("session", "ses"), ("task", "task"),
                ("acquisition", "acq"), ("ceagent", "ce"), ("reconstruction", "rec"),
                ("direction", "dir"), ("run", "run"), ("echo", "echo"))


@dataclass(frozen=True)
class RawBoldRun:
    """A checked raw BOLD run.

    Attributes
    ----------
    entities : tuple of (str, str)
        Short entity keys and values in BIDS order (``(("sub", "01"), ("task", "rest"))``).
    bold_file : pathlib.Path
        The raw ``*_bold.nii[.gz]``.
    repetition_time : float
        ``RepetitionTime`` (s).
    slice_timing : tuple of float or None
        ``SliceTiming`` (s), None when absent.
    slice_encoding_direction : str or None
        ``SliceEncodingDirection`` (None: the BIDS default ``k``).
    n_volumes : int
        Number of volumes.
    """

    entities: tuple[tuple[str, str], ...]
    bold_file: Path
    repetition_time: float
    slice_timing: tuple[float, ...] | None
    slice_encoding_direction: str | None
    n_volumes: int

    @property
    def subject(self) -> str:
        """Participant label without ``sub-``."""
        return dict(self.entities)["sub"]

    @property
    def prefix(self) -> str:
        """The run's file-name prefix, e.g. ``sub-01_ses-1_task-rest_run-1``."""
        return "_".join(f"{k}-{v}" for k, v in self.entities)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly description (for nipype nodes).

        Returns
        -------
        dict
            ``entities`` (dict), ``bold_file``, ``repetition_time``, ``slice_timing`` (list or
            None), ``slice_encoding_direction``, ``n_volumes``.
        """
        return {
            "entities": dict(self.entities),
            "bold_file": str(self.bold_file),
            "repetition_time": self.repetition_time,
            "slice_timing": list(self.slice_timing) if self.slice_timing else None,
            "slice_encoding_direction": self.slice_encoding_direction,
            "n_volumes": self.n_volumes,
        }


def _strip(labels: Sequence[str] | str | None, prefix: str) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        labels = [labels]
    return [str(label).strip().removeprefix(prefix) for label in labels]


def task_labels(task: str | Sequence[str]) -> list[str]:
    """``--task-id`` as a list of labels (one label or several)."""
    return [task] if isinstance(task, str) else [str(t) for t in task]


def find_raw_bold(
    bids_dir: str | Path,
    participant_labels: Sequence[str] | str | None = None,
    task: str | Sequence[str] | None = None,
) -> list[Path]:
    """Raw BOLD files of a dataset, by file name only (fast; no metadata is read).

    Looks for ``sub-*/[ses-*/]func/*_bold.nii[.gz]`` (never inside ``derivatives/`` or
    ``sourcedata/``).

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        The dataset.
    participant_labels : sequence of str or str, optional
        Participants (with or without ``sub-``); default all.
    task : str or sequence of str, optional
        Task label(s); default any.

    Returns
    -------
    list of pathlib.Path
        Sorted paths.
    """
    root = Path(bids_dir)
    subjects = [f"sub-{p}" for p in _strip(participant_labels, "sub-")] or ["sub-*"]
    found: set[Path] = set()
    for sub in subjects:
        for pattern in (f"{sub}/func/*_bold.nii*", f"{sub}/ses-*/func/*_bold.nii*"):
            for path in root.glob(pattern):
                if not re.search(r"_bold\.nii(\.gz)?$", path.name):
                    continue
                if task is not None and not any(f"_task-{t}_" in f"{path.name}_"
                                                for t in task_labels(task)):
                    continue
                found.add(path)
    return sorted(found)


def _layout(bids_dir: Path, participants: Sequence[str] | None = None) -> Any:
    from bids import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False, ignore=index_ignore(participants))
    try:
        return BIDSLayout(str(bids_dir), validate=False, derivatives=False, indexer=indexer)
    except (ValueError, OSError) as err:
        raise InputError(f"cannot index {bids_dir} as a BIDS dataset ({err})") from err


#: Fewest voxels along any axis of a raw BOLD run the minimal preprocessing accepts: its affine
#: registration to the MNI template needs (near) whole-brain coverage.
MIN_SLICES = 8


def check_raw_bold(bold_file: str | Path, metadata: dict[str, Any],
                   entities: tuple[tuple[str, str], ...]) -> RawBoldRun:
    """Check one raw BOLD run and its metadata.

    Parameters
    ----------
    bold_file : str or pathlib.Path
        The image.
    metadata : dict
        Its (inherited) sidecar metadata.
    entities : tuple of (str, str)
        Its entities (short keys).

    Returns
    -------
    RawBoldRun
        The checked run.

    Raises
    ------
    InputError
        Unreadable or not 4-D, fewer than 2 volumes or :data:`MIN_SLICES` slices, no
        ``RepetitionTime``, or a ``SliceTiming`` that does not fit the image.
    """
    path = Path(bold_file)
    try:
        shape = nib.load(str(path)).shape
    except Exception as err:  # nibabel raises many types for corrupt headers
        raise InputError(
            f"cannot read the NIfTI header of raw BOLD {path} ({err}); the file is corrupt or "
            "not a NIfTI image"
        ) from err
    if len(shape) != 4 or shape[3] < 2:
        raise InputError(
            f"raw BOLD {path} has shape {tuple(shape)}; a BOLD run must be a 4-D time series "
            "with at least 2 volumes (a 3-D image cannot be preprocessed)"
        )
    tr = metadata.get("RepetitionTime")
    try:
        tr = float(tr) if tr is not None else None
    except (TypeError, ValueError):
        tr = None
    if tr is None or not tr > 0:
        raise InputError(
            f"no valid RepetitionTime for raw BOLD {path}: add \"RepetitionTime\" (seconds) to "
            "its JSON sidecar (BIDS requires it)"
        )
    if min(shape[:3]) < MIN_SLICES:
        raise InputError(
            f"raw BOLD {path} is {shape[0]}x{shape[1]}x{shape[2]} voxels ({shape[3]} volumes, "
            f"{shape[3] * tr:g} s): brainfm's minimal preprocessing registers whole-brain EPI to "
            f"the MNI template and needs at least {MIN_SLICES} slices along each axis; "
            "preprocess partial-coverage runs with fMRIPrep (--preproc fmriprep) or leave them out"
        )
    direction = metadata.get("SliceEncodingDirection")
    slice_timing = metadata.get("SliceTiming")
    times: tuple[float, ...] | None = None
    if slice_timing is not None:
        try:
            axis, _ = slice_info(direction)
        except InputError as err:
            raise InputError(f"raw BOLD {path}: {err}") from err
        try:
            times = tuple(float(t) for t in slice_timing)
        except (TypeError, ValueError) as err:
            raise InputError(f"SliceTiming of raw BOLD {path} is not a list of numbers") from err
        if len(times) != shape[axis]:
            raise InputError(
                f"SliceTiming of raw BOLD {path} has {len(times)} entries but the image has "
                f"{shape[axis]} slices along its slice axis ({'ijk'[axis]}); fix the sidecar"
            )
        if min(times) < 0 or max(times) >= tr:
            raise InputError(
                f"SliceTiming of raw BOLD {path} must lie in [0, RepetitionTime={tr}) s"
            )
        if max(times) == min(times):
            times = None  # simultaneous slices (multiband with one band): nothing to correct
    return RawBoldRun(
        entities=entities,
        bold_file=path,
        repetition_time=tr,
        slice_timing=times,
        slice_encoding_direction=str(direction) if direction else None,
        n_volumes=int(shape[3]),
    )


def collect_raw_runs(
    bids_dir: str | Path,
    participant_labels: Sequence[str] | str | None = None,
    session_labels: Sequence[str] | str | None = None,
    task: str | Sequence[str] = "rest",
    bold_filter: dict[str, Any] | None = None,
) -> dict[str, list[RawBoldRun]]:
    """Collect and check the raw BOLD runs of the selected participants.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        The raw BIDS dataset.
    participant_labels : sequence of str or str, optional
        Participants (with or without ``sub-``); default all.
    session_labels : sequence of str or str, optional
        Sessions (with or without ``ses-``); default all.
    task : str or sequence of str
        Task label(s).
    bold_filter : dict, optional
        Extra PyBIDS query entities for the BOLD runs (the ``bold`` entry of
        ``--bids-filter-file``, e.g. ``{"run": 2}``).

    Returns
    -------
    dict of str to list of RawBoldRun
        Runs per participant, sorted.

    Raises
    ------
    NothingSelectedError
        A requested participant has no raw BOLD for the task (exit 18).
    InputError
        A run fails :func:`check_raw_bold`, or the data are multi-echo (exit 66).
    """
    root = Path(bids_dir)
    labels = _strip(participant_labels, "sub-")
    layout = _layout(root, labels)
    wanted = labels or sorted(layout.get_subjects())
    query: dict[str, Any] = {"subject": wanted, "task": task_labels(task), "suffix": "bold",
                             "datatype": "func", "extension": [".nii.gz", ".nii"]}
    sessions = _strip(session_labels, "ses-")
    if sessions:
        query["session"] = sessions
    query.update(bold_filter or {})
    runs: dict[str, list[RawBoldRun]] = defaultdict(list)
    for bids_file in layout.get(invalid_filters="allow", **query):
        ents = bids_file.get_entities()
        if ents.get("echo") is not None:
            raise InputError(
                f"{bids_file.path} is one echo of a multi-echo run: the minimal preprocessing "
                "handles single-echo BOLD only; use --preproc fmriprep"
            )
        entities = tuple((short, str(ents[long])) for long, short in RUN_ENTITIES
                         if ents.get(long) is not None)
        run = check_raw_bold(bids_file.path, bids_file.get_metadata(), entities)
        runs[run.subject].append(run)
    for subject in wanted:
        if subject not in runs:
            chosen = f" matching {bold_filter} (--bids-filter-file)" if bold_filter else ""
            raise NothingSelectedError(
                f"sub-{subject} has no raw BOLD for task {', '.join(task_labels(task))}"
                f"{chosen} in {root}"
            )
    return {sub: sorted(r, key=lambda x: x.prefix) for sub, r in sorted(runs.items())}
