"""R-precision (AttnGAN / DM-GAN protocol, reference gan_anchors.md §3.6).

For each generated image: its true caption plus `num_candidates - 1` mismatched captions drawn
uniformly from pool captions of *other* ids (CUB: other classes; COCO and `shapes`: other
images; the pool: every caption of the test images, as DM-GAN, or their caption 0s, per
eval.caption_mode, t2i_ray/eval/evaluate.py); cosine similarity of global features; a hit when the true caption ranks first (R@1).
The hits are shuffled and split into folds; we report mean and std over the per-fold means.
"""
from __future__ import annotations

import numpy as np

# Images scored per matrix product: bounds the (chunk, M) similarity block to ~100 MB at M = 30k
# (fewer images per product for larger pools, e.g. every caption of COCO's test split).
_CHUNK = 512
_CHUNK_POOL = 30000


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sample_mismatched(
    image_ids: np.ndarray, pool_ids: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, k) pool indices; row i holds k distinct entries whose id differs from image_ids[i].

    The pool is sorted by id so the entries of one id form a contiguous block [lo, hi); we draw
    k distinct positions among the M - (hi - lo) others and skip over the block, which samples
    uniformly from the other ids without building an (N, M) mask.
    """
    order = np.argsort(pool_ids, kind="stable")
    sorted_ids = pool_ids[order]
    lo = np.searchsorted(sorted_ids, image_ids, side="left")  # (N,)
    hi = np.searchsorted(sorted_ids, image_ids, side="right")  # (N,)
    num_other = len(pool_ids) - (hi - lo)  # (N,)
    if (num_other < k).any():
        i = int(np.argmin(num_other))
        raise ValueError(
            f"r_precision: image id {image_ids[i]!r} has only {num_other[i]} pool captions with a "
            f"different id, but {k} mismatched captions are needed (num_candidates={k + 1}); use a "
            f"larger caption pool (more test images) or fewer candidates"
        )
    out = np.empty((len(image_ids), k), dtype=np.int64)
    for i in range(len(image_ids)):
        pos = rng.choice(num_other[i], size=k, replace=False)  # positions among the other ids
        out[i] = order[np.where(pos < lo[i], pos, pos + (hi[i] - lo[i]))]
    return out


def r_precision(
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    image_ids: np.ndarray,
    pool_feats: np.ndarray,
    pool_ids: np.ndarray,
    num_candidates: int = 100,
    num_folds: int = 10,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Top-1 R-precision, mean and std (ddof=0, as DM-GAN's np.std) over `num_folds` folds.

    image_feats (N, D): global image features of the generated images; text_feats (N, D): the
    feature of the caption each image was generated from; image_ids (N,): the id that caption
    belongs to; pool_feats (M, D) / pool_ids (M,): captions to draw mismatches from. Ties with
    the true caption count as misses (a collapsed encoder must not score 1.0). `rng=None` means
    `np.random.default_rng(0)` so repeated evaluations of one model agree.
    Deviation from DM-GAN: folds are `np.array_split` of all N hits, not their off-by-one
    `R[i*3000:(i+1)*3000-1]`; mismatches are distinct (DM-GAN may repeat one).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    img, txt, pool = _l2_normalise(image_feats), _l2_normalise(text_feats), _l2_normalise(pool_feats)
    image_ids, pool_ids = np.asarray(image_ids), np.asarray(pool_ids)
    n = img.shape[0]
    if txt.shape != img.shape or image_ids.shape != (n,) or pool.shape[1:] != img.shape[1:] \
            or pool_ids.shape != (pool.shape[0],):
        raise ValueError(
            f"r_precision: expected image_feats (N, D), text_feats (N, D), image_ids (N,), pool_feats "
            f"(M, D), pool_ids (M,), got {img.shape}, {txt.shape}, {image_ids.shape}, {pool.shape}, "
            f"{pool_ids.shape}"
        )
    if num_candidates < 2:
        raise ValueError(f"r_precision: num_candidates must be >= 2, got {num_candidates}")
    if not 1 <= num_folds <= n:
        raise ValueError(f"r_precision: num_folds must be in 1..N ({n}), got {num_folds}")

    mismatched = _sample_mismatched(image_ids, pool_ids, num_candidates - 1, rng)  # (N, K-1)
    true_sim = np.einsum("nd,nd->n", img, txt)  # (N,)
    best_other = np.empty(n)
    chunk = max(1, min(_CHUNK, _CHUNK * _CHUNK_POOL // len(pool)))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        sims = img[sl] @ pool.T  # (chunk, M)
        best_other[sl] = np.take_along_axis(sims, mismatched[sl], axis=1).max(axis=1)
    hits = (true_sim > best_other).astype(np.float64)  # strict: ties are misses

    fold_means = np.array([fold.mean() for fold in np.array_split(rng.permutation(hits), num_folds)])
    return float(fold_means.mean()), float(fold_means.std())
