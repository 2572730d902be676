"""Preprocess raw BOLD with fMRIPrep, run as one nipype node.

fMRIPrep is run natively (``fmriprep`` on ``PATH``), through ``fmriprep-docker`` with Docker,
or from an Apptainer/Singularity image (``--fmriprep-image path.sif``); see
:mod:`brainfm.preproc.fmriprep_command`. Its outputs land in ``output_dir/sourcedata/fmriprep``
(as XCP-D keeps its inputs), from where the participant level reads them like any fMRIPrep
derivatives. The exact command line is logged and written at the top of the node's
``fmriprep.log``.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from brainfm.fileio import write_json_atomic
from brainfm.interfaces.preproc import RunFmriprep
from brainfm.preproc.fmriprep_command import (
    build_fmriprep_command,
    check_anatomy,
    check_docker_image,
    detect_backend,
    find_license,
)
from brainfm.workflows.preproc.execution import run_workflow

LOGGER = logging.getLogger(__name__)


def fmriprep_output_dir(output_dir: str | Path) -> Path:
    """Where brainfm puts fMRIPrep's outputs: ``output_dir/sourcedata/fmriprep``.

    Parameters
    ----------
    output_dir : str or pathlib.Path
        brainfm's output folder.

    Returns
    -------
    pathlib.Path
        The absolute fMRIPrep derivatives folder.
    """
    return Path(output_dir).absolute() / "sourcedata" / "fmriprep"


def init_fmriprep_wf(
    bids_dir: str | Path,
    fmriprep_dir: str | Path,
    participant_labels: Sequence[str] | str | None,
    *,
    backend: str,
    image: str | None,
    nprocs: int,
    omp_nthreads: int,
    fs_license_file: str | Path,
    fs_no_reconall: bool,
    work_dir: str | Path,
    skip_bids_validation: bool = False,
    bids_filter_file: str | Path | None = None,
    name: str = "fmriprep_wf",
) -> pe.Workflow:
    """A workflow with one node that runs fMRIPrep.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Raw BIDS dataset.
    fmriprep_dir : str or pathlib.Path
        fMRIPrep's output folder.
    participant_labels : sequence of str or str or None
        Participants (None: all).
    backend, image, nprocs, omp_nthreads, fs_license_file, fs_no_reconall, work_dir,
    skip_bids_validation, bids_filter_file
        See :func:`brainfm.preproc.fmriprep_command.build_fmriprep_command`; ``work_dir`` is
        fMRIPrep's own working folder.
    name : str
        Workflow name.

    Returns
    -------
    nipype.pipeline.engine.Workflow
        Node ``fmriprep`` (:class:`~brainfm.interfaces.preproc.RunFmriprep`);
        ``outputnode.fmriprep_dir``.
    """
    command = build_fmriprep_command(
        backend, bids_dir, fmriprep_dir, participant_labels, image=image, nprocs=nprocs,
        omp_nthreads=omp_nthreads, fs_license_file=fs_license_file,
        fs_no_reconall=fs_no_reconall, work_dir=work_dir,
        skip_bids_validation=skip_bids_validation, bids_filter_file=bids_filter_file,
    )
    wf = pe.Workflow(name=name)
    node = pe.Node(RunFmriprep(command=command, out_dir=str(Path(fmriprep_dir).absolute())),
                   name="fmriprep", n_procs=max(1, int(nprocs)))
    outputnode = pe.Node(niu.IdentityInterface(fields=["fmriprep_dir"]), name="outputnode")
    wf.connect(node, "fmriprep_dir", outputnode, "fmriprep_dir")
    return wf


def run_fmriprep(
    bids_dir: str | Path,
    output_dir: str | Path,
    participant_labels: Sequence[str] | str | None,
    *,
    work_dir: str | Path,
    image: str | None = None,
    nprocs: int = 1,
    omp_nthreads: int = 1,
    fs_license_file: str | Path | None = None,
    fs_no_reconall: bool = False,
    skip_bids_validation: bool = False,
    poll_sleep: float = 0.2,
    bold_filter: dict | None = None,
) -> Path:
    """Check the inputs, run fMRIPrep and return its derivatives folder.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        Raw BIDS dataset (read only; mounted read-only in containers).
    output_dir : str or pathlib.Path
        brainfm's output folder; fMRIPrep writes into ``output_dir/sourcedata/fmriprep``.
    participant_labels : sequence of str or str or None
        Participants (None: all).
    work_dir : str or pathlib.Path
        brainfm's work folder: the node runs in it and fMRIPrep gets ``work_dir/fmriprep``.
    image : str, optional
        ``--fmriprep-image``: a Docker tag or an Apptainer ``.sif``.
    nprocs, omp_nthreads : int
        Passed to fMRIPrep.
    fs_license_file : str or pathlib.Path, optional
        FreeSurfer licence (default ``$FS_LICENSE`` or ``$FREESURFER_HOME/license.txt``).
    fs_no_reconall : bool
        Pass ``--fs-no-reconall``.
    skip_bids_validation : bool
        Pass ``--skip-bids-validation``.
    poll_sleep : float
        nipype polling interval (s).
    bold_filter : dict, optional
        PyBIDS query entities selecting the BOLD runs (``--bids-filter-file``'s ``bold``),
        given to fMRIPrep as its own ``--bids-filter-file`` (written into the work folder).

    Returns
    -------
    pathlib.Path
        ``output_dir/sourcedata/fmriprep``.

    Raises
    ------
    InputError
        No fMRIPrep backend, a missing image or licence, a participant without T1w
        (exit 66), checked before anything runs.
    ProcessingError
        fMRIPrep failed (exit 1).
    """
    backend = detect_backend(image)
    license_file = find_license(fs_license_file)
    check_anatomy(bids_dir, participant_labels)
    if backend == "docker" and image:
        check_docker_image(image)
    fmriprep_dir = fmriprep_output_dir(output_dir)
    fmriprep_work = Path(work_dir).absolute() / "fmriprep"
    fmriprep_dir.mkdir(parents=True, exist_ok=True)
    fmriprep_work.mkdir(parents=True, exist_ok=True)
    filter_file = None
    if bold_filter:
        filter_file = write_json_atomic(Path(work_dir).absolute() / "fmriprep_bids_filter.json",
                                        {"bold": bold_filter})
    wf = init_fmriprep_wf(
        bids_dir, fmriprep_dir, participant_labels, backend=backend, image=image,
        nprocs=nprocs, omp_nthreads=omp_nthreads, fs_license_file=license_file,
        fs_no_reconall=fs_no_reconall, work_dir=fmriprep_work,
        skip_bids_validation=skip_bids_validation, bids_filter_file=filter_file,
    )
    command = wf.get_node("fmriprep").inputs.command
    LOGGER.info("fMRIPrep (%s backend): %s", backend, shlex.join(command))
    run_workflow(wf, work_dir, 1, poll_sleep)
    return fmriprep_dir
