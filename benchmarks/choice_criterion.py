#!/usr/bin/env python
"""Pooled or age-balanced: which criterion should the recipe's inner choices be made on?

The recipe (``brainfm.models.stacking``) chooses each target's transform (raw or log age), the
linear member's augmentation (whole sessions, or with the two half-session views) and its ridge
penalty on the held-out MAE of inner whole-site folds (``linear_member.choose_linear``). Its
accuracy is all the linear member's (``accuracy.md``), so this benchmark replays exactly those
choices, once on the pooled inner MAE (what ships, ``RecipeOptions(choice_criterion="pooled")``)
and once on the age-balanced inner MAE (the mean of the per-band MAEs, < 13, 13-18, 18-30,
>= 30 y; ``choice_criterion="balanced"``), in every outer fold of the accuracy benchmark's two
protocols, and scores both on the outer test subjects, pooled and balanced, with paired
bootstrap CIs (balanced / pooled choice, resampling subjects and sites). No network is trained:
the networks' stacking weight is 0.00-0.15, so they do not change the comparison.

Usage (after ``accuracy.py`` has imported the data into its cache)::

    python benchmarks/choice_criterion.py [--cache ~/.cache/brainfm/abide-pcp-cc200]
        [--out benchmarks/results/choice_criterion.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from accuracy import load_cohort, outer_folds
from evaluation import paired_mae_ratio
from provenance import git_commit, machine

from brainfm.fileio import write_text_atomic
from brainfm.models.age_bands import balanced_mae, balanced_weights, band_table
from brainfm.models.baselines import connectivity_features, correlation_features
from brainfm.models.ensemble import TRANSFORMS, LinearMember
from brainfm.models.linear_member import (
    TRANSFORM_CANDIDATES,
    choose_linear,
    linear_candidate_name,
    segment_edges,
)
from brainfm.models.options import TrainOptions
from brainfm.models.stacking import RecipeOptions, inner_site_folds

CRITERIA = ("pooled", "balanced")
PROTOCOL_TITLES = {"loso": "leave-one-site-out", "kfold": "site-stratified 5-fold"}


def replay_fold(edges: np.ndarray, parts: dict[int, np.ndarray], age: np.ndarray,
                sites: np.ndarray, train: np.ndarray, test: np.ndarray, criterion: str,
                recipe: RecipeOptions, seed: int) -> tuple[np.ndarray, str]:
    """Predict the outer test subjects with the linear member chosen on ``criterion``.

    Returns
    -------
    prediction : ndarray of shape (len(test),)
        Ages of the test subjects (years).
    choice : str
        The chosen candidate and penalty, e.g. ``log+2 segments a=0.1``.
    """
    folds = inner_site_folds(sites[train], recipe.n_members, seed)
    weights = (balanced_weights(age[train], recipe.band_edges) if criterion == "balanced"
               else None)
    transform, n_segments, fit, _ = choose_linear(
        edges[train], age[train], folds, TRANSFORM_CANDIDATES,
        {count: p[train] for count, p in parts.items()}, weights)
    member = LinearMember(edges.shape[1])  # the deployed linear member predicts the test set
    member.set(fit["weight"], fit["center"], fit["intercept"])
    _, inverse = TRANSFORMS[transform]
    return (inverse(member.predict(edges[test])),
            f"{linear_candidate_name(transform, n_segments)} a={fit['alpha']:g}")


def render(results: dict[str, dict], n: int, seconds: float, cache: Path) -> str:
    """The markdown report."""
    lines = ["# Inner-choice criterion: pooled or age-balanced MAE", "",
             "- Command: `python benchmarks/choice_criterion.py --cache " + str(cache) + "`",
             f"- Git commit `{git_commit()}`; {machine()}; {seconds:.0f} s",
             f"- Cohort: {n} subjects with an age (ABIDE I PCP CC200). The recipe's linear-member "
             "choices (raw/log age, half-session augmentation, penalty) replayed in every outer "
             "fold on 3 inner whole-site folds of the training subjects, chosen on each "
             "criterion; scored on the outer test subjects.", ""]
    for protocol, res in results.items():
        lines += [f"## {PROTOCOL_TITLES[protocol]}", "",
                  "| choices made on | pooled MAE | balanced MAE | " +
                  " | ".join(f"{b} MAE (bias)" for b in res["bands"]) + " |",
                  "|---|---|---|" + "---|" * len(res["bands"])]
        for crit in CRITERIA:
            row = res[crit]
            cells = [f"{t['mae']:.2f} ({t['bias']:+.1f})" if t["n"] else "-"
                     for t in row["bands_table"]]
            lines.append(f"| {crit} inner MAE | {row['pooled']:.3f} | {row['balanced']:.3f} | "
                         + " | ".join(cells) + " |")
        for kind in ("pooled", "balanced"):
            r = res["ratio_" + kind]
            lines.append("")
            lines.append(f"- {kind} MAE, balanced-criterion choices / pooled-criterion choices: "
                         f"**{r['ratio']:.3f}** (95 % CI over subjects {r['ci95_subjects'][0]:.3f}-"
                         f"{r['ci95_subjects'][1]:.3f}, over sites {r['ci95_sites'][0]:.3f}-"
                         f"{r['ci95_sites'][1]:.3f})")
        for crit in CRITERIA:
            counts: dict[str, int] = {}
            for choice in res[crit]["choices"]:
                key = choice.split(" a=")[0]
                counts[key] = counts.get(key, 0) + 1
            lines.append(f"- {crit} criterion chose, over {len(res[crit]['choices'])} folds: "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())))
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Replay the inner choices on both criteria and write the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parent / "results" / "choice_criterion.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    recipe = RecipeOptions()
    cohort = load_cohort(args.cache, TrainOptions())
    age = cohort.targets[:, 0]
    edges = correlation_features(connectivity_features([s.conn for s in cohort.sessions]))
    parts = {count: segment_edges(cohort.sessions, count) for count in recipe.segment_candidates}
    results: dict[str, dict] = {}
    for protocol in ("loso", "kfold"):
        preds = {crit: np.full(age.size, np.nan) for crit in CRITERIA}
        choices: dict[str, list[str]] = {crit: [] for crit in CRITERIA}
        for train, test in outer_folds(cohort, protocol, args.seed):
            train, test = train[np.isfinite(age[train])], test[np.isfinite(age[test])]
            for crit in CRITERIA:
                preds[crit][test], choice = replay_fold(edges, parts, age, cohort.sites, train,
                                                        test, crit, recipe, args.seed)
                choices[crit].append(choice)
            print(f"{protocol}: {len(choices['pooled'])} folds, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        ok = np.isfinite(age) & np.isfinite(preds["pooled"])
        res: dict = {"bands": [r["band"] for r in band_table(age[ok], age[ok])]}
        for crit in CRITERIA:
            res[crit] = {"pooled": float(np.mean(np.abs(preds[crit][ok] - age[ok]))),
                         "balanced": balanced_mae(age[ok], preds[crit][ok]),
                         "bands_table": band_table(age[ok], preds[crit][ok]),
                         "choices": choices[crit]}
        for kind in ("pooled", "balanced"):
            res["ratio_" + kind] = paired_mae_ratio(age[ok], preds["balanced"][ok],
                                                    preds["pooled"][ok], cohort.sites[ok],
                                                    balanced=kind == "balanced")
        results[protocol] = res
    text = render(results, int(np.isfinite(age).sum()), time.perf_counter() - t0, args.cache)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
