#!/usr/bin/env python
"""Rebuild brainfm's shipped default model from scratch and check that training is deterministic.

Trains exactly as a user would with ``brainfm-train ensemble`` (LMAE pretraining, site-bagged
network members for age stacked with ridge members on connectivity, calibrated intervals; see
``brainfm.models.stacking``), with the options of ``brainfm/data/configs/brainfm.yaml``, on the
782 ABIDE I PCP subjects minus the twelve of ``HOLDOUT_FILE_IDS``; then completes the model card
(training cohort, cross-validated accuracy from ``benchmarks/results/accuracy.json``, per-target
caveats, preprocessing assumptions, the ABIDE non-commercial terms) and ships five held-out
subjects' series for the demo.

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

import numpy as np
from accuracy import DEFAULT_CONFIG, TARGETS, load_cohort, prepare_cache
from provenance import git_commit, machine

from brainfm.fileio import write_text_atomic
from brainfm.models.checkpoint import load_checkpoint, save_checkpoint
from brainfm.models.cli import load_options
from brainfm.models.model_card import not_predictable, not_predictable_note
from brainfm.models.options import TrainOptions
from brainfm.models.stacking import run_ensemble

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


#: ABIDE subjects held out of the default model's training (FILE_ID -> participant label):
#: twelve subjects of twelve sites, ages 8.5-49, PIQ known, mean FD < 0.15 mm, picked by the
#: rule "closest to 8.5, 10.5, 12, 14, 16, 19, 22, 26, 30, 35 years, one per site" plus two adults
#: over 38. ``benchmarks/robustness.py`` runs them through the participant level; the five in
#: DEMO_FILE_IDS ship in the package for ``scripts/demo.sh``.
HOLDOUT_FILE_IDS = (
    "NYU_0051039", "UCLA_1_0051216", "Trinity_0051133", "UM_1_0050290", "Yale_0050605",
    "Leuven_1_0050686", "CMU_a_0050649", "UM_2_0050388", "MaxMun_c_0051338", "SBL_0051583",
    "NYU_0050960", "SBL_0051584",
)
DEMO_FILE_IDS = ("NYU_0051039", "Yale_0050605", "UM_2_0050388", "NYU_0050960", "SBL_0051584")
DEMO_OUT = REPO / "brainfm" / "data" / "demo" / "abide-pcp-cc200"


def participant_label(file_id: str) -> str:
    """brainfm's participant label of an ABIDE FILE_ID (the SUB_ID, 7 digits, as imported)."""
    return file_id.rsplit("_", 1)[1]


def train_once(deriv: Path, out: Path, opts: TrainOptions) -> dict[str, Any]:
    """Fit the shipped recipe on the cohort minus the held-out subjects, as a user would.

    Same as ``brainfm-train ensemble DERIV --target age --target fluid_intelligence=piq
    --exclude <held-out labels>`` with the configuration's options.

    Parameters
    ----------
    deriv : Path
        Imported derivatives.
    out : Path
        Model folder to write.
    opts : TrainOptions
        Options from the configuration file.

    Returns
    -------
    dict
        ``model_dir``, ``weights_sha256`` and ``seconds``.
    """
    t0 = time.perf_counter()
    model_dir = run_ensemble([deriv], out, list(TARGETS), TrainOptions(**opts.to_dict()),
                             exclude=[participant_label(f) for f in HOLDOUT_FILE_IDS])
    card = json.loads((model_dir / "model_card.json").read_text())
    return {"model_dir": model_dir, "weights_sha256": card["weights_sha256"],
            "seconds": round(time.perf_counter() - t0, 1)}


def write_demo_subjects(data: Path, out: Path) -> Path:
    """Copy the demo subjects' CC200 series and phenotype rows into the package (atomically).

    Parameters
    ----------
    data : Path
        The ABIDE PCP folder (``rois_cc200.tar.xz`` or ``rois_cc200/``, phenotype CSV).
    out : Path
        Package folder to (re)write: ``rois_cc200/<FILE_ID>_rois_cc200.1D``, the phenotype CSV
        restricted to those rows, and a README with the terms.

    Returns
    -------
    Path
        ``out``.
    """
    import tarfile

    import pandas as pd

    tmp = Path(tempfile.mkdtemp(prefix=".demo.", dir=out.parent if out.parent.exists() else None))
    (tmp / "rois_cc200").mkdir()
    wanted = {f"{f}_rois_cc200.1D" for f in DEMO_FILE_IDS}
    folder = data / "rois_cc200"
    if folder.is_dir():
        for name in wanted:
            shutil.copyfile(folder / name, tmp / "rois_cc200" / name)
    else:
        with tarfile.open(data / "rois_cc200.tar.xz") as archive:
            for member in archive:
                if Path(member.name).name in wanted and member.isfile():
                    src = archive.extractfile(member)
                    assert src is not None
                    (tmp / "rois_cc200" / Path(member.name).name).write_bytes(src.read())
    missing = sorted(w for w in wanted if not (tmp / "rois_cc200" / w).is_file())
    if missing:
        raise SystemExit(f"demo subjects missing from {data}: {missing}")
    pheno = next(data.glob("Phenotypic_V1_0b_preprocessed*.csv"))
    table = pd.read_csv(pheno)
    table[table["FILE_ID"].isin(DEMO_FILE_IDS)].to_csv(tmp / pheno.name, index=False)
    (tmp / "README.md").write_text(DEMO_README)
    for path in [tmp, *tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


DEMO_README = """# Demo subjects (real ABIDE I data, held out of the default model)

Five ABIDE I subjects (PCP, C-PAC `filt_global`, CC200 ROI mean time series) that the shipped
default model never saw in training: `scripts/demo.sh` paints their series into a synthetic
fMRIPrep-style dataset and runs brainfm on it, so the demo's predictions are honest
out-of-sample predictions. Written by `benchmarks/build_default_model.py`.

Terms: ABIDE data are shared by FCP/INDI for non-commercial research under CC BY-NC-SA 3.0
(https://creativecommons.org/licenses/by-nc-sa/3.0/). Credit: Di Martino et al. 2014,
Molecular Psychiatry 19:659 (ABIDE); Craddock et al. 2013, Frontiers in Neuroinformatics
(the Preprocessed Connectomes Project).
"""


MODELS_IN_CARD = ("recipe", "recipe-linear", "recipe-network", "krr", "ridge", "mean")


def cv_metrics(accuracy_json: Path) -> dict[str, Any] | None:
    """Cross-validated metrics of the recipe and the baselines from the accuracy benchmark."""
    if not accuracy_json.is_file():
        return None
    report = json.loads(accuracy_json.read_text())
    out: dict[str, Any] = {"source": "benchmarks/results/accuracy.json",
                           "command": report["meta"]["command"],
                           "git_commit": report["meta"]["git_commit"],
                           "date": report["meta"]["date"]}
    for block in report["protocols"].values():
        entry: dict[str, Any] = {}
        for model in MODELS_IN_CARD:
            if model not in block["summary"]:
                continue
            s = block["summary"][model]
            entry[model] = {t: {"pooled": {m: s[t]["pooled"][m] for m in ("mae", "r", "r2")},
                                "fold_mean": {m: s[t][m]["mean"] for m in ("mae", "r", "r2")}}
                            for t in ("age", "fluid_intelligence")}
        ev = block.get("evaluation", {})
        entry["coverage"] = {t: {lv: c["all"]["coverage"] for lv, c in levels.items()}
                             for t, levels in ev.get("coverage", {}).items()}
        entry["coverage_by_age_band"] = {lv: {b: v["coverage"] for b, v in c.items()}
                                         for lv, c in ev.get("coverage", {}).get("age", {}).items()}
        entry["paired_age_mae_ratio"] = ev.get("paired", {})
        entry["balanced_age_mae"] = {m: ev["balanced"][m] for m in MODELS_IN_CARD
                                     if m in ev.get("balanced", {})}
        entry["age_mae_by_band"] = {m: {b: {"n": v["n"], "mae": v["mae"],
                                            "mean_error": v["mean_error"]}
                                        for b, v in ev["bands"][m].items()}
                                    for m in MODELS_IN_CARD if m in ev.get("bands", {})}
        entry["age_reliable_share_by_band"] = {b: v["share"]
                                               for b, v in ev.get("reliable", {}).items()}
        entry["piq_r"] = {m: ev.get("piq_r", {}).get(m) for m in ("recipe", "krr")}
        out[block["protocol"]] = {"n_folds": block["n_folds"], **entry}
    return out


TARGET_LABELS = {
    "age": "age (years)",
    "fluid_intelligence": "performance IQ (ABIDE PIQ), our fluid-intelligence proxy",
}


def target_note(name: str, loso: dict[str, Any] | None) -> str | None:
    """Plain-words caveat of a target from its leave-site-out numbers (None when none applies)."""
    if loso is None or "recipe" not in loso:
        return None
    ours = loso["recipe"][name]["pooled"]
    mean = loso["mean"][name]["pooled"]
    if name == "fluid_intelligence":
        r = (loso.get("piq_r") or {}).get("recipe") or {}
        ci = r.get("ci95_sites") or None
        if not_predictable(ours["mae"], mean["mae"], ci):
            return not_predictable_note("PIQ", ours["mae"], mean["mae"], ours["r"], ci)
        return None
    return (f"Out of site (leave-one-site-out on the training cohort): MAE {ours['mae']:.2f} y, "
            f"r {ours['r']:.2f}; errors grow with age (see the model card's age bands).")


def intended_use(card: dict[str, Any]) -> str:
    """The card's intended use, with the reliable age range the recipe measured on its card."""
    age = next(t for t in card["ensemble"]["targets"] if t["name"] == "age")
    cohort = card["training"]["cohort"]
    low, high = (age.get("reliable") or {}).get("range") or (None, None)
    where = ("nowhere" if low is None and high is None and not age.get("reliable") else
             f"below {high:g} y" if low is None else f"from {low:g} y" if high is None else
             f"from {low:g} to {high:g} y")
    return (
        "Research estimates of brain age (and, for completeness, performance IQ, which it does "
        "not predict out of site) from resting-state fMRI parcellated with CC200 and denoised "
        "with the 'pcp' strategy. Not a clinical tool. Trained on ages "
        f"{age['training_range'][0]:g}-{age['training_range'][1]:g} (mostly children and "
        f"adolescents; {cohort['n_age_30_or_older']} of {cohort['n_subjects']} subjects are 30 "
        "or older; autism and controls). It resolves "
        f"age for predicted ages {where} (age_reliable true): adults are predicted far too "
        "young and cannot be told apart by age, so for adult cohorts train your own model "
        "(docs/training.md). Predictions from other preprocessing, or flagged "
        "out_of_distribution, are less reliable."
    )


def finish_card(model_dir: Path, out: Path, cohort_info: dict[str, Any],
                accuracy_json: Path) -> Path:
    """Write the shipped model (same weights) with the complete model card into ``out``."""
    model, card = load_checkpoint(model_dir)
    card["name"] = "brainfm-default-abide-cc200"
    card["training"]["cohort"] = cohort_info
    card["intended_use"] = intended_use(card)
    card["training"]["participants_tsv"] = "ABIDE I PCP phenotype (AGE_AT_SCAN, PIQ)"
    card["training"]["init"] = "LMAE pretraining on the same training subjects (no labels)"
    card["preprocessing"] = PREPROCESSING
    card["license"] = "CC BY-NC-SA 3.0 (inherited from the ABIDE I training data)"
    card["terms"] = TERMS
    cv = cv_metrics(accuracy_json)
    loso = (cv or {}).get("leave-group-out")
    for target in card["targets"]:
        target["label"] = TARGET_LABELS.get(target["name"], target["name"])
        note = target_note(target["name"], loso)
        if note:
            target["note"] = note
    if cv is not None:
        card["metrics"]["cross_validation"] = cv
        if loso is not None and "recipe" in loso:
            card["metrics"]["leave_site_out_summary"] = {
                t: {"mae": loso["recipe"][t]["pooled"]["mae"],
                    "r": loso["recipe"][t]["pooled"]["r"],
                    "coverage_90": loso["coverage"].get(t, {}).get("90"),
                    "training_mean_mae": loso["mean"][t]["pooled"]["mae"]}
                for t in ("age", "fluid_intelligence")}
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
    p.add_argument("--demo-out", type=Path, default=DEMO_OUT,
                   help="where the demo subjects' series go (default: brainfm/data/demo/...)")
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
    held = {participant_label(f) for f in HOLDOUT_FILE_IDS}
    keep = np.array([s.participant_id not in held for s in cohort.sessions])
    ages = cohort.targets[keep, 0]
    cohort_info = {
        "dataset": "ABIDE I, Preprocessed Connectomes Project (C-PAC, filt_global), CC200 ROI "
                   "time series",
        "n_subjects": int(keep.sum()), "n_sites": len(set(cohort.sites[keep].tolist())),
        "sites": sorted(set(cohort.sites[keep].tolist())),
        "age_range": [float(ages.min()), float(ages.max())],
        "n_age_30_or_older": int((ages >= 30).sum()),
        "n_with_piq": int(np.isfinite(cohort.targets[keep, 1]).sum()),
        "held_out_file_ids": list(HOLDOUT_FILE_IDS),
        "demo_file_ids": list(DEMO_FILE_IDS),
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
    write_demo_subjects(args.data, args.demo_out)
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
