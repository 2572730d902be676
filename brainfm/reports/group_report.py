"""The cohort report ``group_report.html``: accuracy, brain-age gap, QC, expert maps, methods.

Built from a :class:`brainfm.group.result.GroupResult` (nothing is recomputed here except the
figures). Self-contained: inline PNG figures and CSS, no script, no external resource.
"""

from __future__ import annotations

import logging
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from brainfm import __version__
from brainfm.derivatives import ATLAS_DATASET
from brainfm.reports import Section, accuracy_source, esc, format_value, html_table, render_page

if TYPE_CHECKING:  # pragma: no cover
    from brainfm.group.experts import ExpertWeights
    from brainfm.group.result import GroupResult

LOGGER = logging.getLogger(__name__)

_METRIC_COLUMNS = (("n", "n"), ("mae", "MAE"), ("rmse", "RMSE"), ("mean_error", "mean error"),
                   ("pearson_r", "Pearson r"), ("r2", "R²"))


def software_versions() -> dict[str, str]:
    """Versions of brainfm, Python and the numerical libraries used by the group level."""
    import matplotlib
    import nibabel
    import nilearn
    import scipy

    return {"brainfm": __version__, "Python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
            "nibabel": nibabel.__version__, "nilearn": nilearn.__version__,
            "matplotlib": matplotlib.__version__}


def _figure(b64: str, alt: str) -> str:
    from brainfm.reports.figures import img_tag

    return img_tag(b64, alt)


def _safe_figure(alt: str, draw: Any, *args: Any, **kwargs: Any) -> str:
    """Draw a figure; a drawing failure becomes an error box instead of a missing report."""
    try:
        return _figure(draw(*args, **kwargs), alt)
    except Exception as err:  # noqa: BLE001 - a figure must never sink the whole report
        LOGGER.warning("figure '%s' could not be drawn: %s", alt, err)
        return f'<p class="error">The figure “{esc(alt)}” could not be drawn: {esc(err)}</p>'


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = []
    for target, values in metrics.get("targets", {}).items():
        rows.append({"target": target, **{label: values.get(key)
                                          for key, label in _METRIC_COLUMNS}})
    corrected = metrics.get("bias_corrected")
    if corrected:
        rows.append({"target": f"age, bias-corrected ({corrected['method']}, "
                               f"{corrected['fit']}) — not accuracy",
                     **{label: corrected.get(key) for key, label in _METRIC_COLUMNS}})
    if not rows:
        return ('<p class="note">No known values: add the targets (e.g. <code>age</code>, '
                "<code>fluid_intelligence</code>) to <code>participants.tsv</code> to get "
                "accuracy metrics.</p>")
    return html_table(pd.DataFrame(rows), text_columns=["target"])


def _per_model_html(metrics: dict[str, Any]) -> str:
    """Metrics of each model's rows (predictions of several models, ``--allow-mixed-models``)."""
    from brainfm.group.models import short_hash

    models = metrics.get("models") or {}
    if not models:
        return ""
    rows = [{"model": short_hash(model), "participants": len(values["participants"]),
             "target": target, **{label: acc.get(key) for key, label in _METRIC_COLUMNS}}
            for model, values in models.items() for target, acc in values["targets"].items()]
    body = (f'<p class="warning">The predictions come from {len(models)} different models '
            "(<code>--allow-mixed-models</code>): the metrics above pool them; per model:</p>")
    return body + (html_table(pd.DataFrame(rows), text_columns=["model", "target"]) if rows
                   else '<p class="note">No model has rows with known values.</p>')


def _n_of_m(result: GroupResult) -> str:
    """``N of M``: participants with a prediction of the ``sub-<label>`` folders found."""
    n = result.metrics.get("n_participants_with_predictions", result.metrics["n_participants"])
    m = max(result.n_participant_folders, result.metrics["n_participants"])
    return f"{n} of {m}"


def _age_accuracy_html(metrics: dict[str, Any]) -> str:
    """Per-band accuracy and accuracy inside/outside the training range (``age_accuracy``)."""
    acc = metrics.get("age_accuracy")
    if not acc:
        return ""
    columns = (("n", "n"), ("mae", "MAE"), ("mean_error", "mean error (bias)"),
               ("pearson_r", "Pearson r"))
    rows = [{"known age": f"{b['band']} y", **{label: b.get(k) for k, label in columns}}
            for b in acc["bands"]]
    ranges = acc.get("training_range_accuracy") or {}
    for key, text in (("inside", "inside the training range"),
                      ("outside", "outside the training range")):
        if key in ranges:
            rows.append({"known age": text, **{label: ranges[key].get(k)
                                               for k, label in columns}})
    edges = ", ".join(f"{e:g}" for e in acc["band_edges"])
    known = [r for r in acc.get("training_range", {}).values() if r]
    span = "; ".join(f"{'' if lo is None else f'{lo:g}'}–{'' if hi is None else f'{hi:g}'} y"
                     for lo, hi in known) or "not recorded in the predictions sidecars"
    return (f'<p class="note">Age accuracy per band of known age (band edges {esc(edges)} y) '
            f"and against the model's training age range ({esc(span)}); r needs n ≥ 3.</p>"
            + html_table(pd.DataFrame(rows), text_columns=["known age"]))


def _summary_section(result: GroupResult, output_dir: Path, bids_dir: Path | None) -> Section:
    qc = result.run_qc
    n_inc = int((qc.get("status", pd.Series(dtype=str)) == "included").sum())
    n_exc = int((qc.get("status", pd.Series(dtype=str)) == "excluded").sum())
    methods = result.methods
    atlases = ", ".join(f"{info['name']} (atlas-{label})"
                        for label, info in methods["atlases"].items()) or "n/a"
    sha = ", ".join(s[:16] + "…" for s in methods["model_sha256"]) or "n/a"
    correction = result.correction
    corr_text = "none"
    if correction is not None:
        coefs = correction if "slope" in correction else correction.get("full_sample", {})
        corr_text = (f"{correction['method']} ({correction['fit']}, slope "
                     f"{format_value(coefs.get('slope'), 3)})")
    items = [
        ("Output dataset", f"<code>{esc(output_dir)}</code>"),
        ("Input dataset", f"<code>{esc(bids_dir)}</code>" if bids_dir else "n/a"),
        ("Participants with predictions", _n_of_m(result)),
        ("Sessions in the table", str(result.metrics["n_sessions"])),
        ("Runs included / excluded", f"{n_inc} / {n_exc}" if len(qc) else "no QC tables found"),
        ("Targets", esc(", ".join(t.replace("_", " ") for t in result.targets))),
        ("Atlases", esc(atlases)),
        ("Model (SHA-256)", esc(sha)),
        ("Brain-age bias correction", esc(corr_text)),
    ]
    body = "<dl class=\"summary\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) \
        + "</dl>"
    for note in result.notes:
        body += f'<p class="warning">{esc(note)}</p>'
    if result.left_out:
        body += (f"<h3>Left out ({len(result.left_out)})</h3>"
                 + html_table(pd.DataFrame(result.left_out), scroll=True,
                              text_columns=["participant_id", "session_id", "reason"]))
    if correction is not None:
        body += ('<p class="warning"><strong>Bias correction.</strong> '
                 f'{esc(correction["warning"])}</p>')
    return Section("summary", "Summary", body)


def _accuracy_section(result: GroupResult) -> Section:
    from brainfm.reports import figures

    table = result.table
    body = [_metrics_table(result.metrics), _per_model_html(result.metrics),
            '<p class="note">MAE and RMSE in the target\'s units; R² is 1 − SS<sub>res</sub>/'
            "SS<sub>tot</sub> of the predictions (not r²). Sessions count separately.</p>"]
    cards = result.methods.get("model_cards") or [{}]
    out_of_site = (cards[0] or {}).get("OutOfSiteAccuracy") or {}
    labels = (cards[0] or {}).get("TargetLabels") or {}
    for target in result.targets:
        body.append(f"<h3>{esc(labels.get(target) or target.replace('_', ' '))}</h3>")
        if target in out_of_site:
            acc = out_of_site[target]
            body.append(
                '<p class="note">The model\'s measured accuracy on sites it never saw '
                f"({accuracy_source(out_of_site)}): MAE {format_value(acc.get('mae'))}"
                f", r {format_value(acc.get('r'))}, 90 % interval coverage "
                f"{format_value(acc.get('coverage_90'))} (training-mean MAE "
                f"{format_value(acc.get('training_mean_mae'))}).</p>")
        if target in result.target_notes:
            body.append(f'<p class="warning">{esc(result.target_notes[target])}</p>')
        if target == "age":
            body.append(_age_accuracy_html(result.metrics))
        column = result.truth_columns.get(target, target)
        if column != target:
            body.append(f'<p class="note">Known {esc(target.replace("_", " "))}: column '
                        f"<code>{esc(column)}</code> of <code>participants.tsv</code> (the "
                        "model's training target).</p>")
        pred = table[f"{target}_pred"]
        if not pred.notna().any():
            body.append(f'<p class="warning">No {esc(target.replace("_", " "))} prediction to '
                        "show: every session's runs were excluded (see the quality-control "
                        "section for the reasons).</p>")
        elif target in table and table[target].notna().any():
            corrected = (table["age_pred_corrected"] if target == "age"
                         and "age_pred_corrected" in table else None)
            body.append(_safe_figure(
                f"{target}: predicted vs known", figures.plot_pred_vs_true, table[target], pred,
                table[f"{target}_pred_std"], target, result.metrics["targets"].get(target),
                corrected))
        else:
            body.append(_safe_figure(f"{target}: predictions", figures.plot_distribution,
                                     pred, target))
    return Section("accuracy", "Predictions and accuracy", "\n".join(body))


def _corrected_slope(metrics: dict[str, Any]) -> str:
    corrected = metrics.get("bias_corrected")
    if not corrected:
        return " (no bias correction)"
    return (f"; after the {esc(corrected['method'])} correction "
            f"{format_value(corrected.get('gap_slope_with_age'), 3)} (r = "
            f"{format_value(corrected.get('gap_r_with_age'))})")


def _gap_section(result: GroupResult) -> Section:
    from brainfm.reports import figures

    table = result.table
    if "age_gap" not in table or not table["age_gap"].notna().any():
        return Section("brain-age-gap", "Brain-age gap",
                       '<p class="note">No brain-age gap: it needs age predictions and known '
                       "ages (<code>age</code> in <code>participants.tsv</code>).</p>")
    gap = result.metrics.get("brain_age_gap", {})
    body = [f"<p>Brain-age gap (predicted − chronological age): mean "
            f"{format_value(gap.get('mean'))} years, SD {format_value(gap.get('std'))}, "
            f"correlation with age r = {format_value(gap.get('r_with_age'))} "
            f"(n = {gap.get('n', 0)}), slope on age {format_value(gap.get('slope_with_age'), 3)}"
            f"{_corrected_slope(result.metrics)}. A negative correlation with age is the "
            "usual regression to the mean of brain-age models.</p>"]
    corrected = table["age_gap_corrected"] if "age_gap_corrected" in table else None
    body.append(_safe_figure("brain-age gap vs age", figures.plot_gap_vs_age, table["age"],
                             table["age_gap"], corrected))
    if result.correction is not None:
        c = result.correction
        coefs = c if "slope" in c else c.get("full_sample", {})
        if c["fit"] == "cross-validated":
            fitted = f"out-of-fold ({c.get('n_folds')}-fold, grouped by participant)"
            note = " (full-sample fit, for reference)"
        else:
            fitted = f"on the reference sample {c.get('reference_file')}"
            note = ""
        body.append(
            f"<p>Correction <strong>{esc(c['method'])}</strong>: model <code>{esc(c['model'])}"
            f"</code>, fitted {esc(fitted)}; slope {format_value(coefs.get('slope'), 3)}, "
            f"intercept {format_value(coefs.get('intercept'), 3)}{note}. Coefficients: "
            "<code>group_biascorrection.json</code>.</p>"
            f'<p class="warning">{esc(c["warning"])}</p>')
    return Section("brain-age-gap", "Brain-age gap", "\n".join(body))


def _qc_section(result: GroupResult) -> Section:
    from brainfm.reports import figures

    table = result.table
    body = ["<p>Head motion (mean framewise displacement of the included runs) and the time "
            "left after censoring, against the predictions. A strong relation means the "
            "predictions may partly reflect motion or data quantity.</p>"]
    for target in result.targets:
        if target == "age" and "age_gap" in table:
            column, label = "age_gap", "brain-age gap (years)"
        elif target in table and table[target].notna().any():
            table = table.assign(**{f"_{target}_error": table[f"{target}_pred"] - table[target]})
            column, label = f"_{target}_error", f"{target.replace('_', ' ')} error"
        else:
            column, label = f"{target}_pred", f"predicted {target.replace('_', ' ')}"
        body.append(_safe_figure(f"QC vs {label}", figures.plot_qc_vs_predictions, table,
                                 column, label))
    qc = result.run_qc
    if len(qc) and "status" in qc:
        excluded = qc[qc["status"] == "excluded"]
        if len(excluded):
            cols = [c for c in ("participant_id", "session_id", "run", "retained_seconds",
                                "mean_fd", "reason") if c in excluded]
            body.append(f"<h3>Excluded runs ({len(excluded)})</h3>")
            body.append(html_table(excluded[cols], scroll=True))
        else:
            body.append('<p class="note">No run was excluded.</p>')
    return Section("qc", "Quality control", "\n".join(body))


def _expert_section(result: GroupResult, output_dir: Path) -> Section:
    from brainfm.group.read_outputs import find_atlas
    from brainfm.reports import figures

    if not result.expert_weights:
        return Section("experts", "RWMoE expert weights",
                       '<p class="note">No expert-weight tables '
                       "(<code>*_desc-rwmoe_expertweights.tsv</code>) in the output "
                       "dataset.</p>")
    body = ["<p>The random-walk mixture of experts routes every ROI to experts; the gate "
            "weights of a ROI (summing to 1) are averaged over windows at the participant "
            "level and over sessions here. Top: the expert with the largest mean weight in each "
            "parcel; below: each expert's mean weight painted into the atlas.</p>"]
    for label, weights in result.expert_weights.items():
        body.append(_expert_atlas_html(label, weights, find_atlas(output_dir, label), figures))
    return Section("experts", "RWMoE expert weights", "\n".join(body))


def _expert_atlas_html(label: str, weights: ExpertWeights, atlas: Any, figures: Any) -> str:
    mean = weights.mean
    agreement = float(np.nanmean(weights.dominant_fraction.to_numpy(dtype=float))) \
        if len(weights.dominant_fraction) else float("nan")
    parts = [f"<h3>atlas-{esc(label)}: {mean.shape[1]} experts, {mean.shape[0]} ROIs, "
             f"{weights.n_sessions} session(s)</h3>",
             f"<p class=\"note\">Consistency of the routing: on average over ROIs, "
             f"{format_value(100 * agreement, 0)}% of the sessions give a ROI its largest weight "
             "on the cohort's dominant expert for that ROI.</p>"]
    if atlas is None:
        parts.append(f'<p class="warning">The image of atlas <code>{esc(label)}</code> is '
                     f"missing from <code>{ATLAS_DATASET.as_posix()}/</code> in the output "
                     "dataset, so the weights cannot be "
                     "drawn on the brain; the table lists them instead.</p>")
        parts.append(html_table(mean.reset_index(), digits=3, scroll=True))
        return "\n".join(parts)
    image, table = atlas
    parts.append(_safe_figure(f"atlas-{label}: dominant expert", figures.plot_dominant_expert,
                              image, table, mean, f"atlas-{label}: dominant expert"))
    parts.append(_safe_figure(f"atlas-{label}: mean expert weights",
                              figures.plot_expert_weight_maps, image, table, mean))
    return "\n".join(parts)


def _participants_section(result: GroupResult) -> Section:
    body = ("<p>The rows of <code>group_predictions.tsv</code> (predictions "
            "<code>&lt;target&gt;_pred</code>, known values under the plain target name).</p>"
            + html_table(result.table, scroll=True, text_columns=["participant_id",
                                                                  "session_id"]))
    return Section("participants", "Participants", body)


def _join(values: list[Any], unit: str = "") -> str:
    return ", ".join(f"{v}{unit}" for v in values) if values else "n/a"


def _join_names(names: list[str], limit: int) -> str:
    """Names joined by commas, whole names only, ``and N more`` past ``limit`` characters."""
    shown: list[str] = []
    for name in names:
        if shown and len(", ".join([*shown, name])) > limit:
            return ", ".join(shown) + f" and {len(names) - len(shown)} more"
        shown.append(name)
    return ", ".join(shown)


def _card_summary(card: Any) -> str:
    if not isinstance(card, dict):
        return f"<p>{esc(card)}</p>"
    rows = []
    for key, value in card.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, list):
            names = [str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in value]
            text = _join_names(names, 300)
        elif isinstance(value, dict):
            text = "; ".join(
                f"{k}: {_join_names([str(x) for x in v], 200) if isinstance(v, list) else v}"
                for k, v in value.items())
        else:
            text = str(value)
        if len(text) > 600:  # cut at a separator, never inside a name
            cut = max(text.rfind("; ", 0, 597), text.rfind(", ", 0, 597))
            text = text[:cut if cut > 0 else 597] + " …"
        label = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(key)).replace("_", " ")
        rows.append(f"<dt>{esc(label)}</dt><dd>{esc(text)}</dd>")
    return f'<dl class="summary">{"".join(rows)}</dl>'


#: The network members, as the methods text names them.
NETWORK = ("BrainFM networks (local masked autoencoder encoder, random-walk mixture of "
           "experts, selective state-space predictor) on sliding windows of each session's ROI "
           "time series, averaged over windows and runs")
LINEAR = "ridge regression on the session's whole-run Fisher-z connectivity"


def model_sentence(weights: dict[str, float] | None, targets: list[str]) -> str:
    """How the predictions were made, naming only the members that contribute (HTML-escaped).

    Parameters
    ----------
    weights : dict or None
        Target to the network members' weight in the ensemble
        (:func:`~brainfm.group.models.network_weights`); ``None``: a single network, or not
        recorded.
    targets : list of str
        Predicted targets.

    Returns
    -------
    str
        One or more sentences.
    """
    if weights is None:
        return esc("Predictions were made by the brainfm model named by the model card below "
                   "(how its members combine is not recorded in the predictions sidecars).")
    parts = []
    for target in targets:
        name = target.replace("_", " ")
        w = weights.get(target)
        if w is None:
            continue
        if w <= 0:
            parts.append(f"{name} by {LINEAR} alone (network weight 0: the networks do not "
                         "contribute)")
        elif w >= 1:
            parts.append(f"{name} by {NETWORK} alone")
        else:
            parts.append(f"{name} by {LINEAR} (weight {1 - w:.2g}) stacked with {NETWORK} "
                         f"(weight {w:.2g})")
    if not parts:
        return esc("Predictions were made by the brainfm ensemble named by the model card below.")
    return esc("Predictions were made by the brainfm ensemble: " + "; ".join(parts) + ".")


def methods_paragraph(result: GroupResult) -> str:
    """The methods text (HTML): denoising, atlas, model, bias correction, metrics, versions.

    Parameters
    ----------
    result : GroupResult
        The group-level result (its ``methods`` gathered from the sidecars).

    Returns
    -------
    str
        HTML paragraphs.
    """
    from brainfm.group.models import network_weights

    m = result.methods
    versions = software_versions()
    bandpass = ", ".join(f"{lo if lo else 'none'}–{hi if hi else 'none'} Hz"
                         for lo, hi in m["bandpass"]) or "n/a"
    atlases = "; ".join(f"the {info['name']} atlas ({info['citation'].rstrip('.')})"
                        if info["citation"] else f"the {info['name']} atlas"
                        for info in m["atlases"].values()) or "an atlas"
    fd = _join([t for t in m["fd_thresholds"] if t], " mm")
    text = [
        f"<p>Preprocessed resting-state BOLD (fMRIPrep) was parcellated and denoised with "
        f"brainfm {esc(versions['brainfm'])} (nilearn {esc(versions['nilearn'])}). ROI mean "
        f"signals were extracted from the parcels of {esc(atlases)}. Denoising was performed on "
        f"the ROI signals with <code>nilearn.signal.clean</code>: strategy "
        f"<code>{esc(_join(m['strategies']))}</code> "
        f"({esc(_join(m['n_regressors']))} nuisance regressors, including trends), "
        f"Butterworth band-pass {esc(bandpass)}, and censoring of volumes with framewise "
        f"displacement above {esc(fd if fd != 'n/a' else 'no threshold')}; runs with too little "
        f"time left were excluded. Repetition times: {esc(_join(m['repetition_times'], ' s'))}."
        "</p>",
        f"<p>{model_sentence(network_weights(m), result.targets)} Model SHA-256: "
        f"{esc(_join(m['model_sha256']))}.</p>",
    ]
    if result.correction is not None:
        c = result.correction
        fit = (f"out-of-fold ({c.get('n_folds')}-fold cross-validation within the cohort, "
               "participants kept whole)" if c["fit"] == "cross-validated"
               else f"on a reference sample ({len(c.get('reference_participants', []))} "
                    "participants)")
        text.append(f"<p>The brain-age gap (predicted − chronological age) was corrected for "
                    f"its dependence on age with the {esc(c['method'])} method "
                    f"(<code>{esc(c['model'])}</code>; {esc(c['reference'])}), fitted {fit}. "
                    f"{esc(BIAS_NOTE)}</p>")
    else:
        text.append("<p>The brain-age gap is the predicted minus the chronological age, "
                    "without bias correction.</p>")
    text.append("<p>Accuracy: mean absolute error (MAE), Pearson correlation r and the "
                "coefficient of determination R² = 1 − SS<sub>res</sub>/SS<sub>tot</sub>, over "
                "participant sessions with a known value. Software: "
                + esc(", ".join(f"{k} {v}" for k, v in versions.items())) + ".</p>")
    for card in m["model_cards"]:
        text.append("<h3>Model card</h3>" + _card_summary(card))
    return "\n".join(text)


#: One-sentence reminder in the methods paragraph whenever a correction is used.
BIAS_NOTE = ("Corrected values use the chronological age and are not measures of prediction "
             "accuracy.")


def render_group_report(result: GroupResult, output_dir: str | Path,
                        bids_dir: str | Path | None = None) -> str:
    """Render ``group_report.html`` (returned as text; the caller writes it atomically).

    Parameters
    ----------
    result : GroupResult
        From :func:`brainfm.group.result.compute_group`.
    output_dir : path
        The output dataset (atlases for the expert maps).
    bids_dir : path, optional
        The input dataset (named in the summary).

    Returns
    -------
    str
        The self-contained HTML document.
    """
    output_dir = Path(output_dir)
    sections = [
        _summary_section(result, output_dir, Path(bids_dir) if bids_dir else None),
        _accuracy_section(result),
        _gap_section(result),
        _qc_section(result),
        _expert_section(result, output_dir),
        _participants_section(result),
        Section("methods", "Methods", methods_paragraph(result)),
    ]
    return render_page("brainfm group report",
                       f"{_n_of_m(result)} participants with predictions, "
                       f"{result.metrics['n_sessions']} sessions — {output_dir}", sections)
