"""model.method=diffusion under the training loop: resume, data parallelism, sampling, evaluation."""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from t2i_ray.config import ConfigError, ExperimentConfig, apply_overrides
from t2i_ray.models.text import TextEncoder
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.damsm import Damsm
from t2i_ray.train.loop import LocalEnv, RunEnv, run_training
from t2i_ray.train.method import Assets, build_method

from tests.gloo import mark_done, spawn_ranks
from tests.test_architectures import KillAfterCheckpoint, Killed  # a run killed right after its step-2 checkpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))
import ablate_diffusion  # noqa: E402  (sweeps/ is not a package)

sys.path.remove(str(REPO / "sweeps"))


@pytest.fixture
def diffusion_cfg(tiny_cfg):
    return apply_overrides(tiny_cfg, {**ablate_diffusion.PRESET_DEFAULTS["ci"], "model.method": "diffusion"})


@pytest.mark.parametrize("joint", [True, False])
def test_resumed_diffusion_run_equals_uninterrupted_run(diffusion_cfg, tiny_damsm, tmp_path, one_thread, joint):
    cfg = apply_overrides(diffusion_cfg, {"diffusion.joint": joint})
    straight = run_training(cfg, LocalEnv(tmp_path / "straight"), tiny_damsm, "straight")
    with pytest.raises(Killed):
        run_training(cfg, KillAfterCheckpoint(tmp_path / "resumed"), tiny_damsm, "resumed")
    resumed = run_training(cfg, LocalEnv(tmp_path / "resumed"), tiny_damsm, "resumed")
    a = ckpt.load_state(tmp_path / "straight" / "checkpoint")
    b = ckpt.load_state(tmp_path / "resumed" / "checkpoint")
    assert a["step"] == b["step"] == cfg.train.steps
    assert set(a["modules"]) == {"unet", "unet_ema"}  # the EMA weights travel with the checkpoint
    for name in a["modules"]:
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key} differs after resume"
    assert straight["fid"] == resumed["fid"] and math.isfinite(straight["fid"])
    assert ("layout_loss" in straight) is False  # the final row holds metrics, the curve the losses
    layout_keys = ("layout_miou", "fsd", "outpaint_image_to_layout_miou", "outpaint_layout_to_image_miou")
    # semantic recall needs only images: both models get it, with its N and the segmenter
    assert 0 <= straight["semantic_recall"] <= 1 and straight["semantic_recall"] == resumed["semantic_recall"]
    assert 0 <= straight["semantic_precision"] <= 1
    assert straight["semantic_recall_num_images"] == cfg.eval.num_images
    assert straight["layout_backbone"].startswith("segmenter-v1-") and 0 < straight["segmenter_heldout_miou"] <= 1
    if joint:  # the layout metrics, each finite and with its N
        assert all(math.isfinite(straight[k]) for k in layout_keys)
        assert 0 <= straight["layout_miou"] <= 1
        assert straight["layout_num_images"] == cfg.eval.num_images
        assert Path(straight["outpaint_samples_path"]).is_file()
    else:
        assert not any(k in straight for k in layout_keys) and "layout_samples_path" not in straight
    # EMA and raw weights differ after training (the EMA lags), and both moved from the init
    ema, raw = a["modules"]["unet_ema"], a["modules"]["unet"]
    assert any(not torch.equal(ema[k], raw[k]) for k in raw)


def test_diffusion_config_refusals(tiny_cfg):
    base = {"model.method": "diffusion"}
    with pytest.raises(ConfigError, match=r"^diffusion.blocks: needs one count >= 1 per level"):
        apply_overrides(tiny_cfg, {**base, "diffusion.blocks": "1,2"})
    with pytest.raises(ConfigError, match=r"^diffusion.dim_mults: must be comma-separated integers"):
        apply_overrides(tiny_cfg, {**base, "diffusion.dim_mults": "1,x"})
    with pytest.raises(ConfigError, match=r"^loss: loss.damsm/f2r/f2f/recap are GAN generator terms"):
        apply_overrides(tiny_cfg, {**base, "loss.f2r": 0.2})
    with pytest.raises(ConfigError, match=r"^train.gather_negatives: model.method=diffusion has no batch-coupled"):
        apply_overrides(tiny_cfg, {**base, "train.gather_negatives": False})
    with pytest.raises(ConfigError, match=r"^diffusion.sample_steps: must be in 1..diffusion.timesteps"):
        apply_overrides(tiny_cfg, {**base, "diffusion.timesteps": 10, "diffusion.sample_steps": 20})
    cub = {**base, "data.dataset": "cub", "data.data_root": "/data/birds"}
    with pytest.raises(ConfigError, match=r"^diffusion.joint: the joint model generates layouts and needs a "
                                          r"dataset with them \(shapes, mmceleba, cityscapes\), not 'cub'"):
        apply_overrides(tiny_cfg, cub)
    assert not apply_overrides(tiny_cfg, {**cub, "diffusion.joint": False}).diffusion.joint  # image-only is fine


def test_sampling_is_deterministic_and_guidance_variants_are_scored(diffusion_cfg, tiny_damsm, tmp_path):
    from t2i_ray.train.damsm import load_damsm

    cfg = apply_overrides(diffusion_cfg, {"diffusion.extra_guidance_scales": "1,0"})
    method = build_method(cfg, Assets(load_damsm(tiny_damsm)))
    method.prepare(lambda m: m, lambda m: m, torch.device("cpu"))
    ids = torch.randint(1, 10, (3, 18))
    lens = torch.tensor([5, 18, 2])
    ids = ids * (torch.arange(18) < lens[:, None])
    a = method.layout_sampler()(ids, lens, torch.Generator().manual_seed(0))
    b = method.layout_sampler()(ids, lens, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 3, 32, 32) and a[1].shape == (3, 32, 32) and a[1].dtype == torch.int64
    assert float(a[0].min()) >= -1 and float(a[0].max()) <= 1
    assert list(method.eval_variants()) == ["", "@g1", "@g0"]
    # layout -> image outpainting keeps the given layout; image -> layout keeps the given image
    images, layouts = method.outpaint(ids, lens, torch.Generator().manual_seed(1), known_layouts=a[1])
    assert torch.equal(layouts, a[1]) and images.shape == a[0].shape
    images, layouts = method.outpaint(ids, lens, torch.Generator().manual_seed(1), known_images=a[0])
    assert torch.equal(images, a[0]) and layouts.shape == a[1].shape


# ---- data parallelism: 2 gloo workers with batch B == 1 process with batch 2B -------------------

B, WORDS, VOCAB = 2, 6, 30


def _assets(cfg: ExperimentConfig) -> Assets:
    torch.manual_seed(5)
    text = TextEncoder(VOCAB, word_dim=16, hidden_per_dir=cfg.model.embed_dim // 2).eval().requires_grad_(False)
    return Assets(Damsm(text, torch.nn.Identity(), None, {}, Path(".")))


def _method(cfg_dict: dict, init: dict):
    cfg = ExperimentConfig.from_dict(cfg_dict)
    method = build_method(cfg, _assets(cfg))
    method.unet.load_state_dict(init)
    method.ema.load_state_dict(init)
    method.optimizers["unet"] = torch.optim.SGD(method.unet.parameters(), lr=0.05)  # linear in the gradient
    return method


def _step(method, batch, draws, drop):
    """One method.step on `batch` with the given random draws (the shard's rows of the full batch's)."""
    from t2i_ray.train import diffusion as diffusion_module

    original_draws, original_drop = method.process.training_draws, diffusion_module.text_drop_mask
    method.process.training_draws = lambda images, layouts, generator: draws
    diffusion_module.text_drop_mask = lambda batch, p, generator: drop
    try:
        return method.step(batch, torch.Generator(), contextlib.nullcontext)
    finally:
        method.process.training_draws, diffusion_module.text_drop_mask = original_draws, original_drop


class _GlooEnv(RunEnv):
    def __init__(self, rank: int, world: int):
        self.world_rank, self.world_size = rank, world

    def prepare_model(self, module):
        return torch.nn.parallel.DistributedDataParallel(module)


def _rank_main(rank, world, store_path, out_path, cfg_dict, init, batch, draws, drop):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    try:
        method = _method(cfg_dict, init)
        env = _GlooEnv(rank, world)
        method.prepare(env.prepare_model, lambda m: m, env.device)
        shard = slice(rank * B, (rank + 1) * B)
        _step(method, {k: v[shard] for k, v in batch.items()}, {k: v[shard] for k, v in draws.items()},
              drop[shard])
        if rank == 0:
            torch.save(ckpt.unwrap(method.unet).state_dict(), out_path)
        mark_done(Path(out_path).parent, rank)
        dist.barrier()  # both ranks leave together (tests/gloo.py: a rare abort in gloo's teardown)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_ddp_workers_of_batch_b_update_like_one_process_of_batch_2b(diffusion_cfg, tmp_path, one_thread):
    cfg = apply_overrides(diffusion_cfg, {"model.embed_dim": 16, "diffusion.cond_drop": 0.5})
    g = torch.Generator().manual_seed(3)
    lens = torch.randint(2, WORDS + 1, (2 * B,), generator=g)
    batch = {"image": torch.rand(2 * B, 3, 32, 32, generator=g) * 2 - 1,
             "layout": torch.randint(0, 5, (2 * B, 32, 32), generator=g),
             "caption": torch.randint(1, VOCAB, (2 * B, WORDS), generator=g) * (torch.arange(WORDS) < lens[:, None]),
             "caption_len": lens}
    unet = build_method(cfg, _assets(cfg)).unet
    # Not the zero-initialised heads: with them the first step moves only the output conv.
    torch.nn.init.normal_(unet.out_conv.weight, std=0.05, generator=torch.Generator().manual_seed(4))
    single = _method(cfg.to_dict(), unet.state_dict())
    init = {k: v.clone() for k, v in single.unet.state_dict().items()}
    draws = single.process.training_draws(batch["image"], batch["layout"], g)
    drop = torch.tensor([True, False, False, True])
    spawn_ranks(_rank_main, (2, str(tmp_path / "store"), str(tmp_path / "ddp.pt"), cfg.to_dict(), init, batch,
                             draws, drop), tmp_path)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    _step(single, batch, draws, drop)
    half = _method(cfg.to_dict(), init)
    _step(half, {k: v[:B] for k, v in batch.items()}, {k: v[:B] for k, v in draws.items()}, drop[:B])
    moved = 0
    for key, value in single.unet.state_dict().items():
        torch.testing.assert_close(ddp[key] - init[key], value - init[key], rtol=1e-4, atol=1e-7,
                                   msg=lambda m: f"unet.{key}: {m}")
        moved += bool((value - init[key]).abs().sum() > 0)
    assert moved > 20
    # control: one shard's update alone differs from the averaged one
    diff = max(float((half.unet.state_dict()[k] - single.unet.state_dict()[k]).abs().max()) for k in init)
    assert diff > 1e-5
