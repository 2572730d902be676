#!/usr/bin/env python
"""Linear member features: the shipped Fisher-z edges against tangent-space alternatives.

The recipe's linear member (``brainfm.models.linear_member.fit_linear``) is ridge on correlation-
normalised Fisher-z edges, with log age. This script asks whether another connectivity
representation would serve it better, with the same protocol as the recipe: in every outer
fold the penalty (and a blend weight) are chosen on inner whole-site folds of the training
subjects only, then the outer test subjects are predicted. Features compared:

- ``fisher-z``: the shipped features;
- ``tangent``: Ledoit-Wolf covariances of the standardised runs, whitened by the training
  subjects' log-Euclidean mean and mapped by the matrix logarithm (Varoquaux et al. 2010; Dadi
  et al. 2019 found tangent space best for prediction). nilearn's ``ConnectivityMeasure(kind=
  "tangent")`` uses the geometric mean as reference instead, whose iterations took over 30 min
  for the 25 folds on 2 cores; the log-Euclidean mean is its usual closed-form stand-in;
- ``log-euclidean``: the matrix logarithm of each covariance (no reference);
- ``blend``: ``fisher-z`` and ``log-euclidean`` predictions averaged (log age) with the weight
  that minimises the inner out-of-fold MAE;
- ``slow-band`` and ``fast-band``: the shipped features computed from each run band-passed
  to 0.01-0.05 Hz and 0.05-0.2 Hz (3rd-order Butterworth, zero phase, at the cohort's
  0.5 Hz sampling rate), in the spirit of the slow-4/slow-5 analyses;
- ``multi-band``: one kernel, the mean of the ``fisher-z``, ``slow-band`` and ``fast-band``
  kernels (their edges concatenated with equal weight).

Usage (after ``accuracy.py`` has imported the data into its cache)::

    python benchmarks/linear_features.py [--cache ~/.cache/brainfm/abide-pcp-cc200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from accuracy import load_cohort, outer_folds
from linear_member import member
from scipy.signal import butter, sosfiltfilt
from sklearn.covariance import ledoit_wolf

from brainfm.models.baselines import (
    connectivity_features,
    correlation_features,
)
from brainfm.models.options import TrainOptions
from brainfm.models.timeseries import fisher_z_connectivity, standardise

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)
#: Frequency bands of the band-limited connectivity (Hz).
BANDS_HZ = {"slow-band": (0.01, 0.05), "fast-band": (0.05, 0.2)}


def _sym_apply(mats: np.ndarray, fn) -> np.ndarray:
    """Apply ``fn`` to the eigenvalues of symmetric matrices (stacked on the first axis)."""
    w, v = np.linalg.eigh(mats)
    return (v * fn(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def covariances(sessions) -> np.ndarray:
    """Ledoit-Wolf covariance of each subject's standardised, concatenated runs."""
    out = []
    for s in sessions:
        x = np.concatenate(s.runs, axis=1).T.astype(np.float64)
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        out.append(ledoit_wolf(x, assume_centered=True)[0])
    return np.stack(out)


def band_edges(sessions, low_hz: float, high_hz: float) -> np.ndarray:
    """Normalised Fisher-z edges of each subject's runs band-passed to ``low_hz``-``high_hz``."""
    conns = []
    for s in sessions:
        sos = butter(3, [low_hz, high_hz], btype="band", fs=s.sampling_rate_hz, output="sos")
        runs = [standardise(sosfiltfilt(sos, r.astype(np.float64), axis=1).T, s.roi_mask)
                for r in s.runs]
        conns.append(fisher_z_connectivity(np.concatenate(runs), s.roi_mask))
    return correlation_features(connectivity_features(conns))


def main(argv: list[str] | None = None) -> int:
    """Print the pooled outer MAE of each feature map under both protocols."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cohort = load_cohort(args.cache, TrainOptions())
    y = cohort.targets[:, 0]
    covs = covariances(cohort.sessions)
    logs = _sym_apply(covs, np.log)
    iu = np.triu_indices(covs.shape[1], k=1)
    fixed = {"fisher-z": correlation_features(connectivity_features(
                 [s.conn for s in cohort.sessions])),
             "log-euclidean": np.sqrt(2) * logs[:, iu[0], iu[1]],
             **{name: band_edges(cohort.sessions, *hz) for name, hz in BANDS_HZ.items()}}
    kernels = {name: x @ x.T for name, x in fixed.items()}
    kernels["multi-band"] = (kernels["fisher-z"] + sum(kernels[b] for b in BANDS_HZ)) / 3
    print(f"{len(y)} subjects, {covs.shape[1]} ROIs; covariances in "
          f"{time.perf_counter() - t0:.0f} s")
    for protocol in ("loso", "kfold"):
        errors: dict[str, list[np.ndarray]] = {
            name: [] for name in ("fisher-z", "tangent", "log-euclidean", "blend", *BANDS_HZ,
                                  "multi-band")}
        weights = []
        for train, test in outer_folds(cohort, protocol, seed=0):
            train, test = train[np.isfinite(y[train])], test[np.isfinite(y[test])]
            w, v = np.linalg.eigh(logs[train].mean(axis=0))
            white = (v * np.exp(-0.5 * w)) @ v.T  # inverse square root of the reference
            tangent = _sym_apply(white @ covs @ white, np.log)
            tangent_edges = np.sqrt(2) * tangent[:, iu[0], iu[1]]
            fold_kernels = {**kernels, "tangent": tangent_edges @ tangent_edges.T}
            pred, oof = {}, {}
            for name, kernel in fold_kernels.items():
                pred[name], oof[name], _ = member(kernel, y, cohort.sites, train, test)
                errors[name].append(np.abs(np.exp(pred[name]) - y[test]))
            inner = [np.mean(np.abs(np.exp(a * oof["fisher-z"] + (1 - a) * oof["log-euclidean"])
                                    - y[train])) for a in WEIGHTS]
            a = float(WEIGHTS[int(np.argmin(inner))])
            weights.append(a)
            blend = a * pred["fisher-z"] + (1 - a) * pred["log-euclidean"]
            errors["blend"].append(np.abs(np.exp(blend) - y[test]))
        base = float(np.mean(np.concatenate(errors["fisher-z"])))
        print(f"\n{protocol}: pooled age MAE (ratio to fisher-z); blend weight of fisher-z per "
              f"fold {weights}")
        for name, errs in errors.items():
            mae = float(np.mean(np.concatenate(errs)))
            print(f"  {name:<14}{mae:7.3f}{mae / base:8.3f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
