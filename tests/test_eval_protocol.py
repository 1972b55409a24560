"""Evaluation as published: caption sampling (eval.caption_mode), R-precision's caption pool,
DF-GAN's truncated noise (eval.truncation), the paper protocols' DAMSM requirement, and T2I_CL's
F2F variant (loss.f2f_variant)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from t2i_ray.config import ConfigError, apply_overrides, protocol_overrides
from t2i_ray.train.gan import eval_noise


# ---------------------------------------------------------------------------- truncated noise

def test_truncated_noise_bounds_resampling_and_scale(one_thread):
    plain = eval_noise(2000, 100, None, torch.Generator().manual_seed(3))
    torch.testing.assert_close(plain, torch.randn(2000, 100, generator=torch.Generator().manual_seed(3)),
                               rtol=0, atol=0)  # off: exactly the sampler's old N(0, I) draw
    z = eval_noise(2000, 100, 0.88, torch.Generator().manual_seed(3))
    assert z.abs().max() <= 0.88 * 2.0  # DF-GAN: 0.88 * truncnorm(-2, 2)
    inside = plain.abs() <= 2.0
    assert 0 < int((~inside).sum()) < 0.06 * plain.numel()  # ~4.6% of N(0, 1) lies beyond +-2
    # Entries of the first draw inside [-2, 2] are kept (scaled); only those outside are redrawn.
    torch.testing.assert_close(z[inside], 0.88 * plain[inside], rtol=0, atol=0)
    assert not torch.equal(z[~inside], 0.88 * plain[~inside])
    # The result is the truncated normal scipy's truncnorm(-2, 2) samples: its std, and a KS test.
    assert abs(float(z.std()) - 0.88 * scipy.stats.truncnorm.std(-2, 2)) < 0.005
    assert scipy.stats.kstest(z.flatten()[:20000].numpy() / 0.88, scipy.stats.truncnorm(-2, 2).cdf).pvalue > 1e-3
    torch.testing.assert_close(z, eval_noise(2000, 100, 0.88, torch.Generator().manual_seed(3)), rtol=0, atol=0)


def test_truncation_validated_and_gan_only(tiny_cfg):
    assert tiny_cfg.eval.truncation is None
    assert apply_overrides(tiny_cfg, {"eval.truncation": "0.88"}).eval.truncation == 0.88
    for bad in (0, -0.5):
        with pytest.raises(ConfigError, match="eval.truncation.*> 0"):
            apply_overrides(tiny_cfg, {"eval.truncation": bad})
    with pytest.raises(ConfigError, match="eval.truncation.*GAN"):
        apply_overrides(tiny_cfg, {"model.method": "diffusion", "eval.truncation": 0.88})


# ------------------------------------------------------------------ caption sampling, the pool

@pytest.fixture(scope="module")
def eval_setup(tiny_cfg, tiny_damsm):
    from t2i_ray.eval.evaluate import build_eval_context
    from t2i_ray.train.damsm import load_damsm

    damsm = load_damsm(tiny_damsm)
    cfg = apply_overrides(tiny_cfg, {"eval.num_images": 48, "eval.batch_size": 16})  # 1.5 passes over 32 images
    rand = apply_overrides(cfg, {"eval.caption_mode": "random"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention (conftest `one_thread`)
    try:
        return cfg, rand, build_eval_context(cfg, damsm), build_eval_context(rand, damsm)
    finally:
        torch.set_num_threads(threads)


def _recording_run(ctx, cfg, monkeypatch, seed=0):
    """evaluate_generator with a stand-in generator; returns (the (ids, lens) it was asked for, the
    arguments R-precision received, the row)."""
    from t2i_ray.eval import evaluate
    from t2i_ray.eval.r_precision import r_precision as real_rp

    asked, rp_args = [], {}

    def spy(*args, **kwargs):
        rp_args.update(zip(("image_feats", "text_feats", "image_ids", "pool_feats", "pool_ids"), args))
        return real_rp(*args, **kwargs)

    monkeypatch.setattr(evaluate, "r_precision", spy)

    def sample(ids, lens, generator):
        asked.extend(zip(ids, lens))
        return torch.rand(len(ids), 3, 32, 32, generator=generator) * 2 - 1

    row = evaluate.evaluate_generator(sample, ctx, cfg, seed=seed, warn=False)
    return asked, rp_args, row


def test_random_captions_differ_from_caption0_and_are_reproducible(eval_setup, monkeypatch, one_thread):
    cfg, rand, ctx_first, ctx_rand = eval_setup
    test_set = ctx_first.test_set
    n = len(test_set)
    first, rp_first, row_first = _recording_run(ctx_first, cfg, monkeypatch)
    assert row_first["eval_caption_mode"] == "first" and row_first["eval_noise"] == "normal"
    for j, (ids, lens) in enumerate(first):  # image j % N's caption 0, as the dataset item carries it
        assert torch.equal(ids, test_set[j % n]["caption"]) and lens == test_set[j % n]["caption_len"]

    drawn, rp_rand, row = _recording_run(ctx_rand, rand, monkeypatch)
    assert row["eval_caption_mode"] == "random" and row["r_precision_mismatch_pool"] == "all captions"
    from t2i_ray.eval.evaluate import caption_choices
    images, ks = caption_choices(ctx_rand, 48, seed=0)
    assert (images == np.arange(48) % n).all() and ks.min() >= 0 and ks.max() < 10
    for j, (ids, lens) in enumerate(drawn):  # caption k_j of image j % N, read as evaluation reads captions
        want_ids, want_len = test_set.eval_caption(j % n, int(ks[j]))
        assert torch.equal(ids, want_ids) and lens == want_len
    # Random draws: many are not caption 0, the two passes over the test split draw differently.
    assert (ks != 0).mean() > 0.6 and (ks[:16] != ks[n:]).any()
    assert sum(not torch.equal(a[0], b[0]) for a, b in zip(first, drawn)) > 0.5 * len(drawn)
    # Reproducible from the eval seed, whatever the batch size; another seed draws others.
    again, _, _ = _recording_run(ctx_rand, apply_overrides(rand, {"eval.batch_size": 20}), monkeypatch)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(drawn, again))
    assert not (caption_choices(ctx_rand, 48, seed=1)[1] == ks).all()

    # R-precision: the true caption is the one each image was made from; the pool holds every caption.
    pool_size = sum(len(c) for c in test_set.captions)
    assert len(rp_rand["pool_feats"]) == row["r_precision_pool_size"] == pool_size == 10 * n
    assert len(rp_first["pool_feats"]) == row_first["r_precision_pool_size"] == n
    np.testing.assert_array_equal(rp_rand["pool_ids"], np.repeat(np.arange(n), 10))  # shapes: other images
    enc = ctx_rand.damsm.text_encoder
    with torch.no_grad():
        for j in (0, 5, 37):
            want = enc(*(t[None] for t in test_set.eval_caption(j % n, int(ks[j]))))[1][0].numpy()
            np.testing.assert_allclose(rp_rand["text_feats"][j], want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(rp_rand["pool_feats"][10 * (j % n) + int(ks[j])], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rp_first["pool_feats"], ctx_first.caption_feats)


def test_mismatched_captions_come_from_every_caption_of_other_images(eval_setup):
    from t2i_ray.eval.r_precision import _sample_mismatched

    _, _, _, ctx = eval_setup
    pool_ids = np.arange(len(ctx.test_set))[ctx.pool_image]
    image_ids = np.arange(48) % len(ctx.test_set)
    picks = _sample_mismatched(image_ids, pool_ids, 9, np.random.default_rng(0))  # (48, 9) pool indices
    caption_k = picks - ctx.pool_start[ctx.pool_image[picks]]  # which caption of its image each pick is
    assert (pool_ids[picks] != image_ids[:, None]).all()
    assert (caption_k > 0).mean() > 0.8 and len(np.unique(caption_k)) == 10  # not only caption 0s


def test_context_and_config_must_agree_on_caption_mode(eval_setup):
    from t2i_ray.eval.evaluate import evaluate_generator

    cfg, rand, ctx_first, _ = eval_setup
    with pytest.raises(ValueError, match="caption_mode"):
        evaluate_generator(lambda i, l, g: torch.zeros(len(i), 3, 32, 32), ctx_first, rand)
    with pytest.raises(ConfigError, match="eval.caption_mode.*first, random"):
        apply_overrides(cfg, {"eval.caption_mode": "all"})


# ------------------------------------------------------------------------------- protocols

def test_paper_protocols_sample_random_captions_and_need_the_inception_damsm(tiny_cfg):
    cub = apply_overrides(tiny_cfg, {"data.dataset": "cub", "data.data_root": "/data/birds"})
    with pytest.raises(ConfigError, match="damsm.image_backbone: eval.protocol='cub'.*Inception-v3.*"
                                          "set damsm.image_backbone=inception"):
        apply_overrides(cub, protocol_overrides("cub"))
    inception = {"damsm.image_backbone": "inception", "damsm.inception_weights": "/w/inception_v3.pth"}
    paper = apply_overrides(cub, {**inception, **protocol_overrides("cub")})
    assert paper.eval.caption_mode == "random" and paper.damsm.image_backbone == "inception"
    with pytest.raises(ConfigError, match="eval.caption_mode.*requires 'random'"):
        apply_overrides(paper, {"eval.caption_mode": "first"})
    coco = apply_overrides(tiny_cfg, {"data.dataset": "coco", "data.data_root": "/data/coco"})
    with pytest.raises(ConfigError, match="damsm.image_backbone"):
        apply_overrides(coco, protocol_overrides("coco"))


def test_sweep_script_refuses_protocol_with_cnn_damsm(tmp_path):
    """The GAN sweep scripts' --eval-protocol goes through the same validation, before Ray."""
    import importlib.util
    from pathlib import Path

    from t2i_ray.sweep.cli import config_from_args

    path = Path(__file__).resolve().parents[1] / "sweeps" / "ablate_losses.py"
    spec = importlib.util.spec_from_file_location("ablate_losses_for_test", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    root = tmp_path / "birds"
    root.mkdir()
    args = script.parse_args(["--preset", "ci", "--dataset", "cub", "--data-root", str(root),
                              "--eval-protocol", "cub", "--output-dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="damsm.image_backbone.*damsm.inception_weights"):
        config_from_args(args)


# ------------------------------------------------------------------------ T2I_CL F2F variant

class _GlobalOnly(torch.nn.Module):
    """A stand-in frozen DAMSM image encoder: (regions, global)."""

    def forward(self, x):
        return x, F.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 86)[:, :256]


def _step(cfg, models, batch):
    from t2i_ray.train.gan import build_optimizers, gan_step

    torch.manual_seed(0)
    return gan_step(models, build_optimizers(models, cfg), batch, cfg, torch.Generator().manual_seed(7))


def test_t2i_cl_variant_adds_exactly_the_second_pairs_d_loss(tiny_cfg, one_thread):
    from t2i_ray.losses.adversarial import mismatched
    from t2i_ray.models.factory import build_gan_models
    from t2i_ray.models.text import TextEncoder, word_mask
    from t2i_ray.train.gan import sample_noise

    torch.manual_seed(0)
    isolated = apply_overrides(tiny_cfg, {"loss.f2f": 0.2})
    t2i_cl = apply_overrides(isolated, {"loss.f2f_variant": "t2i_cl"})
    assert isolated.loss.f2f_variant == "isolated"
    models = build_gan_models(isolated, TextEncoder(20), _GlobalOnly())
    B, T = 4, 6
    lens = torch.tensor([6, 2, 3, 1])
    ids = torch.where(torch.arange(T) < lens[:, None], torch.randint(1, 20, (B, T)), 0)
    lens2 = torch.tensor([3, 5, 1, 4])
    ids2 = torch.where(torch.arange(T) < lens2[:, None], torch.randint(1, 20, (B, T)), 0)
    batch = {"image": torch.rand(B, 3, 32, 32) * 2 - 1, "caption": ids, "caption_len": lens,
             "caption2": ids2, "caption2_len": lens2}

    # By hand, on the models before the step: D's loss on (real, e2, G(z, e2)), z the step's noise.
    G, D, head, text = (copy.deepcopy(m) for m in (models.generator, models.discriminator, models.head,
                                                    models.text_g))
    with torch.no_grad():
        words2, e2 = text(ids2, lens2)
    z = sample_noise(B, tiny_cfg.model.z_dim, torch.Generator().manual_seed(7), "cpu")
    fake2 = G(z, e2, words2, word_mask(lens2, T)).detach()
    real = batch["image"].clone().requires_grad_()
    e2 = e2.clone().requires_grad_()
    real_feat = D(real)
    real2 = head(real_feat, e2)
    hinge = (torch.relu(1 - real2).mean()
             + 0.5 * (torch.relu(1 + head(D(fake2), e2)).mean() + torch.relu(1 + head(mismatched(real_feat), e2)).mean()))
    gx, ge = torch.autograd.grad(real2.sum(), (real, e2))
    grad_norm = torch.cat([gx.flatten(1), ge.flatten(1)], 1).norm(dim=1)
    err_d2 = float(hinge + 2.0 * (grad_norm ** 6).mean())  # MA-GP, k = 2, p = 6

    out_iso = _step(isolated, copy.deepcopy(models), batch)
    cl_models = copy.deepcopy(models)
    out_cl = _step(t2i_cl, cl_models, batch)
    assert "loss_d2" not in out_iso and "loss_g_adv2" not in out_iso
    assert out_cl["loss_d_adv"] == out_iso["loss_d_adv"] and out_cl["loss_magp"] == out_iso["loss_magp"]
    assert out_cl["loss_d2"] == pytest.approx(err_d2, rel=1e-5)
    assert out_cl["loss_d"] - out_iso["loss_d"] == pytest.approx(err_d2, rel=1e-4)
    # G: the second fake's adversarial term joins (the NT-Xent pair is the same two fakes).
    assert out_cl["loss_f2f"] == pytest.approx(out_iso["loss_f2f"], rel=1e-5)
    assert out_cl["loss_g"] == pytest.approx(out_cl["loss_g_adv"] + out_cl["loss_g_adv2"] + 0.2 * out_cl["loss_f2f"],
                                             rel=1e-5, abs=1e-6)
    assert out_iso["loss_g"] == pytest.approx(out_iso["loss_g_adv"] + 0.2 * out_iso["loss_f2f"], rel=1e-5, abs=1e-6)

    with pytest.raises(ConfigError, match="loss.f2f_variant.*pretrained"):
        apply_overrides(t2i_cl, {"model.text_embedding": "shared"})
    with pytest.raises(ConfigError, match="loss.f2f_variant: t2i_cl shows the second fake to a single-stage D"):
        apply_overrides(t2i_cl, {"model.arch": "attngan"})
    with pytest.raises(ConfigError, match="loss.f2f_variant"):
        apply_overrides(isolated, {"loss.f2f_variant": "both"})
