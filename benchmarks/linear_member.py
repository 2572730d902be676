#!/usr/bin/env python
"""Linear member variants: can the recipe's ridge on Fisher-z edges be tuned further?

The recipe's linear member (``brainfm.models.linear_member.fit_linear``) is ridge on correlation-
normalised Fisher-z edges with log age, its penalty chosen on 3 inner whole-site folds from
``ALPHA_GRID``. Each variant below changes one choice, with the same protocol as the recipe
(every choice made on inner site folds of the outer training subjects only):

- ``shipped``: the recipe's member on whole sessions only (what shipped before the
  augmentation below; the name is kept so that earlier results read the same);
- ``wide-grid``: penalties down to 1e-6 (the shipped choice often sits at the grid's floor);
- ``5-inner``: 5 inner site folds instead of 3;
- ``affine``: the prediction recalibrated as ``a + b * pred`` (log age), ``b`` and ``a`` by
  least absolute deviations on the inner out-of-fold predictions (against ridge shrinkage
  towards the mean age);
- ``rbf``: a Gaussian kernel on the normalised edges, ``exp(-2 g (1 - k))``, with ``g`` in
  (0, 0.5, 1, 2) chosen on the inner folds (``g = 0`` is the linear kernel);
- ``inv-sqrt``: the target ``-1 / sqrt(age)`` instead of ``log(age)`` (Box-Cox with
  lambda = -1/2: it spreads the children further apart and squeezes the adults more than the
  log does); ``t`` in the inner choices says which of the two the inner folds prefer;
- ``half-segments``: augmentation of the training set with connectivity from sub-segments
  (the issue's suggestion): every training subject adds two rows, the Fisher-z edges of the
  first and of the second half of its (resampled, concatenated) series, with its own age
  (``linear_member.fit_linear`` with ``segments``, what the recipe now chooses from). Test subjects
  are predicted from their whole-session edges, as in the shipped member; the inner folds keep
  a subject's three rows together and predict from whole-session rows only; ``a`` in the inner
  choices says whether they prefer it to the whole-session member;
- ``3-segments``, ``4-segments``: the same with the series cut into three or four consecutive
  parts (shorter, noisier views; more rows); ``s`` in the inner choices is the
  number of parts the inner folds prefer among 2, 3 and 4.

The age-band table compares the shipped member with ``inv-sqrt`` and ``half-segments``.

Usage (after ``accuracy.py`` has imported the data into its cache)::

    python benchmarks/linear_member.py [--cache ~/.cache/brainfm/abide-pcp-cc200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from accuracy import load_cohort, outer_folds
from evaluation import AGE_BANDS

from brainfm.models.baselines import (
    ALPHA_GRID,
    connectivity_features,
    correlation_features,
    kernel_ridge_predict,
    out_of_fold,
)
from brainfm.models.linear_member import fit_linear, segment_edges
from brainfm.models.options import TrainOptions
from brainfm.models.stacking import inner_site_folds

#: Target transforms: name -> (forward, inverse).
TRANSFORMS = {"log": (np.log, np.exp),
              "inv-sqrt": (lambda v: -1.0 / np.sqrt(v), lambda v: 1.0 / np.square(v))}
#: Augmentation variants: name -> number of consecutive parts of each training subject's series.
SEGMENT_VARIANTS = {"half-segments": 2, "3-segments": 3, "4-segments": 4}
WIDE_GRID = tuple(float(a) for a in np.logspace(-6, 3, 19))
GAMMAS = (0.0, 0.5, 1.0, 2.0)
SLOPES = np.linspace(0.8, 1.6, 81)


def member(kernel: np.ndarray, y: np.ndarray, sites: np.ndarray, train: np.ndarray,
           test: np.ndarray, alphas=ALPHA_GRID, n_inner: int = 3, transform: str = "log"
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """Kernel ridge on transformed age: (test, inner out-of-fold) predictions in transformed
    units, inner MAE (years)."""
    forward, inverse = TRANSFORMS[transform]
    folds = inner_site_folds(sites[train], n_inner, 0)
    y_t = forward(y)
    oof = out_of_fold(kernel, y_t, train, alphas, n_inner, 0, folds=folds)
    mae = np.mean(np.abs(inverse(oof) - y[train][None]), axis=1)
    best = int(np.argmin(mae))
    pred = kernel_ridge_predict(kernel, y_t, train, test, [alphas[best]])[0]
    return pred, oof[best], float(mae[best])


def augmented_member(edges: np.ndarray, segments: np.ndarray, y: np.ndarray, sites: np.ndarray,
                     train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float]:
    """The recipe's linear member (``linear_member.fit_linear``) trained with each training
    subject's sub-segment rows added: (test predictions in log units, inner MAE in years)."""
    folds = inner_site_folds(sites[train], 3, 0)
    fit = fit_linear(edges[train], np.log(y[train]), y[train], folds, np.exp, segments[train])
    pred = (edges[test] - fit["center"]) @ fit["weight"] + fit["intercept"]
    return pred, min(fit["scores"].values())


def affine(oof: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of ``y ~ a + b oof`` (log units) minimising the raw-unit MAE."""
    best = (np.inf, 0.0, 1.0)
    for b in SLOPES:
        a = float(np.median(np.log(y) - b * oof))
        mae = float(np.mean(np.abs(np.exp(a + b * oof) - y)))
        best = min(best, (mae, a, float(b)))
    return best[1], best[2]


def main(argv: list[str] | None = None) -> int:
    """Print the pooled outer age MAE of each variant under both protocols."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cohort = load_cohort(args.cache, TrainOptions())
    y = cohort.targets[:, 0]
    edges = correlation_features(connectivity_features([s.conn for s in cohort.sessions]))
    linear = edges @ edges.T
    kernels = {g: linear if g == 0 else np.exp(-2.0 * g * (1.0 - linear)) for g in GAMMAS}
    parts = {name: segment_edges(cohort.sessions, count)
             for name, count in SEGMENT_VARIANTS.items()}
    print(f"{len(y)} subjects, {edges.shape[1]} edges")
    for protocol in ("loso", "kfold"):
        errors: dict[str, list[np.ndarray]] = {
            k: [] for k in ("shipped", "wide-grid", "5-inner", "affine", "rbf", "inv-sqrt",
                            *SEGMENT_VARIANTS)}
        truth, choices = [], []
        for train, test in outer_folds(cohort, protocol, seed=0):
            train, test = train[np.isfinite(y[train])], test[np.isfinite(y[test])]
            rbf = {g: member(kernels[g], y, cohort.sites, train, test) for g in GAMMAS}
            pred, oof, _ = rbf[0.0]  # the linear kernel: the shipped member
            a, b = affine(oof, y[train])
            g = min(GAMMAS, key=lambda k: rbf[k][2])
            preds = {"shipped": pred, "affine": a + b * pred, "rbf": rbf[g][0],
                     "wide-grid": member(linear, y, cohort.sites, train, test, WIDE_GRID)[0],
                     "5-inner": member(linear, y, cohort.sites, train, test, n_inner=5)[0]}
            years = {name: np.exp(value) for name, value in preds.items()}
            inv_sqrt, _, inv_sqrt_inner = member(linear, y, cohort.sites, train, test,
                                                 transform="inv-sqrt")
            years["inv-sqrt"] = TRANSFORMS["inv-sqrt"][1](inv_sqrt)
            transform = "inv-sqrt" if inv_sqrt_inner < rbf[0.0][2] else "log"
            inner = {}
            for name in SEGMENT_VARIANTS:
                augmented, inner[name] = augmented_member(edges, parts[name], y, cohort.sites,
                                                          train, test)
                years[name] = np.exp(augmented)
            augment = "yes" if inner["half-segments"] < rbf[0.0][2] else "no"
            segments = min(SEGMENT_VARIANTS, key=inner.get)
            for name, value in years.items():
                errors[name].append(np.abs(value - y[test]))
            truth.append(y[test])
            choices.append(f"b={b:.2f} g={g:g} t={transform} a={augment} s={segments}")
        base = float(np.mean(np.concatenate(errors["shipped"])))
        print(f"\n{protocol}: pooled age MAE (ratio to shipped); inner choices per fold: "
              f"{', '.join(choices)}")
        for name, errs in errors.items():
            mae = float(np.mean(np.concatenate(errs)))
            print(f"  {name:<14}{mae:7.3f}{mae / base:8.3f}")
        true_age = np.concatenate(truth)
        print(f"  by age band: {'':<4}" + "".join(f"{band:>8}" for band in AGE_BANDS))
        for name in ("shipped", "inv-sqrt", *SEGMENT_VARIANTS):
            err = np.concatenate(errors[name])
            print(f"  {name:<16}" + "".join(
                f"{np.mean(err[(true_age >= lo) & (true_age < hi)]):8.2f}"
                for lo, hi in AGE_BANDS.values()))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
