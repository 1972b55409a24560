"""Loss-weight ablation (seed paper 001): L = L_G + l1*DAMSM + l2*F2R + l3*F2F + l4*recap on DF-GAN.

    python sweeps/ablate_losses.py                      # local preset, grid of 6 rows x 2 seeds
    python sweeps/ablate_losses.py --preset smoke       # a few minutes on a laptop CPU
    python sweeps/ablate_losses.py --rows baseline +recap all
    python sweeps/ablate_losses.py --search optuna --trials 16 --objective both
Rerunning the same command resumes the sweep. See README.md for every option.
"""
from __future__ import annotations

import argparse

from t2i_ray.config import ConfigError, apply_overrides
from t2i_ray.sweep.cli import (add_weight_args, base_parser, config_from_args, grid_trials, seeds_for,
                               sweep_main, weights_from_args)
from t2i_ray.sweep.run import SweepSpec
from t2i_ray.sweep.space import DEFAULT_LOSS_ROWS, LOSS_ROWS, loss_row_overrides, optuna_space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--search", choices=["grid", "optuna"], default="grid",
                   help="grid: the ablation rows x seeds; optuna: TPE over continuous l1, l2, l3, l4")
    p.add_argument("--rows", nargs="+", choices=list(LOSS_ROWS), default=list(DEFAULT_LOSS_ROWS),
                   help="ablation rows (grid search); `all` is DAMSM+F2R+F2F+recap, the paper's full model")
    add_weight_args(p)
    p.add_argument("--trials", type=int, default=8, help="optuna: number of trials")
    p.add_argument("--objective", choices=["fid", "r_precision", "both"], default="fid",
                   help="optuna: metric to optimise (both: multi-objective FID min, R-precision max)")
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep the arguments describe, every trial validated (raises ConfigError)."""
    weights = weights_from_args(args)
    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    base = config_from_args(args)
    seeds = list(seeds_for(args))
    grid = grid_trials(base, {row: loss_row_overrides(row, weights) for row in args.rows}, seeds)
    return SweepSpec(sweep="ablate_losses", base=apply_overrides(base, {"seed": seeds[0]}),
                     search=args.search, grid=grid,
                     optuna_space=optuna_space() if args.search == "optuna" else None,
                     num_trials=args.trials, objective=args.objective)


def main(argv: list[str] | None = None) -> None:
    sweep_main(parse_args(argv), build_spec, order=list(LOSS_ROWS) + ["optuna"], title="Loss ablation")


if __name__ == "__main__":
    main()
