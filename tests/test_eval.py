"""Evaluation: FID/KID against closed forms and hand loops, R-precision protocol, domain evaluator."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from t2i_ray.config import DataConfig
from t2i_ray.data import shapes
from t2i_ray.eval import features as feat
from t2i_ray.eval.fid import feature_stats, frechet_distance, kernel_inception_distance
from t2i_ray.eval.r_precision import r_precision


def _random_cov(rng: np.random.Generator, f: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(f, rank or 2 * f))
    return a @ a.T / a.shape[1]


# ----------------------------------------------------------------------------------------- FID

def test_frechet_identical_stats_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _random_cov(rng, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    # Rank-deficient covariance (as with N < F samples): still 0, not NaN or complex.
    low = _random_cov(rng, 16, rank=5)
    assert abs(frechet_distance(mu, low, mu, low)) < 1e-6


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(2)
    for f in (3, 10, 40):
        mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
        s1, s2 = _random_cov(rng, f), _random_cov(rng, f)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        got = frechet_distance(mu1, s1, mu2, s2)
        assert isinstance(got, float)
        assert got == pytest.approx(expected, rel=1e-6)
        assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9, abs=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_feature_stats_float64_and_warns_below_feature_dim():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N >= F: no warning
        mu, sigma = feature_stats(x)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (8, 8)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.warns(UserWarning, match="rank-deficient"):
        mu, sigma = feature_stats(rng.normal(size=(6, 8)))
    assert np.isfinite(frechet_distance(mu, sigma, np.zeros(8), np.eye(8)))


# ----------------------------------------------------------------------------------------- KID

def test_kid_matches_hand_loops():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(5, 3)), rng.normal(loc=0.5, size=(5, 3))
    d, m = 3, 5

    def k(a, b):
        return (sum(a[t] * b[t] for t in range(d)) / d + 1) ** 3

    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    # Subsets of all 5 rows are permutations, and MMD^2 does not depend on row order.
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=5, rng=rng)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_vs_shifted_distribution():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = kernel_inception_distance(a, b, num_subsets=20, subset_size=200, rng=rng)
    shifted, _ = kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=200, rng=rng)
    assert abs(same) < 0.02 and same_std > 0
    assert shifted > 0.5 and shifted > 20 * abs(same)


def test_kid_caps_subset_size():
    rng = np.random.default_rng(6)
    mean, _ = kernel_inception_distance(rng.normal(size=(30, 4)), rng.normal(size=(40, 4)), 5, 1000, rng)
    assert np.isfinite(mean)
    with pytest.raises(ValueError, match="subset"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((10, 4)), 5, 100, rng)


# -------------------------------------------------------------------------------- R-precision

def test_r_precision_perfect_and_random_features():
    rng = np.random.default_rng(7)
    n, d = 400, 32
    feats, ids = rng.normal(size=(n, d)), np.arange(n)
    mean, std = r_precision(feats, feats, ids, feats, ids, num_candidates=100, num_folds=10, rng=rng)
    assert mean == 1.0 and std == 0.0
    # Unrelated text features: the true caption is first by chance, 1 time in num_candidates.
    n = 3000
    img, txt = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    mean, std = r_precision(img, txt, np.arange(n), txt, np.arange(n), num_candidates=10, num_folds=10, rng=rng)
    assert abs(mean - 0.1) < 0.025 and 0 < std < 0.06


def test_r_precision_never_draws_same_id_captions():
    # Every id has a decoy caption identical to the image (cos = 1) that would beat the true
    # caption (cos < 1), plus a random one. num_candidates - 1 = all other-id captions, so the
    # result is 1.0 only if every other-id caption and no same-id decoy is a candidate.
    rng = np.random.default_rng(8)
    n, d = 30, 64
    img = rng.normal(size=(n, d))
    txt = img + 0.1 * rng.normal(size=(n, d))
    pool = np.concatenate([img, rng.normal(size=(n, d))])
    pool_ids = np.concatenate([np.arange(n), np.arange(n)])
    mean, _ = r_precision(img, txt, np.arange(n), pool, pool_ids, num_candidates=2 * (n - 1) + 1,
                          num_folds=3, rng=rng)
    assert mean == 1.0
    # The construction bites: each image's own decoy (cos 1) beats its true caption.
    cos_true = np.einsum("nd,nd->n", img, txt) / (np.linalg.norm(img, axis=1) * np.linalg.norm(txt, axis=1))
    assert (cos_true < 0.999).all()


def test_r_precision_raises_with_too_few_other_ids():
    rng = np.random.default_rng(9)
    f = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="different id"):
        r_precision(f, f, np.arange(10), f, np.arange(10), num_candidates=11, num_folds=2, rng=rng)
    # Captions of one image share its id: 10 images x 3 captions leave 27 others per image.
    pool, pool_ids = np.repeat(f, 3, axis=0), np.repeat(np.arange(10), 3)
    r_precision(f, f, np.arange(10), pool, pool_ids, num_candidates=28, num_folds=2, rng=rng)
    with pytest.raises(ValueError, match="different id"):
        r_precision(f, f, np.arange(10), pool, pool_ids, num_candidates=29, num_folds=2, rng=rng)


class _NoShuffle:
    """A numpy Generator whose permutation is the identity, so the folds are known."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def choice(self, *args, **kwargs):
        return self._rng.choice(*args, **kwargs)

    def permutation(self, x):
        return np.asarray(x)


def test_r_precision_folds_mean_std_and_ties():
    rng = np.random.default_rng(10)
    n, d = 10, 16
    img = rng.normal(size=(n, d))
    hits = np.array([1, 1, 1, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    txt = np.where(hits[:, None], img, -img)  # miss: the true caption is the least similar
    mean, std = r_precision(img, txt, np.arange(n), img, np.arange(n), num_candidates=4, num_folds=3,
                            rng=_NoShuffle(0))
    fold_means = np.array([3 / 4, 0.0, 1.0])  # array_split sizes 4, 3, 3
    assert mean == pytest.approx(fold_means.mean()) and std == pytest.approx(fold_means.std())
    # A collapsed encoder (every similarity equal) ties everywhere: ties are misses.
    ones = np.ones((n, d))
    assert r_precision(ones, ones, np.arange(n), ones, np.arange(n), num_candidates=5, num_folds=2,
                       rng=rng) == (0.0, 0.0)


# ---------------------------------------------------------------------------- domain evaluator

def test_float_and_uint8_images_get_identical_evaluator_input():
    rng = np.random.default_rng(11)
    u8 = rng.integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)  # NHWC as shapes renders
    as_float = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # exact levels
    # Generator outputs between levels are rounded to the nearest of the 256 levels.
    jitter = torch.from_numpy(rng.uniform(-0.4, 0.4, size=as_float.shape)).float() / 127.5
    x_u8, x_f = feat._to_model_input(u8), feat._to_model_input(as_float + jitter)
    assert x_u8.shape == (4, 3, 8, 8) and torch.equal(x_u8, x_f)
    assert x_u8.min() >= -1 and x_u8.max() <= 1


def test_attribute_scores_hand_example():
    c = 2  # 2 shapes x 2 colours: pair index = shape * 2 + colour
    targets = np.array([[1, 0, 0, 1],   # shape0/colour0 and shape1/colour1
                        [0, 1, 0, 0]])  # shape0/colour1
    logits = np.array([[3.0, -1, 2.0, -2],  # finds pair 0, misses pair 3, false pair 2
                       [-1, 1.0, -1, -1]])  # finds pair 1
    s = feat.attribute_scores(logits, targets, num_colors=c)
    assert s["attr_pair_recall"] == pytest.approx(2 / 3)
    assert s["attr_pair_precision"] == pytest.approx(2 / 3)
    # shapes: image 0 has shapes {0, 1}, predicted {0, 1}; image 1 shape {0}, predicted {0}
    assert s["attr_shape_recall"] == pytest.approx(1.0)
    # colours: image 0 has {0, 1}, predicted {0}; image 1 {1}, predicted {1}
    assert s["attr_color_recall"] == pytest.approx(2 / 3)
    assert s["attr_exact"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="num_colors"):
        feat.attribute_scores(np.zeros((1, 5)), np.zeros((1, 5)), num_colors=2)


def test_domain_evaluator_cached_versioned_and_feature_scale(tmp_path):
    data = DataConfig(resolution=32, num_train=64, num_test=64, data_seed=3)
    logs: list[str] = []
    model, info = feat.load_or_train_domain_evaluator(data, 8, 128, str(tmp_path), log=logs.append)
    assert info["backbone"].startswith(f"domain-v{feat.DOMAIN_EVALUATOR_VERSION}-")
    assert info["pool_seed"] not in (shapes.split_seed(3, "train"), shapes.split_seed(3, "test"))
    assert 0.0 <= info["heldout_attr_pair_recall"] <= 1.0 and info["heldout_num_images"] == 64
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    # Features of the training pool are scaled to mean ||f||^2 / F = 1 (KID kernel scale).
    pool = shapes.ShapesSource(128, 32, info["pool_seed"])
    f, logits = feat.extract(model, [np.stack([pool[i].image for i in range(128)])])
    assert f.dtype == np.float64 and f.shape == (128, 128) and logits.shape == (128, shapes.NUM_ATTRIBUTES)
    assert (f**2).sum(axis=1).mean() / f.shape[1] == pytest.approx(1.0, rel=1e-4)

    # Same config: loaded from the cache with identical weights, not retrained.
    logs.clear()
    again, info2 = feat.load_or_train_domain_evaluator(data, 8, 128, str(tmp_path), log=logs.append)
    assert any("loaded domain evaluator" in m for m in logs) and info2["backbone"] == info["backbone"]
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    # Any recipe input (here the step count) is a different backbone, trained anew.
    _, info3 = feat.load_or_train_domain_evaluator(data, 9, 128, str(tmp_path), log=logs.append)
    assert info3["backbone"] != info["backbone"]
    assert len(os.listdir(tmp_path / "evaluators")) == 2


def test_domain_evaluator_refuses_corrupt_cache(tmp_path):
    data = DataConfig(resolution=32, num_train=64, num_test=64)
    _, info = feat.load_or_train_domain_evaluator(data, 4, 64, str(tmp_path), log=lambda s: None)
    with open(info["cache_path"], "wb") as fh:
        fh.write(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="delete it to retrain"):
        feat.load_or_train_domain_evaluator(data, 4, 64, str(tmp_path), log=lambda s: None)
