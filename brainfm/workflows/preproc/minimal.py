"""brainfm's minimal preprocessing of raw BOLD, as a nipype workflow.

For machines without fMRIPrep. Per run (see :mod:`brainfm.preproc.steps`): nipy space-time
realignment, slice-timing correction, affine registration of the mean EPI to the bundled
MNI152NLin6Asym template, one cubic-spline resampling per volume onto the 2 mm (or 3 mm)
template grid, fMRIPrep-style confounds, and an fMRIPrep-style derivatives folder that
:func:`brainfm.bidsapp.inputs.collect_runs` reads like fMRIPrep's.

It is coarser than fMRIPrep: an affine EPI-to-template registration (no T1w image, no
non-linear normalisation), no susceptibility-distortion correction or field maps, no ICA-AROMA,
no non-steady-state detection. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from brainfm.interfaces.preproc import (
    ComputeConfounds,
    EstimateHeadMotion,
    MinimalDerivativesSink,
    RegisterToTemplate,
    ResampleToTemplate,
    SliceTimingCorrection,
)
from brainfm.preproc.inputs import collect_raw_runs
from brainfm.preproc.outputs import write_dataset_description
from brainfm.preproc.templates import RESOLUTIONS
from brainfm.workflows.preproc.execution import run_workflow

LOGGER = logging.getLogger(__name__)


#: Folder (under ``output_dir/sourcedata``) of the minimal preprocessing's derivatives.
MINIMAL_DIRNAME = "brainfm-minimal-preproc"


def minimal_output_dir(output_dir: str | Path) -> Path:
    """Where brainfm puts its minimal preprocessing: ``output_dir/sourcedata/<name>``.

    Parameters
    ----------
    output_dir : str or pathlib.Path
        brainfm's output folder.

    Returns
    -------
    pathlib.Path
        ``output_dir/sourcedata/brainfm-minimal-preproc`` (absolute).
    """
    return Path(output_dir).absolute() / "sourcedata" / MINIMAL_DIRNAME


def _node_name(entities: dict[str, str]) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "", "_".join(f"{k}{v}" for k, v in entities.items()))


def init_minimal_run_wf(run: dict, out_dir: str | Path, bids_dir: str | Path, *,
                        resolution: int = 2, similarity: str = "crl1",
                        omp_nthreads: int = 1, name: str = "minimal_run_wf") -> pe.Workflow:
    """The minimal preprocessing of one raw BOLD run.

    Parameters
    ----------
    run : dict
        :meth:`brainfm.preproc.inputs.RawBoldRun.to_dict` of the run.
    out_dir : str or pathlib.Path
        fMRIPrep-style derivatives folder.
    bids_dir : str or pathlib.Path
        Raw BIDS dataset.
    resolution : int
        Output grid: 2 or 3 mm.
    similarity : str
        Similarity of the registration's intensity stage.
    omp_nthreads : int
        Threads of the confounds node (linear algebra of CompCor).
    name : str
        Workflow name.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Nodes ``motion``, ``slice_timing``, ``register``, ``resample``, ``confounds``,
        ``ds_run``; ``outputnode.out_files`` lists the written files.
    """
    wf = pe.Workflow(name=name)
    tr = float(run["repetition_time"])
    timing = list(run.get("slice_timing") or [])
    direction = run.get("slice_encoding_direction") or "k"
    motion = pe.Node(EstimateHeadMotion(bold_file=run["bold_file"], repetition_time=tr,
                                        slice_timing=timing,
                                        slice_encoding_direction=direction), name="motion")
    stc = pe.Node(SliceTimingCorrection(bold_file=run["bold_file"], repetition_time=tr,
                                        slice_timing=timing, slice_encoding_direction=direction),
                  name="slice_timing")
    register = pe.Node(RegisterToTemplate(bold_file=run["bold_file"], similarity=similarity),
                       name="register")
    resample = pe.Node(ResampleToTemplate(resolution=resolution), name="resample")
    confounds = pe.Node(ComputeConfounds(repetition_time=tr, resolution=resolution),
                        name="confounds", n_procs=max(1, int(omp_nthreads)))
    sink = pe.Node(MinimalDerivativesSink(
        out_dir=str(out_dir), bids_dir=str(bids_dir), entities=dict(run["entities"]),
        raw_bold=run["bold_file"], repetition_time=tr, resolution=resolution,
    ), name="ds_run")
    sink.overwrite = True  # always (re)write the derivatives, even from cached results
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    wf.connect([
        (motion, register, [("motion_file", "motion_file")]),
        (motion, resample, [("motion_file", "motion_file")]),
        (stc, resample, [("out_file", "bold_file")]),
        (register, resample, [("registration_file", "registration_file")]),
        (resample, confounds, [("bold_file", "bold_file"), ("mask_file", "mask_file")]),
        (motion, confounds, [("motion_file", "motion_file")]),
        (resample, sink, [("bold_file", "bold_file"), ("mask_file", "mask_file")]),
        (confounds, sink, [("confounds_file", "confounds_file"),
                           ("confounds_json", "confounds_json")]),
        (register, sink, [("registration_file", "registration_file")]),
        (stc, sink, [("start_time", "start_time")]),
        (sink, outputnode, [("out_files", "out_files")]),
    ])
    return wf


def init_minimal_preproc_wf(runs: Sequence[dict], out_dir: str | Path, bids_dir: str | Path,
                            *, resolution: int = 2, similarity: str = "crl1",
                            omp_nthreads: int = 1,
                            name: str = "minimal_preproc_wf") -> pe.Workflow:
    """The minimal preprocessing of several raw BOLD runs (one sub-workflow each).

    Parameters
    ----------
    runs : sequence of dict
        :meth:`brainfm.preproc.inputs.RawBoldRun.to_dict` of each run.
    out_dir : str or pathlib.Path
        fMRIPrep-style derivatives folder.
    bids_dir : str or pathlib.Path
        Raw BIDS dataset.
    resolution : int
        Output grid: 2 (default, like fMRIPrep's ``MNI152NLin6Asym:res-2``) or 3 mm.
    similarity : str
        Similarity of the registration's intensity stage.
    omp_nthreads : int
        Threads of the confounds nodes.
    name : str
        Workflow name.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        One ``run_<entities>_wf`` per run.
    """
    wf = pe.Workflow(name=name)
    for run in runs:
        wf.add_nodes([init_minimal_run_wf(
            run, out_dir, bids_dir, resolution=resolution, similarity=similarity,
            omp_nthreads=omp_nthreads, name=f"run_{_node_name(run['entities'])}_wf",
        )])
    return wf


def run_minimal_preproc(
    bids_dir: str | Path,
    out_fmriprep_dir: str | Path,
    participant_label: Sequence[str] | str | None,
    task: str | Sequence[str],
    work_dir: str | Path,
    nprocs: int,
    omp_nthreads: int,
    *,
    session_label: Sequence[str] | str | None = None,
    resolution: int = 2,
    similarity: str = "crl1",
    poll_sleep: float = 0.2,
    bold_filter: dict | None = None,
) -> Path:
    """Preprocess the raw BOLD of the selected participants into an fMRIPrep-style folder.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Raw BIDS dataset (read only).
    out_fmriprep_dir : str or pathlib.Path
        The derivatives folder to write (:func:`minimal_output_dir`:
        ``output_dir/sourcedata/brainfm-minimal-preproc``); give it to
        :func:`brainfm.bidsapp.inputs.collect_runs` afterwards.
    participant_label : sequence of str or str or None
        Participants (with or without ``sub-``); None: all.
    task : str
        Task label of the BOLD runs.
    work_dir : str or pathlib.Path
        nipype working folder (reruns reuse finished steps).
    nprocs : int
        Parallel processes (runs are processed in parallel).
    omp_nthreads : int
        Threads per process for linear algebra.
    session_label : sequence of str or str, optional
        Sessions (with or without ``ses-``); default all.
    resolution : int
        Output grid, 2 (default) or 3 mm.
    similarity : str
        Similarity of the registration's intensity stage (``crl1`` default; ``mi``, ``nmi``,
        ``cr``, ``cc``).
    poll_sleep : float
        MultiProc polling interval (s).
    bold_filter : dict, optional
        PyBIDS query entities selecting the raw BOLD runs (``--bids-filter-file``'s ``bold``).

    Returns
    -------
    pathlib.Path
        ``out_fmriprep_dir`` (absolute).

    Raises
    ------
    InputError
        Raw BOLD that is not 4-D, lacks ``RepetitionTime`` or has a bad ``SliceTiming``
        (exit 66; raised before anything is processed).
    NothingSelectedError
        A participant has no BOLD for the task (exit 18).
    UsageError
        Bad ``resolution`` or ``similarity`` (exit 64).
    ProcessingError
        A step failed (exit 1, the node is named).
    """
    from brainfm.errors import UsageError
    from brainfm.preproc.register import SIMILARITIES

    if resolution not in RESOLUTIONS:
        raise UsageError(f"resolution must be one of {RESOLUTIONS} mm, got {resolution!r}")
    if similarity not in SIMILARITIES:
        raise UsageError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    bids = Path(bids_dir).absolute()
    out = Path(out_fmriprep_dir).absolute()
    runs = collect_raw_runs(bids, participant_label, session_label, task, bold_filter)
    all_runs = [run.to_dict() for sub_runs in runs.values() for run in sub_runs]
    LOGGER.info("minimal preprocessing of %d run(s) of %d participant(s) into %s",
                len(all_runs), len(runs), out)
    write_dataset_description(out, bids)
    workflow = init_minimal_preproc_wf(all_runs, out, bids, resolution=resolution,
                                       similarity=similarity, omp_nthreads=omp_nthreads)
    started = time.time()
    run_workflow(workflow, work_dir, nprocs, poll_sleep)
    LOGGER.info("minimal preprocessing finished in %.1f s", time.time() - started)
    return out
