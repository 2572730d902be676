"""Training of brainfm models: LMAE pretraining, fine-tuning, cross-validation, prediction.

The plain functions here take loaded sessions (:class:`~brainfm.models.data.SessionData`) and
return models and metrics; the ``run_*`` functions add discovery, loading and writing for the
``brainfm-train`` command line (:mod:`brainfm.models.cli`).

Training is deterministic for a given seed on CPU: ``torch.manual_seed``, numpy generators, window
draws seeded by ``(seed, epoch, item)``, a seeded DataLoader shuffle with ``num_workers=0`` and
``torch.use_deterministic_algorithms(True)``. Under ``torchrun`` (``WORLD_SIZE`` > 1) the process
group is initialised (gloo on CPU, nccl on CUDA), batches are split with a
:class:`~torch.utils.data.distributed.DistributedSampler`, the model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, and only rank 0 logs and writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from brainfm import __version__
from brainfm.errors import InputError, ProcessingError, UsageError
from brainfm.models.checkpoint import load_checkpoint, resolve_model_dir, save_checkpoint
from brainfm.models.data import (
    DEFAULT_SAMPLING_RATE_HZ,
    SessionData,
    SlidingWindowDataset,
    TargetScaler,
    TargetSpec,
    WindowDataset,
    find_timeseries,
    load_participants,
    load_sessions,
    resolve_column,
    target_matrix,
)
from brainfm.models.ensemble import interval_columns
from brainfm.models.model import BrainFM, BrainFMConfig, gaussian_nll
from brainfm.models.predict import predict_subject

LOGGER = logging.getLogger("brainfm.train")

#: Head name of pretraining checkpoints (BrainFM needs one target; its head is not trained and
#: the card lists no targets, so such a checkpoint cannot be used for prediction).
PRETRAIN_PLACEHOLDER_TARGET = "untrained"
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
        Atlas label of the time series (``atlas-`` entity).
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


# --------------------------------------------------------------------------------------------
# Set-up: determinism, devices, distributed
# --------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    """Process layout of a run (single process unless started by ``torchrun``).

    Attributes
    ----------
    world_size : int
        Number of processes.
    rank : int
        This process' rank.
    device : torch.device
        Device of this process.
    """

    world_size: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        """True under ``torchrun`` with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that logs and writes)."""
        return self.rank == 0


def setup(opts: TrainOptions) -> DistContext:
    """Seed, choose the device, set determinism and join a ``torchrun`` process group.

    Parameters
    ----------
    opts : TrainOptions
        Run options (``device``, ``seed``, ``threads``).

    Returns
    -------
    DistContext
        Rank, world size and device of this process.

    Raises
    ------
    UsageError
        CUDA requested but unavailable, or an unknown device.
    """
    dev = str(opts.device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available")
    elif dev != "cpu":
        raise UsageError(f"--device must be cpu or cuda[:N], not {dev!r}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(dev)
    if world > 1:
        import torch.distributed as dist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if dev.startswith("cuda"):
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        if rank != 0:
            logging.getLogger("brainfm").setLevel(logging.WARNING)
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    seed_everything(opts.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return DistContext(world_size=world, rank=rank, device=device)


def teardown() -> None:
    """Leave the ``torchrun`` process group, if one was joined (no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (numpy generators are seeded where they are made).

    Parameters
    ----------
    seed : int
        The seed.
    """
    torch.manual_seed(int(seed))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(int(seed))


def state_hash(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (to compare runs).

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    str
        Hex digest over the state dict in key order.
    """
    import hashlib

    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Model construction
# --------------------------------------------------------------------------------------------


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


def _window(cfg: BrainFMConfig) -> int:
    return int(cfg.window)


class _PretrainObjective(nn.Module):
    """forward() = LMAE loss, so DistributedDataParallel sees the computation."""

    def __init__(self, model: BrainFM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict]:
        return self.model.pretrain_loss(batch["x"], batch["roi_mask"], batch["conn"],
                                        generator=generator)


class _FinetuneObjective(nn.Module):
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


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


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
            batch = _to(batch, ctx.device)
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


# --------------------------------------------------------------------------------------------
# Splits and metrics
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Pretraining and fine-tuning on loaded sessions
# --------------------------------------------------------------------------------------------


def _eval_pretrain(sessions: Sequence[SessionData], window: int, seed: int,
                   device: torch.device, batch_size: int) -> Callable[[BrainFM], dict[str, float]]:
    ds = SlidingWindowDataset(sessions, window, stride=window)

    @torch.no_grad()
    def evaluate(model: BrainFM) -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
        total, count = 0.0, 0
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
            batch = _to(batch, device)
            loss, _ = model.pretrain_loss(batch["x"], batch["roi_mask"], batch["conn"],
                                          generator=gen)
            n = int(batch["x"].shape[0])
            total += float(loss) * n
            count += n
        val = total / max(1, count)
        return {"val_loss": val, "score": val}

    return evaluate


def pretrain(
    sessions: Sequence[SessionData],
    opts: TrainOptions,
    ctx: DistContext,
    epochs: int | None = None,
    label: str = "pretrain",
) -> tuple[BrainFM, dict[str, Any]]:
    """LMAE masked-reconstruction pretraining (no labels).

    Parameters
    ----------
    sessions : sequence of SessionData
        Training sessions (an inner validation split is taken from them by subject).
    opts : TrainOptions
        Options.
    ctx : DistContext
        Device and process layout.
    epochs : int, optional
        Epochs (default ``opts.epochs``).
    label : str, optional
        Log label.

    Returns
    -------
    model : BrainFM
        The pretrained model (best validation reconstruction loss).
    info : dict
        ``metrics`` (val_loss, best_epoch), ``history``, ``n_subjects``, ``seconds``.
    """
    if not sessions:
        raise InputError("no sessions to pretrain on")
    cfg = make_config(sessions[0].n_rois, [PRETRAIN_PLACEHOLDER_TARGET], opts)
    seed_everything(opts.seed)
    model = BrainFM(cfg)
    tr, va = split_subjects([s.participant_id for s in sessions], opts.val_fraction, opts.seed)
    train_ds = WindowDataset([sessions[i] for i in tr], _window(cfg),
                             draws_per_session=opts.draws_per_session, seed=opts.seed)
    evaluate = None
    if va.size:
        evaluate = _eval_pretrain([sessions[i] for i in va], _window(cfg), opts.seed, ctx.device,
                                  max(opts.batch_size, 64))
    n_ep = opts.epochs if epochs is None else int(epochs)
    res = fit(model, _PretrainObjective(model), train_ds, evaluate, opts, ctx, n_ep, label)
    metrics = {"best_epoch": res.best_epoch}
    if va.size:
        metrics["val_reconstruction_loss"] = res.best_score
    return model, {
        "metrics": metrics, "history": res.history, "seconds": res.seconds,
        "n_subjects": len({sessions[i].participant_id for i in tr}),
        "n_val_subjects": len({sessions[i].participant_id for i in va}),
    }


def predict_sessions(model: BrainFM, card: dict[str, Any], sessions: Sequence[SessionData],
                     stride: int | None, device: torch.device) -> np.ndarray:
    """Predict every session with a trained model (window averages, as at the participant level).

    Parameters
    ----------
    model : BrainFM
        Trained model.
    card : dict
        Model card or :func:`prediction_card` (targets, window, sampling rate).
    sessions : sequence of SessionData
        Sessions to predict.
    stride : int or None
        Sliding-window step (default: the card's).
    device : torch.device
        Where to run.

    Returns
    -------
    ndarray of shape (n_sessions, 2 K)
        The K target means (raw units), then their K window spreads.
    """
    names = [t["name"] for t in card["targets"]]
    rows = []
    for s in sessions:
        pred = predict_subject(model, card, s, stride=stride, device=device)
        rows.append([pred["predictions"][n] for n in names] +
                    [pred["predictions"][f"{n}_std"] for n in names])
    return np.asarray(rows, dtype=np.float64).reshape(len(sessions), 2 * len(names))


def _eval_finetune(sessions: Sequence[SessionData], y_std: np.ndarray, scaler: TargetScaler,
                   names: Sequence[str], window: int, device: torch.device, batch_size: int
                   ) -> Callable[[BrainFM], dict[str, float]]:
    ds = SlidingWindowDataset(sessions, window, stride=window, targets=y_std)
    y_raw = scaler.inverse(y_std)

    @torch.no_grad()
    def evaluate(model: BrainFM) -> dict[str, float]:
        sums = np.zeros((len(sessions), len(names)))
        counts = np.zeros(len(sessions))
        nll_total, nll_count = 0.0, 0
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
            batch = _to(batch, device)
            out = model(batch["x"], batch["roi_mask"], batch["conn"])
            nll = gaussian_nll(out.mean, out.logvar, batch["targets"], batch["target_mask"])
            nll_total += float(nll) * int(batch["x"].shape[0])
            nll_count += int(batch["x"].shape[0])
            idx = batch["session"].cpu().numpy()
            np.add.at(sums, idx, out.mean.float().cpu().numpy())
            np.add.at(counts, idx, 1.0)
        pred_std = sums / np.maximum(counts, 1)[:, None]
        err_std = np.abs(pred_std - y_std)
        rec: dict[str, float] = {"val_loss": nll_total / max(1, nll_count)}
        pred_raw = scaler.inverse(pred_std)
        for k, name in enumerate(names):
            rec[f"val_mae_{name}"] = regression_metrics(y_raw[:, k], pred_raw[:, k])["mae"]
        rec["score"] = float(np.nanmean(np.where(np.isfinite(y_std), err_std, np.nan)))
        return rec

    return evaluate


def finetune(
    sessions: Sequence[SessionData],
    y_raw: np.ndarray,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    ctx: DistContext,
    init: BrainFM | None = None,
    label: str = "finetune",
    val_participants: Collection[str] | None = None,
) -> tuple[BrainFM, TargetScaler, dict[str, Any]]:
    """Fine-tune a predictor of the targets (optionally from a pretrained encoder).

    Parameters
    ----------
    sessions : sequence of SessionData
        Sessions; those without any target value are dropped.
    y_raw : ndarray of shape (n_sessions, K)
        Raw target values (NaN = missing).
    specs : sequence of TargetSpec
        The K targets.
    opts : TrainOptions
        Options.
    ctx : DistContext
        Device and process layout.
    init : BrainFM, optional
        Pretrained model whose ``encoder.*`` weights initialise the new model (its architecture
        options are the base of the new configuration).
    label : str, optional
        Log label.
    val_participants : collection of str, optional
        The inner-validation participants (e.g. whole sites held out by an ensemble member);
        default: a random ``opts.val_fraction`` of the participants.

    Returns
    -------
    model : BrainFM
        The model with the best inner-validation MAE.
    scaler : TargetScaler
        Target standardisation fitted on the training subjects.
    info : dict
        ``metrics`` (inner validation: per target MAE, r, R², n; best_epoch), ``history``,
        ``n_subjects``, ``seconds``, and the inner-validation ``val_participant_ids`` with
        their ``val_predictions`` (raw units, one column per target).

    Raises
    ------
    InputError
        No session has a target value.
    UsageError
        The pretrained encoder does not fit the requested architecture.
    """
    y_raw = np.asarray(y_raw, dtype=np.float64)
    keep = np.flatnonzero(np.isfinite(y_raw).any(axis=1))
    if keep.size == 0:
        raise InputError("no participant with time series has a value for any target")
    sessions = [sessions[i] for i in keep]
    y_raw = y_raw[keep]
    names = [s.name for s in specs]
    cfg = make_config(sessions[0].n_rois, names, opts,
                      base=init.config if init is not None else None)
    seed_everything(opts.seed)
    model = BrainFM(cfg)
    if init is not None:
        load_encoder(model, init)
    if val_participants is None:
        tr, va = split_subjects([s.participant_id for s in sessions], opts.val_fraction,
                                opts.seed)
    else:
        held = set(val_participants)
        is_val = np.array([s.participant_id in held for s in sessions], dtype=bool)
        tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        if tr.size == 0:
            raise InputError(f"{label}: every participant is in the validation set")
    if va.size == 0:
        LOGGER.warning("%s: %d participant(s) leave none for inner validation (it needs at "
                       "least 4 and --val-fraction > 0): no early stopping, no validation "
                       "metrics, the last epoch is kept", label, len(tr))
    scaler = TargetScaler.fit(y_raw[tr])
    y_std = scaler.transform(y_raw)
    train_ds = WindowDataset([sessions[i] for i in tr], _window(cfg), y_std[tr],
                             draws_per_session=opts.draws_per_session, seed=opts.seed)
    evaluate = None
    if va.size:
        evaluate = _eval_finetune([sessions[i] for i in va], y_std[va], scaler, names,
                                  _window(cfg), ctx.device, max(opts.batch_size, 64))
    res = fit(model, _FinetuneObjective(model), train_ds, evaluate, opts, ctx,
              opts.epochs, label)
    metrics: dict[str, Any] = {"best_epoch": res.best_epoch, "n_val_subjects":
                               len({sessions[i].participant_id for i in va})}
    val_pred = np.empty((0, len(names)))
    if va.size:
        card = prediction_card(scaler, specs, cfg, opts)
        val_pred = predict_sessions(model, card, [sessions[i] for i in va], opts.stride,
                                    ctx.device)[:, :len(names)]
        for k, name in enumerate(names):
            m = regression_metrics(y_raw[va, k], val_pred[:, k])
            m["mae_training_mean"] = regression_metrics(
                y_raw[va, k], np.full(va.size, scaler.mean[k]))["mae"]
            metrics[name] = m
    return model, scaler, {
        "metrics": metrics, "history": res.history, "seconds": res.seconds,
        "n_subjects": len({sessions[i].participant_id for i in tr}),
        "val_participant_ids": [sessions[i].participant_id for i in va],
        "val_predictions": val_pred,
    }


def load_encoder(model: BrainFM, source: BrainFM) -> None:
    """Copy the ``encoder.*`` weights of ``source`` into ``model``.

    Parameters
    ----------
    model : BrainFM
        Destination.
    source : BrainFM
        Pretrained model.

    Raises
    ------
    UsageError
        No encoder weights, or shapes that differ (another architecture).
    """
    enc = {k: v for k, v in source.state_dict().items() if k.startswith("encoder.")}
    if not enc:
        raise UsageError("the --init checkpoint has no encoder.* weights")
    own = model.state_dict()
    bad = [k for k, v in enc.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise UsageError(
            f"the --init encoder does not match this architecture ({len(bad)} tensors differ, "
            f"e.g. {bad[0]}); drop the model-size options or pretrain again with them"
        )
    own.update(enc)
    model.load_state_dict(own)


def prediction_card(scaler: TargetScaler, specs: Sequence[TargetSpec], cfg: BrainFMConfig,
                    opts: TrainOptions) -> dict[str, Any]:
    """The part of a model card that prediction needs (targets and their scaling, window).

    Parameters
    ----------
    scaler : TargetScaler
        Target standardisation of the training subjects.
    specs : sequence of TargetSpec
        Targets, in output order.
    cfg : BrainFMConfig
        Model configuration.
    opts : TrainOptions
        Options (sampling rate, prediction stride).

    Returns
    -------
    dict
        ``window``, ``sampling_rate_hz``, ``targets``, ``prediction``.
    """
    return {
        "window": _window(cfg),
        "sampling_rate_hz": opts.sampling_rate_hz,
        "targets": [
            {"name": s.name, "column": s.column, "mean": float(scaler.mean[k]),
             "std": float(scaler.std[k])}
            for k, s in enumerate(specs)
        ],
        "prediction": {"stride": opts.stride or max(1, _window(cfg) // 2)},
    }


# --------------------------------------------------------------------------------------------
# Command-level runs (discovery, loading, writing)
# --------------------------------------------------------------------------------------------


def load_cohort(
    deriv_dirs: Sequence[Path | str],
    opts: TrainOptions,
    expected_roi_names: Sequence[str] | None = None,
) -> list[SessionData]:
    """Find and load every session of ``opts.atlas`` under the derivatives folders.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    opts : TrainOptions
        ``atlas`` and ``sampling_rate_hz``.
    expected_roi_names : sequence of str, optional
        Required ROI names (from a model card).

    Returns
    -------
    list of SessionData
        The sessions.
    """
    t0 = time.perf_counter()
    files = find_timeseries(deriv_dirs, opts.atlas)
    # the label as spelled in the file names (matching is case-insensitive): the model card's
    opts.atlas = files[0].atlas
    sessions = load_sessions(files, opts.sampling_rate_hz, expected_roi_names)
    LOGGER.info("loaded %d sessions of %d participants (%d runs, atlas %s) in %.1f s",
                len(sessions), len({s.participant_id for s in sessions}), len(files), opts.atlas,
                time.perf_counter() - t0)
    return sessions


def _denoising(sessions: Sequence[SessionData]) -> str | None:
    strategies = {d for s in sessions for d in s.denoising}
    return strategies.pop() if len(strategies) == 1 else None


def base_card(kind: str, sessions: Sequence[SessionData], deriv_dirs: Sequence[Path | str],
               opts: TrainOptions, cfg: BrainFMConfig) -> dict[str, Any]:
    """The common part of every model card: atlas, ROIs, sampling, window, training options."""
    card: dict[str, Any] = {
        "kind": kind,
        "atlas": opts.atlas,
        "roi_names": list(sessions[0].roi_names),
        "n_rois": sessions[0].n_rois,
        "sampling_rate_hz": opts.sampling_rate_hz,
        "repetition_time_handling": (
            f"each run resampled to {opts.sampling_rate_hz} Hz (polyphase), ROIs standardised "
            "per run; connectivity at the native rate"
        ),
        "window": _window(cfg),
        "window_seconds": _window(cfg) / opts.sampling_rate_hz,
        "prediction": {"stride": opts.stride or max(1, _window(cfg) // 2)},
        "training": {
            "cohort": [str(Path(d)) for d in deriv_dirs],
            "n_sessions": len(sessions),
            "options": opts.to_dict(),
            "brainfm_version": __version__,
        },
    }
    strategy = _denoising(sessions)
    if strategy:
        card["denoising_strategy"] = strategy
    return card


def run_pretrain(deriv_dirs: Sequence[Path | str], out_dir: Path | str, opts: TrainOptions
                 ) -> Path | None:
    """``brainfm-train pretrain``: LMAE pretraining on all sessions, then a checkpoint.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Checkpoint folder.
    opts : TrainOptions
        Options.

    Returns
    -------
    Path or None
        The checkpoint folder (None on ranks other than 0).
    """
    ctx = setup(opts)
    sessions = load_cohort(deriv_dirs, opts)
    model, info = pretrain(sessions, opts, ctx)
    if not ctx.is_main:
        return None
    card = base_card("pretrain", sessions, deriv_dirs, opts, model.config)
    card["targets"] = []
    card["training"].update({"n_subjects": info["n_subjects"], "epochs": opts.epochs,
                             "epochs_run": len(info["history"]), "seed": opts.seed,
                             "seconds": round(info["seconds"], 1), "history": info["history"]})
    card["metrics"] = info["metrics"]
    path = save_checkpoint(Path(out_dir), model, card)
    LOGGER.info("pretrained model written to %s", path)
    return Path(path)


def participants_path(deriv_dirs: Sequence[Path | str], explicit: Path | str | None) -> Path:
    """The targets table: ``explicit``, else the first derivatives folder's participants.tsv."""
    if explicit is not None:
        return Path(explicit)
    return Path(deriv_dirs[0]) / "participants.tsv"


def _load_init(init: Path | str, opts: TrainOptions, roi_names: Sequence[str]) -> BrainFM:
    try:
        pre, card = load_checkpoint(resolve_model_dir(str(init)), expected_atlas=opts.atlas,
                                    expected_roi_names=list(roi_names))
    except FileNotFoundError as exc:
        raise InputError(f"--init {init}: {exc}") from exc
    if abs(float(card.get("sampling_rate_hz", opts.sampling_rate_hz)) - opts.sampling_rate_hz) \
            > 1e-9:
        raise UsageError(
            f"--init {init} was trained at {card.get('sampling_rate_hz')} Hz, this run uses "
            f"{opts.sampling_rate_hz} Hz"
        )
    return pre


def run_finetune(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    init: Path | str | None = None,
    participants_tsv: Path | str | None = None,
) -> Path | None:
    """``brainfm-train finetune``: supervised training on all sessions, then a checkpoint.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Checkpoint folder.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options.
    init : path, optional
        Pretraining checkpoint whose encoder initialises the model.
    participants_tsv : path, optional
        Targets table (default ``deriv_dirs[0]/participants.tsv``).

    Returns
    -------
    Path or None
        The checkpoint folder (None on ranks other than 0).
    """
    if not specs:
        raise UsageError("give at least one --target (e.g. --target age)")
    ctx = setup(opts)
    ptsv = participants_path(deriv_dirs, participants_tsv)
    frame = load_participants(ptsv)
    for s in specs:
        resolve_column(frame, s.column, str(ptsv))
    sessions = load_cohort(deriv_dirs, opts)
    pre = _load_init(init, opts, sessions[0].roi_names) if init is not None else None
    y = target_matrix(frame, [s.participant_id for s in sessions], specs, str(ptsv))
    model, scaler, info = finetune(sessions, y, specs, opts, ctx, init=pre)
    if not ctx.is_main:
        return None
    card = base_card("finetune", sessions, deriv_dirs, opts, model.config)
    card.update(prediction_card(scaler, specs, model.config, opts))
    card["training"].update({
        "n_subjects": info["n_subjects"], "epochs": opts.epochs,
        "epochs_run": len(info["history"]), "seed": opts.seed,
        "participants_tsv": str(ptsv), "init": str(init) if init is not None else None,
        "seconds": round(info["seconds"], 1), "history": info["history"],
    })
    card["metrics"] = {"inner_validation": info["metrics"]}
    for spec in specs:
        m = info["metrics"].get(spec.name)
        if m:
            LOGGER.info("inner validation %s: MAE %.3f (training mean %.3f), r %.3f, R² %.3f, "
                        "n %d", spec.name, m["mae"], m["mae_training_mean"], m["r"], m["r2"],
                        m["n"])
    path = save_checkpoint(Path(out_dir), model, card)
    LOGGER.info("model written to %s", path)
    return Path(path)


def make_folds(subjects: np.ndarray, groups: np.ndarray, n_folds: int, protocol: str, seed: int
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer cross-validation folds over subjects.

    Parameters
    ----------
    subjects : ndarray of str
        One entry per subject.
    groups : ndarray of str
        Group (site) of each subject.
    n_folds : int
        K of ``stratified-kfold`` (ignored by ``leave-group-out``).
    protocol : {"stratified-kfold", "leave-group-out"}
        K folds stratified by group, or one test fold per group.
    seed : int
        Shuffling seed of the K-fold.

    Returns
    -------
    list of (train, test)
        Index arrays into ``subjects``.

    Raises
    ------
    UsageError
        Unknown protocol, fewer than two groups for leave-group-out, or an impossible K.
    """
    from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

    if protocol == "leave-group-out":
        if len(set(groups.tolist())) < 2:
            raise UsageError("leave-group-out needs at least 2 groups")
        return list(LeaveOneGroupOut().split(subjects, groups=groups))
    if protocol != "stratified-kfold":
        raise UsageError(f"--protocol must be stratified-kfold or leave-group-out, not {protocol}")
    if n_folds < 2 or n_folds > subjects.size:
        raise UsageError(f"--folds {n_folds}: need 2 <= folds <= {subjects.size} subjects")
    _, counts = np.unique(groups, return_counts=True)
    if counts.max() < n_folds:
        from sklearn.model_selection import KFold

        LOGGER.warning("no group has %d members; using plain shuffled K-fold", n_folds)
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(subjects))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(n_folds, shuffle=True, random_state=seed)
                    .split(subjects, groups))


def run_cv(
    deriv_dirs: Sequence[Path | str],
    out_dir: Path | str,
    specs: Sequence[TargetSpec],
    opts: TrainOptions,
    n_folds: int = 5,
    group_by: str | None = "site",
    protocol: str = "stratified-kfold",
    participants_tsv: Path | str | None = None,
) -> dict[str, Any]:
    """``brainfm-train cv``: cross-validation with pretraining inside each fold.

    Folds split subjects; with ``stratified-kfold`` they are stratified by the ``group_by``
    column (site-stratified K-fold), with ``leave-group-out`` each group is a test fold. In
    every fold the LMAE pretraining (``opts.pretrain_epochs``, 0 = none) and the fine-tuning
    see the training subjects only.

    Parameters
    ----------
    deriv_dirs : sequence of path
        Derivatives folders.
    out_dir : path
        Folder for ``predictions.tsv`` and ``metrics.json``.
    specs : sequence of TargetSpec
        Targets.
    opts : TrainOptions
        Options.
    n_folds : int, optional
        K of the K-fold.
    group_by : str or None, optional
        participants.tsv column to stratify by (or the groups of leave-group-out).
    protocol : str, optional
        ``stratified-kfold`` or ``leave-group-out``.
    participants_tsv : path, optional
        Targets table (default ``deriv_dirs[0]/participants.tsv``).

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.
    """
    if not specs:
        raise UsageError("give at least one --target (e.g. --target age)")
    ctx = setup(opts)
    ptsv = participants_path(deriv_dirs, participants_tsv)
    frame = load_participants(ptsv)
    group_col = resolve_column(frame, group_by, str(ptsv)) if group_by else None
    if protocol == "leave-group-out" and group_col is None:
        raise UsageError("--protocol leave-group-out needs --group-by COLUMN")
    for s in specs:
        resolve_column(frame, s.column, str(ptsv))
    sessions = load_cohort(deriv_dirs, opts)
    pids = [s.participant_id for s in sessions]
    y = target_matrix(frame, pids, specs, str(ptsv))
    subjects = np.array(sorted(set(pids)), dtype=object)
    if group_col is None:
        groups = np.zeros(subjects.size, dtype=object)
    else:
        col = frame[group_col].to_dict()
        groups = np.array([str(col.get(p, "n/a")) for p in subjects], dtype=object)
    folds = make_folds(subjects, groups, n_folds, protocol, opts.seed)
    names = [s.name for s in specs]
    pretrain_epochs = opts.epochs if opts.pretrain_epochs is None else int(opts.pretrain_epochs)
    rows: list[dict[str, Any]] = []
    fold_metrics: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for f, (tr_s, te_s) in enumerate(folds, start=1):
        t0 = time.perf_counter()
        train_subj, test_subj = set(subjects[tr_s].tolist()), set(subjects[te_s].tolist())
        tr = [i for i, p in enumerate(pids) if p in train_subj]
        te = [i for i, p in enumerate(pids) if p in test_subj]
        LOGGER.info("fold %d/%d: %d training, %d test subjects", f, len(folds), len(train_subj),
                    len(test_subj))
        pre = None
        if pretrain_epochs > 0:
            pre, _ = pretrain([sessions[i] for i in tr], opts, ctx, epochs=pretrain_epochs,
                              label=f"fold {f} pretrain")
        model, scaler, _info = finetune([sessions[i] for i in tr], y[tr], specs, opts, ctx,
                                        init=pre, label=f"fold {f} finetune")
        card = prediction_card(scaler, specs, model.config, opts)
        pred = predict_sessions(model, card, [sessions[i] for i in te], opts.stride,
                                    ctx.device)
        per_target: dict[str, Any] = {}
        for k, name in enumerate(names):
            m = regression_metrics(y[te, k], pred[:, k])
            m["mae_training_mean"] = regression_metrics(
                y[te, k], np.full(len(te), scaler.mean[k]))["mae"]
            per_target[name] = m
        fold_metrics.append({"fold": f, "n_train": len(train_subj), "n_test": len(test_subj),
                             "test_groups": sorted(set(groups[te_s].tolist())),
                             "seconds": round(time.perf_counter() - t0, 1), **per_target})
        LOGGER.info("fold %d: %s (%.0f s)", f, "; ".join(
            f"{n} MAE {m['mae']:.3f} (training mean {m['mae_training_mean']:.3f}) r {m['r']:.3f}"
            for n, m in per_target.items()), time.perf_counter() - t0)
        col = frame[group_col].to_dict() if group_col else {}
        for j, i in enumerate(te):
            s = sessions[i]
            row: dict[str, Any] = {"fold": f, "participant_id": f"sub-{s.participant_id}",
                                   "session_id": f"ses-{s.session_id}" if s.session_id else "n/a"}
            if group_col:
                row[group_col] = col.get(s.participant_id, "n/a")
            for k, name in enumerate(names):
                row[f"{name}_true"] = y[i, k]
                row[name] = pred[j, k]
                row[f"{name}_std"] = pred[j, len(names) + k]
            rows.append(row)
    summary: dict[str, Any] = {
        "protocol": protocol, "folds": len(folds), "group_by": group_col,
        "n_subjects": int(subjects.size), "n_sessions": len(sessions),
        "pretrain_epochs": pretrain_epochs, "options": opts.to_dict(),
        "seconds": round(time.perf_counter() - t_all, 1), "targets": {}, "per_fold": fold_metrics,
    }
    for name in names:
        entry: dict[str, Any] = {}
        for metric in ("mae", "r", "r2", "mae_training_mean"):
            vals = np.array([fm[name][metric] for fm in fold_metrics], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            entry[metric] = {
                "mean": float(finite.mean()) if finite.size else None,
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
                "per_fold": [None if not np.isfinite(v) else float(v) for v in vals],
            }
        summary["targets"][name] = entry
    if ctx.is_main:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame(rows)
        if table["session_id"].eq("n/a").all():
            table = table.drop(columns="session_id")
        _atomic_tsv(table, out / "predictions.tsv")
        _atomic_text(out / "metrics.json", json.dumps(summary, indent=2, default=_json_default))
        for name in names:
            e = summary["targets"][name]
            LOGGER.info("cv %s: MAE %.3f ± %.3f (training mean %.3f), r %.3f ± %.3f, "
                        "R² %.3f ± %.3f", name, *(
                            _nan(e[m][s]) for m, s in (("mae", "mean"), ("mae", "sd"),
                                                       ("mae_training_mean", "mean"),
                                                       ("r", "mean"), ("r", "sd"),
                                                       ("r2", "mean"), ("r2", "sd"))))
    return summary


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def _atomic_tsv(table: pd.DataFrame, path: Path) -> None:
    _atomic_text(path, table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g",
                                    lineterminator="\n"))


def run_predict(
    model_dir: Path | str,
    deriv_dirs: Sequence[Path | str],
    out_tsv: Path | str,
    device: str = "cpu",
    participants: Sequence[str] | None = None,
    stride: int | None = None,
) -> pd.DataFrame:
    """``brainfm-train predict``: one row per participant (and session).

    Parameters
    ----------
    model_dir : path or "default"
        Checkpoint folder or ``default`` (the bundled weights).
    deriv_dirs : sequence of path
        Derivatives folders with time series of the model's atlas.
    out_tsv : path
        Output TSV: ``participant_id``, [``session_id``], then ``<name>``, ``<name>_std`` per
        target.
    device : str, optional
        ``cpu`` or ``cuda``.
    participants : sequence of str, optional
        Only these participants.
    stride : int, optional
        Sliding-window step (default: the card's).

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    try:
        path = resolve_model_dir(str(model_dir))
        model, card = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise InputError(f"--model {model_dir}: {exc}") from exc
    from brainfm.models.predict import card_targets

    targets = card_targets(card)
    atlas = str(card.get("atlas") or "")
    rate = float(card.get("sampling_rate_hz", DEFAULT_SAMPLING_RATE_HZ))
    files = find_timeseries(deriv_dirs, atlas, participants=participants)
    sessions = load_sessions(files, rate, card.get("roi_names") or None)
    model.to(torch.device(device))
    rows = []
    for s in sessions:
        res = predict_subject(model, card, s, stride=stride, device=device)
        row: dict[str, Any] = {"participant_id": f"sub-{s.participant_id}",
                               "session_id": f"ses-{s.session_id}" if s.session_id else "n/a"}
        for t in targets:
            for column in (t["name"], f"{t['name']}_std", *interval_columns(t["name"])):
                if column in res["predictions"]:  # ensembles add calibrated intervals
                    row[column] = res["predictions"][column]
        if "ood" in res:
            row["out_of_distribution"] = res["ood"]
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["session_id"].eq("n/a").all():
        table = table.drop(columns="session_id")
    _atomic_tsv(table, Path(out_tsv))
    LOGGER.info("predictions for %d sessions written to %s", len(rows), out_tsv)
    return table

