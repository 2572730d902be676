"""The options of ``brainfm-train``: :class:`TrainOptions` (training, data and model)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from brainfm.models.model import BrainFMConfig
from brainfm.models.timeseries import DEFAULT_SAMPLING_RATE_HZ

#: Head name of pretraining checkpoints (BrainFM needs one target; its head is not trained and
#: the card lists no targets, so such a checkpoint cannot be used for prediction).
PRETRAIN_PLACEHOLDER_TARGET = "untrained"


#: ``--config`` value that names :data:`RECOMMENDED_CONFIG`.
RECOMMENDED_CONFIG_NAME = "recommended"

#: The recommended training configuration, shipped in the package: the options of the accuracy
#: benchmark and of the default model (``brainfm-train --config recommended``).
RECOMMENDED_CONFIG = Path(str(files("brainfm.data") / "configs" / "brainfm.yaml"))


#: BrainFMConfig fields that the data or the task decide (not user model options).
_DERIVED_MODEL_KEYS = {"n_rois", "targets"}


def model_option_names() -> list[str]:
    """Names of the :class:`~brainfm.models.model.BrainFMConfig` fields a user may set.

    Returns
    -------
    list of str
        Field names except ``n_rois`` and ``targets``.
    """
    return [f.name for f in dataclasses.fields(BrainFMConfig) if f.name not in _DERIVED_MODEL_KEYS]


@dataclass
class TrainOptions:
    """Options of a training run (the keys of a ``--config`` file).

    Attributes
    ----------
    atlas : str
        Atlas of the time series: the ``atlas-`` label of the file names or a built-in atlas
        name (``Schaefer2018-200`` finds ``atlas-Schaefer200``,
        :func:`brainfm.atlases.atlas_label`).
    sampling_rate_hz : float
        Common sampling rate of the model inputs.
    epochs : int
        Maximum epochs (one random window per session and draw each epoch).
    pretrain_epochs : int or None
        Epochs of the LMAE pretraining inside each ``cv`` fold (default: ``epochs``; 0 skips).
    batch_size : int
        Windows per optimisation step (over all processes).
    lr : float
        Peak learning rate of AdamW.
    weight_decay : float
        AdamW weight decay.
    warmup : float
        Fraction of the steps with a linear warm-up before the cosine decay.
    patience : int
        Epochs without improvement of the inner validation score before stopping.
    val_fraction : float
        Fraction of subjects held out for inner validation (early stopping, card metrics).
    draws_per_session : int
        Random windows per session in an epoch.
    stride : int or None
        Sliding-window step for validation/prediction (default ``window // 2``).
    seed : int
        Seed of everything random.
    device : str
        ``cpu`` or ``cuda`` (``cuda:N``).
    threads : int or None
        ``torch.set_num_threads`` (default: torch's choice).
    grad_clip : float
        Gradient-norm clipping (0 disables).
    model : dict
        Overrides of :class:`~brainfm.models.model.BrainFMConfig` fields (``window``,
        ``d_model``, ``n_experts`` ...); unset fields keep the model's defaults.
    """

    atlas: str = "CC200"
    sampling_rate_hz: float = DEFAULT_SAMPLING_RATE_HZ
    epochs: int = 40
    pretrain_epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    patience: int = 8
    val_fraction: float = 0.15
    draws_per_session: int = 1
    stride: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    grad_clip: float = 1.0
    model: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict copy (for model cards and logs).

        Returns
        -------
        dict
            All options.
        """
        return dataclasses.asdict(self)
