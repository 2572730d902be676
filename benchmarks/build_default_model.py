#!/usr/bin/env python
"""Rebuild brainfm's shipped default model from scratch and check that training is deterministic.

Trains exactly as a user would with ``brainfm-train`` (LMAE pretraining on every subject, then
fine-tuning for age and PIQ from the pretrained encoder), with the options of
``benchmarks/configs/brainfm.yaml`` on all 782 ABIDE I PCP subjects, then completes the model
card: training cohort, cross-validated accuracy from ``benchmarks/results/accuracy.json``,
preprocessing assumptions and the ABIDE non-commercial terms.

Usage (from the repository root)::

    python benchmarks/build_default_model.py ../shared/data/abide-pcp-cc200 --check

``--check`` trains a second time from scratch with the same seed and compares the SHA-256 of
the two weight files (single-threaded CPU training is bit-for-bit deterministic); the result is
written to ``benchmarks/results/default_model.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from accuracy import DEFAULT_CONFIG, TARGETS, load_cohort, prepare_cache
from provenance import git_commit, machine

from brainfm.derivatives import write_text_atomic
from brainfm.models import train as T
from brainfm.models.checkpoint import load_checkpoint, save_checkpoint
from brainfm.models.cli import load_options

LOGGER = logging.getLogger("build_default_model")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUT = REPO / "brainfm" / "data" / "models" / "default"

TERMS = (
    "Trained on ABIDE I data shared by FCP/INDI under CC BY-NC-SA 3.0 "
    "(https://creativecommons.org/licenses/by-nc-sa/3.0/): these weights inherit the "
    "non-commercial, attribution and share-alike terms. Use them for non-commercial research only. "
    "Credit: Di Martino et al. 2014, Molecular Psychiatry 19:659 (ABIDE); Craddock et al. 2013, "
    "Frontiers in Neuroinformatics (the Preprocessed Connectomes Project)."
)
PREPROCESSING = {
    "atlas": "CC200 (Craddock et al. 2012, 200 parcels; the exact 3 mm image PCP used)",
    "space": "MNI152NLin6Asym (FSL MNI152)",
    "nuisance_regressors": "pcp",
    "description": (
        "PCP/C-PAC 'filt_global': 24 motion regressors, 5 aCompCor components (WM+CSF), global "
        "signal, linear and quadratic trends, 0.01-0.1 Hz band-pass; ROI means. brainfm's "
        "`--nuisance-regressors pcp` applies the same recipe to fMRIPrep confounds."
    ),
    "repetition_time": "any; runs are resampled to 0.5 Hz",
    "minimum_run_length_seconds": 128,
}


def train_once(deriv: Path, out: Path, opts: T.TrainOptions) -> dict[str, Any]:
    """Pretrain and fine-tune on the whole cohort, as ``brainfm-train`` does.

    Parameters
    ----------
    deriv : Path
        Imported derivatives.
    out : Path
        Folder for ``lmae/`` (pretraining) and ``model/`` (the fine-tuned model).
    opts : TrainOptions
        Options from the configuration file.

    Returns
    -------
    dict
        ``model_dir``, ``weights_sha256`` and ``seconds``.
    """
    t0 = time.perf_counter()
    pre_opts = T.TrainOptions(**opts.to_dict())
    if opts.pretrain_epochs is not None:
        pre_opts.epochs = int(opts.pretrain_epochs)
    lmae = T.run_pretrain([deriv], out / "lmae", pre_opts)
    model_dir = T.run_finetune([deriv], out / "model", list(TARGETS), opts, init=lmae)
    card = json.loads((model_dir / "model_card.json").read_text())
    return {"model_dir": model_dir, "weights_sha256": card["weights_sha256"],
            "seconds": round(time.perf_counter() - t0, 1)}


def cv_metrics(accuracy_json: Path) -> dict[str, Any] | None:
    """brainfm (full) and kernel-ridge cross-validated metrics from the accuracy benchmark."""
    if not accuracy_json.is_file():
        return None
    report = json.loads(accuracy_json.read_text())
    out: dict[str, Any] = {"source": "benchmarks/results/accuracy.json",
                           "command": report["meta"]["command"],
                           "git_commit": report["meta"]["git_commit"],
                           "date": report["meta"]["date"]}
    for block in report["protocols"].values():
        entry = {}
        for model in ("full", "krr", "mean"):
            if model not in block["summary"]:
                continue
            s = block["summary"][model]
            entry[model] = {
                t: {m: s[t][m] for m in ("mae", "r", "r2")} for t in ("age", "fluid_intelligence")
            }
        out[block["protocol"]] = {"n_folds": block["n_folds"], **entry}
    return out


def finish_card(model_dir: Path, out: Path, cohort_info: dict[str, Any],
                accuracy_json: Path) -> Path:
    """Write the shipped model (same weights) with the complete model card into ``out``."""
    model, card = load_checkpoint(model_dir)
    card["name"] = "brainfm-default-abide-cc200"
    card["intended_use"] = (
        "Research estimates of brain age and performance IQ (a fluid-intelligence proxy) from "
        "resting-state fMRI parcellated with CC200 and denoised with the 'pcp' strategy. Not a "
        "clinical tool. Trained on ages 7-64 (mostly children and young adults; autism and "
        "controls): predictions outside that range, or from other preprocessing, are unreliable."
    )
    card["training"]["cohort"] = cohort_info
    card["training"]["participants_tsv"] = "ABIDE I PCP phenotype (AGE_AT_SCAN, PIQ)"
    card["training"]["init"] = "LMAE pretraining on the same 782 subjects (no labels)"
    card["preprocessing"] = PREPROCESSING
    card["license"] = "CC BY-NC-SA 3.0 (inherited from the ABIDE I training data)"
    card["terms"] = TERMS
    cv = cv_metrics(accuracy_json)
    if cv is not None:
        card["metrics"]["cross_validation"] = cv
    tmp = Path(tempfile.mkdtemp(prefix=".default.", dir=out.parent))
    save_checkpoint(tmp, model, card)
    tmp.chmod(0o755)  # mkdtemp makes 0700; the package folder must be readable by everyone
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Build (and with ``--check``, rebuild and compare) the default model."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="ABIDE PCP folder (rois_cc200.tar.xz, phenotype CSV)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="model folder to write (default: brainfm/data/models/default)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--accuracy", type=Path, default=HERE / "results" / "accuracy.json",
                   help="accuracy benchmark results whose CV metrics go into the card")
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = deterministic)")
    p.add_argument("--check", action="store_true",
                   help="train twice with the same seed and compare the weights' hashes")
    p.add_argument("--card-only", action="store_true",
                   help="no training: refresh the card of the model in --out (e.g. after a new "
                   "accuracy run); the weights stay as they are")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    commit = git_commit()
    opts = load_options(args.config)
    opts.threads = args.threads
    deriv = prepare_cache(args.data, args.cache)
    cohort = load_cohort(deriv, opts)
    ages = cohort.targets[:, 0]
    cohort_info = {
        "dataset": "ABIDE I, Preprocessed Connectomes Project (C-PAC, filt_global), CC200 ROI "
                   "time series",
        "n_subjects": len(cohort.sessions), "n_sites": len(set(cohort.sites.tolist())),
        "sites": sorted(set(cohort.sites.tolist())),
        "age_range": [float(ages.min()), float(ages.max())],
        "n_with_piq": int((cohort.targets[:, 1] == cohort.targets[:, 1]).sum()),
    }
    if args.card_only:
        finish_card(args.out, args.out, cohort_info, args.accuracy)
        LOGGER.info("model card of %s refreshed", args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="brainfm-default-") as work:
        runs = [train_once(deriv, Path(work) / "run1", opts)]
        if args.check:
            runs.append(train_once(deriv, Path(work) / "run2", opts))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        finish_card(runs[0]["model_dir"], args.out, cohort_info, args.accuracy)
    hashes = [r["weights_sha256"] for r in runs]
    same = len(set(hashes)) == 1
    LOGGER.info("weights sha256: %s", ", ".join(hashes))
    if args.check:
        command = "python benchmarks/build_default_model.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        lines = [
            "# Default model: rebuild and determinism check", "",
            f"- Command: `{command}`",
            f"- Date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}; git commit "
            f"`{commit}`", f"- Machine: {machine()}; torch threads {args.threads}",
            f"- Configuration: `{os.path.relpath(args.config, REPO)}`", "",
            "| run | wall time (s) | weights SHA-256 |", "|---|---|---|",
            *[f"| {i} | {r['seconds']:.0f} | `{r['weights_sha256']}` |"
              for i, r in enumerate(runs, start=1)], "",
            f"Identical: **{'yes' if same else 'NO'}**.", "",
        ]
        write_text_atomic(HERE / "results" / "default_model.md", "\n".join(lines))
        if not same:
            LOGGER.error("the two trainings differ: training is not deterministic here")
            return 1
    LOGGER.info("default model written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
