"""Ray Tune sweeps over GAN trainings (Ray Train V2 driver-function pattern, SPEC 7).

Each Tune trial runs `train_driver`: it trains with the worker loop (`t2i_ray.train.loop`), in its
own process for one CPU worker (`runs_in_trial`) or under a TorchTrainer (`loop.ray_worker`) for
data-parallel and GPU trials, writes the trial's row to the results table, and
reports the final metrics to Tune (without that report a resumed, already finished trial would
abort the sweep: reference ray.md 3.4). Experiment and run names are content hashes of the sweep,
never timestamps, so rerunning the same command resumes: Tune restores the experiment, finished
trials are not rerun, and unfinished ones continue from their last Train checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from t2i_ray.paths import RunPaths
from t2i_ray.console import console
from t2i_ray.config import EVAL_PATH_FIELDS, ConfigError, ExperimentConfig, apply_overrides
from t2i_ray.sweep import store

DRIVER_CPUS = 0.01  # the Tune trial itself only waits on its TorchTrainer
# Custom resource that cluster.yaml gives only to the on-demand head node: when the cluster has
# it, trial drivers (and their Train controllers, which Ray pins to the driver's node) stay off
# spot nodes, so a vanished node costs only its Train workers.
DRIVER_RESOURCE = "t2i_driver"


class ResumeError(RuntimeError):
    """`--resume` was asked for, but there is no saved sweep to resume."""


@dataclass
class SweepSpec:
    sweep: str  # script name, e.g. "ablate_losses"
    base: ExperimentConfig
    search: str  # "grid" | "optuna"
    # [{"row", "seed", "overrides"[, "swept"]}]: "swept" holds the --sweep values (cli.expand_grid)
    grid: list[dict[str, Any]] = field(default_factory=list)
    # Optuna ranges keyed by dotted config keys, as text ("float:0.0:1.0", "log:1e-05:0.001",
    # "int:4:8"; space.parse_space_range), built into Tune domains by space.tune_domain
    optuna_space: dict[str, str] | None = None
    num_trials: int = 0  # optuna
    objective: str = "fid"  # optuna: fid | r_precision | both (multi-objective)
    max_failures: int = 1  # Train-level restarts from the last checkpoint
    scheduler: dict[str, Any] | None = None  # ASHA settings (asha_settings); None: every trial runs to the end

    def spec_hash(self) -> str:
        base = self.base.to_dict()
        # Where the Inception/CLIP files live is not what the sweep is (their digests are in every
        # row): moving a file, or naming it by flag instead of its environment variable, must resume.
        base["eval"] = {k: v for k, v in base["eval"].items() if k not in EVAL_PATH_FIELDS}
        what = {"sweep": self.sweep, "base": base, "search": self.search, "grid": self.grid,
                "space": repr(self.optuna_space), "n": self.num_trials, "objective": self.objective}
        if self.scheduler:  # only when set, so that the names of sweeps without one stay as they were
            what["scheduler"] = self.scheduler
        blob = json.dumps(what, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    @property
    def name(self) -> str:
        return f"{self.sweep}-{self.search}-{self.spec_hash()}"


# What the training loop reports every train.report_every steps, per method (t2i_ray/train/gan.py,
# t2i_ray/models/diffusion/gaussian_categorical.py); the GAN's loss_* terms appear when their
# weight is on (loss_magp on the single-stage architectures, loss_kl on plain AttnGAN).
# In-training evaluation, where the config has it (eval.every > 0), adds eval_*.
TRAINING_METRICS = {
    "gan": ("loss_g_adv", "loss_g", "loss_d", "loss_d_adv", "loss_magp", "d_real", "d_fake", "loss_damsm",
            "loss_f2r", "loss_f2f", "loss_recap", "loss_align_d", "loss_align_g", "loss_kl", "loss_ca_kl",
            "images_per_s"),
    "diffusion": ("loss", "image_loss", "layout_loss", "images_per_s"),
}
HIGHER_IS_BETTER = ("r_precision", "attr", "is", "images_per_s", "d_real", "layout_miou", "semantic_recall",
                    "semantic_precision")


def asha_settings(base: ExperimentConfig, metric: str | None, mode: str | None, grace: int | None) -> dict[str, Any]:
    """ASHA (Li et al., arXiv:1810.05934) over the trials' reports, validated (ConfigError).

    Its rungs are in training steps (`step` of each report). Without in-training evaluation the
    reports carry only training losses, so the default metric is the generator's adversarial loss
    (GAN; loss_g would add the weighted text terms, which differ between rows) or the denoising
    loss (diffusion): a weak proxy of sample quality, which --asha-metric can change."""
    method = base.model.method
    periodic = getattr(base.eval, "every", 0) > 0  # in-training evaluation, where the config has it
    metric = metric or ("eval_fid" if periodic else "loss_g_adv" if method == "gan" else "loss")
    known = TRAINING_METRICS[method]
    if metric.startswith("eval_"):
        if not periodic:
            raise ConfigError(f"--asha-metric {metric}: reported only by evaluation during training, which "
                              f"this config does not run; use a training report key ({', '.join(known)})")
    elif metric not in known:
        raise ConfigError(f"--asha-metric {metric}: not in the training reports of model.method={method}; "
                          f"use one of {', '.join(known)}")
    if mode is None:
        mode = "max" if any(h in metric for h in HIGHER_IS_BETTER) else "min"
    steps = base.train.steps
    grace = grace if grace is not None else max(base.train.report_every, steps // 4)
    if not 1 <= grace < steps:
        raise ConfigError(f"--asha-grace: must be in 1..train.steps-1 ({steps - 1}), got {grace} (ASHA decides "
                          f"at {grace} steps and multiples of it, never at the last step: a trial that "
                          f"trained all its steps is evaluated)")
    if grace < base.train.report_every:
        raise ConfigError(f"--asha-grace {grace}: shorter than train.report_every={base.train.report_every}, so "
                          f"ASHA would decide before a trial's first report; raise it or lower train.report_every")
    return {"kind": "asha", "metric": metric, "mode": mode, "grace": int(grace), "max_t": int(steps),
            "reduction": 2}


@dataclass(frozen=True)
class Fit:
    worker_resources: dict[str, float]
    max_concurrent: int


def fit_resources(total_cpus: float, total_gpus: float, num_workers: int, cpus_per_worker: float,
                  use_gpu: bool, num_trials: int, nodes: Sequence[Mapping[str, float]] | None = None) -> Fit:
    """How many trials can run at once without any trial starving its own Train workers.

    A trial needs DRIVER_CPUS for its Tune driver plus, per worker, `cpus_per_worker` CPUs (and one
    whole GPU: NCCL ranks cannot share a GPU). Concurrency is bounded by what fits; the per-worker
    CPU request is trimmed by the drivers' share so that k trials fit exactly on k*W*c CPUs.
    `nodes` (each alive node's resources) adds the per-node bound: a worker cannot span nodes, so
    the cluster holds sum over nodes of floor(node CPUs / c) (and at most one per node GPU) workers;
    on a cluster of small nodes the totals alone would admit a trial that never gets placed.
    Raises ConfigError with the numbers when not even one trial fits (Ray would wait forever).
    """
    need_cpu = num_workers * cpus_per_worker
    if need_cpu > total_cpus + 1e-9:
        raise ConfigError(f"train.num_workers={num_workers} x train.cpus_per_worker={cpus_per_worker} "
                          f"= {need_cpu} CPUs per trial, but the Ray cluster has {total_cpus:g} CPUs; "
                          f"lower train.num_workers or train.cpus_per_worker, or add nodes")
    if use_gpu and num_workers > total_gpus:
        raise ConfigError(f"train.num_workers={num_workers} GPU workers per trial, but the Ray cluster "
                          f"has {total_gpus:g} GPUs; lower train.num_workers, set train.use_gpu=false, "
                          f"or add GPU nodes (an autoscaling cluster counts the nodes that are up when "
                          f"the sweep starts: raise the GPU node type's min_workers in cluster.yaml)")
    k = max(1, int(total_cpus // need_cpu + 1e-9))
    if use_gpu:
        k = min(k, int(total_gpus // num_workers))
    if nodes:
        slots = sum(worker_slots(n, cpus_per_worker, use_gpu) for n in nodes)
        if slots < num_workers:
            largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
            per_worker = f"{cpus_per_worker:g} CPUs" + (" and 1 GPU" if use_gpu else "")
            raise ConfigError(
                f"train.num_workers={num_workers} workers of {per_worker} each, but the nodes of the Ray "
                f"cluster hold only {slots} such worker(s) (a worker cannot span nodes; the largest node "
                f"has {largest.get('CPU', 0.0):g} CPUs" + (f" and {largest.get('GPU', 0.0):g} GPUs" if use_gpu
                                                           else "") +
                "); lower train.cpus_per_worker or train.num_workers, or add larger nodes")
        k = min(k, slots // num_workers)
    k = max(1, min(k, max(num_trials, 1)))
    cpu = min(cpus_per_worker, (total_cpus - k * DRIVER_CPUS) / (k * num_workers))
    resources = {"CPU": round(cpu, 4)}
    if use_gpu:
        resources["GPU"] = 1.0
    return Fit(resources, k)


def worker_slots(node: Mapping[str, float], cpus_per_worker: float, use_gpu: bool) -> int:
    """How many Train workers of `cpus_per_worker` CPUs (and one GPU each) one node holds."""
    n = int(node.get("CPU", 0.0) / cpus_per_worker + 1e-9)
    return min(n, int(node.get("GPU", 0.0) + 1e-9)) if use_gpu else n


def driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    """What one trial driver asks for: a sliver of CPU, plus the head-only resource if present."""
    out = {"cpu": DRIVER_CPUS}
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        out[DRIVER_RESOURCE] = 1
    return out


def check_output_dir(output_dir: Path) -> None:
    """Fail before any expensive work when the results folder cannot be written."""
    probe = RunPaths(output_dir).results / ".write_probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot write results under {output_dir} ({type(exc).__name__}: "
                          f"{exc.strerror or exc}); pass --output-dir on a writable path "
                          f"(on a multi-node cluster: a shared file system every node mounts)") from None


def failure_reason(exc: BaseException) -> tuple[str, bool]:
    """(one-line reason, deterministic?) for a failed Train run.

    Ray Train wraps worker exceptions (WorkerGroupError.worker_failures, each possibly wrapped
    again by Ray); the user-facing reason is the innermost exception's type and message. A
    FloatingPointError (non-finite loss, raised by the loop) is deterministic: rerunning the trial
    diverges again, so it is a result of the trial, not a crash to retry.
    """
    failures = list(getattr(exc, "worker_failures", {}).values()) or [exc]
    reasons, diverged = [], False
    for err in failures:
        inner = err
        while inner.__cause__ is not None and inner.__cause__ is not inner:
            inner = inner.__cause__
        text = f"{type(inner).__name__}: {inner}"
        # Ray's wrappers carry the worker's traceback as text: keep its last "Type: message" line.
        tail = re.findall(r"^(\w+(?:Error|Exception): .+)$", str(err), flags=re.M)
        if tail:
            text = tail[-1]
        diverged |= isinstance(inner, FloatingPointError) or text.startswith("FloatingPointError")
        reasons.append(text.strip())
    return "; ".join(dict.fromkeys(reasons)), diverged


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "row"


def needs_captioner(spec: SweepSpec) -> bool:
    """Whether any trial of the sweep can have loss.recap > 0 (then the captioner is pre-trained)."""
    if spec.base.loss.recap > 0:
        return True
    if spec.search == "grid":
        return any(float(t["overrides"].get("loss.recap", 0.0)) > 0 for t in spec.grid)
    return "loss.recap" in (spec.optuna_space or {})


SHARED_PRETRAINING = ("damsm", "captioner")


def check_shared_pretraining(spec: SweepSpec) -> None:
    """A sweep pre-trains one DAMSM and one captioner, from its base config (`prepare_assets`), and
    every trial uses them; a trial whose damsm.*, captioner.* or model.embed_dim fields differ from
    the base's would train with encoders it does not describe, so it is refused here, before any work."""
    from t2i_ray.sweep.estimate import trial_configs

    # model.embed_dim too: the encoders' output width, which the trial's models are built for
    keys = [f"{section}.{k}" for section in SHARED_PRETRAINING for k in spec.base.to_dict()[section]]
    keys.append("model.embed_dim")
    if spec.search == "optuna":
        varied = sorted(k for k in (spec.optuna_space or {}) if k in keys)
        if varied:
            raise ConfigError(f"{varied[0]}: the Optuna space cannot vary it: a sweep pre-trains one "
                              f"DAMSM and one captioner from its base config and every trial shares them; "
                              f"run one sweep per value (--set {varied[0]}=...)")
        return
    base = spec.base.flat()
    for trial, cfg in zip(spec.grid, trial_configs(spec)):
        flat = cfg.flat()
        for key in keys:
            if flat[key] != base[key]:
                raise ConfigError(f"{key}: trial {trial['row']!r} seed {trial['seed']} sets it to {flat[key]!r}, "
                                  f"the sweep's base config has {base[key]!r}; a sweep pre-trains one DAMSM and "
                                  f"one captioner from its base config and every trial shares them, so it "
                                  f"cannot vary across trials: run one sweep per value (--set {key}=...)")


def prepare_assets(cfg: ExperimentConfig, log: Callable[[str], None] = console,
                   need_captioner: bool = False) -> dict[str, str | None]:
    """Pre-train/cache the DAMSM encoders, the domain evaluator and (when a trial uses l4) the
    captioner once, before any trial starts. Returns {"damsm_path", "captioner_path"} (absolute;
    captioner_path None when not needed).

    One after the other: side by side with half the cores each was slower on 2 cores (the DAMSM
    pre-training scales well with threads).
    With eval.backbone=inception the weights file is checked first (a missing one refuses before
    any training) and loaded once, so an unreadable file fails here rather than in every trial.
    """
    from t2i_ray.config import resolved_eval_backbone
    from t2i_ray.data.registry import prepare_data
    from t2i_ray.eval.clip import clip_score_enabled, load_clip, resolve_clip_files
    from t2i_ray.eval.evaluate import check_eval_assets
    from t2i_ray.eval.features import load_or_train_domain_evaluator
    from t2i_ray.eval.inception import load_inception
    from t2i_ray.train.captioner import ensure_captioner
    from t2i_ray.train.damsm import ensure_damsm

    weights_path = check_eval_assets(cfg)
    if weights_path is not None:
        inc = load_inception(weights_path, cfg.eval.inception_resize)
        no_is = "" if inc.info["is_logits"] else "; pool3 only (no 1008-way classifier): FID/KID, no IS"
        log(f"[eval] Inception {inc.name} ready ({weights_path}){no_is}")
    if clip_score_enabled(cfg):  # an unreadable CLIP file fails here, once, rather than in every trial
        clip = load_clip(*resolve_clip_files(cfg))
        log(f"[eval] CLIP score with {clip.info['backbone']} ready ({clip.info['weights_path']})")
        del clip
    prepare_data(cfg, log)  # a real dataset is checked and decoded into its cache here, once
    damsm_path = ensure_damsm(cfg, log)
    e = cfg.eval
    if resolved_eval_backbone(cfg) == "domain":
        _, info = load_or_train_domain_evaluator(cfg.data, e.evaluator_steps, e.evaluator_images,
                                                 str(RunPaths.of(cfg).cache), log=log)
        log(f"[eval] domain evaluator {info['backbone']} ready")
    from t2i_ray.config import resolved_segmenter

    if resolved_segmenter(cfg) == "hrnet":  # an unreadable HRNet file fails here, once, rather than in every trial
        from t2i_ray.config import parse_input_size
        from t2i_ray.eval.hrnet import load_hrnet, resolve_segmenter_weights

        hrnet = load_hrnet(resolve_segmenter_weights(cfg), parse_input_size(e.segmenter_input))
        log(f"[eval] layout segmenter {hrnet.info['backbone']} ready ({hrnet.info['weights_path']}, input "
            f"{hrnet.info['input_size']})")
        del hrnet
    if resolved_segmenter(cfg) == "trained":
        # The layout metrics' segmenter (eval/layout.py), trained here once rather than inside a
        # trial's evaluation (where several trials would race to train it).
        from t2i_ray.eval.layout import load_or_train_segmenter

        _, info = load_or_train_segmenter(cfg.data, e.segmenter_steps, e.segmenter_images,
                                          str(RunPaths.of(cfg).cache), log=log)
        log(f"[eval] segmenter {info['backbone']} ready (held-out mIoU {info['heldout_miou']:.3f})")
    captioner_path = ensure_captioner(cfg, log) if need_captioner else None
    return {"damsm_path": str(Path(damsm_path).resolve()),
            "captioner_path": str(Path(captioner_path).resolve()) if captioner_path else None}


@dataclass(frozen=True)
class TrialIdentity:
    row: str  # the label tables group by: the script's row plus any --sweep values, or the Optuna draw
    seed: int
    overrides: dict[str, Any]  # what the trial sets on top of the base config
    swept: dict[str, Any]  # the --sweep values or the Optuna draw (results table column `swept`)
    run_name: str
    cfg: ExperimentConfig


def trial_identity(config: dict[str, Any], trial_id: str) -> TrialIdentity:
    """Who a Tune trial is, from its config: the same on the trial driver and on the sweep driver
    (which writes the row of a trial the scheduler stopped)."""
    base = ExperimentConfig.from_dict(config["base"])
    if "trial" in config:  # grid row
        t = config["trial"]
        row, seed, overrides, swept = t["row"], t["seed"], t["overrides"], t.get("swept", {})
        run_name = f"{config['experiment']}-{_slug(row)}-s{seed}"
    else:  # optuna: every sampled dotted key is an override; each draw is a configuration of its own
        seed = base.seed
        overrides = swept = {k: v for k, v in config.items() if "." in k}
        from t2i_ray.sweep.space import axis_labels

        short = axis_labels(sorted(swept))
        row = " ".join(["optuna"] + [f"{short[k]}={v:.4g}" if isinstance(v, float) else f"{short[k]}={v}"
                                     for k, v in sorted(swept.items())])
        run_name = f"{config['experiment']}-{trial_id}"
    cfg = apply_overrides(base, {**overrides, "seed": seed, "name": row})
    return TrialIdentity(row, seed, dict(overrides), dict(swept), run_name, cfg)


def write_trial_row(ident: TrialIdentity, config: dict[str, Any], *, status: str, error: str | None,
                    wall_time_s: float, metrics: dict[str, Any], checkpoint_path: str) -> None:
    """One trial's row in the results table (and, for a finished trial, its TensorBoard hparams)."""
    from t2i_ray.train.method import data_parallel_columns, parameter_columns

    paths = RunPaths.of(ident.cfg)
    row_data = store.make_row(
        run_name=ident.run_name, sweep=config["experiment"], row=ident.row, seed=ident.seed, status=status,
        error=error, wall_time_s=wall_time_s, config=ident.cfg.to_dict(), metrics=metrics,
        version=config["code_version"],
        extra={"checkpoint_path": checkpoint_path, "curves_path": str(paths.curve(ident.run_name)),
               "tensorboard_dir": str(paths.tensorboard(ident.run_name)), "swept": ident.swept,
               **data_parallel_columns(ident.cfg), **parameter_columns(ident.cfg, config.get("damsm_path")),
               **run_files(config.get("damsm_path"), config.get("captioner_path"), checkpoint_path),
               "reevaluation_of": ""})
    store.write_row(ident.cfg.output_dir, row_data)
    if status == "ok":
        from t2i_ray.train.runlog import write_hparams

        flat = ident.cfg.flat()
        write_hparams(paths.tensorboard(ident.run_name),
                      {"row": ident.row, "seed": ident.seed, **{k: flat[k] for k in sorted(ident.overrides)}})


def train_worker(config: dict[str, Any]) -> None:
    """The training loop's Ray Train worker function (`loop.ray_worker`), with Ray Train's ~1.5 KB
    "Reporting training result" INFO line per report off unless -v: Ray logs it under the module's
    file path rather than a `ray.train.*` logger name, so RunConfig(logging_config=...) misses it."""
    from t2i_ray.train.loop import ray_worker

    if config.get("train_log_level", "WARNING") != "INFO":
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
        # "Checkpoint successfully created at: ..." once per checkpoint (the run's log says it)
        logging.getLogger("ray.train.v2._internal.execution.storage").setLevel(logging.WARNING)
    ray_worker(config)


def train_driver(config: dict[str, Any]) -> None:
    """The Tune trainable: one training run, then its result row. The run trains in this process
    (`TuneEnv`) when the sweep chose so for its one-worker CPU trials (`config["in_trial"]`,
    `runs_in_trial`), and under a TorchTrainer (a Ray Train worker group) otherwise; either way
    the same loop, reports, checkpoints, resume and row."""
    import ray.tune

    start = time.time()
    if config.get("train_log_level", "WARNING") != "INFO":
        # a run inside the trial reports through Tune's session, whose storage logs "Checkpoint
        # successfully created at: ..." at INFO for every checkpoint (the run's own log says it)
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    ident = trial_identity(config, ray.tune.get_context().get_trial_id())
    run_name, cfg = ident.run_name, ident.cfg
    done = store.read_row(cfg.output_dir, run_name)
    same_config = done is not None and done.get("config_json") == json.dumps(cfg.to_dict(), sort_keys=True)
    if same_config and done.get("status") == "ok":
        # Its row is already written (the sweep was killed before Tune recorded the trial as
        # finished): report the stored metrics instead of training and evaluating again.
        print(f"[{run_name}] already finished (its row is in the results table): not rerun", flush=True)
        ray.tune.report({k: v for k, v in done.items() if not k.startswith(("config.", "lib."))
                         and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)},
                        # in_trial: the row's checkpoint is this trial's own, still Tune's latest; a copy
                        # reported again would replace (delete) it
                        checkpoint=None if config.get("in_trial") else _tune_checkpoint(done.get("checkpoint_path") or ""))
        return
    best_dir = f"{config['storage_path']}/{run_name}/best"  # beside Ray Train's checkpoint_* folders
    in_trial = config.get("in_trial", False) and runs_in_trial(cfg)  # False in sweeps saved before it existed
    final: dict[str, Any] = {}
    status, error, checkpoint_path, diverged, checkpoint = "ok", None, "", False, None
    try:
        if in_trial:
            from t2i_ray.train.loop import TuneEnv, run_training

            env = TuneEnv(best_dir)
            final = run_training(cfg, env, config["damsm_path"], run_name, config["captioner_path"])
            checkpoint = env.last_checkpoint
        else:
            final, checkpoint = _fit_worker_group(config, cfg, run_name, best_dir)
        checkpoint_path = _uri(checkpoint) if checkpoint is not None else ""
        if not final.get("finished"):
            status, error = "error", "training ended without final evaluation metrics"
    except Exception as exc:  # the row records the failure; Tune marks the trial errored below
        error, diverged = failure_reason(exc)
        status = "error"
    write_trial_row(ident, config, status=status, error=error, wall_time_s=time.time() - start, metrics=final,
                    checkpoint_path=checkpoint_path)
    if diverged:
        # A finished (failed) result, not a crash: Tune records the trial as done, the sweep goes
        # on, and --resume does not rerun it (it would diverge again).
        ray.tune.report({"diverged": 1})
        return
    if status != "ok":
        raise RuntimeError(f"trial {run_name} failed: {error}")
    # With the evaluated checkpoint, so that Tune's best_checkpoint / ResultGrid.get_best_result(...)
    # .checkpoint is the trial's model (Tune copies it into the trial's folder once). In the trial
    # itself the loop has already reported that checkpoint to Tune: the metrics alone, not a copy.
    ray.tune.report({k: v for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)},
                    checkpoint=None if in_trial else checkpoint)


def runs_in_trial(cfg: ExperimentConfig) -> bool:
    """Whether a trial of `cfg` can train inside its Tune trial, without a Ray Train worker group:
    one CPU worker needs no process group, so a TorchTrainer would only add its start-up (worker
    actors, placement group, controller: seconds per trial, benchmarks/trial_overhead.py). GPU
    trials keep the TorchTrainer (its NCCL and device set-up)."""
    return cfg.train.num_workers == 1 and not cfg.train.use_gpu


def _fit_worker_group(config: dict[str, Any], cfg: ExperimentConfig, run_name: str, best_dir: str):
    """(final metrics, last checkpoint) of the trial's run under a TorchTrainer (its worker group);
    raises what the workers raised."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    log_level = config.get("train_log_level", "WARNING")
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"experiment": cfg.to_dict(), "damsm_path": config["damsm_path"],
                           "captioner_path": config["captioner_path"], "run_name": run_name,
                           "train_log_level": log_level, "best_dir": best_dir},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=config["worker_resources"]),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=config["storage_path"], callbacks=[TuneReportCallback()],
            # WARNING hides Ray Train's per-report INFO lines (~1.5 KB each); -v shows them.
            logging_config=ray.LoggingConfig(log_level=log_level),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=config["max_failures"])),
    )
    result = trainer.fit()
    return dict(result.metrics or {}), result.checkpoint


def run_files(damsm_path: str | None, captioner_path: str | None, checkpoint_path: str) -> dict[str, str]:
    """What a results row names so that its checkpoint can be sampled from and re-evaluated alone:
    the DAMSM folder (frozen text encoder + vocabulary), the captioner of l4 and the vocabulary."""
    meta = Path(damsm_path) / "meta.json" if damsm_path else None
    fingerprint = json.loads(meta.read_text())["vocab_fingerprint"] if meta and meta.is_file() else ""
    return {"damsm_path": damsm_path or "", "captioner_path": captioner_path or "", "vocab_fingerprint": fingerprint,
            "vocab_path": f"{checkpoint_path}/vocab.json" if checkpoint_path else ""}


def _uri(checkpoint) -> str:
    """A Train checkpoint's location as one string: a local path, or scheme://path on an object store."""
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        return checkpoint.path
    return f"{checkpoint.filesystem.type_name}://{checkpoint.path}"


def _tune_checkpoint(path: str):
    """The Tune checkpoint of an already finished trial's row (None when its folder is gone)."""
    import ray.tune

    if not path or ("://" not in path and not Path(path).is_dir()):
        return None
    return ray.tune.Checkpoint(path)


def storage_root(output_dir: Path, storage_path: str | None) -> str:
    """Ray's storage (Tune state, Train checkpoints): a local folder or a URI (s3://, gs://)."""
    if not storage_path:
        return str(RunPaths(output_dir).ray)
    return storage_path.rstrip("/") if "://" in storage_path else str(Path(storage_path).resolve())


def experiment_path(spec: SweepSpec, storage_path: str | None = None) -> str:
    output_dir = Path(spec.base.output_dir).resolve()
    return f"{storage_root(output_dir, storage_path)}/tune/{spec.name}"


def check_resumable(spec: SweepSpec, storage_path: str | None = None) -> str:
    """The saved experiment's path; ResumeError (naming what exists) when there is none."""
    from ray import tune

    path = experiment_path(spec, storage_path)
    if tune.Tuner.can_restore(path):
        return path
    parent = Path(path).parent
    others = sorted(p.name for p in parent.glob(f"{spec.sweep}-*") if (p / "tuner.pkl").is_file()
                    and ".unreadable" not in p.name) \
        if "://" not in path and parent.is_dir() else []
    hint = (f"; saved sweeps of {spec.sweep} there: {', '.join(others)} (the name is a hash of the "
            f"sweep's settings: resume with the options that started it)") if others else ""
    raise ResumeError(f"--resume: no saved sweep {spec.name} at {path}, so there is nothing to resume"
                      f"{hint}. Run without --resume to start it")


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _fs(path: str):
    """(pyarrow filesystem, path inside it) for a local folder or a storage URI (s3://, gs://)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))


def _exists(path: str) -> bool:
    import pyarrow.fs

    fs, inner = _fs(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def _remove(path: str) -> None:
    if _exists(path):
        fs, inner = _fs(path)
        fs.delete_dir(inner)


def _set_aside(path: str) -> str:
    """Rename an unreadable experiment folder to `<name>.unreadable[-k]` (nothing is deleted)."""
    k, target = 1, f"{path}.unreadable"
    while _exists(target):
        k += 1
        target = f"{path}.unreadable-{k}"
    fs, inner = _fs(path)
    try:
        fs.move(inner, _fs(target)[1])
    except OSError as exc:  # object stores may not rename folders
        raise ResumeError(f"the saved state at {path} cannot be read and cannot be set aside ({exc}); "
                          f"delete {path} and run the command again (finished trials keep their rows "
                          f"in the results table and are not rerun)") from None
    return target


def restore_experiment(spec: SweepSpec, exp_path: str, trainable, output_dir: Path,
                       log: Callable[[str], None]):
    """The saved Tune experiment at `exp_path` restored, or None when a new one must be started.

    Unreadable state (e.g. a 0-byte tuner.pkl left by a crash while Tune saved it) is never
    "resumed" into the same error on every rerun: it is set aside as `<name>.unreadable` and the
    sweep starts over, which loses nothing in a grid sweep (trials whose row is in the results
    table are reported from it, unfinished ones continue from their Train checkpoints, which live
    under <storage>/train). An Optuna sweep with finished trials would lose its study, so that
    case stops with one message naming the folder and the choice.
    """
    from ray import tune

    if not tune.Tuner.can_restore(exp_path):
        return None
    try:
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    except Exception as exc:  # any unreadable state: EOFError, UnpicklingError, missing files...
        reason = f"{type(exc).__name__}: {exc}"
    else:
        log(f"[sweep] resuming {exp_path}: finished trials are kept, unfinished ones continue")
        return tuner
    rows = store.load_results(output_dir, sweep=spec.name)
    finished = int((rows["status"] == "ok").sum()) if len(rows) else 0
    if spec.search != "grid" and finished:
        raise ResumeError(
            f"the saved state of sweep {spec.name} at {exp_path} cannot be read ({reason}), and "
            f"{finished} of its trials had finished (their rows are in {store.results_dir(output_dir)} "
            f"and stay there; its Optuna trials stay in {RunPaths(output_dir).optuna_db}, study {spec.name}). "
            f"Tune cannot continue this search: move or delete {exp_path} to start a new one under the "
            f"same name (its sampler then also learns from the stored study's trials), or restore that "
            f"folder from a backup")
    moved = _set_aside(exp_path)
    log(f"[sweep] the saved state at {exp_path} cannot be read ({reason}); starting the sweep over "
        f"(set aside as {moved}). {finished} finished trial(s) keep their rows and are not rerun; "
        f"unfinished ones continue from their last checkpoint")
    return None


def _free_port() -> int:
    """A TCP port free right now on this machine (for the private Ray instance's dashboard)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def optuna_storage(output_dir: Path):
    """The Optuna storage of every Optuna sweep of an output folder: SQLite `<output_dir>/optuna.db`,
    one study per sweep (named after it), readable with `optuna.load_study` and optuna-dashboard.
    Only the sweep driver writes it (the searcher runs there), so SQLite's locking suffices."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{RunPaths(output_dir).optuna_db}")


def build_scheduler(spec: SweepSpec):
    """Tune's scheduler for the spec: ASHA over training steps, or None (every trial runs to the end)."""
    if not spec.scheduler:
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    # Rungs at grace * reduction^k below the last step, and no stop at max_t: a trial whose training
    # is done always gets its final evaluation (ASHA would otherwise stop it at its last report).
    return ASHAScheduler(time_attr="step", metric=s["metric"], mode=s["mode"], max_t=s["max_t"] - 1,
                         grace_period=s["grace"], reduction_factor=s["reduction"], stop_last_trials=False)


def run_sweep(spec: SweepSpec, *, address: str | None = None, max_concurrent: int | None = None,
              resume: bool = False, storage_path: str | None = None, verbose: bool = False,
              worker_group: str = "auto", log: Callable[[str], None] = console) -> pd.DataFrame:
    """Run (or resume) a sweep and return its rows from the results table.

    Without `resume`, a saved experiment of the same name is resumed when there is one and a new
    one started otherwise; with `resume=True` a missing one is an error (ResumeError), raised
    before any work. Either way finished trials are not rerun and unfinished ones continue from
    their last checkpoint. `verbose` keeps Ray Train's INFO lines (one per report).
    `worker_group`: "auto" trains one-worker CPU trials inside their Tune trial (`runs_in_trial`)
    and the others under a TorchTrainer; "always" gives every trial a TorchTrainer (to measure it).
    """
    if worker_group not in ("auto", "always"):
        raise ValueError(f"worker_group must be 'auto' or 'always', got {worker_group!r}")
    import ray
    from ray import tune

    from t2i_ray.sweep.progress import TrialProgress

    base = spec.base
    output_dir = Path(base.output_dir).resolve()
    check_output_dir(output_dir)
    check_shared_pretraining(spec)
    if resume:
        check_resumable(spec, storage_path)
    storage = storage_root(output_dir, storage_path)
    paths = {"output_dir": str(output_dir)}
    for key in ("data_root", "cache_dir"):  # workers run in other working directories
        if getattr(base.data, key):
            paths[f"data.{key}"] = str(Path(getattr(base.data, key)).expanduser().resolve())
    base = apply_overrides(base, paths)
    from t2i_ray.eval.evaluate import eval_asset_overrides

    # Refuse before any training; pin $T2I_INCEPTION_WEIGHTS / $T2I_CLIP_* into the config, which
    # workers on other nodes receive.
    base = apply_overrides(base, eval_asset_overrides(base))
    # Intermediate training reports carry losses, not the final metric the searcher optimises.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Ray Train's print patch tees worker prints to both the (wrapped) stdout and its logger, so
    # every progress line reached the console twice; plain prints still land in the worker logs.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not verbose:  # Tune's own experiment banner (it names a TensorBoard folder this project does not use)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address)
        else:
            # address="local": always a new private instance, never a cluster or another sweep's
            # Ray already running on this machine (with two of them, Ray's default address
            # resolution fails with "Found multiple active Ray instances").
            # Ray Train's PlacementGroupCleaner finds the cluster through the dashboard's address;
            # with another Ray instance on the machine its lookup fails ("Found multiple active Ray
            # instances") and the placement group of a trial that ASHA stopped is never freed, so the
            # next trials wait for its CPUs until they time out. Naming the address avoids the lookup.
            from ray._common.network_utils import get_localhost_ip  # the dashboard's default host

            port = _free_port()
            ray.init(address="local", num_cpus=os.cpu_count(), object_store_memory=512 * 1024**2,
                     dashboard_port=port,
                     runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                                               "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                                               "RAY_API_SERVER_ADDRESS": f"http://{get_localhost_ip()}:{port}"}})
    res = ray.cluster_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    n_trials = len(spec.grid) if spec.search == "grid" else spec.num_trials
    fit = fit_resources(res.get("CPU", 0), res.get("GPU", 0), base.train.num_workers,
                        base.train.cpus_per_worker, base.train.use_gpu, n_trials, nodes=nodes)
    concurrency = min(fit.max_concurrent, max_concurrent or fit.max_concurrent)
    in_trial = worker_group == "auto" and runs_in_trial(base)
    log(f"[sweep] {spec.name}: {n_trials} trials, {concurrency} at a time, "
        f"{base.train.num_workers} worker(s)/trial with {fit.worker_resources} each"
        f"{' (in the Tune trial, no worker group)' if in_trial else ''} "
        f"(cluster: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs on {len(nodes)} node(s))")
    # after the fit check: a sweep that cannot fit fails at once
    assets = prepare_assets(base, log, need_captioner=needs_captioner(spec))
    param_space: dict[str, Any] = {
        "base": base.to_dict(), **assets, "experiment": spec.name,
        "storage_path": f"{storage}/train", "worker_resources": fit.worker_resources,
        "max_failures": spec.max_failures, "code_version": store.code_version(),
        "train_log_level": "INFO" if verbose else "WARNING", "in_trial": in_trial,
    }
    tune_kwargs: dict[str, Any] = {"max_concurrent_trials": concurrency, "scheduler": build_scheduler(spec)}
    if spec.search == "grid":
        param_space["trial"] = tune.grid_search(spec.grid)
    else:
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        from t2i_ray.sweep.space import tune_domain

        param_space.update({key: tune_domain(rng) for key, rng in (spec.optuna_space or {}).items()})
        metric, mode = ((["fid", "r_precision"], ["min", "max"]) if spec.objective == "both"
                        else (spec.objective, "min" if spec.objective == "fid" else "max"))
        # The study lives in <output_dir>/optuna.db under the sweep's name (optuna.load_study reads
        # it); on --resume Tune restores this searcher, which goes on writing to the same study.
        searcher = OptunaSearch(metric=metric, mode=mode, sampler=TPESampler(seed=base.seed),
                                study_name=spec.name, storage=optuna_storage(output_dir))
        tune_kwargs.update(search_alg=searcher, num_samples=spec.num_trials)
    # A trial that trains in its own process holds its worker's resources (and may run on any node);
    # one that drives a worker group holds only a driver's sliver.
    trainable = tune.with_resources(train_driver, {"cpu": fit.worker_resources["CPU"]} if in_trial
                                    else driver_resources(res))
    exp_path = f"{storage}/tune/{spec.name}"
    # With num_to_keep=1 (below) every checkpoint of an in-trial trial forces a snapshot of Tune's
    # experiment state, and Tune warns (three lines each time) when that happens twice within 5 s,
    # as it does whenever two trials checkpoint together: expected here, so the warning is off
    # unless the user set its threshold (ray/tune/execution/experiment_state.py).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    tuner = restore_experiment(spec, exp_path, trainable, output_dir, log)
    if tuner is None:
        existed = _exists(exp_path)
        try:
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(trial_dirname_creator=_trial_dirname, **tune_kwargs),
                run_config=tune.RunConfig(
                    name=spec.name, storage_path=f"{storage}/tune", verbose=0,
                    callbacks=[TrialProgress(n_trials)],
                    # A trial that trains in itself (in_trial) reports its intermediate checkpoints
                    # to Tune: keep only the last, the evaluated one with the final metrics (Tune's
                    # best_checkpoint reads every kept checkpoint's metrics).
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    # A trial driver lost with its node (or crashed) is restarted; its Train run
                    # then resumes from its last checkpoint (same run name).
                    failure_config=tune.FailureConfig(max_failures=spec.max_failures)))
        except BaseException:
            # Tune opens tuner.pkl before it pickles its state: a failure there leaves a 0-byte
            # file that would make every rerun "restore" an unreadable experiment.
            if not existed:
                _remove(exp_path)
            raise
    tuner.fit()
    return store.load_results(output_dir, sweep=spec.name)


SUMMARY_METRICS = ("fid", "kid", "r_precision", "attr_pair_recall", "layout_miou", "semantic_recall",
                   "semantic_precision", "fsd", "wall_time_s")


def summarize(rows: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Mean and std over seeds per ablation row (finished trials only)."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    cols = [c for c in SUMMARY_METRICS if c in ok.columns]
    agg = ok.groupby("row")[cols].agg(["mean", "std"])
    agg.insert(0, ("n_seeds", ""), ok.groupby("row")["seed"].nunique())
    if order:  # the given order first, then any other rows (e.g. `joint l=0.5`) as they come
        agg = agg.reindex([r for r in order if r in agg.index] + [r for r in agg.index if r not in order])
    return agg


def significance_lines(rows: pd.DataFrame, baseline: str, alpha: float = 0.05) -> list[str]:
    """Each other row against `baseline` (the script's first row), per metric of the table: the
    difference of the means with Welch's p and, where the rows share seeds, the paired p
    (analysis.stats.compare_to_baseline; rows of one seed start from the same weights). Empty when
    the baseline has fewer than 2 finished seeds; a metric whose provenance differs between rows
    (analysis refuses to compare it) is named with the reason."""
    from analysis.stats import compare_to_baseline

    ok = rows[rows["status"] == "ok"]
    if ok.empty or (ok["row"] == baseline).sum() < 2 or ok["row"].nunique() < 2:
        return []
    metrics = [m for m in SUMMARY_METRICS if m != "wall_time_s" and m in ok.columns
               and ok.loc[ok["row"] == baseline, m].notna().sum() >= 2]
    found: dict[str, list[str]] = {}
    tested: set[str] = set()  # metrics with a p-value in some row
    for m in metrics:
        try:
            with warnings.catch_warnings():  # scipy's precision warning on (nearly) equal values
                warnings.simplefilter("ignore", RuntimeWarning)
                welch = compare_to_baseline(ok, baseline=baseline, metric=m, test="welch", alpha=alpha)
                paired = compare_to_baseline(ok, baseline=baseline, metric=m, test="paired", alpha=alpha)
            welch, paired = welch.set_index("row"), paired.set_index("row")
        except ValueError as exc:
            found.setdefault("", []).append(f"{m}: not compared ({str(exc).splitlines()[0]})")
            continue
        for row, w in welch.iterrows():
            if not math.isfinite(w["diff"]):
                continue
            pr = paired.loc[row]
            if not (math.isfinite(w["p_value"]) or math.isfinite(pr["p_value"])):
                why = w["note"] or pr["note"] or "test undefined"
                found.setdefault(row, []).append(f"{m} {w['diff']:+.3g} (no test: {why})")
                continue
            tested.add(m)
            cell = f"{m} {w['diff']:+.3g} (Welch p {w['p_value']:.2g}"
            if math.isfinite(pr["p_value"]):
                cell += f", paired p {pr['p_value']:.2g} over {int(pr['n'])} seeds"
            star = (math.isfinite(w["p_value"]) and w["p_value"] < alpha) or \
                (math.isfinite(pr["p_value"]) and pr["p_value"] < alpha)
            found.setdefault(row, []).append(cell + (")*" if star else ")"))
    if not found:
        return []
    lines = [f"Against {baseline} (difference of the means; * p < {alpha:g} for that metric alone, not "
             f"corrected for the {len(tested)} metrics tested):" if len(tested) > 1 else
             f"Against {baseline} (difference of the means; * p < {alpha:g}):"]
    lines += [f"  {row}: " + "; ".join(cells) for row, cells in found.items() if row]
    lines += [f"  {cell}" for cell in found.get("", [])]
    return lines


def format_table(summary: pd.DataFrame) -> str:
    """Markdown: one line per row, `mean ± std` per metric (FID/KID lower, the rest higher is better);
    rows with a single seed show the mean only."""
    if summary.empty:
        return "(no finished trials)"
    metrics = [m for m in SUMMARY_METRICS if (m, "mean") in summary.columns]
    arrows = {"fid": " ↓", "kid": " ↓", "r_precision": " ↑", "attr_pair_recall": " ↑", "layout_miou": " ↑",
              "semantic_recall": " ↑", "semantic_precision": " ↑", "fsd": " ↓", "wall_time_s": ""}
    lines = ["| row | seeds | " + " | ".join(m + arrows[m] for m in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for row, vals in summary.iterrows():
        cells = []
        for m in metrics:
            mean, std = vals[(m, "mean")], vals[(m, "std")]
            digits = 1 if m == "wall_time_s" else 4 if m == "kid" else 3
            # One seed has no spread: print the mean alone rather than a made-up "± 0".
            if pd.isna(mean):  # a metric this row's method does not produce (image-only: no layouts)
                cells.append("–")
                continue
            cells.append(f"{mean:.{digits}f}" + ("" if pd.isna(std) else f" ± {std:.{digits}f}"))
        lines.append(f"| {row} | {int(vals[('n_seeds', '')])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
