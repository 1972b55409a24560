"""DF-GAN networks (t2i_ray/models/dfgan.py) against gan_anchors.md §1.2-1.3 (CVPR-2022 code)."""
import pytest
import torch
import torch.nn.functional as F

from t2i_ray.models.dfgan import (
    Affine,
    ConditionalHead,
    Discriminator,
    DownBlock,
    Generator,
    UpBlock,
    channel_schedule,
)

RESOLUTIONS = (32, 64, 128, 256)


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def pairs(widths: list[int]) -> list[tuple[int, int]]:
    return list(zip(widths[:-1], widths[1:]))


def randomise_(module: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Move every parameter off its init (zero affine weights, zero D gains) so every path is live."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


def test_channel_schedule_matches_reference_tables():
    # G tables of §1.2 (nf=32); G walks the schedule from the 4x4 end.
    assert pairs(channel_schedule(32, 64)[::-1]) == [(256, 256), (256, 128), (128, 64), (64, 32)]
    assert pairs(channel_schedule(32, 128)[::-1]) == [
        (256, 256), (256, 256), (256, 128), (128, 64), (64, 32)]
    assert pairs(channel_schedule(32, 256)[::-1]) == [
        (256, 256), (256, 256), (256, 256), (256, 128), (128, 64), (64, 32)]
    # D @256 (§1.3); @128 and @64 are its first five and four blocks.
    d256 = pairs(channel_schedule(32, 256))
    assert d256 == [(32, 64), (64, 128), (128, 256), (256, 256), (256, 256), (256, 256)]
    assert pairs(channel_schedule(32, 128)) == d256[:5]
    assert pairs(channel_schedule(32, 64)) == d256[:4]
    # 32 follows the same rule (L = log2(32) - 1 = 4 widths): one block fewer than 64.
    assert pairs(channel_schedule(32, 32)) == d256[:3]
    assert channel_schedule(8, 32) == [8, 16, 32, 64]


@pytest.mark.parametrize("resolution", [16, 48, 100, 0])
def test_bad_resolution_raises(resolution):
    with pytest.raises(ValueError, match="power of two"):
        Generator(nf=4, resolution=resolution)
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(nf=4, resolution=resolution)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
def test_shapes_at_every_resolution(resolution):
    torch.manual_seed(0)
    nf, z_dim, cond_dim, B = 4, 8, 6, 2
    G = Generator(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=resolution)
    D = Discriminator(nf=nf, resolution=resolution)
    C = ConditionalHead(nf=nf, cond_dim=cond_dim)
    sent = torch.randn(B, cond_dim)
    images = G(torch.randn(B, z_dim), sent)
    assert images.shape == (B, 3, resolution, resolution)
    assert images.abs().max() <= 1.0
    features = D(images)
    assert features.shape == (B, 8 * nf, 4, 4)  # always 8nf x 4 x 4, whatever the resolution
    assert C(features, sent).shape == (B,)
    assert len(G.blocks) == len(D.blocks) == resolution.bit_length() - 3  # log2(res) - 2


def test_config_rebuilds_the_modules():
    G = Generator(nf=4, z_dim=8, cond_dim=6, resolution=64)
    D = Discriminator(nf=4, resolution=64)
    C = ConditionalHead(nf=4, cond_dim=6)
    assert G.config == dict(nf=4, z_dim=8, cond_dim=6, resolution=64)
    assert D.config == dict(nf=4, resolution=64, max_mult=8)
    assert C.config == dict(nf=4, cond_dim=6, in_channels=32)
    for m in (G, D, C):
        type(m)(**m.config).load_state_dict(m.state_dict())  # same keys and shapes


def test_affine_is_identity_at_init():
    torch.manual_seed(0)
    affine = Affine(cond_dim=12, channels=5)
    cond = torch.randn(7, 12) * 3
    assert torch.equal(affine.gamma(cond), torch.ones(7, 5))  # gamma(c) = 1
    assert torch.equal(affine.beta(cond), torch.zeros(7, 5))  # beta(c) = 0
    x = torch.randn(7, 5, 3, 3)
    assert torch.equal(affine(x, cond), x)


def test_generator_ignores_text_at_init():
    # Identity affines => the sentence has no effect until the affine MLPs move.
    torch.manual_seed(0)
    G = Generator(nf=4, z_dim=8, cond_dim=6, resolution=32)
    z = torch.randn(3, 8)
    assert torch.equal(G(z, torch.randn(3, 6)), G(z, torch.randn(3, 6)))


def reference_up_block(block: UpBlock, x, cond):
    """`G_Block.forward` in the reference order: upsample first, then sc(x) + res(x)."""
    x = F.interpolate(x, scale_factor=2)
    res = block.conv2(block.fuse2(block.conv1(block.fuse1(x, cond)), cond))
    return block.shortcut(x) + res


def reference_down_block(block: DownBlock, x):
    """`D_Block.forward` in the reference order: 1x1 conv at full resolution, then pool."""
    res = F.leaky_relu(block.conv2(F.leaky_relu(block.conv1(x), 0.2)), 0.2)
    return F.avg_pool2d(block.shortcut(x), 2) + block.gamma * res


@pytest.mark.parametrize("in_ch,out_ch", [(8, 4), (6, 6)])
def test_blocks_equal_reference_order(in_ch, out_ch):
    torch.manual_seed(0)
    up = randomise_(UpBlock(cond_dim=5, in_ch=in_ch, out_ch=out_ch), std=0.3)
    x, cond = torch.randn(2, in_ch, 4, 4), torch.randn(2, 5)
    out = up(x, cond)
    assert out.shape == (2, out_ch, 8, 8)
    torch.testing.assert_close(out, reference_up_block(up, x, cond), rtol=1e-5, atol=1e-5)
    down = randomise_(DownBlock(in_ch, out_ch), std=0.3)
    out = down(x)
    assert out.shape == (2, out_ch, 2, 2)
    torch.testing.assert_close(out, reference_down_block(down, x), rtol=1e-5, atol=1e-5)


def test_down_block_is_its_shortcut_at_init():
    torch.manual_seed(0)
    block = DownBlock(4, 8)
    assert block.gamma.item() == 0.0
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(x), block.shortcut(F.avg_pool2d(x, 2)))
    assert isinstance(DownBlock(8, 8).shortcut, torch.nn.Identity)  # no unused 1x1 conv


def test_parameter_counts_at_256_nf32():
    """Exact counts at resolution 256, nf=32, z_dim=100, cond_dim=256 (gan_anchors §1.3).

    G = 9,744,131 (reference NetG: 9,744,131, identical)
      fc 100*4096 + 4096 = 413,696; to_rgb 9*32*3 + 3 = 867.
      Affine(C) on cond 356: 2 MLPs x [(356C + C) + (C^2 + C)]; DFBlock(C) = 4C^2 + 1432C.
      UpBlock(i, o) = DF(i) + DF(o) + (9io + o) + (9o^2 + o) + [io + o if i != o]:
      3 x (256, 256) = 3 x 2,437,632; (256,128) 1,353,088; (128,64) 475,840; (64,32) 187,744.
    D = 6,421,830 (reference NetD: 6,619,206)
      conv_img 9*3*32 + 32 = 896; DownBlock(i, o) = 16io + 9o^2 + [io + o if i != o] + 1 (gamma):
      (32,64) 71,745; (64,128) 286,849; (128,256) 1,147,137; 3 x (256,256) 3 x 1,638,401.
      The reference also builds the 1x1 conv (256*256 + 256 = 65,792) in the three equal-width
      blocks and never calls it: 6,421,830 + 3 * 65,792 = 6,619,206 (its "6.62 M"). We leave it
      out: same function, and a parameter that never gets a gradient breaks DDP.
    head = 9*(256 + 256)*64 + 16*64 = 295,936 (reference NetC: identical)
    D + head = 6,717,766 (SPEC §3 "about 6.9 M" is the reference's 6,915,142).
    """
    G = Generator(nf=32, z_dim=100, cond_dim=256, resolution=256)
    D = Discriminator(nf=32, resolution=256)
    C = ConditionalHead(nf=32, cond_dim=256)
    assert num_params(G) == 9_744_131
    assert num_params(D) == 6_421_830
    assert num_params(C) == 295_936
    assert num_params(D) + 3 * (256 * 256 + 256) == 6_619_206  # the reference NetD count
    assert abs(num_params(G) / 9.74e6 - 1) < 0.01
    assert abs(num_params(C) / 0.30e6 - 1) < 0.02


def test_gradient_flows_from_logits_to_generator_and_sentence():
    torch.manual_seed(0)
    nf, z_dim, cond_dim, B = 4, 8, 6, 3
    G = randomise_(Generator(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=32))
    D = randomise_(Discriminator(nf=nf, resolution=32))
    C = randomise_(ConditionalHead(nf=nf, cond_dim=cond_dim))
    sent = torch.randn(B, cond_dim, requires_grad=True)
    z = torch.randn(B, z_dim)
    # The head sees a detached copy, so sent's gradient can only come through G's affines.
    C(D(G(z, sent)), sent.detach()).sum().backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert sent.grad.abs().sum() > 0
    # And through the head directly, even at init where G's affines ignore the text.
    sent = torch.randn(B, cond_dim, requires_grad=True)
    G0 = Generator(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=32)
    C(D(G0(z, sent)), sent).sum().backward()
    assert sent.grad.abs().sum() > 0
    assert all(p.grad is not None for p in G0.parameters())
