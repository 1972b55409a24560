"""DF-GAN (Tao et al., CVPR 2022): one-stage text-to-image GAN, resolution-parametric.

Follows the CVPR-2022 code (`tobran/DF-GAN` `code/models/GAN.py`; /work/shared/reference/
gan_anchors.md §1.2-1.3). Text enters G only through the deep-fusion affines, conditioned on
concat(z, sentence); D maps an image to (8nf, 4, 4) features and a separate conditional head
turns (features, sentence) into one logit, so the trainer can reuse real features for the
mismatched pairs. Building blocks first, networks last.

Two exact rewrites make the blocks cheaper without changing their function (tests check both
against the reference order): per-pixel ops commute with nearest upsampling and 1x1 convs
commute with 2x2 average pooling, so those run at the lower resolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_schedule(nf: int, resolution: int, max_mult: int = 8) -> list[int]:
    """Widths from the image side to the 4x4 side: nf * min(2^k, max_mult), k = 0 .. log2(res) - 2.

    `get_G_in_out_chs` / `get_D_in_out_chs` (§1.2, §1.3). D walks the list forwards (one
    halving per step: 256 -> 4 is 6 steps), G walks it backwards. Resolution 32 gives
    [nf, 2nf, 4nf, 8nf]: 3 blocks, consistent with the 64/128/256 tables; below 32 the 4x4 end
    would be narrower than 8nf, which the head assumes. max_mult=16 is DF-GAN-v1's D (SSA-GAN).
    """
    if resolution < 32 or resolution & (resolution - 1):
        raise ValueError(
            f"resolution must be a power of two >= 32 (32, 64, 128, 256), got {resolution}")
    num_widths = int(math.log2(resolution)) - 1
    return [nf * min(2**k, max_mult) for k in range(num_widths)]


def _affine_mlp(cond_dim: int, channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cond_dim, channels), nn.ReLU(), nn.Linear(channels, channels))


class Affine(nn.Module):
    """Text-conditioned channel-wise affine h = gamma(c) * x + beta(c) (§1.2, `GAN.py` Affine).

    No normalisation in front of it. The last layers start at gamma = 1, beta = 0 (weights 0),
    so every affine is the identity at init and G starts as a plain conv net of z.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.gamma = _affine_mlp(cond_dim, channels)
        self.beta = _affine_mlp(cond_dim, channels)
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight)
        nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma(cond)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.beta(cond)[:, :, None, None]  # (B, C, 1, 1)
        return torch.addcmul(beta, gamma, x)  # (B, C, H, W)


class DFBlock(nn.Module):
    """Deep fusion block: 2 x (Affine -> LeakyReLU 0.2), same width (§1.2, `DFBLK`)."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.affine0 = Affine(cond_dim, channels)
        self.affine1 = Affine(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.affine0(x, cond), 0.2)
        return F.leaky_relu(self.affine1(h, cond), 0.2)


class UpBlock(nn.Module):
    """G block (`G_Block`): x = up2(x); out = sc(x) + conv3(DF(conv3(DF(x)))), no residual gain.

    sc is a 1x1 conv when the width changes, else the identity (§1.2). DFBlock and the 1x1 conv
    act per pixel, so they run before the nearest upsampling: same output, 4x less work.
    """

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int):
        super().__init__()
        self.fuse1 = DFBlock(cond_dim, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.fuse2 = DFBlock(cond_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, in, H, W) -> (B, out, 2H, 2W)
        h = self.conv1(F.interpolate(self.fuse1(x, cond), scale_factor=2.0))  # (B, out, 2H, 2W)
        h = self.conv2(self.fuse2(h, cond))
        return F.interpolate(self.shortcut(x), scale_factor=2.0) + h


class DownBlock(nn.Module):
    """D block (`D_Block`): out = avgpool2(sc(x)) + gamma * res(x), gamma a scalar init 0 (§1.3).

    res = conv4x4 s2 (no bias) -> LReLU -> conv3x3 (no bias) -> LReLU; sc = 1x1 conv (bias)
    only when the width changes. The 1x1 conv runs after the pooling (they commute): 4x cheaper.
    The reference also builds the 1x1 conv when fin == fout and never uses it; we do not, since
    parameters without gradients break DDP (tests/test_dfgan.py has the count difference).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, in, H, W) -> (B, out, H/2, W/2)
        res = F.leaky_relu(self.conv1(x), 0.2)
        res = F.leaky_relu(self.conv2(res), 0.2)
        return self.shortcut(F.avg_pool2d(x, 2)) + self.gamma * res


class Generator(nn.Module):
    """NetG: fc(z) -> (8nf, 4, 4) -> log2(res) - 2 UpBlocks -> LReLU, conv3x3, tanh (§1.2)."""

    def __init__(self, nf: int = 32, z_dim: int = 100, cond_dim: int = 256, resolution: int = 256):
        super().__init__()
        self.config = dict(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=resolution)
        widths = channel_schedule(nf, resolution)[::-1]  # 8nf ... nf
        self.fc = nn.Linear(z_dim, widths[0] * 4 * 4)  # only z; text enters via the affines
        self.blocks = nn.ModuleList(
            UpBlock(z_dim + cond_dim, c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.to_rgb = nn.Conv2d(widths[-1], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor, sent: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        # z: (B, z_dim), sent: (B, cond_dim) -> images (B, 3, res, res) in [-1, 1].
        # words/word_mask: the generator interface shared by all architectures; unused here.
        h = self.fc(z).view(z.shape[0], -1, 4, 4)  # (B, 8nf, 4, 4)
        cond = torch.cat((z, sent), dim=1)  # (B, z_dim + cond_dim): CVPR-2022 conditions on both
        for block in self.blocks:
            h = block(h, cond)  # doubles H, W
        return torch.tanh(self.to_rgb(F.leaky_relu(h, 0.2)))


class Discriminator(nn.Module):
    """NetD: conv3x3(3 -> nf) then DownBlocks to features (B, 8nf, 4, 4) (§1.3).

    max_mult=16 gives DF-GAN-v1's wider D (top 16nf at 256), which SSA-GAN uses (§2.1).
    """

    def __init__(self, nf: int = 32, resolution: int = 256, max_mult: int = 8):
        super().__init__()
        self.config = dict(nf=nf, resolution=resolution, max_mult=max_mult)
        widths = channel_schedule(nf, resolution, max_mult)  # nf ... 8nf
        self.out_channels = widths[-1]
        self.conv_img = nn.Conv2d(3, nf, 3, 1, 1)
        self.blocks = nn.Sequential(
            *(DownBlock(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:])))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (B, 3, res, res) -> features (B, 8nf, 4, 4)
        return self.blocks(self.conv_img(images))


class ConditionalHead(nn.Module):
    """NetC: concat(features, sentence tiled to 4x4) -> conv3x3 -> LReLU -> conv4x4 -> logit (§1.3).

    One conditional output only (no unconditional branch), both convs without bias.
    in_channels: the D's feature width (8nf for DF-GAN's D; default).
    """

    def __init__(self, nf: int = 32, cond_dim: int = 256, in_channels: int | None = None):
        super().__init__()
        in_channels = 8 * nf if in_channels is None else in_channels
        self.config = dict(nf=nf, cond_dim=cond_dim, in_channels=in_channels)
        self.joint_conv = nn.Conv2d(in_channels + cond_dim, 2 * nf, 3, 1, 1, bias=False)
        self.out_conv = nn.Conv2d(2 * nf, 1, 4, 1, 0, bias=False)

    def forward(self, features: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
        # features: (B, in_channels, 4, 4), sent: (B, cond_dim) -> logits (B,)
        tiled = sent[:, :, None, None].expand(-1, -1, *features.shape[2:])  # (B, cond_dim, 4, 4)
        h = F.leaky_relu(self.joint_conv(torch.cat((features, tiled), dim=1)), 0.2)  # (B, 2nf, 4, 4)
        return self.out_conv(h).flatten()  # (B,)


def build(nf: int, z_dim: int, cond_dim: int, resolution: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, head) at one setting; the factory's entry point for `dfgan`."""
    return (Generator(nf, z_dim, cond_dim, resolution), Discriminator(nf, resolution),
            ConditionalHead(nf, cond_dim))
