"""Architecture comparison: dfgan vs ssagan vs attngan_style under the same loss settings.

    python sweeps/compare_architectures.py                       # local preset, 3 architectures x 2 seeds
    python sweeps/compare_architectures.py --archs attngan style1attngan attngan_style
    python sweeps/compare_architectures.py --preset smoke
    python sweeps/compare_architectures.py --loss-row all --seeds 0 1 2
Every architecture trains for the same steps, batch and learning rates with the same loss terms
(`--loss-row`, a row of sweeps/ablate_losses.py, default the adversarial losses alone). `model.nf`
is the preset's for all of them (the papers' widths are in config.REFERENCE_NF; set
`--set model.nf=64` for the reference SSA-GAN / StyleGAN2 widths). The default compares the three
single-stage architectures; `--archs` adds `style1attngan` and plain `attngan` (which keeps its own
multi-stage BCE + KL objective, but here the shared learning rates). Rows go to the same results
table as the other sweeps. Rerunning the same command resumes.
"""
from __future__ import annotations

import argparse

from t2i_ray.config import ARCHITECTURES, apply_overrides
from t2i_ray.sweep.cli import (add_weight_args, base_parser, config_from_args, grid_trials, seeds_for,
                               sweep_main, weights_from_args)
from t2i_ray.sweep.run import SweepSpec
from t2i_ray.sweep.space import LOSS_ROWS, loss_row_overrides

DEFAULT_ARCHS = ("dfgan", "ssagan", "attngan_style")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", choices=list(ARCHITECTURES), default=list(DEFAULT_ARCHS),
                   help=f"architectures to compare (model.arch; default: {' '.join(DEFAULT_ARCHS)})")
    p.add_argument("--loss-row", choices=list(LOSS_ROWS), default="baseline",
                   help="the loss terms every architecture trains with (rows of sweeps/ablate_losses.py)")
    add_weight_args(p)
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The grid of architectures x seeds at one loss row, every trial validated (raises ConfigError)."""
    weights = weights_from_args(args)
    base = config_from_args(args, loss_row_overrides(args.loss_row, weights))
    seeds = list(seeds_for(args))
    # each architecture at its own default l1 (space.ARCH_L1) unless --l1 is given
    grid = grid_trials(base, {arch: {"model.arch": arch, **loss_row_overrides(args.loss_row, weights, arch)}
                              for arch in args.archs}, seeds)
    return SweepSpec(sweep="compare_architectures", base=apply_overrides(base, {"seed": seeds[0]}),
                     search="grid", grid=grid)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sweep_main(args, build_spec, order=list(ARCHITECTURES),
               title=f"Architecture comparison (losses: {args.loss_row})")


if __name__ == "__main__":
    main()
