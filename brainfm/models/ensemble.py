"""The shipped model: bagged BrainFM networks stacked with linear members on connectivity.

A :class:`BrainFMEnsemble` holds

- ``members``: M :class:`~brainfm.models.model.BrainFM` networks (LMAE encoder, RWMoE, SSM),
  each fine-tuned with other sites held out for early stopping (see
  :mod:`brainfm.models.stacking`); they predict the targets in a transformed space (log age);
- ``linear``: per target a ridge regression on the subject's whole-session Fisher-z
  connectivity, with the rows normalised as the correlation kernel does (kernel ridge with a
  correlation kernel, He et al. 2020, kept in primal form so that no training subject is stored).

For each target the card gives how they combine (``network_weight``; 0 for a target without
network members), the transform, the calibrated interval half-widths (conformal quantiles of
held-out-site residuals, in the transformed space) and the out-of-distribution threshold.
Everything lives in one safetensors file (members under ``members.<m>.``, linear weights under
``linear.<target>.``) described by the card's ``ensemble`` section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from brainfm.derivatives import reliability_columns
from brainfm.errors import InputError
from brainfm.models.baselines import connectivity_features, correlation_features
from brainfm.models.calibration import (
    apply_recalibration,
    expected_mae,
    in_reliable_range,
    interval_offsets,
)
from brainfm.models.model import BrainFM, BrainFMConfig
from brainfm.models.predict import predict_subject

#: Target transforms: name -> (forward, inverse).
TRANSFORMS = {
    "identity": (lambda v: np.asarray(v, dtype=np.float64), lambda v: np.asarray(v, np.float64)),
    "log": (lambda v: np.log(np.asarray(v, dtype=np.float64)),
            lambda v: np.exp(np.asarray(v, dtype=np.float64))),
}
#: Central interval levels written with every prediction.
INTERVAL_LEVELS = (0.5, 0.9)
_Z90 = 1.6448536269514722

LOGGER = logging.getLogger(__name__)


def interval_columns(name: str) -> list[str]:
    """Names of a target's interval columns (``age_lower90``, ``age_upper90``, ...)."""
    return [f"{name}_{side}{int(round(100 * level))}"
            for level in INTERVAL_LEVELS for side in ("lower", "upper")]


def session_edges(conn: np.ndarray) -> np.ndarray:
    """The linear members' features of one session: normalised Fisher-z upper triangle.

    Parameters
    ----------
    conn : ndarray of shape (N, N)
        Whole-session Fisher-z connectivity (0 for masked ROIs).

    Returns
    -------
    ndarray of shape (N (N - 1) / 2,)
        Edges centred and scaled to unit norm (see ``correlation_features``).
    """
    return correlation_features(connectivity_features([conn]))[0]


def similarity_to_center(edges: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Cosine similarity of rows of unit-norm edges with a cohort's mean edge vector.

    Parameters
    ----------
    edges : ndarray of shape (n, p) or (p,)
        Normalised edges (:func:`session_edges`).
    center : ndarray of shape (p,)
        The training cohort's mean of those edges.

    Returns
    -------
    ndarray of shape (n,)
        The similarities (the out-of-distribution score).
    """
    norm = float(np.linalg.norm(center))
    return np.atleast_2d(edges) @ center / (norm if norm > 0 else 1.0)


class LinearMember(nn.Module):
    """Ridge regression on normalised connectivity edges, in primal form.

    Parameters
    ----------
    n_features : int
        Number of edges.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("center", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros(1, dtype=torch.float64))

    def set(self, weight: np.ndarray, center: np.ndarray, intercept: float) -> None:
        """Load fitted values (see :func:`~brainfm.models.baselines.fit_primal_ridge`)."""
        self.weight.copy_(torch.as_tensor(weight, dtype=torch.float64))
        self.center.copy_(torch.as_tensor(center, dtype=torch.float64))
        self.intercept.fill_(float(intercept))

    def predict(self, edges: np.ndarray) -> np.ndarray:
        """Predictions (transformed space) for rows of normalised edges, float64."""
        w = self.weight.cpu().numpy()
        c = self.center.cpu().numpy()
        return (np.atleast_2d(edges) - c) @ w + float(self.intercept.cpu().numpy()[0])

    def similarity(self, edges: np.ndarray) -> np.ndarray:
        """Cosine similarity of normalised edges with the training cohort's mean pattern."""
        return similarity_to_center(edges, self.center.cpu().numpy())


class BrainFMEnsemble(nn.Module):
    """Network members and linear members, combined as the card's ``ensemble`` section says.

    Parameters
    ----------
    spec : dict
        The card's ``ensemble`` section: ``members`` (each with its ``config``), ``targets``
        (each with ``name``, ``transform``, ``network_weight``, ``interval_halfwidth`` ...),
        ``n_edges`` and ``ood``.
    """

    is_ensemble = True

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        configs = [BrainFMConfig.from_dict(m["config"]) for m in spec["members"]]
        self.members = nn.ModuleList(BrainFM(c) for c in configs)
        self.linear = nn.ModuleDict({t["name"]: LinearMember(int(spec["n_edges"]))
                                     for t in spec["targets"]})
        self.config = configs[0] if configs else None

    @property
    def target_names(self) -> list[str]:
        """Targets, in card order."""
        return [t["name"] for t in self.spec["targets"]]

    def member_card(self, card: dict[str, Any], m: int) -> dict[str, Any]:
        """The prediction card of network member ``m`` (its targets in transformed units)."""
        member = self.spec["members"][m]
        return {**card, "targets": member["targets"], "window": member["config"]["window"]}

    def combine(self, target: dict[str, Any], network: float | None, linear: float
                ) -> dict[str, float]:
        """Stacked prediction and calibrated intervals of one target (raw units).

        Parameters
        ----------
        target : dict
            The target's entry of the ``ensemble`` section.
        network : float or None
            Mean of the network members (transformed space); None when it has none.
        linear : float
            The linear member's prediction (transformed space).

        Returns
        -------
        dict
            ``<name>``, ``<name>_std`` and the interval columns (:func:`interval_columns`).
        """
        name = target["name"]
        forward, inverse = TRANSFORMS[target["transform"]]
        w = float(target["network_weight"]) if network is not None else 0.0
        value = w * (network if network is not None else 0.0) + (1.0 - w) * linear
        raw = float(apply_recalibration(inverse(value), target.get("recalibration")))
        value = float(forward(raw))
        out: dict[str, Any] = {name: raw}
        bins = target.get("interval_bins")
        for level in INTERVAL_LEVELS:
            if bins:  # Mondrian: asymmetric offsets of the bin of the prediction
                lower, upper = interval_offsets(bins, raw, level)
            else:  # cards before per-bin calibration: one symmetric half-width
                upper = float(target["interval_halfwidth"][f"{level:g}"])
                lower = -upper
            pct = int(round(100 * level))
            out[f"{name}_lower{pct}"] = float(inverse(value + lower))
            out[f"{name}_upper{pct}"] = float(inverse(value + upper))
        # Gaussian-equivalent spread of the calibrated 90 % interval
        out[f"{name}_std"] = (out[f"{name}_upper90"] - out[f"{name}_lower90"]) / (2 * _Z90)
        if "reliable" in target:
            reliable_col, mae_col = reliability_columns(name)
            out[reliable_col] = in_reliable_range(target["reliable"], raw)
            out[mae_col] = expected_mae(target["reliable"], raw)
        return out

    @torch.no_grad()
    def predict_session(self, card: dict[str, Any], session: Any, stride: int | None = None,
                        batch_size: int = 64, device: str | torch.device | None = None
                        ) -> dict[str, Any]:
        """Predict one loaded session (see :func:`brainfm.models.predict.predict_subject`).

        Returns
        -------
        dict
            As :func:`~brainfm.models.predict.predict_subject`, plus ``components`` (per
            target: ``network``, ``linear`` and ``network_members`` in raw units),
            ``ood`` (bool) and ``ood_similarity``.
        """
        member_preds, gates, window_preds, n_windows = [], [], [], 0
        for m, member in enumerate(self.members):
            res = predict_subject(member, self.member_card(card, m), session, stride=stride,
                                  batch_size=batch_size, device=device)
            member_preds.append(res["predictions"])
            window_preds.append(res["window_predictions"])
            n_windows = res["n_windows"]
            if res["gate_weights"] is not None:
                gates.append(res["gate_weights"])
        edges = session_edges(session.conn)
        predictions: dict[str, float] = {}
        components: dict[str, dict[str, Any]] = {}
        uncertainty: dict[str, dict[str, float]] = {}
        for target in self.spec["targets"]:
            name = target["name"]
            _, inverse = TRANSFORMS[target["transform"]]
            linear = float(self.linear[name].predict(edges)[0])
            values = [p[name] for p in member_preds if name in p]
            network = float(np.mean(values)) if values else None
            predictions.update(self.combine(target, network, linear))
            components[name] = {
                "linear": float(inverse(linear)),
                "network": None if network is None else float(inverse(network)),
                "network_members": [float(inverse(v)) for v in values],
            }
            spread = float(np.std([inverse(v) for v in values])) if len(values) > 1 else 0.0
            uncertainty[name] = {"member_std": spread}
        window = int(card.get("window") or 0)
        if window and max(r.shape[1] for r in session.runs) < window:
            # shorter than one model window: the windows are padded, the prediction is not
            # what the card's out-of-fold evidence describes
            LOGGER.warning(
                "%s: its longest run has %d samples, shorter than the model window (%d "
                "samples at the model's sampling rate): its predictions are marked "
                "unreliable (<target>_reliable false); use runs of at least one window",
                session.participant_id, max(r.shape[1] for r in session.runs), window)
            for target in self.spec["targets"]:
                if "reliable" in target:
                    predictions[reliability_columns(target["name"])[0]] = False
        ood = self.spec.get("ood") or {}
        similarity = float(next(iter(self.linear.values())).similarity(edges)[0])
        threshold = ood.get("similarity_threshold")
        is_ood = bool(threshold is not None and similarity < float(threshold))
        for name, (low, high) in (ood.get("target_range") or {}).items():
            if name in predictions and not low <= predictions[name] <= high:
                is_ood = True
        return {
            "participant_id": session.participant_id,
            "session_id": session.session_id,
            "predictions": predictions,
            "uncertainty": uncertainty,
            "components": components,
            "ood": is_ood,
            "ood_similarity": similarity,
            "n_windows": int(n_windows),
            "n_runs": len(session.runs),
            "gate_weights": np.mean(gates, axis=0) if gates else None,
            "roi_mask": session.roi_mask.copy(),
            "roi_names": list(session.roi_names),
            "window_predictions": np.mean(window_preds, axis=0) if window_preds else None,
        }


def check_spec(spec: Any, source: str) -> None:
    """Refuse an ``ensemble`` section that cannot describe a model (before any allocation).

    Parameters
    ----------
    spec : object
        The card's ``ensemble`` section.
    source : str
        The card's path, for the message.

    Raises
    ------
    InputError
        A missing or malformed field, named with the card.
    """
    def bad(why: str) -> InputError:
        return InputError(f"model card {source}: the ensemble section {why}")

    if not isinstance(spec, dict):
        raise bad("is not a JSON object")
    members, targets = spec.get("members"), spec.get("targets")
    if not isinstance(members, list) or not all(isinstance(m, dict) and isinstance(
            m.get("config"), dict) for m in members):
        raise bad("has no valid list of members with their config")
    if not isinstance(targets, list) or not targets:
        raise bad("lists no targets")
    n_edges = spec.get("n_edges")
    if not isinstance(n_edges, int) or not 0 < n_edges <= 2_000_000:
        raise bad(f"has n_edges {n_edges!r}; expected a positive count of edges")
    for t in targets:
        if not isinstance(t, dict) or t.get("transform") not in TRANSFORMS:
            raise bad(f"has a target without a known transform ({sorted(TRANSFORMS)})")
        halves = t.get("interval_halfwidth")
        if not isinstance(halves, dict) or any(f"{lv:g}" not in halves for lv in INTERVAL_LEVELS):
            raise bad(f"target {t.get('name')!r} has no interval_halfwidth for "
                      f"{list(INTERVAL_LEVELS)}")


def member_targets(names: Sequence[str], mean: np.ndarray, std: np.ndarray
                   ) -> list[dict[str, Any]]:
    """Card ``targets`` of a network member (scaling of its transformed targets)."""
    return [{"name": n, "column": n, "mean": float(mean[k]), "std": float(std[k])}
            for k, n in enumerate(names)]
