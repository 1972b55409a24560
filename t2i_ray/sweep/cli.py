"""Shared command line of the sweep scripts: presets, overrides, validation before Ray starts,
the grid of rows x seeds, and running a grid and printing its table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from t2i_ray.config import PRESETS, ConfigError, ExperimentConfig, apply_overrides, build_config, parse_override

if TYPE_CHECKING:
    from t2i_ray.sweep.run import SweepSpec

DEFAULT_SEEDS = {"smoke": [0], "local": [0, 1], "paper": [0, 1, 2]}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="local",
                   help="smoke: ~3 min on a 2-core CPU; local: < 20 min; paper: GPU cluster scale")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds per configuration (default per preset: smoke 0; local 0 1; paper 0 1 2)")
    p.add_argument("--output-dir", default=None, help="results, checkpoints, caches, samples, logs "
                   "(default t2i_runs; on a multi-node cluster use shared storage)")
    p.add_argument("--resolution", type=int, default=None, help="image size: 32, 64, 128 or 256")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial")
    p.add_argument("--num-workers", type=int, default=None, help="Ray Train workers (data parallel) per trial")
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="one GPU per Train worker")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set model.nf=32 --set eval.num_images=2048")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: local Ray")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--dry-run", action="store_true", help="validate and print the trials, run nothing")
    return p


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> ExperimentConfig:
    overrides: dict[str, Any] = dict(parse_override(o) for o in args.overrides)
    for flag, key in (("output_dir", "output_dir"), ("resolution", "data.resolution"),
                      ("steps", "train.steps"), ("num_workers", "train.num_workers"),
                      ("use_gpu", "train.use_gpu")):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    overrides.update(extra or {})
    return build_config(args.preset, overrides)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def report_locations(output_dir: str | Path, experiment: str) -> str:
    out = Path(output_dir).resolve()
    return "\n".join([
        f"results table (one parquet file per trial): {out / 'results'}",
        f"checkpoints (Ray Train, per trial):         {out / 'ray' / 'train'}",
        f"Tune experiment (resume state, trial logs):  {out / 'ray' / 'tune' / experiment}",
        f"sample grids (PNG + captions JSON):          {out / 'samples'}",
        f"TensorBoard logs:                            tensorboard --logdir {out / 'tensorboard'}",
        f"cached DAMSM encoders and evaluator:         {out / 'cache'}",
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


def print_dry_run(spec: "SweepSpec") -> None:
    print(f"[dry-run] experiment {spec.name}")
    for t in (spec.grid if spec.search == "grid" else []):
        print(f"  {t['row']:<10} seed {t['seed']}  {t['overrides']}")
    if spec.search == "optuna":
        print(f"  {spec.num_trials} Optuna TPE trials over {list(spec.optuna_space or {})}")


def run_and_report(spec: "SweepSpec", args: argparse.Namespace, order: Sequence[str], title: str) -> None:
    """Run (or resume) the sweep, then print and write its mean ± std table and where things are."""
    from t2i_ray.sweep.run import format_table, run_sweep, summarize

    rows = run_sweep(spec, address=args.address, max_concurrent=args.max_concurrent)
    table = format_table(summarize(rows, list(order)))
    out = Path(spec.base.output_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.name}.md").write_text(table + "\n")
    rows.to_csv(out / f"{spec.name}.csv", index=False)
    failed = rows[rows["status"] != "ok"]
    print(f"\n{title} ({spec.name}; mean ± std over seeds; FID/KID on the domain evaluator, "
          f"R-precision with the DAMSM encoders):\n{table}")
    if len(failed):
        print(f"\n{len(failed)} trial(s) failed: " + "; ".join(f"{r.run_name}: {r.error}" for r in failed.itertuples()))
    print(f"\ntable: {out / (spec.name + '.md')} (+ .csv with every trial)\n"
          + report_locations(spec.base.output_dir, spec.name))


__all__ = ["base_parser", "config_from_args", "fail", "report_locations", "seeds_for", "grid_trials",
           "print_dry_run", "run_and_report", "ConfigError"]
