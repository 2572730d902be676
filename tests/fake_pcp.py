"""A small synthetic ABIDE PCP source (``rois_cc200`` .1D files and the phenotype CSV)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

N_ROIS = 200
SUBJECTS = [  # FILE_ID, SUB_ID, SITE_ID, age, sex, dx, PIQ, T
    ("Olin_0050102", 50102, "OLIN", 14.0, 1, 2, -9999, 40),
    ("Olin_0050103", 50103, "OLIN", 22.5, 2, 1, 110, 40),
    ("SBL_0051556", 51556, "SBL", 35.0, 1, 1, 95, 30),
]


def fake_1d(rng: np.random.Generator, n_t: int, zero_col: int | None = None) -> str:
    data = rng.normal(scale=10, size=(n_t, N_ROIS))
    if zero_col is not None:
        data[:, zero_col] = 0.0
    head = "\t".join(f"#{k}" for k in range(1, N_ROIS + 1))
    rows = ["\t".join(f"{v:.6f}" for v in row) for row in data]
    return head + "\n" + "\n".join(rows) + "\n"


def make_fake_pcp(root: Path, archive: bool = False, extra_site: bool = False) -> Path:
    rng = np.random.default_rng(0)
    rois = root / "rois_cc200"
    rois.mkdir(parents=True)
    subjects = list(SUBJECTS)
    if extra_site:
        subjects.append(("Mars_0099999", 99999, "MARS", 40.0, 1, 2, 100, 30))
    for i, (fid, *_rest, n_t) in enumerate(subjects):
        text = fake_1d(rng, n_t, zero_col=5 if i == 1 else None)
        (rois / f"{fid}_rois_cc200.1D").write_text(text)
    pheno = pd.DataFrame(
        [
            {"SUB_ID": s, "subject": s, "SITE_ID": site, "FILE_ID": fid, "DX_GROUP": dx,
             "AGE_AT_SCAN": age, "SEX": sex, "FIQ": "", "VIQ": 100, "PIQ": piq,
             "func_mean_fd": 0.1}
            for fid, s, site, age, sex, dx, piq, _ in subjects
        ]
    )
    pheno.to_csv(root / "Phenotypic_V1_0b_preprocessed1.csv", index=False)
    if archive:
        with tarfile.open(root / "rois_cc200.tar.xz", "w:xz") as tar:
            tar.add(rois, arcname="rois_cc200")
        for f in rois.iterdir():
            f.unlink()
        rois.rmdir()
    return root
