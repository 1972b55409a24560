"""Adversarial losses of DF-GAN (CVPR-2022 code, `code/lib/modules.py`; gan_anchors.md §1.4) and
of AttnGAN (Xu et al., arXiv:1711.10485 section 2.3; `taoxugit/AttnGAN` `code/miscc/losses.py`).

Pure functions of tensors: hinge losses with mismatched pairs and the matching-aware
zero-centred gradient penalty (MA-GP); AttnGAN's BCE losses over its stages (conditional and
unconditional logits) and the KL term of its conditioning augmentation. The trainer owns the
networks and the update order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mismatched(real: torch.Tensor) -> torch.Tensor:
    """Roll by one along the batch: row i holds real[i + 1] (last holds real[0]), a derangement
    for B >= 2. Applied to real D features and paired with the unrolled sentences (§1.4)."""
    return torch.cat((real[1:], real[:1]), dim=0)


def discriminator_hinge_loss(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, mismatch_logits: torch.Tensor
) -> torch.Tensor:
    """E[relu(1 - D(x, e))] + (E[relu(1 + D(G(z, e), e))] + E[relu(1 + D(x_mis, e))]) / 2."""
    real = F.relu(1.0 - real_logits).mean()
    fake = F.relu(1.0 + fake_logits).mean()
    mismatch = F.relu(1.0 + mismatch_logits).mean()
    return real + 0.5 * (fake + mismatch)


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """-E[D(G(z, e), e)]."""
    return -fake_logits.mean()


def ma_gradient_penalty(
    real_logits: torch.Tensor,
    real_images: torch.Tensor,
    sent: torch.Tensor,
    k: float = 2.0,
    p: float = 6.0,
) -> torch.Tensor:
    """MA-GP: k * mean_i ||[grad_x D(x_i, e_i) ; grad_e D(x_i, e_i)]||_2 ^ p (§1.4, `MA_GP`).

    real_logits (B,) from real images (B, ...) and their matching sentences (B, D); both inputs
    must have requires_grad set before the D forward. One joint L2 norm over the concatenated,
    per-sample flattened gradients, as the code does (the paper writes (|gx| + |ge|)^p).
    create_graph=True so the penalty trains D (double backward); the graph of real_logits is
    kept for the rest of the D loss. norm^p is computed as (squared norm)^(p/2): the same value,
    without sqrt's infinite derivative at a zero gradient (NaN in the reference's backward).
    """
    if not (real_images.requires_grad and sent.requires_grad):
        raise ValueError(
            "ma_gradient_penalty needs gradients w.r.t. the real images and the sentence "
            "embeddings: call .requires_grad_() on both before the discriminator forward"
        )
    grad_x, grad_e = torch.autograd.grad(real_logits.sum(), (real_images, sent), create_graph=True)
    # logits of sample i depend only on inputs i, so the grad of the sum is per-sample.
    sq_norm = grad_x.flatten(1).square().sum(1) + grad_e.flatten(1).square().sum(1)  # (B,)
    return k * sq_norm.pow(p / 2).mean()


# ---- AttnGAN (multi-stage, BCE) ------------------------------------------------------------------

def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Per-stage mean BCE of sigmoid(logits) against a constant label: logits (S, B) -> (S,).
    The reference applies nn.BCELoss to sigmoid outputs; BCE with logits is the same function."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none").mean(1)


def discriminator_bce_loss(real_cond: torch.Tensor, real_uncond: torch.Tensor, fake_cond: torch.Tensor,
                           fake_uncond: torch.Tensor, mismatch_cond: torch.Tensor) -> torch.Tensor:
    """AttnGAN's `discriminator_loss`, summed over the stages (each stage's D has its own parameters,
    so the sum trains each D on its own loss, as the reference's one optimiser per D):
    sum_i [(BCE(D_i^u(x), 1) + BCE(D_i^c(x, e), 1)) / 2
           + (BCE(D_i^u(G(z)), 0) + BCE(D_i^c(G(z), e), 0) + BCE(D_i^c(x_mis, e), 0)) / 3].
    Every argument holds logits of shape (stages, B)."""
    real = (_bce(real_uncond, 1.0) + _bce(real_cond, 1.0)) / 2
    fake = (_bce(fake_uncond, 0.0) + _bce(fake_cond, 0.0) + _bce(mismatch_cond, 0.0)) / 3
    return (real + fake).sum()


def generator_bce_loss(fake_cond: torch.Tensor, fake_uncond: torch.Tensor) -> torch.Tensor:
    """AttnGAN's `generator_loss` adversarial part: sum_i BCE(D_i^u(G(z)), 1) + BCE(D_i^c(G(z), e), 1)
    (the non-saturating loss); logits (stages, B)."""
    return (_bce(fake_uncond, 1.0) + _bce(fake_cond, 1.0)).sum()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) of the conditioning augmentation as the reference's `KL_loss`:
    -1/2 mean over batch and dimensions of (1 + log sigma^2 - mu^2 - sigma^2) (a mean, not a sum)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).mean()
