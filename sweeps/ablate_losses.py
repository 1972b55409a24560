"""Loss-weight ablation (seed paper 001): L = L_G + l1*DAMSM + l2*F2R + l3*F2F on DF-GAN.

    python sweeps/ablate_losses.py                      # local preset, grid of 6 rows x 2 seeds
    python sweeps/ablate_losses.py --preset smoke       # a few minutes on a laptop CPU
    python sweeps/ablate_losses.py --search optuna --trials 16 --objective both
Rerunning the same command resumes the sweep. See README.md for every option.
"""
from __future__ import annotations

from pathlib import Path

from t2i_ray.config import ConfigError, apply_overrides, build_config
from t2i_ray.sweep.cli import base_parser, config_from_args, fail, report_locations, seeds_for
from t2i_ray.sweep.space import DEFAULT_WEIGHTS, LOSS_ROWS, WEIGHT_KEYS, loss_row_overrides, optuna_space


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--search", choices=["grid", "optuna"], default="grid",
                   help="grid: the ablation rows x seeds; optuna: TPE over continuous l1, l2, l3")
    p.add_argument("--rows", nargs="+", choices=list(LOSS_ROWS), default=list(LOSS_ROWS),
                   help="ablation rows (grid search)")
    p.add_argument("--l1", type=float, default=DEFAULT_WEIGHTS["l1"], help="DAMSM weight when on")
    p.add_argument("--l2", type=float, default=DEFAULT_WEIGHTS["l2"], help="F2R weight when on")
    p.add_argument("--l3", type=float, default=DEFAULT_WEIGHTS["l3"], help="F2F weight when on")
    p.add_argument("--trials", type=int, default=8, help="optuna: number of trials")
    p.add_argument("--objective", choices=["fid", "r_precision", "both"], default="fid",
                   help="optuna: metric to optimise (both: multi-objective FID min, R-precision max)")
    args = p.parse_args(argv)
    weights = {"l1": args.l1, "l2": args.l2, "l3": args.l3}
    try:
        for name, w in weights.items():
            if not w >= 0:
                raise ConfigError(f"--{name}: loss weight must be >= 0, got {w}")
        base = config_from_args(args)
        # The swept weights come from the rows (--l1/--l2/--l3) or Optuna: a value set in --config or
        # --set would be silently replaced, so it is refused.
        preset = build_config(args.preset)
        for name, key in WEIGHT_KEYS.items():
            field = key.split(".")[1]
            if getattr(base.loss, field) != getattr(preset.loss, field):
                raise ConfigError(f"{key}: set per ablation row by this sweep; pass --{name} (the weight a row "
                                  f"uses when its term is on) instead of setting {key} in --config/--set")
        seeds = list(seeds_for(args))
        grid = [{"row": row, "seed": s, "overrides": loss_row_overrides(row, weights)}
                for row in args.rows for s in seeds]
        for trial in grid:  # validate every trial's config before Ray starts
            apply_overrides(base, {**trial["overrides"], "seed": trial["seed"]})
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    except ConfigError as exc:
        fail(str(exc))
    from t2i_ray.sweep.run import ResumeError, SweepSpec, format_table, run_sweep, summarize

    spec = SweepSpec(sweep="ablate_losses", base=apply_overrides(base, {"seed": seeds[0]}),
                     search=args.search, grid=grid,
                     optuna_space=optuna_space() if args.search == "optuna" else None,
                     num_trials=args.trials, objective=args.objective)
    if args.dry_run:
        print(f"[dry-run] experiment {spec.name}")
        for t in (grid if args.search == "grid" else []):
            print(f"  {t['row']:<10} seed {t['seed']}  {t['overrides']}")
        if args.search == "optuna":
            print(f"  {args.trials} Optuna TPE trials over {list(spec.optuna_space)}")
        return
    try:
        rows = run_sweep(spec, address=args.address, max_concurrent=args.max_concurrent, resume=args.resume,
                         storage_path=args.storage_path)
    except (ConfigError, ResumeError) as exc:
        fail(str(exc))
    order = list(LOSS_ROWS) + ["optuna"]
    table = format_table(summarize(rows, order))
    out = Path(base.output_dir) / "tables"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.name}.md").write_text(table + "\n")
    rows.to_csv(out / f"{spec.name}.csv", index=False)
    failed = rows[rows["status"] != "ok"]
    print(f"\nLoss ablation ({spec.name}; mean ± std over seeds; FID/KID on the domain evaluator, "
          f"R-precision with the DAMSM encoders):\n{table}")
    if len(failed):
        print(f"\n{len(failed)} trial(s) failed: " + "; ".join(f"{r.run_name}: {r.error}" for r in failed.itertuples()))
    print(f"\ntable: {out / (spec.name + '.md')} (+ .csv with every trial)\n"
          + report_locations(base.output_dir, spec.name, args.storage_path))


if __name__ == "__main__":
    main()
