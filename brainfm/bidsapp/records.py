"""The record of one run in the output, as fMRIPrep and XCP-D keep one.

``output_dir/logs/<run id>/`` receives

- ``brainfm.toml``: the command line's options (paths absolute), brainfm's version and the run
  id; ``brainfm … --config-file brainfm.toml`` runs with the same options again (options given
  on the command line win);
- ``brainfm.log``: brainfm's log lines of the run (nipype's are in the work folder);
- ``CITATION.md``: a methods paragraph with its references, to adapt for a paper
  (``--boilerplate-only`` writes it and stops).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from brainfm import __version__
from brainfm.errors import UsageError
from brainfm.fileio import write_text_atomic
from brainfm.logs import QuietFileHandler

#: Options not recorded: the positional arguments and the record's own options.
NOT_RECORDED = ("bids_dir", "output_dir", "analysis_level", "config_file", "boilerplate_only",
                "command")


def new_run_id() -> str:
    """``YYYYMMDD-HHMMSS_<8 hex>``: sortable by time and unique across parallel jobs."""
    return f"{dt.datetime.now():%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


def recorded_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed options as TOML can hold them (paths as strings; unset options left out)."""
    out: dict[str, Any] = {}
    for key, value in sorted(arguments.items()):
        if key in NOT_RECORDED or value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple | list):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        out[key] = value
    return out


def write_run_config(folder: Path, arguments: Mapping[str, Any], run_id: str,
                     argv: list[str]) -> Path:
    """Write ``brainfm.toml`` (see the module docstring)."""
    import tomli_w

    record = {
        "environment": {"brainfm_version": __version__, "run_id": run_id,
                        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "command": ["brainfm", *argv]},
        "options": recorded_options(arguments),
    }
    return write_text_atomic(folder / "brainfm.toml", tomli_w.dumps(record))


def read_config_file(path: str | Path, known: set[str]) -> dict[str, Any]:
    """The ``[options]`` of a ``brainfm.toml`` (``--config-file``), checked against ``known``.

    Raises
    ------
    UsageError
        Unreadable, not TOML, or an option brainfm does not have (exit 64).
    """
    path = Path(path)
    try:
        record = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"cannot read --config-file {path} ({err}); give a brainfm.toml that "
                         "a run wrote into output_dir/logs/") from err
    options = record.get("options", {})
    if not isinstance(options, dict):
        raise UsageError(f"--config-file {path}: [options] must be a table of options")
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"--config-file {path}: unknown option(s) {', '.join(unknown)} (brainfm "
                         f"{__version__}); see brainfm --help")
    return options


class RunLog:
    """brainfm's log lines of one run, copied into ``brainfm.log`` while the block runs."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "brainfm.log"
        self._handler: logging.Handler | None = None
        self._level = logging.NOTSET

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = QuietFileHandler(self.path)
        self._handler.setLevel(logging.INFO)
        self._handler.setFormatter(logging.Formatter(
            "%(asctime)s | %(levelname)-7s | %(name)s | %(message)s"))
        logger = logging.getLogger("brainfm")
        self._level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:  # the file gets INFO whatever the console
            logger.setLevel(logging.INFO)
        logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("brainfm")
        logger.setLevel(self._level)
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler.close()


def methods_boilerplate(options: Mapping[str, Any], atlases: list[Any], strategy: Any,
                        model_card: Mapping[str, Any] | None) -> str:
    """A methods paragraph for the participant level, in Markdown with its references.

    Parameters
    ----------
    options : mapping
        The run's options (:class:`~brainfm.bidsapp.config.Config` as a dict).
    atlases : list of Atlas
        The atlases placed in the BOLD's space (name, space, citation, transform).
    strategy : Strategy
        The denoising strategy (:func:`brainfm.postproc.confounds.get_strategy`).
    model_card : mapping, optional
        The model's card when predictions are made.

    Returns
    -------
    str
        Markdown: a paragraph to adapt, then the references.
    """
    import nilearn

    from brainfm.postproc.confounds import band_pass

    low, high = band_pass(options["nuisance_regressors"], options.get("lower_bpf"),
                          options.get("upper_bpf"))
    band = (f"a Butterworth band-pass filter ({low or 0:g}–{high:g} Hz)" if high else
            f"a Butterworth high-pass filter ({low:g} Hz)" if low else "no temporal filter")
    fd = float(options.get("fd_thresh") or 0)
    censoring = (f"volumes with framewise displacement above {fd:g} mm (Power et al. 2012) were "
                 "censored" if fd > 0 else "no volume was censored")
    placed = "; ".join(
        f"{a.name} in {a.space}" + (f" (warped from its template with TemplateFlow's "
                                     f"{Path(a.transform).name})" if a.transform else "")
        for a in atlases)
    text = [
        "# Methods (brainfm boilerplate)", "",
        "Adapt this text; it describes what this run did.", "",
        f"Resting-state BOLD runs preprocessed with fMRIPrep were parcellated and denoised with "
        f"brainfm {__version__} (nilearn {nilearn.__version__}). The mean signal of each parcel "
        f"of {placed} was extracted within the brain mask; parcels with less than "
        f"{float(options.get('min_coverage', 0.5)) * 100:g} % of their voxels covered were left "
        f"out. The signals were denoised with `nilearn.signal.clean` and the {strategy.name} "
        f"strategy ({strategy.description.rstrip('.')}): confound regression, polynomial "
        f"detrending of order {strategy.detrend_order} and {band}; "
        f"{censoring}, and runs with less than {float(options.get('min_time', 0)):g} s of data "
        "left were excluded. Connectivity is the Pearson correlation between parcel signals.", "",
    ]
    if model_card:
        text += [
            f"Brain age was predicted with the brainfm model `{model_card.get('name', 'model')}` "
            f"(model SHA-256 {model_card.get('model_sha256')}, over its weights and card; weights "
            f"SHA-256 {model_card.get('weights_sha256')}): a local masked autoencoder "
            "encoder, a random-walk mixture of experts and a selective state-space predictor, "
            "stacked with a ridge regression on connectivity, with split-conformal intervals. "
            f"Its terms: {model_card.get('license')}.", ""]
    text += ["## References", ""]
    text += [f"- {a.citation}" for a in atlases if a.citation]
    text += ["- Abraham A et al. Machine learning for neuroimaging with scikit-learn. Frontiers "
             "in Neuroinformatics 8:14 (2014). doi:10.3389/fninf.2014.00014 (nilearn).",
             "- Esteban O et al. fMRIPrep: a robust preprocessing pipeline for functional MRI. "
             "Nature Methods 16:111-116 (2019). doi:10.1038/s41592-018-0235-4."]
    if fd > 0:
        text.append("- Power JD et al. Spurious but systematic correlations in functional "
                    "connectivity MRI networks arise from subject motion. NeuroImage "
                    "59:2142-2154 (2012). doi:10.1016/j.neuroimage.2011.10.018.")
    return "\n".join(text) + "\n"
