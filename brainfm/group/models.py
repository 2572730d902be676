"""Which model made each prediction (one model per cohort, unless mixing is allowed), and
how its members combine."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from brainfm.errors import UsageError
from brainfm.group.read_outputs import NA

LOGGER = logging.getLogger(__name__)

#: The option that lets the group level aggregate predictions of several models.
ALLOW_OPTION = "--allow-mixed-models"


def participants_by_model(table: pd.DataFrame) -> dict[str, list[str]]:
    """The participants whose predictions each model made.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``participant_id``, ``model``).

    Returns
    -------
    dict
        Model hash (``'n/a'`` where a sidecar names none) to the sorted participant IDs, in
        order of the first participant.
    """
    if "model" not in table or table.empty:
        return {}
    models = table["model"].fillna(NA).astype(str)
    groups = {m: sorted(set(table.loc[models == m, "participant_id"])) for m in models.unique()}
    return dict(sorted(groups.items(), key=lambda kv: kv[1][0]))


def short_hash(model: str) -> str:
    """The first 12 characters of a model hash, for messages (``'n/a'`` as is)."""
    return model if model == NA or len(model) <= 12 else f"{model[:12]}…"


def check_models(table: pd.DataFrame, output_dir: str | Path, allow_mixed: bool) -> list[str]:
    """Refuse a cohort whose predictions come from more than one model, unless allowed.

    Parameters
    ----------
    table : pandas.DataFrame
        The group table (``participant_id``, ``model``).
    output_dir : path
        The output dataset, for the message.
    allow_mixed : bool
        ``--allow-mixed-models``: accept several models (metrics are then per model).

    Returns
    -------
    list of str
        The models, in order of their first participant (several: one warning line).

    Raises
    ------
    UsageError
        Several models without ``allow_mixed``: one line naming each model's participants and
        the option (exit 64).
    """
    groups = participants_by_model(table)
    if len(groups) < 2:
        return list(groups)
    parts = "; ".join(f"model {short_hash(m)}: {', '.join(ids[:10])}"
                      f"{f' and {len(ids) - 10} more' if len(ids) > 10 else ''}"
                      for m, ids in groups.items())
    if allow_mixed:
        LOGGER.warning("the predictions in %s come from %d different models (%s); "
                       "%s: metrics are computed per model", output_dir, len(groups), parts,
                       ALLOW_OPTION)
    else:
        raise UsageError(
            f"the predictions in {output_dir} come from {len(groups)} different models "
            f"({parts}); rerun the participant level of some participants with the same "
            f"--model, or pass {ALLOW_OPTION} to compute the metrics per model")
    return list(groups)


def _packaged_card() -> dict[str, Any]:
    path = Path(str(resources.files("brainfm.data") / "models" / "default" / "model_card.json"))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def network_weights(methods: dict[str, Any]) -> dict[str, float] | None:
    """Per target, the weight of the network members in the ensemble that made the predictions.

    Read from the sidecars' ``ModelCard.NetworkWeights``; older sidecars lack it, and then the
    packaged model's card gives it when the model hash is the packaged model's.

    Parameters
    ----------
    methods : dict
        From :func:`~brainfm.group.read_outputs.collect_methods_info` (``model_cards``,
        ``model_sha256``).

    Returns
    -------
    dict or None
        Target to weight (0: the target comes from the linear members alone); ``None`` when
        unknown (several models, or neither source).
    """
    cards = [c for c in methods.get("model_cards") or [] if isinstance(c, dict)]
    recorded = [c["NetworkWeights"] for c in cards if isinstance(c.get("NetworkWeights"), dict)]
    if len(recorded) == 1 and len(methods.get("model_sha256") or []) <= 1:
        return {k: float(v) for k, v in recorded[0].items()}
    hashes = methods.get("model_sha256") or []
    card = _packaged_card()
    if len(hashes) == 1 and hashes[0] == card.get("weights_sha256"):
        targets = (card.get("ensemble") or {}).get("targets") or []
        return {t["name"]: float(t["network_weight"]) for t in targets
                if "network_weight" in t} or None
    return None
