"""Loss-weight ablation (seed paper 001): L = L_G + l1*DAMSM + l2*F2R + l3*F2F + l4*recap.

    python sweeps/ablate_losses.py                      # laptop design: SSA-GAN without / with its DAMSM term x 3 seeds
    python sweeps/ablate_losses.py --table cub          # Table 1's SSAGAN and SSAGAN + CL (R2F+F2F) (laptop design)
    python sweeps/ablate_losses.py --all-rows           # every row of Table 1 (each with its architecture)
    python sweeps/ablate_losses.py --table coco         # Table 2's rows
    python sweeps/ablate_losses.py --table one-factor   # each term added alone to DF-GAN: 6 rows x 2 seeds
    python sweeps/ablate_losses.py --preset smoke       # a few minutes on a laptop CPU
    python sweeps/ablate_losses.py --rows baseline +recap all
    python sweeps/ablate_losses.py --search optuna --trials 16 --objective both
Rerunning the same command resumes the sweep. See README.md for every option.
"""
from __future__ import annotations

import argparse

from t2i_ray.config import ConfigError, apply_overrides
from t2i_ray.sweep.cli import (add_weight_args, base_parser, config_from_args, given_keys, grid_trials,
                               seeds_for, sweep_main, weights_from_args)
from t2i_ray.sweep.run import SweepSpec
from t2i_ray.sweep.space import (DEFAULT_LOSS_ROWS, LOSS_ROWS, PAPER_TABLES, default_paper_rows, loss_row_overrides,
                                 optuna_space, paper_row_overrides, paper_rows)

TABLES = ("one-factor", *PAPER_TABLES)

# The laptop design of the main job (the `local` preset on the built-in `shapes`; README "Run the
# main job"), sized so that `python sweeps/ablate_losses.py` finishes in about 20 minutes on 2 CPU
# cores with the most learning per minute found (named colours, and the named shape in about half of
# the images). What each setting buys, measured: benchmarks/README.md "Can a 20-minute laptop sweep
# draw shapes?". Below the user's --config/--set.
LAPTOP_DEFAULTS: dict[str, object] = {
    "data.max_objects": 1,  # one object per image (1..3 at 300 steps: colour patches)
    # 3x the `local` preset's rates (12x / 6x DF-GAN's 1e-4 / 4e-4): oracle pair recall 0.52 on
    # average at 1,750 steps over 4 seeds, where 2x reached 0.41 on the same seeds and the preset's
    # rates ~0.26 at 1,250 (benchmarks/README.md "Three times the preset's rates")
    "train.lr_g": 1.2e-3, "train.lr_d": 2.4e-3,
    "train.steps": 1750, "train.report_every": 125, "train.checkpoint_every": 250, "eval.every": 250,
    # bf16 autocast where the CPU computes bf16 natively (AVX512-BF16 / AMX: ~1.2x the images/s of
    # float32 here, the same learning curve), float32 elsewhere; the rows record it (`amp_dtype`)
    "train.amp": "native",
    # the model of --table one-factor (the default below): SSA-GAN, the seed paper's own backbone
    "model.arch": "ssagan",
}
# Its rows when no --table / --rows is given: SSA-GAN without and with its 0.05 x DAMSM term (`+DAMSM`
# is Table 1's SSAGAN row), the loss term whose effect 20 minutes resolve: over 3 seeds it is ~0.35
# of pair recall and ~0.3 of R-precision, where the contrastive rows of Table 1 differ from SSAGAN by
# ~0.05 of recall, which 4 seeds did not separate (p 0.26; benchmarks/README.md "What 20 minutes can
# separate"). `--table cub` runs that comparison: LAPTOP_CUB_ROWS.
LAPTOP_ROWS = ("baseline", "+DAMSM")
LAPTOP_CUB_ROWS = ("SSAGAN", "SSAGAN + CL (R2F+F2F)")
LAPTOP_SEEDS = (0, 1, 2)  # two seeds are too few for Welch's or the paired t-test at these effects


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--table", choices=TABLES, default=None,
                   help="cub / coco: the rows of the seed paper's Table 1 / Table 2 by their paper names, each "
                        "with its own architecture, loss terms and (AttnGAN) optimiser recipe (default with --search grid: cub's SSA-GAN rows; README \"The papers' "
                        "tables\"); one-factor: each term added alone to the model of --set model.arch "
                        "(DF-GAN by default)")
    p.add_argument("--search", choices=["grid", "optuna"], default="grid",
                   help="grid: the ablation rows x seeds; optuna: TPE over continuous l1, l2, l3, l4")
    p.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                   help=f"a subset of the table's rows; cub / coco: the paper's row names, quoted (e.g. "
                        f"'SSAGAN + CL (F2F)'; default: cub's SSA-GAN rows, all of coco's); one-factor: "
                        f"{', '.join(LOSS_ROWS)} (default: all but +recap; naming only these rows selects "
                        f"--table one-factor)")
    p.add_argument("--all-rows", action="store_true",
                   help="every row of the table whose architecture is built (cub: all of Table 1)")
    add_weight_args(p)
    p.add_argument("--trials", type=int, default=8, help="optuna: number of trials")
    p.add_argument("--objective", choices=["fid", "r_precision", "both"], default="fid",
                   help="optuna: metric to optimise (both: multi-objective FID min, R-precision max)")
    return p.parse_args(argv)


def is_laptop(args: argparse.Namespace, base) -> bool:
    """The laptop design applies: the `local` preset on the built-in `shapes` (base: the built config)."""
    return args.preset == "local" and base.data.dataset == "shapes"


def resolve_table(args: argparse.Namespace, laptop: bool) -> str:
    """The --table a command means: the given one; without it, one model's weights (one-factor) for
    Optuna, when --rows names one-factor rows only (the row names of the tables are distinct) and in
    the laptop design without --rows; otherwise Table 1's rows."""
    if args.table is not None:
        return args.table
    if args.rows:
        return "one-factor" if all(r in LOSS_ROWS for r in args.rows) else "cub"
    return "one-factor" if args.search == "optuna" or laptop else "cub"


def table_rows(args: argparse.Namespace, table: str, weights, arch: str, fixed: dict[str, str],
               laptop: bool = False) -> dict[str, dict]:
    """Row label -> config overrides of `table` and --rows (ConfigError on an unknown row); `fixed`:
    the keys given with --set/--config, which win over an architecture's recipe; `laptop`: the laptop
    design (LAPTOP_ROWS without --table, LAPTOP_CUB_ROWS for --table cub)."""
    try:
        if args.rows and args.all_rows:
            raise ValueError("give either --rows or --all-rows")
        if table == "one-factor":
            default = LAPTOP_ROWS if laptop and args.table is None else DEFAULT_LOSS_ROWS
            names = list(LOSS_ROWS) if args.all_rows else args.rows or list(default)
            return {row: loss_row_overrides(row, weights, arch) for row in names}
        default = list(LAPTOP_CUB_ROWS) if table == "cub" and laptop else default_paper_rows(table)
        names = paper_rows(table) if args.all_rows else args.rows or default
        return {row: paper_row_overrides(table, row, weights, fixed) for row in names}
    except ValueError as exc:
        raise ConfigError(f"--rows: {exc}") from exc


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The sweep the arguments describe, every trial validated (raises ConfigError)."""
    weights = weights_from_args(args)
    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    base = config_from_args(args, dataset_defaults={"shapes": LAPTOP_DEFAULTS} if args.preset == "local" else None)
    laptop = is_laptop(args, base)
    table = resolve_table(args, laptop)
    if args.search == "optuna" and table != "one-factor":
        raise ConfigError(f"--search optuna tunes the loss weights of one model; it does not combine with "
                          f"--table {table} (drop --table, and pick the model with --set model.arch=...)")
    fixed = given_keys(args)  # reads --config once
    if table != "one-factor" and "model.arch" in fixed:
        raise ConfigError(f"model.arch ({fixed['model.arch']}): every row of --table {table} "
                          f"trains its own paper architecture, so model.arch has no effect there; pick rows "
                          f"with --rows, or use --table one-factor to add the loss terms to one model")
    seeds = list(LAPTOP_SEEDS if laptop and args.seeds is None else seeds_for(args))
    grid = grid_trials(base, table_rows(args, table, weights, base.model.arch, fixed, laptop), seeds)
    return SweepSpec(sweep="ablate_losses", base=apply_overrides(base, {"seed": seeds[0]}),
                     search=args.search, grid=grid,
                     optuna_space=optuna_space(arch=base.model.arch) if args.search == "optuna" else None,
                     num_trials=args.trials, objective=args.objective)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    order = [*LOSS_ROWS, *(r for t in PAPER_TABLES.values() for r in t), "optuna"]

    def title(spec: SweepSpec) -> str:  # the table the built sweep runs
        table = resolve_table(args, is_laptop(args, spec.base))
        return "Loss ablation" + ("" if table == "one-factor" else f" (seed paper 001, Table "
                                                                  f"{1 if table == 'cub' else 2} rows)")

    sweep_main(args, build_spec, order=list(dict.fromkeys(order)), title=title)


if __name__ == "__main__":
    main()
