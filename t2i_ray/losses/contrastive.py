"""Contrastive losses: SimCLR's NT-Xent (as used by T2I_CL, Ye et al. 2022) and a symmetric
CLIP-style InfoNCE (for the image-text alignment of DTE-style text embeddings). Pure functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, Eq. 1; huiyegit/T2I_CL `nt_xent.py`; gan_anchors 4).

    z1, z2 (N, D): two views, row k of z1 pairs with row k of z2. Each of the 2N vectors is an
    anchor; its positive is its counterpart in the other view, its negatives the other 2N-2
    vectors. Cross-entropy summed over the 2N anchors, divided by 2N.
    """
    N = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D), unit rows
    sim = z @ z.t() / temperature  # (2N, 2N) cosine similarities / tau
    # Self-similarity is neither positive nor negative: remove it from the softmax.
    self_mask = torch.eye(2 * N, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    positives = torch.cat([torch.arange(N, 2 * N), torch.arange(N)]).to(z.device)  # k <-> k+N
    return F.cross_entropy(sim, positives, reduction="sum") / (2 * N)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021): a (N, D), b (N, D), row k of a matches row k
    of b; logits = cos(a_i, b_j) / tau; mean of CE(a -> b) and CE(b -> a), diagonal labels."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature  # (N, N)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
