"""LMAE pretraining and fine-tuning of brainfm models on loaded sessions.

The plain functions here take loaded sessions (:class:`~brainfm.models.sessions.SessionData`) and
return models and metrics; :mod:`brainfm.models.runs` adds discovery, loading and writing for
the ``brainfm-train`` command line (:mod:`brainfm.models.cli`), and
:mod:`brainfm.models.cross_validation` the cross-validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from brainfm.errors import InputError, UsageError
from brainfm.models.loop import (
    FinetuneObjective,
    PretrainObjective,
    fit,
    make_config,
    regression_metrics,
    split_subjects,
    to_device,
    window_length,
)
from brainfm.models.model import BrainFM, BrainFMConfig, gaussian_nll
from brainfm.models.options import PRETRAIN_PLACEHOLDER_TARGET, TrainOptions
from brainfm.models.predict import predict_subject
from brainfm.models.runtime import DistContext, seed_everything
from brainfm.models.sessions import SessionData
from brainfm.models.targets import TargetScaler, TargetSpec
from brainfm.models.windows import SlidingWindowDataset, WindowDataset, default_stride

LOGGER = logging.getLogger(__name__)


def _eval_pretrain(sessions: Sequence[SessionData], window: int, seed: int,
                   device: torch.device, batch_size: int) -> Callable[[BrainFM], dict[str, float]]:
    ds = SlidingWindowDataset(sessions, window, stride=window)

    @torch.no_grad()
    def evaluate(model: BrainFM) -> dict[str, float]:
        gen = torch.Generator(device=device).manual_seed(int(seed) + 1)
        total, count = 0.0, 0
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
            batch = to_device(batch, device)
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
    train_ds = WindowDataset([sessions[i] for i in tr], window_length(cfg),
                             draws_per_session=opts.draws_per_session, seed=opts.seed)
    evaluate = None
    if va.size:
        evaluate = _eval_pretrain([sessions[i] for i in va], window_length(cfg), opts.seed,
                                  ctx.device, max(opts.batch_size, 64))
    n_ep = opts.epochs if epochs is None else int(epochs)
    res = fit(model, PretrainObjective(model), train_ds, evaluate, opts, ctx, n_ep, label)
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
            batch = to_device(batch, device)
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
    train_ds = WindowDataset([sessions[i] for i in tr], window_length(cfg), y_std[tr],
                             draws_per_session=opts.draws_per_session, seed=opts.seed)
    evaluate = None
    if va.size:
        evaluate = _eval_finetune([sessions[i] for i in va], y_std[va], scaler, names,
                                  window_length(cfg), ctx.device, max(opts.batch_size, 64))
    res = fit(model, FinetuneObjective(model), train_ds, evaluate, opts, ctx,
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
        "window": window_length(cfg),
        "sampling_rate_hz": opts.sampling_rate_hz,
        "targets": [
            {"name": s.name, "column": s.column, "mean": float(scaler.mean[k]),
             "std": float(scaler.std[k])}
            for k, s in enumerate(specs)
        ],
        "prediction": {"stride": default_stride(window_length(cfg), opts.stride)},
    }
