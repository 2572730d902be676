"""brainfm-train's checks of what it is given: the shipped recommended configuration, atlas
names, and the training cohort (targets and sites) before any training."""

from __future__ import annotations

import fnmatch
import logging
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from brainfm.ages import MAX_AGE, MONTHS_MEDIAN_AGE
from brainfm.atlases import atlas_label, get_atlas, list_atlases, roi_names
from brainfm.errors import InputError, UsageError
from brainfm.models.cli import build_parser, config_path, load_options, read_config_file
from brainfm.models.cohort_checks import (
    MIN_SITES,
    MIN_SUBJECTS,
    check_sites,
    check_subject_count,
    is_age_target,
    training_targets,
)
from brainfm.models.options import RECOMMENDED_CONFIG, RECOMMENDED_CONFIG_NAME, TrainOptions
from brainfm.models.runs import load_cohort
from brainfm.models.targets import TargetSpec
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


# --------------------------------------------------------------------------------------------
# the training cohort (the CLI cases are rows of tests/test_bad_input_matrix.py TRAIN_CASES)
# --------------------------------------------------------------------------------------------


def _frame(ages: list[float], **columns: list[object]) -> pd.DataFrame:
    index = pd.Index([f"{i:03d}" for i in range(len(ages))], name="participant_id")
    return pd.DataFrame({"age": np.asarray(ages, dtype=float), **columns}, index=index)


AGE = [TargetSpec("age", "age")]


def test_age_rules_apply_to_age_by_name_or_column() -> None:
    assert is_age_target(TargetSpec("age", "AGE")) and is_age_target(TargetSpec("Age", "years"))
    assert is_age_target(TargetSpec("brain_age", "age"))
    assert not is_age_target(TargetSpec("fluid_intelligence", "piq"))


def test_missing_age_codes_are_dropped_with_one_warning(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    ages = [20.0 + i % 30 for i in range(MIN_SUBJECTS + 3)]
    ages[:3] = [-9999, -999, -99]
    frame = _frame(ages, score=[-99.0] * len(ages))
    ids = list(frame.index)
    with caplog.at_level(logging.WARNING, logger="brainfm.models"):
        y = training_targets(frame, ids, [*AGE, TargetSpec("score", "score")], "p.tsv")
    assert np.isnan(y[:3, 0]).all() and np.isfinite(y[3:, 0]).all()
    assert (y[:, 1] == -99).all()  # the age rules leave other targets alone
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "p.tsv" in warnings[0] and "no age for 3 of the 43" in warnings[0]
    assert "sub-000, sub-001, sub-002" in warnings[0]
    assert frame["age"].iloc[0] == -9999  # the caller's table is not changed


def test_possible_ages_lie_between_0_and_120_years() -> None:
    ages = [30.0] * MIN_SUBJECTS
    ages[:2] = [0.1, MAX_AGE - 0.1]
    training_targets(_frame(ages), [f"{i:03d}" for i in range(len(ages))], AGE, "p.tsv")
    for bad in (-0.5, 0.0, MAX_AGE, 120.5):  # the group level's rules (brainfm.ages)
        ages[5] = bad
        frame = _frame(ages)
        with pytest.raises(InputError, match=rf"sub-005: {bad:g}.*write n/a") as exc:
            training_targets(frame, list(frame.index), AGE, "p.tsv")
        assert str(exc.value).startswith("p.tsv: column 'age'")


def test_months_are_told_by_the_median() -> None:
    years = [6.0 + (i % 12) for i in range(MIN_SUBJECTS)]  # children, 6 to 17
    frame = _frame([12 * a for a in years])
    with pytest.raises(InputError, match="months.*divide the column by 12"):
        training_targets(frame, list(frame.index), AGE, "p.tsv")
    assert MONTHS_MEDIAN_AGE == 100
    # an elderly cohort with one typing error: named as impossible, not read as months
    elderly = _frame([70.0 + i % 20 for i in range(MIN_SUBJECTS - 1)] + [190.0])
    with pytest.raises(InputError, match="cannot be ages in years.*sub-039: 190"):
        training_targets(elderly, list(elderly.index), AGE, "p.tsv")


def test_too_few_subjects_counts_participants_not_sessions() -> None:
    frame = _frame([30.0] * (MIN_SUBJECTS - 1))
    sessions = [p for p in frame.index for _ in range(2)]  # two sessions each
    with pytest.raises(InputError, match=f"model: {MIN_SUBJECTS - 1}; at least {MIN_SUBJECTS}"):
        training_targets(frame, sessions, AGE, "p.tsv")
    # a known value of any target counts: half know only the first, half only the second
    y = np.full((MIN_SUBJECTS, 2), np.nan)
    y[::2, 0], y[1::2, 1] = 1.0, 2.0
    assert check_subject_count([str(i) for i in range(MIN_SUBJECTS)], y, "p.tsv") == MIN_SUBJECTS


def test_ensemble_needs_three_known_sites() -> None:
    assert check_sites(["A", "B", "C", np.nan], "site", "p.tsv") == MIN_SITES
    with pytest.raises(UsageError, match=r"'site' of p.tsv names 2 site\(s\) \(A, B\)") as exc:
        check_sites(["A", "B", None, np.nan, "A"], "site", "p.tsv")
    assert exc.value.exit_code == 64 and "--site-column" in str(exc.value)
    assert "brainfm-train finetune" in str(exc.value)
