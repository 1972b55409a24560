"""Conditioning augmentation (CA; StackGAN, Zhang et al., arXiv 1612.03242 sec. 3.1).

A fully connected layer maps the sentence embedding phi (B, E) to the mean mu (B, C) and the log
variance log sigma^2 (B, C) of a diagonal Gaussian; G is conditioned on a sample
c = mu + sigma * eps, eps ~ N(0, I), and G's loss gains the regulariser KL(N(mu, sigma^2) || N(0, I)),
which keeps the conditioning manifold smooth. The KL is reduced as StackGAN's public code does
(hanzhanggit/StackGAN-Pytorch, code/miscc/utils.py, `KL_loss`): the mean over samples *and*
dimensions of -1/2 (1 + log sigma^2 - mu^2 - sigma^2), i.e. the per-sample KL divided by C; its
weight (model.ca_kl_weight, StackGAN's lambda = 1) multiplies that mean. StackGAN's code puts a
ReLU (later versions a GLU) after the FC layer; the paper names only the FC layer, which is what
this is (a ReLU would confine mu to >= 0).
Used by DTE-GAN's generator (arXiv 2502.01507; its summaries name CA, its body is not public).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """mean over (B, C) of KL(N(mu, exp(logvar)) || N(0, 1)) per dimension (StackGAN's KL_loss)."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).mean()


class ConditioningAugmentation(nn.Module):
    """phi (B, in_dim) -> (c, mu, logvar), each (B, out_dim); c = mu + exp(logvar / 2) * eps."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.config = {"in_dim": in_dim, "out_dim": out_dim}
        self.out_dim = out_dim
        self.fc = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, phi: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`eps` (B, out_dim) is drawn by the caller (the GAN step draws it from its checkpointed
        noise generator, the sampler from its seeded one), so runs resume and sample exactly."""
        mu, logvar = self.fc(phi).chunk(2, dim=1)
        return mu + torch.exp(0.5 * logvar) * eps, mu, logvar
