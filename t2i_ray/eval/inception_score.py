"""Inception Score (Salimans et al. 2016) from classifier logits, reference diffusion_metrics.md B.3.

IS = exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the split, computed on each of
`num_splits` consecutive slices `[i*N//s, (i+1)*N//s)` and reported as mean and std (ddof=0) over
the splits, as OpenAI's improved-gan code and torch-fidelity do. Logits are those of the TF FID
Inception's 1008-way fc *without* its bias (OpenAI's `softmax/logits/MatMul`, torch-fidelity's
`logits_unbiased`). Like torch-fidelity, the rows are shuffled first (seeded): generated images
arrive in test-caption order, and on class-sorted sets (CUB) unshuffled splits would each cover
a few classes. Float64 throughout.
"""
from __future__ import annotations

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, num_splits: int = 10,
                    rng: np.random.Generator | None = None, shuffle: bool = True) -> tuple[float, float]:
    """Mean and std (ddof=0) of exp(mean_x KL(p(y|x) || p_split(y))) over `num_splits` splits.

    logits (N, C); `rng=None` with shuffle means `np.random.default_rng(0)` (repeatable).
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 2:
        raise ValueError(f"inception_score: logits must be (N, C) with C >= 2, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= num_splits <= n:
        raise ValueError(f"inception_score: num_splits must be in 1..N ({n}), got {num_splits}")
    if not np.isfinite(x).all():
        raise ValueError("inception_score: logits contain NaN or inf")
    if shuffle:
        x = x[(np.random.default_rng(0) if rng is None else rng).permutation(n)]
    log_p = _log_softmax(x)  # (N, C) log p(y|x)
    p = np.exp(log_p)
    scores = []
    for i in range(num_splits):
        sl = slice(i * n // num_splits, (i + 1) * n // num_splits)
        log_marginal = np.log(p[sl].mean(axis=0))  # (C,) log p(y) of the split
        kl = (p[sl] * (log_p[sl] - log_marginal)).sum(axis=1)  # (n_split,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
