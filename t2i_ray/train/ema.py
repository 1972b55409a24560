"""Exponential moving averages of a model's weights, the copies that sample: the diffusion
U-Net's (GCDP samples with its EMA weights; t2i_ray/train/diffusion.py) and G's under
`train.g_ema` (AttnGAN's `avg_param_G`, `taoxugit/AttnGAN` code/trainer.py: after every G step
avg = 0.999 * avg + 0.001 * p, and the averaged weights are the ones saved as netG and sampled).
Both warm up (`warmed_decay`): over a short run a fixed 0.999 would keep most of the initial
weights (0.999^300 = 0.74 of them after the `local` preset's 300 steps).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from t2i_ray.train.checkpoint import unwrap


def ema_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` (behind DDP / torch.compile) in eval mode, starting at its weights."""
    return copy.deepcopy(unwrap(module)).requires_grad_(False).eval()


def warmed_decay(decay: float, updates: int) -> float:
    """The decay of EMA update number `updates` (1, 2, ...): min(decay, (1 + n) / (10 + n)), the
    warm-up of TensorFlow's tf.train.ExponentialMovingAverage(num_updates=n), so that the average
    follows the weights early in training; from n ~ 9,000 on (decay 0.999) it is `decay` itself."""
    return min(decay, (1 + updates) / (10 + updates))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers (BatchNorm running
    statistics) copied from `model`, whose live statistics AttnGAN's saved netG keeps too.
    `model` may be DDP-wrapped: every worker holds the same synchronised weights, so every
    worker's EMA is the same without communication."""
    model = unwrap(model)
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.lerp_(p.detach(), 1 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers()):
        ema_b.copy_(b)


__all__ = ["ema_copy", "update_ema", "warmed_decay"]
