"""The joint image + layout U-Net (t2i_ray/models/diffusion/unet.py): shapes at 32 and 64 px and
non-square, the image-only variant, zero-initialised heads, layout inputs, text masking and the
null text, parameter counts at the benchmark settings, and a tiny overfit."""
import json

import pytest
import torch

from t2i_ray.models.diffusion import GaussianCategoricalDiffusion, JointUNet, text_drop_mask

K = 6
# The benchmark settings (benchmarks/diffusion_step.py): dim_mults (1,2,4), blocks (1,2,2),
# attention at the two lower levels, 4 heads, 256-d DAMSM text. The reference GCDP JointUnet has
# 4.1 M (dim 32) and 14.5 M (dim 64) parameters at these settings.
PARAMS = {32: 3_882_622, 64: 14_503_646}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_(net: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn_like(p))
    return net


def small(**kw) -> JointUNet:
    kw = {"num_classes": K, "dim": 8, "dim_mults": (1, 2, 2), "blocks": (1, 1, 1),
          "attention_levels": (False, True, True), "heads": 2, "text_dim": 16,
          "norm_groups": 4, **kw}
    return JointUNet(**kw)


def inputs(B: int, H: int, W: int, text_dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, H, W, generator=g)
    y = torch.randint(0, K, (B, H, W), generator=g)
    t = torch.randint(1, 1001, (B,), generator=g)
    words = torch.randn(B, 7, text_dim, generator=g)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[0, 4:] = False
    return x, y, t, words, mask, torch.randn(B, text_dim, generator=g)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (32, 64)])
def test_output_shapes(size):
    H, W = size
    eps, logits = small()(*inputs(2, H, W))
    assert eps.shape == (2, 3, H, W) and logits.shape == (2, K, H, W)


def test_image_only_has_no_layout_branch():
    net = small(image_only=True)
    x, _, t, words, mask, sent = inputs(2, 32, 32)
    eps, logits = net(x, None, t, words, mask, sent)
    assert eps.shape == (2, 3, 32, 32) and logits is None
    assert net.layout_embed is None
    joint = small()
    # the same net otherwise: only the layout embedding, the first conv's extra inputs and the
    # K logit channels of the head differ
    extra = K * 3 + 3 + 3 * 8 * 9 + K * 8 * 9 + K
    assert num_params(joint) - num_params(net) == extra


def test_zero_init_heads_give_zero_outputs():
    eps, logits = small()(*inputs(2, 32, 32))
    assert torch.equal(eps, torch.zeros_like(eps)) and torch.equal(logits, torch.zeros_like(logits))


def test_index_and_one_hot_layouts_agree():
    net = randomise_(small())
    x, y, t, words, mask, sent = inputs(2, 16, 16)
    one_hot = torch.nn.functional.one_hot(y, K).permute(0, 3, 1, 2).float()
    for a, b in zip(net(x, y, t, words, mask, sent), net(x, one_hot, t, words, mask, sent)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_and_dropped_text_are_ignored():
    net = randomise_(small())
    x, y, t, words, mask, sent = inputs(2, 16, 16)
    base = net(x, y, t, words, mask, sent)
    # sample 0's padded words (mask False) change nothing
    other = words.clone()
    other[0, 4:] += 5.0
    torch.testing.assert_close(net(x, y, t, other, mask, sent)[0], base[0])
    # a dropped sample sees only the null text; the kept one is unaffected by the drop flag
    drop = torch.tensor([True, False])
    dropped = net(x, y, t, words, mask, sent, drop)
    changed = net(x, y, t, torch.randn_like(words), mask, torch.randn_like(sent), drop)
    torch.testing.assert_close(dropped[0][0], changed[0][0])
    torch.testing.assert_close(dropped[0][1], base[0][1])
    assert not torch.allclose(dropped[0][0], base[0][0])
    # all dropped == the unconditional call without text
    uncond = net(x, y, t, None, None, None)
    all_dropped = net(x, y, t, words, mask, sent, torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(uncond[0], all_dropped[0], atol=1e-5, rtol=1e-5)


def test_parameter_counts_at_benchmark_settings():
    counts = {}
    for dim, expected in PARAMS.items():
        net = JointUNet(num_classes=K, dim=dim, dim_mults=(1, 2, 4), blocks=(1, 2, 2),
                        attention_levels=(False, True, True), heads=4, text_dim=256)
        counts[dim] = num_params(net)
        # kwargs round-trip through JSON (checkpoints)
        rebuilt = JointUNet(**json.loads(json.dumps(net.config)))
        assert num_params(rebuilt) == counts[dim]
    print("JointUNet parameters (K=6, dim_mults (1,2,4), blocks (1,2,2)):", counts)
    assert counts == PARAMS


def test_tiny_overfit_reduces_the_loss():
    torch.manual_seed(0)
    net = JointUNet(num_classes=3, dim=8, dim_mults=(1, 2), blocks=(1, 1),
                    attention_levels=(False, True), heads=2, text_dim=16, norm_groups=4)
    proc = GaussianCategoricalDiffusion(3, num_steps=100)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    layouts = (images[:, 0] > 0).long() + (images[:, 1] > 0).long()  # (2, 8, 8) in 0..2
    words, mask = torch.randn(2, 4, 16, generator=g), torch.ones(2, 4, dtype=torch.bool)
    sent = torch.randn(2, 16, generator=g)
    no_drop = torch.zeros(2, dtype=torch.bool)

    def eval_loss() -> dict:
        # the same t, noise and y_t draws each time: 8 repeats of the two images
        with torch.no_grad():
            return proc.training_losses(net, images.repeat(8, 1, 1, 1), layouts.repeat(8, 1, 1),
                                        words.repeat(8, 1, 1), mask.repeat(8, 1),
                                        sent.repeat(8, 1), no_drop.repeat(8),
                                        torch.Generator().manual_seed(123))

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(60):
        drop = text_drop_mask(2, 0.1, g)
        loss = proc.training_losses(net, images, layouts, words, mask, sent, drop, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after["image_loss"] < 0.8 * before["image_loss"]
    assert after["layout_loss"] < 0.9 * before["layout_loss"], (before, after)
