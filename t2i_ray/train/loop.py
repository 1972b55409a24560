"""The training loop: the Ray Train worker function, also runnable in-process with one worker.

It owns devices, DDP, checkpoints, reporting and the final evaluation; it receives built models
from the factory and never names an architecture. `RunEnv` hides where it runs: `RayEnv` inside
a TorchTrainer (1..N workers, gloo on CPU, NCCL on GPU), `LocalEnv` in a plain process (tests,
benchmarks). Rerunning with the same checkpoint location resumes from the last checkpoint with the
same model, optimiser, RNG and data-order state, so a killed run continues where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from t2i_ray.config import ExperimentConfig
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.models.factory import GANModels, build_gan_models
from t2i_ray.models.text import word_mask
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.accel import Accel, resolve_accel, select_device
from t2i_ray.train.captioner import load_captioner
from t2i_ray.train.damsm import load_damsm
from t2i_ray.train.gan import build_optimizers, gan_step


class RunEnv:
    """Where the loop runs. Subclasses implement report/latest_checkpoint/prepare_model."""

    world_rank = 0
    world_size = 1
    device = torch.device("cpu")

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        raise NotImplementedError

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError


class LocalEnv(RunEnv):
    """One in-process worker; the checkpoint lives in `run_dir/checkpoint`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics, checkpoint_dir):
        if checkpoint_dir is not None:
            target = self.run_dir / "checkpoint"
            tmp = self.run_dir / "checkpoint.incoming"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            ckpt.replace_dir(tmp, target)
        self.reports.append(dict(metrics))

    @contextlib.contextmanager
    def latest_checkpoint(self):
        path = self.run_dir / "checkpoint"
        yield path if (path / ckpt.STATE_FILE).is_file() else None


class RayEnv(RunEnv):
    """Inside a Ray TorchTrainer worker."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, module):
        import ray.train.torch

        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs=ddp_kwargs(module))

    def report(self, metrics, checkpoint_dir):
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as d:
                yield Path(d)


def ddp_kwargs(module: torch.nn.Module) -> dict[str, Any]:
    """DDP options for one module: no buffer broadcast when it has BatchNorm (SPEC 7).

    With the default, DDP overwrites BN running stats in place at every forward, and a GAN step
    runs two forwards before one backward (D: reals and fakes; G: the F2F second fake), which
    fails in backward ("modified by an inplace operation"; reference/ray.md §2.3). torch >= 2.15
    names the option forward_sync_buffers (it still syncs once at init, which is what we want).
    """
    import inspect

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return {}
    params = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def _wrap(models: GANModels, env: RunEnv, accel: Accel) -> GANModels:
    """Move every module to the device (conv nets in channels_last when on); DDP-wrap the
    trainable ones (each once)."""
    wrapped: dict[int, torch.nn.Module] = {}
    trainable_ids = {id(m) for m in models.trainable().values()}
    for name in ("generator", "discriminator", "head", "text_g", "text_a", "align_proj",
                 "damsm_text", "damsm_image", "captioner"):
        module = getattr(models, name)
        if module is None:
            continue
        if name in ("generator", "discriminator", "damsm_image"):
            module = accel.prepare_module(module)
        if id(module) not in wrapped:
            wrapped[id(module)] = env.prepare_model(module) if id(module) in trainable_ids else module.to(env.device)
        setattr(models, name, wrapped[id(module)])
    return models


def _batches(loader: DataLoader, dataset: TextImageDataset, start_step: int,
             accel: Accel) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches; epoch = step // len(loader), so a resume replays the same data order."""
    per_epoch = len(loader)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        loader.sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            yield accel.prepare_batch(batch)
        epoch, skip = epoch + 1, 0


def run_training(cfg: ExperimentConfig, env: RunEnv, damsm_path: str, run_name: str,
                 captioner_path: str | None = None) -> dict[str, Any]:
    """Train (or resume) one GAN run, evaluate it on rank 0, report everything through `env`.
    `captioner_path` (a cached captioner folder) is needed when loss.recap > 0."""
    t = cfg.train
    if t.use_gpu and env.device.type != "cuda":
        env.device = select_device(True)  # in-process run: ConfigError when no GPU is visible
    accel = resolve_accel(t, env.device)
    accel.apply_backend_flags()
    if env.device.type == "cpu":
        torch.set_num_threads(t.torch_threads)
    torch.manual_seed(cfg.seed * 1000 + env.world_rank)
    damsm = load_damsm(damsm_path)
    captioner = load_frozen_captioner(captioner_path, damsm.vocab) if cfg.loss.recap > 0 else None
    train_set = TextImageDataset(registry.source(cfg, "train"), damsm.vocab, cfg.data.words_num, train=True,
                                 seed=cfg.seed)
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.world_rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    # Its own generator: a DataLoader iterator otherwise draws a seed from torch's global RNG,
    # which a resume would then replay differently (G's per-pixel noise inputs use that RNG).
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.loader_workers,
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + env.world_rank))
    if len(loader) == 0:
        raise ValueError(f"data.num_train={cfg.data.num_train} gives no full batch of train.batch_size="
                         f"{t.batch_size} per worker over {env.world_size} workers")
    models = build_gan_models(cfg, damsm.text_encoder, damsm.image_encoder, captioner)
    optimizers = build_optimizers(models, cfg)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + env.world_rank)
    step = 0
    with env.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = ckpt.load_state(ckpt_dir)
            step = ckpt.restore(state, models.trainable(), optimizers)
            rng = state["rng"]
            noise_gen.set_state(rng[f"noise_{env.world_rank}"] if f"noise_{env.world_rank}" in rng else rng["noise_0"])
            torch.set_rng_state(rng["torch"])
            print(f"[{run_name}] resumed from checkpoint at step {step}")
    models = _wrap(models, env, accel)
    if env.world_rank == 0:
        print(f"[{run_name}] {accel.describe()}", flush=True)
    writer = _tensorboard(cfg, run_name) if env.world_rank == 0 else None

    def save_and_report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_path = None
            if env.world_rank == 0:
                # rng of rank 0 only: other ranks re-derive theirs (data order is per-epoch).
                ckpt_path = ckpt.save_checkpoint(
                    Path(tmp) / "ckpt", step=step, modules=models.trainable(), optimizers=optimizers,
                    rng={"noise_0": noise_gen.get_state(), "torch": torch.get_rng_state()},
                    config=cfg.to_dict(), vocab_json=damsm.vocab.to_json())
            env.report(metrics, ckpt_path)

    window: dict[str, list[float]] = {}
    tick, tick_step = time.time(), step
    for batch in (_batches(loader, train_set, step, accel) if step < t.steps else ()):
        for m in models.trainable().values():
            m.train()
        losses = gan_step(models, optimizers, batch, cfg, noise_gen, autocast=accel.autocast)
        step += 1
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"[{run_name}] non-finite {', '.join(bad)} at step {step}; "
                                     f"try lower learning rates or loss weights")
        for k, v in losses.items():
            window.setdefault(k, []).append(v)
        if step % t.report_every == 0 or step % t.checkpoint_every == 0 or step == t.steps:
            elapsed = time.time() - tick
            metrics = {k: float(np.mean(v)) for k, v in window.items()}
            metrics.update(step=step, images_per_s=(step - tick_step) * t.batch_size * env.world_size / max(elapsed, 1e-9))
            if writer is not None:
                for k, v in metrics.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.flush()
                append_curve(cfg, run_name, metrics)
                print(f"[{run_name}] step {step}/{t.steps} " +
                      " ".join(f"{k}={v:.3g}" for k, v in metrics.items() if k != "step"), flush=True)
            if step % t.checkpoint_every == 0 or step == t.steps:
                save_and_report(metrics)
            else:
                env.report(metrics, None)
            window, tick, tick_step = {}, time.time(), step
        if step >= t.steps:
            break

    final: dict[str, Any] = {"step": step}
    if env.world_rank == 0:
        final.update(evaluate_models(cfg, models, damsm, writer, step, run_name))
    if writer is not None:
        writer.close()
    final = _broadcast(final, env)
    final["finished"] = 1
    # With a checkpoint attached, these become Ray Train's Result.metrics (V2 keeps only the
    # metrics of the latest checkpoint) and the final checkpoint is the evaluated one.
    save_and_report(final)
    return final


def load_frozen_captioner(captioner_path: str | None, vocab) -> torch.nn.Module:
    """The cached captioner for l4, refused unless it predicts the same vocabulary as the DAMSM."""
    if captioner_path is None:
        raise ValueError("loss.recap > 0 needs a pre-trained captioner: pass captioner_path (the sweeps "
                         "do, see t2i_ray.sweep.run.prepare_assets) or set loss.recap=0")
    cached = load_captioner(captioner_path)
    if cached.vocab.fingerprint() != vocab.fingerprint():
        raise ValueError(f"captioner {captioner_path} was trained with another vocabulary than the DAMSM "
                         f"encoders; pre-train both for this data config")
    return cached.model


def make_generate_fn(models: GANModels):
    generator, text_g = ckpt.unwrap(models.generator), ckpt.unwrap(models.text_g)
    device = next(generator.parameters()).device

    @torch.no_grad()
    def generate(ids, lens, z, **extra):
        generator.eval()
        text_g.eval()
        ids, lens = ids.to(device), lens.to(device)
        words, sent = text_g(ids, lens)
        return generator(z.to(device), sent, words, word_mask(lens, ids.shape[1]), **extra)

    return generate


def make_mask_fn(models: GANModels):
    """generate(ids, lens, z) -> the generator's predicted masks, when it predicts any, else None."""
    if not getattr(ckpt.unwrap(models.generator), "predicts_masks", False):
        return None
    generate = make_generate_fn(models)
    return lambda ids, lens, z: generate(ids, lens, z, return_masks=True)[1]


def evaluate_models(cfg: ExperimentConfig, models: GANModels, damsm, writer, step: int,
                    run_name: str) -> dict[str, Any]:
    from t2i_ray.eval.evaluate import build_eval_context, evaluate_generator

    start = time.time()
    ctx = build_eval_context(cfg, damsm)
    generate = make_generate_fn(models)
    # Randomness inside G (StyleGAN2 noise inputs) comes from torch's global RNG: seed it so that
    # evaluation is a function of the weights and the seed, without disturbing the training RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        metrics = evaluate_generator(generate, ctx, cfg, cfg.model.z_dim, seed=cfg.seed)
        metrics["eval_seconds"] = time.time() - start
        samples = save_samples(cfg, generate, ctx, run_name, mask_fn=make_mask_fn(models))
    metrics["samples_path"] = str(samples)
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                writer.add_scalar(f"eval/{k}", v, step)
    extra = (f"attr_pair_recall={metrics['attr_pair_recall']:.3f}" if "attr_pair_recall" in metrics
             else f"is={metrics['is']:.3f}")  # domain backbone: oracle attributes; inception: IS
    print(f"[{run_name}] eval: fid={metrics['fid']:.3f} kid={metrics['kid']:.4f} "
          f"r_precision={metrics['r_precision']:.3f} {extra} ({metrics['eval_seconds']:.0f}s)", flush=True)
    return metrics


@torch.no_grad()
def save_samples(cfg: ExperimentConfig, generate, ctx, run_name: str, num: int = 16, mask_fn=None) -> Path:
    """A PNG grid: first row real test images, then fakes for the same captions (fixed noise).

    With `mask_fn` (generators that predict spatial masks, e.g. SSA-GAN), `<run>_masks.png`
    beside it: one row per block (coarse to fine), the same samples, masks in grey (white = 1).
    """
    from PIL import Image

    items = [ctx.test_set[i] for i in range(min(num, len(ctx.test_set)))]
    ids = torch.stack([it["caption"] for it in items])
    lens = torch.stack([it["caption_len"] for it in items])
    z = torch.randn(len(items), cfg.model.z_dim, generator=torch.Generator().manual_seed(1234))
    real = torch.stack([it["image"] for it in items])
    fake = generate(ids, lens, z).float().cpu().clamp(-1, 1)
    grid = torch.cat([real, fake])  # (2n, 3, H, W)
    n, (_, h, w) = len(items), grid.shape[1:]
    grid = ((grid + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    canvas = np.zeros((2 * h, n * w, 3), np.uint8)
    for k in range(2 * n):
        r, c = divmod(k, n)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = grid[k]
    out = Path(cfg.output_dir) / "samples" / f"{run_name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out)
    captions = [ctx.damsm.vocab.decode(it["caption"][: int(it["caption_len"])].tolist()) for it in items]
    out.with_suffix(".json").write_text(json.dumps({"captions": captions}, indent=1))
    if mask_fn is not None:
        masks = mask_fn(ids, lens, z)  # [(n, 1, h_k, w_k)] per block
        rows = [F.interpolate(m.float().cpu(), size=(h, w), mode="nearest") for m in masks]
        mask_grid = (torch.cat(rows)[:, 0] * 255).round().byte().numpy()  # (blocks * n, H, W)
        mask_canvas = np.zeros((len(rows) * h, n * w), np.uint8)
        for k in range(len(mask_grid)):
            r, c = divmod(k, n)
            mask_canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = mask_grid[k]
        Image.fromarray(mask_canvas).save(out.with_name(f"{run_name}_masks.png"))
    return out


def curves_path(output_dir: str | Path, run_name: str) -> Path:
    return Path(output_dir) / "curves" / f"{run_name}.jsonl"


def append_curve(cfg: ExperimentConfig, run_name: str, metrics: dict[str, Any]) -> None:
    """One JSON line per training report (rank 0), read by `analysis.plots` for training curves.

    Appended as the run goes, so a crashed run keeps its curve; after a resume the steps between
    the last checkpoint and the crash appear twice and readers keep the later line per step.
    """
    path = curves_path(cfg.output_dir, run_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")


def _tensorboard(cfg: ExperimentConfig, run_name: str):
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(Path(cfg.output_dir) / "tensorboard" / run_name))


def _broadcast(metrics: dict[str, Any], env: RunEnv) -> dict[str, Any]:
    """Rank 0's final metrics on every rank (all ranks must report the same number of times)."""
    if env.world_size == 1:
        return metrics
    import torch.distributed as dist

    box = [metrics]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def ray_worker(config: dict[str, Any]) -> None:
    """Entry point for `TorchTrainer(train_loop_per_worker=ray_worker, train_loop_config=...)`."""
    cfg = ExperimentConfig.from_dict(config["experiment"])
    run_training(cfg, RayEnv(), config["damsm_path"], config["run_name"], config["captioner_path"])
