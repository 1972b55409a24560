"""Fréchet distance (FID) and kernel inception distance (KID) on feature arrays.

Backbone-agnostic: features come from Inception pool3 or from the `domain` evaluator
(`t2i_ray/eval/features.py`). Statistics are float64 throughout; float32 covariances give NaN or
batch-size-dependent FIDs at large N (reference diffusion_metrics.md, Part C items 1 and 7).
"""
from __future__ import annotations

import warnings

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F), both float64, of features (N, F)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {x.shape}")
    n, f = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    if n < f:
        # Below F samples the covariance has rank <= N-1, and FID is dominated by its N-bias
        # (TTUR#4; two draws of one distribution give FID ~266 at N=500, 2048-d). Say so loudly.
        warnings.warn(
            f"FID statistics from N={n} samples < feature dimension {f}: the covariance is "
            f"rank-deficient and FID is strongly biased in N; compare FIDs only at equal N and "
            f"prefer KID for small sample counts",
            stacklevel=2,
        )
    mu = x.mean(axis=0)  # (F,)
    sigma = np.cov(x, rowvar=False)  # (F, F), ddof=1 as pytorch-fid / torch-fidelity
    return mu, np.atleast_2d(sigma)


def _round_off_floor(eigvals: np.ndarray) -> float:
    """Eigenvalues below this are round-off of exact zeros (numpy's matrix_rank tolerance,
    F * eps * lambda_max). Their square roots (~1e-8 * sqrt(lambda_max) each) would otherwise add up
    over the ~2000 null directions of a rank-deficient (N < F) covariance."""
    return float(eigvals.size * np.finfo(np.float64).eps * max(float(eigvals.max(initial=0.0)), 0.0))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix; round-off eigenvalues (see above) -> 0."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    eigvals = np.where(eigvals > _round_off_floor(eigvals), eigvals, 0.0)
    return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2}) for two Gaussians, in float64.

    S1 S2 is not symmetric, but it is similar to the symmetric PSD M = S1^{1/2} S2 S1^{1/2}, so
    tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M)) with `eigvalsh`: real by construction, no
    complex parts to discard and no scipy.linalg.sqrtm (whose regressions broke pytorch-fid,
    Part C item 4). Round-off eigenvalues of rank-deficient covariances (below F * eps * lambda_max,
    either sign) count as 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    f = mu1.shape[0]
    if mu1.shape != (f,) or mu2.shape != (f,) or sigma1.shape != (f, f) or sigma2.shape != (f, f):
        raise ValueError(
            f"frechet_distance: expected mu (F,) and sigma (F, F) with one F, got mu1 {mu1.shape}, "
            f"sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)  # (F, F)
    m = root1 @ sigma2 @ root1
    m = (m + m.T) / 2  # symmetric in exact arithmetic; remove round-off asymmetry before eigvalsh
    eig_m = np.linalg.eigvalsh(m)
    tr_covmean = np.sqrt(np.where(eig_m > _round_off_floor(eig_m), eig_m, 0.0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3, the KID kernel (Binkowski et al. 2018). (m, d), (n, d) -> (m, n)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples x, y (m, d): the within-set sums skip the
    diagonal (i == j), the cross term keeps all m^2 pairs (as torch-fidelity / Binkowski)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    f1: np.ndarray, f2: np.ndarray, num_subsets: int, subset_size: int, rng: np.random.Generator
) -> tuple[float, float]:
    """KID: mean and std (ddof=0, as torch-fidelity) of the unbiased MMD^2 over `num_subsets`
    random subsets, each `subset_size` rows of f1 (N1, F) and of f2 (N2, F) drawn without
    replacement. Unbiased, so it can be slightly negative and is usable at small N, unlike FID.
    `subset_size` is capped at min(N1, N2) so small evaluations still run.
    """
    x, y = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs (N1, F) and (N2, F) features, got {x.shape} and {y.shape}")
    m = min(subset_size, len(x), len(y))
    if m < 2 or num_subsets < 1:
        raise ValueError(
            f"KID needs num_subsets >= 1 and subsets of >= 2 samples, got num_subsets={num_subsets}, "
            f"subset size {m} (requested {subset_size}, N1={len(x)}, N2={len(y)})"
        )
    mmds = np.array([
        _mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
        for _ in range(num_subsets)
    ])
    return float(mmds.mean()), float(mmds.std())
