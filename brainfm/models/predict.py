"""Prediction for one participant's session: sliding windows over all runs, averaged.

:func:`predict_subject` is the reusable entry point (the participant workflow's predict node and
``brainfm-train predict`` both call it). For every window of every run the model gives a Gaussian
``N(mean_w, var_w)`` per target (standardised units). The prediction is the mean of ``mean_w`` over
windows, restored to raw units with the model card's target scaling; its uncertainty combines the
head's predicted variance and the spread over windows (law of total variance of the mixture of the
window Gaussians)::

    std^2 = mean_w(var_w) + var_w(mean_w)          (then times the target's training std^2)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainfm.errors import InputError
from brainfm.models.sessions import SessionData, load_session, session_from_arrays
from brainfm.models.timeseries import DEFAULT_SAMPLING_RATE_HZ, RunFile
from brainfm.models.windows import default_stride, sliding_windows

RunsLike = SessionData | Sequence[RunFile | Path | str | tuple[np.ndarray, float]]


def card_targets(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Target descriptions of a model card.

    Parameters
    ----------
    card : dict
        Model card (``targets``: list of ``{"name", "column", "mean", "std"}``).

    Returns
    -------
    list of dict
        The targets, in model output order.

    Raises
    ------
    InputError
        The card has no targets (e.g. a pretraining checkpoint).
    """
    targets = card.get("targets") or []
    if not targets:
        raise InputError(
            "the model card lists no targets (a pretraining checkpoint?); "
            "use a fine-tuned model for prediction"
        )
    return list(targets)


def session_for_model(runs: RunsLike, card: dict[str, Any]) -> SessionData:
    """Load or wrap runs with the model card's sampling rate and ROI names.

    Parameters
    ----------
    runs : SessionData or sequence
        A loaded session; or time-series TSV paths /
        :class:`~brainfm.models.timeseries.RunFile` of one session; or
        ``(data, repetition_time)`` tuples with ``data`` of shape (T, N) in the card's ROI order.
    card : dict
        Model card (``roi_names``, ``sampling_rate_hz``).

    Returns
    -------
    SessionData
        The session, checked against the card.

    Raises
    ------
    InputError
        Runs that do not match the model's ROIs or sampling rate.
    """
    names = list(card.get("roi_names") or [])
    rate = float(card.get("sampling_rate_hz", DEFAULT_SAMPLING_RATE_HZ))
    if isinstance(runs, SessionData):
        session = runs
        if names and session.roi_names != names:
            raise InputError(
                f"sub-{session.participant_id}: ROI names differ from the model's "
                f"({session.n_rois} vs {len(names)}); use time series of the model's atlas"
            )
        if abs(session.sampling_rate_hz - rate) > 1e-9:
            raise InputError(
                f"sub-{session.participant_id}: session sampled at {session.sampling_rate_hz} Hz, "
                f"the model expects {rate} Hz"
            )
        return session
    runs = list(runs)
    if not runs:
        raise InputError("no runs given for prediction")
    if all(isinstance(r, tuple) for r in runs):
        if not names:
            raise InputError("the model card has no roi_names; pass time-series files instead")
        return session_from_arrays(runs, names, rate)  # type: ignore[arg-type]
    if any(isinstance(r, tuple) for r in runs):
        raise InputError("pass either time-series files or (data, repetition_time) tuples")
    return load_session(runs, rate, names or None)  # type: ignore[arg-type]


@torch.no_grad()
def predict_subject(
    model: torch.nn.Module,
    card: dict[str, Any],
    runs: RunsLike,
    stride: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Predict the targets of one participant's session from all its runs.

    Parameters
    ----------
    model : torch.nn.Module
        A fine-tuned :class:`~brainfm.models.model.BrainFM` (from ``load_checkpoint``); it is put
        in eval mode.
    card : dict
        Its model card (``targets`` with ``mean``/``std``, ``window``, ``sampling_rate_hz``,
        ``roi_names``; optional ``prediction.stride``).
    runs : SessionData or sequence
        The session's runs: time-series TSV paths (each with its JSON sidecar), ``RunFile``
        objects, ``(data (T, N), repetition_time_s)`` tuples in the card's ROI order, or a
        :class:`~brainfm.models.sessions.SessionData` already loaded at the card's sampling rate.
    stride : int, optional
        Step between windows in samples (default: the card's ``prediction.stride``, else
        ``window // 2``).
    batch_size : int, optional
        Windows per forward pass.
    device : str or torch.device, optional
        Where to run (default: the model's device).

    Returns
    -------
    dict
        ``predictions``: ``{"<name>": float, "<name>_std": float, ...}`` in raw units (row-ready,
        card order); ``uncertainty``: ``{"<name>": {"model_std", "window_std"}}`` (the two parts
        of the std); ``n_windows``, ``n_runs``; ``gate_weights``: ndarray (N, E), the mean
        RWMoE routing weights of each ROI over windows (0 for masked ROIs; None when the model
        gives none); ``roi_mask`` (N,) bool; ``roi_names``; ``window_predictions``: ndarray
        (n_windows, K) raw units.

    Raises
    ------
    InputError
        Runs incompatible with the model, or a card without targets.
    """
    targets = card_targets(card)
    session = session_for_model(runs, card)
    if getattr(model, "is_ensemble", False):  # BrainFMEnsemble: members + linear members
        return model.predict_session(card, session, stride=stride, batch_size=batch_size,
                                     device=device)
    window = int(card.get("window") or getattr(getattr(model, "config", None), "window", 0))
    if window <= 0:
        raise InputError("the model card gives no window length")
    if stride is None:
        stride = (card.get("prediction") or {}).get("stride")
    windows = sliding_windows(session.runs, window, default_stride(window, stride))
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    model.eval()
    mask = torch.from_numpy(session.roi_mask.astype(bool)).to(device)
    conn = torch.from_numpy(session.conn.astype(np.float32)).to(device)
    means, variances, gates = [], [], []
    for start in range(0, windows.shape[0], batch_size):
        x = torch.from_numpy(windows[start : start + batch_size]).to(device)
        b = x.shape[0]
        out = model(x, mask.expand(b, -1), conn.expand(b, -1, -1))
        means.append(out.mean.float().cpu().numpy())
        variances.append(torch.exp(out.logvar.float()).cpu().numpy())
        gw = getattr(out, "gate_weights", None)
        if gw is not None:
            gates.append(gw.float().sum(dim=0).cpu().numpy())
    mean_w = np.concatenate(means).astype(np.float64)
    var_w = np.concatenate(variances).astype(np.float64)
    scale = np.array([float(t["std"]) for t in targets])
    shift = np.array([float(t["mean"]) for t in targets])
    if mean_w.shape[1] != len(targets):
        raise InputError(
            f"model gives {mean_w.shape[1]} outputs but the card lists {len(targets)} targets"
        )
    model_var = var_w.mean(axis=0)
    window_var = mean_w.var(axis=0) if mean_w.shape[0] > 1 else np.zeros(len(targets))
    pred = mean_w.mean(axis=0) * scale + shift
    model_std = np.sqrt(model_var) * scale
    window_std = np.sqrt(window_var) * scale
    total_std = np.sqrt(model_var + window_var) * scale
    predictions: dict[str, float] = {}
    uncertainty: dict[str, dict[str, float]] = {}
    for k, t in enumerate(targets):
        predictions[t["name"]] = float(pred[k])
        predictions[f"{t['name']}_std"] = float(total_std[k])
        uncertainty[t["name"]] = {"model_std": float(model_std[k]),
                                  "window_std": float(window_std[k])}
    gate_weights = None
    if gates:
        gate_weights = np.sum(gates, axis=0) / windows.shape[0]
        gate_weights[~session.roi_mask] = 0.0
    return {
        "participant_id": session.participant_id,
        "session_id": session.session_id,
        "predictions": predictions,
        "uncertainty": uncertainty,
        "n_windows": int(windows.shape[0]),
        "n_runs": len(session.runs),
        "gate_weights": gate_weights,
        "roi_mask": session.roi_mask.copy(),
        "roi_names": list(session.roi_names),
        "window_predictions": mean_w * scale + shift,
    }
