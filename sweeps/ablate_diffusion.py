"""Gaussian-categorical diffusion ablation (seed paper 002): joint image+layout vs image-only.

    python sweeps/ablate_diffusion.py                        # local preset: joint, image-only x 2 seeds
    python sweeps/ablate_diffusion.py --preset smoke
    python sweeps/ablate_diffusion.py --lambdas 0.5 1 2      # the joint model at several layout weights
    python sweeps/ablate_diffusion.py --guidance 1 3 5       # evaluation guidance scales (no retraining)
    python sweeps/ablate_diffusion.py --dataset cityscapes --data-root DIR --preset paper --dry-run
    python sweeps/ablate_diffusion.py --dataset cityscapes --data-root DIR --rows unconditional   # GCDP Table 1
    python sweeps/ablate_diffusion.py --dataset mmceleba --data-root DIR --rows joint \
        --caption-subsets 25 50 100 --guidance 3 1 2 4 5                                      # GCDP Fig. 7
Both models share the U-Net, the text conditioning and the budget; image-only has no layout branch;
unconditional is the joint model that never sees the text. The first --guidance scale gives the
row's main columns (fid, r_precision, ...), every other one adds `<metric>@g<scale>` columns from the
same weights (analysis.guidance_curve / analysis.plots.plot_guidance_curve draw them). Rows go to the
same results table as the GAN sweeps. Rerunning the same command resumes. README "Gaussian-categorical
diffusion".
"""
from __future__ import annotations

import argparse

from t2i_ray.config import CAPTION_SUBSETS, ConfigError, apply_overrides
from t2i_ray.sweep.cli import base_parser, config_from_args, given_keys, grid_trials, seeds_for, sweep_main
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
# (3,475 images). MM CelebA-HQ: square, all captions (--caption-subsets 25 50 100 for -25/-50/-100).
DATASET_DEFAULTS: dict[str, dict[str, object]] = {
    "cityscapes": {"data.aspect": 2.0, "data.trainval": True},
}


ROWS = ["joint", "image-only", "unconditional"]
# The unconditional row: the joint model with the null text in training and sampling. Guidance
# does not apply (one forward per step), so the row records scale 1 and no extra scales.
UNCONDITIONAL = {"diffusion.joint": True, "diffusion.unconditional": True, "diffusion.guidance_scale": 1.0,
                 "diffusion.extra_guidance_scales": ""}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=["joint", "image-only"],
                   help="joint: image + layout (GCDP); image-only: the same U-Net without the layout branch; "
                        "unconditional: the joint model trained and sampled with the null text only (GCDP "
                        "Table 1: unconditional image-layout generation on Cityscapes)")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, metavar="L",
                   help="layout-loss weights of the joint rows (default: diffusion.layout_weight, 1); several "
                        "give one joint row each")
    p.add_argument("--guidance", type=float, nargs="+", default=None, metavar="W",
                   help="classifier-free guidance scales scored at evaluation (default: diffusion.guidance_scale); "
                        "the unconditional row has no guidance and keeps one scale")
    p.add_argument("--caption-subsets", type=int, nargs="+", default=None, metavar="P",
                   help="MM CelebA-HQ only: one row per percentage of the train captions kept "
                        f"({'/'.join(map(str, CAPTION_SUBSETS))}; data.caption_subset), e.g. 25 50 100 for "
                        "MM CelebA-HQ-25/50/100 (GCDP Fig. 7)")
    return p.parse_args(argv)


def check_caption_subsets(args: argparse.Namespace, dataset: str) -> list[int]:
    """The --caption-subsets values, refused (ConfigError) off MM CelebA-HQ, outside CAPTION_SUBSETS,
    repeated, or together with data.caption_subset from --set/--config ([] without the option)."""
    subsets = args.caption_subsets or []
    if not subsets:
        return []
    if dataset != "mmceleba":
        raise ConfigError(f"--caption-subsets: caption subsets exist only on MM CelebA-HQ (--dataset mmceleba, "
                          f"GCDP's MM CelebA-HQ-25/50/100), not on {dataset!r}; drop the option")
    bad = [p for p in subsets if p not in CAPTION_SUBSETS]
    if bad:
        raise ConfigError(f"--caption-subsets: {bad} not among the subsets {list(CAPTION_SUBSETS)} (% of the train "
                          f"captions kept)")
    if len(set(subsets)) < len(subsets):
        raise ConfigError(f"--caption-subsets: a value is given twice ({subsets}); give each subset once")
    given = given_keys(args)
    if "data.caption_subset" in given:
        raise ConfigError(f"--caption-subsets: data.caption_subset is also fixed by {given['data.caption_subset']}; "
                          f"drop one of them")
    return subsets


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
    subsets = check_caption_subsets(args, base.data.dataset)
    if "diffusion.unconditional" in (given := given_keys(args)):
        raise ConfigError(f"diffusion.unconditional: set per row by this sweep (also fixed by "
                          f"{given['diffusion.unconditional']}); pick the unconditional row with --rows unconditional")
    rows: dict[str, dict[str, object]] = {}
    for row in args.rows:
        if row == "image-only":
            rows[row] = {"diffusion.joint": False}
        elif row == "unconditional":
            rows[row] = dict(UNCONDITIONAL)
        else:
            for w in lambdas:
                rows["joint" if len(lambdas) == 1 else f"joint l={w:g}"] = {"diffusion.joint": True,
                                                                           "diffusion.layout_weight": w}
    if subsets:  # one row per (row, subset): "joint 25%", ...
        rows = {f"{label} {p}%": {**over, "data.caption_subset": p} for label, over in rows.items() for p in subsets}
    seeds = list(seeds_for(args))
    grid = grid_trials(base, rows, seeds)
    return SweepSpec(sweep="ablate_diffusion", base=apply_overrides(base, {"seed": seeds[0]}), search="grid",
                     grid=grid)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sweep_main(args, build_spec, order=ROWS, title="Diffusion ablation")


if __name__ == "__main__":
    main()
