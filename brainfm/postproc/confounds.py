"""Denoising strategies and the nuisance design matrix built from fMRIPrep's confounds table.

The built-in strategies are data: one YAML file each in ``brainfm/data/strategies``.

``pcp`` (default)
    Emulates the ABIDE Preprocessed Connectomes Project (PCP) C-PAC ``filt_global`` processing
    that produced the training data. PCP regressed 24 motion parameters *as C-PAC defines them*
    (the 6 rigid-body parameters, the same 6 one volume earlier (t-1 lags) and the squares of
    these 12), the top 5 principal components of the white-matter + CSF signal (CompCor),
    linear and quadratic trends and the global signal, then band-passed 0.01-0.1 Hz. Here:
    the lag columns ``<param>_lag1`` are built from the fMRIPrep parameters (first row 0, as
    C-PAC does), the CompCor part uses fMRIPrep's combined-mask ``a_comp_cor_00..04`` plus the
    ``cosine*`` regressors fMRIPrep requires with CompCor; when the confounds hold no aCompCor
    columns at all (e.g. a minimal preprocessing that writes only mean tissue signals), the
    mean ``white_matter`` and ``csf`` signals stand in for them (logged).
``24P``
    6 parameters, their temporal derivatives and the squares of those 12 (fMRIPrep's
    ``*_derivative1``, ``*_power2``, ``*_derivative1_power2``; nilearn ``motion='full'``).
``36P``
    24P plus ``white_matter``, ``csf`` and ``global_signal``, each with derivative, square and
    squared derivative (nilearn ``wm_csf='full'``, ``global_signal='full'``).
``acompcor``
    6 parameters and their derivatives, the top 5 aCompCor components of the WM mask and the
    top 5 of the CSF mask, and the ``cosine*`` regressors. Components are fMRIPrep's
    ``w_comp_cor_*``/``c_comp_cor_*`` (fMRIPrep >= 21); for older outputs, the ``a_comp_cor_*``
    columns whose ``Mask`` in the JSON sidecar is ``WM``/``CSF``; without either, the top 10
    ``a_comp_cor_*`` (combined mask) are used and a warning is logged. fMRIPrep keeps only the
    components that explain 50 % of the variance, so fewer than 5 per mask may exist: all that
    exist are used (as nilearn does).
``none``
    No regressors: trends and band-pass only.

Default band-pass: 0.01-0.1 Hz for ``pcp``, 0.01-0.08 Hz for the others (XCP-D's default).
The user's ``--lower-bpf``/``--upper-bpf`` override them; 0 disables that side.

The column choices equal nilearn's ``load_confounds`` for the same options (the tests check
this on nilearn's shipped fMRIPrep files). ``load_confounds`` itself is not called because it
works from an image path (it locates the TSV from the BOLD name), whereas the pipeline already
holds the table, and because it cannot express the PCP lags. Derivative-type columns are
missing on the first row(s); they are filled with 0 (nilearn copies the second row instead;
0 is C-PAC's convention for the lag and is what "no change" means for a difference). Expansion
columns missing from a table (``_derivative1``, ``_power2``, ``_derivative1_power2``) are
computed from the base column exactly as fMRIPrep does (backward difference, square).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from brainfm.errors import InputError, UsageError

LOGGER = logging.getLogger(__name__)

MOTION_PARAMS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

_LEVELS = ("none", "basic", "derivatives", "power2", "full")
_MOTION_LEVELS = (*_LEVELS, "pcp24")
_COMPCOR_KINDS = ("none", "combined", "separated")
_FALLBACKS = ("none", "wm_csf")


@dataclass(frozen=True)
class Strategy:
    """A denoising strategy (read from ``brainfm/data/strategies/<name>.yml``).

    Attributes
    ----------
    name : str
        Canonical name (``pcp``, ``24P``, ``36P``, ``acompcor``, ``none``).
    description : str
        One-paragraph description, suitable for JSON sidecars.
    motion : str
        ``none``, ``basic`` (6), ``derivatives`` (12), ``power2`` (12), ``full`` (24, Friston as
        in fMRIPrep) or ``pcp24`` (24, C-PAC: parameters, t-1 lags, squares of both).
    wm_csf, global_signal : str
        ``none``, ``basic``, ``derivatives``, ``power2`` or ``full`` (nilearn's meanings).
    compcor : str
        ``none``, ``combined`` (WM+CSF mask) or ``separated`` (WM and CSF masks).
    n_compcor : int
        Components per mask.
    compcor_fallback : str
        ``wm_csf``: use the mean WM and CSF signals when the table has no aCompCor columns;
        ``none``: missing components are an error.
    detrend_order : int
        Polynomial trends regressed out (1 linear, 2 linear + quadratic).
    high_pass, low_pass : float or None
        Default band-pass edges in Hz (``None`` = that side off).
    """

    name: str
    description: str
    motion: str
    wm_csf: str
    global_signal: str
    compcor: str
    n_compcor: int
    compcor_fallback: str
    detrend_order: int
    high_pass: float | None
    low_pass: float | None
    emulates: tuple[str, ...] = ()


def _strategy_files() -> dict[str, str]:
    folder = resources.files("brainfm.data").joinpath("strategies")
    return {
        entry.name[: -len(".yml")]: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".yml")
    }


def _as_cutoff(value: object) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value <= 0 else value


def _parse_strategy(stem: str | None, text: str) -> Strategy:
    """A strategy from YAML text; ``stem`` (a built-in's file name) must equal its ``name``."""
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise ValueError("not a YAML mapping of the strategy's keys")
    strategy = Strategy(
        name=str(spec["name"]),
        description=" ".join(str(spec["description"]).split()),
        motion=str(spec["motion"]),
        wm_csf=str(spec["wm_csf"]),
        global_signal=str(spec["global_signal"]),
        compcor=str(spec["compcor"]),
        n_compcor=int(spec["n_compcor"]),
        compcor_fallback=str(spec["compcor_fallback"]),
        detrend_order=int(spec["detrend_order"]),
        high_pass=_as_cutoff(spec.get("high_pass")),
        low_pass=_as_cutoff(spec.get("low_pass")),
        emulates=tuple(str(e) for e in spec.get("emulates") or ()),
    )
    problems = []
    if stem is not None and strategy.name != stem:
        problems.append(f"name {strategy.name!r} differs from the file name")
    if strategy.motion not in _MOTION_LEVELS:
        problems.append(f"motion {strategy.motion!r}")
    for key in ("wm_csf", "global_signal"):
        if getattr(strategy, key) not in _LEVELS:
            problems.append(f"{key} {getattr(strategy, key)!r}")
    if strategy.compcor not in _COMPCOR_KINDS:
        problems.append(f"compcor {strategy.compcor!r}")
    if strategy.compcor_fallback not in _FALLBACKS:
        problems.append(f"compcor_fallback {strategy.compcor_fallback!r}")
    if strategy.detrend_order not in (0, 1, 2):
        problems.append(f"detrend_order {strategy.detrend_order}")
    if problems:
        raise ValueError(f"invalid values: {'; '.join(problems)}")
    return strategy


def _strategy_from_file(path: str) -> Strategy:
    try:
        return _parse_strategy(None, Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"cannot read the strategy file {path} ({err})") from err
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        detail = f"missing key {err}" if isinstance(err, KeyError) else str(err)
        raise UsageError(
            f"invalid strategy file {path}: {detail}. It takes the keys of the built-in ones "
            "(brainfm/data/strategies/*.yml: name, description, motion, wm_csf, global_signal, "
            "compcor, n_compcor, compcor_fallback, detrend_order, high_pass, low_pass)") from err


def is_strategy_file(name: str) -> bool:
    """Whether ``--nuisance-regressors`` names a strategy file (``.yml``/``.yaml``)."""
    return str(name).lower().endswith((".yml", ".yaml"))


@lru_cache(maxsize=1)
def _strategies() -> dict[str, Strategy]:
    out = {}
    for stem, text in _strategy_files().items():
        try:
            out[stem] = _parse_strategy(stem, text)
        except ValueError as err:
            raise ValueError(f"invalid built-in strategy file {stem}.yml: {err}") from err
    return out


def list_strategies() -> list[str]:
    """Names of the built-in denoising strategies.

    Returns
    -------
    list of str
        ``['24P', '36P', 'acompcor', 'none', 'pcp']`` (``pcp`` is the default of the CLI).
    """
    return sorted(_strategies(), key=str.lower)


def get_strategy(name: str) -> Strategy:
    """Look up a built-in strategy by name (case-insensitive), or read a strategy file.

    Parameters
    ----------
    name : str
        One of :func:`list_strategies`, or the path of a ``.yml``/``.yaml`` file with the keys
        of the built-in ones (``--nuisance-regressors my_strategy.yml``).

    Returns
    -------
    Strategy

    Raises
    ------
    UsageError
        Unknown name (the message lists the valid ones).
    """
    if is_strategy_file(name):
        return _strategy_from_file(str(Path(name).absolute()))
    table = {key.lower(): value for key, value in _strategies().items()}
    key = str(name).strip().lower()
    if key not in table:
        raise UsageError(
            f"unknown denoising strategy {name!r}; choose from {', '.join(list_strategies())}"
        )
    return table[key]


def strategy_matches(trained_on: str, run_strategy: str) -> bool:
    """Whether runs denoised with ``run_strategy`` suit a model trained on ``trained_on`` data.

    Parameters
    ----------
    trained_on : str
        The model card's ``denoising_strategy`` (a brainfm strategy, or the processing of
        imported data such as ``pcp-cpac-filt_global``).
    run_strategy : str
        The run's ``--nuisance-regressors``.

    Returns
    -------
    bool
        True for the same strategy, or one that the run's strategy emulates (its ``emulates``
        list: ``pcp`` reproduces ABIDE PCP's ``pcp-cpac-filt_global``).
    """
    trained, run = str(trained_on).strip().lower(), str(run_strategy).strip().lower()
    if trained == run:
        return True
    try:
        emulated = get_strategy(run_strategy).emulates
    except UsageError:
        return False
    return trained in {e.lower() for e in emulated}


def band_pass(strategy: str, lower_bpf: float | None = None,
              upper_bpf: float | None = None) -> tuple[float | None, float | None]:
    """Band-pass edges after applying the user's overrides to the strategy's defaults.

    Parameters
    ----------
    strategy : str
        Strategy name.
    lower_bpf, upper_bpf : float or None
        High-pass and low-pass cutoffs in Hz; ``None`` keeps the strategy default, ``0`` (or a
        negative value) disables that side.

    Returns
    -------
    (high_pass, low_pass) : tuple of float or None
        ``None`` means that side is off.

    Raises
    ------
    UsageError
        Both sides are set and the high-pass is not below the low-pass.
    """
    spec = get_strategy(strategy)
    high = spec.high_pass if lower_bpf is None else _as_cutoff(lower_bpf)
    low = spec.low_pass if upper_bpf is None else _as_cutoff(upper_bpf)
    if high is not None and low is not None and high >= low:
        raise UsageError(
            f"--lower-bpf ({high} Hz) must be below --upper-bpf ({low} Hz); use 0 to disable "
            "one side of the band-pass"
        )
    return high, low


def _suffixes(level: str) -> list[str]:
    return {
        "none": [],
        "basic": [""],
        "derivatives": ["", "_derivative1"],
        "power2": ["", "_power2"],
        "full": ["", "_derivative1", "_power2", "_derivative1_power2"],
    }[level]


def _numeric(confounds: pd.DataFrame, column: str, confounds_file: str) -> np.ndarray:
    values = pd.to_numeric(confounds[column], errors="coerce")
    raw = confounds[column]
    bad = values.isna() & raw.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"confounds file {confounds_file or '(table)'}: column {column!r} holds a "
            f"non-numeric value {raw.iloc[row]!r} in row {row + 1}; missing values must be "
            "written n/a"
        )
    return values.to_numpy(dtype=np.float64)


def _expansion(confounds: pd.DataFrame, name: str, confounds_file: str) -> np.ndarray | None:
    """Column ``name`` from the table, or computed from its base column as fMRIPrep does."""
    if name in confounds.columns:
        return _numeric(confounds, name, confounds_file)
    match = re.fullmatch(r"(.+?)(_derivative1)?(_power2)?", name)
    base, deriv, power = match.group(1), match.group(2), match.group(3)
    if base not in confounds.columns or not (deriv or power):
        return None
    values = _numeric(confounds, base, confounds_file)
    if deriv:
        values = np.concatenate([[np.nan], np.diff(values)])
    if power:
        values = values**2
    return values


def _lag1(values: np.ndarray) -> np.ndarray:
    return np.concatenate([[np.nan], values[:-1]])


def _natural_key(column: str) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z])_comp_cor_(\d+)", column)
    return (match.group(1), int(match.group(2))) if match else (column, -1)


def _compcor_of(confounds: pd.DataFrame, prefix: str) -> list[str]:
    cols = [c for c in confounds.columns if re.fullmatch(rf"{prefix}_comp_cor_\d+", str(c))]
    return sorted(cols, key=_natural_key)


def _read_metadata(confounds_file: str | Path) -> dict:
    if not confounds_file:
        return {}
    path = Path(confounds_file)
    sidecar = path.with_name(path.name[: -len(path.suffix)] + ".json") if path.suffix else None
    if sidecar is None or not sidecar.is_file():
        return {}
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        LOGGER.warning("ignoring unreadable confounds sidecar %s (%s)", sidecar, err)
        return {}
    return meta if isinstance(meta, dict) else {}


def _compcor_columns(confounds: pd.DataFrame, kind: str, n: int, meta: dict,
                     confounds_file: str) -> list[str]:
    """Pick aCompCor columns (see the module docstring for the rules)."""
    a_cols = _compcor_of(confounds, "a")
    w_cols = _compcor_of(confounds, "w")
    c_cols = _compcor_of(confounds, "c")
    masks = {c: meta[c].get("Mask") for c in (*a_cols, *w_cols, *c_cols)
             if isinstance(meta.get(c), dict) and meta[c].get("Mask")
             and meta[c].get("Retained", True) is not False}
    wanted = ["combined"] if kind == "combined" else ["WM", "CSF"]
    if masks:
        chosen = []
        for mask in wanted:
            cols = [c for c in (*a_cols, *w_cols, *c_cols) if masks.get(c) == mask]
            chosen += cols[:n]
        if chosen:
            return chosen
    if kind == "combined":
        if a_cols and not (w_cols or c_cols) and not masks:
            LOGGER.warning(
                "confounds %s: no JSON sidecar tells which mask a_comp_cor_* come from; using "
                "the first %d (fMRIPrep writes the combined-mask components first)",
                confounds_file or "(table)", n)
        return a_cols[:n]
    if w_cols or c_cols:
        return w_cols[:n] + c_cols[:n]
    if a_cols:
        LOGGER.warning(
            "confounds %s has no w_comp_cor_*/c_comp_cor_* columns and no sidecar masks; using "
            "the first %d a_comp_cor_* (combined WM+CSF mask) instead",
            confounds_file or "(table)", 2 * n)
    return a_cols[: 2 * n]


def select_confounds(confounds: pd.DataFrame, strategy: str, confounds_file: str | Path = "",
                     *, metadata: dict | None = None) -> pd.DataFrame:
    """Build a strategy's nuisance regressors from an fMRIPrep confounds table.

    Parameters
    ----------
    confounds : pandas.DataFrame
        The full ``desc-confounds_timeseries.tsv`` table (read with ``na_values='n/a'``), one
        row per volume.
    strategy : str
        One of :func:`list_strategies` (case-insensitive).
    confounds_file : str or pathlib.Path, optional
        Where the table came from: named in error messages, and its JSON sidecar (same name,
        ``.json``) is read for the aCompCor masks when it exists.
    metadata : dict, optional
        The sidecar's content, when the caller has it already (overrides reading it).

    Returns
    -------
    pandas.DataFrame
        One row per volume, float64, columns in the order motion, WM/CSF, global signal,
        CompCor, cosine; leading missing values of derivative/lag columns are 0. Trend
        regressors are not included (see :func:`brainfm.postproc.denoise.trend_regressors`).
        For ``none``, a table with no columns.

    Raises
    ------
    UsageError
        Unknown strategy.
    InputError
        Required columns are missing (all of them are named), a value is not numeric, or a
        value is missing other than in the leading rows of a derivative or lag column.
    """
    spec = get_strategy(strategy)
    confounds_file = str(confounds_file)
    where = confounds_file or "(confounds table)"
    if not isinstance(confounds, pd.DataFrame):
        raise InputError(f"confounds for {where} must be a table (pandas.DataFrame)")
    columns: dict[str, np.ndarray] = {}
    missing: list[str] = []

    def take(names: list[str]) -> None:
        for name in names:
            values = _expansion(confounds, name, confounds_file)
            if values is None:
                missing.append(name)
            else:
                columns[name] = values

    if spec.motion == "pcp24":
        base_missing = [p for p in MOTION_PARAMS if p not in confounds.columns]
        missing += base_missing
        if not base_missing:
            params = {p: _numeric(confounds, p, confounds_file) for p in MOTION_PARAMS}
            lags = {f"{p}_lag1": _lag1(v) for p, v in params.items()}
            columns.update(params)
            columns.update(lags)
            columns.update({f"{p}_power2": v**2 for p, v in params.items()})
            columns.update({f"{p}_power2": v**2 for p, v in lags.items()})
    else:
        take([p + s for p in MOTION_PARAMS for s in _suffixes(spec.motion)])
    take([p + s for p in ("white_matter", "csf") for s in _suffixes(spec.wm_csf)])
    take(["global_signal" + s for s in _suffixes(spec.global_signal)])
    if spec.compcor != "none":
        meta = metadata if metadata is not None else _read_metadata(confounds_file)
        chosen = _compcor_columns(confounds, spec.compcor, spec.n_compcor, meta, confounds_file)
        if chosen:
            take(chosen)
            cosines = [c for c in confounds.columns if re.fullmatch(r"cosine_?\d+", str(c))]
            take(sorted(cosines, key=lambda c: int(re.sub(r"\D", "", c))))
        elif spec.compcor_fallback == "wm_csf":
            LOGGER.warning(
                "confounds %s has no aCompCor columns; strategy %s uses the mean white-matter "
                "and CSF signals instead", where, spec.name)
            take([c for c in ("white_matter", "csf") if c not in columns])
        else:
            missing.append("w_comp_cor_* / c_comp_cor_* (or a_comp_cor_*)")
    if missing:
        raise InputError(
            f"confounds file {where} lacks column(s) required by the {spec.name!r} strategy: "
            f"{', '.join(missing)}; use fMRIPrep's desc-confounds_timeseries.tsv for this run "
            f"or choose another strategy (available: {', '.join(list_strategies())})"
        )
    design = pd.DataFrame(columns, index=pd.RangeIndex(len(confounds)), dtype=np.float64)
    for name in design.columns:
        values = design[name].to_numpy()
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        leading = int(np.argmin(bad)) if not bad.all() else len(bad)
        derived = "_derivative1" in name or "_lag1" in name
        if derived and not bad[leading:].any() and leading < len(values):
            design[name] = np.where(bad, 0.0, values)
            continue
        rows = (np.flatnonzero(bad) + 1).tolist()
        raise InputError(
            f"confounds file {where}: column {name!r} has missing or non-finite values in "
            f"row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''} (1 = first volume); only the "
            "first row(s) of derivative columns may be n/a. Regenerate the confounds file"
        )
    return design
