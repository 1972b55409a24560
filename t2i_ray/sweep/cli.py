"""Shared command line of the sweep scripts: presets, overrides, validation before Ray starts,
the grid of rows x seeds, and running a grid and printing its table."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from t2i_ray.paths import RunPaths
from t2i_ray.config import (EVAL_PROTOCOLS, PRESETS, ConfigError, ExperimentConfig, apply_overrides,
                            build_config_with_file, parse_override, protocol_overrides, read_config_file,
                            resolved_eval_backbone)

if TYPE_CHECKING:
    from t2i_ray.sweep.run import SweepSpec

DEFAULT_SEEDS = {"ci": [0], "smoke": [0], "local": [0, 1], "paper": [0, 1, 2]}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="local",
                   help="ci: seconds per trial, for tests (numbers mean nothing); smoke: ~2 min on a quiet 2-core CPU; "
                        "local: < 20 min; paper: GPU cluster scale")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds per configuration (default per preset: smoke 0; local 0 1; paper 0 1 2)")
    p.add_argument("--output-dir", default=None, help="results, checkpoints, caches, samples, logs "
                   "(default t2i_runs; on a multi-node cluster use shared storage)")
    p.add_argument("--dataset", default=None, help="shapes (built in), cub, oxford102, coco, mmceleba or "
                   "cityscapes (README: 'Using a real dataset'); same as --set data.dataset=...")
    p.add_argument("--data-root", default=None, help="folder of a real dataset (same as --set data.data_root=...)")
    p.add_argument("--resolution", type=int, default=None, help="image size: 32, 64, 128 or 256")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (data parallel) per trial")
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per Train worker")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="local TF-ported FID Inception weights (weights-inception-2015-12-05-6726825d.pth, or "
                        "the pool3 file python -m t2i_ray.eval.inception_convert writes) for "
                        "eval.backbone=inception (default: $T2I_INCEPTION_WEIGHTS); never downloaded")
    p.add_argument("--eval-protocol", choices=list(EVAL_PROTOCOLS), default=None,
                   help="apply a paper evaluation protocol (sample counts, real set, IS splits, R-precision "
                        "candidates/folds; see config.EVAL_PROTOCOLS) and hold the config to it")
    p.add_argument("--config", default=None, metavar="PATH.yaml",
                   help="YAML file of config fields (train: {steps: 300}); precedence: preset < file "
                        "< --set and the flags above")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set model.nf=32 --set eval.num_images=2048")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: local Ray")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trials, run nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep these options name; an error if there is none "
                        "(without --resume a saved sweep is resumed too, and a missing one started)")
    p.add_argument("--storage-path", default=None, metavar="PATH_OR_URI",
                   help="Ray Tune state and Train checkpoints (default <output-dir>/ray); may be "
                        "s3://bucket/prefix or gs://... on a cluster")
    return p


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None,
                     check_eval_weights: bool = True,
                     stages: tuple[str, ...] = ("train", "damsm", "captioner"),
                     defaults: dict[str, Any] | None = None) -> ExperimentConfig:
    """The validated config of the command line; with eval.backbone=inception (and
    `check_eval_weights`, off for scripts that never evaluate), the Inception weights are resolved
    here (flag, config field or $T2I_INCEPTION_WEIGHTS) and pinned into the config as an absolute
    path, so a missing file refuses before Ray or any training starts (also on --dry-run)."""
    overrides: dict[str, Any] = {}
    if getattr(args, "eval_protocol", None):
        overrides.update(protocol_overrides(args.eval_protocol))
    overrides.update(dict(parse_override(o) for o in args.overrides))
    for flag, key in (("output_dir", "output_dir"), ("dataset", "data.dataset"), ("data_root", "data.data_root"),
                      ("resolution", "data.resolution"),
                      ("steps", "train.steps"), ("num_workers", "train.num_workers"),
                      ("use_gpu", "train.use_gpu"), ("inception_weights", "eval.inception_weights")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for key in ("data.data_root", "data.cache_dir"):
        # Absolute, so that Ray workers (other working directory) and the cache keys see one path.
        if overrides.get(key):
            overrides[key] = str(Path(str(overrides[key])).expanduser().resolve())
    overrides.update(extra or {})
    cfg = build_config_with_file(args.preset, args.config, overrides, defaults)
    from t2i_ray.data.registry import check_dataset

    sizes = check_dataset(cfg.data)  # a missing or malformed real dataset fails here, before Ray (DatasetError)
    if check_eval_weights and resolved_eval_backbone(cfg) == "inception":
        from t2i_ray.eval.inception import resolve_inception_weights

        cfg = apply_overrides(cfg, {"eval.inception_weights": resolve_inception_weights(cfg.eval.inception_weights)})
    from t2i_ray.config_checks import check_inputs

    check_inputs(cfg, sizes, stages)  # paths that exist but are wrong, a real train split smaller than a batch
    return cfg


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def report_locations(output_dir: str | Path, experiment: str, storage_path: str | None = None) -> str:
    from t2i_ray.sweep.run import storage_root

    paths = RunPaths(Path(output_dir).resolve())
    ray_dir = storage_root(paths.output_dir, storage_path)
    return "\n".join([
        f"results table (one parquet file per trial): {paths.results}",
        f"checkpoints (Ray Train, per trial):         {ray_dir}/train",
        f"Tune experiment (resume state, trial logs):  {ray_dir}/tune/{experiment}",
        f"sample grids (PNG + captions JSON):          {paths.samples}",
        f"TensorBoard logs:                            tensorboard --logdir {paths.tensorboard()}",
        f"cached DAMSM encoders, evaluators, datasets: {paths.cache}",
    ])


def seeds_for(args: argparse.Namespace) -> Sequence[int]:
    return args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.preset]


def grid_trials(base: ExperimentConfig, rows: Mapping[str, Mapping[str, Any]], seeds: Sequence[int]
                ) -> list[dict[str, Any]]:
    """One trial per (row, seed), `rows` mapping a row label to its config overrides. Every
    trial's config is validated here, so a bad combination fails before Ray starts."""
    grid = [{"row": row, "seed": int(s), "overrides": dict(overrides)}
            for row, overrides in rows.items() for s in seeds]
    for trial in grid:
        try:
            apply_overrides(base, {**trial["overrides"], "seed": trial["seed"]})
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in row {trial['row']!r})") from exc
    return grid


WEIGHT_TERMS = {"l1": "DAMSM", "l2": "F2R", "l3": "F2F", "l4": "re-captioning"}


def add_weight_args(p: argparse.ArgumentParser) -> None:
    """--l1..--l4: the weight each loss term takes in the rows (or --loss-row) that turn it on."""
    from t2i_ray.sweep.space import DEFAULT_WEIGHTS

    for name, term in WEIGHT_TERMS.items():
        p.add_argument(f"--{name}", type=float, default=DEFAULT_WEIGHTS[name],
                       help=f"{term} weight when a row turns the term on")


def weights_from_args(args: argparse.Namespace) -> dict[str, float]:
    """The --l1..--l4 weights, after refusing loss weights set in --config/--set: every sweep script
    sets them per row (or per --loss-row, or by Optuna), so such a value would be silently replaced."""
    weights = {name: getattr(args, name) for name in WEIGHT_TERMS}
    for name, w in weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"--{name}: loss weight must be a finite number >= 0, got {w}")
    from t2i_ray.sweep.space import WEIGHT_KEYS

    given = {key: value for key, value in (parse_override(o) for o in args.overrides)}
    if args.config:
        given.update((k, leaf.value) for k, leaf in read_config_file(args.config).items())
    for name, key in WEIGHT_KEYS.items():
        if key in given:
            raise ConfigError(f"{key}: set per ablation row by this sweep; pass --{name} (the weight a "
                              f"row, or --loss-row, uses when its term is on) instead of setting {key} in "
                              f"--config/--set")
    return weights


def sweep_main(args: argparse.Namespace, build_spec, order: Sequence[str], title: str) -> None:
    """What every sweep script does: build and validate the spec (errors before Ray), then either
    list the trials (--dry-run) or run and report."""
    try:
        spec = build_spec(args)
    except ConfigError as exc:
        fail(str(exc))
    if args.dry_run:
        print_dry_run(spec)
        return
    run_and_report(spec, args, order=order, title=title)


def print_dry_run(spec: "SweepSpec") -> None:
    print(f"[dry-run] experiment {spec.name}")
    for t in (spec.grid if spec.search == "grid" else []):
        print(f"  {t['row']:<14} seed {t['seed']}  {t['overrides']}")
    if spec.search == "optuna":
        print(f"  {spec.num_trials} Optuna TPE trials over {list(spec.optuna_space or {})}")


def run_and_report(spec: "SweepSpec", args: argparse.Namespace, order: Sequence[str], title: str) -> None:
    """Run (or resume) the sweep, then print and write its mean ± std table and where things are."""
    from t2i_ray.sweep.run import ResumeError, format_table, run_sweep, summarize

    try:
        rows = run_sweep(spec, address=args.address, max_concurrent=args.max_concurrent, resume=args.resume,
                         storage_path=args.storage_path)
    except (ConfigError, ResumeError) as exc:
        fail(str(exc))
    table = format_table(summarize(rows, list(order)))
    out = RunPaths.of(spec.base).tables
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.name}.md").write_text(table + "\n")
    rows.to_csv(out / f"{spec.name}.csv", index=False)
    failed = rows[rows["status"] != "ok"]
    from t2i_ray.config import resolved_eval_backbone

    features = "the domain evaluator" if resolved_eval_backbone(spec.base) == "domain" else "Inception"
    print(f"\n{title} ({spec.name}; mean ± std over seeds; FID/KID on {features}, "
          f"R-precision with the DAMSM encoders):\n{table}")
    if len(failed):
        print(f"\n{len(failed)} trial(s) failed: " + "; ".join(f"{r.run_name}: {r.error}" for r in failed.itertuples()))
    print(f"\ntable: {out / (spec.name + '.md')} (+ .csv with every trial)\n"
          + report_locations(spec.base.output_dir, spec.name, args.storage_path))


__all__ = ["base_parser", "config_from_args", "fail", "report_locations", "seeds_for", "grid_trials",
           "print_dry_run", "run_and_report", "add_weight_args", "weights_from_args", "sweep_main", "ConfigError"]
