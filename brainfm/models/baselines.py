"""Classic connectome baselines: ridge and kernel ridge regression on Fisher-z connectivity.

These are the reference points every brainfm accuracy claim is measured against (He et al.
2020, NeuroImage 206:116276: kernel ridge regression with a correlation kernel matches deep
networks at predicting behaviour from functional connectivity). A subject's features are the
upper triangle of its whole-run Fisher-z connectivity matrix.

Both baselines are kernel ridge regressions with an unpenalised intercept:

- ``ridge``: linear kernel on the raw Fisher-z edges (ridge regression in its dual form);
- ``krr``: correlation kernel, the Pearson correlation between two subjects' edge vectors.

A kernel entry depends only on the two subjects it pairs, so the whole-cohort kernel is computed
once and sliced per fold. Everything fitted (centring of the kernel and the targets, the
regularisation chosen by an inner K-fold) uses training subjects only: a test
subject enters only through its kernel row against the training subjects, at prediction time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Regularisation grid, as multiples of the mean diagonal of the training kernel.
ALPHA_GRID = tuple(float(a) for a in np.logspace(-3, 3, 13))
BASELINE_KERNELS = ("ridge", "krr")


def connectivity_features(conn: Sequence[np.ndarray]) -> np.ndarray:
    """Upper triangles of Fisher-z connectivity matrices, one row per subject.

    Parameters
    ----------
    conn : sequence of ndarray of shape (N, N)
        Symmetric Fisher-z matrices (0 for missing ROIs).

    Returns
    -------
    ndarray of shape (n_subjects, N * (N - 1) / 2)
        Off-diagonal upper-triangle values.
    """
    mats = [np.asarray(c, dtype=np.float64) for c in conn]
    iu = np.triu_indices(mats[0].shape[0], k=1)
    return np.stack([m[iu] for m in mats])


def subject_kernel(features: np.ndarray, kind: str) -> np.ndarray:
    """Kernel between all pairs of subjects.

    Parameters
    ----------
    features : ndarray of shape (n, p)
        One row per subject (see :func:`connectivity_features`).
    kind : {"ridge", "krr"}
        ``ridge``: linear kernel ``x_i · x_j``; ``krr``: Pearson correlation of the two rows.

    Returns
    -------
    ndarray of shape (n, n)
        The kernel.

    Raises
    ------
    ValueError
        Unknown kind.
    """
    x = np.asarray(features, dtype=np.float64)
    if kind == "krr":
        x = correlation_features(x)
    elif kind != "ridge":
        raise ValueError(f"unknown baseline {kind!r}; use one of {BASELINE_KERNELS}")
    return x @ x.T


def correlation_features(features: np.ndarray) -> np.ndarray:
    """The feature map of the correlation kernel: each row centred and scaled to unit norm.

    Parameters
    ----------
    features : ndarray of shape (n, p)
        One row per subject.

    Returns
    -------
    ndarray of shape (n, p)
        Rows with mean 0 and norm 1 (a constant row stays 0), so that ``z_i · z_j`` is the
        Pearson correlation of rows ``i`` and ``j``.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def fit_primal_ridge(z_train: np.ndarray, y_train: np.ndarray, alpha: float
                     ) -> tuple[np.ndarray, np.ndarray, float]:
    """Kernel ridge on a linear kernel, solved in its dual form and returned in primal form.

    The same fit as :func:`kernel_ridge_predict` on the kernel ``z @ z.T`` (feature-space
    centring, unpenalised intercept, penalty as a multiple of the centred kernel's mean
    diagonal), but as a weight vector, so that a new subject is predicted without the training
    subjects: ``(z - center) @ weight + intercept``.

    Parameters
    ----------
    z_train : ndarray of shape (n, p)
        Training features (e.g. :func:`correlation_features`).
    y_train : ndarray of shape (n,)
        Finite training targets.
    alpha : float
        Penalty (multiple of the mean diagonal of the centred training kernel).

    Returns
    -------
    weight : ndarray of shape (p,)
    center : ndarray of shape (p,)
        Training mean of the features.
    intercept : float
        Training mean of the targets.
    """
    z = np.asarray(z_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64)
    center = z.mean(axis=0)
    zc = z - center
    k = zc @ zc.T
    intercept = float(y.mean())
    evals, evecs = np.linalg.eigh(k)
    scale = max(float(np.mean(np.diag(k))), 1e-12)
    dual = evecs @ ((evecs.T @ (y - intercept)) / (np.clip(evals, 0.0, None) + alpha * scale))
    return zc.T @ dual, center, intercept


def _centred_blocks(kernel: np.ndarray, train: np.ndarray, other: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Train×train and other×train kernel blocks, centred in feature space on ``train``."""
    k_tt = kernel[np.ix_(train, train)]
    k_ot = kernel[np.ix_(other, train)]
    col_mean = k_tt.mean(axis=0)
    total = col_mean.mean()
    k_tt = k_tt - col_mean[None, :] - col_mean[:, None] + total
    k_ot = k_ot - col_mean[None, :] - k_ot.mean(axis=1, keepdims=True) + total
    return k_tt, k_ot


def kernel_ridge_predict(kernel: np.ndarray, y: np.ndarray, train: np.ndarray,
                         test: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
    """Fit kernel ridge regression on ``train`` and predict ``test``, for several penalties.

    Parameters
    ----------
    kernel : ndarray of shape (n, n)
        Whole-cohort kernel (:func:`subject_kernel`).
    y : ndarray of shape (n,)
        Targets (only ``y[train]`` is read).
    train, test : ndarray of int
        Subject indices.
    alphas : sequence of float
        Penalties, as multiples of the mean diagonal of the centred training kernel.

    Returns
    -------
    ndarray of shape (len(alphas), len(test))
        Predictions per penalty.
    """
    k_tt, k_ot = _centred_blocks(kernel, train, test)
    y_train = np.asarray(y, dtype=np.float64)[train]
    intercept = y_train.mean()
    evals, evecs = np.linalg.eigh(k_tt)
    proj = evecs.T @ (y_train - intercept)
    scale = max(float(np.mean(np.diag(k_tt))), 1e-12)
    preds = []
    for a in alphas:
        dual = evecs @ (proj / (np.clip(evals, 0.0, None) + float(a) * scale))
        preds.append(k_ot @ dual + intercept)
    return np.asarray(preds)


def _inner_folds(n: int, n_folds: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, min(n_folds, n))]


def out_of_fold(kernel: np.ndarray, y: np.ndarray, train: np.ndarray, alphas: Sequence[float],
                n_folds: int, seed: int, folds: Sequence[np.ndarray] | None = None
                ) -> np.ndarray:
    """Inner K-fold predictions of the training subjects, for every penalty.

    Parameters
    ----------
    kernel : ndarray of shape (n, n)
        Whole-cohort kernel.
    y : ndarray of shape (n,)
        Targets.
    train : ndarray of int
        Training subjects (the only ones read).
    alphas : sequence of float
        Penalties (see :func:`kernel_ridge_predict`).
    n_folds : int
        Inner folds.
    seed : int
        Seed of the inner split.
    folds : sequence of ndarray of int, optional
        The inner folds as positions into ``train`` (e.g. whole sites); default: ``n_folds``
        random folds.

    Returns
    -------
    ndarray of shape (len(alphas), len(train))
        Each training subject predicted by a model that did not see it.
    """
    train = np.asarray(train)
    oof = np.empty((len(alphas), train.size))
    for held in folds if folds is not None else _inner_folds(train.size, n_folds, seed):
        fit = np.setdiff1d(np.arange(train.size), held)
        oof[:, held] = kernel_ridge_predict(kernel, y, train[fit], train[held], alphas)
    return oof


def nested_kernel_ridge(
    kernel: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    alphas: Sequence[float] = ALPHA_GRID,
    n_folds: int = 5,
    seed: int = 0,
    folds: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Kernel ridge regression with its penalty chosen by an inner K-fold on ``train``.

    Parameters
    ----------
    kernel : ndarray of shape (n, n)
        Whole-cohort kernel (:func:`subject_kernel`).
    y : ndarray of shape (n,)
        Targets; ``y[test]`` is never read.
    train, test : ndarray of int
        Subject indices (training targets must be finite).
    alphas : sequence of float, optional
        Penalty grid (multiples of the mean diagonal of the centred training kernel).
    n_folds : int, optional
        Inner folds.
    seed : int, optional
        Seed of the inner split.
    folds : sequence of ndarray of int, optional
        Inner folds as positions into ``train`` (see :func:`out_of_fold`).

    Returns
    -------
    test_pred : ndarray of shape (len(test),)
        Predictions of the model refitted on all training subjects with the chosen penalty.
    train_oof : ndarray of shape (len(train),)
        Inner out-of-fold predictions with the chosen penalty (for a bias correction that never
        sees the test subjects).
    alpha : float
        The chosen penalty.
    """
    y = np.asarray(y, dtype=np.float64)
    train = np.asarray(train)
    if not np.isfinite(y[train]).all():
        raise ValueError("training targets must be finite; drop subjects without a value")
    oof = out_of_fold(kernel, y, train, alphas, n_folds, seed, folds)
    best = int(np.argmin(np.mean(np.abs(oof - y[train][None, :]), axis=1)))
    test_pred = kernel_ridge_predict(kernel, y, train, np.asarray(test), [alphas[best]])[0]
    return test_pred, oof[best], float(alphas[best])
