"""Tests of the model inputs (brainfm.models timeseries, sessions, windows, targets): discovery,
loading, resampling, masking, windows, targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from brainfm.derivatives import parse_entities
from brainfm.errors import InputError, UsageError
from brainfm.models.sessions import load_session, load_sessions, segment_connectivity
from brainfm.models.targets import (
    TargetScaler,
    TargetSpec,
    load_participants,
    parse_target_spec,
    target_matrix,
)
from brainfm.models.timeseries import (
    find_timeseries,
    fisher_z_connectivity,
    read_timeseries,
    resample_timeseries,
    standardise,
    write_timeseries,
)
from brainfm.models.windows import (
    SlidingWindowDataset,
    WindowDataset,
    default_stride,
    random_window,
    sliding_windows,
)

ROIS = [f"R{i:02d}" for i in range(6)]


def _ts_path(root: Path, sub: str, ses: str | None = None, run: str | None = None,
             atlas: str = "CC200") -> Path:
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else [])
    ents = "_".join(parts) + "_task-rest" + (f"_run-{run}" if run else "")
    return root.joinpath(*parts, "func",
                         f"{ents}_space-MNI152NLin6Asym_atlas-{atlas}_stat-mean_timeseries.tsv")


def _write(root: Path, sub: str, data: np.ndarray, tr: float = 2.0, **kw: str) -> Path:
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "DatasetType": "derivative"}')
    return write_timeseries(_ts_path(root, sub, **kw), data, ROIS, tr,
                              denoising_strategy="test")


def test_parse_entities() -> None:
    ent = parse_entities(
        "sub-01_ses-A_task-rest_run-2_space-X_atlas-CC200_stat-mean_timeseries.tsv"
    )
    assert ent == {"sub": "01", "ses": "A", "task": "rest", "run": "2", "space": "X",
                   "atlas": "CC200", "stat": "mean"}


def test_find_timeseries_many_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, "01", rng.normal(size=(50, 6)))
    _write(a, "02", rng.normal(size=(50, 6)), ses="1")
    _write(a, "02", rng.normal(size=(50, 6)), ses="2")
    _write(b, "03", rng.normal(size=(50, 6)), run="1")
    _write(b, "03", rng.normal(size=(50, 6)), atlas="Schaefer200")
    found = find_timeseries([a, b], "cc200")
    assert [(f.subject, f.session, f.run) for f in found] == [
        ("01", None, None), ("02", "1", None), ("02", "2", None), ("03", None, "1")]
    assert len(find_timeseries([a, b], "CC200", participants=["sub-02"])) == 2
    with pytest.raises(InputError, match="atlases present"):
        find_timeseries([b], "Schaefer400")
    with pytest.raises(InputError, match="not found"):
        find_timeseries([tmp_path / "missing"], "CC200")


def test_missing_repetition_time_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "01", np.random.default_rng(0).normal(size=(30, 6)))
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    del meta["RepetitionTime"], meta["SamplingFrequency"]
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(InputError, match=sidecar.name):
        read_timeseries(path)
    sidecar.unlink()
    with pytest.raises(InputError, match="sidecar missing"):
        read_timeseries(path)


@pytest.mark.parametrize("tr", [1.5, 1.656, 2.2, 3.0])
def test_resampling_preserves_sinusoid_frequency(tr: float) -> None:
    freq = 0.05
    t = np.arange(240) * tr
    data = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    out = resample_timeseries(data, tr, 0.5)
    duration = 240 * tr
    assert abs(out.shape[0] - duration * 0.5) <= 2
    spectrum = np.abs(np.fft.rfft(out[:, 0] - out[:, 0].mean()))
    freqs = np.fft.rfftfreq(out.shape[0], d=2.0)
    assert abs(freqs[np.argmax(spectrum)] - freq) <= freqs[1]
    # away from the edges the resampled signal is the sinusoid at the new sample times
    t2 = np.arange(out.shape[0]) * 2.0
    inner = slice(10, out.shape[0] - 10)
    assert np.max(np.abs(out[inner, 0] - np.sin(2 * np.pi * freq * t2[inner]))) < 0.05


def test_resampling_identity_when_rates_match() -> None:
    data = np.random.default_rng(1).normal(size=(40, 3))
    np.testing.assert_allclose(resample_timeseries(data, 2.0, 0.5), data)


def test_masked_rois_are_zero_and_excluded(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = rng.normal(size=(80, 6)) * 5 + 3
    data[:, 1] = 0.0  # outside the field of view
    data[:, 3] = np.nan  # n/a column
    data[:, 4] = 7.0  # constant
    path = _write(tmp_path, "01", data, tr=2.5)
    assert "n/a" in path.read_text().splitlines()[1]
    sess = load_session(find_timeseries(tmp_path, "CC200"))
    assert sess.roi_mask.tolist() == [True, False, True, False, False, True]
    run = sess.runs[0]
    assert run.dtype == np.float32 and run.shape[0] == 6
    assert run.shape[1] == pytest.approx(80 * 2.5 * 0.5, abs=1)
    assert np.all(run[~sess.roi_mask] == 0)
    np.testing.assert_allclose(run[sess.roi_mask].mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(run[sess.roi_mask].std(axis=1), 1, atol=1e-4)
    assert np.all(sess.conn[~sess.roi_mask] == 0) and np.all(sess.conn[:, ~sess.roi_mask] == 0)
    assert np.all(np.isfinite(sess.conn))


def test_fisher_z_connectivity_matches_corrcoef() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(100, 5))
    data[:, 1] += data[:, 0]
    mask = np.array([True, True, True, False, True])
    conn = fisher_z_connectivity(data, mask)
    ref = np.corrcoef(data[:, mask].T)
    np.fill_diagonal(ref, 0)
    ref = np.arctanh(ref)
    np.testing.assert_allclose(conn[np.ix_(mask, mask)], ref, atol=1e-5)
    assert np.all(np.diag(conn) == 0) and np.all(conn[3] == 0)
    np.testing.assert_allclose(conn, conn.T)
    # perfectly correlated ROIs stay finite
    dup = np.repeat(data[:, :1], 2, axis=1)
    assert np.all(np.isfinite(fisher_z_connectivity(dup, np.array([True, True]))))


def test_runs_of_a_session_are_combined(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    shared = rng.normal(size=(60, 1))
    r1 = shared + 0.5 * rng.normal(size=(60, 6))
    r2 = rng.normal(size=(90, 6))
    _write(tmp_path, "01", r1, tr=2.0, ses="1", run="1")
    _write(tmp_path, "01", r2, tr=3.0, ses="1", run="2")
    _write(tmp_path, "01", r2, tr=3.0, ses="2")
    sessions = load_sessions(find_timeseries(tmp_path, "CC200"))
    assert [(s.participant_id, s.session_id, len(s.runs)) for s in sessions] == [
        ("01", "1", 2), ("01", "2", 1)]
    s1 = sessions[0]
    assert [r.shape[1] for r in s1.runs] == [60, 135]
    assert s1.repetition_times == [2.0, 3.0]
    z = np.concatenate([standardise(r, np.ones(6, bool)) for r in (r1, r2)])
    np.testing.assert_allclose(s1.conn, fisher_z_connectivity(z, np.ones(6, bool)), atol=1e-5)
    with pytest.raises(InputError, match="ROI names"):
        load_session(find_timeseries(tmp_path, "CC200")[:1], expected_roi_names=ROIS[:5])


def test_segment_connectivity_is_each_parts_correlation(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    first = rng.normal(size=(70, 6))
    second = rng.normal(size=(70, 6))
    second[:, 2] = second[:, 0] + 0.1 * rng.normal(size=70)  # coupled in the second run only
    second[:, 4] = 3.0  # constant: masked in the whole session
    _write(tmp_path, "01", first, tr=2.0, run="1")
    _write(tmp_path, "01", second, tr=2.0, run="2")
    (session,) = load_sessions(find_timeseries(tmp_path, "CC200"))
    series = np.concatenate([run.T for run in session.runs]).astype(np.float64)
    mask = session.roi_mask
    assert not mask[4]
    for n_segments in (1, 2, 3):
        parts = segment_connectivity(session, n_segments)
        bounds = np.linspace(0, series.shape[0], n_segments + 1).astype(int)
        assert len(parts) == n_segments
        for part, lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
            ref = np.corrcoef(series[lo:hi][:, mask].T)  # float64 reference
            np.fill_diagonal(ref, 0)
            np.testing.assert_allclose(part[np.ix_(mask, mask)], np.arctanh(ref), atol=1e-5)
            assert np.all(part[~mask] == 0) and np.all(part[:, ~mask] == 0)
    # equal runs: the halves are the runs, and the second run's coupling shows in it only
    first_half, second_half = segment_connectivity(session, 2)
    assert second_half[0, 2] > 1.0 > abs(first_half[0, 2])
    with pytest.raises(ValueError, match="at least 1"):
        segment_connectivity(session, 0)


def test_sliding_and_random_windows() -> None:
    runs = [np.arange(2 * 70, dtype=np.float32).reshape(2, 70), np.ones((2, 20), np.float32)]
    w = sliding_windows(runs, 32, stride=16)
    # run 1: starts 0, 16, 32 and the end-aligned 38; run 2 is padded to one window
    assert w.shape == (5, 2, 32)
    np.testing.assert_array_equal(w[3], runs[0][:, 38:70])
    assert np.all(w[4][:, 20:] == 0) and np.all(w[4][:, :20] == 1)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    np.testing.assert_array_equal(
        random_window(runs, 32, rng_a), random_window(runs, 32, rng_b)
    )
    # the default step is half a window (starts 0, 16, 32, 38 again); 0 or None mean default
    np.testing.assert_array_equal(sliding_windows(runs, 32), w)
    assert [default_stride(32), default_stride(32, 0), default_stride(32, 5),
            default_stride(1)] == [16, 16, 5, 1]


def test_window_datasets(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for sub in ("01", "02", "03"):
        _write(tmp_path, sub, rng.normal(size=(100, 6)))
    sessions = load_sessions(find_timeseries(tmp_path, "CC200"))
    targets = np.array([[1.0, np.nan], [2.0, 0.5], [np.nan, 1.0]])
    ds = WindowDataset(sessions, 16, targets, draws_per_session=2, seed=3)
    assert len(ds) == 6
    item = ds[5]
    assert item["x"].shape == (6, 16) and item["x"].dtype == torch.float32
    assert item["roi_mask"].dtype == torch.bool and item["conn"].shape == (6, 6)
    assert item["targets"].tolist() == [0.0, 1.0] and item["target_mask"].tolist() == [False, True]
    again = WindowDataset(sessions, 16, targets, draws_per_session=2, seed=3)
    assert torch.equal(ds[4]["x"], again[4]["x"])
    ds.set_epoch(1)
    assert not torch.equal(ds[4]["x"], again[4]["x"])
    pre = WindowDataset(sessions, 16)
    assert pre[0]["targets"].shape == (0,)
    sw = SlidingWindowDataset(sessions, 16, stride=16, targets=targets)
    assert len(sw) == 3 * 7 and int(sw[8]["session"]) == 1


def test_participants_and_targets(tmp_path: Path) -> None:
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tAge\tsex\tPIQ\n"
                    "sub-01\t10.5\tM\t100\n02\tn/a\tF\t\nsub-03\t30\tn/a\tn/a\n")
    frame = load_participants(path)
    assert list(frame.index) == ["01", "02", "03"]
    assert np.isnan(frame.loc["02", "Age"]) and frame.loc["01", "sex"] == "M"
    specs = [parse_target_spec("age"), parse_target_spec("fluid_intelligence=piq")]
    assert specs[1] == TargetSpec("fluid_intelligence", "piq")
    y = target_matrix(frame, ["01", "02", "03", "04"], specs)
    np.testing.assert_array_equal(np.isnan(y), [[0, 0], [1, 1], [0, 1], [1, 1]])
    assert y[0].tolist() == [10.5, 100.0]
    with pytest.raises(UsageError, match="'IQ' not in"):
        target_matrix(frame, ["01"], [parse_target_spec("iq=IQ")])
    with pytest.raises(InputError, match="no value"):
        target_matrix(frame, ["02"], specs[:1])
    with pytest.raises(InputError, match="not numeric"):
        target_matrix(frame, ["01"], [parse_target_spec("sex")])
    with pytest.raises(UsageError):
        parse_target_spec("=PIQ")
    with pytest.raises(InputError, match="not found"):
        load_participants(tmp_path / "nope.tsv")


def test_target_scaler_round_trip() -> None:
    y = np.array([[10.0, np.nan], [20.0, 1.0], [30.0, 3.0]])
    sc = TargetScaler.fit(y)
    np.testing.assert_allclose(sc.mean, [20.0, 2.0])
    z = sc.transform(y)
    np.testing.assert_allclose(np.nanmean(z, axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(sc.inverse(z), y)
