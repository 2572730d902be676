"""Denoising strategies on nilearn's shipped fMRIPrep confounds files, and censoring."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nilearn
import numpy as np
import pandas as pd
import pytest
from nilearn.interfaces.fmriprep import load_confounds

from brainfm.errors import InputError, UsageError
from brainfm.postproc.censoring import (
    censoring_mask,
    count_non_steady_state,
    outliers_table,
)
from brainfm.postproc.confounds import (
    MOTION_PARAMS,
    band_pass,
    get_strategy,
    list_strategies,
    select_confounds,
)

NILEARN_DATA = Path(nilearn.__file__).parent / "interfaces" / "fmriprep" / "data"
V21 = "test-v21_desc-confounds_timeseries"  # fMRIPrep >= 21 naming (w_/c_comp_cor)
V20 = "test_desc-confounds_regressors"  # fMRIPrep 20.x naming (a_comp_cor + JSON masks)


@pytest.fixture(params=[V21, V20])
def fmriprep_run(request, tmp_path):
    """A copy of a shipped confounds file under an fMRIPrep name, with its JSON sidecar."""
    sub = "01" if request.param == V21 else "02"
    stem = f"sub-{sub}_task-rest_desc-confounds_timeseries"
    for ext in (".tsv", ".json"):
        shutil.copyfile(NILEARN_DATA / f"{request.param}{ext}", tmp_path / f"{stem}{ext}")
    tsv = tmp_path / f"{stem}.tsv"
    bold = tmp_path / f"sub-{sub}_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    return request.param, tsv, bold, pd.read_csv(tsv, sep="\t", na_values="n/a")


def _nilearn(bold: Path, **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        confounds, _ = load_confounds(str(bold), demean=False, **kwargs)
    return confounds


def test_list_strategies():
    assert list_strategies() == ["24P", "36P", "acompcor", "none", "pcp"]
    assert get_strategy("PCP").name == "pcp"
    with pytest.raises(UsageError, match="acompcor"):
        get_strategy("aroma")


def test_band_pass_defaults_and_overrides():
    assert band_pass("pcp") == (0.01, 0.1)
    for name in ("24P", "36P", "acompcor", "none"):
        assert band_pass(name) == (0.01, 0.08)
    assert band_pass("pcp", 0.008, 0.09) == (0.008, 0.09)
    assert band_pass("pcp", 0, None) == (None, 0.1)
    assert band_pass("24P", None, 0) == (0.01, None)
    with pytest.raises(UsageError, match="below"):
        band_pass("pcp", 0.1, 0.05)


def test_24p_and_36p_equal_nilearn(fmriprep_run):
    _, tsv, bold, table = fmriprep_run
    for strategy, kwargs, n_cols in [
        ("24P", {"strategy": ("motion",), "motion": "full"}, 24),
        ("36P", {"strategy": ("motion", "wm_csf", "global_signal"), "motion": "full",
                 "wm_csf": "full", "global_signal": "full"}, 36),
    ]:
        ours = select_confounds(table, strategy, tsv)
        ref = _nilearn(bold, **kwargs)
        assert ours.shape == (30, n_cols)
        assert set(ours.columns) == set(ref.columns)
        assert not ours.isna().any().any()
        # nilearn copies row 2 into the empty first row of derivatives; we write 0 there
        np.testing.assert_allclose(ours[ref.columns].to_numpy()[1:], ref.to_numpy()[1:])
        deriv = [c for c in ours.columns if "derivative1" in c]
        assert (ours.loc[0, deriv] == 0).all()


def test_acompcor_equals_nilearn(fmriprep_run):
    name, tsv, bold, table = fmriprep_run
    ours = select_confounds(table, "acompcor", tsv)
    ref = _nilearn(bold, strategy=("motion", "high_pass", "compcor"), motion="derivatives",
                   compcor="anat_separated", n_compcor=5)
    assert set(ours.columns) == set(ref.columns)
    # v21: 12 motion + 4 WM + 3 CSF components (all fMRIPrep kept) + 1 cosine
    # v20: 12 motion + 5 WM + 5 CSF a_comp_cor chosen by the sidecar masks + 4 cosines
    assert ours.shape[1] == (20 if name == V21 else 26)
    if name == V20:
        assert "a_comp_cor_70" in ours.columns and "a_comp_cor_57" in ours.columns


def test_pcp_columns_and_lags(fmriprep_run):
    name, tsv, bold, table = fmriprep_run
    ours = select_confounds(table, "pcp", tsv)
    n_cos = 1 if name == V21 else 4
    assert ours.shape == (30, 24 + 1 + 5 + n_cos)
    ref = _nilearn(bold, strategy=("high_pass", "compcor"), compcor="anat_combined",
                   n_compcor=5)
    assert set(ref.columns) <= set(ours.columns)
    assert "global_signal" in ours.columns
    for param in MOTION_PARAMS:
        original = table[param].to_numpy()
        lag = ours[f"{param}_lag1"].to_numpy()
        np.testing.assert_array_equal(lag[1:], original[:-1])  # x(t-1)
        assert lag[0] == 0.0
        np.testing.assert_allclose(ours[f"{param}_power2"], original**2)
        np.testing.assert_allclose(ours[f"{param}_lag1_power2"], lag**2)


def test_pcp_falls_back_to_mean_tissue_signals(fmriprep_run):
    _, tsv, _, table = fmriprep_run
    no_compcor = table[[c for c in table.columns if "comp_cor" not in c]]
    ours = select_confounds(no_compcor, "pcp", tsv)
    assert ours.shape[1] == 24 + 1 + 2
    assert {"white_matter", "csf", "global_signal"} <= set(ours.columns)


def test_expansions_are_computed_when_absent():
    rng = np.random.default_rng(1)
    table = pd.DataFrame(rng.standard_normal((20, 6)), columns=list(MOTION_PARAMS))
    ours = select_confounds(table, "24P")
    assert ours.shape == (20, 24)
    np.testing.assert_allclose(ours["trans_x_derivative1"][1:], np.diff(table["trans_x"]))
    np.testing.assert_allclose(ours["rot_z_derivative1_power2"][1:],
                               np.diff(table["rot_z"]) ** 2)
    assert select_confounds(table, "none").shape == (20, 0)


def test_missing_columns_are_named(fmriprep_run):
    _, tsv, _, table = fmriprep_run
    with pytest.raises(InputError) as err:
        select_confounds(table.drop(columns=["trans_x", "csf"]), "36P", tsv)
    message = str(err.value)
    assert str(tsv) in message and "trans_x" in message and "csf" in message
    assert err.value.exit_code == 66
    no_compcor = table[[c for c in table.columns if "comp_cor" not in c]]
    with pytest.raises(InputError, match="comp_cor"):
        select_confounds(no_compcor, "acompcor", tsv)


def test_nan_beyond_leading_rows_is_an_error(fmriprep_run):
    _, tsv, _, table = fmriprep_run
    broken = table.copy()
    broken.loc[12, "global_signal"] = np.nan
    with pytest.raises(InputError, match=r"'global_signal'.*row\(s\) \[13\]"):
        select_confounds(broken, "36P", tsv)
    broken = table.copy()
    broken.loc[5, "trans_y_derivative1"] = np.nan
    with pytest.raises(InputError, match="trans_y_derivative1"):
        select_confounds(broken, "24P", tsv)


def test_censoring_mask_counts():
    fd = np.array([np.nan, 0.1, 0.6, 0.2, 0.9, 0.3, 0.5, 0.51, 0.0, 0.1])
    keep = censoring_mask(fd, 0.5, 2)
    # dummies 0-1; FD > 0.5 at 2, 4, 7 (0.5 itself is kept)
    assert keep.tolist() == [False, False, False, True, False, True, True, False, True, True]
    assert censoring_mask(fd, 0.0, 0).all()
    assert censoring_mask(fd, 0.0, 3).sum() == 7
    assert censoring_mask(fd, 0.2, 0).sum() == 5
    assert not censoring_mask(fd, 0.5, 20).any()
    with pytest.raises(UsageError):
        censoring_mask(fd, 0.5, -1)

    table = outliers_table(fd, keep, 0.5, 2)
    assert list(table.columns) == ["framewise_displacement", "outlier", "dummy"]
    assert table["outlier"].tolist() == [0, 0, 1, 0, 1, 0, 0, 1, 0, 0]
    assert table["dummy"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert np.isnan(table["framewise_displacement"][0])
    inferred = outliers_table(fd, keep, 0.5)
    assert inferred["dummy"].tolist() == table["dummy"].tolist()


def test_count_non_steady_state():
    table = pd.read_csv(NILEARN_DATA / f"{V21}.tsv", sep="\t", na_values="n/a")
    assert count_non_steady_state(table) == 3
    assert count_non_steady_state(table.drop(columns=[c for c in table.columns
                                                      if "non_steady" in c])) == 0


def test_strategy_matches_what_a_model_was_trained_on():
    from brainfm.postproc.confounds import strategy_matches

    # brainfm's pcp strategy reproduces the processing of imported ABIDE PCP data
    assert strategy_matches("pcp-cpac-filt_global", "pcp")
    assert strategy_matches("36P", "36p")
    assert not strategy_matches("pcp-cpac-filt_global", "24P")
    assert not strategy_matches("pcp", "36P")
    assert not strategy_matches("pcp-cpac-filt_global", "no-such-strategy")
