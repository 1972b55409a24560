"""Data-parallel correctness of the GAN step: 2 DDP workers (gloo, torch.multiprocessing, no Ray)
with batch B each give the same parameter update as 1 process with batch 2B.

Which terms of `gan_step` are exactly batch-decomposable, i.e. a mean over samples of per-sample
quantities, so that DDP's gradient average over equal shards equals the full-batch gradient:
- D's hinge on real and fake pairs and G's hinge: means of per-sample logits (D has no
  BatchNorm, so sample i's logit depends on sample i only);
- MA-GP: k * mean_i ||[grad_x D(x_i, e_i); grad_e D(x_i, e_i)]||^p is a mean of per-sample
  norms (the p-th power is taken per sample, before the mean), so it decomposes too.
Not decomposable:
- the mismatched pairs roll the batch by one (row i is paired with real i+1): on 2 shards the
  rows B-1 and 2B-1 get different partners than on one batch of 2B. Here image B is a copy of
  image 0, which makes the two pairings identical, so the hinge on mismatches is compared too;
- NT-Xent (F2R, F2F), DAMSM's matching and the DTE alignment InfoNCE use the other samples of
  the batch as negatives: per shard they see B-1 negatives, not 2B-1. They are off here
  (weights 0, `pretrained` embedding); with them on, DDP optimises the per-shard loss, which is
  what every data-parallel contrastive GAN without a feature all-gather does.
Plain SGD, not Adam: Adam's first step is ~lr * sign(grad), which turns rounding noise in
near-zero gradients into full-size differences and would hide the comparison.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from t2i_ray.config import ExperimentConfig, apply_overrides
from t2i_ray.models.factory import build_gan_models
from t2i_ray.models.text import TextEncoder
from t2i_ray.train import gan
from t2i_ray.train.accel import resolve_accel
from t2i_ray.train.checkpoint import unwrap
from t2i_ray.train.loop import RunEnv

B, WORDS, VOCAB = 4, 8, 40


def _text_encoder(cfg) -> TextEncoder:
    return TextEncoder(VOCAB, word_dim=16, hidden_per_dir=cfg.model.embed_dim // 2)


class _GlooEnv(RunEnv):
    def __init__(self, rank: int, world: int):
        self.world_rank, self.world_size = rank, world

    def prepare_model(self, module):
        return torch.nn.parallel.DistributedDataParallel(module)


def _build(cfg_dict: dict, init: dict):
    cfg = ExperimentConfig.from_dict(cfg_dict)
    torch.manual_seed(0)
    models = build_gan_models(cfg, _text_encoder(cfg), torch.nn.Identity())  # image encoder unused (weights 0)
    models.text_g.load_state_dict(init["text"])
    for name, module in models.trainable().items():
        module.load_state_dict(init[name])
    lr = 0.05
    opts = {"g": torch.optim.SGD(models.generator.parameters(), lr=lr),
            "d": torch.optim.SGD(list(models.discriminator.parameters()) + list(models.head.parameters()), lr=lr)}
    return cfg, models, opts


def _step(cfg, models, opts, batch, z):
    # The step draws its noise from `sample_noise`; hand it this shard's rows of the shared z.
    original = gan.sample_noise
    gan.sample_noise = lambda bsz, z_dim, generator, device: z
    try:
        return gan.gan_step(models, opts, batch, cfg, torch.Generator())
    finally:
        gan.sample_noise = original


def _rank_main(rank: int, world: int, store_path: str, out_path: str, cfg_dict: dict, init: dict,
               batch: dict, z: torch.Tensor) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        cfg, models, opts = _build(cfg_dict, init)
        env, accel = _GlooEnv(rank, world), resolve_accel(cfg.train, torch.device("cpu"))
        gan.prepare_gan_models(models, env.prepare_model, accel.prepare_module, env.device)
        shard = slice(rank * B, (rank + 1) * B)
        losses = _step(cfg, models, opts, {k: v[shard] for k, v in batch.items()}, z[shard])
        if rank == 0:
            torch.save({"params": {n: unwrap(m).state_dict() for n, m in models.trainable().items()},
                        "losses": losses}, out_path)
    finally:
        dist.destroy_process_group()


def _inputs(cfg):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2 * B, 3, 32, 32, generator=g) * 2 - 1
    images[B] = images[0]  # makes the rolled mismatched pairs identical on 1 or 2 shards (docstring)
    lens = torch.randint(3, WORDS + 1, (2 * B,), generator=g)
    ids = torch.randint(1, VOCAB, (2 * B, WORDS), generator=g) * (torch.arange(WORDS) < lens[:, None])
    batch = {"image": images, "caption": ids, "caption_len": lens, "caption2": ids.flip(0),
             "caption2_len": lens.flip(0)}
    z = torch.randn(2 * B, cfg.model.z_dim, generator=g)
    torch.manual_seed(1)
    models = build_gan_models(cfg, _text_encoder(cfg), torch.nn.Identity())
    init = {name: m.state_dict() for name, m in models.trainable().items()}
    init["text"] = models.text_g.state_dict()
    return batch, z, init


@pytest.mark.timeout(180)
def test_two_ddp_workers_of_batch_b_update_like_one_worker_of_batch_2b(one_thread, tiny_cfg, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"loss.damsm": 0.0, "loss.f2r": 0.0, "loss.f2f": 0.0,
                                     "model.text_embedding": "pretrained", "model.nf": 4,
                                     "model.embed_dim": 32})
    batch, z, init = _inputs(cfg)
    out_path = str(tmp_path / "ddp.pt")
    mp.spawn(_rank_main, args=(2, str(tmp_path / "store"), out_path, cfg.to_dict(), init, batch, z),
             nprocs=2, join=True)
    ddp = torch.load(out_path, weights_only=True)

    cfg1, single, opts = _build(cfg.to_dict(), init)
    full_losses = _step(cfg1, single, opts, batch, z)
    _, half, half_opts = _build(cfg.to_dict(), init)
    _step(cfg1, half, half_opts, {k: v[:B] for k, v in batch.items()}, z[:B])

    compared = 0
    for name, module in single.trainable().items():
        for key, value in module.state_dict().items():
            start = init[name][key]
            delta_full, delta_ddp = value - start, ddp["params"][name][key] - start
            torch.testing.assert_close(delta_ddp, delta_full, rtol=1e-4, atol=1e-7,
                                       msg=lambda m: f"{name}.{key}: {m}")
            compared += delta_full.abs().sum() > 0
    assert compared > 10  # many tensors really moved
    # Sensitivity: rank 0's shard alone (what a run without gradient averaging would do) differs.
    g_half = torch.cat([p.flatten() for p in half.generator.parameters()])
    g_full = torch.cat([p.flatten() for p in single.generator.parameters()])
    g_start = torch.cat([v.flatten() for k, v in init["generator"].items()])
    assert (g_half - g_full).abs().max() > 100 * 1e-7 + 1e-4 * (g_full - g_start).abs().max()
    # rank 0's losses are its shard's; the full-batch loss is their mean over shards only for the
    # decomposable terms, which is what the parameter comparison above checks exactly
    assert set(ddp["losses"]) == set(full_losses)
