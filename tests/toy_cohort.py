"""A toy cohort of ROI time series whose target sets a planted coupling (for training tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from brainfm.models.timeseries import write_timeseries

N_ROIS = 16
ROIS = [f"R{i:02d}" for i in range(N_ROIS)]
TINY = {"window": 32, "patch_len": 4, "d_model": 16, "n_experts": 2, "ssm_layers": 1,
        "d_state": 4, "rw_steps": 2, "dropout": 0.0}


def make_toy_cohort(root: Path, n: int, seed: int, start: int = 0) -> pd.DataFrame:
    """Subjects whose target sets the coupling of ROIs 0-7 to a shared signal."""
    rng = np.random.default_rng(seed)
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "synthetic", "DatasetType": "derivative"}))
    rows = []
    for i in range(start, start + n):
        target = float(rng.uniform(10, 40))
        tr = [1.5, 2.0, 2.5][i % 3]
        n_t = int(rng.integers(100, 140))
        shared = rng.normal(size=(n_t, 1))
        data = rng.normal(size=(n_t, N_ROIS))
        coupling = (target - 10) / 30 * 2.0
        data[:, :8] += coupling * shared
        if i % 5 == 0:
            data[:, 12] = 0.0  # an ROI outside the field of view
        sub = f"{i:03d}"
        write_timeseries(
            root / f"sub-{sub}" / "func"
            / f"sub-{sub}_task-rest_space-MNI152NLin6Asym_atlas-Toy_stat-mean_timeseries.tsv",
            data, ROIS, tr, denoising_strategy="synthetic",
        )
        rows.append({"participant_id": f"sub-{sub}", "age": round(target, 3),
                     "score": "n/a" if i % 4 == 0 else round(100 - target, 3),
                     "site": f"S{i % 3}"})
    table = pd.DataFrame(rows)
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    return table
