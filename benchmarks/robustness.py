#!/usr/bin/env python
"""Pipeline robustness: the same subject through two pipelines, brainfm against ridge.

For each of the default model's twelve held-out ABIDE subjects (``HOLDOUT_FILE_IDS`` in
``build_default_model.py``; none of them was seen in training), this script

1. predicts from the subject's original PCP CC200 series (the training pipeline);
2. paints the same series into a synthetic fMRIPrep-style BOLD run with the test-data maker
   (head motion with a planted motion artefact, thermal noise; the site's repetition time and the
   series' full length), runs ``brainfm participant`` on it with its defaults (``pcp`` denoising;
   ``--model none``), and predicts from its CC200 time series with the model, as the participant
   level's predict node does (``predict_subject`` on the same files);

and reports the absolute change of the age prediction between the two, for the shipped model
and for ridge regression (kernel ridge with a correlation kernel on Fisher-z connectivity, raw
age, penalty by inner 5-fold) trained on the same subjects as the default model.

Usage (from the repository root, after ``scripts/setup_env.sh``)::

    python benchmarks/robustness.py ../shared/data/abide-pcp-cc200

Each subject's participant-level output is kept in ``--work`` and reused when present.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from accuracy import DEFAULT_CONFIG, load_cohort, prepare_cache
from build_default_model import HOLDOUT_FILE_IDS, participant_label
from provenance import git_commit, machine

from brainfm.fileio import read_tsv, write_text_atomic
from brainfm.models.baselines import (
    connectivity_features,
    correlation_features,
    fit_primal_ridge,
    nested_kernel_ridge,
    subject_kernel,
)
from brainfm.models.checkpoint import load_checkpoint, resolve_model_dir
from brainfm.models.cli import load_options
from brainfm.models.ensemble import session_edges
from brainfm.models.predict import predict_subject
from brainfm.models.sessions import session_from_arrays
from brainfm.testdata.signals import ABIDE_SITE_TR

LOGGER = logging.getLogger("robustness")
HERE = Path(__file__).resolve().parent


def fit_ridge(cohort: Any, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The kernel-ridge baseline on the training subjects, in primal form (raw age)."""
    features = connectivity_features([cohort.sessions[i].conn for i in train])
    z = correlation_features(features)
    kernel = subject_kernel(features, "krr")
    age = cohort.targets[train, 0]
    idx = np.arange(train.size)
    _, _, alpha = nested_kernel_ridge(kernel, age, idx, idx[:1], seed=0)
    return fit_primal_ridge(z, age, alpha)


def ridge_predict(fit: tuple[np.ndarray, np.ndarray, float], conn: np.ndarray) -> float:
    """Ridge prediction from one session's connectivity."""
    weight, center, intercept = fit
    return float((session_edges(conn) - center) @ weight + intercept)


def run_participant(data_dir: Path, fid: str, site_tr: float, n_volumes: int, work: Path,
                    nprocs: int) -> Path:
    """Paint one subject and run the participant level (reused when already done)."""
    out = work / fid
    deriv = out / "derivatives"
    done = out / "done.json"
    if done.is_file():
        return deriv
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    subprocess.run(["brainfm-make-testdata", str(out / "data"), "--subjects", "1",
                    "--abide-dir", str(data_dir), "--abide-file-id", fid, "--tr", str(site_tr),
                    "--volumes", str(n_volumes), "--overwrite"], check=True, env=env)
    # the model stage runs below on these outputs with the same function as the predict node
    # (predict_subject), so that the model can change without rerunning the pipeline
    subprocess.run(["brainfm", str(out / "data" / "bids"), str(deriv), "participant",
                    "-w", str(out / "work"), "--nprocs", str(nprocs), "--omp-nthreads", "1",
                    "--model", "none"], check=True, env=env)
    done.write_text(json.dumps({"fid": fid}))
    return deriv


def main(argv: list[str] | None = None) -> int:
    """Run the robustness measurement."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="ABIDE PCP folder (rois_cc200.tar.xz, phenotype CSV)")
    p.add_argument("--model", default="default", help="model folder (default: the packaged one)")
    p.add_argument("--cache", type=Path,
                   default=Path.home() / ".cache" / "brainfm" / "abide-pcp-cc200")
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "brainfm" /
                   "robustness", help="participant-level runs (kept, reused)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--nprocs", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    commit = git_commit()
    opts = load_options(DEFAULT_CONFIG)
    cohort = load_cohort(prepare_cache(args.data, args.cache), opts)
    held = {participant_label(f): f for f in HOLDOUT_FILE_IDS}
    index = {s.participant_id: i for i, s in enumerate(cohort.sessions)}
    train = np.array([i for i, s in enumerate(cohort.sessions) if s.participant_id not in held])
    ridge = fit_ridge(cohort, train)
    model_dir = resolve_model_dir(args.model)
    model, card = load_checkpoint(model_dir)
    rows = []
    for label, fid in held.items():
        session = cohort.sessions[index[label]]
        site = str(cohort.sites[index[label]])
        original = predict_subject(model, card, session)["predictions"]["age"]
        n_volumes = int(round(session.n_timepoints / session.sampling_rate_hz /
                              ABIDE_SITE_TR[site]))
        deriv = run_participant(args.data, fid, ABIDE_SITE_TR[site], n_volumes, args.work,
                                args.nprocs)
        ts_file = next(deriv.glob("sub-01/func/sub-01_*atlas-CC200_stat-mean_timeseries.tsv"))
        meta = json.loads(ts_file.with_suffix(".json").read_text())
        table = read_tsv(ts_file)
        runs = [(table.to_numpy(dtype=float), float(meta["RepetitionTime"]))]
        painted = predict_subject(model, card, runs)["predictions"]["age"]
        painted_session = session_from_arrays(runs, list(table.columns),
                                              session.sampling_rate_hz)
        rows.append({
            "file_id": fid, "site": site, "age": float(cohort.targets[index[label], 0]),
            "volumes": n_volumes,
            "brainfm_original": original, "brainfm_painted": painted,
            "ridge_original": ridge_predict(ridge, session.conn),
            "ridge_painted": ridge_predict(ridge, painted_session.conn),
        })
        LOGGER.info("%s: brainfm %.1f -> %.1f, ridge %.1f -> %.1f", fid, original, painted,
                    rows[-1]["ridge_original"], rows[-1]["ridge_painted"])
    summary = {}
    for name in ("brainfm", "ridge"):
        shift = np.abs([r[f"{name}_painted"] - r[f"{name}_original"] for r in rows])
        err_o = np.abs([r[f"{name}_original"] - r["age"] for r in rows])
        err_p = np.abs([r[f"{name}_painted"] - r["age"] for r in rows])
        summary[name] = {"median_shift": float(np.median(shift)), "max_shift": float(shift.max()),
                         "mae_original": float(err_o.mean()), "mae_painted": float(err_p.mean())}
    command = "python benchmarks/robustness.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = {"meta": {"command": command, "git_commit": commit, "machine": machine(),
                       "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "model_sha256": card.get("weights_sha256")},
              "summary": summary, "subjects": rows}
    lines = [
        "# Pipeline robustness: the same subjects, original PCP series against brainfm's "
        "participant level", "",
        f"- Command: `{command}`", f"- Date: {report['meta']['date']}; git commit `{commit}`; "
        f"machine: {machine()}",
        f"- Model: `{args.model}` (SHA-256 `{card.get('weights_sha256')}`); ridge: kernel ridge "
        "(correlation kernel, raw age) on the same training subjects.",
        "- Subjects: the default model's 12 held-out ABIDE subjects (never seen in training), each "
        "painted into a synthetic fMRIPrep-style run (site TR, full length, head motion with a "
        "planted artefact, noise) and run through `brainfm participant` with its defaults.", "",
        "| model | median shift (y) | max shift (y) | MAE original | MAE painted |",
        "|---|---|---|---|---|",
        *[f"| {n} | {s['median_shift']:.2f} | {s['max_shift']:.2f} | {s['mae_original']:.2f} | "
          f"{s['mae_painted']:.2f} |" for n, s in summary.items()], "",
        "| subject | site | age | brainfm original → painted | ridge original → painted |",
        "|---|---|---|---|---|",
        *[f"| {r['file_id']} | {r['site']} | {r['age']:.1f} | {r['brainfm_original']:.1f} → "
          f"{r['brainfm_painted']:.1f} | {r['ridge_original']:.1f} → {r['ridge_painted']:.1f} |"
          for r in rows], "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "robustness.json", json.dumps(report, indent=1))
    write_text_atomic(args.out / "robustness.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
