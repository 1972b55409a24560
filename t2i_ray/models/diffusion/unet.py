"""Text-conditioned U-Net for joint image + semantic-layout diffusion (GCDP, Park et al.,
arXiv:2308.08157, Sec. 3.3), resolution-parametric (H, W taken from the input, any multiple of
2^(levels-1)).

Input: concat(x_t (B, 3, H, W), embed(y_t) (B, layout_channels, H, W)), where y_t is the noisy
layout as class indices (B, H, W) or as a one-hot / probability map (B, K, H, W); the embedding
is a 1x1 conv of the K-dim vectors (an index lookup of the same weights for indices; GCDP embeds
the labels into 3 channels, `pmh9960/GCDP` `imagen_pytorch/joint_imagen.py` JointUnet). Output:
eps (B, 3, H, W) and y_0 logits (B, K, H, W) from one zero-initialised 3x3 conv, so both start at
zero (GCDP: `final_conv`, `final_conv_seg`, both zero-initialised).

Text: the pooled sentence embedding is added to the timestep embedding; word features (B, T, D)
enter by cross-attention with a key padding mask at the attention levels (Imagen, Saharia et al.,
arXiv:2205.11487, Sec. 2.4 and App. F; lucidrains/imagen-pytorch). For classifier-free guidance
(Ho & Salimans, arXiv:2207.12598) a learned null word token and a learned null sentence replace the
text of the samples the caller marks in `drop_text`; the net draws nothing at random.

Blocks: ResBlocks with GroupNorm, SiLU and scale-shift time conditioning (Dhariwal & Nichol,
arXiv:2105.05233, Sec. 3 "AdaGN"); at the attention levels cross-attention after each ResBlock
and self-attention once per level; one skip connection per ResBlock
(lucidrains/denoising-diffusion-pytorch Unet); the cheap resamplers of Imagen's Efficient U-Net:
space-to-depth + 1x1 conv down, 1x1 conv + pixel shuffle up. `image_only=True` drops the layout
input and output (the ablation baseline).

`lowres_cond=True` makes it the super-resolution stage of a cascade (Imagen, arXiv:2205.11487
Sec. 2.5; GCDP's SR JointUnet with `lowres_cond=True`): the noise-augmented low-res image and (joint
model) layout, nearest-upsampled to the output size, are concatenated to the input, the layout
through its own embedding (GCDP embeds the low-res label separately), and the augmentation level
gets its own time embedding, added to the timestep's (imagen-pytorch `Unet`, `lowres_cond`:
`to_lowres_time_hiddens`). GCDP also concatenates the conditioning before its final conv; here it
enters at the input only.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; DDPM, arXiv:2006.11239 App. B) of the integer
    timesteps t (B,) -> (B, dim): [sin(t w_i), cos(t w_i)], w_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half
                      * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    return torch.cat((args.sin(), args.cos()), dim=1)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h) (1 + scale(emb)) + shift(emb); skip(x) + conv(SiLU(h)).

    The second conv starts at zero, so every block starts as its skip path (ADM, arXiv:2105.05233,
    `guided_diffusion/unet.py` ResBlock with use_scale_shift_norm).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: (B, in, H, W), emb: (B, emb_dim) already SiLU'd -> (B, out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, out, 1, 1) each
        h = torch.addcmul(shift, self.norm2(h), scale + 1)
        return self.skip(x) + self.conv2(F.silu(h))


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, N, C) -> (B, heads, N, C / heads), a view: scaled_dot_product_attention takes strides
    B, N, C = x.shape
    return x.view(B, N, heads, C // heads).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions (if self_attention), then cross-attention to the text.

    Works on tokens (B, H*W, C) with pre-LayerNorm and residuals, so the feature map is transposed
    once in and once out; both output projections start at zero (the block starts as the identity).
    Keys/values of the cross-attention come from the (normalised) text tokens (B, T, text_dim);
    `context_mask` (B, T) is True at the tokens a sample may attend to.
    """

    def __init__(self, channels: int, text_dim: int, heads: int, self_attention: bool = True):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels {channels} not divisible by heads {heads}")
        self.heads = heads
        self.self_attention = self_attention
        if self_attention:
            self.self_norm = nn.LayerNorm(channels)
            self.self_qkv = nn.Linear(channels, 3 * channels, bias=False)
            self.self_out = nn.Linear(channels, channels)
        self.cross_norm = nn.LayerNorm(channels)
        self.cross_q = nn.Linear(channels, channels, bias=False)
        self.cross_kv = nn.Linear(text_dim, 2 * channels, bias=False)
        self.cross_out = nn.Linear(channels, channels)
        for out in (self.self_out, self.cross_out) if self_attention else (self.cross_out,):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, C, H, W), context: (B, T, text_dim), context_mask: (B, T) bool or None
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C), N = H*W
        if self.self_attention:
            q, k, v = self.self_qkv(self.self_norm(tokens)).chunk(3, dim=2)  # (B, N, C) each
            h = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads),
                                               _heads(v, self.heads))  # (B, heads, N, C/heads)
            tokens = tokens + self.self_out(h.transpose(1, 2).reshape(B, -1, C))
        q = self.cross_q(self.cross_norm(tokens))  # (B, N, C)
        k, v = self.cross_kv(context).chunk(2, dim=2)  # (B, T, C) each
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, T)
        h = F.scaled_dot_product_attention(_heads(q, self.heads), _heads(k, self.heads),
                                           _heads(v, self.heads), attn_mask=mask)
        tokens = tokens + self.cross_out(h.transpose(1, 2).reshape(B, -1, C))
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """Space-to-depth then a 1x1 conv: (B, in, H, W) -> (B, out, H/2, W/2), no information lost
    before the conv (Imagen Efficient U-Net; lucidrains/imagen-pytorch `Downsample`)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(4 * in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


class Upsample(nn.Module):
    """1x1 conv to 4x the channels then pixel shuffle: (B, in, H, W) -> (B, out, 2H, 2W).

    ICNR init (Aitken et al., arXiv:1707.02937): the four sub-pixel filters start equal, so the
    layer starts as nearest upsampling of a 1x1 conv, free of checkerboard artefacts
    (lucidrains/imagen-pytorch `PixelShuffleUpsample`).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, 4 * out_ch, 1)
        weight = torch.empty(out_ch, in_ch, 1, 1)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        with torch.no_grad():
            # pixel_shuffle reads output channel c*4 + i as sub-pixel i of channel c
            self.conv.weight.copy_(weight.repeat_interleave(4, dim=0))
            self.conv.bias.copy_(self.conv.bias.view(out_ch, 4)[:, :1].expand(-1, 4).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class JointUNet(nn.Module):
    """eps, y_0 logits = net(x_t, y_t, t, text); see the module docstring.

    dim: base width; widths are dim * dim_mults[l] at level l (resolution H / 2^l).
    blocks: ResBlocks per level (same length as dim_mults); attention_levels: per level, whether
    each ResBlock there is followed by cross-attention to the words, the level's last ResBlock (on
    the way down and on the way up) also by self-attention; the middle always has both.
    Constructor arguments are plain ints / tuples / bools, kept in `self.config` for checkpoints:
    JointUNet(**ckpt["config"]).
    """

    def __init__(self, num_classes: int = 6, dim: int = 32, dim_mults: tuple[int, ...] = (1, 2, 4),
                 blocks: tuple[int, ...] = (1, 2, 2),
                 attention_levels: tuple[bool, ...] = (False, True, True), heads: int = 4,
                 text_dim: int = 256, layout_channels: int = 3, norm_groups: int = 8,
                 image_only: bool = False, lowres_cond: bool = False):
        super().__init__()
        # JSON gives lists back: store tuples, so that config round-trips compare equal
        dim_mults, blocks = tuple(dim_mults), tuple(blocks)
        attention_levels = tuple(attention_levels)
        if not len(dim_mults) == len(blocks) == len(attention_levels):
            raise ValueError(f"dim_mults {dim_mults}, blocks {blocks} and attention_levels "
                             f"{attention_levels} need one entry per level")
        self.config = dict(num_classes=num_classes, dim=dim, dim_mults=dim_mults, blocks=blocks,
                           attention_levels=attention_levels, heads=heads, text_dim=text_dim,
                           layout_channels=layout_channels, norm_groups=norm_groups,
                           image_only=image_only, lowres_cond=lowres_cond)
        self.num_classes = num_classes
        self.image_only = image_only
        self.lowres_cond = lowres_cond
        self.num_levels = len(dim_mults)
        widths = [dim * m for m in dim_mults]
        emb_dim = 4 * dim

        # Conditioning: time MLP + pooled text, added (Imagen adds the pooled text to the time
        # embedding); the null tokens stand in for dropped text (classifier-free guidance).
        self.time_mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.text_norm = nn.LayerNorm(text_dim)
        self.sentence_proj = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, emb_dim))
        self.null_word = nn.Parameter(torch.randn(text_dim) * 0.02)
        self.null_sentence = nn.Parameter(torch.randn(text_dim) * 0.02)

        if image_only:
            self.layout_embed = None
            in_ch, out_ch = 3, 3
        else:
            self.layout_embed = nn.Conv2d(num_classes, layout_channels, 1)  # embed(y_t), GCDP: 3 ch
            in_ch, out_ch = 3 + layout_channels, 3 + num_classes
        if lowres_cond:  # + the low-res image (3) and the low-res layout's own embedding
            self.lowres_layout_embed = None if image_only else nn.Conv2d(num_classes, layout_channels, 1)
            in_ch += 3 if image_only else 3 + layout_channels
            self.lowres_time_mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(),
                                                 nn.Linear(emb_dim, emb_dim))
        self.init_conv = nn.Conv2d(in_ch, widths[0], 3, 1, 1)

        def attentions(enabled: bool, ch: int, n: int) -> nn.ModuleList:
            # cross-attention after each of the level's n ResBlocks, self-attention after the last
            # only (Imagen's one transformer block per level; at 64 px the 32x32 self-attention
            # was a third of a training step when it followed every ResBlock)
            return nn.ModuleList(AttentionBlock(ch, text_dim, heads, self_attention=j == n - 1)
                                 for j in range(n if enabled else 0))

        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, (w, n, attn) in enumerate(zip(widths, blocks, attention_levels)):
            self.down.append(nn.ModuleList(ResBlock(w, w, emb_dim, norm_groups) for _ in range(n)))
            self.down_attn.append(attentions(attn, w, n))
            if level < self.num_levels - 1:
                self.downsample.append(Downsample(w, widths[level + 1]))
        mid = widths[-1]
        self.mid1 = ResBlock(mid, mid, emb_dim, norm_groups)
        self.mid_attn = AttentionBlock(mid, text_dim, heads)
        self.mid2 = ResBlock(mid, mid, emb_dim, norm_groups)
        # Up path, deepest level first: each ResBlock takes concat(h, skip) (2w -> w).
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            w, n = widths[level], blocks[level]
            self.up.append(nn.ModuleList(
                ResBlock(2 * w, w, emb_dim, norm_groups) for _ in range(n)))
            self.up_attn.append(attentions(attention_levels[level], w, n))
            if level > 0:
                self.upsample.append(Upsample(w, widths[level - 1]))
        self.out_norm = nn.GroupNorm(norm_groups, widths[0])
        # eps (3) and layout logits (K) heads as one conv; zero init: both outputs start at 0.
        self.out_conv = nn.Conv2d(widths[0], out_ch, 3, 1, 1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def _embed_layout(self, y_t: torch.Tensor, embed: nn.Conv2d | None = None) -> torch.Tensor:
        # indices (B, H, W) -> (B, layout_channels, H, W) by a lookup of the 1x1 conv's weights
        # (exactly the conv applied to their one-hot); probabilities (B, K, H, W) -> the conv.
        embed = self.layout_embed if embed is None else embed
        if y_t.dtype in (torch.int64, torch.int32, torch.uint8):
            table = embed.weight[:, :, 0, 0].t()  # (K, layout_channels)
            return (F.embedding(y_t.long(), table) + embed.bias).permute(0, 3, 1, 2)
        return embed(y_t)

    def _lowres_input(self, size: tuple[int, int], lowres_image: torch.Tensor | None,
                      lowres_layout: torch.Tensor | None) -> torch.Tensor:
        """concat(up(lowres_image), up(embed'(lowres_layout))) at `size` (H, W), nearest upsampling
        (GCDP / imagen-pytorch `resize_image_to`, F.interpolate's default mode)."""
        if lowres_image is None or (not self.image_only and lowres_layout is None):
            raise ValueError("the super-resolution U-Net (lowres_cond=True) needs lowres_image"
                             + ("" if self.image_only else " and lowres_layout"))
        parts = [lowres_image]
        if not self.image_only:
            parts.append(self._embed_layout(lowres_layout, self.lowres_layout_embed))
        low = torch.cat(parts, dim=1)  # (B, 3 [+ layout_channels], h, w)
        if low.shape[-2:] != size:
            low = F.interpolate(low, size=size, mode="nearest")
        return low

    def _text_context(self, words: torch.Tensor | None, word_mask: torch.Tensor | None,
                      sentence: torch.Tensor | None, drop_text: torch.Tensor | None, batch: int
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(context (B, T, D) normalised, mask (B, T) or None, sentence (B, D)). Dropped samples
        (and all samples when words is None) see only the null word token and the null sentence."""
        if words is None:
            context = self.null_word.expand(batch, 1, -1)  # unconditional: one null token
            return self.text_norm(context), None, self.null_sentence.expand(batch, -1)
        B, T, _ = words.shape
        if word_mask is None:
            word_mask = torch.ones(B, T, dtype=torch.bool, device=words.device)
        if drop_text is not None:
            drop = drop_text.view(B, 1)
            words = torch.where(drop[:, :, None], self.null_word.to(words.dtype), words)
            # attend to the first (null) token only: a fully masked row would give NaNs
            first = torch.arange(T, device=words.device)[None, :] == 0  # (1, T)
            word_mask = torch.where(drop, first, word_mask)
            sentence = torch.where(drop, self.null_sentence.to(sentence.dtype), sentence)
        return self.text_norm(words), word_mask, sentence

    def forward(self, x_t: torch.Tensor, y_t: torch.Tensor | None, t: torch.Tensor,
                words: torch.Tensor | None = None, word_mask: torch.Tensor | None = None,
                sentence: torch.Tensor | None = None, drop_text: torch.Tensor | None = None,
                lowres_image: torch.Tensor | None = None, lowres_layout: torch.Tensor | None = None,
                lowres_level: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x_t (B, 3, H, W); y_t (B, H, W) int or (B, K, H, W) float, None if image_only;
        t (B,) timesteps (1..T); words (B, T, text_dim) with word_mask (B, T) True at real words
        (the DAMSM TextEncoder's words (B, 256, T) go in as words.transpose(1, 2)),
        sentence (B, text_dim), both None for an unconditional call; drop_text (B,) bool: use
        the null text for these samples. Super-resolution stage only (lowres_cond): lowres_image
        (B, 3, h, w) and lowres_layout (B, h, w) int (None if image_only), the noise-augmented
        low-res pair at any h, w (upsampled here to H, W), and lowres_level (B,) its augmentation
        level in [0, 1). Returns eps (B, 3, H, W), logits (B, K, H, W) or None."""
        B, _, H, W = x_t.shape
        if H % 2 ** (self.num_levels - 1) or W % 2 ** (self.num_levels - 1):
            raise ValueError(f"image size {H}x{W} must be divisible by 2^{self.num_levels - 1}")
        if self.image_only:
            h = x_t
        else:
            h = torch.cat((x_t, self._embed_layout(y_t)), dim=1)  # (B, 3 + layout_channels, H, W)
        if self.lowres_cond:
            h = torch.cat((h, self._lowres_input((H, W), lowres_image, lowres_layout)), dim=1)
        context, context_mask, sentence = self._text_context(words, word_mask, sentence,
                                                             drop_text, B)
        emb = self.time_mlp(timestep_embedding(t, self.config["dim"]))
        emb = emb + self.sentence_proj(sentence)
        if self.lowres_cond:
            if lowres_level is None:
                raise ValueError("the super-resolution U-Net (lowres_cond=True) needs lowres_level")
            # the level in [0, 1) on the timestep scale 0..1000 of the sinusoidal embedding
            emb = emb + self.lowres_time_mlp(timestep_embedding(lowres_level * 1000, self.config["dim"]))
        emb = F.silu(emb)  # (B, 4 dim); every ResBlock's projection starts with this SiLU

        h = self.init_conv(h)  # (B, w0, H, W)
        skips = []
        for level in range(self.num_levels):
            attns = self.down_attn[level]
            for j, block in enumerate(self.down[level]):
                h = block(h, emb)
                if attns:
                    h = attns[j](h, context, context_mask)
                skips.append(h)
            if level < self.num_levels - 1:
                h = self.downsample[level](h)  # (B, w_{l+1}, H / 2^(l+1), W / 2^(l+1))
        h = self.mid2(self.mid_attn(self.mid1(h, emb), context, context_mask), emb)
        for i in range(self.num_levels):  # deepest level first
            attns = self.up_attn[i]
            for j, block in enumerate(self.up[i]):
                h = block(torch.cat((h, skips.pop()), dim=1), emb)
                if attns:
                    h = attns[j](h, context, context_mask)
            if i < self.num_levels - 1:
                h = self.upsample[i](h)
        out = self.out_conv(F.silu(self.out_norm(h)))  # (B, 3 [+ K], H, W)
        if self.image_only:
            return out, None
        return out[:, :3], out[:, 3:]
