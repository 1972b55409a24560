"""Gaussian-categorical diffusion ablation (seed paper 002): joint image+layout vs image-only.

    python sweeps/ablate_diffusion.py                        # local preset: joint, image-only x 2 seeds
    python sweeps/ablate_diffusion.py --preset smoke
    python sweeps/ablate_diffusion.py --lambdas 0.5 1 2      # the joint model at several layout weights
    python sweeps/ablate_diffusion.py --guidance 1 3 5       # evaluation guidance scales (no retraining)
    python sweeps/ablate_diffusion.py --dataset cityscapes --data-root DIR --preset paper --dry-run
Both models share the U-Net, the text conditioning and the budget; image-only has no layout branch.
The first --guidance scale gives the row's main columns (fid, r_precision, ...), every other one
adds `<metric>@g<scale>` columns from the same weights. Rows go to the same results table as the
GAN sweeps. Rerunning the same command resumes. README "Gaussian-categorical diffusion".
"""
from __future__ import annotations

import argparse

from t2i_ray.config import ConfigError, apply_overrides
from t2i_ray.sweep.cli import base_parser, config_from_args, grid_trials, seeds_for, sweep_main
from t2i_ray.sweep.run import SweepSpec

# Sizes per preset, between the preset and the user's --config/--set (README "Gaussian-categorical
# diffusion" gives the throughput they come from). The GAN presets' batch and steps do not carry
# over: a diffusion step sees one noise level per image, and sampling costs sample_steps U-Net
# passes (twice with guidance) per image.
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "ci": {"diffusion.dim": 8, "diffusion.dim_mults": "1,2", "diffusion.blocks": "1,1",
           "diffusion.attention_levels": "0,1", "diffusion.heads": 2, "diffusion.timesteps": 100,
           "diffusion.sample_steps": 4, "diffusion.ema_decay": 0.9},
    "smoke": {"train.steps": 100, "train.batch_size": 16, "train.report_every": 25,
              "train.checkpoint_every": 50, "diffusion.sample_steps": 10, "eval.num_images": 128,
              "eval.batch_size": 64, "eval.kid_subset_size": 64, "eval.r_precision_folds": 2},
    "local": {"train.steps": 800, "train.batch_size": 16, "train.report_every": 100,
              "train.checkpoint_every": 200, "diffusion.lr": 4e-4, "diffusion.sample_steps": 20,
              "diffusion.outpaint_images": 16, "eval.num_images": 256, "eval.batch_size": 128,
              "eval.kid_subset_size": 128, "eval.kid_subsets": 50, "eval.r_precision_folds": 4,
              # off: each in-training evaluation would sample like the final one (README "The best checkpoint")
              "eval.every": 0},
    # GCDP's cascade: base 128 -> SR 256 (with data.aspect=2: 128x256 -> 256x512); its SR U-Net
    # attends to the text at the lowest level only (pmh9960/GCDP train.py, SR overrides)
    "paper": {"model.method": "diffusion",  # (the cascade's field is refused for a GAN: the defaults validate alone)
              "data.resolution": 256, "diffusion.base_resolution": 128, "train.batch_size": 8,
              "diffusion.dim": 128, "diffusion.dim_mults": "1,2,3,4", "diffusion.blocks": "3,3,3,3",
              "diffusion.attention_levels": "0,1,1,1", "diffusion.sr_attention_levels": "0,0,0,1",
              "diffusion.heads": 8, "diffusion.sample_steps": 100, "diffusion.ema_decay": 0.9999},
}

# Per dataset, on top of the preset's sizes (and below the user's --config/--set): the data as GCDP
# uses it (arXiv:2308.08157; README "Diffusion on Cityscapes and MM CelebA-HQ").
# Cityscapes: the whole 1:2 frame (256 x 512 from a 128 x 256 base at the paper preset) and train + val
# (3,475 images). MM CelebA-HQ: square, all captions (data.caption_subset=25/50 for -25/-50).
DATASET_DEFAULTS: dict[str, dict[str, object]] = {
    "cityscapes": {"data.aspect": 2.0, "data.trainval": True},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=["joint", "image-only"], default=["joint", "image-only"],
                   help="joint: image + layout (GCDP); image-only: the same U-Net without the layout branch")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, metavar="L",
                   help="layout-loss weights of the joint rows (default: diffusion.layout_weight, 1); several "
                        "give one joint row each")
    p.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                   help="classifier-free guidance scales scored at evaluation (default: diffusion.guidance_scale)")
    return p.parse_args(argv)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The grid of rows x seeds, every trial validated (raises ConfigError)."""
    extra: dict[str, object] = {"model.method": "diffusion"}
    if args.guidance:
        if any(not g >= 0 for g in args.guidance):
            raise ConfigError(f"--guidance: scales must be >= 0, got {args.guidance}")
        extra["diffusion.guidance_scale"] = args.guidance[0]
        extra["diffusion.extra_guidance_scales"] = ",".join(f"{g:g}" for g in args.guidance[1:])
    # No captioner stage: it serves the GANs' re-captioning loss only (loss.recap is 0 here).
    base = config_from_args(args, extra, stages=("train", "damsm"), defaults=PRESET_DEFAULTS[args.preset],
                            dataset_defaults=DATASET_DEFAULTS)
    lambdas = args.lambdas or [base.diffusion.layout_weight]
    if any(not w >= 0 for w in lambdas):
        raise ConfigError(f"--lambdas: layout weights must be >= 0, got {lambdas}")
    rows: dict[str, dict[str, object]] = {}
    for row in args.rows:
        if row == "image-only":
            rows[row] = {"diffusion.joint": False}
        else:
            for w in lambdas:
                rows["joint" if len(lambdas) == 1 else f"joint l={w:g}"] = {"diffusion.joint": True,
                                                                           "diffusion.layout_weight": w}
    seeds = list(seeds_for(args))
    grid = grid_trials(base, rows, seeds)
    return SweepSpec(sweep="ablate_diffusion", base=apply_overrides(base, {"seed": seeds[0]}), search="grid",
                     grid=grid)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sweep_main(args, build_spec, order=["joint", "image-only"], title="Diffusion ablation")


if __name__ == "__main__":
    main()
