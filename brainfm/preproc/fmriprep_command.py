"""The fMRIPrep command line brainfm runs when it preprocesses raw BOLD with fMRIPrep.

Backends, chosen by :func:`detect_backend`:

``fmriprep``
    The ``fmriprep`` command on ``PATH`` (a bare-metal install or inside an fMRIPrep image).
``docker``
    The ``fmriprep-docker`` wrapper with Docker (``-i TAG`` when an image tag is given); the
    wrapper mounts the folders itself.
``apptainer`` / ``singularity``
    ``apptainer run --cleanenv -B ... IMAGE.sif`` (or ``singularity run``), binding the BIDS
    folder (read-only), the output and work folders and the FreeSurfer licence (read-only) at
    the same paths inside the container.

Every backend gets the same fMRIPrep arguments: the BIDS folder, the output folder,
``participant``, ``--participant-label``, ``--output-spaces MNI152NLin6Asym:res-2`` (the space
and grid of brainfm's atlases), ``--nprocs``, ``--omp-nthreads``, ``--fs-license-file``,
``-w`` and, when asked, ``--fs-no-reconall``; ``--notrack`` keeps fMRIPrep from sending usage
statistics (brainfm runs offline).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from brainfm.errors import InputError, UsageError

#: Backends :func:`build_fmriprep_command` knows.
BACKENDS = ("fmriprep", "docker", "apptainer", "singularity")
#: The standard space and grid requested from fMRIPrep.
OUTPUT_SPACES = "MNI152NLin6Asym:res-2"
#: File extensions of Apptainer/Singularity images.
SIF_SUFFIXES = (".sif", ".simg", ".img")

Which = Callable[[str], str | None]


def _labels(participant_labels: Sequence[str] | str | None) -> list[str]:
    if participant_labels is None:
        return []
    if isinstance(participant_labels, str):
        participant_labels = [participant_labels]
    return [str(p).strip().removeprefix("sub-") for p in participant_labels]


def is_sif_image(image: str | None) -> bool:
    """Whether an ``--fmriprep-image`` value names an Apptainer/Singularity image file.

    Parameters
    ----------
    image : str or None
        The value.

    Returns
    -------
    bool
        True for a path ending in ``.sif``/``.simg``/``.img`` or an existing file.
    """
    if not image:
        return False
    return image.lower().endswith(SIF_SUFFIXES) or Path(image).is_file()


def detect_backend(image: str | None = None, *, which: Which | None = None) -> str:
    """Choose how to run fMRIPrep on this machine.

    Parameters
    ----------
    image : str, optional
        ``--fmriprep-image``: a ``.sif`` file (Apptainer/Singularity) or a Docker tag.
    which : callable, optional
        ``shutil.which`` (replaceable in tests).

    Returns
    -------
    str
        ``"apptainer"`` or ``"singularity"`` for an image file; ``"docker"`` for a tag; without
        an image, ``"fmriprep"`` when that command is on ``PATH``, else ``"docker"`` when
        ``fmriprep-docker`` and ``docker`` are.

    Raises
    ------
    InputError
        The image file does not exist, or no way to run fMRIPrep was found (exit 66).
    """
    which = which or shutil.which
    if image and is_sif_image(image):
        if not Path(image).is_file():
            raise InputError(
                f"fMRIPrep image {image} does not exist: give the path of an fMRIPrep .sif "
                "image (apptainer build fmriprep.sif docker://nipreps/fmriprep:<version>)"
            )
        for runner in ("apptainer", "singularity"):
            if which(runner):
                return runner
        raise InputError(
            f"--fmriprep-image {image} is an Apptainer/Singularity image but neither "
            "'apptainer' nor 'singularity' is on PATH"
        )
    docker = which("fmriprep-docker") is not None and which("docker") is not None
    if image:
        if docker:
            return "docker"
        raise InputError(
            f"--fmriprep-image {image} looks like a Docker tag, but 'fmriprep-docker' and "
            "'docker' are not both on PATH (pip install fmriprep-docker; install Docker), or "
            "give a .sif image for Apptainer"
        )
    if which("fmriprep"):
        return "fmriprep"
    if docker:
        return "docker"
    raise InputError(
        "fMRIPrep is not available: no 'fmriprep' command, and no 'fmriprep-docker' with "
        "Docker, on PATH. Install one, give --fmriprep-image IMAGE.sif (Apptainer), or use "
        "--preproc minimal (brainfm's own, coarser preprocessing)"
    )


def fmriprep_available(image: str | None = None, *, which: Which | None = None) -> bool:
    """Whether :func:`detect_backend` would find a way to run fMRIPrep.

    Parameters
    ----------
    image : str, optional
        ``--fmriprep-image``.
    which : callable, optional
        ``shutil.which`` (replaceable in tests).

    Returns
    -------
    bool
        True when fMRIPrep can be run.
    """
    try:
        detect_backend(image, which=which)
    except InputError:
        return False
    return True


def find_license(fs_license_file: str | Path | None = None) -> Path:
    """Locate the FreeSurfer licence fMRIPrep requires (also with ``--fs-no-reconall``).

    Parameters
    ----------
    fs_license_file : str or pathlib.Path, optional
        ``--fs-license-file``; default ``$FS_LICENSE``, then ``$FREESURFER_HOME/license.txt``
        (fMRIPrep's own search order).

    Returns
    -------
    pathlib.Path
        The absolute path of the licence.

    Raises
    ------
    InputError
        The given file does not exist, or none was found (exit 66).
    """
    if fs_license_file:
        path = Path(fs_license_file).expanduser().absolute()
        if not path.is_file():
            raise InputError(f"FreeSurfer licence file {path} (--fs-license-file) does not exist")
        return path
    candidates = []
    if os.environ.get("FS_LICENSE"):
        candidates.append(Path(os.environ["FS_LICENSE"]))
    if os.environ.get("FREESURFER_HOME"):
        candidates.append(Path(os.environ["FREESURFER_HOME"]) / "license.txt")
    for path in candidates:
        if path.is_file():
            return path.expanduser().absolute()
    raise InputError(
        "fMRIPrep needs a FreeSurfer licence file (even with --fs-no-reconall): get one free at "
        "https://surfer.nmr.mgh.harvard.edu/registration.html and give --fs-license-file PATH "
        "(or set FS_LICENSE); or use --preproc minimal"
    )


def check_anatomy(bids_dir: str | Path, participant_labels: Sequence[str] | str | None) -> None:
    """Check that every participant has a T1w image, which fMRIPrep needs.

    Parameters
    ----------
    bids_dir : str or pathlib.Path
        The raw dataset.
    participant_labels : sequence of str or str or None
        Participants (default: every ``sub-*`` folder).

    Raises
    ------
    InputError
        A participant has no ``anat/*_T1w.nii[.gz]`` (exit 66).
    """
    root = Path(bids_dir)
    labels = _labels(participant_labels) or sorted(
        p.name.removeprefix("sub-") for p in root.glob("sub-*") if p.is_dir()
    )
    for label in labels:
        sub = root / f"sub-{label}"
        found = [p for pattern in ("anat/*_T1w.nii*", "ses-*/anat/*_T1w.nii*")
                 for p in sub.glob(pattern)]
        if not found:
            raise InputError(
                f"sub-{label} has no T1w image ({sub}/anat/sub-{label}_T1w.nii.gz): fMRIPrep "
                "needs a T1w image for each participant. Add it, or use --preproc minimal "
                "(brainfm's BOLD-only preprocessing)"
            )


def check_docker_image(image: str, *, run: Callable[..., subprocess.CompletedProcess] | None
                       = None) -> None:
    """Check that a Docker image is present locally (brainfm never pulls images).

    Parameters
    ----------
    image : str
        The tag.
    run : callable, optional
        ``subprocess.run`` (replaceable in tests).

    Raises
    ------
    InputError
        The image is not available (exit 66).
    """
    run = run or subprocess.run
    try:
        result = run(["docker", "image", "inspect", image], capture_output=True, text=True,
                     timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"cannot query Docker for image {image}: {exc}") from exc
    if result.returncode != 0:
        raise InputError(
            f"Docker image {image} (--fmriprep-image) is not available locally: run "
            f"'docker pull {image}' first (brainfm does not download at run time)"
        )


def build_fmriprep_command(
    backend: str,
    bids_dir: str | Path,
    out_dir: str | Path,
    participant_labels: Sequence[str] | str | None,
    *,
    image: str | None,
    nprocs: int,
    omp_nthreads: int,
    fs_license_file: str | Path,
    fs_no_reconall: bool,
    work_dir: str | Path,
    skip_bids_validation: bool = False,
    bids_filter_file: str | Path | None = None,
) -> list[str]:
    """The argv that runs fMRIPrep for brainfm.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS` (see :func:`detect_backend`).
    bids_dir, out_dir, work_dir : str or pathlib.Path
        Raw BIDS folder, fMRIPrep output folder and fMRIPrep work folder (made absolute).
    participant_labels : sequence of str or str or None
        Participants (``sub-`` prefixes are removed); None or empty: all.
    image : str or None
        Docker tag (``docker``; None lets ``fmriprep-docker`` choose its default) or ``.sif``
        path (``apptainer``/``singularity``, required).
    nprocs, omp_nthreads : int
        fMRIPrep's ``--nprocs`` and ``--omp-nthreads``.
    fs_license_file : str or pathlib.Path
        FreeSurfer licence.
    fs_no_reconall : bool
        Pass ``--fs-no-reconall`` (skip FreeSurfer surface reconstruction).
    skip_bids_validation : bool
        Pass ``--skip-bids-validation`` (when brainfm has validated the dataset already).
    bids_filter_file : str or pathlib.Path, optional
        Pass ``--bids-filter-file`` (fMRIPrep's PyBIDS queries, e.g. ``{"bold": {"run": 2}}``);
        bound read-only into an Apptainer/Singularity container.

    Returns
    -------
    list of str
        The command line.

    Raises
    ------
    UsageError
        Unknown backend, or no image for Apptainer/Singularity (exit 64).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown fMRIPrep backend {backend!r}; choose from {BACKENDS}")
    if nprocs < 1 or omp_nthreads < 1:
        raise UsageError("--nprocs and --omp-nthreads must be at least 1 for fMRIPrep")
    bids = str(Path(bids_dir).absolute())
    out = str(Path(out_dir).absolute())
    work = str(Path(work_dir).absolute())
    lic = str(Path(fs_license_file).absolute())
    args = [bids, out, "participant"]
    labels = _labels(participant_labels)
    if labels:
        args += ["--participant-label", *labels]
    args += [
        "--output-spaces", OUTPUT_SPACES,
        "--nprocs", str(int(nprocs)),
        "--omp-nthreads", str(int(omp_nthreads)),
        "--fs-license-file", lic,
        "-w", work,
        "--notrack",
    ]
    if fs_no_reconall:
        args.append("--fs-no-reconall")
    if skip_bids_validation:
        args.append("--skip-bids-validation")
    filters = str(Path(bids_filter_file).absolute()) if bids_filter_file else None
    if filters:
        args += ["--bids-filter-file", filters]  # fmriprep-docker mounts it itself
    if backend == "fmriprep":
        return ["fmriprep", *args]
    if backend == "docker":
        return ["fmriprep-docker", *(["-i", image] if image else []), *args]
    if not image:
        raise UsageError(f"the {backend} backend needs --fmriprep-image IMAGE.sif")
    binds = [f"{bids}:{bids}:ro", f"{out}:{out}", f"{work}:{work}", f"{lic}:{lic}:ro"]
    if filters:
        binds.append(f"{filters}:{filters}:ro")
    command = [backend, "run", "--cleanenv"]
    for bind in binds:
        command += ["-B", bind]
    return [*command, str(Path(image).absolute()), *args]
