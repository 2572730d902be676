"""brainfm-train's checks of what it is given: the shipped recommended configuration, atlas
names, and the training cohort (targets and sites) before any training."""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from brainfm.atlases import atlas_label, get_atlas, list_atlases, roi_names
from brainfm.models.cli import build_parser, config_path, load_options, read_config_file
from brainfm.models.options import RECOMMENDED_CONFIG, RECOMMENDED_CONFIG_NAME, TrainOptions
from brainfm.models.runs import load_cohort
from brainfm.models.timeseries import find_timeseries, write_timeseries

REPO = Path(__file__).resolve().parents[1]
#: The files the participant level writes with ``--atlases CC200 Schaefer2018-200``, as its
#: end-to-end test records them.
PARTICIPANT_OUTPUTS = Path(__file__).parent / "data" / "expected_participant_outputs.txt"

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


# --------------------------------------------------------------------------------------------
# atlas names and the atlas- label
# --------------------------------------------------------------------------------------------


def test_atlas_label_is_the_label_the_participant_level_writes() -> None:
    for name in list_atlases():
        assert atlas_label(name) == get_atlas(name).label
    assert atlas_label("Schaefer2018-200") == "Schaefer200"
    assert atlas_label("schaefer2018_400") == atlas_label("Schaefer400") == "Schaefer400"
    assert atlas_label("cc200") == "CC200"
    assert atlas_label("MyAtlas100") == "MyAtlas100"  # a user atlas: its name is its label


@pytest.fixture(scope="module")
def participant_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Time series under the file names the participant level writes."""
    root = tmp_path_factory.mktemp("participant-outputs")
    rng = np.random.default_rng(0)
    names = [ln for ln in PARTICIPANT_OUTPUTS.read_text().split()
             if ln.endswith("_stat-mean_timeseries.tsv")]
    assert any("atlas-Schaefer200" in n for n in names)
    for name in names:
        rois = roi_names("Schaefer2018-200" if "atlas-Schaefer200" in name else "CC200")
        write_timeseries(root / name, rng.normal(size=(40, len(rois))), rois, 2.0)
    return root


@pytest.mark.parametrize("spelling", ["Schaefer2018-200", "Schaefer200", "schaefer2018_200"])
def test_brainfm_train_atlas_finds_the_participant_levels_outputs(
        participant_outputs: Path, spelling: str) -> None:
    found = find_timeseries(participant_outputs, spelling)
    assert found and {f.atlas for f in found} == {"Schaefer200"}
    assert all("_atlas-Schaefer200_stat-mean_timeseries.tsv" in f.path.name for f in found)
    opts = TrainOptions(atlas=spelling)
    sessions = load_cohort([participant_outputs], opts)
    assert opts.atlas == "Schaefer200"  # the model card records the files' label
    assert sessions[0].n_rois == 200
    assert {f.atlas for f in find_timeseries(participant_outputs, "CC200")} == {"CC200"}
