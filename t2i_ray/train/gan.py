"""One GAN training step (DF-GAN update order, gan_anchors 1.4): a D step, then a G step.

L_D = hinge(real) + 1/2 (hinge(fake) + hinge(mismatch)) [+ MA-GP]  [+ a_w * L_align(real)]
L_G = -E[D(G(z, c), s_D)] + l1 L_DAMSM + l2 L_F2R + l3 L_F2F + l4 L_recap  [+ a_w * L_align(fake)]
      [+ kl_w * KL(N(mu, sigma^2) || N(0, I))]
c is G's condition: S_G, or c = mu + sigma * eps from conditioning augmentation on S_G (StackGAN,
arXiv 1612.03242 sec. 3.1; models/conditioning.py). s_D is D's sentence input S_D. Which loss
reaches which text embedding (models/factory.py, README "Text-embedding modes"): G's loss reaches
S_G (through G and CA), D's losses reach S_D (through the head, MA-GP and the alignment branch);
`shared` has S_G = S_D and so takes both, `dual` has two encoders and each takes one.
Multi-stage generators (`G.multi_stage`, plain AttnGAN, t2i_ray/models/attngan.py) replace the
adversarial part by AttnGAN's (arXiv:1711.10485 section 2.3; `taoxugit/AttnGAN` `code/trainer.py`,
`code/miscc/losses.py`): every stage's image goes to its own discriminator, which sees the real
batch resized to that stage; L_D = the BCE losses of `discriminator_bce_loss` summed over the
stages (no MA-GP), L_G = `generator_bce_loss` over the stages + KL(F_ca) (AttnGAN's own CA, inside
its G) + the same weighted terms, which (DAMSM, F2R, F2F, recap, alignment) score the last stage's
image, as AttnGAN's DAMSM does.
F2F's second fake G(z, c2) (caption 2 of the same image, same z) enters L_F2F only
(loss.f2f_variant=isolated), or, as T2I_CL trains it (t2i_cl; huiyegit/T2I_CL
`AttnGAN+CL/code/trainer.py`: errD += errD_2, errG_total += errG_total_2), also both sides' losses
with its caption: L_D += L_D(real, e2, G(z, e2)) (hinge, MA-GP when on, the same mismatched rows) and
L_G += -E[D(G(z, e2), e2)] + l1 L_DAMSM(G(z, e2), caption 2).
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
from t2i_ray.models.conditioning import kl_to_standard_normal
from t2i_ray.models.factory import GANModels, build_gan_models
from t2i_ray.models.text import word_mask
from t2i_ray.train.checkpoint import unwrap
from t2i_ray.train.damsm import damsm_class_ids
from t2i_ray.train.ema import ema_copy, update_ema, warmed_decay
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


def sample_ca_noise(batch: int, dim: int, generator: torch.Generator, device) -> Tensor:
    """CA's eps ~ N(0, I), drawn after z from the same checkpointed generator."""
    return torch.randn(batch, dim, generator=generator).to(device)


# DF-GAN's truncated_noise (tobran/DF-GAN code/lib/utils.py): scipy's truncnorm(-2, 2) times the
# truncation rate (0.88 in its configs' trunc_rate).
TRUNCATION_BOUND = 2.0


def eval_noise(batch: int, z_dim: int, truncation: float | None, generator: torch.Generator) -> Tensor:
    """The noise of the GAN samplers (CPU, from `generator`): z ~ N(0, I) (`truncation` None), or
    DF-GAN's truncated noise, `truncation` * N(0, 1) truncated to [-2, 2]: the same first draw,
    then every entry outside [-2, 2] redrawn from `generator` until none is (the standard normal
    conditioned on the interval, which scipy.stats.truncnorm(-2, 2) samples), then scaled."""
    z = torch.randn(batch, z_dim, generator=generator)
    if truncation is None:
        return z
    outside = z.abs() > TRUNCATION_BOUND
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > TRUNCATION_BOUND
    return truncation * z


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
    t2i_cl = lw.f2f > 0 and lw.f2f_variant == "t2i_cl"
    second: dict[str, Tensor] | None = None  # t2i_cl: the second caption's pair, shared with the G step
    out: dict[str, float] = {}

    # ---- D step --------------------------------------------------------------------------
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    # Text encoding stays outside autocast (a small LSTM; keeps embeddings in float32). One
    # forward per encoder per iteration: S_G keeps its graph for G's loss (trainable modes).
    words_g, sent_g = encode_text(models.text_g, ids, lens, trainable_text)  # S_G: (B, E, T), (B, E)
    mask_g = word_mask(lens, ids.shape[1])
    multi_stage = getattr(unwrap(G), "multi_stage", False)  # AttnGAN's objective: no MA-GP
    use_gp = lw.magp and not multi_stage
    if models.text_d is models.text_g:
        sent_d_out = sent_g
    else:
        _, sent_d_out = encode_text(models.text_d, ids, lens, trainable=True)
    # D reads S_D through a leaf: D's losses leave their gradient w.r.t. S_D in sent_d.grad (MA-GP
    # also differentiates w.r.t. it), and the G step's single backward hands it on to S_D's
    # encoder. So `shared`'s one encoder takes G's and D's flows in one backward pass (its graph
    # is walked once, and a DDP-wrapped encoder sees one forward and one backward).
    sent_d = sent_d_out.detach().requires_grad_(trainable_text or use_gp)
    real_in = real.detach().requires_grad_(use_gp)
    z = sample_noise(bsz, cfg.model.z_dim, noise_gen, real.device)
    cond, kl = sent_g if trainable_text else sent_g.detach(), None
    if models.ca is not None:  # outside autocast too: mu and log sigma^2 stay float32 for the KL
        eps = sample_ca_noise(bsz, unwrap(models.ca).out_dim, noise_gen, real.device)
        cond, mu, logvar = models.ca(cond, eps)
        kl = kl_to_standard_normal(mu, logvar)
    stages, loss_gp = None, None  # multi-stage: (stage images, mu, logvar) of the one G forward
    with autocast():
        if multi_stage:
            loss_adv_d, real_feat, fake, stages, real_logits, fake_logits = _multi_stage_d_loss(
                models, real_in, z, cond, sent_d, words_g, mask_g, gather)
            loss_d = loss_adv_d
        else:
            real_feat = D(real_in)  # (B, 8nf, 4, 4)
            # Logits go to float32 before the losses: bf16 keeps ~3 digits, MA-GP raises to the 6th power.
            real_logits = head(real_feat, sent_d).float()
            # Image i + 1 with caption i. On the gathered (global) batch every worker pairs the rows as
            # one process with the whole global batch would, across the workers' boundaries too.
            coupled = gather({"real_feat": real_feat, "sent": sent_d})
            mismatch_logits = head(mismatched(coupled["real_feat"]), coupled["sent"]).float()
            # One G forward per iteration, as DF-GAN: D sees it detached, the G step reuses its graph
            # (only D's parameters change in between, and G's output does not depend on them).
            fake = G(z, cond, words_g, mask_g)
            fake_logits = head(D(fake.detach()), sent_d).float()
            loss_adv_d = discriminator_hinge_loss(real_logits, fake_logits, mismatch_logits)
            loss_d = loss_adv_d
            if use_gp:
                loss_gp = ma_gradient_penalty(real_logits, real_in, sent_d, k=lw.magp_k, p=lw.magp_p)
                loss_d = loss_d + loss_gp
            if t2i_cl:
                second = second_caption_fake(models, batch, z, eps if models.ca is not None else None, use_gp)
                loss_d2 = second_pair_d_loss(D, head, real_in, real_feat, second, lw, gather, use_gp)
                loss_d = loss_d + loss_d2
                out["loss_d2"] = loss_d2.item()
        if use_align:
            aligned = gather({"image": models.align_proj(real_feat), "text": sent_d})
            loss_align_d = info_nce(aligned["image"].float(), aligned["text"].float(), cfg.model.align_temperature)
            loss_d = loss_d + align_w * loss_align_d
            out["loss_align_d"] = loss_align_d.item()
    loss_d.backward()
    optimizers["d"].step()
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
        # D and its input S_D are frozen here: G's losses reach G, CA and S_G only.
        with autocast():
            loss_g = _generator_loss(models, batch, cfg, fake, sent_d.detach(), z, real, out, gather,
                                     stages, eps if models.ca is not None else None, second)
        if kl is not None and cfg.model.ca_kl_weight > 0:
            loss_g = loss_g + cfg.model.ca_kl_weight * kl
            out["loss_ca_kl"] = kl.item()
        roots, grads = [loss_g], [None]
        if trainable_text and sent_d.grad is not None:  # D's losses on to S_D's encoder
            roots.append(sent_d_out)
            grads.append(sent_d.grad)
        torch.autograd.backward(roots, grads)
        optimizers["g"].step()
        if "text" in optimizers:
            optimizers["text"].step()
    finally:
        for p in d_params:
            p.requires_grad_(True)
    out["loss_g"] = loss_g.item()
    return out


def _multi_stage_d_loss(models: GANModels, real_in: Tensor, z: Tensor, cond: Tensor, sent_d: Tensor,
                        words_g: Tensor, mask_g: Tensor, gather: BatchGather):
    """AttnGAN's D losses over its stages (module docstring): G reads its condition `cond` (S_G), the
    discriminators S_D. Returns (loss, the last stage's real features, the last stage's fake,
    (stage fakes, mu, logvar), real and fake conditional logits)."""
    G, D, head = models.generator, models.discriminator, models.head
    real_feats = D(real_in)  # [(B, 8ndf, 4, 4)] per stage; D resizes the reals to the stage sizes
    real_cond, real_uncond = (x.float() for x in head(real_feats, sent_d))  # (stages, B) each
    # Mismatched pairs as the single-stage path: image i + 1 with caption i, on the gathered batch.
    coupled = gather({**{f"real_feat{i}": f for i, f in enumerate(real_feats)}, "sent": sent_d})
    mismatch_cond, _ = head([mismatched(coupled[f"real_feat{i}"]) for i in range(len(real_feats))],
                            coupled["sent"])
    fakes, mu, logvar = G(z, cond, words_g, mask_g, return_stages=True)
    fake_cond, fake_uncond = (x.float() for x in head(D([f.detach() for f in fakes]), sent_d))
    loss = discriminator_bce_loss(real_cond, real_uncond, fake_cond, fake_uncond, mismatch_cond.float())
    return loss, real_feats[-1], fakes[-1], (fakes, mu, logvar), real_cond, fake_cond


def second_caption_fake(models: GANModels, batch: Mapping[str, Tensor], z: Tensor, ca_eps: Tensor | None = None,
                        magp: bool = True) -> dict[str, Tensor]:
    """F2F's second fake: G(z, c2) from the same noise (and CA noise `ca_eps`, when CA is on) and
    caption 2 of the same image, with the frozen text encoder's e2 ("sent", D's input; set to
    require grad for MA-GP when `magp`), words and mask."""
    ids2, lens2 = batch["caption2"], batch["caption2_len"]
    words2, sent2 = encode_text(models.text_g, ids2, lens2, trainable=False)
    words2, mask2 = words2.detach(), word_mask(lens2, ids2.shape[1])
    cond2 = sent2.detach()
    if ca_eps is not None:
        cond2 = models.ca(cond2, ca_eps)[0]
    fake2 = models.generator(z, cond2, words2, mask2)
    return {"fake": fake2, "sent": sent2.detach().requires_grad_(magp), "ids": ids2, "lens": lens2}


def second_pair_d_loss(D, head, real_in: Tensor, real_feat: Tensor, second: Mapping[str, Tensor], lw,
                       gather: BatchGather = NO_GATHER, magp: bool = True) -> Tensor:
    """T2I_CL's errD_2: D's loss on the second caption's pair, the same terms as for the first
    (hinge on real with e2, G(z, c2) detached, the mismatched rows with e2; MA-GP at (real, e2)
    when `magp`)."""
    sent2 = second["sent"]
    real_logits2 = head(real_feat, sent2).float()
    coupled = gather({"real_feat": real_feat, "sent": sent2})
    mismatch_logits2 = head(mismatched(coupled["real_feat"]), coupled["sent"]).float()
    fake_logits2 = head(D(second["fake"].detach()), sent2).float()
    loss = discriminator_hinge_loss(real_logits2, fake_logits2, mismatch_logits2)
    if magp:
        loss = loss + ma_gradient_penalty(real_logits2, real_in, sent2, k=lw.magp_k, p=lw.magp_p)
    return loss


def _generator_loss(models: GANModels, batch: Mapping[str, Tensor], cfg: ExperimentConfig, fake: Tensor,
                    sent: Tensor, z: Tensor, real: Tensor, out: dict[str, float],
                    gather: BatchGather = NO_GATHER, stages=None, ca_eps: Tensor | None = None,
                    second: Mapping[str, Tensor] | None = None) -> Tensor:
    """L_G = -E[D(G(z,c),s_D)] + l1 L_DAMSM + l2 L_F2R + l3 L_F2F + l4 L_recap [+ a_w L_align(fake)], D frozen.
    `sent` is D's (detached) sentence input S_D; `ca_eps` CA's noise of this step (F2F's second
    fake reuses it with z).
    Features go to float32 before every loss (they may come out of bf16 autocast). The per-sample
    inputs of the batch-coupled terms are computed first and gathered once. `stages` (multi-stage
    G): (stage images, mu, logvar), whose adversarial part is AttnGAN's BCE over the stages + KL.
    `second` (loss.f2f_variant=t2i_cl): the D step's second fake, which then also gets the
    adversarial and DAMSM terms with its caption."""
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
    if lw.f2f > 0 and second is None:
        # A second fake from the same noise and another caption of the same image.
        ids2, lens2 = batch["caption2"], batch["caption2_len"]
        # Its caption is encoded without gradient (S_G learns from the first caption's fake).
        words2, cond2 = encode_text(models.text_g, ids2, lens2, trainable=False)
        if ca_eps is not None:
            cond2 = models.ca(cond2, ca_eps)[0]
        fake2 = models.generator(z, cond2, words2, word_mask(lens2, ids2.shape[1]))
        _, local["fake2_global"] = damsm_image_features(models.damsm_image, fake2)
    if second is not None:  # t2i_cl: the D step's second fake, with G's losses on its caption too
        fake2_regions, local["fake2_global"] = damsm_image_features(models.damsm_image, second["fake"])
        loss_adv_g2 = generator_hinge_loss(head_plain(d_plain(second["fake"]), second["sent"].detach()).float())
        loss_g = loss_g + loss_adv_g2
        out["loss_g_adv2"] = loss_adv_g2.item()
        if lw.damsm > 0:
            words2, sent2_damsm = encode_text(models.damsm_text, second["ids"], second["lens"], trainable=False)
            captions2 = gather({"words": words2.float(), "lens": second["lens"]})
            local.update(word_scores2=word_scores(fake2_regions, captions2["words"], captions2["lens"], lw.gamma1,
                                                  lw.gamma2), sent2_damsm=sent2_damsm.float())
    if lw.recap > 0:
        # Frozen captioner (eval mode, no parameter gradients): the gradient reaches G only. The
        # loss is a mean over the batch's tokens, so the token counts are gathered with the NLLs.
        local["recap_nll"], _, local["recap_mask"] = caption_token_nll(models.captioner(fake, ids).float(), ids, lens)
    if use_align:  # D's alignment branch on the fakes against S_D (frozen here): trains G
        local.update(fake_align=unwrap(models.align_proj)(fake_feat), sent_a=sent)
    g = gather(local)
    if lw.damsm > 0:
        loss_damsm = damsm_loss_from_scores(g["word_scores"], g["fake_global"], g["sent_damsm"], lw.gamma3,
                                            g.get("damsm_class_ids"))
        loss_g = loss_g + lw.damsm * loss_damsm
        out["loss_damsm"] = loss_damsm.item()
        if second is not None:
            loss_damsm2 = damsm_loss_from_scores(g["word_scores2"], g["fake2_global"], g["sent2_damsm"], lw.gamma3,
                                                 g.get("damsm_class_ids"))
            loss_g = loss_g + lw.damsm * loss_damsm2
            out["loss_damsm2"] = loss_damsm2.item()
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
    g_params = list(models.generator.parameters())
    if models.ca is not None:  # CA is part of G (StackGAN trains it with G's loss)
        g_params += list(models.ca.parameters())
    opts = {
        "g": torch.optim.Adam(g_params, lr=t.lr_g, betas=betas),
        "d": torch.optim.Adam(d_params, lr=t.lr_d, betas=betas),
    }
    if models.text_trainable:  # S_G's and S_D's encoders; each only receives its own flow's gradient
        text_params = [p for enc in models.text_encoders().values() for p in enc.parameters()]
        opts["text"] = torch.optim.Adam(text_params, lr=t.lr_text, betas=betas)
    return opts


# Every module slot of GANModels in a fixed order; the conv nets take the accelerator's memory format.
SLOTS = ("generator", "discriminator", "head", "ca", "text_g", "text_d", "align_proj", "damsm_text",
         "damsm_image", "captioner")
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
    are G(z, e) with z drawn from the sampler's generator by `eval_noise` (N(0, I), or truncated
    with eval.truncation). With train.g_ema > 0, G (and CA, trained with G) has an EMA copy
    updated after every G step (AttnGAN's avg_param_G with a warm-up, t2i_ray/train/ema.py), checkpointed as
    `generator_ema` (`ca_ema`), and the copies sample instead."""

    name = "gan"
    batch_coupled = True  # the mismatched pairs always; NT-Xent, DAMSM, alignment, recap when on

    def __init__(self, cfg: ExperimentConfig, assets: Assets):
        self.cfg = cfg
        self.models = build_gan_models(cfg, assets.damsm.text_encoder, assets.damsm.image_encoder,
                                       assets.captioner, for_training=assets.for_training)
        self.optimizers = build_optimizers(self.models, cfg)
        self.gather = NO_GATHER
        # GANModels slot -> its EMA copy (copies draw nothing from the RNG: initial weights unchanged)
        self.ema: dict[str, nn.Module] = {}
        self.updates = 0  # EMA updates since the start, restored from the checkpoint with the step
        if cfg.train.g_ema > 0:
            self.ema = {name: ema_copy(getattr(self.models, name)) for name in ("generator", "ca")
                        if getattr(self.models, name) is not None}

    def trainable(self) -> dict[str, nn.Module]:
        return self.models.trainable()

    def checkpointed(self) -> dict[str, nn.Module]:
        return {**self.trainable(), **{f"{name}_ema": module for name, module in self.ema.items()}}

    def prepare(self, wrap, prepare_module, device) -> None:
        prepare_gan_models(self.models, wrap, prepare_module, device)
        for name, module in self.ema.items():
            self.ema[name] = (prepare_module(module) if name in CONV_NETS else module).to(device)
        # Over the workers of the process group the loop runs in (none, or one worker: no gathering).
        self.gather = BatchGather.from_process_group(self.cfg.train.gather_negatives)

    def step(self, batch, rng, autocast) -> dict[str, float]:
        losses = gan_step(self.models, self.optimizers, batch, self.cfg, rng, autocast=autocast, gather=self.gather)
        if self.ema:  # after the G step, from the (synchronised) unwrapped G, with the warm-up
            self.updates += 1
            decay = warmed_decay(self.cfg.train.g_ema, self.updates)
            for name, ema in self.ema.items():
                update_ema(ema, getattr(self.models, name), decay)
        return losses

    def restored(self, step: int) -> None:
        self.updates = step  # one G step (one EMA update) per training step

    def sampling_modules(self) -> tuple[nn.Module, nn.Module | None]:
        """(G, CA or None) that sample: the EMA copies when train.g_ema > 0, else the trained ones."""
        generator = self.ema.get("generator", unwrap(self.models.generator))
        ca = self.ema.get("ca", unwrap(self.models.ca) if self.models.ca is not None else None)
        return generator, ca

    def _generate(self, ids: Tensor, lens: Tensor, rng: torch.Generator, **extra):
        (generator, ca), text_g = self.sampling_modules(), unwrap(self.models.text_g)
        device = next(generator.parameters()).device
        generator.eval()
        text_g.eval()
        z = eval_noise(len(ids), self.cfg.model.z_dim, self.cfg.eval.truncation, rng)
        ids, lens = ids.to(device), lens.to(device)
        words, cond = text_g(ids, lens)
        if ca is not None:  # c = mu + sigma * eps, eps drawn after z (StackGAN samples too)
            ca.eval()
            cond = ca(cond, torch.randn(len(ids), ca.out_dim, generator=rng).to(device))[0]
        return generator(z.to(device), cond, words, word_mask(lens, ids.shape[1]), **extra)

    def sampler(self) -> SampleFn:
        return torch.no_grad()(self._generate)

    def mask_sampler(self):
        if not getattr(self.sampling_modules()[0], "predicts_masks", False):
            return None
        return torch.no_grad()(lambda ids, lens, rng: self._generate(ids, lens, rng, return_masks=True)[1])
