"""Rigid-body head-motion parameters and the summary measures fMRIPrep derives from them."""

from __future__ import annotations

import numpy as np

from brainfm.preproc.realign import framewise_displacement

#: Framewise displacement (mm) that every planted spike exceeds.
SPIKE_FD_MM = 0.5
#: SD of the white jitter on each parameter (mm, radians).
JITTER_SD = (0.01,) * 3 + (0.00017,) * 3


def _round_trip(x: np.ndarray) -> np.ndarray:
    """Round to the precision written to the confounds TSV (10 significant digits)."""
    return np.vectorize(lambda v: float(f"{v:.10g}"))(x).astype(np.float64)


def simulate_motion(
    rng: np.random.Generator, n: int, *, still: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Draw six rigid-body motion parameters: a random walk plus a few spikes.

    The random walk (Gaussian steps of 0.025 mm / 0.0004 rad per volume, shrunk if needed to
    stay within 0.5 mm / 0.008 rad) carries a small white jitter, as realignment estimates do;
    spikes are sudden displacements lasting one or
    two volumes (broadband, so band-pass filtering alone cannot remove their effect).

    Parameters
    ----------
    rng : numpy.random.Generator
        Random generator. The same generator state gives the same random walk whether or not
        ``still`` is set.
    n : int
        Number of volumes.
    still : bool
        A very still subject: the random walk at a tenth of its amplitude and no spikes.

    Returns
    -------
    params : numpy.ndarray
        (n, 6) parameters in :data:`MOTION_COLUMNS` order (mm, radians), at most about 1 mm /
        0.02 rad, rounded to the precision written to the confounds TSV.
    spikes : numpy.ndarray
        Indices of the volumes where a spike starts (framewise displacement > 0.5 mm there);
        empty when ``still``.
    """
    steps = rng.standard_normal((n, 6)) * np.array([0.025] * 3 + [0.0004] * 3)
    walk = np.cumsum(steps, axis=0)
    walk -= np.median(walk, axis=0)
    # long runs: shrink the walk so that it stays within 0.5 mm / 0.008 rad
    limit = np.array([0.5] * 3 + [0.008] * 3)
    walk *= np.minimum(1.0, limit / np.maximum(np.abs(walk).max(axis=0), 1e-12))
    # realignment-estimate jitter (white)
    walk += rng.standard_normal((n, 6)) * np.array(JITTER_SD)
    n_spikes = max(2, int(round(n / 40)))
    # Spike draws happen in every case so that both variants share every other random number.
    cand = np.arange(4, max(5, n - 4))
    starts = np.sort(rng.choice(cand, size=min(n_spikes, len(cand)), replace=False))
    spike_dirs = rng.standard_normal((len(starts), 6))
    spike_amps = rng.uniform(0.25, 0.45, size=len(starts))
    durations = rng.integers(1, 3, size=len(starts))
    if still:
        return _round_trip(walk * 0.1), np.array([], dtype=int)
    # Keep spikes apart so that each one is a separate event.
    kept: list[int] = []
    for i, s in enumerate(starts):
        if not kept or s - starts[kept[-1]] > 3:
            kept.append(i)
    params = walk.copy()
    for i in kept:
        d = spike_dirs[i]
        trans = d[:3] / np.linalg.norm(d[:3]) * spike_amps[i]
        rot = d[3:] / np.linalg.norm(d[3:]) * spike_amps[i] * 0.01
        s, e = int(starts[i]), int(min(n, starts[i] + durations[i]))
        params[s:e, :3] += trans
        params[s:e, 3:] += rot
        fd = framewise_displacement(params)
        if fd[s] <= SPIKE_FD_MM * 1.1:
            bump = (SPIKE_FD_MM * 1.1 - fd[s]) / max(np.abs(trans).sum(), 1e-6) + 1e-3
            params[s:e, :3] += trans * bump
    return _round_trip(params), starts[kept].astype(int)


def _rigid(p: np.ndarray) -> np.ndarray:
    rx, ry, rz = p[3:]
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = r_z @ r_y @ r_x
    m[:3, 3] = p[:3]
    return m


def relative_rms(params: np.ndarray, radius: float = 80.0) -> np.ndarray:
    """Relative root-mean-square displacement between consecutive volumes (Jenkinson 1999).

    Parameters
    ----------
    params : numpy.ndarray
        (n, 6) motion parameters (mm, radians).
    radius : float
        Radius (mm) of the sphere over which the displacement is averaged (FSL uses 80).

    Returns
    -------
    numpy.ndarray
        (n,) RMS displacement in mm; the first value is NaN.
    """
    out = np.full(params.shape[0], np.nan)
    for t in range(1, params.shape[0]):
        m = _rigid(params[t]) @ np.linalg.inv(_rigid(params[t - 1]))
        a = m[:3, :3] - np.eye(3)
        tr = m[:3, 3]
        out[t] = np.sqrt(radius**2 / 5.0 * np.trace(a.T @ a) + tr @ tr)
    return out
