"""Report figures, the group report's content and the participant report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_group import make_config, write_group_fixture

from brainfm.bidsapp.group import REPORT_FILE, run_group_level
from brainfm.errors import InputError
from brainfm.postproc.parcellate import ParcelSignals, save_parcel_signals
from brainfm.reports import Section, html_table, render_page
from brainfm.reports import figures as F
from brainfm.reports.participant_report import participant_report, run_key

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(b64: str) -> bool:
    return base64.b64decode(b64)[:8] == PNG_MAGIC


def assert_self_contained(html: str) -> None:
    """No script, every image inline, no external stylesheet or resource."""
    assert "<script" not in html.lower()
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for href in re.findall(r'\bhref="([^"]*)"', html):
        assert href.startswith("#"), href
    assert "<link" not in html.lower() and "@import" not in html
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert _is_png(b64)


def test_basic_figures_are_png():
    rng = np.random.default_rng(0)
    age = rng.uniform(10, 60, 20)
    pred = age + rng.normal(0, 5, 20)
    assert _is_png(F.plot_pred_vs_true(age, pred, np.full(20, 2.0), "age",
                                       {"mae": 4.0, "pearson_r": 0.9, "r2": 0.8, "n": 20}))
    assert _is_png(F.plot_distribution(pred, "fluid_intelligence"))
    assert _is_png(F.plot_gap_vs_age(age, pred - age, pred - age - 1))
    table = pd.DataFrame({"mean_fd": rng.uniform(0.1, 0.3, 20),
                          "retained_seconds": rng.uniform(200, 600, 20), "gap": pred - age})
    assert _is_png(F.plot_qc_vs_predictions(table, "gap", "gap"))
    fd = np.abs(rng.normal(0.2, 0.2, 50))
    assert _is_png(F.plot_fd_trace(fd, 0.5, 2.0, fd > 0.5, np.arange(50) < 2))
    assert _is_png(F.plot_connectivity(np.corrcoef(rng.normal(size=(10, 30))),
                                       [f"r{i}" for i in range(10)], "c",
                                       networks=list("aabbbccaab")))
    assert _is_png(F.plot_prediction_intervals(["age"], [30.0], [3.0]))
    carpet = F.plot_carpets(rng.normal(size=(45, 8)), 2.0, np.arange(50) >= 5,
                            raw=rng.normal(size=(50, 8)))
    assert _is_png(carpet)


def test_paint_atlas_puts_values_in_parcels():
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[0, :, :] = 1
    labels[1, :, :] = 3
    img = nib.Nifti1Image(labels, np.eye(4))
    table = pd.DataFrame({"index": [1, 3], "name": ["A", "C"]})
    painted = F.paint_atlas(img, table, pd.Series({"A": 0.25, "C": np.nan}), fill=0.0)
    data = np.asarray(painted.dataobj)
    assert np.allclose(data[0], 0.25) and np.allclose(data[1], 0.0) and np.allclose(data[2:], 0)
    assert np.allclose(painted.affine, img.affine)


def test_page_escapes_text_and_has_no_scripts():
    table = pd.DataFrame({"name": ["<b>x</b>"], "value": [1.23456], "missing": [np.nan]})
    body = html_table(table)
    assert "&lt;b&gt;x&lt;/b&gt;" in body and "1.23" in body and "n/a" in body
    page = render_page("t <i>", "s", [Section("a", "A & B", body)])
    assert "t &lt;i&gt;" in page and "A &amp; B" in page and 'href="#a"' in page
    assert "<script" not in page


@pytest.fixture(scope="module")
def group_report(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    fx = write_group_fixture(root, n_participants=6, sessions_for=(1,), with_timeseries=True)
    run_group_level(make_config(fx["bids"], fx["out"], bias_correction="residual"))
    return {**fx, "html": (fx["out"] / REPORT_FILE).read_text()}


def test_group_report_content(group_report):
    html = group_report["html"]
    assert_self_contained(html)
    for heading in ("Summary", "Predictions and accuracy", "Brain-age gap", "Quality control",
                    "RWMoE expert weights", "Participants", "Methods"):
        assert f">{heading}</h2>" in html, heading
    for alt in ("age: predicted vs known", "fluid_intelligence: predicted vs known",
                "brain-age gap vs age", "atlas-CC200: dominant expert",
                "atlas-CC200: mean expert weights"):
        assert f'alt="{alt}"' in html, alt
    assert "could not be drawn" not in html
    assert "inflated by construction" in html
    assert "strategy <code>pcp</code>" in html and "0.5 mm" in html
    assert "Craddock" in html and "ABIDE PCP" in html and "Training Cohort" in html
    assert "task-rest_run-2" in html  # the excluded run is listed


def test_group_report_without_atlas_lists_weights(tmp_path):
    import shutil

    fx = write_group_fixture(tmp_path, n_participants=4, sessions_for=())
    shutil.rmtree(fx["out"] / "sourcedata" / "atlases")
    written = run_group_level(make_config(fx["bids"], fx["out"]))
    html = written["report"].read_text()
    assert "cannot be drawn on the brain" in html and "expert_3" in html
    assert_self_contained(html)


def test_participant_report_denoised_only(group_report):
    out = group_report["out"]
    path = participant_report(out, "sub-02")
    assert path == out / "sub-02.html"
    html = path.read_text()
    assert_self_contained(html)
    assert "ses-1_task-rest" in html and "ses-2_task-rest" in html
    assert html.count('alt="sub-02_ses-1_task-rest: framewise displacement"') == 1
    assert 'alt="sub-02_ses-1_task-rest atlas-CC200: carpet plot"' in html
    assert 'alt="sub-02_ses-1_task-rest atlas-CC200: connectivity matrix"' in html
    assert "Only the denoised signals are shown" in html
    assert ">Predictions</h2>" in html and "dominant expert" in html
    assert "how the model routes regions" in html  # the map explained in one sentence


def test_participant_report_with_raw_signals(group_report):
    out = group_report["out"]
    names = group_report["roi_names"]
    rng = np.random.default_rng(1)
    assert run_key({"sub": "03", "task": "rest", "space": "MNI152NLin6Asym"}) == \
        "sub-03_task-rest"
    raw = {"sub-03_task-rest": rng.normal(size=(60, len(names)))}
    html = participant_report(out, "03", raw).read_text()
    assert "Only the denoised signals are shown" not in html
    # an .npz from the extraction node, keyed without the subject part
    npz = save_parcel_signals(out.parent / "roi_signals.npz", {"CC200": ParcelSignals(
        timeseries=rng.normal(size=(60, len(names))), roi_names=names,
        coverage=np.ones(len(names)), low_coverage=[])})
    html = participant_report(out, "sub-04", {"task-rest": str(npz)}).read_text()
    assert "Only the denoised signals are shown" not in html
    # raw signals with the wrong number of volumes are ignored, not fatal
    html = participant_report(out, "05", {"task-rest": np.zeros((7, len(names)))}).read_text()
    assert "Only the denoised signals are shown" in html


def test_participant_report_unknown_subject(group_report):
    with pytest.raises(InputError, match="sub-99"):
        participant_report(group_report["out"], "99")
    assert not (group_report["out"] / "sub-99.html").exists()


def test_participant_report_on_real_participant_outputs(tmp_path):
    """On the participant level's own outputs (no predictions yet): runs and QC only."""
    out = Path(tmp_path)
    func = out / "sub-07" / "func"
    func.mkdir(parents=True)
    rng = np.random.default_rng(2)
    pd.DataFrame({"framewise_displacement": np.r_[np.nan, rng.uniform(0, 0.3, 39)],
                  "outlier": 0, "dummy": np.r_[1, 1, np.zeros(38, int)]}).to_csv(
        func / "sub-07_task-rest_run-1_outliers.tsv", sep="\t", index=False, na_rep="n/a")
    names = [f"R{i}" for i in range(12)]
    base = "sub-07_task-rest_run-1_space-MNI152NLin6Asym_atlas-Test"
    series = rng.normal(size=(38, 12))
    pd.DataFrame(series, columns=names).to_csv(func / f"{base}_stat-mean_timeseries.tsv",
                                               sep="\t", index=False)
    (func / f"{base}_stat-mean_timeseries.json").write_text('{"RepetitionTime": 2.5}')
    rel = pd.DataFrame(np.corrcoef(series.T), index=pd.Index(names, name="Node"), columns=names)
    rel.to_csv(func / f"{base}_stat-pearsoncorrelation_relmat.tsv", sep="\t")
    html = participant_report(out, "07").read_text()
    assert_self_contained(html)
    assert "2 dummy" in html and "TR 2.5 s" in html
    assert ">Predictions</h2>" not in html


def test_templates_are_package_data():
    """The page template must be installed with non-editable installs (wheel, container)."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"].get("package-data", {})
    assert "templates/*.html" in package_data.get("brainfm.reports", []), (
        'add "brainfm.reports" = ["templates/*.html"] to [tool.setuptools.package-data] in '
        "pyproject.toml"
    )


def test_carpet_of_a_run_with_an_empty_roi_warns_nothing():
    """ROIs below --min-coverage are all-NaN columns: the carpet is drawn without warnings."""
    import warnings

    from brainfm.reports.figures import plot_roi_carpet

    data = np.random.default_rng(0).normal(size=(50, 10))
    data[:, 3] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert plot_roi_carpet(data, 2.0)


PAYLOAD = '<img src=x onerror="alert(1)">&<b>'


def _assert_only_escaped(html: str) -> None:
    assert PAYLOAD not in html and "<img src=x" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html \
        or "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_outside_text_cannot_inject_markup(tmp_path):
    """Model-card fields, target notes and a page title from outside reach the pages escaped."""
    import json

    fx = write_group_fixture(tmp_path, n_participants=6, sessions_for=(1,), with_timeseries=True)
    for sidecar in fx["out"].rglob("*_desc-brainfm_predictions.json"):
        meta = json.loads(sidecar.read_text())
        meta["ModelCard"]["TrainingCohort"] = PAYLOAD
        meta["ModelCard"]["Notes"] = PAYLOAD
        meta["TargetNotes"] = {"age": PAYLOAD}
        sidecar.write_text(json.dumps(meta))
    run_group_level(make_config(fx["bids"], fx["out"]))
    group_html = (fx["out"] / REPORT_FILE).read_text()
    _assert_only_escaped(group_html)
    assert_self_contained(group_html)
    subject = sorted(p.name[4:] for p in fx["out"].glob("sub-*") if p.is_dir())[0]
    participant_html = participant_report(fx["out"], subject).read_text()
    _assert_only_escaped(participant_html)
    page = render_page(PAYLOAD, PAYLOAD, [Section(PAYLOAD, PAYLOAD, "<p>trusted</p>")])
    _assert_only_escaped(page)
    assert "<p>trusted</p>" in page


def test_participant_report_has_design_coverage_methods_and_errors(tmp_path):
    """fMRIPrep's order: summary, runs, about, methods, errors; a run shows its design matrix
    and ROI coverage; the methods boilerplate and an excluded run's reason reach the page."""
    out = Path(tmp_path)
    func = out / "sub-08" / "func"
    func.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for run in ("1", "2"):
        pd.DataFrame({"framewise_displacement": rng.uniform(0, 0.3, 30), "outlier": 0,
                      "dummy": 0}).to_csv(func / f"sub-08_task-rest_run-{run}_outliers.tsv",
                                          sep="\t", index=False)
    design = pd.DataFrame(rng.normal(size=(30, 3)), columns=["trans_x", "csf", "<b>odd</b>"])
    design.to_csv(func / "sub-08_task-rest_run-1_desc-preproc_design.tsv", sep="\t",
                  index=False)
    base = "sub-08_task-rest_run-1_space-MNI152NLin6Asym_atlas-Test"
    names = [f"R{i}" for i in range(6)]
    pd.DataFrame(rng.normal(size=(30, 6)), columns=names).to_csv(
        func / f"{base}_stat-mean_timeseries.tsv", sep="\t", index=False)
    (func / f"{base}_stat-mean_timeseries.json").write_text(
        '{"RepetitionTime": 2.0, "CoverageThreshold": 0.5, "LowCoverageROIs": ["R<5>"]}')
    pd.DataFrame({"Node": names, "coverage": [1, 1, 0.9, 0.8, 0.7, 0.2]}).to_csv(
        func / f"{base}_stat-coverage_bold.tsv", sep="\t", index=False)
    pd.DataFrame({"run": ["task-rest_run-1", "task-rest_run-2"], "status": ["included",
                  "excluded"], "reason": ["", "only 40 s left after censoring (< 120 s)"]}
                 ).to_csv(out / "sub-08" / "sub-08_desc-runs_qc.tsv", sep="\t", index=False)
    (out / "logs").mkdir()
    (out / "logs" / "CITATION.md").write_text(
        "# Methods\n\nSignals were <denoised> with nilearn.\n\n## References\n\n- Power JD.\n")
    html = participant_report(out, "08").read_text()
    assert_self_contained(html)
    titles = re.findall(r"<h2>(.*?)</h2>", html)
    assert titles[0] == "Summary" and titles[-3:] == ["About", "Methods", "Errors"]
    assert 'alt="sub-08_task-rest_run-1: design matrix"' in html
    assert "3 confound regressors" in html and "<b>odd</b>" not in html
    assert "6 ROIs" in html and "median 0.85" in html and "lowest 0.20" in html
    assert "1 ROI(s) below 50 %" in html and "R&lt;5&gt;" in html
    assert "Signals were &lt;denoised&gt; with nilearn." in html and "<li>Power JD.</li>" in html
    errors = html[html.index('id="errors"'):]
    assert "task-rest_run-2: only 40 s left after censoring" in errors


def test_pred_vs_true_keeps_legend_and_statistics_off_the_data():
    """No point under the legend or the statistics box (both outside the axes, in display
    coordinates after drawing) and no error bar cut by the axis limits."""
    rng = np.random.default_rng(9)
    age = rng.uniform(6, 60, 80)
    pred = age + rng.normal(0, 4, 80)
    std = rng.uniform(1, 9, 80)
    fig = F.pred_vs_true_figure(age, pred, std, "age",
                                {"n": 80, "mae": 3.1, "pearson_r": 0.9, "r2": 0.8},
                                pred_corrected=pred * 0.9 + 2)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    points = ax.transData.transform(np.c_[np.r_[age, age], np.r_[pred, pred * 0.9 + 2]])
    boxes = [ax.get_legend().get_window_extent(renderer)]
    boxes += [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 2
    for box in boxes:
        inside = ((points[:, 0] >= box.x0) & (points[:, 0] <= box.x1)
                  & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1))
        assert not inside.any()
        assert not box.overlaps(ax.get_window_extent(renderer))
    low, high = ax.get_ylim()
    assert low <= (pred - std).min() and high >= (pred + std).max()


def test_card_summary_cuts_lists_between_names():
    from brainfm.reports.group_report import _card_summary

    sites = [f"SITE_{i:02d}_WITH_A_LONG_NAME" for i in range(40)]
    html = _card_summary({"TrainingCohort": {"sites": sites, "n_sites": 40}, "Sites": sites})
    for part in re.findall(r"<dd>(.*?)</dd>", html):
        names = re.findall(r"SITE_\d\d\w*", part)
        assert names and all(n.endswith("_WITH_A_LONG_NAME") for n in names)  # none cut
        assert "more" in part


def test_participant_predictions_carry_the_card_s_out_of_site_accuracy(tmp_path):
    import json

    fx = write_group_fixture(tmp_path, n_participants=6, sessions_for=(1,), with_timeseries=True)
    subject = sorted(p.name[4:] for p in fx["out"].glob("sub-*") if p.is_dir())[0]
    sidecar = next((fx["out"] / f"sub-{subject}").rglob("*_desc-brainfm_predictions.json"))
    meta = json.loads(sidecar.read_text())
    meta["ModelCard"]["TargetColumns"]["fluid_intelligence"] = "piq"
    meta["ModelCard"]["OutOfSiteAccuracy"] = {
        "age": {"mae": 3.52, "training_mean_mae": 5.39, "coverage_90": 0.92},
        "fluid_intelligence": {"mae": 12.44, "training_mean_mae": 12.46, "coverage_90": 0.89}}
    sidecar.write_text(json.dumps(meta))
    html = participant_report(fx["out"], subject).read_text()
    table = html[html.index("out-of-site MAE"):]
    assert "3.52" in table and "5.39" in table and "0.92" in table and "12.44" in table
    assert "fluid_intelligence (trained on piq)" in html
    # with the card's labels, the target's real name is shown instead
    meta["ModelCard"]["TargetLabels"] = {
        "age": "age (years)",
        "fluid_intelligence": "performance IQ (ABIDE PIQ), our fluid-intelligence proxy"}
    sidecar.write_text(json.dumps(meta))
    html = participant_report(fx["out"], subject).read_text()
    assert "performance IQ (ABIDE PIQ), our fluid-intelligence proxy" in html
