"""The training loop (:func:`fit`) with its objectives, subject splits and metrics."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from brainfm.errors import ProcessingError, UsageError
from brainfm.models.model import BrainFM, BrainFMConfig, gaussian_nll
from brainfm.models.options import TrainOptions, model_option_names
from brainfm.models.runtime import DistContext
from brainfm.models.windows import WindowDataset

LOGGER = logging.getLogger(__name__)


def make_config(
    n_rois: int,
    targets: Sequence[str],
    opts: TrainOptions,
    base: BrainFMConfig | None = None,
) -> BrainFMConfig:
    """Model configuration from defaults (or ``base``), the user's overrides and the data.

    Parameters
    ----------
    n_rois : int
        Number of ROIs of the atlas.
    targets : sequence of str
        Target names (empty for pretraining).
    opts : TrainOptions
        ``opts.model`` holds the overrides.
    base : BrainFMConfig, optional
        Starting point (the pretrained model's configuration when fine-tuning from ``--init``).

    Returns
    -------
    BrainFMConfig
        The configuration.

    Raises
    ------
    UsageError
        Unknown model option.
    """
    allowed = set(model_option_names())
    unknown = sorted(set(opts.model) - allowed)
    if unknown:
        raise UsageError(f"unknown model option(s) {', '.join(unknown)}; known: {sorted(allowed)}")
    values = dataclasses.asdict(base) if base is not None else {}
    values.update({k: v for k, v in opts.model.items() if v is not None})
    values["n_rois"] = int(n_rois)
    values["targets"] = list(targets)
    try:
        return BrainFMConfig(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid model configuration: {exc}") from exc


def window_length(cfg: BrainFMConfig) -> int:
    return int(cfg.window)


class PretrainObjective(nn.Module):
    """forward() = LMAE loss, so DistributedDataParallel sees the computation."""

    def __init__(self, model: BrainFM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict]:
        return self.model.pretrain_loss(batch["x"], batch["roi_mask"], batch["conn"],
                                        generator=generator)


class FinetuneObjective(nn.Module):
    """forward() = Gaussian NLL on the targets + the model's weighted auxiliary loss."""

    def __init__(self, model: BrainFM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict]:
        out = self.model(batch["x"], batch["roi_mask"], batch["conn"])
        nll = gaussian_nll(out.mean, out.logvar, batch["targets"], batch["target_mask"])
        aux = out.aux_loss if out.aux_loss is not None else nll.new_zeros(())
        return nll + aux, {"nll": float(nll.detach()), "aux": float(aux.detach())}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    best_epoch : int
        Epoch (1-based) whose weights were kept.
    best_score : float
        Its validation score (lower is better; NaN without validation).
    history : list of dict
        One record per epoch (train loss, validation metrics, seconds).
    seconds : float
        Wall time.
    """

    best_epoch: int
    best_score: float
    history: list[dict[str, Any]]
    seconds: float


def _lr_lambda(total_steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(round(warmup * total_steps)))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def fit(
    model: BrainFM,
    objective: nn.Module,
    train_ds: WindowDataset,
    evaluate: Callable[[BrainFM], dict[str, float]] | None,
    opts: TrainOptions,
    ctx: DistContext,
    epochs: int,
    label: str,
) -> FitResult:
    """Optimise ``objective`` with AdamW + warm-up/cosine, early stopping on ``evaluate``.

    Parameters
    ----------
    model : BrainFM
        The model (its best weights are loaded back at the end).
    objective : torch.nn.Module
        Module whose ``forward(batch, generator)`` returns ``(loss, info)``; wraps ``model``.
    train_ds : WindowDataset
        Training windows.
    evaluate : callable or None
        ``evaluate(model) -> dict`` with a ``score`` (lower is better) and other metrics, run
        after every epoch; None trains all epochs and keeps the last weights.
    opts : TrainOptions
        Batch size, learning rate, weight decay, warm-up, patience, clipping, seed.
    ctx : DistContext
        Device and process layout.
    epochs : int
        Maximum epochs.
    label : str
        Name for the log lines (``pretrain``, ``finetune``, ``fold 2 finetune``).

    Returns
    -------
    FitResult
        Best epoch, score and per-epoch history.
    """
    start = time.perf_counter()
    model.to(ctx.device)
    objective.to(ctx.device)
    wrapped: nn.Module = objective
    sampler = None
    per_rank_batch = max(1, opts.batch_size // ctx.world_size)
    loader_gen = torch.Generator().manual_seed(int(opts.seed))
    if ctx.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            objective, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
        sampler = DistributedSampler(train_ds, num_replicas=ctx.world_size, rank=ctx.rank,
                                     shuffle=True, seed=int(opts.seed))
    loader = DataLoader(
        train_ds, batch_size=per_rank_batch, shuffle=sampler is None, sampler=sampler,
        num_workers=0, generator=loader_gen, drop_last=len(train_ds) > per_rank_batch,
    )
    steps = max(1, len(loader)) * max(1, epochs)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_lambda(steps, opts.warmup))
    mask_gen = torch.Generator(device=ctx.device).manual_seed(int(opts.seed) + 7919 * ctx.rank)
    history: list[dict[str, Any]] = []
    best_state = copy.deepcopy(model.state_dict())
    best_score, best_epoch, bad = math.inf, 0, 0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_ds.set_epoch(epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        objective.train()
        total, count = 0.0, 0
        for batch in loader:
            batch = to_device(batch, ctx.device)
            loss, _info = wrapped(batch, mask_gen)
            if not torch.isfinite(loss):
                raise ProcessingError(
                    f"{label}: the training loss became non-finite at epoch {epoch}; "
                    "lower --lr or check the inputs for extreme values"
                )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip and opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, opts.grad_clip)
            optimiser.step()
            schedule.step()
            n = int(batch["x"].shape[0])
            total += float(loss.detach()) * n
            count += n
        record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(1, count)}
        if evaluate is not None:
            model.eval()
            record.update(evaluate(model))
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        _log_epoch(label, epoch, epochs, record)
        score = float(record.get("score", math.nan))
        if evaluate is None:
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
            continue
        if math.isfinite(score) and score < best_score - 1e-6:
            best_score, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= opts.patience:
                LOGGER.info("%s: early stop at epoch %d (best epoch %d, score %.4f)",
                            label, epoch, best_epoch, best_score)
                break
    if best_epoch == 0:  # no finite validation score: keep the last weights
        LOGGER.warning("%s: no finite validation score; keeping the last epoch", label)
        best_state, best_epoch = copy.deepcopy(model.state_dict()), len(history)
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(best_epoch=best_epoch,
                     best_score=best_score if math.isfinite(best_score) else math.nan,
                     history=history, seconds=time.perf_counter() - start)


def _log_epoch(label: str, epoch: int, epochs: int, rec: dict[str, Any]) -> None:
    extra = " ".join(
        f"{k} {v:.4f}" for k, v in rec.items()
        if k not in {"epoch", "train_loss", "seconds", "score"} and isinstance(v, float)
    )
    LOGGER.info("%s epoch %d/%d train_loss %.4f %s %.1fs", label, epoch, epochs,
                rec["train_loss"], extra, rec["seconds"])


def split_subjects(
    participant_ids: Sequence[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split session indices into training and inner-validation sets by subject.

    Parameters
    ----------
    participant_ids : sequence of str
        Participant of each session (a subject's sessions stay together).
    val_fraction : float
        Fraction of subjects for validation; no validation with fewer than 4 subjects or a
        fraction of 0.
    seed : int
        Seed of the permutation.

    Returns
    -------
    train_idx, val_idx : ndarray of int
        Session indices.
    """
    ids = np.asarray(list(participant_ids), dtype=object)
    subjects = np.array(sorted(set(ids.tolist())), dtype=object)
    n_val = int(round(val_fraction * subjects.size)) if subjects.size >= 4 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and subjects.size >= 4 else 0),
                subjects.size - 2 if subjects.size > 2 else 0)
    rng = np.random.default_rng([int(seed), 104729])
    val_subjects = set(rng.permutation(subjects)[:n_val].tolist())
    is_val = np.array([p in val_subjects for p in ids], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, Pearson r and R² of finite pairs.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n,)
        Observed and predicted values (NaN pairs are dropped).

    Returns
    -------
    dict
        ``mae``, ``r``, ``r2`` (NaN when undefined) and ``n``.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    ok = np.isfinite(y_true) & np.isfinite(y_pred)
    t, p = y_true[ok], y_pred[ok]
    out = {"mae": math.nan, "r": math.nan, "r2": math.nan, "n": int(ok.sum())}
    if t.size == 0:
        return out
    out["mae"] = float(np.mean(np.abs(t - p)))
    if t.size > 1 and t.std() > 0 and p.std() > 0:
        out["r"] = float(np.corrcoef(t, p)[0, 1])
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot > 0:
        out["r2"] = 1.0 - float(np.sum((t - p) ** 2)) / ss_tot
    return out
