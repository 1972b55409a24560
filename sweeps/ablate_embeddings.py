"""Text-embedding ablation (DTE-GAN, seed paper 000): pretrained vs shared vs dual on DF-GAN.

    python sweeps/ablate_embeddings.py                  # local preset, 3 modes x 2 seeds
    python sweeps/ablate_embeddings.py --preset smoke
    python sweeps/ablate_embeddings.py --loss-row +F2R --seeds 0 1 2
Every mode trains for the same number of steps with the same loss terms (`--loss-row`, default
the adversarial losses alone); README "Text-embedding modes" says what each mode trains. Rows go
to the same results table as sweeps/ablate_losses.py. Rerunning the same command resumes.
"""
from __future__ import annotations

import argparse

from t2i_ray.config import apply_overrides
from t2i_ray.sweep.cli import (add_weight_args, base_parser, config_from_args, grid_trials, seeds_for,
                               sweep_main, weights_from_args)
from t2i_ray.sweep.run import SweepSpec
from t2i_ray.sweep.space import EMBEDDING_ROWS, LOSS_ROWS, embedding_row_overrides, loss_row_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=list(EMBEDDING_ROWS), default=list(EMBEDDING_ROWS),
                   help="text-embedding modes to compare")
    p.add_argument("--loss-row", choices=list(LOSS_ROWS), default="baseline",
                   help="the loss terms every mode trains with (rows of sweeps/ablate_losses.py)")
    add_weight_args(p)
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The grid of modes x seeds at one loss row, every trial validated (raises ConfigError)."""
    weights = weights_from_args(args)
    # Every row sets its own mode; the base takes a trainable one so that text-encoder settings
    # given with --set (e.g. model.text_init_from_damsm=true) validate for the rows they concern.
    base = config_from_args(args, embedding_row_overrides("shared"))
    base = apply_overrides(base, loss_row_overrides(args.loss_row, weights, base.model.arch))
    seeds = list(seeds_for(args))
    grid = grid_trials(base, {row: embedding_row_overrides(row) for row in args.rows}, seeds)
    return SweepSpec(sweep="ablate_embeddings", base=apply_overrides(base, {"seed": seeds[0]}),
                     search="grid", grid=grid)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sweep_main(args, build_spec, order=list(EMBEDDING_ROWS),
               title=f"Text-embedding ablation (losses: {args.loss_row})")


if __name__ == "__main__":
    main()
