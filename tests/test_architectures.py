"""SSA-GAN and AttnGAN-with-StyleGAN2-blocks networks (SPEC 3; gan_anchors.md §2), the factory,
and short training runs of every architecture through the real training step and loop."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from t2i_ray.config import ARCHITECTURES, REFERENCE_NF, ConfigError, apply_overrides
from t2i_ray.models import ssagan, stylegan_attn
from t2i_ray.models.factory import BUILDERS, build_gan_models
from t2i_ray.models.text import TextEncoder, word_mask
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.gan import build_optimizers, gan_step
from t2i_ray.train.loop import LocalEnv, ddp_kwargs, run_training

NEW_ARCHS = ("ssagan", "attngan_style")
MODULES = {"ssagan": ssagan, "attngan_style": stylegan_attn}


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


def text_inputs(B: int, E: int, lengths: list[int], T: int = 7):
    lens = torch.tensor(lengths)
    return torch.randn(B, E), torch.randn(B, E, T), word_mask(lens, T)


# ---- parameter counts at the reference setting ---------------------------------------------

def test_ssagan_parameter_counts_at_256_nf64():
    """Exact counts at 256, nf=64, z_dim=100, sentence 256, from the reference definitions
    (`wtliao/text2image` model.py; gan_anchors §2) written out here by hand.

    G (reference NetG has exactly the same modules) = 29,494,273:
      fc 100*8192 + 8192; mask predictor(i) = (9*100i + 100) + BN(100) 200 + (100 + 1);
      SSCBN(C) = 2 MLPs x [(256*256 + 256) + (256C + C)] (BN without affine: no parameters);
      block(i, o) = SSCBN(i) + SSCBN(o) + (9io + o) + (9o^2 + o) + [io + o if i != o] + gamma
                    + mask predictor(o) except the last block; final BN(64) + conv3x3(64 -> 3).
    D = 76,803,718: DF-GAN-v1 NetD (ndf 64, widths up to 1024). The reference also builds
      the 1x1 shortcut in its two 1024 -> 1024 blocks and never calls it (2 x 1,049,600):
      reference NetD without its head = 78,902,918. We leave it out (unused parameters break DDP).
    head = 9 * (1024 + 256) * 128 + 16 * 128 = 1,476,608 (reference D_GET_LOGITS: identical).
    No published SSA-GAN parameter count was found (gan_anchors §6 lists none).
    """
    E = 256

    def sscbn(c):
        return 2 * ((E * E + E) + (E * c + c))

    def mask(i):
        return 9 * 100 * i + 100 + 200 + 100 + 1

    def block(i, o, predict_mask=True):
        return (sscbn(i) + sscbn(o) + 9 * i * o + o + 9 * o * o + o + (i * o + o if i != o else 0) + 1
                + (mask(o) if predict_mask else 0))

    g_blocks = [(512, 512)] * 4 + [(512, 256), (256, 128)]
    expected_g = (100 * 8192 + 8192 + mask(512) + sum(block(i, o) for i, o in g_blocks)
                  + block(128, 64, predict_mask=False) + 2 * 64 + 9 * 64 * 3 + 3)

    def down(i, o):
        return 16 * i * o + 9 * o * o + (i * o + o if i != o else 0) + 1

    d_blocks = [(64, 128), (128, 256), (256, 512), (512, 1024), (1024, 1024), (1024, 1024)]
    expected_d = 9 * 3 * 64 + 64 + sum(down(i, o) for i, o in d_blocks)

    G, D, head = ssagan.build(nf=64, z_dim=100, cond_dim=256, resolution=256)
    assert num_params(G) == expected_g == 29_494_273
    assert num_params(D) == expected_d == 76_803_718
    assert num_params(D) + 2 * (1024 * 1024 + 1024) == 78_902_918  # reference NetD body
    assert num_params(head) == 1_476_608
    assert len(G.blocks) == 7  # block0 at 4x4 + 6 upsampling blocks, as the reference
    assert [b.conv2.out_channels for b in G.blocks] == [512, 512, 512, 512, 256, 128, 64]


def test_attngan_style_parameter_counts_at_256_nf64():
    """Exact counts at 256, nf=64 (w_dim 512), z_dim=100, words/sentence 256, written out here.

    StyledConv(i, o) = 9io (weight) + (512i + i) (style affine A, bias init 1) + 1 (noise
      strength) + o (bias); ToRGB(i) = 3i + (512i + i) + 3.
    G = 25,351,522 = mapping [(356*512 + 512) + 7 (512*512 + 512)] + const 512*16 + 4x4 conv and
      toRGB + six blocks (StyledConv up, StyledConv, ToRGB); the last two see concat(h, word
      context) (2i input channels) and own a word projection 256*i.
    For comparison, StyleGAN2 at 256 with these widths (config-e, rosinality's definitions, 8 x
      512 -> 512 mapping) has 24,767,458 G parameters: ours differs by the (z, sentence) mapping
      input ((356 - 512) x 512 = -79,872) and the word attention (+663,936: projections U
      and the context's input channels of the first conv of the last two blocks).
    D = 17,441,344: fromRGB 3*64 + 64; ResBlock(i, o) = (9i^2 + i) + (9io + o) + io.
    head = conv3x3 (512 + 256 -> 512) + fc 8192 -> 512 + fc 512 -> 1 = 7,734,785; StyleGAN2's
      final layers take 512 + 1 (minibatch stddev) channels: 7,734,785 - 255 * 9 * 512.
    """
    w, E = 512, 256

    def styled(i, o):
        return 9 * i * o + (w * i + i) + 1 + o

    def to_rgb(i):
        return 3 * i + (w * i + i) + 3

    widths = [512, 512, 512, 512, 256, 128, 64]
    mapping_style = (356 * w + w) + 7 * (w * w + w)
    synthesis = 512 * 16 + styled(512, 512) + to_rgb(512)
    attention = 0
    for k, (i, o) in enumerate(zip(widths[:-1], widths[1:])):
        attend = k >= 4
        synthesis += styled(2 * i if attend else i, o) + styled(o, o) + to_rgb(o) + (E * i if attend else 0)
        # word projection U + the context's input channels of the first conv and its style affine
        attention += (E * i + 9 * i * o + w * i + i) if attend else 0
    expected_g = mapping_style + synthesis
    stylegan2 = 8 * (w * w + w) + synthesis - attention
    G, D, head = stylegan_attn.build(nf=64, z_dim=100, cond_dim=256, resolution=256)
    assert num_params(G) == expected_g == 25_351_522
    assert stylegan2 == 24_767_458
    assert num_params(G) - stylegan2 == (356 - 512) * w + attention == -79_872 + 663_936
    assert num_params(G.mapping) == mapping_style and len(G.mapping.layers) == 8

    def res_block(i, o):
        return (9 * i * i + i) + (9 * i * o + o) + i * o

    d_widths = [64, 128, 256, 512, 512, 512, 512]
    expected_d = 3 * 64 + 64 + sum(res_block(i, o) for i, o in zip(d_widths[:-1], d_widths[1:]))
    assert num_params(D) == expected_d == 17_441_344
    expected_head = (9 * (512 + E) * 512 + 512) + (512 * 16 * 512 + 512) + (512 + 1)
    assert num_params(head) == expected_head == 7_734_785


# ---- shapes, masks, init behaviour -----------------------------------------------------------

@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_shapes(arch, resolution):
    torch.manual_seed(0)
    nf, z_dim, E, B = 4, 8, 6, 3
    G, D, head = MODULES[arch].build(nf, z_dim, E, resolution)
    sent, words, mask = text_inputs(B, E, [3, 1, 7])
    images = G(torch.randn(B, z_dim), sent, words, mask)
    assert images.shape == (B, 3, resolution, resolution) and torch.isfinite(images).all()
    features = D(images)
    assert features.shape == (B, D.out_channels, 4, 4)
    assert head(features, sent).shape == (B,)
    for m in (G, D, head):  # checkpoints rebuild modules from their config
        type(m)(**m.config).load_state_dict(m.state_dict())


@pytest.mark.parametrize("resolution", [32, 64])
def test_ssagan_returns_one_mask_per_block(resolution):
    torch.manual_seed(0)
    G = randomise_(ssagan.Generator(nf=4, z_dim=8, cond_dim=6, resolution=resolution))
    images, masks = G(torch.randn(2, 8), torch.randn(2, 6), return_masks=True)
    sizes = [4 * 2**k for k in range(len(G.blocks))]
    assert [m.shape for m in masks] == [(2, 1, s, s) for s in sizes] and sizes[-1] == resolution
    assert all(((m >= 0) & (m <= 1)).all() for m in masks)
    assert images.abs().max() <= 1


def test_sscbn_is_plain_batchnorm_at_init():
    torch.manual_seed(0)
    norm = ssagan.SSCBN(cond_dim=12, channels=5)
    x, sent = torch.randn(4, 5, 6, 6) * 3 + 1, torch.randn(4, 12)
    mask = torch.rand(4, 1, 6, 6)
    plain = torch.nn.BatchNorm2d(5, affine=False)
    torch.testing.assert_close(norm(x, sent, mask), plain(x))
    assert num_params(norm.norm) == 0  # BN without its own affine
    # off init the mask gates the text modulation per pixel: m = 0 gives plain BN again
    randomise_(norm, std=0.5)
    out = norm(x, sent, torch.zeros(4, 1, 6, 6))
    torch.testing.assert_close(out, F.batch_norm(x, None, None, training=True))
    gamma, beta = norm.gamma(sent)[:, :, None, None], norm.beta(sent)[:, :, None, None]
    x_hat = F.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(norm(x, sent, mask), (1 + mask * gamma) * x_hat + mask * beta)


def test_modulated_conv_demodulates_and_uses_per_sample_weights():
    torch.manual_seed(0)
    conv = stylegan_attn.ModulatedConv2d(in_ch=5, out_ch=7, kernel=3, w_dim=8)
    randomise_(conv.modulation, std=1.0)
    w = torch.randn(4, 8)
    weights = conv.sample_weights(w)  # (B, out, in, k, k)
    norms = weights.square().sum(dim=(2, 3, 4)).sqrt()
    torch.testing.assert_close(norms, torch.ones(4, 7))  # unit norm per sample and output channel
    # the grouped conv equals convolving each sample with its own weights
    x = torch.randn(4, 5, 6, 6)
    expected = torch.cat([F.conv2d(x[b:b + 1], weights[b], padding=1) for b in range(4)])
    torch.testing.assert_close(conv(x, w), expected)
    # demodulation makes the output invariant to the scale of the style
    with torch.no_grad():
        conv.modulation.weight.mul_(3.0)
        conv.modulation.bias.mul_(3.0)
    torch.testing.assert_close(conv(x, w), expected, rtol=1e-4, atol=1e-4)
    to_rgb = stylegan_attn.ModulatedConv2d(5, 3, 1, w_dim=8, demodulate=False)
    assert not torch.allclose(to_rgb.sample_weights(w).square().sum(dim=(2, 3, 4)), torch.ones(4, 3))


def test_word_attention_ignores_padding_and_sums_to_one():
    torch.manual_seed(0)
    attn = stylegan_attn.WordAttention(channels=4, word_dim=6)
    h, words = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 5)
    mask = word_mask(torch.tensor([2, 5]), 5)
    out = attn(h, words, mask)
    changed = words.clone()
    changed[0, :, 2:] = 100 * torch.randn(6, 3)  # padding positions of caption 0
    torch.testing.assert_close(attn(h, changed, mask), out)
    # one real word: every pixel's context is exactly that word's projection
    one = attn(h, words, word_mask(torch.tensor([1, 1]), 5))
    proj = attn.proj(words)[:, :, 0]  # (B, C)
    torch.testing.assert_close(one, proj[:, :, None, None].expand_as(one))


def test_attngan_style_generator_uses_the_words():
    torch.manual_seed(0)
    G = stylegan_attn.Generator(nf=4, z_dim=8, cond_dim=6, resolution=32)
    sent, words, mask = text_inputs(2, 6, [3, 4])
    z = torch.randn(2, 8)
    torch.manual_seed(1)
    a = G(z, sent, words, mask)
    torch.manual_seed(1)  # the same per-pixel noise
    b = G(z, sent, words + 1.0, mask)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="words"):
        G(z, sent)


def test_ddp_options_turn_off_buffer_broadcast_only_for_batchnorm():
    G, D, _ = ssagan.build(4, 8, 6, 32)
    assert ddp_kwargs(G) in ({"forward_sync_buffers": False}, {"broadcast_buffers": False})
    assert ddp_kwargs(D) == {}


def test_config_lists_and_refuses_architectures(tiny_cfg):
    assert set(ARCHITECTURES) == set(BUILDERS) == set(REFERENCE_NF)
    with pytest.raises(ConfigError, match="model.arch.*dfgan, ssagan, attngan_style"):
        apply_overrides(tiny_cfg, {"model.arch": "stylegan3"})


# ---- each new architecture x text embedding through the real training step ------------------

@pytest.mark.parametrize("mode", ["pretrained", "shared", "dual"])
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_gan_step_for_each_architecture_and_text_embedding(tiny_cfg, arch, mode):
    torch.manual_seed(0)
    cfg = apply_overrides(tiny_cfg, {"model.arch": arch, "model.text_embedding": mode,
                                     "loss.f2f": 0.2, "loss.f2r": 0.2})

    class GlobalOnly(torch.nn.Module):  # a stand-in frozen image encoder: (regions, global)
        def forward(self, x):
            return x, F.adaptive_avg_pool2d(x, 1).flatten(1).repeat(1, 86)[:, :256]

    models = build_gan_models(cfg, TextEncoder(20), GlobalOnly())
    opts = build_optimizers(models, cfg)
    B, T = 4, 6
    lens = torch.tensor([6, 2, 3, 1])
    ids = torch.where(torch.arange(T) < lens[:, None], torch.randint(1, 20, (B, T)), 0)
    batch = {"image": torch.rand(B, 3, 32, 32) * 2 - 1, "caption": ids, "caption_len": lens,
             "caption2": ids.roll(1, 0), "caption2_len": lens.roll(1, 0)}
    before = {k: p.detach().clone() for k, p in models.generator.named_parameters()}
    losses = gan_step(models, opts, batch, cfg, torch.Generator().manual_seed(0))
    assert all(math.isfinite(v) for v in losses.values()), losses
    assert "loss_f2f" in losses and ("loss_align_g" in losses) == (mode != "pretrained")
    moved = [k for k, p in models.generator.named_parameters() if not torch.equal(p, before[k])]
    assert moved  # G stepped


# ---- the training loop: checkpoint -> resume, mask images ------------------------------------

class Killed(Exception):
    pass


class KillAfterCheckpoint(LocalEnv):
    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None and metrics.get("step") == 2:
            raise Killed


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_resumed_run_equals_uninterrupted_run(tiny_cfg, tiny_damsm, tmp_path, arch):
    from pathlib import Path

    # the style model with AttnGAN's G EMA (its paper-table recipe): the EMA resumes exactly too
    g_ema = 0.999 if arch == "attngan_style" else 0.0
    cfg = apply_overrides(tiny_cfg, {"model.arch": arch, "loss.f2f": 0.2, "train.g_ema": g_ema})
    run_training(cfg, LocalEnv(tmp_path / "straight"), tiny_damsm, f"straight-{arch}")
    with pytest.raises(Killed):
        run_training(cfg, KillAfterCheckpoint(tmp_path / "resumed"), tiny_damsm, f"resumed-{arch}")
    final = run_training(cfg, LocalEnv(tmp_path / "resumed"), tiny_damsm, f"resumed-{arch}")
    a = ckpt.load_state(tmp_path / "straight" / "checkpoint")
    b = ckpt.load_state(tmp_path / "resumed" / "checkpoint")
    assert a["step"] == b["step"] == cfg.train.steps
    assert ("generator_ema" in a["modules"]) == (g_ema > 0)
    for name in a["modules"]:  # parameters and BN running statistics
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key} differs after resume"
    assert math.isfinite(final["fid"])
    if g_ema:  # the trained run a sampler loads (sweeps/sample.py) samples from the EMA weights
        from t2i_ray.train.method import load_trained

        ema = load_trained(tmp_path / "resumed" / "checkpoint", tiny_damsm).method.sampling_modules()[0]
        for key, value in ema.state_dict().items():
            assert torch.equal(value, b["modules"]["generator_ema"][key]), key
        assert any(not torch.equal(value, b["modules"]["generator"][key])
                   for key, value in b["modules"]["generator_ema"].items())
    masks_png = Path(cfg.output_dir) / "samples" / f"resumed-{arch}_masks.png"
    assert masks_png.is_file() == (arch == "ssagan")
    if arch == "ssagan":
        from PIL import Image

        blocks = cfg.data.resolution.bit_length() - 2  # 4x4 .. res
        assert Image.open(masks_png).size == (16 * 32, blocks * 32)


# ---- Ray: 2 DDP workers on CPU ------------------------------------------------------------------

def test_new_architectures_train_with_two_ddp_workers(tiny_cfg, tiny_damsm, local_ray, tmp_path):
    """One TorchTrainer per new architecture, 2 workers x 0.5 CPU, 2 steps, F2F on (two G
    forwards before the G backward, the case that needs broadcast_buffers=False with BN)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from t2i_ray.train.loop import ray_worker

    for arch in NEW_ARCHS:
        cfg = apply_overrides(tiny_cfg, {"model.arch": arch, "train.num_workers": 2, "train.batch_size": 4,
                                         "train.steps": 2, "loss.f2f": 0.2})
        trainer = TorchTrainer(
            ray_worker,
            train_loop_config={"experiment": cfg.to_dict(), "damsm_path": tiny_damsm, "captioner_path": None,
                               "run_name": f"ray-{arch}"},
            scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=ray.train.RunConfig(name=arch, storage_path=str(tmp_path / "storage")),
        )
        result = trainer.fit()
        assert result.error is None, arch
        assert result.metrics["finished"] == 1 and math.isfinite(result.metrics["fid"]), arch
