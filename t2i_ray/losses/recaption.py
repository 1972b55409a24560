"""Re-captioning loss L_CP (seed paper 001 Eq. 3): L_e(F_C(Fake_i), C_i), the cross-entropy of
the caption's tokens under a frozen captioner F_C that sees the fake image. Pure functions.

Token layout (t2i_ray.models.captioner): a caption of L words w_1..w_L gives L + 1 targets
w_1..w_L, "<end>" (id 0). Tokens past a caption's end take no part; the mean is over all real
tokens of the batch (the usual captioning loss, e.g. Show, Attend and Tell's packed targets).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_targets(ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) zero-padded, lengths (B,) in 1..T -> targets (B, T + 1) and mask (B, T + 1).

    targets[b, t] = ids[b, t] for t < L_b and 0 ("<end>") at t = L_b; mask is True at t <= L_b.
    """
    B, T = ids.shape
    lengths = lengths.to(ids.device)
    positions = torch.arange(T + 1, device=ids.device)  # (T + 1,)
    targets = torch.cat([ids, ids.new_zeros(B, 1)], dim=1)  # (B, T + 1)
    targets = targets.masked_fill(positions >= lengths.view(B, 1), 0)  # end token, then padding
    mask = positions <= lengths.view(B, 1)  # (B, T + 1): L words + "<end>"
    return targets, mask


def caption_token_nll(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihoods (B, T + 1), targets (B, T + 1), mask (B, T + 1).

    logits (B, T + 1, V) from the captioner; ids (B, T); lengths (B,).
    """
    targets, mask = caption_targets(ids, lengths)
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T + 1)
    return nll, targets, mask


def masked_token_mean(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the per-token NLLs (B, T + 1) over the real tokens (mask) of the whole batch: a ratio
    of batch sums, so a data-parallel run gathers nll and mask to get the global batch's mean."""
    return (nll * mask).sum() / mask.sum()


def recaption_loss(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """L_CP: mean cross-entropy over every real token (words and "<end>") of the batch, a scalar."""
    nll, _, mask = caption_token_nll(logits, ids, lengths)
    return masked_token_mean(nll, mask)
