"""The participant level: collect inputs, prepare the output dataset, run the workflow."""

from __future__ import annotations

import getpass
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from brainfm.atlas_spaces import place_atlases
from brainfm.atlases import Atlas
from brainfm.bidsapp.config import Config
from brainfm.bidsapp.inputs import collect_runs
from brainfm.bidsapp.preflight import check_runs
from brainfm.bidsapp.records import (
    RunLog,
    methods_boilerplate,
    new_run_id,
    write_run_config,
)
from brainfm.bidsapp.validation import validate_bids
from brainfm.derivatives import ATLAS_DATASET, init_output_dataset
from brainfm.errors import BrainfmError, UsageError, interrupted
from brainfm.fileio import participant_locks, read_tsv, write_text_atomic
from brainfm.logs import QuietFileHandler
from brainfm.participant_outputs import copy_atlases
from brainfm.postproc.confounds import get_strategy
from brainfm.workflows.crashes import combined_error, failures_from_crashfiles
from brainfm.workflows.plugins import disk_full_error, make_plugin

LOGGER = logging.getLogger(__name__)

def prepare_model(config: Config, atlas_labels: list[str]) -> tuple[str | None, str | None]:
    """Find the model and check its card against the run's atlases and denoising.

    Returns
    -------
    model_dir, atlas_label : str or None
        The model folder and the BIDS label of its atlas, or ``(None, None)`` when predictions
        are skipped: ``--model none``; or no ``--model`` given and the packaged model is missing
        or does not suit the run (its atlas is not among ``--atlases``, or its denoising differs
        and ``--allow-model-mismatch`` is not given), with a warning saying so.

    Raises
    ------
    CheckpointError
        An explicit ``--model`` that is missing or incomplete, or a card whose ROIs are not its
        atlas' in the atlas' order (exit 66).
    UsageError
        An explicit ``--model`` whose atlas is not among ``--atlases``, or whose denoising
        strategy differs and ``--allow-model-mismatch`` is not given (exit 64).
    """
    if config.model.lower() == "none":
        return None, None
    from brainfm.atlases import get_atlas, roi_names
    from brainfm.models.checkpoint import CheckpointError, resolve_model_dir, verify_checkpoint
    from brainfm.models.sessions import header_difference
    from brainfm.postproc.confounds import strategy_matches

    try:
        folder = resolve_model_dir(config.model)
    except CheckpointError as err:
        if config.model_explicit:
            raise
        LOGGER.warning("%s. Predictions are skipped: pass --model with a model folder.", err)
        return None, None
    card = verify_checkpoint(folder)  # every check (files, hash, shapes) before any work
    atlas = get_atlas(str(card.get("atlas")))
    names, atlas_names = card.get("roi_names"), roi_names(atlas.name)
    if isinstance(names, list) and [str(n) for n in names] != atlas_names:
        raise CheckpointError(
            f"model card {folder / 'model_card.json'}: its roi_names are not the ROIs of atlas "
            f"{atlas.name} in the atlas' order ({header_difference(names, atlas_names)}); "
            "restore the card saved with the weights, or use a model trained on this atlas")
    problem = None
    if atlas.label not in atlas_labels:
        problem = (f"the model {folder} was trained on atlas {atlas.name} but the run is "
                   f"parcellated with {', '.join(atlas_labels)}; add {atlas.name} to --atlases")
    strategy = card.get("denoising_strategy")
    if problem is None and strategy and not strategy_matches(strategy,
                                                             config.nuisance_regressors):
        message = (f"the model {folder} was trained on data denoised with '{strategy}' but "
                   f"--nuisance-regressors is '{config.nuisance_regressors}'")
        if config.allow_model_mismatch:
            LOGGER.warning("%s (--allow-model-mismatch: predicting anyway)", message)
        else:
            problem = (message + "; use the model's strategy, or pass --allow-model-mismatch "
                       "to predict anyway")
    if problem is not None:
        if config.model_explicit:
            raise UsageError(problem + " (or --model none)")
        LOGGER.warning("Predictions are skipped: %s, with --model default.", problem)
        return None, None
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but no CUDA device is available")
    LOGGER.info("Predicting with model %s (atlas %s, model sha256 %s, weights %s)", folder,
                atlas.label, str(card.get("model_sha256", ""))[:12],
                str(card.get("weights_sha256", ""))[:12])
    return str(folder), atlas.label


def preprocess_raw(config: Config) -> Path:
    """Preprocess raw BOLD (no fMRIPrep derivatives given) with fMRIPrep or the minimal backend.

    Returns
    -------
    Path
        The fMRIPrep-style derivatives folder written under ``output_dir/sourcedata``.
    """
    from brainfm.preproc import fmriprep_available
    from brainfm.workflows.preproc import minimal_output_dir, run_fmriprep, run_minimal_preproc

    bold_filter = (config.bids_filters or {}).get("bold") or None
    backend = config.preproc
    if backend is None:
        backend = "fmriprep" if fmriprep_available(config.fmriprep_image) else "minimal"
        if backend == "minimal":
            LOGGER.warning("No fMRIPrep found (fmriprep, fmriprep-docker, or --fmriprep-image "
                           "with apptainer/singularity): using brainfm's minimal preprocessing, "
                           "which is coarser than fMRIPrep (see docs/preprocessing.md)")
    LOGGER.info("Preprocessing raw BOLD of %s with %s",
                ", ".join(config.participant_label) or "all participants", backend)
    if backend == "fmriprep":
        return run_fmriprep(
            config.bids_dir, config.output_dir, config.participant_label,
            work_dir=config.work_dir, image=config.fmriprep_image, nprocs=config.nprocs,
            omp_nthreads=config.omp_nthreads, fs_license_file=config.fs_license_file,
            fs_no_reconall=config.fs_no_reconall, skip_bids_validation=True,
            poll_sleep=config.poll_sleep, bold_filter=bold_filter)
    return run_minimal_preproc(
        config.bids_dir, minimal_output_dir(config.output_dir), config.participant_label,
        config.task_id, config.work_dir, config.nprocs, config.omp_nthreads,
        session_label=config.session_label or None, poll_sleep=config.poll_sleep,
        bold_filter=bold_filter)


def read_model_card(model_dir: str | None) -> dict[str, Any] | None:
    """The card of the model that predicts (checked by :func:`prepare_model`), or None.

    The card gets ``model_sha256``, the hash over its weights and itself
    (:func:`brainfm.models.checkpoint.model_sha256`).
    """
    if model_dir is None:
        return None
    import json

    from brainfm.models.checkpoint import CARD_FILE, WEIGHTS_FILE, model_sha256, sha256_file

    card = json.loads((Path(model_dir) / CARD_FILE).read_text())
    return {**card, "model_sha256": model_sha256(card, sha256_file(Path(model_dir) /
                                                                    WEIGHTS_FILE))}


def workflow_settings(config: Config) -> dict:
    """The options the per-run nodes need, as a plain dict (recorded in the sidecars too)."""
    return {
        "atlases": list(config.atlases),
        "atlas_file": str(config.atlas_file) if config.atlas_file else None,
        "atlas_labels": str(config.atlas_labels) if config.atlas_labels else None,
        "atlas_name": config.atlas_name,
        "min_coverage": config.min_coverage,
        "strategy": config.nuisance_regressors,
        "fd_thresh": config.fd_thresh,
        "dummy_scans": config.dummy_scans,
        "lower_bpf": config.lower_bpf,
        "upper_bpf": config.upper_bpf,
        "min_time": config.min_time,
        "fmriprep_dir": str(config.fmriprep_dir),
    }


def _configure_nipype_logging(verbosity: int, log_file: Path) -> None:
    """Quiet nipype unless -v; its loggers keep their own handler (no duplicate lines).

    At default verbosity nipype writes to ``log_file`` instead of the console, so that its
    node tracebacks (about 100 lines each) stay in the log and the crash file; brainfm's own
    message names the crash file.
    """
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = {0: "WARNING", 1: "INFO"}.get(verbosity, "DEBUG")
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, level)
    nipype_logging.update_logging(nipype_config)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = True  # to the handler below, once
    root = logging.getLogger("nipype")
    root.propagate = False  # not also to brainfm's console handler
    for handler in list(root.handlers):
        if getattr(handler, "brainfm_log", False) or type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
            handler.close()
    if verbosity == 0:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = QuietFileHandler(log_file, delay=True)  # created when nipype logs
        handler.brainfm_log = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        # MultiProc's workers import nipype afresh, with its INFO default on stdout: they read
        # the levels from NIPYPE_CONFIG_DIR/nipype.cfg, which they inherit
        config_dir = log_file.parent / "nipype-config"
        config_dir.mkdir(exist_ok=True)
        write_text_atomic(config_dir / "nipype.cfg", "[logging]\n" + "".join(
            f"{key} = {level}\n" for key in ("workflow_level", "interface_level",
                                             "utils_level")))
        os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    else:
        handler = logging.StreamHandler(stream=sys.stdout)
        os.environ.pop("NIPYPE_CONFIG_DIR", None)
    root.addHandler(handler)


def run_participant_level(config: Config) -> None:
    """Run the participant level for the configured participants.

    Raises
    ------
    BrainfmError
        With the exit code of the problem (bad usage, missing input, invalid BIDS, nothing
        selected, processing failure).
    """
    from brainfm.atlases import resolve_atlases
    from brainfm.postproc.confounds import band_pass

    atlases = resolve_atlases(config.atlases, config.atlas_file, config.atlas_labels,
                              config.atlas_name)
    if not atlases:
        raise UsageError("no atlas selected: give --atlases and/or --atlas-file")
    get_strategy(config.nuisance_regressors)  # a known name, or a readable strategy file
    band_pass(config.nuisance_regressors, config.lower_bpf, config.upper_bpf)  # inverted?
    if config.skip_bids_validation:
        LOGGER.info("BIDS validation skipped (--skip-bids-validation)")
    elif config.bids_dir == config.fmriprep_dir:
        # fMRIPrep's folder is no raw dataset, and the validator does not know its own files
        # (confounds, figures/, logs/); brainfm checks each file it reads (collect_runs)
        LOGGER.info("%s is an fMRIPrep derivatives dataset: the BIDS validator checks raw "
                    "datasets, so it is not run; brainfm checks the files it reads",
                    config.bids_dir)
    else:
        validate_bids(config.bids_dir)
    model_dir, model_atlas = prepare_model(config, [a.label for a in atlases])
    _configure_nipype_logging(config.verbosity, config.work_dir / "logs" / "nipype.log")
    if config.fmriprep_dir is None:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        config.fmriprep_dir = preprocess_raw(config)
    # a participant with a bad input file is left out (and named at the end) unless
    # --stop-on-first-crash; problems with the options stop everything
    failed: dict[str | None, BrainfmError] | None = None if config.stop_on_first_crash else {}
    runs = collect_runs(config.fmriprep_dir, config.participant_label, config.session_label,
                        config.task_id, failed=failed, filters=config.bids_filters)
    settings = workflow_settings(config)
    check_runs(runs, settings, failed=failed)
    n_selected = len(runs) + len(failed or {})
    if not runs:
        raise combined_error(failed or {}, n_selected)
    # one job per participant at a time: a duplicate submission stops here, before it writes
    with participant_locks(sorted(runs), (config.output_dir, config.work_dir),
                           config.lock_timeout):
        _process_participants(config, atlases, runs, settings, model_dir, model_atlas, failed,
                              n_selected)


def _process_participants(config: Config, atlases: list[Atlas], runs: dict, settings: dict,
                          model_dir: str | None, model_atlas: str | None,
                          failed: dict | None, n_selected: int) -> None:
    """Place the atlases, write the shared outputs and run records, run the workflow."""
    placed = place_atlases(atlases, {run.space: run.bold_file for sub_runs in runs.values()
                                     for run in sub_runs}, config.work_dir / "atlases",
                           config.allow_atlas_space_mismatch)
    LOGGER.info("brainfm participant level: %d participant(s), %d run(s), atlases %s, "
                "strategy %s", len(runs), sum(len(r) for r in runs.values()),
                ", ".join(a.label for a in atlases), config.nuisance_regressors)

    card = read_model_card(model_dir)
    init_output_dataset(config.output_dir,
                        {"raw": config.bids_dir, "preprocessed": config.fmriprep_dir,
                         "atlases": config.output_dir / ATLAS_DATASET},
                        license_text=card.get("license") if card else None)
    boilerplate = methods_boilerplate(config.to_dict(), unique_atlases(placed),
                                      get_strategy(config.nuisance_regressors), card)
    citation = write_text_atomic(config.output_dir / "logs" / "CITATION.md", boilerplate)
    if config.boilerplate_only:
        LOGGER.info("methods boilerplate written to %s", citation)
        return
    copy_atlases(config.output_dir, unique_atlases(placed))
    run_id = new_run_id()
    for sub in runs:
        write_run_config(config.output_dir / f"sub-{sub}" / "log" / run_id, config.arguments,
                         run_id, config.command)
    with RunLog(config.output_dir / "logs" / run_id):
        LOGGER.info("run %s: options in sub-<label>/log/%s/brainfm.toml, methods in %s",
                    run_id, run_id, citation)
        _run_workflow(config, runs, placed, settings, model_dir, model_atlas, failed,
                      n_selected)


def _run_workflow(config: Config, runs: dict, placed: dict, settings: dict,
                  model_dir: str | None, model_atlas: str | None, failed: dict | None,
                  n_selected: int) -> None:
    """Build and run the nipype workflow of the selected participants; summarise it."""
    from brainfm.workflows.base import init_brainfm_wf

    n_runs = sum(len(r) for r in runs.values())
    config.work_dir.mkdir(parents=True, exist_ok=True)
    settings.update(model_dir=model_dir, model_atlas=model_atlas, device=config.device)
    workflow = init_brainfm_wf(
        {sub: [{**run.to_dict(), **atlas_inputs(placed[run.space])} for run in sub_runs]
         for sub, sub_runs in runs.items()},
        settings, config.output_dir, config.work_dir,
    )
    crash_dir = config.work_dir / "crash"
    workflow.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": config.stop_on_first_crash,
        "remove_unnecessary_outputs": False,
        "poll_sleep_duration": config.poll_sleep,
    })
    level = {0: "WARNING", 1: "INFO"}.get(config.verbosity, "DEBUG")
    workflow.config["logging"] = {"workflow_level": level, "interface_level": level,
                                  "utils_level": level}
    started = time.time()
    folders = (config.work_dir, config.output_dir)
    plugin: Any
    if config.plugin:
        plugin, plugin_args = config.plugin, dict(config.plugin_args)
        # nipype's SLURM plugin names its jobs after $LOGNAME and fails with a KeyError where
        # it is unset (containers, CI, some batch shells)
        os.environ.setdefault("LOGNAME", getpass.getuser())
        LOGGER.info("nipype plugin %s %s", plugin, plugin_args or "")
        plugin_args.setdefault("status_callback", stop_if_interrupted)
    else:
        # forkserver: workers do not inherit the parent's thread pools (torch, BLAS), which
        # can deadlock a forked child
        extra = {"mp_context": "forkserver"} if config.nprocs > 1 else {}
        LOGGER.info("nipype plugin %s %s", "MultiProc" if config.nprocs > 1 else "Linear",
                    {"n_procs": config.nprocs, **extra} if extra else "")
        log_file = config.work_dir / "logs" / "nipype.log" if config.verbosity == 0 else None
        plugin = make_plugin(config.nprocs, folders, log_file,
                             status_callback=stop_if_interrupted, **extra)
        plugin_args = None
    try:
        workflow.run(plugin=plugin, plugin_args=plugin_args)
    except OSError as err:  # outside any node (the plugin's own files): a full disk, mostly
        if interrupted():
            raise KeyboardInterrupt from err
        raise disk_full_error(err, folders) or err from None
    except RuntimeError as err:
        if interrupted():
            raise KeyboardInterrupt from err
        # crash files of this run's participants only (another job may share the work dir)
        crashed = {s: e for s, e in failures_from_crashfiles(crash_dir, started).items()
                   if s is None or s in runs}
        done = [s for s in sorted(runs) if s not in crashed]
        if done:
            summarise_runs(config.output_dir, done)
        raise combined_error({**(failed or {}), **crashed}, n_selected) from err
    included, excluded = summarise_runs(config.output_dir, sorted(runs))
    LOGGER.info("brainfm finished %d run(s) in %.1f s (%d included, %d excluded); outputs in %s",
                n_runs, time.time() - started, included, excluded, config.output_dir)
    if failed:
        raise combined_error(failed, n_selected)


def atlas_inputs(atlases: list[Atlas]) -> dict[str, dict[str, Any]]:
    """What a run's nodes need of its placed atlases: the images, and what the sidecars say."""
    return {
        "atlas_images": {a.label: str(a.image) for a in atlases},
        "atlas_placement": {a.label: {"AtlasSpace": a.space, "AtlasSource": a.source,
                                      "AtlasTransform": str(a.transform) if a.transform else None}
                            for a in atlases},
    }


def unique_atlases(placed: dict[str, list[Atlas]]) -> list[Atlas]:
    """Each (atlas, space) once, for the copies in ``output_dir/atlases``."""
    seen: dict[tuple[str, str], Atlas] = {}
    for atlases in placed.values():
        for atlas in atlases:
            seen.setdefault((atlas.label, atlas.space), atlas)
    return list(seen.values())


def stop_if_interrupted(node: Any, status: str) -> None:
    """nipype status callback: stop for good once SIGINT/SIGTERM was received.

    An interruption inside a node becomes a node failure, after which nipype runs the next
    node when ``stop_on_first_crash`` is off (brainfm's default, so that one broken participant
    does not stop the others). nipype calls this before each node and lets a
    ``KeyboardInterrupt`` from it through.
    """
    if status == "start" and interrupted():
        raise KeyboardInterrupt


def summarise_runs(output_dir: Path, subjects: list[str]) -> tuple[int, int]:
    """Count the included and excluded runs in the participants' run QC tables.

    A participant whose runs were all excluded gets a WARNING naming it and each reason: its
    predictions are all n/a, which is easy to miss in a cohort table.

    Parameters
    ----------
    output_dir : Path
        The output dataset.
    subjects : list of str
        Participant labels of this run (without ``sub-``).

    Returns
    -------
    included, excluded : int
        Run counts over the participants.
    """
    included = excluded = 0
    for sub in subjects:
        qc = read_tsv(output_dir / f"sub-{sub}" / f"sub-{sub}_desc-runs_qc.tsv")
        is_excluded = qc["status"].astype(str) == "excluded"
        included += int((~is_excluded).sum())
        excluded += int(is_excluded.sum())
        if is_excluded.all():
            reasons = "; ".join(f"{row.run}: {row.reason}" for row in qc.itertuples())
            LOGGER.warning("sub-%s: every run was excluded, so it has no prediction (%s)",
                           sub, reasons)
    return included, excluded
