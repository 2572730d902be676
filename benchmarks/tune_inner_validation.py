#!/usr/bin/env python
"""Score a brainfm configuration on the inner validation split of the first 5-fold training set.

This is how the configuration in ``brainfm/data/configs/brainfm.yaml`` was chosen: only the
training subjects of outer fold 1 (site-stratified 5-fold, seed 0) are used; their inner
validation split (the one ``brainfm-train`` holds out for early stopping) scores the
candidates, and kernel ridge and ridge regression are fitted on the same inner training
subjects for reference. No outer test subject is touched.

Usage (after ``accuracy.py`` has imported the data into its cache)::

    python benchmarks/tune_inner_validation.py '{"model": {"patch_len": 8, "enc_layers": 1}}'
    python benchmarks/tune_inner_validation.py '{"lr": 0.002}' --pretrain-epochs 20
    python benchmarks/tune_inner_validation.py --baselines

Options in the JSON are ``TrainOptions`` fields (``model`` holds model overrides); unset ones
take brainfm's defaults, not the YAML configuration's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accuracy import TARGETS, load_cohort, outer_folds

from brainfm.models.baselines import connectivity_features, nested_kernel_ridge, subject_kernel
from brainfm.models.loop import split_subjects
from brainfm.models.options import TrainOptions
from brainfm.models.runtime import setup
from brainfm.models.train import finetune, pretrain


def main(argv: list[str] | None = None) -> int:
    """Print the inner-validation MAE of one configuration (or of the baselines)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("options", nargs="?", default="{}", help="TrainOptions as JSON")
    p.add_argument("--pretrain-epochs", type=int, default=0)
    p.add_argument("--baselines", action="store_true", help="score ridge and kernel ridge")
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    opts = TrainOptions(threads=1, **json.loads(args.options))
    cohort = load_cohort(args.cache, opts)
    train, _test = outer_folds(cohort, "kfold", seed=0)[0]
    sessions = [cohort.sessions[i] for i in train]
    y = cohort.targets[train]
    if args.baselines:
        inner_tr, inner_va = split_subjects([s.participant_id for s in sessions],
                                              opts.val_fraction, opts.seed)
        features = connectivity_features([s.conn for s in sessions])
        for kind in ("ridge", "krr"):
            kernel = subject_kernel(features, kind)
            for k, spec in enumerate(TARGETS):
                tr = inner_tr[np.isfinite(y[inner_tr, k])]
                va = inner_va[np.isfinite(y[inner_va, k])]
                pred, _, alpha = nested_kernel_ridge(kernel, y[:, k], tr, va)
                print(f"{kind} {spec.name}: inner-validation MAE "
                      f"{np.mean(np.abs(pred - y[va, k])):.3f} (alpha {alpha:g}, n {va.size})")
        return 0
    t0 = time.perf_counter()
    ctx = setup(opts)
    init = None
    if args.pretrain_epochs:
        init, _ = pretrain(sessions, opts, ctx, epochs=args.pretrain_epochs)
    _, _, info = finetune(sessions, y, list(TARGETS), opts, ctx, init=init)
    m = info["metrics"]
    print(json.dumps({
        "options": json.loads(args.options), "pretrain_epochs": args.pretrain_epochs,
        "best_epoch": m["best_epoch"], "age_mae": round(m["age"]["mae"], 3),
        "age_r": round(m["age"]["r"], 3),
        "piq_mae": round(m["fluid_intelligence"]["mae"], 3),
        "val_mae_age_per_epoch": [round(h["val_mae_age"], 2) for h in info["history"]],
        "seconds": round(time.perf_counter() - t0),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
