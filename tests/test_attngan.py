"""Plain AttnGAN (t2i_ray/models/attngan.py) and Style1AttnGAN (stylegan_attn.py, no word attention):
parameter counts against the reference code, stage shapes, AttnGAN's BCE and KL losses against a
hand computation, and one real training step of each through t2i_ray/train/gan.py."""
from __future__ import annotations

import math

import pytest
import torch

from t2i_ray.config import REFERENCE_NF, apply_overrides
from t2i_ray.losses.adversarial import discriminator_bce_loss, generator_bce_loss, kl_loss
from t2i_ray.models import attngan, stylegan_attn
from t2i_ray.models.factory import build_gan_models
from t2i_ray.models.text import ImageEncoder, TextEncoder, word_mask
from t2i_ray.train.gan import build_optimizers, gan_step
from tests.test_architectures import num_params, text_inputs

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; LAPACK's QR (orthogonal init) crawls on many



# ---- parameter counts at 256 against the reference code -------------------------------------

def test_attngan_parameter_counts_at_256_equal_the_reference_code():
    """The reference numbers were counted by instantiating `taoxugit/AttnGAN` code/model.py (G_NET,
    D_NET64, D_NET128, D_NET256) under torch 2 with code/cfg/bird_attn2.yml's settings (GF_DIM 32,
    DF_DIM 64, Z_DIM 100, CONDITION_DIM 100, R_NUM 2, TEXT.EMBEDDING_DIM 256, BRANCH_NUM 3):
    G_NET 7,084,592 (ca_net 102,800, h_net1 6,444,928, h_net2 = h_net3 267,136, img_net 864 each);
    D_NET64 6,313,730, D_NET128 19,424,002, D_NET256 71,858,946, each of which holds
    UNCOND_DNET 8,193 and COND_DNET 3,548,161 (here in the head). Parameters only (BN running
    statistics are buffers)."""
    assert REFERENCE_NF["attngan"] == 32
    with torch.device("meta"):  # shapes only: 105 M parameters without allocating them
        G, D, head = attngan.build(nf=32, z_dim=100, cond_dim=256, resolution=256)
    assert num_params(G) == 7_084_592
    assert num_params(G.ca) == 102_800 and num_params(G.init_stage) == 6_444_928
    assert [num_params(s) for s in G.next_stages] == [267_136, 267_136]
    assert [num_params(h) for h in head.heads] == [8_193 + 3_548_161] * 3
    per_stage = [num_params(s) + num_params(h) for s, h in zip(D.stages, head.heads)]
    assert per_stage == [6_313_730, 19_424_002, 71_858_946]
    assert G.sizes == D.sizes == [64, 128, 256]


def test_style1attngan_parameter_counts_at_256_nf64():
    """Style1AttnGAN's G is StyleGAN2's 256x256 config-e generator (24,767,458 parameters with
    rosinality/stylegan2-pytorch's definitions; tests/test_architectures.py derives it) with the
    mapping network's first layer reading (z, sentence) = 100 + 256 inputs instead of 512:
    24,767,458 + (356 - 512) * 512 = 24,687,586. D and head are attngan_style's."""
    G, D, head = stylegan_attn.build_style1(nf=64, z_dim=100, cond_dim=256, resolution=256)
    assert num_params(G) == 24_767_458 + (356 - 512) * 512 == 24_687_586
    assert not any(isinstance(m, stylegan_attn.WordAttention) for m in G.modules())
    assert (num_params(D), num_params(head)) == (17_441_344, 7_734_785)  # attngan_style's


# ---- shapes and behaviour ----------------------------------------------------------------------

@pytest.mark.parametrize("resolution, sizes", [(32, [8, 16, 32]), (64, [16, 32, 64])])
def test_attngan_stage_shapes(resolution, sizes):
    torch.manual_seed(0)
    nf, z_dim, E, B = 4, 8, 6, 3
    G, D, head = attngan.build(nf, z_dim, E, resolution)
    sent, words, mask = text_inputs(B, E, [3, 1, 7])
    z = torch.randn(B, z_dim)
    images, mu, logvar = G(z, sent, words, mask, return_stages=True)
    assert [x.shape for x in images] == [(B, 3, s, s) for s in sizes]
    assert all(x.abs().max() <= 1 for x in images)  # tanh at every stage
    assert mu.shape == logvar.shape == (B, attngan.CONDITION_DIM)
    features = D(images)
    assert [f.shape for f in features] == [(B, D.out_channels, 4, 4)] * 3 and D.out_channels == 8 * 2 * nf
    cond, uncond = head(features, sent)
    assert cond.shape == uncond.shape == (3, B)
    # one full-size batch: D resizes it to the stage sizes itself (the real images' path)
    real = torch.rand(B, 3, resolution, resolution) * 2 - 1
    pyramid = D.pyramid(real)
    assert [x.shape[-1] for x in pyramid] == sizes and pyramid[-1] is real
    D.eval()  # BN on running statistics: the same input gives the same features
    for a, b in zip(D(real), D(pyramid)):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="sizes"):
        D([real, real, real])
    G.eval()
    assert G(z, sent, words, mask).shape == (B, 3, resolution, resolution)  # the sampling interface
    for m in (G, D, head):  # checkpoints rebuild modules from their config
        type(m)(**m.config).load_state_dict(m.state_dict())


def test_attngan_generator_attends_over_words_and_style1_ignores_them():
    torch.manual_seed(0)
    sent, words, mask = text_inputs(2, 6, [3, 4])
    z = torch.randn(2, 8)
    G = attngan.Generator(nf=4, z_dim=8, cond_dim=6, resolution=32).eval()
    torch.manual_seed(1)  # the same conditioning-augmentation noise
    a = G(z, sent, words, mask, return_stages=True)[0]
    torch.manual_seed(1)
    b = G(z, sent, words + 1.0, mask, return_stages=True)[0]
    torch.testing.assert_close(a[0], b[0])  # stage 1 sees the sentence only
    assert not torch.allclose(a[1], b[1]) and not torch.allclose(a[2], b[2])  # stages 2, 3 attend
    with pytest.raises(ValueError, match="words"):
        G(z, sent)
    style1 = stylegan_attn.Generator(nf=4, z_dim=8, cond_dim=6, resolution=32, word_attention=False)
    torch.manual_seed(1)
    a = style1(z, sent, words, mask)
    torch.manual_seed(1)
    torch.testing.assert_close(style1(z, sent), a)  # no words needed, none used
    torch.manual_seed(1)
    assert not torch.allclose(style1(z, sent + 1.0), a)  # the sentence conditions it through w


# ---- AttnGAN's losses against a hand computation ------------------------------------------------

def test_attngan_bce_and_kl_losses_equal_the_reference_formulas():
    """`code/miscc/losses.py`: per D, errD = (BCE(uncond real, 1) + BCE(cond real, 1)) / 2 +
    (BCE(uncond fake, 0) + BCE(cond fake, 0) + BCE(cond wrong, 0)) / 3 on sigmoid outputs
    (nn.BCELoss); G: sum over the Ds of BCE(uncond fake, 1) + BCE(cond fake, 1); KL_loss =
    -1/2 mean(1 + logvar - mu^2 - exp(logvar))."""
    torch.manual_seed(0)
    S, B = 3, 5
    rc, ru, fc, fu, mc = (3 * torch.randn(S, B) for _ in range(5))
    bce = torch.nn.BCELoss()
    ones, zeros = torch.ones(B), torch.zeros(B)
    expected_d = sum((bce(torch.sigmoid(ru[i]), ones) + bce(torch.sigmoid(rc[i]), ones)) / 2
                     + (bce(torch.sigmoid(fu[i]), zeros) + bce(torch.sigmoid(fc[i]), zeros)
                        + bce(torch.sigmoid(mc[i]), zeros)) / 3 for i in range(S))
    torch.testing.assert_close(discriminator_bce_loss(rc, ru, fc, fu, mc), expected_d)
    expected_g = sum(bce(torch.sigmoid(fu[i]), ones) + bce(torch.sigmoid(fc[i]), ones) for i in range(S))
    torch.testing.assert_close(generator_bce_loss(fc, fu), expected_g)
    # one value by hand: logit 0 is probability 1/2 everywhere, so every BCE is log 2
    zero = torch.zeros(S, B)
    torch.testing.assert_close(discriminator_bce_loss(zero, zero, zero, zero, zero),
                               torch.tensor(S * 2 * math.log(2)))
    mu, logvar = torch.randn(4, 7), torch.randn(4, 7)
    var = logvar.exp()
    by_hand = sum(0.5 * (var[b, j] + mu[b, j] ** 2 - 1 - logvar[b, j]) for b in range(4) for j in range(7)) / 28
    torch.testing.assert_close(kl_loss(mu, logvar), by_hand)
    assert kl_loss(torch.zeros(2, 3), torch.zeros(2, 3)) == 0  # N(0, I) itself


# ---- one real training step per new architecture -------------------------------------------------

def _batch(B: int = 4, T: int = 6, res: int = 32):
    lens = torch.tensor([6, 2, 3, 1])
    ids = torch.where(torch.arange(T) < lens[:, None], torch.randint(1, 20, (B, T)), 0)
    return {"image": torch.rand(B, 3, res, res) * 2 - 1, "caption": ids, "caption_len": lens,
            "caption2": ids.roll(1, 0), "caption2_len": lens.roll(1, 0)}


@pytest.mark.parametrize("arch", ["attngan", "style1attngan"])
def test_one_training_step_of_each_new_architecture(tiny_cfg, arch):
    torch.manual_seed(0)
    cfg = apply_overrides(tiny_cfg, {"model.arch": arch, "loss.damsm": 5.0, "loss.f2r": 0.2, "loss.f2f": 0.2})
    models = build_gan_models(cfg, TextEncoder(20), ImageEncoder())
    opts = build_optimizers(models, cfg)
    trained = {"generator": models.generator, "discriminator": models.discriminator, "head": models.head}
    before = {name: {k: p.detach().clone() for k, p in m.named_parameters()} for name, m in trained.items()}
    losses = gan_step(models, opts, _batch(), cfg, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert {"loss_damsm", "loss_f2r", "loss_f2f", "loss_g_adv", "loss_d"} <= set(losses)
    # AttnGAN's recipe: KL of F_ca, no MA-GP; the style models keep hinge + MA-GP
    assert ("loss_kl" in losses) == (arch == "attngan") and ("loss_magp" in losses) == (arch != "attngan")
    for name, module in trained.items():
        unchanged = [k for k, p in module.named_parameters() if torch.equal(p, before[name][k])]
        if arch == "attngan":  # every parameter of all three stages and Ds got a gradient
            assert not unchanged, f"{name}: {unchanged[:5]}"
        else:  # (the hinge loss can give a bias an exact zero gradient)
            assert len(unchanged) < len(before[name]), name
    if arch == "attngan":
        fake = models.generator(torch.randn(4, cfg.model.z_dim), torch.randn(4, 256), torch.randn(4, 256, 6),
                                word_mask(torch.tensor([6, 2, 3, 1]), 6))
        assert fake.shape == (4, 3, 32, 32)


def test_attngan_step_losses_are_the_formulas_of_its_stages(tiny_cfg):
    """The reported D loss is `discriminator_bce_loss` of the three stage Ds on the real batch
    resized to each stage, the fakes of the one G forward, and the mismatched pairs (image i + 1
    with caption i); KL is that of the same forward. Checked by recomputing from the models
    before the step, with the same conditioning-augmentation noise."""
    from t2i_ray.losses.adversarial import mismatched
    from t2i_ray.train.method import encode_text

    torch.manual_seed(0)
    cfg = apply_overrides(tiny_cfg, {"model.arch": "attngan"})
    models = build_gan_models(cfg, TextEncoder(20), ImageEncoder())
    batch = _batch()
    G, D, head = models.generator, models.discriminator, models.head
    words, sent = encode_text(models.text_g, batch["caption"], batch["caption_len"], False)
    mask = word_mask(batch["caption_len"], batch["caption"].shape[1])
    z = torch.randn(4, cfg.model.z_dim, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    with torch.no_grad():
        fakes, mu, logvar = G(z, sent, words, mask, return_stages=True)
        rc, ru = head(D(batch["image"]), sent)
        fc, fu = head(D(fakes), sent)
        mc, _ = head([mismatched(f) for f in D(batch["image"])], sent)
    # BN in training mode: D's statistics are per call, so recompute in the step's order of calls
    expected_d = discriminator_bce_loss(rc, ru, fc, fu, mc).item()
    torch.manual_seed(5)
    losses = gan_step(models, build_optimizers(models, cfg), batch, cfg, torch.Generator().manual_seed(0))
    assert losses["loss_d"] == pytest.approx(expected_d, rel=1e-5)
    assert losses["loss_kl"] == pytest.approx(kl_loss(mu, logvar).item(), rel=1e-5)
