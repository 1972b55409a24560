"""Build every network of a GAN experiment from its config (the only place that names an
architecture; the training loop receives built objects).

Text embedding modes (SPEC 2; DTE-GAN has no public code, so this is our reading of its abstract):
- `pretrained`: e = frozen DAMSM text encoder (as DF-GAN / SSA-GAN). Nothing text-side trains.
- `shared`:     one text encoder E, trained end to end with the GAN. Its sentence embedding
                conditions G and D's head (so the adversarial hinge + mismatch + MA-GP losses train
                it), and the same embedding is aligned with D's image features by a contrastive
                image-text loss (weight model.align_weight): one embedding serves realism and
                alignment.
- `dual`:       two encoders. e_G conditions G and D's head and is trained only by the
                adversarial losses; e_A is trained only by the contrastive loss against D's image
                features, and G is pushed towards e_A through that loss on fakes.
In both trainable modes G sees detached embeddings (as SSA-GAN's end-to-end variant), so text
encoders are trained by D-side losses only. The DAMSM encoders stay frozen in every mode: they
score l1*DAMSM, l2*F2R, l3*F2F and R-precision; the captioner (only built when l4 > 0) is frozen
too and scores l4*recap. The README's "Text-embedding modes" section tabulates what trains what.

Architectures (`model.arch`, SPEC 3): `dfgan` (dfgan.py), `ssagan` (ssagan.py), `attngan_style`
and `style1attngan` (stylegan_attn.py), `attngan` (attngan.py). Each module's
`build(nf, z_dim, cond_dim, resolution)` returns (G, D, head) with one interface:
G(z, sentence, words, word_mask) -> images; D(images) -> features (B, D.out_channels, 4, 4);
head(features, sentence) -> logits. Plain AttnGAN (`G.multi_stage`) has three stages: its D gives
one such feature map per stage, its head (conditional, unconditional) logits per stage, and the
training step (t2i_ray/train/gan.py) takes its multi-stage path. Every architecture works with
every text embedding mode: G is conditioned by the sentence (and words) of e_G, D's head by the
same sentence, and the DTE alignment projection reads D's features whatever their width.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from t2i_ray.config import ExperimentConfig
from t2i_ray.models import attngan, dfgan, ssagan, stylegan_attn
from t2i_ray.models.text import TextEncoder

BUILDERS = {"dfgan": dfgan.build, "ssagan": ssagan.build, "attngan_style": stylegan_attn.build,
            "style1attngan": stylegan_attn.build_style1, "attngan": attngan.build}


class AlignProjection(nn.Module):
    """D's image features (B, C, 4, 4) -> (B, embed_dim) for the image-text contrastive loss."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.config = {"in_channels": in_channels, "embed_dim": embed_dim}
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, features):
        return self.proj(features.mean(dim=(2, 3)))  # global average pool, (B, C) -> (B, E)


@dataclass
class GANModels:
    generator: nn.Module
    discriminator: nn.Module
    head: nn.Module
    text_g: nn.Module  # conditions G and D's head
    text_a: nn.Module | None  # aligned with D's features (None: `pretrained`)
    align_proj: nn.Module | None
    damsm_text: nn.Module  # frozen
    damsm_image: nn.Module  # frozen
    text_trainable: bool
    captioner: nn.Module | None = None  # frozen; only when loss.recap > 0

    def trainable(self) -> dict[str, nn.Module]:
        """Modules updated by the optimisers: these are checkpointed and DDP-wrapped."""
        out = {"generator": self.generator, "discriminator": self.discriminator, "head": self.head}
        if self.align_proj is not None:
            out["align_proj"] = self.align_proj
        if self.text_trainable:
            out["text_g"] = self.text_g
            if self.text_a is not None and self.text_a is not self.text_g:
                out["text_a"] = self.text_a
        return out


def _text_encoder_like(damsm_text: TextEncoder, init_from_damsm: bool) -> TextEncoder:
    enc = TextEncoder(**damsm_text.config)
    if init_from_damsm:
        enc.load_state_dict(damsm_text.state_dict())
    return enc


def build_gan_models(cfg: ExperimentConfig, damsm_text: TextEncoder, damsm_image: nn.Module,
                     captioner: nn.Module | None = None, for_training: bool = True) -> GANModels:
    """`for_training=False`: models to load a checkpoint into and sample from; the captioner, which
    only scores the l4 loss, may then be absent."""
    m, res = cfg.model, cfg.data.resolution
    if cfg.loss.recap > 0 and captioner is None and for_training:
        raise ValueError("loss.recap > 0 needs the pre-trained captioner (t2i_ray.train.captioner."
                         "ensure_captioner / sweeps/pretrain_captioner.py); pass it, or set loss.recap=0")
    if m.arch not in BUILDERS:  # validate() already refuses these; kept for direct callers
        raise ValueError(f"model.arch={m.arch!r} is not built by this version; available: {', '.join(BUILDERS)}")
    generator, discriminator, head = BUILDERS[m.arch](m.nf, m.z_dim, m.embed_dim, res)
    for enc in (damsm_text, damsm_image, captioner):
        if enc is not None:
            enc.eval()
            enc.requires_grad_(False)
    if m.text_embedding == "pretrained":
        text_g, text_a, align_proj, trainable = damsm_text, None, None, False
    else:
        text_g = _text_encoder_like(damsm_text, m.text_init_from_damsm)
        text_a = text_g if m.text_embedding == "shared" else _text_encoder_like(damsm_text, m.text_init_from_damsm)
        align_proj = AlignProjection(discriminator.out_channels, m.embed_dim)
        trainable = True
    return GANModels(generator, discriminator, head, text_g, text_a, align_proj, damsm_text, damsm_image,
                     trainable, captioner if cfg.loss.recap > 0 else None)
