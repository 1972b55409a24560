"""The training loop: the Ray Train worker function, also runnable in-process with one worker.

It owns devices, DDP, data order, resume, reporting and checkpoints, and trains whatever
`model.method` builds (t2i_ray/train/method.py: models, optimisers, one step, a sampler); it names
no method or architecture. Evaluation (eval/evaluate.py) and what rank 0 logs (train/runlog.py)
live outside it. `RunEnv` hides where it runs: `RayEnv` inside a TorchTrainer (1..N workers, gloo
on CPU, NCCL on GPU), `TuneEnv` inside a Ray Tune trial itself (one CPU worker, no worker group:
t2i_ray/sweep/run.py), `LocalEnv` in a plain process (tests, benchmarks). Rerunning with the same
checkpoint location resumes from the last checkpoint with the same model, optimiser, RNG and
data-order state, so a killed run continues where it stopped.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from t2i_ray.config import ExperimentConfig
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data.registry import source
from t2i_ray.eval.evaluate import PeriodicEval, evaluate_method
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.accel import Accel, resolve_accel, select_device
from t2i_ray.train.method import load_assets, method_class
from t2i_ray.train.runlog import RunLog


class RunEnv:
    """Where the loop runs. Subclasses implement report/latest_checkpoint/prepare_model."""

    world_rank = 0
    world_size = 1
    device = torch.device("cpu")
    best_dir: str | None = None  # where rank 0 keeps the best checkpoint (eval.every > 0); None: nowhere

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
        self.best_dir = str(self.run_dir / "best")
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

    def __init__(self, best_dir: str | None = None):
        import ray.train
        import ray.train.torch

        self.best_dir = best_dir
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

    def latest_checkpoint(self):
        import ray.train

        return _checkpoint_dir(ray.train.get_checkpoint())


class TuneEnv(RunEnv):
    """One worker running inside the Ray Tune trial itself (no Ray Train worker group, no process
    group): reports and checkpoints go to Tune (`ray.tune.report(..., checkpoint=...)`, persisted to
    the trial's folder in the storage path), and a restarted trial resumes from
    `ray.tune.get_checkpoint()`, the last one it reported. `last_checkpoint` is where Tune stored
    the latest reported checkpoint (its storage path or URI)."""

    def __init__(self, best_dir: str | None = None):
        self.best_dir = best_dir
        self.last_checkpoint = None

    def report(self, metrics, checkpoint_dir):
        import ray.tune

        checkpoint = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)
        if checkpoint is not None:  # Tune's session now holds the persisted copy (not the temporary folder)
            self.last_checkpoint = ray.tune.get_checkpoint()

    def latest_checkpoint(self):
        import ray.tune

        return _checkpoint_dir(ray.tune.get_checkpoint())


@contextlib.contextmanager
def _checkpoint_dir(checkpoint) -> Iterator[Path | None]:
    """A Ray (Train or Tune) checkpoint as a local folder for the loop to read, or None."""
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
    """Train (or resume) one run of `cfg.model.method`, evaluate it on rank 0, report everything
    through `env`. `captioner_path` (a cached captioner folder) is needed when loss.recap > 0."""
    t = cfg.train
    if t.use_gpu and env.device.type != "cuda":
        env.device = select_device(True)  # in-process run: ConfigError when no GPU is visible
    accel = resolve_accel(t, env.device)
    accel.apply_backend_flags()
    if env.device.type == "cpu":
        torch.set_num_threads(t.torch_threads)
    torch.manual_seed(cfg.seed * 1000 + env.world_rank)
    assets = load_assets(cfg, damsm_path, captioner_path)
    method_cls = method_class(cfg)
    train_set = TextImageDataset(source(cfg, "train"), assets.damsm.vocab, cfg.data.words_num, train=True,
                                 seed=cfg.seed, layouts=method_cls.needs_layouts(cfg))
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.world_rank,
                                 shuffle=True, seed=cfg.seed, drop_last=True)
    # Its own generator: a DataLoader iterator otherwise draws a seed from torch's global RNG,
    # which a resume would then replay differently (G's per-pixel noise inputs use that RNG).
    loader = DataLoader(train_set, batch_size=t.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.data.loader_workers,
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + env.world_rank))
    if len(loader) == 0:
        raise ValueError(f"the train split ({len(train_set)} images) gives no full batch of train.batch_size="
                         f"{t.batch_size} per worker over {env.world_size} workers")
    method = method_cls(cfg, assets)  # after the seed: initial weights are a function of it
    # The method's randomness (GAN noise, diffusion timesteps) comes from this checkpointed generator.
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 7 + env.world_rank)
    step, best = 0, {}
    with env.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = ckpt.load_state(ckpt_dir)
            step = ckpt.restore(state, method.checkpointed(), method.optimizers)
            best = state.get("best", {})
            method.restored(step)
            rng = state["rng"]
            noise_gen.set_state(rng[f"noise_{env.world_rank}"] if f"noise_{env.world_rank}" in rng else rng["noise_0"])
            torch.set_rng_state(rng["torch"])
            print(f"[{run_name}] resumed from checkpoint at step {step}")
    method.prepare(env.prepare_model, accel.prepare_module, env.device)
    log = RunLog(cfg, run_name) if env.world_rank == 0 else None
    if log is not None:
        print(f"[{run_name}] {accel.describe()}", flush=True)
        if env.world_size > 1 and method.batch_coupled:
            where = (f"the global batch ({env.world_size} workers x {t.batch_size}, gathered)" if t.gather_negatives
                     else f"each worker's own batch of {t.batch_size} (train.gather_negatives=false)")
            print(f"[{run_name}] batch-coupled loss terms (negatives, mismatched pairs) on {where}", flush=True)
    every = cfg.eval.every  # in-training evaluations on rank 0; the best checkpoint kept in env.best_dir
    periodic = PeriodicEval(cfg, assets.damsm, method, best) if every and env.world_rank == 0 else None
    files = {"damsm_path": str(Path(damsm_path).resolve()), "vocab_fingerprint": assets.damsm.vocab.fingerprint(),
             "captioner_path": str(Path(captioner_path).resolve()) if captioner_path else None}

    def write_checkpoint(folder: Path) -> Path:
        # rng of rank 0 only: other ranks re-derive theirs (data order is per-epoch).
        return ckpt.save_checkpoint(
            folder, step=step, modules=method.checkpointed(), optimizers=method.optimizers,
            rng={"noise_0": noise_gen.get_state(), "torch": torch.get_rng_state()}, config=cfg.to_dict(),
            vocab_json=assets.damsm.vocab.to_json(), assets=files,
            extra_state={"best": periodic.best} if periodic is not None and periodic.best else None)

    def save_and_report(metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            env.report(metrics, write_checkpoint(Path(tmp) / "ckpt") if env.world_rank == 0 else None)

    window: dict[str, list[float]] = {}
    tick, tick_step = time.time(), step
    for batch in (_batches(loader, train_set, step, accel) if step < t.steps else ()):
        method.train_mode()
        losses = method.step(batch, noise_gen, accel.autocast)
        step += 1
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"[{run_name}] non-finite {', '.join(bad)} at step {step}; "
                                     f"try lower learning rates or loss weights")
        for k, v in losses.items():
            window.setdefault(k, []).append(v)
        evaluate_now = every > 0 and (step % every == 0 or step == t.steps)  # the same on every rank
        if step % t.report_every == 0 or step % t.checkpoint_every == 0 or step == t.steps or evaluate_now:
            elapsed = time.time() - tick
            metrics = {k: float(np.mean(v)) for k, v in window.items()}
            metrics.update(step=step, images_per_s=(step - tick_step) * t.batch_size * env.world_size / max(elapsed, 1e-9))
            if periodic is not None and evaluate_now:
                scores, is_best = periodic(step)
                metrics.update(scores)
                if is_best and env.best_dir:
                    ckpt.write_to(env.best_dir, write_checkpoint)
            if log is not None:
                log.training(metrics, step)
            if step % t.checkpoint_every == 0 or step == t.steps:
                save_and_report(metrics)
            else:
                env.report(metrics, None)
            window, tick, tick_step = {}, time.time(), step
        if step >= t.steps:
            break

    # the autocast dtype this run trained with (train.amp=native/auto resolve per machine): "bfloat16" or "off"
    final: dict[str, Any] = {"step": step, "amp_dtype": accel.describe()["amp"]}
    if log is not None:
        final.update(evaluate_method(cfg, method, assets.damsm, run_name, periodic.ctx if periodic else None))
        if periodic is not None:
            final.update(periodic.summary(env.best_dir))
        log.evaluation(final, step)
        log.close()
    final = _broadcast(final, env)
    final["finished"] = 1
    # With a checkpoint attached, these become Ray Train's Result.metrics (V2 keeps only the
    # metrics of the latest checkpoint) and the final checkpoint is the evaluated one.
    save_and_report(final)
    return final


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
    run_training(cfg, RayEnv(config.get("best_dir")), config["damsm_path"], config["run_name"],
                 config["captioner_path"])
