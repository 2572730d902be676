"""The per-participant report ``output_dir/sub-<label>.html`` (like fMRIPrep's).

For every run: the censoring (framewise displacement with the threshold and the censored
volumes), ROI-level carpet plots after denoising (and before, when the raw ROI signals are
given: they are not written as derivatives), and the connectivity matrix of every atlas; then the
participant's predictions and RWMoE expert map when the model stage wrote them. Built from the
participant's derivatives only; self-contained (inline PNG and CSS, no script).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from brainfm.derivatives import (
    bandpass_cutoffs,
    build_name,
    parse_entities,
    participant_report_path,
)
from brainfm.errors import InputError
from brainfm.fileio import read_json, read_tsv, write_text_atomic
from brainfm.reports import Section, accuracy_source, esc, format_value, html_table, render_page

LOGGER = logging.getLogger(__name__)


def run_key(entities: Mapping[str, Any]) -> str:
    """The key of one run in ``raw_roi_signals``: its derivative-name prefix.

    Parameters
    ----------
    entities : mapping
        The run's BIDS entities (``sub``, ``ses``, ``task``, ``run`` ...; ``space``, ``atlas``,
        ``stat`` and ``desc`` are ignored).

    Returns
    -------
    str
        E.g. ``'sub-01_ses-1_task-rest_run-1'``: the run's derivative file names up to
        ``_space-`` (``..._outliers.tsv`` without its suffix).
    """
    ents = {k: v for k, v in entities.items()
            if k not in ("space", "res", "den", "atlas", "seg", "stat", "desc")}
    return build_name(ents, "x", "")[: -len("_x")]


def _subject_label(subject: str) -> str:
    subject = str(subject).strip()
    label = subject[4:] if subject.startswith("sub-") else subject
    if not label.isalnum():
        raise InputError(f"invalid participant label '{subject}'")
    return label


def _signals_array(value: Any, columns: list[str], atlas: str) -> np.ndarray | None:
    """Raw signals of one atlas as (T, N) in the derivative's column order, or None."""
    if isinstance(value, (str, Path)):
        from brainfm.postproc.parcellate import load_parcel_signals

        value = load_parcel_signals(value)
    if isinstance(value, Mapping):
        value = value.get(atlas)
        if value is None:
            return None
    names = getattr(value, "roi_names", None)
    if hasattr(value, "timeseries"):
        value = value.timeseries
    if isinstance(value, pd.DataFrame):
        return value.reindex(columns=columns).to_numpy(dtype=float)
    array = np.asarray(value, dtype=float)
    if array.ndim != 2:
        return None
    if names is not None and list(names) != columns:
        return pd.DataFrame(array, columns=list(names)).reindex(columns=columns).to_numpy(float)
    if array.shape[1] != len(columns):
        LOGGER.warning("raw signals of atlas %s have %d ROIs, the derivatives %d: not drawn",
                       atlas, array.shape[1], len(columns))
        return None
    return array


def _lookup_raw(raw: Mapping[str, Any] | None, prefix: str, subject: str) -> Any:
    if not raw:
        return None
    short = prefix[len(f"sub-{subject}_"):] if prefix.startswith(f"sub-{subject}_") else prefix
    for key in (prefix, short):
        if key in raw:
            return raw[key]
    return None


def _find_atlas_table(output_dir: Path, atlas: str) -> tuple[Path, pd.DataFrame] | None:
    from brainfm.group.read_outputs import find_atlas

    return find_atlas(output_dir, atlas)


def _coverage_html(series_path: Path, atlas: str) -> str:
    """One paragraph: the atlas' ROI coverage and the ROIs left out for low coverage."""
    side = read_json(series_path.with_suffix(".json"))
    coverage_path = Path(str(series_path).replace("_stat-mean_timeseries.tsv",
                                                  "_stat-coverage_bold.tsv"))
    values = (read_tsv(coverage_path)["coverage"].to_numpy(dtype=float)
              if coverage_path.is_file() else np.array([]))
    low = [str(n) for n in side.get("LowCoverageROIs") or []]
    threshold = side.get("CoverageThreshold")
    text = [f"<h3>atlas-{esc(atlas)}: ROI coverage</h3><p>"]
    if values.size:
        text.append(f"{values.size} ROIs; coverage (share of a parcel's voxels inside the brain "
                    f"mask with signal) median {format_value(float(np.nanmedian(values)), 2)}, "
                    f"lowest {format_value(float(np.nanmin(values)), 2)}. ")
    if threshold is not None:
        text.append(f"{len(low)} ROI(s) below {format_value(100 * float(threshold), 0)} % are "
                    "left out (n/a in the time series)" + (": " if low else "."))
    if low:
        shown = ", ".join(esc(n) for n in low[:20])
        text.append(shown + (f" and {len(low) - 20} more." if len(low) > 20 else "."))
    text.append("</p>")
    return "".join(text)


def _methods_html(output_dir: Path) -> str:
    """The run's methods boilerplate (``logs/CITATION.md``) as HTML, escaped."""
    path = output_dir / "logs" / "CITATION.md"
    if not path.is_file():
        return ('<p class="note">No methods boilerplate in this output (it is written by the '
                "participant level in logs/CITATION.md).</p>")
    html_parts: list[str] = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        block = block.strip()
        if not block or block.startswith("# "):
            continue
        if block.startswith("## "):
            html_parts.append(f"<h3>{esc(block[3:])}</h3>")
        elif block.startswith("- "):
            items = [line[2:] for line in block.splitlines() if line.startswith("- ")]
            html_parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>")
        else:
            html_parts.append(f"<p>{esc(block)}</p>")
    return "\n".join(html_parts)


def _errors_html(qc: pd.DataFrame) -> str:
    """Runs the participant level left out, with the reason; or that there were none."""
    if not len(qc) or "status" not in qc:
        return "<p>No errors to report.</p>"
    excluded = qc[qc["status"] == "excluded"]
    if not len(excluded):
        return "<p>No errors to report: every run was included.</p>"
    rows = [f"<li>{esc(r.get('run'))}: {esc(r.get('reason'))}</li>"
            for r in excluded.to_dict("records")]
    return f'<ul class="error">{"".join(rows)}</ul>'


def _run_section(output_dir: Path, subject: str, outliers_path: Path, qc_row: dict[str, Any],
                 raw: Any, index: int) -> Section:
    from brainfm.reports import figures

    prefix = outliers_path.name[: -len("_outliers.tsv")]
    func_dir = outliers_path.parent
    outliers = read_tsv(outliers_path)
    side = read_json(outliers_path.with_suffix(".json"))
    series_files = sorted(func_dir.glob(f"{prefix}_space-*_stat-mean_timeseries.tsv"))
    series_side = read_json(series_files[0].with_suffix(".json")) if series_files else {}
    design_path = func_dir / f"{prefix}_desc-preproc_design.tsv"
    tr = float(series_side.get("RepetitionTime")
               or read_json(design_path.with_suffix(".json")).get("RepetitionTime") or 1.0)
    threshold = side.get("FDThreshold", series_side.get("FDThreshold"))
    fd = outliers.get("framewise_displacement", pd.Series(np.nan, index=outliers.index))
    outlier = outliers.get("outlier", pd.Series(0, index=outliers.index)).fillna(0).astype(bool)
    dummy = outliers.get("dummy", pd.Series(0, index=outliers.index)).fillna(0).astype(bool)
    retained = ~(outlier | dummy)
    status = qc_row.get("status", "included" if series_files else "excluded")
    body = [f"<p>Status: <span class=\"{esc(status)}\">{esc(status)}</span>"
            + (f" — {esc(qc_row.get('reason'))}" if status == "excluded" else "")
            + f". Volumes: {len(outliers)} acquired, {int(retained.sum())} retained "
            f"({int(outlier.sum())} censored for motion, {int(dummy.sum())} dummy); retained "
            f"time {format_value(retained.sum() * tr, 1)} s; mean FD "
            f"{format_value(float(np.nanmean(fd.to_numpy(dtype=float))), 3)} mm; TR "
            f"{tr:g} s.</p>"]
    if series_side:
        high, low = bandpass_cutoffs(series_side)
        body.append(f"<p class=\"note\">Denoising: strategy <code>"
                    f"{esc(series_side.get('DenoisingStrategy'))}</code>, "
                    f"{len(series_side.get('NuisanceRegressors') or [])} regressors, band-pass "
                    f"{esc(high or 'none')}–{esc(low or 'none')} Hz.</p>")
    body.append("<h3>Censoring</h3>")
    body.append(figures.img_tag(figures.plot_fd_trace(fd, threshold, tr, outlier, dummy),
                                f"{prefix}: framewise displacement"))
    if design_path.is_file():
        design = read_tsv(design_path)
        if design.shape[1]:
            body.append("<h3>Design matrix</h3>")
            body.append(f'<p class="note">The {design.shape[1]} confound regressors removed '
                        "from the ROI signals (each column rescaled for display).</p>")
            body.append(figures.img_tag(figures.plot_design_matrix(design),
                                        f"{prefix}: design matrix"))
    if not series_files:
        body.append('<p class="note">No denoised time series: the run was excluded.</p>')
    for series_path in series_files:
        atlas = parse_entities(series_path.name).get("atlas", "atlas")
        series = read_tsv(series_path)
        columns = [str(c) for c in series.columns]
        raw_array = _signals_array(raw, columns, atlas) if raw is not None else None
        if raw_array is not None and raw_array.shape[0] != len(outliers):
            LOGGER.warning("%s: raw signals have %d volumes, the run %d: 'before' not drawn",
                           prefix, raw_array.shape[0], len(outliers))
            raw_array = None
        body.append(_coverage_html(series_path, atlas))
        body.append(f"<h3>atlas-{esc(atlas)}: carpet plot</h3>")
        body.append(figures.img_tag(
            figures.plot_carpets(series.to_numpy(dtype=float), tr, retained.to_numpy(),
                                 raw=raw_array),
            f"{prefix} atlas-{atlas}: carpet plot"))
        if raw_array is None:
            body.append('<p class="note">Only the denoised signals are shown: the raw ROI '
                        "signals are not part of the derivatives (they are drawn when the "
                        "report is made during the participant level).</p>")
        relmat_path = Path(str(series_path).replace("_stat-mean_timeseries.tsv",
                                                    "_stat-pearsoncorrelation_relmat.tsv"))
        if relmat_path.is_file():
            relmat = read_tsv(relmat_path)
            relmat = relmat.set_index(relmat.columns[0])
            atlas_info = _find_atlas_table(output_dir, atlas)
            networks = None
            if atlas_info is not None and "network" in atlas_info[1]:
                lookup = dict(zip(atlas_info[1]["name"].astype(str),
                                  atlas_info[1]["network"].astype(str), strict=True))
                networks = [lookup.get(str(n), "") for n in relmat.index]
            body.append(f"<h3>atlas-{esc(atlas)}: connectivity</h3>")
            body.append(figures.img_tag(
                figures.plot_connectivity(relmat.to_numpy(dtype=float),
                                          [str(n) for n in relmat.index],
                                          f"Pearson correlation, atlas-{atlas}", networks),
                f"{prefix} atlas-{atlas}: connectivity matrix"))
    return Section(f"run-{index}", prefix.replace(f"sub-{subject}_", ""), "\n".join(body))


def _predictions_section(output_dir: Path, subject: str) -> Section | None:
    from brainfm.group.read_outputs import prediction_targets
    from brainfm.reports import figures

    paths = sorted((output_dir / f"sub-{subject}").glob("**/func/*_desc-brainfm_predictions.tsv"))
    if not paths:
        return None
    body = []
    for path in paths:
        table = read_tsv(path)
        if table.empty:
            continue
        targets = prediction_targets(list(table.columns))
        row = table.iloc[0]
        session = str(row.get("session_id", "n/a"))
        title = f"session {session}" if session != "n/a" else "predictions"
        def num(column: str, row: pd.Series = row) -> float:
            return float(pd.to_numeric(row.get(column, np.nan), errors="coerce"))

        values = [num(t) for t in targets]
        stds = [num(f"{t}_std") for t in targets]
        calibrated = all(f"{t}_lower90" in row for t in targets)
        intervals = [tuple(num(f"{t}_{side}{lv}") for lv in (50, 90) for side in ("lower",
                                                                                 "upper"))
                     for t in targets] if calibrated else None
        side = read_json(path.with_suffix(".json"))
        body.append(f"<h3>{esc(title)}</h3>")
        card = side.get("ModelCard") or {}
        trained_on = card.get("TargetColumns") or {}
        labels = card.get("TargetLabels") or {}
        shown = pd.DataFrame({
            "target": [labels.get(t) or (t if trained_on.get(t, t) == t
                                         else f"{t} (trained on {trained_on[t]})")
                       for t in targets],
            "predicted": values, "std": stds})
        if intervals is not None:
            shown["50 % interval"] = [f"{b[0]:.1f} – {b[1]:.1f}" for b in intervals]
            shown["90 % interval"] = [f"{b[2]:.1f} – {b[3]:.1f}" for b in intervals]
        accuracy = card.get("OutOfSiteAccuracy") or {}
        if accuracy:
            # the model's measured accuracy on sites it never saw, beside each prediction
            shown["out-of-site MAE"] = [(accuracy.get(t) or {}).get("mae") for t in targets]
            shown["training-mean MAE"] = [(accuracy.get(t) or {}).get("training_mean_mae")
                                          for t in targets]
            shown["90 % coverage"] = [(accuracy.get(t) or {}).get("coverage_90")
                                      for t in targets]
        if any(f"{t}_expected_mae" in row for t in targets):
            # the held-out error of the band of predictions this one falls in
            shown["expected error (its band)"] = [_finite(row.get(f"{t}_expected_mae"))
                                                  for t in targets]
            shown["reliable"] = [_reliable_text(row.get(f"{t}_reliable")) for t in targets]
        body.append(html_table(shown, text_columns=["target", "50 % interval",
                                                    "90 % interval", "reliable"]))
        body += _unreliable_warnings(row, targets, labels, card)
        if accuracy:
            body.append('<p class="note">Out-of-site MAE and 90 % coverage: the model card\'s '
                        f"measurement ({accuracy_source(accuracy)}; a new lab's data are a "
                        "new site); the training-mean MAE is what predicting the cohort's mean "
                        "for everyone scores.</p>")
        for target, note in (side.get("TargetNotes") or {}).items():
            body.append(f'<p class="warning"><strong>{esc(target)}</strong>: {esc(note)}</p>')
        if str(row.get("out_of_distribution", "")).lower() == "true":
            body.append('<p class="warning">Out of distribution: this session\'s connectivity '
                        "(or its predicted age) lies outside what the model's training cohort "
                        "covers; treat the predictions with caution.</p>")
        finite = [k for k, v in enumerate(values) if np.isfinite(v)]
        if finite:
            body.append(figures.img_tag(figures.plot_prediction_intervals(
                [targets[k] for k in finite], [values[k] for k in finite],
                [stds[k] for k in finite],
                [intervals[k] for k in finite] if intervals is not None else None),
                f"{title}: predictions"))
        elif targets:
            body.append("<p class=\"note\">No prediction: no run of this session passed "
                        "QC (see the summary).</p>")
        extra = {k: row[k] for k in ("n_runs", "retained_seconds") if k in row}
        if extra:
            bars = ("calibrated 50 % and 90 % intervals" if intervals is not None
                    else "±1 and ±2 predictive standard deviations")
            body.append(f"<p class=\"note\">From {format_value(extra.get('n_runs'))} run(s), "
                        f"{format_value(extra.get('retained_seconds'), 0)} s of retained "
                        f"data. Bars: {bars}.</p>")
        if side.get("ModelSHA256"):
            body.append(f"<p class=\"note\">Model SHA-256 <code>{esc(side['ModelSHA256'])}"
                        "</code>.</p>")
        for weights_path in sorted(path.parent.glob(
                path.name.replace("_desc-brainfm_predictions.tsv", "_atlas-*_desc-rwmoe_"
                                                                    "expertweights.tsv"))):
            body.append(_expert_map_html(output_dir, weights_path))
    return Section("predictions", "Predictions", "\n".join(body))


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _reliable_text(value: Any) -> str:
    text = str(value).lower()
    return {"true": "yes", "false": "no"}.get(text, "n/a")


def _range_text(span: Any) -> str:
    """The card's reliable range in words, completing "The model resolves ..."."""
    if not isinstance(span, list | tuple) or len(span) != 2:
        return "no range of this target (none of its held-out predictions were reliable)"
    low, high = span
    if low is None and high is None:
        return "all predictions"
    if low is None:
        return f"predictions below {high:g}"
    if high is None:
        return f"predictions of {low:g} and above"
    return f"predictions from {low:g} to {high:g}"


def _unreliable_warnings(row: dict[str, Any], targets: list[str], labels: dict[str, Any],
                         card: dict[str, Any]) -> list[str]:
    """One plain-words warning per target whose prediction is flagged not reliable."""
    out = []
    ranges = card.get("ReliableRange") or {}
    for t in targets:
        if str(row.get(f"{t}_reliable", "")).lower() != "false":
            continue
        label = esc(str(labels.get(t) or t))
        out.append(
            f'<p class="warning"><strong>{label}</strong>: this prediction lies where the model '
            "cannot tell values apart: on its training cohort's held-out sites, predictions "
            "like this one were biased (for age: adults predicted too young), or the data are "
            "shorter than one model window. The model resolves "
            f"{esc(_range_text(ranges.get(t)))}. Read it as a lower-confidence estimate, not "
            "as a measurement.</p>")
    return out


def _expert_map_html(output_dir: Path, weights_path: Path) -> str:
    from brainfm.reports import figures

    atlas = parse_entities(weights_path.name).get("atlas", "")
    atlas_info = _find_atlas_table(output_dir, atlas)
    if atlas_info is None:
        return ""
    table = read_tsv(weights_path)
    weights = table.set_index(table["Node"].astype(str))[
        [c for c in table.columns if str(c).startswith("expert_")]]
    try:
        b64 = figures.plot_dominant_expert(atlas_info[0], atlas_info[1], weights,
                                           f"atlas-{atlas}: dominant RWMoE expert")
    except Exception as err:  # noqa: BLE001 - one figure must not sink the report
        LOGGER.warning("expert map of %s not drawn: %s", weights_path, err)
        return ""
    return ('<p class="note">Dominant RWMoE expert: for each parcel, the expert of the model\'s '
            "random-walk mixture of experts that receives the largest gate weight, averaged over "
            "this session's windows. It shows how the model routes regions; it is not a "
            "measure of a region's function or of the prediction's reliability.</p>"
            + figures.img_tag(b64, f"atlas-{atlas}: dominant expert"))


def participant_report(output_dir: str | Path, subject: str,
                       raw_roi_signals: dict[str, Any] | None = None) -> Path:
    """Write the participant's HTML report ``output_dir/sub-<label>.html``.

    Parameters
    ----------
    output_dir : path
        The output dataset, with the participant's derivatives already written.
    subject : str
        The participant label, with or without ``sub-``.
    raw_roi_signals : dict, optional
        Raw (before denoising) ROI signals to draw the "before" carpet, keyed by run:
        :func:`run_key` of the run's entities (e.g. ``'sub-01_task-rest_run-1'``; the key without
        the ``sub-<label>_`` part works too). A value is a path to the ``.npz`` written by
        :func:`brainfm.postproc.parcellate.save_parcel_signals`, a mapping from atlas label to
        signals, or signals used for every atlas; signals are a
        :class:`~brainfm.postproc.parcellate.ParcelSignals`, a (T, N) array in the atlas' ROI
        order or a DataFrame with ROI-name columns, with T the number of acquired volumes.

    Returns
    -------
    pathlib.Path
        The report written.

    Raises
    ------
    InputError
        The participant has no outputs in ``output_dir``.
    """

    output_dir = Path(output_dir)
    label = _subject_label(subject)
    sub_dir = output_dir / f"sub-{label}"
    outliers_files = sorted(sub_dir.glob("**/func/*_outliers.tsv"))
    predictions = _predictions_section(output_dir, label)
    if not outliers_files and predictions is None:
        raise InputError(f"no outputs for sub-{label} in {output_dir}: run the participant "
                         "level for it first")
    qc_path = sub_dir / f"sub-{label}_desc-runs_qc.tsv"
    qc = read_tsv(qc_path) if qc_path.is_file() else pd.DataFrame()
    qc_rows: dict[str, dict[str, Any]] = {}
    for record in qc.to_dict("records"):
        ses = record.get("session_id", "n/a")
        parts = [f"sub-{label}"] + ([ses] if ses and ses != "n/a" else []) + [str(record["run"])]
        qc_rows["_".join(parts)] = record
    summary = ["<p>Participant-level outputs of <code>sub-" + esc(label) + "</code> in "
               f"<code>{esc(output_dir)}</code>.</p>"]
    if len(qc):
        cols = [c for c in ("session_id", "run", "n_volumes", "n_retained", "retained_seconds",
                            "mean_fd", "status", "reason") if c in qc]
        summary.append(html_table(qc[cols], digits=3))
        excluded = qc[qc.get("status", pd.Series(dtype=str)) == "excluded"]
        for record in excluded.to_dict("records"):
            summary.append(f'<p class="error">Run {esc(record.get("run"))} excluded: '
                           f"{esc(record.get('reason'))}</p>")
    sections = [Section("summary", "Summary", "\n".join(summary))]
    if predictions is not None:
        sections.append(predictions)
    for i, path in enumerate(outliers_files):
        prefix = path.name[: -len("_outliers.tsv")]
        raw = _lookup_raw(raw_roi_signals, prefix, label)
        sections.append(_run_section(output_dir, label, path, qc_rows.get(prefix, {}), raw, i))
    sections.append(Section("methods", "About", (
        "<p>Carpet plots show every ROI's signal (rows, atlas order) z-scored over time; censored "
        "volumes are removed from the denoised derivatives and drawn blank here, with red marks "
        "above. Framewise displacement follows Power et al. (2012). Connectivity is the Pearson "
        "correlation of the denoised ROI signals over the retained volumes.</p>")))
    sections.append(Section("boilerplate", "Methods", _methods_html(output_dir)))
    sections.append(Section("errors", "Errors", _errors_html(qc)))
    html = render_page(f"brainfm: sub-{label}", f"participant report — {output_dir}", sections)
    return write_text_atomic(participant_report_path(output_dir, label), html)
