"""Plain AttnGAN (Xu et al., arXiv:1711.10485, sections 2.1-2.3): three generator stages with word
attention and one discriminator per stage.

Follows the public code `taoxugit/AttnGAN` `code/model.py` (CA_NET, INIT_STAGE_G, NEXT_STAGE_G with
GlobalAttentionGeneral, GET_IMAGE_G, G_NET; D_NET64/128/256 with D_GET_LOGITS) at its CUB setting
`code/cfg/bird_attn2.yml` (GF_DIM 32, DF_DIM 64, Z_DIM 100, CONDITION_DIM 100, R_NUM 2, text 256):
- F_ca, conditioning augmentation (section 2.1): fc(sentence) -> GLU -> (mu, log sigma^2), both of
  width 100; c = mu + sigma * eps with eps ~ N(0, I) from torch's global RNG (checkpointed by the
  loop), as the StyleGAN2 noise inputs of stylegan_attn.py;
- F_0 (INIT_STAGE_G): fc(concat(c, z)) -> BN -> GLU -> (16 ngf, 4, 4), then upsampling blocks
  (nearest x2 -> conv3x3 -> BN -> GLU) halving the width down to ngf;
- F_1, F_2 (NEXT_STAGE_G): word attention F^attn (Eq. 2: softmax over words of h^T U e, padding masked;
  the `WordAttention` module of stylegan_attn.py, the same computation), concat(h, context) ->
  two residual blocks (conv3x3 -> BN -> GLU -> conv3x3 -> BN, + x) -> one upsampling block to ngf;
- G_i (GET_IMAGE_G): conv3x3 (ngf -> 3, no bias) -> tanh at every stage.
Discriminators (D_NET64/128/256, DF_DIM = ndf): strided 4x4 convs (BN after all but the first,
LeakyReLU 0.2) to 4x4, widths ndf .. 8ndf (.. 32ndf for the bigger stages, brought back to 8ndf by
conv3x3-BN-LReLU); logits by a 4x4 conv with stride 4 unconditionally, and after a joint
conv3x3-BN-LReLU on concat(features, tiled sentence) conditionally (D_GET_LOGITS). The reference
ends both in a sigmoid and trains with BCELoss; here they are logits and the losses use BCE with
logits (t2i_ray/losses/adversarial.py), the same function and stable in bf16 autocast.
Weights start as the reference's `weights_init` (`code/miscc/utils.py`): orthogonal conv/linear
weights, BN weights N(1, 0.02), zero biases.

Sizes. At 256 the stages are 64, 128, 256 (the paper's). At a lower data.resolution r the stages
are r/4, r/2, r (32 -> 8, 16, 32): the first stage drops its widest upsampling blocks (fc to
ngf * 2^k at 4x4 with k = log2(r/4) - 2 upsamplings, so each stage's output keeps ngf channels),
and a stage discriminator for size s has log2(s) - 2 strided convs, dropping the narrowest
(image-side) ones below 64 so that it still ends at 8ndf (8 px: one conv 3 -> 8ndf).

Widths: model.nf is ngf; ndf = 2 nf (the reference's 32 / 64 at nf = 32, config.REFERENCE_NF).

Interface (factory.py): G(z, sentence, words, word_mask) -> the last stage's image, as every
architecture; G(..., return_stages=True) -> ([stage images, coarse to fine], mu, logvar) for the
training step. D(images) -> one (B, 8ndf, 4, 4) feature map per stage; `images` is the list of
stage images, or one full-size batch, which D resizes to the stage sizes (antialiased bilinear,
as the reference's data loader resizes with PIL). head(features, sentence) -> (conditional,
unconditional) logits, each (stages, B). `multi_stage = True` on G tells t2i_ray/train/gan.py to
train it with AttnGAN's objective (BCE over all stages + KL of F_ca) instead of hinge + MA-GP.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_ray.models.stylegan_attn import WordAttention

CONDITION_DIM = 100  # cfg.GAN.CONDITION_DIM: the width of c = F_ca(sentence)
RESIDUALS = 2  # cfg.GAN.R_NUM: residual blocks per refinement stage
NUM_STAGES = 3  # cfg.TREE.BRANCH_NUM


def stage_sizes(resolution: int) -> list[int]:
    """The stage resolutions, coarse to fine: r/4, r/2, r (64, 128, 256 at 256)."""
    if resolution < 32 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 32 (32, 64, 128, 256), got {resolution}")
    return [resolution // 4, resolution // 2, resolution]


def init_weights(module: nn.Module) -> None:
    """The reference's `weights_init`: orthogonal conv/linear weights, BN weight N(1, 0.02), zero biases.
    Modules built on the 'meta' device (shapes only, e.g. to count parameters) have no values to set."""
    for m in module.modules():
        if any(p.is_meta for p in m.parameters(recurse=False)):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            nn.init.orthogonal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """`upBlock`: nearest x2 -> conv3x3 (in -> 2 out) -> BN -> GLU (-> out)."""
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), _conv3x3(in_ch, 2 * out_ch),
                         nn.BatchNorm2d(2 * out_ch), nn.GLU(dim=1))


class ResBlock(nn.Module):
    """`ResBlock`: x + BN(conv3x3(GLU(BN(conv3x3(x, 2c))))), width c."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(_conv3x3(channels, 2 * channels), nn.BatchNorm2d(2 * channels), nn.GLU(dim=1),
                                   _conv3x3(channels, channels), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.block(x)


class ConditioningAugmentation(nn.Module):
    """F_ca (`CA_NET`): GLU(fc(e)) = (mu, log sigma^2); c = mu + exp(logvar / 2) * eps."""

    def __init__(self, text_dim: int, cond_dim: int = CONDITION_DIM):
        super().__init__()
        self.fc = nn.Linear(text_dim, 4 * cond_dim)
        self.cond_dim = cond_dim

    def forward(self, sent):
        # sent: (B, E) -> c, mu, logvar: (B, cond_dim) each
        mu, logvar = F.glu(self.fc(sent), dim=1).split(self.cond_dim, dim=1)
        c = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return c, mu, logvar


class InitStage(nn.Module):
    """F_0 (`INIT_STAGE_G`): fc(concat(c, z)) -> BN1d -> GLU -> (ngf 2^k, 4, 4) -> k upsampling blocks."""

    def __init__(self, ngf: int, in_dim: int, num_up: int):
        super().__init__()
        width = ngf * 2**num_up
        self.width = width
        self.fc = nn.Sequential(nn.Linear(in_dim, 2 * width * 16, bias=False), nn.BatchNorm1d(2 * width * 16),
                                nn.GLU(dim=1))
        self.upsample = nn.Sequential(*(up_block(width // 2**k, width // 2**(k + 1)) for k in range(num_up)))

    def forward(self, z, c):
        h = self.fc(torch.cat((c, z), dim=1)).view(z.shape[0], self.width, 4, 4)
        return self.upsample(h)  # (B, ngf, 4 * 2^k, 4 * 2^k)


class NextStage(nn.Module):
    """F_i, i > 0 (`NEXT_STAGE_G`): concat(h, F^attn(h, words)) -> residual blocks -> upsampling block."""

    def __init__(self, ngf: int, word_dim: int):
        super().__init__()
        self.attention = WordAttention(ngf, word_dim)
        self.residual = nn.Sequential(*(ResBlock(2 * ngf) for _ in range(RESIDUALS)))
        self.upsample = up_block(2 * ngf, ngf)

    def forward(self, h, words, word_mask):
        # h: (B, ngf, H, W) -> (B, ngf, 2H, 2W)
        h = torch.cat((h, self.attention(h, words, word_mask)), dim=1)
        return self.upsample(self.residual(h))


class Generator(nn.Module):
    """G_NET: F_ca, F_0 and two attention stages, an image (tanh) out of every stage."""

    multi_stage = True  # trained with the multi-stage objective of t2i_ray/train/gan.py

    def __init__(self, nf: int = 32, z_dim: int = 100, cond_dim: int = 256, resolution: int = 256):
        super().__init__()
        self.config = dict(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=resolution)
        self.sizes = stage_sizes(resolution)
        self.ca = ConditioningAugmentation(cond_dim)
        self.init_stage = InitStage(nf, z_dim + CONDITION_DIM, int(math.log2(self.sizes[0])) - 2)
        self.next_stages = nn.ModuleList(NextStage(nf, cond_dim) for _ in range(NUM_STAGES - 1))
        self.to_image = nn.ModuleList(nn.Sequential(_conv3x3(nf, 3), nn.Tanh()) for _ in range(NUM_STAGES))
        init_weights(self)

    def forward(self, z: torch.Tensor, sent: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None, return_stages: bool = False):
        # z: (B, z_dim), sent: (B, E), words: (B, E, T), word_mask: (B, T) -> (B, 3, res, res) in [-1, 1]
        if words is None or word_mask is None:
            raise ValueError("the attngan generator attends over words: pass words (B, E, T) and word_mask (B, T)")
        c, mu, logvar = self.ca(sent)
        h = self.init_stage(z, c)
        images = [self.to_image[0](h)]
        for stage, to_image in zip(self.next_stages, self.to_image[1:]):
            h = stage(h, words, word_mask)
            images.append(to_image(h))
        return (images, mu, logvar) if return_stages else images[-1]


def _down(in_ch: int, out_ch: int, norm: bool = True) -> list[nn.Module]:
    """conv4x4 s2 (no bias) [-> BN] -> LeakyReLU 0.2 (`downBlock`; the first conv has no BN)."""
    return [nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=False), *([nn.BatchNorm2d(out_ch)] if norm else []),
            nn.LeakyReLU(0.2)]


def _conv3x3_lrelu(in_ch: int, out_ch: int) -> list[nn.Module]:
    """`Block3x3_leakRelu`: conv3x3 (no bias) -> BN -> LeakyReLU 0.2."""
    return [_conv3x3(in_ch, out_ch), nn.BatchNorm2d(out_ch), nn.LeakyReLU(0.2)]


def stage_encoder(ndf: int, size: int) -> nn.Sequential:
    """The image part of D_NET64/128/256 for a stage of `size` px: (B, 3, s, s) -> (B, 8ndf, 4, 4).

    log2(s) - 2 strided convs of widths ndf * 2^(k + max(0, 4 - n)): at 64 the reference's
    `encode_image_by_16times`, at 128 and 256 that followed by downBlocks to 16ndf / 32ndf and
    conv3x3 blocks halving back to 8ndf; below 64 the narrowest convs are dropped.
    """
    n = int(math.log2(size)) - 2
    if n < 1:
        raise ValueError(f"a stage discriminator needs images of at least 8 px, got {size}")
    widths = [ndf * 2**(k + max(0, 4 - n)) for k in range(n)]
    layers = _down(3, widths[0], norm=False)
    for a, b in zip(widths[:-1], widths[1:]):
        layers += _down(a, b)
    width = widths[-1]
    while width > 8 * ndf:
        layers += _conv3x3_lrelu(width, width // 2)
        width //= 2
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """The three stage discriminators' image encoders; their logit layers are in `StageHeads`."""

    def __init__(self, nf: int = 32, resolution: int = 256):
        super().__init__()
        self.config = dict(nf=nf, resolution=resolution)
        self.sizes = stage_sizes(resolution)
        self.out_channels = 16 * nf  # 8 ndf
        self.stages = nn.ModuleList(stage_encoder(2 * nf, s) for s in self.sizes)
        init_weights(self)

    def pyramid(self, images: torch.Tensor) -> list[torch.Tensor]:
        """A full-size batch at every stage size (antialiased bilinear downsampling)."""
        return [images if s == images.shape[-1] else
                F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
                for s in self.sizes]

    def forward(self, images) -> list[torch.Tensor]:
        # images: [(B, 3, s_i, s_i)] per stage, or (B, 3, res, res) -> [(B, 8ndf, 4, 4)] per stage
        if isinstance(images, torch.Tensor):
            images = self.pyramid(images)
        if [x.shape[-1] for x in images] != self.sizes:
            raise ValueError(f"the attngan discriminator takes images of sizes {self.sizes}, got "
                             f"{[tuple(x.shape[-2:]) for x in images]}")
        return [stage(x) for stage, x in zip(self.stages, images)]


class LogitHead(nn.Module):
    """One stage's `D_GET_LOGITS` pair: unconditional conv4x4/4 on the features, conditional conv4x4/4
    after a joint conv3x3-BN-LReLU on concat(features, tiled sentence) (sigmoids left to the loss)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.uncond = nn.Conv2d(channels, 1, 4, 4)
        self.joint = nn.Sequential(*_conv3x3_lrelu(channels + cond_dim, channels))
        self.cond = nn.Conv2d(channels, 1, 4, 4)

    def forward(self, features, sent):
        # features: (B, C, 4, 4), sent: (B, E) -> conditional, unconditional logits (B,) each
        tiled = sent[:, :, None, None].expand(-1, -1, *features.shape[2:])
        cond = self.cond(self.joint(torch.cat((features, tiled), dim=1))).flatten()
        return cond, self.uncond(features).flatten()


class StageHeads(nn.Module):
    """The logit layers of the three stage discriminators: head(features, sentence) ->
    (conditional, unconditional) logits, each (stages, B)."""

    def __init__(self, nf: int = 32, cond_dim: int = 256):
        super().__init__()
        self.config = dict(nf=nf, cond_dim=cond_dim)
        self.heads = nn.ModuleList(LogitHead(16 * nf, cond_dim) for _ in range(NUM_STAGES))
        init_weights(self)

    def forward(self, features: list[torch.Tensor], sent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = zip(*(head(f, sent) for head, f in zip(self.heads, features)))
        return torch.stack(cond), torch.stack(uncond)


def build(nf: int, z_dim: int, cond_dim: int, resolution: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, head) at one setting; the factory's entry point for `attngan`."""
    return (Generator(nf, z_dim, cond_dim, resolution), Discriminator(nf, resolution), StageHeads(nf, cond_dim))
