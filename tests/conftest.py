"""Shared fixtures: the location of the real data beside the repository, torch threads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BRAINFM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
ABIDE_DIR = SHARED_DATA / "abide-pcp-cc200"


@pytest.fixture(scope="session")
def abide_dir() -> Path:
    """The ABIDE PCP CC200 folder, or skip when this checkout has no ../shared/data."""
    if not (ABIDE_DIR / "rois_cc200.tar.xz").exists():
        pytest.skip(f"real ABIDE data not found at {ABIDE_DIR} (set BRAINFM_SHARED_DATA)")
    return ABIDE_DIR


@pytest.fixture(scope="session")
def abide_dir_or_none() -> Path | None:
    """The ABIDE folder when present (real signals), else None (synthetic signals)."""
    return ABIDE_DIR if (ABIDE_DIR / "rois_cc200.tar.xz").exists() else None


@pytest.fixture()
def single_torch_thread():
    """One torch intra-op thread for the test (restored after it)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
