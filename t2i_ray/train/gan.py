"""One GAN training step (DF-GAN update order, gan_anchors 1.4): a D step, then a G step.

L_D = hinge(real) + 1/2 (hinge(fake) + hinge(mismatch)) + MA-GP  [+ a_w * L_align(real)]
L_G = -E[D(G(z, e), e)] + l1 L_DAMSM + l2 L_F2R + l3 L_F2F + l4 L_recap  [+ a_w * L_align(fake)]
A weight of 0 skips its term's computation entirely (no extra forward passes). The models may be
DDP-wrapped; frozen uses (D during the G step, encoders under no_grad) go through the plain
module so DDP's gradient sync only sees the passes that train it.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from t2i_ray.config import ExperimentConfig
from t2i_ray.losses.adversarial import (
    discriminator_hinge_loss,
    generator_hinge_loss,
    ma_gradient_penalty,
    mismatched,
)
from t2i_ray.losses.contrastive import info_nce, nt_xent
from t2i_ray.losses.damsm import damsm_loss
from t2i_ray.losses.recaption import recaption_loss
from t2i_ray.models.factory import GANModels
from t2i_ray.train.checkpoint import unwrap


def encode_text(encoder, ids: Tensor, lengths: Tensor, trainable: bool) -> tuple[Tensor, Tensor]:
    """(words (B,E,T), sentence (B,E)); gradients only when the encoder is being trained."""
    if trainable:
        return encoder(ids, lengths)
    with torch.no_grad():
        return unwrap(encoder)(ids, lengths)


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
) -> dict[str, float]:
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
    _, sent_g = encode_text(models.text_g, ids, lens, trainable_text)  # (B, E)
    if not trainable_text:
        sent_g = sent_g.detach().requires_grad_()  # MA-GP differentiates w.r.t. the sentence
    real_in = real.detach().requires_grad_()
    real_feat = D(real_in)  # (B, 8nf, 4, 4)
    real_logits = head(real_feat, sent_g)
    mismatch_logits = head(mismatched(real_feat), sent_g)
    z = sample_noise(bsz, cfg.model.z_dim, noise_gen, real.device)
    # One G forward per iteration, as DF-GAN: D sees it detached, the G step reuses its graph
    # (only D's parameters change in between, and G's output does not depend on them).
    fake = G(z, sent_g.detach())
    fake_logits = head(D(fake.detach()), sent_g)
    loss_adv_d = discriminator_hinge_loss(real_logits, fake_logits, mismatch_logits)
    loss_gp = ma_gradient_penalty(real_logits, real_in, sent_g, k=lw.magp_k, p=lw.magp_p)
    loss_d = loss_adv_d + loss_gp
    if use_align:
        if models.text_a is models.text_g:
            sent_a = sent_g
        else:
            _, sent_a = models.text_a(ids, lens)
        loss_align_d = info_nce(models.align_proj(real_feat), sent_a, cfg.model.align_temperature)
        loss_d = loss_d + align_w * loss_align_d
        out["loss_align_d"] = loss_align_d.item()
    loss_d.backward()
    optimizers["d"].step()
    if "text" in optimizers:
        optimizers["text"].step()
    out.update(loss_d=loss_d.item(), loss_d_adv=loss_adv_d.item(), loss_magp=loss_gp.item(),
               d_real=real_logits.mean().item(), d_fake=fake_logits.mean().item())

    # ---- G step --------------------------------------------------------------------------
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    d_plain, head_plain = unwrap(D), unwrap(head)
    d_params = [p for m in (d_plain, head_plain) for p in m.parameters()]
    for p in d_params:
        p.requires_grad_(False)
    try:
        sent = sent_g.detach()
        fake_feat = d_plain(fake)
        loss_adv_g = generator_hinge_loss(head_plain(fake_feat, sent))
        loss_g = loss_adv_g
        out["loss_g_adv"] = loss_adv_g.item()
        need_fake_img_feats = lw.damsm > 0 or lw.f2r > 0 or lw.f2f > 0
        if need_fake_img_feats:
            fake_regions, fake_global = models.damsm_image(fake)  # frozen encoder, grads reach G
        if lw.damsm > 0:
            words, sent_damsm = encode_text(models.damsm_text, ids, lens, trainable=False)
            loss_damsm = damsm_loss(fake_regions, fake_global, words, sent_damsm, lens,
                                    lw.gamma1, lw.gamma2, lw.gamma3)
            loss_g = loss_g + lw.damsm * loss_damsm
            out["loss_damsm"] = loss_damsm.item()
        if lw.f2r > 0:
            with torch.no_grad():
                _, real_global = models.damsm_image(real)
            loss_f2r = nt_xent(fake_global, real_global, lw.temperature)
            loss_g = loss_g + lw.f2r * loss_f2r
            out["loss_f2r"] = loss_f2r.item()
        if lw.f2f > 0:
            # A second fake from the same noise and another caption of the same image.
            _, sent2 = encode_text(models.text_g, batch["caption2"], batch["caption2_len"], trainable=False)
            _, fake2_global = models.damsm_image(G(z, sent2.detach()))
            loss_f2f = nt_xent(fake_global, fake2_global, lw.temperature)
            loss_g = loss_g + lw.f2f * loss_f2f
            out["loss_f2f"] = loss_f2f.item()
        if lw.recap > 0:
            # Frozen captioner (eval mode, no parameter gradients): the gradient reaches G only.
            loss_recap = recaption_loss(models.captioner(fake, ids), ids, lens)
            loss_g = loss_g + lw.recap * loss_recap
            out["loss_recap"] = loss_recap.item()
        if use_align:
            with torch.no_grad():
                _, sent_a = unwrap(models.text_a)(ids, lens)
            loss_align_g = info_nce(unwrap(models.align_proj)(fake_feat), sent_a,
                                    cfg.model.align_temperature)
            loss_g = loss_g + align_w * loss_align_g
            out["loss_align_g"] = loss_align_g.item()
        loss_g.backward()
        optimizers["g"].step()
    finally:
        for p in d_params:
            p.requires_grad_(True)
    out["loss_g"] = loss_g.item()
    return out


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
