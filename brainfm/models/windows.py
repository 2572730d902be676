"""Windows of a session's runs: random ones for training, sliding ones for prediction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from brainfm.models.sessions import SessionData


def _pad_to(run: np.ndarray, window: int) -> np.ndarray:
    if run.shape[1] >= window:
        return run
    out = np.zeros((run.shape[0], window), dtype=run.dtype)
    out[:, : run.shape[1]] = run
    return out


def default_stride(window: int, stride: int | None = None) -> int:
    """Step between sliding windows: ``stride`` when given (and not 0), else half a window.

    Parameters
    ----------
    window : int
        Window length in samples.
    stride : int, optional
        Requested step.

    Returns
    -------
    int
        The step, at least 1.
    """
    return max(1, int(stride) if stride else window // 2)


def sliding_windows(
    runs: Sequence[np.ndarray], window: int, stride: int | None = None
) -> np.ndarray:
    """Cut sliding windows from every run (the last window is aligned to the run's end).

    Parameters
    ----------
    runs : sequence of ndarray of shape (N, T_r)
        Runs of one session.
    window : int
        Window length in samples.
    stride : int, optional
        Step between window starts (default ``window // 2``).

    Returns
    -------
    ndarray of shape (n_windows, N, window), float32
        Runs shorter than ``window`` give one zero-padded window.
    """
    if window < 1:
        raise ValueError("window must be positive")
    stride = default_stride(window, stride)
    out: list[np.ndarray] = []
    for run in runs:
        run = _pad_to(np.asarray(run, dtype=np.float32), window)
        t = run.shape[1]
        starts = list(range(0, t - window + 1, stride))
        if starts[-1] != t - window:
            starts.append(t - window)
        out.extend(run[:, s : s + window] for s in starts)
    return np.stack(out).astype(np.float32, copy=False)


def random_window(runs: Sequence[np.ndarray], window: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one random window from a session (runs weighted by their length).

    Parameters
    ----------
    runs : sequence of ndarray of shape (N, T_r)
        Runs of one session.
    window : int
        Window length in samples.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    ndarray of shape (N, window), float32
        Zero-padded when the chosen run is shorter than ``window``.
    """
    lengths = np.array([max(1, r.shape[1] - window + 1) for r in runs], dtype=np.float64)
    k = int(rng.choice(len(runs), p=lengths / lengths.sum())) if len(runs) > 1 else 0
    run = _pad_to(runs[k], window)
    start = int(rng.integers(0, run.shape[1] - window + 1))
    return np.ascontiguousarray(run[:, start : start + window], dtype=np.float32)


class WindowDataset(Dataset):
    """Random training windows, one item per session and draw.

    Item ``i`` is session ``i % n_sessions``; its window is drawn with a generator seeded by
    ``(seed, epoch, i)``, so the data are reproducible regardless of the sampler's order,
    the number of processes (DistributedDataParallel) or the batch size. Call
    :meth:`set_epoch` at the start of every epoch to draw new windows.

    Parameters
    ----------
    sessions : sequence of SessionData
        The sessions.
    window : int
        Window length in samples.
    targets : ndarray of shape (n_sessions, K), optional
        Standardised targets, NaN where missing; None for pretraining (K = 0).
    draws_per_session : int, optional
        Windows per session and epoch (default 1).
    seed : int, optional
        Base seed.

    Notes
    -----
    Items are dicts with ``x`` (N, window) float32, ``roi_mask`` (N,) bool, ``conn`` (N, N)
    float32, ``targets`` (K,) float32 (0 where missing) and ``target_mask`` (K,) bool.
    """

    def __init__(
        self,
        sessions: Sequence[SessionData],
        window: int,
        targets: np.ndarray | None = None,
        draws_per_session: int = 1,
        seed: int = 0,
    ) -> None:
        self.sessions = list(sessions)
        self.window = int(window)
        self.draws = max(1, int(draws_per_session))
        self.seed = int(seed)
        self.epoch = 0
        n = len(self.sessions)
        tg = np.zeros((n, 0), dtype=np.float32) if targets is None else np.asarray(targets)
        if tg.shape[0] != n:
            raise ValueError(f"targets has {tg.shape[0]} rows for {n} sessions")
        self.target_mask = torch.from_numpy(np.isfinite(tg))
        self.targets = torch.from_numpy(np.nan_to_num(tg, nan=0.0).astype(np.float32))
        self._masks = [torch.from_numpy(s.roi_mask.astype(bool)) for s in self.sessions]
        self._conns = [torch.from_numpy(s.conn.astype(np.float32)) for s in self.sessions]

    def set_epoch(self, epoch: int) -> None:
        """Select the windows of ``epoch``.

        Parameters
        ----------
        epoch : int
            Epoch number.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sessions) * self.draws

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = index % len(self.sessions)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = random_window(self.sessions[i].runs, self.window, rng)
        return {
            "x": torch.from_numpy(x),
            "roi_mask": self._masks[i],
            "conn": self._conns[i],
            "targets": self.targets[i],
            "target_mask": self.target_mask[i],
        }


class SlidingWindowDataset(Dataset):
    """Every sliding window of every session (deterministic; for validation and prediction).

    Parameters
    ----------
    sessions : sequence of SessionData
        The sessions.
    window : int
        Window length in samples.
    stride : int, optional
        Step between windows (default ``window // 2``).
    targets : ndarray of shape (n_sessions, K), optional
        Standardised targets, NaN where missing.

    Notes
    -----
    Items are dicts like :class:`WindowDataset`'s plus ``session`` (int index of the session),
    so that window outputs can be averaged per session.
    """

    def __init__(
        self,
        sessions: Sequence[SessionData],
        window: int,
        stride: int | None = None,
        targets: np.ndarray | None = None,
    ) -> None:
        self.sessions = list(sessions)
        n = len(self.sessions)
        tg = np.zeros((n, 0), dtype=np.float32) if targets is None else np.asarray(targets)
        self.target_mask = torch.from_numpy(np.isfinite(tg))
        self.targets = torch.from_numpy(np.nan_to_num(tg, nan=0.0).astype(np.float32))
        self.index: list[tuple[int, int]] = []
        self.windows: list[np.ndarray] = []
        for i, s in enumerate(self.sessions):
            w = sliding_windows(s.runs, window, stride)
            self.windows.append(w)
            self.index.extend((i, j) for j in range(w.shape[0]))
        self._masks = [torch.from_numpy(s.roi_mask.astype(bool)) for s in self.sessions]
        self._conns = [torch.from_numpy(s.conn.astype(np.float32)) for s in self.sessions]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, j = self.index[index]
        return {
            "x": torch.from_numpy(self.windows[i][j]),
            "roi_mask": self._masks[i],
            "conn": self._conns[i],
            "targets": self.targets[i],
            "target_mask": self.target_mask[i],
            "session": torch.tensor(i),
        }
