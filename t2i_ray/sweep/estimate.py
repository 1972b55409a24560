"""How long a sweep will take, from measured step rates (what `--dry-run` prints).

Every figure below was measured on a 2-core x86-64 CPU by the benchmark scripts, whose JSON is in
`benchmarks/results/` (tests/test_sweep_cli.py checks that the numbers here match those files):

- GAN steps (one D + one G update), 32x32, batch 32, nf=16, adversarial losses only:
  `step_throughput_archs.json` (1 thread) and `step_throughput_archs_2threads.json` (2 threads).
- The DAMSM/F2R/F2F terms: ~93 images/s against ~180 for DF-GAN alone at nf=16, 1 thread
  (benchmarks/README.md, "Step throughput"). Of that, F2R+F2F on top of DAMSM: 83.9 against 116.0
  images/s for SSA-GAN + DAMSM in one run (`learning_curves_1obj.json` e2 vs e1), so DAMSM alone
  is taken as the rest; the re-captioning term alone is assumed to cost as much as DAMSM alone.
- Diffusion steps, 32x32, batch 16, dim 32 (3.9 M parameters), 1 thread:
  `diffusion_step_1thread_quieter.json`.
- Per trial, start-up and the reports' overhead (`trial_overhead_local_quiet.json`): ~3.95 s for a
  one-worker trial (trained inside the Tune trial), ~23.2 s with a Ray Train worker group (two or
  more workers); evaluation ~4 s per 1024 GAN samples (benchmarks/README.md, "Where a trial's time
  goes").
- bf16 autocast on a CPU with bf16 instructions (`train.amp=native`/`bf16` there): median 142 vs
  116 images/s (1.22x) for SSA-GAN + DAMSM, 92 vs 79 (1.17x) with the contrastive terms, two
  single-thread runs at a time (the float32 run is `learning_curves_1obj.json` e7; benchmarks/README.md
  "The default laptop sweep"); taken as 1.2x.

Other sizes are extrapolated with a cost proportional to pixels x width^2 (the measured dim 32 ->
64 and 32 -> 64 px diffusion rows are 3.0x and 4.7x slower, against 4x predicted), so expect the
estimate to be off by up to ~1.5x away from the measured settings. No rate has been measured on a
GPU: GPU sweeps get no estimate.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from t2i_ray.config import ExperimentConfig, apply_overrides, base_image_size, image_size

if TYPE_CHECKING:
    from t2i_ray.sweep.run import SweepSpec

# images/s of one step at the reference setting: (1 thread, 2 threads)
GAN_IMAGES_PER_S = {"dfgan": (174.1, 280.5), "ssagan": (150.3, 223.7), "attngan_style": (79.4, 120.6)}
# style1attngan and attngan: attngan_style's figures times their ratio to it in one run under heavy load
# (benchmarks/results/step_throughput_new_archs_loaded.json: 19.6 and 19.0 vs 15.3 images/s).
GAN_IMAGES_PER_S |= {arch: tuple(round(r * ratio, 1) for r in GAN_IMAGES_PER_S["attngan_style"])
                     for arch, ratio in (("style1attngan", 19.6 / 15.3), ("attngan", 19.0 / 15.3))}
GAN_REFERENCE = {"resolution": 32, "nf": 16}
EXTRA_TERMS_FACTOR = 93 / 180  # with DAMSM and the contrastive terms (F2R/F2F) on
CONTRASTIVE_FACTOR = 83.9 / 116.0  # F2R+F2F on top of DAMSM
DAMSM_FACTOR = EXTRA_TERMS_FACTOR / CONTRASTIVE_FACTOR  # DAMSM (or re-captioning) alone
DIFFUSION_IMAGES_PER_S = 51.76  # 1 thread; 2 threads measured no faster under load (39.5)
DIFFUSION_REFERENCE = {"resolution": 32, "dim": 32}
TRIAL_STARTUP_S = {"in_trial": 3.95, "worker_group": 23.23}  # one worker / a worker group
CPU_BF16_SPEEDUP = 1.2
GAN_EVAL_S_PER_IMAGE = 4.0 / 1024
SOURCES = ("benchmarks/results/step_throughput_archs.json, step_throughput_archs_2threads.json, "
           "step_throughput_new_archs_loaded.json, "
           "diffusion_step_1thread_quieter.json; benchmarks/README.md")


@dataclass(frozen=True)
class TrialEstimate:
    train_s: float
    eval_s: float
    images_per_s: float
    startup_s: float = TRIAL_STARTUP_S["in_trial"]

    @property
    def total_s(self) -> float:
        return self.startup_s + self.train_s + self.eval_s


def _cpu_bf16(cfg: ExperimentConfig) -> bool:
    """Whether a CPU run of `cfg` autocasts to bf16 on this machine (the loop's own resolution)."""
    import torch

    from t2i_ray.train.accel import resolve_accel

    return resolve_accel(cfg.train, torch.device("cpu")).amp_dtype is not None


def train_images_per_s(cfg: ExperimentConfig) -> float:
    """Estimated training images/s of one Train worker of `cfg` on a CPU."""
    threads = 2 if cfg.train.torch_threads >= 2 else 1
    h, w = image_size(cfg.data)
    pixels = h * w / GAN_REFERENCE["resolution"] ** 2
    if cfg.model.method == "diffusion":
        return DIFFUSION_IMAGES_PER_S / _diffusion_cost(cfg)
    rate = GAN_IMAGES_PER_S[cfg.model.arch][threads - 1] / (pixels * (cfg.model.nf / GAN_REFERENCE["nf"]) ** 2)
    loss = cfg.loss
    if loss.f2r > 0 or loss.f2f > 0:
        rate *= EXTRA_TERMS_FACTOR
    elif loss.damsm > 0 or loss.recap > 0:
        rate *= DAMSM_FACTOR
    if _cpu_bf16(cfg):
        rate *= CPU_BF16_SPEEDUP
    return rate


def _diffusion_cost(cfg: ExperimentConfig, sr_passes: float = 1.0) -> float:
    """Cost of one diffusion image relative to the measured reference (pixels x width^2), summed
    over the cascade's stages: the base U-Net at its size, the SR U-Net (sr_passes times as many
    passes) at data.resolution; its extra input channels are not counted."""
    f, ref = cfg.diffusion, DIFFUSION_REFERENCE
    bh, bw = base_image_size(cfg)
    cost = bh * bw / ref["resolution"] ** 2 * (f.dim / ref["dim"]) ** 2
    if f.base_resolution:
        h, w = image_size(cfg.data)
        cost += sr_passes * h * w / ref["resolution"] ** 2 * ((f.sr_dim or f.dim) / ref["dim"]) ** 2
    return cost


def estimate_trial(cfg: ExperimentConfig) -> TrialEstimate:
    rate = train_images_per_s(cfg)
    train_s = cfg.train.steps * cfg.train.batch_size / rate
    e = cfg.eval
    if cfg.model.method == "diffusion":
        # Sampling: sample_steps U-Net passes per image, two with guidance; a forward pass taken
        # as a third of a training step.
        f = cfg.diffusion
        passes = f.sample_steps * (2 if f.guidance_scale != 1 else 1)
        sr_passes = (2 if f.sr_guidance_scale != 1 else 1) / (2 if f.guidance_scale != 1 else 1)
        eval_s = e.num_images * passes * _diffusion_cost(cfg, sr_passes) / (3 * DIFFUSION_IMAGES_PER_S)
    else:
        eval_s = e.num_images * GAN_EVAL_S_PER_IMAGE * (cfg.data.resolution / 32) ** 2
    startup = TRIAL_STARTUP_S["in_trial" if cfg.train.num_workers == 1 else "worker_group"]
    return TrialEstimate(train_s, eval_s, rate, startup)


@dataclass(frozen=True)
class SweepEstimate:
    trials: int
    concurrent: int
    cpus: int
    total_s: float | None
    mean_trial: TrialEstimate | None
    note: str = ""

    def describe(self) -> str:
        if self.total_s is None:
            return f"estimated wall time: none ({self.note})"
        t = self.mean_trial
        return (f"estimated wall time: ~{_minutes(self.total_s)} for {self.trials} trial(s), {self.concurrent} at a "
                f"time on {self.cpus} CPUs (per trial ~{t.total_s:.0f} s: {t.startup_s:.0f} s start-up, "
                f"{t.train_s:.0f} s training at ~{t.images_per_s:.0f} images/s, {t.eval_s:.0f} s evaluation)"
                f"{self.note}; from step rates measured on a 2-core CPU ({SOURCES})")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def trial_configs(spec: "SweepSpec") -> list[ExperimentConfig]:
    """The config of every trial the spec will run (Optuna draws taken at the middle of each range)."""
    if spec.search == "grid":
        return [apply_overrides(spec.base, {**t["overrides"], "seed": t["seed"]}) for t in spec.grid]
    middle: dict[str, Any] = {}
    for key, rng in (spec.optuna_space or {}).items():
        kind, lo, hi = rng.split(":")
        lo_f, hi_f = float(lo), float(hi)
        mid = math.sqrt(lo_f * hi_f) if kind == "log" else (lo_f + hi_f) / 2
        middle[key] = round(mid) if kind == "int" else mid
    return [apply_overrides(spec.base, middle)] * spec.num_trials


def estimate_sweep(spec: "SweepSpec", cpus: int) -> SweepEstimate:
    """Wall time of the trials on a local Ray instance with `cpus` CPUs (DAMSM/evaluator pre-training
    not included: cached after the first run)."""
    from t2i_ray.config import ConfigError
    from t2i_ray.sweep.run import fit_resources

    configs = trial_configs(spec)
    b = spec.base
    if b.train.use_gpu:
        return SweepEstimate(len(configs), 0, cpus, None, None, "no step rate has been measured on a GPU")
    try:
        k = fit_resources(cpus, 0, b.train.num_workers, b.train.cpus_per_worker, False, len(configs)).max_concurrent
    except ConfigError as exc:
        return SweepEstimate(len(configs), 0, cpus, None, None, f"the trials do not fit this machine: {exc}")
    estimates = [estimate_trial(c) for c in configs]
    slots = [0.0] * k  # trials start in order on the first free slot
    for est in estimates:
        heapq.heappush(slots, heapq.heappop(slots) + est.total_s)
    mean = TrialEstimate(*(sum(getattr(e, f) for e in estimates) / len(estimates)
                           for f in ("train_s", "eval_s", "images_per_s", "startup_s")))
    note = "; an upper bound with ASHA, which stops trials early" if spec.scheduler else ""
    return SweepEstimate(len(configs), k, cpus, max(slots), mean, note)


__all__ = ["estimate_sweep", "estimate_trial", "train_images_per_s", "SweepEstimate", "TrialEstimate"]
