"""SSA-GAN (Liao et al., CVPR 2022): semantic-spatial aware conditional BN, resolution-parametric.

Follows `wtliao/text2image` `model.py` (/work/shared/reference/gan_anchors.md §2), a DF-GAN-v1
derivative: fc(z) -> (8nf, 4, 4); block 0 at 4x4, then nearest-upsample x2 before every further
block; each block is sc(x) + gamma * [SSCBN -> ReLU -> conv3x3 -> SSCBN -> ReLU -> conv3x3]
(gamma a scalar init 0) and predicts, from its own output, the mask logits of the next block;
then BN -> LReLU -> conv3x3 -> tanh. Text (the sentence only, not z) enters through the SSCBNs,
weighted per pixel by the predicted masks. The masks have no direct supervision ("weakly
supervised" through the adversarial loss). D is DF-GAN-v1's (top width 16nf) with its
conditional head, built from `dfgan.py`'s blocks.

Block widths follow DF-GAN's schedule nf * min(2^k, 8) from the image side, which at 256 and
nf=64 is exactly the reference's 512, 512, 512, 512, 256, 128, 64; lower resolutions drop blocks
from the 4x4 end, as DF-GAN does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_ray.models.dfgan import ConditionalHead, Discriminator, channel_schedule

MASK_HIDDEN = 100  # the reference's mask-predictor width (fixed, independent of nf)


def _mlp(cond_dim: int, channels: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(cond_dim, cond_dim), nn.ReLU(), nn.Linear(cond_dim, channels))
    nn.init.zeros_(mlp[2].weight)  # zero last layer: gamma = beta = 0, the SSCBN is plain BN at init
    nn.init.zeros_(mlp[2].bias)
    return mlp


class SSCBN(nn.Module):
    """Semantic-spatial conditional BN (§2.2, `affine`): (1 + m * gamma(e)) * BN(x) + m * beta(e).

    BN without its own affine (batch statistics in training, running ones in eval); gamma and
    beta are MLPs Linear(E, E) - ReLU - Linear(E, C) of the sentence with zero-initialised last
    layers, and m (B, 1, H, W) in [0, 1] is the predicted mask, broadcast over channels.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gamma = _mlp(cond_dim, channels)
        self.beta = _mlp(cond_dim, channels)

    def forward(self, x: torch.Tensor, sent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W), sent: (B, E), mask: (B, 1, H, W) -> (B, C, H, W)
        x_hat = self.norm(x)
        gamma = self.gamma(sent)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.beta(sent)[:, :, None, None]
        return (1 + mask * gamma) * x_hat + mask * beta


def mask_predictor(in_ch: int) -> nn.Sequential:
    """conv3x3(in -> 100) -> BN(100) -> ReLU -> conv1x1(100 -> 1): mask logits (§2.3)."""
    return nn.Sequential(nn.Conv2d(in_ch, MASK_HIDDEN, 3, 1, 1), nn.BatchNorm2d(MASK_HIDDEN), nn.ReLU(),
                         nn.Conv2d(MASK_HIDDEN, 1, 1))


class SSABlock(nn.Module):
    """`G_Block`: out = sc(x) + gamma * res(x, e, m); mask logits of the next block from `out`.

    res = SSCBN -> ReLU -> conv3x3(in -> out) -> SSCBN -> ReLU -> conv3x3(out -> out); sc is a
    1x1 conv when the width changes. Only two SSCBNs per block (DF-GAN has four affines).
    The last block predicts no mask.
    """

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int, predict_mask: bool = True):
        super().__init__()
        self.norm1 = SSCBN(cond_dim, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm2 = SSCBN(cond_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.mask_head = mask_predictor(out_ch) if predict_mask else None

    def forward(self, x, sent, mask):
        # x: (B, in, H, W), mask: (B, 1, H, W) -> out (B, out, H, W), next mask logits (B, 1, H, W)
        h = self.conv1(F.relu(self.norm1(x, sent, mask)))
        h = self.conv2(F.relu(self.norm2(h, sent, mask)))
        out = self.shortcut(x) + self.gamma * h
        return out, (self.mask_head(out) if self.mask_head is not None else None)


class Generator(nn.Module):
    """NetG: fc(z) -> log2(res) - 1 SSABlocks (4x4 .. res) -> BN, LReLU, conv3x3, tanh (§2.1).

    forward(..., return_masks=True) also returns the masks (sigmoid, in [0, 1]) that each block
    used, coarse to fine: [(B, 1, 4, 4), (B, 1, 8, 8), ..., (B, 1, res, res)].
    """

    predicts_masks = True  # lets sampling code save the masks without naming the architecture

    def __init__(self, nf: int = 64, z_dim: int = 100, cond_dim: int = 256, resolution: int = 256):
        super().__init__()
        self.config = dict(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=resolution)
        widths = channel_schedule(nf, resolution)[::-1]  # block outputs at 4, 8, ..., res
        self.fc = nn.Linear(z_dim, 8 * nf * 4 * 4)
        self.mask_in = mask_predictor(8 * nf)  # mask of block 0, from the fc output
        ins = [8 * nf] + widths[:-1]
        self.blocks = nn.ModuleList(
            SSABlock(cond_dim, c_in, c_out, predict_mask=k < len(widths) - 1)
            for k, (c_in, c_out) in enumerate(zip(ins, widths)))
        self.to_rgb = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.LeakyReLU(0.2),
                                    nn.Conv2d(widths[-1], 3, 3, 1, 1))

    def forward(self, z: torch.Tensor, sent: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None, return_masks: bool = False):
        # z: (B, z_dim), sent: (B, E) -> images (B, 3, res, res) in [-1, 1]; words unused.
        h = self.fc(z).view(z.shape[0], -1, 4, 4)  # (B, 8nf, 4, 4)
        logits = self.mask_in(h)  # (B, 1, 4, 4)
        masks = []
        for k, block in enumerate(self.blocks):
            if k > 0:
                h = F.interpolate(h, scale_factor=2.0)  # nearest, as the reference
                logits = F.interpolate(logits, size=h.shape[2:], mode="bilinear", align_corners=True)
            mask = torch.sigmoid(logits)
            masks.append(mask)
            h, logits = block(h, sent, mask)
        images = torch.tanh(self.to_rgb(h))
        return (images, masks) if return_masks else images


def build(nf: int, z_dim: int, cond_dim: int, resolution: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, head): D is DF-GAN-v1's (widths up to 16nf), its head the same one-way NetC (§2.1)."""
    discriminator = Discriminator(nf=nf, resolution=resolution, max_mult=16)
    head = ConditionalHead(nf=nf, cond_dim=cond_dim, in_channels=discriminator.out_channels)
    return Generator(nf, z_dim, cond_dim, resolution), discriminator, head
