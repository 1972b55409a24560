"""Build every network of a GAN experiment from its config (the only place that names an
architecture; the training loop receives built objects).

Text embedding modes (SPEC 2; DTE-GAN, arXiv 2502.01507, has no public code and its body is not
public: this is our reading of its abstract and of summaries of the paper, README "Text-embedding
modes"). S_G is the sentence (and words) that condition G, S_D the sentence that conditions D's
matching head (the conditional hinge head, hence also MA-GP's sentence input) and D's alignment
branch (`align_proj` + the contrastive InfoNCE against S_D):
- `pretrained`: S_G = S_D = the frozen DAMSM text encoder (as DF-GAN / SSA-GAN). Nothing text-side trains.
- `shared`:     one new text encoder gives S_G = S_D and receives both flows: G's loss through G's
                conditioning (and CA), D's losses through D's head, MA-GP and the alignment branch.
- `dual`:       two text encoders. S_G = E_G(caption) conditions G (through CA) and is trained by
                G's loss only (its KL included); S_D = E_D(caption) conditions D's head and its
                alignment branch and is trained by D's losses only. Two encoders rather than one
                encoder with two heads: a shared trunk would receive both flows, and "learned via
                separate gradient flows" is then only true of the heads.
In the G step D (and S_D as its input) is frozen: G's adversarial and alignment-on-fakes losses do
not reach S_D. With conditioning augmentation (model.conditioning_augmentation; on by default for
shared/dual) G's condition is CA(S_G) (models/conditioning.py), CA trained with G. The DAMSM
encoders stay frozen in every mode: they score l1*DAMSM, l2*F2R, l3*F2F and R-precision; the
captioner (only built when l4 > 0) is frozen too and scores l4*recap.

Architectures (`model.arch`, SPEC 3): `dfgan` (dfgan.py), `ssagan` (ssagan.py), `attngan_style`
(stylegan_attn.py), `style1attngan` (stylegan_attn.py), `attngan` (attngan.py). Each module's
`build(nf, z_dim, cond_dim, resolution)` returns (G, D, head) with one interface:
G(z, sentence, words, word_mask) -> images; D(images) -> features (B, D.out_channels, 4, 4);
head(features, sentence) -> logits. Plain AttnGAN (`G.multi_stage`) has three stages: its D gives
one such feature map per stage, its head (conditional, unconditional) logits per stage, and the
training step (t2i_ray/train/gan.py) takes its multi-stage path. Every architecture works with
every text embedding mode: G is conditioned by the sentence (and words) of S_G (the sentence through
CA when it is on: G is then built with cond_dim = model.ca_dim), D's head by S_D, and the DTE
alignment projection reads D's features whatever their width.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from t2i_ray.config import ExperimentConfig, uses_ca
from t2i_ray.models import attngan, dfgan, ssagan, stylegan_attn
from t2i_ray.models.conditioning import ConditioningAugmentation
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
    text_g: nn.Module  # S_G: conditions G
    text_d: nn.Module  # S_D: conditions D's head and alignment branch (pretrained/shared: text_g itself)
    align_proj: nn.Module | None  # D's alignment branch (shared/dual)
    damsm_text: nn.Module  # frozen
    damsm_image: nn.Module  # frozen
    text_trainable: bool
    captioner: nn.Module | None = None  # frozen; only when loss.recap > 0
    ca: nn.Module | None = None  # conditioning augmentation before G (trained with G)

    def trainable(self) -> dict[str, nn.Module]:
        """Modules updated by the optimisers: these are checkpointed and DDP-wrapped."""
        out = {"generator": self.generator, "discriminator": self.discriminator, "head": self.head}
        if self.ca is not None:
            out["ca"] = self.ca
        if self.align_proj is not None:
            out["align_proj"] = self.align_proj
        out.update(self.text_encoders() if self.text_trainable else {})
        return out

    def text_encoders(self) -> dict[str, nn.Module]:
        """The distinct encoders that give S_G and S_D: {"text_g"} or {"text_g", "text_d"} (dual)."""
        out = {"text_g": self.text_g}
        if self.text_d is not self.text_g:
            out["text_d"] = self.text_d
        return out

    def parameter_counts(self) -> dict[str, int]:
        """What a results row records (README "Outputs"): params_g (G + CA), params_d (D, its
        conditional head and alignment projection), params_text (the text encoders giving S_G and
        S_D, frozen or not; not the DAMSM/captioner scorers of the l-terms), params_trainable
        (every parameter the optimisers update)."""
        def count(*modules):
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        return {"params_g": count(self.generator, self.ca),
                "params_d": count(self.discriminator, self.head, self.align_proj),
                "params_text": count(*self.text_encoders().values()),
                "params_trainable": count(*self.trainable().values())}


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
        text_g = text_d = damsm_text
        align_proj, trainable = None, False
    else:
        text_g = _text_encoder_like(damsm_text, m.text_init_from_damsm)
        text_d = text_g if m.text_embedding == "shared" else _text_encoder_like(damsm_text, m.text_init_from_damsm)
        align_proj = AlignProjection(discriminator.out_channels, m.embed_dim)
        trainable = True
    ca = None
    if uses_ca(m):  # built last: every other module draws the same initial weights as without CA
        if m.ca_dim != m.embed_dim:  # G takes CA's output width (D's head keeps S_D's)
            generator = BUILDERS[m.arch](m.nf, m.z_dim, m.ca_dim, res)[0]
        ca = ConditioningAugmentation(m.embed_dim, m.ca_dim)
    return GANModels(generator, discriminator, head, text_g, text_d, align_proj, damsm_text, damsm_image,
                     trainable, captioner if cfg.loss.recap > 0 else None, ca)
