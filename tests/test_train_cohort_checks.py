"""brainfm-train's checks of what it is given: the shipped recommended configuration, atlas
names, and the training cohort (targets and sites) before any training."""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from pathlib import Path

import pytest

from brainfm.models.cli import build_parser, config_path, load_options, read_config_file
from brainfm.models.options import RECOMMENDED_CONFIG, RECOMMENDED_CONFIG_NAME

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# the recommended configuration
# --------------------------------------------------------------------------------------------


def test_recommended_config_is_package_data_found_by_importlib_resources() -> None:
    resource = files("brainfm.data") / "configs" / "brainfm.yaml"
    assert resource.is_file()
    assert Path(str(resource)) == RECOMMENDED_CONFIG
    assert not (REPO / "benchmarks" / "configs" / "brainfm.yaml").exists()
    # pyproject's package data ships it in the wheel (and so in the container)
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["brainfm.data"]
    assert any(fnmatch.fnmatch("configs/brainfm.yaml", p) for p in patterns), patterns


def test_config_recommended_loads_the_same_options_as_the_file() -> None:
    args = build_parser().parse_args(["ensemble", "deriv", "-o", "out", "--config",
                                      RECOMMENDED_CONFIG_NAME])
    assert config_path(args.config) == RECOMMENDED_CONFIG
    assert read_config_file(args.config) == read_config_file(RECOMMENDED_CONFIG)
    assert load_options("recommended") == load_options(RECOMMENDED_CONFIG)
    opts = load_options("recommended")
    assert opts.atlas == "CC200" and opts.model["patch_len"] == 8
    # a file that happens to be called "recommended" is still reachable
    assert config_path("./recommended") == Path("recommended")
    assert config_path(Path("recommended")) == Path("recommended")
