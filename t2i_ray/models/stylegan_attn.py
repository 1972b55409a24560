"""AttnGAN's word-attention generator built from StyleGAN2 blocks (Style2AttnGAN), the same generator
without word attention (Style1AttnGAN), and a residual discriminator.

Generator (SPEC 3 `attngan_style`):
- an 8-layer mapping network (equalised LR, lr multiplier 0.01, as StyleGAN2) maps
  (z, sentence) to w, replacing AttnGAN's conditioning augmentation F_ca;
- a StyleGAN2 synthesis network: learned 4x4 constant, per block an upsampling modulated 3x3
  conv and a modulated 3x3 conv (weights demodulated per sample and output channel), per-pixel
  noise inputs with learned strength, and a skip generator (each block's toRGB output is added
  to the upsampled sum of the previous ones);
- AttnGAN's word attention (`GlobalAttentionGeneral`): before each of the last two blocks (the
  places of AttnGAN's stage 2 and 3 at 64 -> 128 -> 256), every pixel attends over the
  projected word features (padding masked out) and the word context is concatenated to the
  feature map, as AttnGAN's `NEXT_STAGE_G` does.
Style1 / Style2 (`model.arch` `style1attngan` / `attngan_style`). Seed paper 001 reports
"Style1AttnGAN" and "Style2AttnGAN" rows (its Tables 1 and 2) without defining them; its
introduction names two directions, "the traditional style generator" and "fusing the style blocks
with another architecture like AttnGAN", and its section 3.2 describes the fused one. We read
Style2AttnGAN as the fused generator above (`attngan_style`) and Style1AttnGAN as the traditional,
text-conditional StyleGAN2 generator: the same mapping network of (z, sentence), synthesis blocks,
discriminator and head, without AttnGAN's fusion (no word attention: `word_attention=False`, the
generator reads the sentence only, through w). Both train with this project's single-stage loss
(t2i_ray/train/gan.py: hinge + mismatch + MA-GP); their paper-table rows add AttnGAN's Adam and
G EMA (t2i_ray/sweep/space.py ARCH_RECIPES).
Differences from StyleGAN2 (by choice): no style mixing, no path-length or R1 regularisers and
no minibatch-stddev layer (the project's hinge + MA-GP losses and mismatched pairs assume that
samples are scored independently); upsampling is bilinear x2 before the 3x3 conv, which equals
StyleGAN2's [1, 3, 3, 1] FIR upsampling filter except at the border (replicated vs zero pad).
The output is linear (no tanh), as StyleGAN2; evaluation clamps to [-1, 1].

Discriminator: StyleGAN2's residual D (fromRGB 1x1, ResBlocks of two 3x3 convs with a
[1, 3, 3, 1] blur before the stride-2 conv, a 1x1 blurred skip, sum / sqrt(2)) down to
(B, 8nf, 4, 4); the head makes StyleGAN2's last layers (conv3x3, fc, fc) conditional by
concatenating the tiled sentence, as DF-GAN's head does.

Widths follow the DF-GAN schedule nf * min(2^k, 8); at 256 with nf=64 that is StyleGAN2's
256x256 config-e widths (512 at 4..32, 256, 128, 64), with w_dim = 8nf = 512.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from t2i_ray.models.dfgan import channel_schedule

SQRT2 = math.sqrt(2.0)
MAPPING_LAYERS = 8
ATTENTION_BLOCKS = 2  # word attention before the last two synthesis blocks (AttnGAN stages 2, 3)


# ---- equalised-learning-rate layers (StyleGAN2; weights N(0, 1), scaled at run time) ----------

class EqualLinear(nn.Module):
    """y = x (W * lr_mul / sqrt(in))^T + b * lr_mul, optionally LeakyReLU(0.2) * sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul))
        self.scale, self.lr_mul, self.activate = lr_mul / math.sqrt(in_dim), lr_mul, activate

    def forward(self, x):
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, 0.2) * SQRT2 if self.activate else out


class Blur(nn.Module):
    """Depthwise [1, 3, 3, 1] x [1, 3, 3, 1] / 64 FIR filter with explicit zero padding."""

    def __init__(self, pad: tuple[int, int]):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = k[:, None] * k[None, :]
        self.register_buffer("kernel", (k / k.sum())[None, None], persistent=False)
        self.pad = pad

    def forward(self, x):
        x = F.pad(x, (self.pad[0], self.pad[1], self.pad[0], self.pad[1]))
        return F.conv2d(x, self.kernel.expand(x.shape[1], 1, 4, 4), groups=x.shape[1])


class ConvLayer(nn.Module):
    """StyleGAN2's D conv: [blur] -> equalised conv (stride 2 when downsampling) -> [bias, LReLU*sqrt2]."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, downsample: bool = False,
                 activate: bool = True, bias: bool = True):
        super().__init__()
        if downsample:
            p = 4 - 2 + kernel - 1  # FIR taps - stride + kernel - 1
            self.blur, self.stride, self.padding = Blur(((p + 1) // 2, p // 2)), 2, 0
        else:
            self.blur, self.stride, self.padding = None, 1, kernel // 2
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.activate = activate

    def forward(self, x):
        if self.blur is not None:
            x = self.blur(x)
        out = F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)
        return F.leaky_relu(out, 0.2) * SQRT2 if self.activate else out


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


# ---- generator blocks ----------------------------------------------------------------------

class MappingNetwork(nn.Module):
    """w = MLP_8(concat(PixelNorm(z), PixelNorm(sentence))), lr multiplier 0.01 (StyleGAN2).

    Normalising z and the sentence separately gives both the same scale at the input.
    """

    def __init__(self, z_dim: int, cond_dim: int, w_dim: int, num_layers: int = MAPPING_LAYERS):
        super().__init__()
        self.norm = PixelNorm()
        dims = [z_dim + cond_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(*(EqualLinear(a, b, lr_mul=0.01, activate=True)
                                      for a, b in zip(dims[:-1], dims[1:])))

    def forward(self, z, sent):
        # z: (B, z_dim), sent: (B, cond_dim) -> w (B, w_dim)
        return self.layers(torch.cat((self.norm(z), self.norm(sent)), dim=1))


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated conv: w'_{oik} = s_i w_{oik}, demodulated w'' = w' / sqrt(sum_ik w'^2 + eps).

    The style s = A(w) starts at 1 (bias init 1), so the layer begins as a plain conv. The batch
    is folded into groups so that each sample convolves with its own weights.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel, kernel))
        self.scale = 1 / math.sqrt(in_ch * kernel * kernel)
        self.modulation = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.demodulate, self.padding = demodulate, kernel // 2

    def sample_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Per-sample weights (B, out, in, k, k); with demodulation each (b, o) slice has unit norm."""
        style = self.modulation(w)[:, None, :, None, None]  # (B, 1, in, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        return weight

    def forward(self, x, w):
        # x: (B, in, H, W), w: (B, w_dim) -> (B, out, H, W)
        b, c, h, wd = x.shape
        weight = self.sample_weights(w)
        out = F.conv2d(x.reshape(1, b * c, h, wd), weight.reshape(-1, *weight.shape[2:]),
                       padding=self.padding, groups=b)
        return out.view(b, -1, h, wd)


class NoiseInjection(nn.Module):
    """x + strength * N(0, 1) per pixel (one map per sample, shared over channels); strength init 0.

    The noise is drawn from torch's global RNG (checkpointed by the training loop)."""

    def __init__(self):
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        noise = torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
        return x + self.strength * noise


class StyledConv(nn.Module):
    """[bilinear up x2] -> modulated 3x3 conv -> noise -> bias -> LeakyReLU(0.2) * sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, upsample: bool = False):
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim)
        self.noise = NoiseInjection()
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x, w):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return F.leaky_relu(self.noise(self.conv(x, w)) + self.bias, 0.2) * SQRT2


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, + bias, + the upsampled skip image."""

    def __init__(self, in_ch: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        rgb = self.conv(x, w) + self.bias
        if skip is not None:
            rgb = rgb + F.interpolate(skip, scale_factor=2.0, mode="bilinear", align_corners=False)
        return rgb


class WordAttention(nn.Module):
    """AttnGAN's `GlobalAttentionGeneral`: per pixel, softmax over words of h^T (U e) (Eq. 2).

    words (B, E, T) are projected by U, a 1x1 conv without bias, to the feature width C; the
    context c_j = sum_i softmax_i(h_j . U e_i) U e_i, padding words masked out (-inf).
    """

    def __init__(self, channels: int, word_dim: int):
        super().__init__()
        self.proj = nn.Conv1d(word_dim, channels, 1, bias=False)

    def forward(self, h, words, word_mask):
        # h: (B, C, H, W), words: (B, E, T), word_mask: (B, T) True for real words
        b, c, hh, ww = h.shape
        source = self.proj(words)  # (B, C, T)
        scores = torch.bmm(h.flatten(2).transpose(1, 2), source)  # (B, HW, T)
        scores = scores.masked_fill(~word_mask[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=2)
        return torch.bmm(source, attn.transpose(1, 2)).view(b, c, hh, ww)  # (B, C, H, W)


class SynthesisBlock(nn.Module):
    """[concat word context] -> StyledConv up -> StyledConv -> ToRGB (skip)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, word_dim: int | None):
        super().__init__()
        self.attention = WordAttention(in_ch, word_dim) if word_dim is not None else None
        conv_in = 2 * in_ch if self.attention is not None else in_ch
        self.conv1 = StyledConv(conv_in, out_ch, w_dim, upsample=True)
        self.conv2 = StyledConv(out_ch, out_ch, w_dim)
        self.to_rgb = ToRGB(out_ch, w_dim)

    def forward(self, h, rgb, w, words, word_mask):
        if self.attention is not None:
            h = torch.cat((h, self.attention(h, words, word_mask)), dim=1)  # (B, 2C, H, W)
        h = self.conv2(self.conv1(h, w), w)  # (B, out, 2H, 2W)
        return h, self.to_rgb(h, w, rgb)


class Generator(nn.Module):
    """Mapping network + StyleGAN2 skip synthesis from 4x4 to res with word attention."""

    def __init__(self, nf: int = 64, z_dim: int = 100, cond_dim: int = 256, resolution: int = 256,
                 word_attention: bool = True):
        super().__init__()
        self.config = dict(nf=nf, z_dim=z_dim, cond_dim=cond_dim, resolution=resolution,
                           word_attention=word_attention)
        widths = channel_schedule(nf, resolution)[::-1]  # 4x4 ... res
        w_dim = 8 * nf
        self.word_attention = word_attention
        self.mapping = MappingNetwork(z_dim, cond_dim, w_dim)
        self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        self.conv_in = StyledConv(widths[0], widths[0], w_dim)
        self.rgb_in = ToRGB(widths[0], w_dim)
        n = len(widths) - 1
        first_attending = n - ATTENTION_BLOCKS if word_attention else n  # Style1: no block attends
        self.blocks = nn.ModuleList(
            SynthesisBlock(c_in, c_out, w_dim, cond_dim if k >= first_attending else None)
            for k, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])))

    def forward(self, z: torch.Tensor, sent: torch.Tensor, words: torch.Tensor | None = None,
                word_mask: torch.Tensor | None = None) -> torch.Tensor:
        # z: (B, z_dim), sent: (B, E), words: (B, E, T), word_mask: (B, T) -> (B, 3, res, res).
        # Without word attention (Style1) words/word_mask are the shared interface's, unused.
        if self.word_attention and (words is None or word_mask is None):
            raise ValueError("the attngan_style generator attends over words: pass words (B, E, T) "
                             "and word_mask (B, T)")
        w = self.mapping(z, sent)  # (B, w_dim), one w for every layer (no style mixing)
        h = self.conv_in(self.const.expand(z.shape[0], -1, -1, -1), w)
        rgb = self.rgb_in(h, w)
        for block in self.blocks:
            h, rgb = block(h, rgb, w, words, word_mask)
        return rgb


# ---- discriminator ---------------------------------------------------------------------------

class ResBlock(nn.Module):
    """StyleGAN2 D block: (conv3x3 -> blurred conv3x3 s2 + blurred 1x1 s2 skip) / sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False)

    def forward(self, x):
        return (self.conv2(self.conv1(x)) + self.skip(x)) / SQRT2


class Discriminator(nn.Module):
    """fromRGB 1x1 (3 -> nf) then ResBlocks to features (B, 8nf, 4, 4)."""

    def __init__(self, nf: int = 64, resolution: int = 256):
        super().__init__()
        self.config = dict(nf=nf, resolution=resolution)
        widths = channel_schedule(nf, resolution)  # nf ... 8nf
        self.out_channels = widths[-1]
        self.from_rgb = ConvLayer(3, nf, 1)
        self.blocks = nn.Sequential(*(ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])))

    def forward(self, images):
        return self.blocks(self.from_rgb(images))


class ConditionalHead(nn.Module):
    """StyleGAN2's final layers on concat(features, tiled sentence): conv3x3 -> fc -> fc -> logit."""

    def __init__(self, in_channels: int, cond_dim: int = 256):
        super().__init__()
        self.config = dict(in_channels=in_channels, cond_dim=cond_dim)
        self.conv = ConvLayer(in_channels + cond_dim, in_channels, 3)
        self.fc = EqualLinear(in_channels * 16, in_channels, activate=True)
        self.out = EqualLinear(in_channels, 1)

    def forward(self, features, sent):
        # features: (B, C, 4, 4), sent: (B, E) -> logits (B,)
        tiled = sent[:, :, None, None].expand(-1, -1, *features.shape[2:])
        h = self.conv(torch.cat((features, tiled), dim=1))
        return self.out(self.fc(h.flatten(1))).flatten()


def build(nf: int, z_dim: int, cond_dim: int, resolution: int, word_attention: bool = True
          ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, head): `attngan_style` (Style2AttnGAN, word attention in the last two blocks)."""
    discriminator = Discriminator(nf, resolution)
    return (Generator(nf, z_dim, cond_dim, resolution, word_attention), discriminator,
            ConditionalHead(discriminator.out_channels, cond_dim))


def build_style1(nf: int, z_dim: int, cond_dim: int, resolution: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(G, D, head): `style1attngan`, the text-conditional StyleGAN2 generator without word attention."""
    return build(nf, z_dim, cond_dim, resolution, word_attention=False)
