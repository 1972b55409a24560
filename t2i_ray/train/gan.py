"""One GAN training step (DF-GAN update order, gan_anchors 1.4): a D step, then a G step.

L_D = hinge(real) + 1/2 (hinge(fake) + hinge(mismatch)) + MA-GP  [+ a_w * L_align(real)]
L_G = -E[D(G(z, e), e)] + l1 L_DAMSM + l2 L_F2R + l3 L_F2F + l4 L_recap  [+ a_w * L_align(fake)]
Multi-stage generators (`G.multi_stage`, plain AttnGAN, t2i_ray/models/attngan.py) replace the
adversarial part by AttnGAN's (arXiv:1711.10485 section 2.3; `taoxugit/AttnGAN` `code/trainer.py`,
`code/miscc/losses.py`): every stage's image goes to its own discriminator, which sees the real
batch resized to that stage; L_D = the BCE losses of `discriminator_bce_loss` summed over the
stages (no MA-GP), L_G = `generator_bce_loss` over the stages + KL(F_ca) + the same weighted terms,
which (DAMSM, F2R, F2F, recap, alignment) score the last stage's image, as AttnGAN's DAMSM does.
A weight of 0 skips its term's computation entirely (no extra forward passes). The models may be
DDP-wrapped; frozen uses (D during the G step, encoders under no_grad) go through the plain
module so DDP's gradient sync only sees the passes that train it. Under data parallelism the
batch-coupled terms (mismatched pairs, NT-Xent, DAMSM, the alignment InfoNCE, the re-captioning
loss's token mean) read the global batch through `gather` (t2i_ray/train/gather.py); every other
term is a mean of per-sample values, which DDP's gradient average already makes global.
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Mapping

import torch
from torch import Tensor, nn

from t2i_ray.config import ExperimentConfig
from t2i_ray.losses.adversarial import (
    discriminator_bce_loss,
    discriminator_hinge_loss,
    generator_bce_loss,
    generator_hinge_loss,
    kl_loss,
    ma_gradient_penalty,
    mismatched,
)
from t2i_ray.losses.contrastive import info_nce, nt_xent
from t2i_ray.losses.damsm import damsm_loss_from_scores, word_scores
from t2i_ray.losses.recaption import caption_token_nll, masked_token_mean
from t2i_ray.models.factory import GANModels, build_gan_models
from t2i_ray.models.text import word_mask
from t2i_ray.train.checkpoint import unwrap
from t2i_ray.train.damsm import damsm_class_ids
from t2i_ray.train.gather import NO_GATHER, BatchGather
from t2i_ray.train.method import Assets, Method, SampleFn, encode_text


def damsm_image_features(encoder, images: Tensor) -> tuple[Tensor, Tensor]:
    """The frozen DAMSM image encoder in float32 even inside autocast: it scores the loss terms
    under ablation, so they are measured at full precision (and its antialiased resize has no
    bf16 kernel on CPUs)."""
    with torch.autocast(images.device.type, enabled=False):
        return encoder(images.float())


def sample_noise(batch: int, z_dim: int, generator: torch.Generator, device) -> Tensor:
    # Drawn on the CPU from a dedicated, checkpointed generator so that resumed runs replay the
    # same noise, then moved to the device.
    return torch.randn(batch, z_dim, generator=generator).to(device)


def gan_step(
    models: GANModels,
    optimizers: Mapping[str, torch.optim.Optimizer],
    batch: Mapping[str, Tensor],
    cfg: ExperimentConfig,
    noise_gen: torch.Generator,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    gather: BatchGather = NO_GATHER,
) -> dict[str, float]:
    """One D update then one G update; returns the losses as floats. `autocast` wraps the forward
    passes (the loop passes bf16 autocast on GPUs that have it); backward runs outside it.
    `gather` gives the batch-coupled terms the global batch of all data-parallel workers (their
    reported values are then the global batch's, the same on every worker)."""
    lw, align_w = cfg.loss, cfg.model.align_weight
    real = batch["image"]
    ids, lens = batch["caption"], batch["caption_len"]
    bsz = real.shape[0]
    trainable_text = models.text_trainable
    use_align = trainable_text and align_w > 0
    G, D, head = models.generator, models.discriminator, models.head
    out: dict[str, float] = {}

    # ---- D step --------------------------------------------------------------------------
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    # Text encoding stays outside autocast (a small LSTM; keeps embeddings in float32).
    words_g, sent_g = encode_text(models.text_g, ids, lens, trainable_text)  # (B, E, T), (B, E)
    words_g, mask_g = words_g.detach(), word_mask(lens, ids.shape[1])  # G's word inputs
    multi_stage = getattr(unwrap(G), "multi_stage", False)  # AttnGAN's objective: no MA-GP
    if not trainable_text:
        sent_g = sent_g.detach().requires_grad_(not multi_stage)  # MA-GP differentiates w.r.t. the sentence
    real_in = real.detach().requires_grad_(not multi_stage)
    z = sample_noise(bsz, cfg.model.z_dim, noise_gen, real.device)
    stages = None  # multi-stage: (stage images, mu, logvar) of the one G forward
    with autocast():
        if multi_stage:
            loss_adv_d, real_feat, fake, stages, real_logits, fake_logits = _multi_stage_d_loss(
                models, real_in, z, sent_g, words_g, mask_g, gather)
            loss_gp = None  # AttnGAN's recipe has no gradient penalty
            loss_d = loss_adv_d
        else:
            real_feat = D(real_in)  # (B, 8nf, 4, 4)
            # Logits go to float32 before the losses: bf16 keeps ~3 digits, MA-GP raises to the 6th power.
            real_logits = head(real_feat, sent_g).float()
            # Image i + 1 with caption i. On the gathered (global) batch every worker pairs the rows as
            # one process with the whole global batch would, across the workers' boundaries too.
            coupled = gather({"real_feat": real_feat, "sent": sent_g})
            mismatch_logits = head(mismatched(coupled["real_feat"]), coupled["sent"]).float()
            # One G forward per iteration, as DF-GAN: D sees it detached, the G step reuses its graph
            # (only D's parameters change in between, and G's output does not depend on them).
            fake = G(z, sent_g.detach(), words_g, mask_g)
            fake_logits = head(D(fake.detach()), sent_g).float()
            loss_adv_d = discriminator_hinge_loss(real_logits, fake_logits, mismatch_logits)
            loss_gp = ma_gradient_penalty(real_logits, real_in, sent_g, k=lw.magp_k, p=lw.magp_p)
            loss_d = loss_adv_d + loss_gp
        if use_align:
            if models.text_a is models.text_g:
                sent_a = sent_g
            else:
                _, sent_a = encode_text(models.text_a, ids, lens, trainable=True)
            aligned = gather({"image": models.align_proj(real_feat), "text": sent_a})
            loss_align_d = info_nce(aligned["image"].float(), aligned["text"].float(), cfg.model.align_temperature)
            loss_d = loss_d + align_w * loss_align_d
            out["loss_align_d"] = loss_align_d.item()
    loss_d.backward()
    optimizers["d"].step()
    if "text" in optimizers:
        optimizers["text"].step()
    out.update(loss_d=loss_d.item(), loss_d_adv=loss_adv_d.item(),
               d_real=real_logits.mean().item(), d_fake=fake_logits.mean().item())
    if loss_gp is not None:
        out["loss_magp"] = loss_gp.item()

    # ---- G step --------------------------------------------------------------------------
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    d_plain, head_plain = unwrap(D), unwrap(head)
    d_params = [p for m in (d_plain, head_plain) for p in m.parameters()]
    for p in d_params:
        p.requires_grad_(False)
    try:
        sent = sent_g.detach()
        with autocast():
            loss_g = _generator_loss(models, batch, cfg, fake, sent, z, real, out, gather, stages)
        loss_g.backward()
        optimizers["g"].step()
    finally:
        for p in d_params:
            p.requires_grad_(True)
    out["loss_g"] = loss_g.item()
    return out


def _multi_stage_d_loss(models: GANModels, real_in: Tensor, z: Tensor, sent_g: Tensor, words_g: Tensor,
                        mask_g: Tensor, gather: BatchGather):
    """AttnGAN's D losses over its stages (module docstring): returns (loss, the last stage's real
    features, the last stage's fake, (stage fakes, mu, logvar), real and fake conditional logits)."""
    G, D, head = models.generator, models.discriminator, models.head
    real_feats = D(real_in)  # [(B, 8ndf, 4, 4)] per stage; D resizes the reals to the stage sizes
    real_cond, real_uncond = (x.float() for x in head(real_feats, sent_g))  # (stages, B) each
    # Mismatched pairs as the single-stage path: image i + 1 with caption i, on the gathered batch.
    coupled = gather({**{f"real_feat{i}": f for i, f in enumerate(real_feats)}, "sent": sent_g})
    mismatch_cond, _ = head([mismatched(coupled[f"real_feat{i}"]) for i in range(len(real_feats))],
                            coupled["sent"])
    fakes, mu, logvar = G(z, sent_g.detach(), words_g, mask_g, return_stages=True)
    fake_cond, fake_uncond = (x.float() for x in head(D([f.detach() for f in fakes]), sent_g))
    loss = discriminator_bce_loss(real_cond, real_uncond, fake_cond, fake_uncond, mismatch_cond.float())
    return loss, real_feats[-1], fakes[-1], (fakes, mu, logvar), real_cond, fake_cond


def _generator_loss(models: GANModels, batch: Mapping[str, Tensor], cfg: ExperimentConfig, fake: Tensor,
                    sent: Tensor, z: Tensor, real: Tensor, out: dict[str, float],
                    gather: BatchGather = NO_GATHER, stages=None) -> Tensor:
    """L_G = -E[D(G(z,e),e)] + l1 L_DAMSM + l2 L_F2R + l3 L_F2F + l4 L_recap [+ a_w L_align(fake)], D frozen.
    Features go to float32 before every loss (they may come out of bf16 autocast). The per-sample
    inputs of the batch-coupled terms are computed first and gathered once. `stages` (multi-stage
    G): (stage images, mu, logvar), whose adversarial part is AttnGAN's BCE over the stages + KL."""
    lw, align_w = cfg.loss, cfg.model.align_weight
    ids, lens = batch["caption"], batch["caption_len"]
    d_plain, head_plain = unwrap(models.discriminator), unwrap(models.head)
    if stages is None:
        fake_feat = d_plain(fake)
        loss_adv_g = generator_hinge_loss(head_plain(fake_feat, sent).float())
        loss_g = loss_adv_g
    else:
        fakes, mu, logvar = stages
        fake_feats = d_plain(fakes)
        fake_cond, fake_uncond = head_plain(fake_feats, sent)
        loss_adv_g = generator_bce_loss(fake_cond.float(), fake_uncond.float())
        loss_kl = kl_loss(mu.float(), logvar.float())
        loss_g = loss_adv_g + loss_kl
        out["loss_kl"] = loss_kl.item()
        fake_feat = fake_feats[-1]  # the alignment projection reads the last stage's features
    out["loss_g_adv"] = loss_adv_g.item()
    use_align = models.text_trainable and align_w > 0
    local: dict[str, Tensor] = {}
    if lw.damsm > 0 or lw.f2r > 0 or lw.f2f > 0:
        fake_regions, local["fake_global"] = damsm_image_features(models.damsm_image, fake)  # frozen, grads reach G
    if lw.damsm > 0:
        words, sent_damsm = encode_text(models.damsm_text, ids, lens, trainable=False)
        # Word matching of this worker's fakes against every caption of the (global) batch: its
        # rows of the score matrix (the O(B^2) part, so no worker computes another's rows).
        captions = gather({"words": words.float(), "lens": lens})
        local.update(word_scores=word_scores(fake_regions, captions["words"], captions["lens"], lw.gamma1, lw.gamma2),
                     sent_damsm=sent_damsm.float())
        class_ids = damsm_class_ids(cfg, batch)  # same-class captions are not negatives (damsm.class_mask)
        if class_ids is not None:
            local["damsm_class_ids"] = class_ids
    if lw.f2r > 0:
        with torch.no_grad():
            _, local["real_global"] = damsm_image_features(models.damsm_image, real)
    if lw.f2f > 0:
        # A second fake from the same noise and another caption of the same image.
        ids2, lens2 = batch["caption2"], batch["caption2_len"]
        words2, sent2 = encode_text(models.text_g, ids2, lens2, trainable=False)
        fake2 = models.generator(z, sent2.detach(), words2.detach(), word_mask(lens2, ids2.shape[1]))
        _, local["fake2_global"] = damsm_image_features(models.damsm_image, fake2)
    if lw.recap > 0:
        # Frozen captioner (eval mode, no parameter gradients): the gradient reaches G only. The
        # loss is a mean over the batch's tokens, so the token counts are gathered with the NLLs.
        local["recap_nll"], _, local["recap_mask"] = caption_token_nll(models.captioner(fake, ids).float(), ids, lens)
    if use_align:
        _, sent_a = encode_text(models.text_a, ids, lens, trainable=False)
        local.update(fake_align=unwrap(models.align_proj)(fake_feat), sent_a=sent_a)
    g = gather(local)
    if lw.damsm > 0:
        loss_damsm = damsm_loss_from_scores(g["word_scores"], g["fake_global"], g["sent_damsm"], lw.gamma3,
                                            g.get("damsm_class_ids"))
        loss_g = loss_g + lw.damsm * loss_damsm
        out["loss_damsm"] = loss_damsm.item()
    if lw.f2r > 0:
        loss_f2r = nt_xent(g["fake_global"], g["real_global"], lw.temperature)
        loss_g = loss_g + lw.f2r * loss_f2r
        out["loss_f2r"] = loss_f2r.item()
    if lw.f2f > 0:
        loss_f2f = nt_xent(g["fake_global"], g["fake2_global"], lw.temperature)
        loss_g = loss_g + lw.f2f * loss_f2f
        out["loss_f2f"] = loss_f2f.item()
    if lw.recap > 0:
        loss_recap = masked_token_mean(g["recap_nll"], g["recap_mask"])
        loss_g = loss_g + lw.recap * loss_recap
        out["loss_recap"] = loss_recap.item()
    if use_align:
        loss_align_g = info_nce(g["fake_align"].float(), g["sent_a"].float(), cfg.model.align_temperature)
        loss_g = loss_g + align_w * loss_align_g
        out["loss_align_g"] = loss_align_g.item()
    return loss_g


def build_optimizers(models: GANModels, cfg: ExperimentConfig) -> dict[str, torch.optim.Optimizer]:
    t = cfg.train
    betas = (t.beta1, t.beta2)
    d_params = list(models.discriminator.parameters()) + list(models.head.parameters())
    if models.align_proj is not None:
        d_params += list(models.align_proj.parameters())
    opts = {
        "g": torch.optim.Adam(models.generator.parameters(), lr=t.lr_g, betas=betas),
        "d": torch.optim.Adam(d_params, lr=t.lr_d, betas=betas),
    }
    if models.text_trainable:
        text_params = list(models.text_g.parameters())
        if models.text_a is not None and models.text_a is not models.text_g:
            text_params += list(models.text_a.parameters())
        opts["text"] = torch.optim.Adam(text_params, lr=t.lr_text, betas=betas)
    return opts


# Every module slot of GANModels in a fixed order; the conv nets take the accelerator's memory format.
SLOTS = ("generator", "discriminator", "head", "text_g", "text_a", "align_proj", "damsm_text", "damsm_image",
         "captioner")
CONV_NETS = ("generator", "discriminator", "damsm_image")


def prepare_gan_models(models: GANModels, wrap, prepare_module, device) -> None:
    """Move every module to `device` (conv nets through `prepare_module`) and replace each trainable
    one by `wrap(module)` (DDP), in place; `shared` mode's one text encoder is wrapped once."""
    done: dict[int, nn.Module] = {}
    trainable_ids = {id(m) for m in models.trainable().values()}
    for name in SLOTS:
        module = getattr(models, name)
        if module is None:
            continue
        if name in CONV_NETS:
            module = prepare_module(module)
        if id(module) not in done:
            done[id(module)] = wrap(module) if id(module) in trainable_ids else module.to(device)
        setattr(models, name, done[id(module)])


class GanMethod(Method):
    """`model.method=gan`: the architectures of models/factory.py trained by `gan_step`; samples
    are G(z, e) with z ~ N(0, I) drawn from the sampler's generator."""

    name = "gan"
    batch_coupled = True  # the mismatched pairs always; NT-Xent, DAMSM, alignment, recap when on

    def __init__(self, cfg: ExperimentConfig, assets: Assets):
        self.cfg = cfg
        self.models = build_gan_models(cfg, assets.damsm.text_encoder, assets.damsm.image_encoder,
                                       assets.captioner, for_training=assets.for_training)
        self.optimizers = build_optimizers(self.models, cfg)
        self.gather = NO_GATHER

    def trainable(self) -> dict[str, nn.Module]:
        return self.models.trainable()

    def prepare(self, wrap, prepare_module, device) -> None:
        prepare_gan_models(self.models, wrap, prepare_module, device)
        # Over the workers of the process group the loop runs in (none, or one worker: no gathering).
        self.gather = BatchGather.from_process_group(self.cfg.train.gather_negatives)

    def step(self, batch, rng, autocast) -> dict[str, float]:
        return gan_step(self.models, self.optimizers, batch, self.cfg, rng, autocast=autocast, gather=self.gather)

    def _generate(self, ids: Tensor, lens: Tensor, rng: torch.Generator, **extra):
        generator, text_g = unwrap(self.models.generator), unwrap(self.models.text_g)
        device = next(generator.parameters()).device
        generator.eval()
        text_g.eval()
        z = torch.randn(len(ids), self.cfg.model.z_dim, generator=rng)
        ids, lens = ids.to(device), lens.to(device)
        words, sent = text_g(ids, lens)
        return generator(z.to(device), sent, words, word_mask(lens, ids.shape[1]), **extra)

    def sampler(self) -> SampleFn:
        return torch.no_grad()(self._generate)

    def mask_sampler(self):
        if not getattr(unwrap(self.models.generator), "predicts_masks", False):
            return None
        return torch.no_grad()(lambda ids, lens, rng: self._generate(ids, lens, rng, return_masks=True)[1])
