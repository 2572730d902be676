"""What a model card says about its model beyond the fit: name, terms, accuracy, caveats.

The one home of the card fields that participant and group outputs repeat (see
:func:`brainfm.interfaces.predict.model_card_summary`): ``name``, ``license``, ``terms``, each
target's plain-words ``note`` and ``metrics.leave_site_out_summary`` (read as
``OutOfSiteAccuracy``: per target ``mae``, ``r``, ``coverage_90`` and ``training_mean_mae``).
``benchmarks/build_default_model.py`` fills them for the shipped model from the outer
cross-validation; :func:`complete_card` fills them for a lab's own model (``brainfm-train
ensemble --name ... --license ...``) from the recipe's own out-of-fold predictions on its inner
site folds. Both word a target that does not beat the training mean with
:func:`not_predictable_note`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainfm.errors import UsageError


@dataclass
class CardInfo:
    """Card fields a lab gives its own model (``brainfm-train ensemble``).

    Attributes
    ----------
    name : str or None
        Model name (``name``; methods text and reports).
    license : str or None
        Licence of the weights (``license``; e.g. inherited from the training data's terms).
    terms : str or None
        Terms of use and credits in full (``terms``).
    target_notes : dict
        Plain-words caveat per target name (each target's ``note``), shown beside predictions.
    """

    name: str | None = None
    license: str | None = None
    terms: str | None = None
    target_notes: dict[str, str] = field(default_factory=dict)


def parse_target_notes(items: Sequence[str], targets: Sequence[str]) -> dict[str, str]:
    """``TARGET=TEXT`` items of ``--target-note`` as a mapping.

    Parameters
    ----------
    items : sequence of str
        ``TARGET=TEXT`` strings.
    targets : sequence of str
        The model's target names.

    Returns
    -------
    dict
        Text per target name (a repeated target's texts joined by a space).

    Raises
    ------
    UsageError
        An item without ``=``, with an empty text or naming an unknown target.
    """
    notes: dict[str, str] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise UsageError(f"--target-note {item!r}: expected TARGET=TEXT")
        if name not in targets:
            raise UsageError(f"--target-note {item!r}: {name} is not a target "
                             f"({', '.join(targets)})")
        notes[name] = f"{notes[name]} {text}" if name in notes else text
    return notes


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def not_predictable(mae: float, mean_mae: float,
                    r_ci: Sequence[float] | None = None) -> bool:
    """Whether out-of-site accuracy says a target is not predicted.

    Parameters
    ----------
    mae : float
        Out-of-site MAE of the model.
    mean_mae : float
        Out-of-site MAE of predicting the training mean for everyone.
    r_ci : sequence of float, optional
        95 % confidence interval of the out-of-site correlation (e.g. over sites).

    Returns
    -------
    bool
        True when the model is not better than the training mean, or the interval of its
        correlation reaches 0.
    """
    return bool(mae >= mean_mae or (r_ci is not None and r_ci[0] <= 0))


def not_predictable_note(label: str, mae: float, mean_mae: float, r: float | None = None,
                         r_ci: Sequence[float] | None = None, ci_over: str = "sites") -> str:
    """The plain-words caveat of a target the model does not predict out of site.

    Parameters
    ----------
    label : str
        How the text names the target (e.g. ``PIQ``).
    mae, mean_mae : float
        Out-of-site MAE of the model and of the training mean.
    r : float, optional
        Out-of-site correlation (left out when undefined).
    r_ci : sequence of float, optional
        Its 95 % interval.
    ci_over : str
        What the interval's bootstrap resampled (``sites`` or ``subjects``).

    Returns
    -------
    str
        e.g. "Not predictable out of site: on sites it never saw, the model's PIQ MAE is 12.4
        against 12.5 for the training mean, r 0.04 (95 % CI over sites -0.08 to 0.15). Do not
        interpret individual values."
    """
    text = (f"Not predictable out of site: on sites it never saw, the model's {label} MAE is "
            f"{mae:.1f} against {mean_mae:.1f} for the training mean")
    if _finite(r):
        text += f", r {float(r):.2f}"
        if r_ci:
            text += f" (95 % CI over {ci_over} {r_ci[0]:.2f} to {r_ci[1]:.2f})"
    return text + ". Do not interpret individual values."


#: Fewest sites for a bootstrap over sites (with fewer, the interval resamples subjects).
MIN_SITES_FOR_SITE_CI = 5


def oof_correlation_ci(y_true: Any, y_pred: Any, sites: Any) -> dict[str, Any]:
    """95 % bootstrap interval of an out-of-fold correlation, over sites where there are enough.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n,)
        Known values and out-of-fold predictions.
    sites : array-like of shape (n,)
        Site of each subject.

    Returns
    -------
    dict
        ``ci95`` ([low, high] or None) and ``over`` (``sites`` with at least
        :data:`MIN_SITES_FOR_SITE_CI` sites, else ``subjects``).
    """
    from brainfm.models.evaluation import correlation_ci

    sites = np.asarray(sites).astype(str)
    res = correlation_ci(np.asarray(y_true, dtype=np.float64),
                         np.asarray(y_pred, dtype=np.float64), sites)
    over = "sites" if len(set(sites.tolist())) >= MIN_SITES_FOR_SITE_CI else "subjects"
    return {"ci95": res[f"ci95_{over}"], "over": over}


def inner_folds_are_sites(inner_folds: Sequence[Sequence[str]]) -> bool:
    """Whether the recipe's inner folds hold whole sites (no site in two folds).

    Parameters
    ----------
    inner_folds : sequence of sequence of str
        Sites of each inner fold (the card's ``ensemble.inner_folds``).

    Returns
    -------
    bool
        True when every site lies in one fold only.
    """
    seen = [s for fold in inner_folds for s in set(fold)]
    return len(seen) == len(set(seen))


def out_of_site_summary(inner: Mapping[str, Any], coverage_90: Mapping[str, float | None],
                        site_folds: bool, r_ci: Mapping[str, Mapping[str, Any]] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """``metrics.leave_site_out_summary`` from the recipe's inner out-of-fold metrics.

    Parameters
    ----------
    inner : mapping
        The card's ``metrics.inner_out_of_site`` (per target, ``final`` and ``training_mean``
        metrics).
    coverage_90 : mapping
        Cross-fitted 90 % interval coverage of the out-of-fold predictions per target.
    site_folds : bool
        Whether the inner folds were whole sites (:func:`inner_folds_are_sites`).
    r_ci : mapping, optional
        Per target, :func:`oof_correlation_ci`.

    Returns
    -------
    dict
        Per target ``mae``, ``r``, ``coverage_90``, ``training_mean_mae``, ``n``, ``r_ci95``
        and ``r_ci95_over`` (with ``r_ci``) and ``protocol`` (where the numbers come from).
    """
    protocol = ("out-of-fold predictions of the recipe's inner folds of whole sites on its "
                "training cohort (each subject predicted by members that never saw its site)"
                if site_folds else
                "out-of-fold predictions of random inner folds (fewer sites than members): "
                "within-site accuracy, optimistic for a new site")
    out = {}
    for name, parts in inner.items():
        final = parts["final"]
        out[name] = {"mae": _clean(final.get("mae")), "r": _clean(final.get("r")),
                     "coverage_90": _clean(coverage_90.get(name)),
                     "training_mean_mae": _clean(parts["training_mean"].get("mae")),
                     "n": int(final.get("n", 0)), "protocol": protocol}
        if r_ci and name in r_ci:
            out[name]["r_ci95"] = r_ci[name]["ci95"]
            out[name]["r_ci95_over"] = r_ci[name]["over"]
    return out


def _clean(value: Any) -> float | None:
    return float(value) if _finite(value) else None


def complete_card(card: dict[str, Any], info: CardInfo, coverage_90: Mapping[str, float | None],
                  inner_folds: Sequence[Sequence[str]],
                  r_ci: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Fill an own ensemble's card with its name, terms, out-of-site accuracy and caveats.

    A target whose out-of-fold MAE is not lower than the training mean's, or whose correlation
    interval reaches 0, gets :func:`not_predictable_note` before any note of ``info``.

    Parameters
    ----------
    card : dict
        Card of :func:`~brainfm.models.stacking.ensemble_card`.
    info : CardInfo
        What the lab gives.
    coverage_90 : mapping
        Cross-fitted 90 % coverage of the out-of-fold predictions per target.
    inner_folds : sequence of sequence of str
        Sites of each inner fold (the ensemble's ``inner_folds``).
    r_ci : mapping, optional
        Per target, the interval of the out-of-fold correlation (:func:`oof_correlation_ci`).

    Returns
    -------
    dict
        The same card, completed in place.
    """
    for key in ("name", "license", "terms"):
        if getattr(info, key):
            card[key] = getattr(info, key)
    inner = card["metrics"]["inner_out_of_site"]
    site_folds = inner_folds_are_sites(inner_folds)
    summary = out_of_site_summary(inner, coverage_90, site_folds, r_ci)
    card["metrics"]["leave_site_out_summary"] = summary
    for target in card["targets"]:
        notes = []
        acc = summary.get(target["name"])
        ci = acc.get("r_ci95") if acc else None
        if acc and _finite(acc["mae"]) and _finite(acc["training_mean_mae"]) and \
                not_predictable(acc["mae"], acc["training_mean_mae"], ci):
            notes.append(not_predictable_note(
                target.get("label") or target["name"], acc["mae"], acc["training_mean_mae"],
                acc["r"], ci, acc.get("r_ci95_over", "sites")))
        if info.target_notes.get(target["name"]):
            notes.append(info.target_notes[target["name"]])
        if notes:
            target["note"] = " ".join(notes)
    return card


def coverage_of(inside: Any) -> float | None:
    """Share of true flags (NaN = unknown) or None.

    Parameters
    ----------
    inside : array-like of float
        1 where the true value fell inside the interval, 0 outside, NaN unknown.

    Returns
    -------
    float or None
        The mean of the known flags.
    """
    v = np.asarray(inside, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None
