"""The global batch for batch-coupled loss terms under data parallelism (`train.gather_negatives`).

A term is batch-coupled when a sample's loss depends on the other samples of the batch: NT-Xent
(F2R, F2F) and DAMSM's word/sentence matching and the DTE alignment InfoNCE use them as negatives,
D's mismatched pairs pair image i with caption i+1, and the re-captioning loss divides by the
batch's token count. With N workers of batch B, DDP alone gives each worker's term its own shard
(B - 1 negatives instead of NB - 1): a different loss than one process with batch NB, and one
that depends on the worker count. SimCLR trains on the global batch instead (Chen et al. 2020,
arXiv:2002.05709; google-research/simclr `objective.py`, `tpu_cross_replica_concat`).

How the gradients come out equal to one process with the global batch NB:
- every worker all-gathers the per-sample tensors these terms read, in rank order (worker r's
  shard is rows rB..(r+1)B-1 of the global batch), and computes the same global loss L on them;
- only its own rows carry a gradient (the others arrive detached), so worker r's backward gives
  dL/dx_r for its own features x_r, scaled by N here: DDP then averages the parameter gradients
  over the workers, (1/N) sum_r N dL/dx_r dx_r/dtheta = dL/dtheta;
- modules applied after the gather (D's conditional head on the mismatched pairs) see the whole
  global batch on every worker, so their gradient is already dL/dtheta on each and DDP's average
  leaves it so.
This needs a few all-gathers in the forward pass (one per dtype per call; gan_step makes one call
in the D step, two with the alignment loss, and one or two in the G step) and none in the backward pass
(torch.distributed.nn.functional.all_gather would instead send the gradients back through a
reduce-scatter / all-to-all; the result is the same). The same holds for any per-sample
quantity a worker computes from its own samples and gathered constants: DAMSM's word matching
(the costly O(B_img x B_cap x regions x words) part) is gathered as each worker's rows of the
score matrix, its images against all captions. What every worker repeats is cheap: the
similarity matrices of NT-Xent / InfoNCE, the sentence cosines and the softmaxes over NB x NB.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class BatchGather:
    """Gathers per-sample tensors over the data-parallel workers (see the module docstring).

    `BatchGather()` (one worker, or gathering off) returns its inputs unchanged, so a single
    process and `train.gather_negatives=false` run exactly the per-worker computation.
    """

    def __init__(self, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 ({world_size})")
        self.world_size, self.rank = world_size, rank

    @classmethod
    def from_process_group(cls, enabled: bool) -> "BatchGather":
        """Over the default process group when `enabled` and one is initialised (Ray Train, DDP)."""
        import torch.distributed as dist

        if not (enabled and dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_world_size(), dist.get_rank())

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def __call__(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{name: (B, ...)} -> {name: (world_size * B, ...)}, the workers' rows in rank order.

        Every worker must pass the same names with the same shapes and dtypes (equal shards:
        the loop's sampler drops the last incomplete batch). Tensors that require grad come back
        with this worker's rows live (gradient scaled by world_size); bool tensors travel as uint8.
        """
        if not self.active:
            return dict(tensors)
        import torch.distributed as dist

        groups: dict[torch.dtype, list[str]] = {}
        for name, t in tensors.items():
            groups.setdefault(torch.uint8 if t.dtype == torch.bool else t.dtype, []).append(name)
        received: dict[str, list[Tensor]] = {}
        for dtype, names in groups.items():
            # One collective per dtype: the tensors are packed into one flat buffer.
            flat = torch.cat([tensors[n].detach().to(dtype).reshape(-1) for n in names])
            parts = [torch.empty_like(flat) for _ in range(self.world_size)]
            dist.all_gather(parts, flat)
            sizes = [tensors[n].numel() for n in names]
            for r, part in enumerate(parts):
                for n, piece in zip(names, part.split(sizes)):
                    received.setdefault(n, []).append(piece.view(tensors[n].shape).to(tensors[n].dtype))
        out: dict[str, Tensor] = {}
        for name, t in tensors.items():
            rows = received[name]
            rows[self.rank] = _ScaleGrad.apply(t, float(self.world_size)) if t.requires_grad else t
            out[name] = torch.cat(rows)
        return out

    def describe(self) -> str:
        return (f"batch-coupled terms on the global batch (gathered over {self.world_size} workers)"
                if self.active else "batch-coupled terms on this worker's batch")


NO_GATHER = BatchGather()

__all__ = ["BatchGather", "NO_GATHER"]
