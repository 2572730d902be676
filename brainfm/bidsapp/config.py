"""The run configuration: every option of one ``brainfm`` call, checked and normalised."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainfm.derivatives import strip_prefix
from brainfm.errors import InputError, UsageError
from brainfm.fileio import check_output_folder


@dataclass
class Config:
    """Options of one brainfm run (built from the command line by :func:`from_args`)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    fmriprep_dir: Path | None = None
    preproc: str | None = None
    fmriprep_image: str | None = None
    fs_license_file: Path | None = None
    fs_no_reconall: bool = False
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    task_id: tuple[str, ...] = ("rest",)
    atlases: list[str] = field(default_factory=lambda: ["CC200"])
    atlas_file: Path | None = None
    atlas_labels: Path | None = None
    atlas_name: str = "Custom"
    nuisance_regressors: str = "pcp"
    fd_thresh: float = 0.5
    dummy_scans: int | str = 0
    lower_bpf: float | None = None
    upper_bpf: float | None = None
    min_coverage: float = 0.5
    allow_atlas_space_mismatch: bool = False
    stop_on_first_crash: bool = False
    bids_filters: dict[str, dict[str, Any]] | None = None
    boilerplate_only: bool = False
    #: The parsed command line (for the run record, ``brainfm.toml``) and the command itself.
    arguments: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    min_time: float = 120.0
    work_dir: Path = Path("work")
    nprocs: int = 1
    omp_nthreads: int = 1
    skip_bids_validation: bool = False
    verbosity: int = 0
    poll_sleep: float = 0.2
    lock_timeout: float = 0.0
    bias_correction: str = "none"
    reference_ages: Path | None = None
    allow_mixed_models: bool = False
    model: str = "default"
    model_explicit: bool = False  # --model given (else: packaged model, skipped if unsuitable)
    allow_model_mismatch: bool = False
    device: str = "cpu"
    plugin: str | None = None
    plugin_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (paths as strings)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (what SLURM and cgroup cpusets grant),
    not the machine's count, which ``os.cpu_count`` gives."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform (macOS)
        return os.cpu_count() or 1


def _strip_prefix(labels: list[str] | None, prefix: str) -> list[str]:
    out = []
    for label in labels or []:
        label = strip_prefix(label, prefix)
        if not label.isalnum():
            raise UsageError(f"invalid label '{label}': BIDS labels are alphanumeric")
        out.append(label)
    return out


def _is_inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def is_derivatives_folder(output_dir: Path, bids_dir: Path) -> bool:
    """True for ``bids_dir/derivatives/<name>``: the one place inside a dataset brainfm writes."""
    return output_dir.resolve().parent == (bids_dir / "derivatives").resolve()


def is_fmriprep_dataset(path: Path) -> bool:
    """True when ``path`` holds a derivatives ``dataset_description.json`` made by fMRIPrep."""
    import json

    desc = Path(path) / "dataset_description.json"
    if not desc.is_file():
        return False
    try:
        content = json.loads(desc.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    names = [str(g.get("Name", "")).lower() for g in content.get("GeneratedBy", [])]
    return content.get("DatasetType") == "derivative" and any("fmriprep" in n for n in names)


def resolve_fmriprep_dir(bids_dir: Path, given: Path | None, participant_labels: list[str],
                         task: str | Sequence[str]) -> Path | None:
    """Where to read preprocessed BOLD: the given folder, ``bids_dir/derivatives/fmriprep``,
    or ``bids_dir`` itself when it is an fMRIPrep derivatives dataset; None when there are no
    derivatives but raw BOLD to preprocess."""
    if given is not None:
        if not given.is_dir():
            raise InputError(f"--fmriprep-dir {given} does not exist or is not a folder")
        return given
    default = bids_dir / "derivatives" / "fmriprep"
    if default.is_dir():
        return default
    if is_fmriprep_dataset(bids_dir):
        return bids_dir
    from brainfm.preproc import find_raw_bold

    if find_raw_bold(bids_dir, participant_labels or None, task):
        return None
    raise InputError(
        f"no fMRIPrep derivatives found: neither {default} exists nor is {bids_dir} an fMRIPrep "
        "derivatives dataset, and it holds no raw BOLD to preprocess. Point --fmriprep-dir at "
        "fMRIPrep's output folder."
    )


#: Input types a ``--bids-filter-file`` may filter (PyBIDS queries, as fMRIPrep and XCP-D take).
BIDS_FILTER_KEYS = ("bold", "mask", "confounds")


def load_bids_filters(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: JSON keyed by input type, each a PyBIDS query.

    Example: ``{"bold": {"run": 2, "session": "pre"}}`` selects run 2 of session ``pre``.

    Raises
    ------
    UsageError
        Unreadable, not JSON, a key that is not in :data:`BIDS_FILTER_KEYS`, or a value that is
        not an object (exit 64).
    """
    import json

    path = Path(path).absolute()
    try:
        filters = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read --bids-filter-file {path} ({err}); it must be JSON such "
                         'as {"bold": {"run": 2}}') from err
    if not isinstance(filters, dict):
        raise UsageError(f"--bids-filter-file {path} must hold a JSON object keyed by input type "
                         f"({', '.join(BIDS_FILTER_KEYS)})")
    for key, query in filters.items():
        if key not in BIDS_FILTER_KEYS:
            raise UsageError(f"--bids-filter-file {path}: unknown input type {key!r}; use "
                             f"{', '.join(BIDS_FILTER_KEYS)}")
        if not isinstance(query, dict):
            raise UsageError(f"--bids-filter-file {path}: {key!r} must map entities to values, "
                             f'e.g. {{"{key}": {{"run": 2}}}}')
    return filters


def load_plugin_settings(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read a ``--use-plugin`` YAML file: ``plugin`` (nipype plugin name) and ``plugin_args``."""
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read the plugin settings {path} ({err})") from err
    if not isinstance(content, dict) or "plugin" not in content:
        raise UsageError(f"{path} must be a YAML mapping with a 'plugin' key "
                         "(e.g. 'plugin: SLURM') and optional 'plugin_args'")
    plugin_args = content.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise UsageError(f"'plugin_args' in {path} must be a mapping")
    return str(content["plugin"]), plugin_args


def check_links_into_inputs(folder: Path, inputs: list[Path], depth: int = 3) -> None:
    """Refuse symbolic links in the top levels of ``folder`` that lead into an input dataset.

    The writers check every destination as well (:func:`brainfm.fileio.check_writable_path`);
    this finds such links before any work.

    Raises
    ------
    UsageError
        A link under ``folder`` resolves inside one of ``inputs``.
    """
    if not folder.is_dir():
        return
    level = [folder]
    for _ in range(depth):
        below = []
        for parent in level:
            for entry in parent.iterdir():
                if entry.is_symlink():
                    target = entry.resolve()
                    if any(_is_inside(target, root) for root in inputs) and not _is_inside(
                            target, folder):
                        raise UsageError(
                            f"{entry} is a symbolic link to {target}, inside the input dataset; "
                            "brainfm never writes into its inputs: remove the link or choose "
                            "another output folder")
                elif entry.is_dir():
                    below.append(entry)
        level = below


def from_args(args: Any) -> Config:
    """Check the parsed command line and build a :class:`Config`.

    Raises
    ------
    UsageError
        Inconsistent options (exit 64).
    InputError
        Missing input folders (exit 66).
    """
    bids_dir = Path(args.bids_dir).absolute()
    output_dir = Path(args.output_dir).absolute()
    if not bids_dir.is_dir():
        raise InputError(f"bids_dir {bids_dir} does not exist or is not a folder")
    if _is_inside(output_dir, bids_dir) and not is_derivatives_folder(output_dir, bids_dir):
        raise UsageError(
            f"output_dir {output_dir} is {bids_dir} or inside it; brainfm never writes into the "
            f"input dataset. Choose {bids_dir / 'derivatives' / 'brainfm'} (where BIDS puts "
            "derivatives) or a folder outside the dataset."
        )
    if args.work_dir:
        work_dir = Path(args.work_dir).absolute()
    else:  # beside the output, or (output in bids_dir/derivatives) ./work as fMRIPrep's default
        work_dir = output_dir.parent / "work"
        if _is_inside(work_dir, bids_dir):
            work_dir = Path.cwd().absolute() / "work"
    if _is_inside(work_dir, bids_dir):
        raise UsageError(f"work dir {work_dir} is inside the input dataset {bids_dir}; give "
                         "-w/--work-dir outside it")
    for folder, what in ((output_dir, "output_dir"), (work_dir, "work dir")):
        check_output_folder(folder, what)
    fmriprep_dir = None
    if args.analysis_level == "participant":
        given = Path(args.fmriprep_dir).absolute() if args.fmriprep_dir else None
        fmriprep_dir = resolve_fmriprep_dir(
            bids_dir, given, _strip_prefix(args.participant_label, "sub-"), args.task_id)
        if fmriprep_dir is not None and _is_inside(output_dir, fmriprep_dir):
            raise UsageError(
                f"output_dir {output_dir} is inside the input derivatives {fmriprep_dir}; "
                "choose an output folder outside it."
            )
        if fmriprep_dir is not None and _is_inside(work_dir, fmriprep_dir):
            raise UsageError(f"work dir {work_dir} is inside the input derivatives "
                             f"{fmriprep_dir}; give -w/--work-dir outside it")
    inputs = [bids_dir] + ([fmriprep_dir] if fmriprep_dir is not None else [])
    if fmriprep_dir is not None and _is_inside(fmriprep_dir, output_dir):
        raise UsageError(f"output_dir {output_dir} holds the input derivatives {fmriprep_dir}; "
                         "choose another output folder")
    check_links_into_inputs(output_dir, inputs)
    check_links_into_inputs(work_dir, inputs)
    if (args.atlas_file is None) != (args.atlas_labels is None):
        raise UsageError("--atlas-file and --atlas-labels must be given together")
    for name in ("fd_thresh", "min_coverage", "min_time"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= args.min_coverage <= 1:
        raise UsageError("--min-coverage is a fraction between 0 and 1")
    if args.dummy_scans != "auto" and args.dummy_scans < 0:
        raise UsageError("--dummy-scans must not be negative")
    for name in ("nprocs", "omp_nthreads", "lock_timeout"):
        if getattr(args, name, 0) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative (got "
                             f"{getattr(args, name):g}); "
                             + ("0 uses every CPU this job may use" if name == "nprocs" else
                                "give 0 or more"))
    nprocs = args.nprocs or available_cpus()
    plugin, plugin_args = load_plugin_settings(args.use_plugin) if args.use_plugin else (None, {})
    return Config(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=args.analysis_level,
        fmriprep_dir=fmriprep_dir,
        preproc=args.preproc,
        fmriprep_image=args.fmriprep_image,
        fs_license_file=Path(args.fs_license_file).absolute() if args.fs_license_file else None,
        fs_no_reconall=args.fs_no_reconall,
        participant_label=_strip_prefix(args.participant_label, "sub-"),
        session_label=_strip_prefix(args.session_label, "ses-"),
        task_id=tuple(args.task_id),
        atlases=list(args.atlases) if args.atlases else [],
        atlas_file=Path(args.atlas_file).absolute() if args.atlas_file else None,
        atlas_labels=Path(args.atlas_labels).absolute() if args.atlas_labels else None,
        atlas_name=args.atlas_name,
        nuisance_regressors=args.nuisance_regressors,
        fd_thresh=args.fd_thresh,
        dummy_scans=args.dummy_scans,
        lower_bpf=args.lower_bpf,
        upper_bpf=args.upper_bpf,
        min_coverage=args.min_coverage,
        allow_atlas_space_mismatch=args.allow_atlas_space_mismatch,
        stop_on_first_crash=args.stop_on_first_crash,
        bids_filters=load_bids_filters(args.bids_filter_file) if args.bids_filter_file else None,
        boilerplate_only=args.boilerplate_only,
        arguments={k: _absolute_if_path(k, v) for k, v in vars(args).items()},
        command=list(getattr(args, "command", []) or []),
        min_time=args.min_time,
        work_dir=work_dir,
        nprocs=nprocs,
        omp_nthreads=args.omp_nthreads,
        skip_bids_validation=args.skip_bids_validation,
        verbosity=args.verbose,
        poll_sleep=args.poll_sleep,
        lock_timeout=float(getattr(args, "lock_timeout", 0.0)),
        bias_correction=args.bias_correction,
        reference_ages=Path(args.reference_ages).absolute() if args.reference_ages else None,
        allow_mixed_models=getattr(args, "allow_mixed_models", False),
        model=_model_argument(args.model),
        model_explicit=args.model is not None,
        allow_model_mismatch=args.allow_model_mismatch,
        device=args.device,
        plugin=plugin,
        plugin_args=plugin_args,
    )


#: Options that name files or folders: recorded absolute, so that a record reruns anywhere.
PATH_OPTIONS = ("fmriprep_dir", "fs_license_file", "atlas_file", "atlas_labels", "work_dir",
                "reference_ages", "use_plugin", "bids_filter_file")


def _absolute_if_path(key: str, value: Any) -> Any:
    if key in PATH_OPTIONS and value is not None:
        return str(Path(value).absolute())
    if key == "model" and value not in (None, "default", "none"):
        return str(Path(value).absolute())
    return value


def _model_argument(value: str | None) -> str:
    """``--model``: ``default``/``none`` as given, a folder made absolute now (the predict node
    runs in its own work folder, where a relative path would point elsewhere)."""
    if value is None or value.lower() in {"default", "none"}:
        return value or "default"
    return str(Path(value).expanduser().absolute())
