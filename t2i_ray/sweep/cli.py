"""Shared command line of the sweep scripts: presets, overrides, validation before Ray starts,
the grid of rows x seeds, and running a grid and printing its table."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from t2i_ray.paths import RunPaths
from t2i_ray.config import (EVAL_PROTOCOLS, PRESETS, ConfigError, ExperimentConfig, apply_overrides,
                            build_config_with_file, parse_override, protocol_overrides, read_config_file,
                            resolved_eval_backbone, resolved_segmenter)

if TYPE_CHECKING:
    from t2i_ray.sweep.run import SweepSpec

DEFAULT_SEEDS = {"ci": [0], "smoke": [0], "local": [0, 1], "paper": [0, 1, 2]}


def base_parser(description: str, search: bool = True) -> argparse.ArgumentParser:
    """The options every script shares; `search=False` (the pre-training scripts, which run no
    sweep) leaves out --sweep, --space, --scheduler/--asha-* and -v."""
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
                        "candidates/folds, a random caption per image; see config.EVAL_PROTOCOLS) and hold the "
                        "config to it; it needs the Inception DAMSM (--set damsm.image_backbone=inception "
                        "--set damsm.inception_weights=PATH)")
    p.add_argument("--config", default=None, metavar="PATH.yaml",
                   help="YAML file of config fields (train: {steps: 300}); precedence: preset < file "
                        "< --set and the flags above")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set model.nf=32 --set eval.num_images=2048")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: local Ray")
    p.add_argument("--max-concurrent", type=int, default=None, help="cap on trials running at once")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, print the settings that differ from the defaults, the trials and an "
                        "estimated wall time; run nothing")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep these options name; an error if there is none "
                        "(without --resume a saved sweep is resumed too, and a missing one started)")
    p.add_argument("--storage-path", default=None, metavar="PATH_OR_URI",
                   help="Ray Tune state and Train checkpoints (default <output-dir>/ray); may be "
                        "s3://bucket/prefix or gs://... on a cluster")
    if search:
        p.add_argument("--sweep", dest="sweep_axes", action="append", default=[], metavar="KEY=V1,V2",
                       help="a grid axis over any config field, crossed with the script's rows and seeds, "
                            "e.g. --sweep train.lr_g=1e-4,2e-4 --sweep model.nf=16,32 (values with commas: "
                            "separate them with ';')")
        p.add_argument("--space", dest="space", action="append", default=[], metavar="KEY=KIND:LOW:HIGH",
                       help="an Optuna range over any numeric config field (--search optuna): float:a:b, "
                            "log:a:b (log-uniform) or int:a:b (inclusive); given ranges replace the default "
                            "space, e.g. --space train.lr_g=log:1e-5:1e-3 --space loss.f2r=float:0:1")
        p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                       help="asha: stop the worse trials early (Ray Tune's ASHA) on --asha-metric, read from "
                            "each trial's training reports")
        p.add_argument("--asha-metric", default=None, metavar="NAME",
                       help="what ASHA compares: a training report key (GAN: loss_g_adv, loss_g, loss_d, ...; "
                            "diffusion: loss, ...; default loss_g_adv / loss), or eval_fid/eval_r_precision "
                            "where in-training evaluation (eval.every) exists")
        p.add_argument("--asha-mode", choices=["min", "max"], default=None,
                       help="whether lower or higher --asha-metric is better (default: from its name)")
        p.add_argument("--asha-grace", type=int, default=None, metavar="STEPS",
                       help="steps every trial runs before ASHA may stop it (default: a quarter of train.steps)")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also print Ray Train's per-report INFO lines (checkpoints, 'Reporting training result')")
    return p


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None,
                     check_eval_weights: bool = True,
                     stages: tuple[str, ...] = ("train", "damsm", "captioner"),
                     defaults: dict[str, Any] | None = None,
                     dataset_defaults: Mapping[str, dict[str, Any]] | None = None) -> ExperimentConfig:
    """The validated config of the command line; with eval.backbone=inception (and
    `check_eval_weights`, off for scripts that never evaluate), the Inception weights are resolved
    here (flag, config field or $T2I_INCEPTION_WEIGHTS) and pinned into the config as an absolute
    path, so a missing file refuses before Ray or any training starts (also on --dry-run).
    `dataset_defaults`: dataset -> more defaults (above `defaults`, below the user's settings) for the
    dataset the command line names (ablate_diffusion.DATASET_DEFAULTS)."""
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
    if dataset_defaults and cfg.data.dataset in dataset_defaults:
        # Applied with the overrides (they need the dataset to validate), but only where neither the
        # config file nor the command line sets the field.
        in_file = read_config_file(args.config) if args.config else {}
        more = {k: v for k, v in dataset_defaults[cfg.data.dataset].items() if k not in in_file and k not in overrides}
        cfg = build_config_with_file(args.preset, args.config, {**more, **overrides}, defaults)
    from t2i_ray.data.registry import check_dataset

    sizes = check_dataset(cfg.data)  # a missing or malformed real dataset fails here, before Ray (DatasetError)
    if check_eval_weights and resolved_eval_backbone(cfg) == "inception":
        from t2i_ray.eval.inception import resolve_inception_weights

        cfg = apply_overrides(cfg, {"eval.inception_weights": resolve_inception_weights(cfg.eval.inception_weights)})
    if check_eval_weights:
        from t2i_ray.eval.clip import clip_score_enabled, resolve_clip_files

        if clip_score_enabled(cfg):  # a missing CLIP file refuses here too (eval.clip_score)
            weights, vocab = resolve_clip_files(cfg)
            cfg = apply_overrides(cfg, {"eval.clip_weights": weights, "eval.clip_vocab": vocab})
        if resolved_segmenter(cfg) == "hrnet":  # the Cityscapes layout metrics' HRNet file, likewise
            from t2i_ray.eval.hrnet import resolve_segmenter_weights

            cfg = apply_overrides(cfg, {"eval.segmenter_weights": resolve_segmenter_weights(cfg)})
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
        f"checkpoints (trials with 1 CPU worker):     {ray_dir}/tune/{experiment}/trial_*",
        f"checkpoints (Ray Train worker groups):      {ray_dir}/train",
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
        default = ("the architecture's: 0.05 for dfgan/ssagan, 5 for attngan_style/style1attngan/attngan"
                   if name == "l1" else DEFAULT_WEIGHTS[name])
        p.add_argument(f"--{name}", type=float, default=None,
                       help=f"{term} weight when a row turns the term on (default: {default})")


def weights_from_args(args: argparse.Namespace) -> dict[str, float | None]:
    """The --l1..--l4 weights (None where not given: the default, per architecture for l1), after refusing loss weights set in --config/--set: every sweep script
    sets them per row (or per --loss-row, or by Optuna), so such a value would be silently replaced."""
    weights = {name: getattr(args, name) for name in WEIGHT_TERMS}
    for name, w in weights.items():
        if w is not None and not (math.isfinite(w) and w >= 0):
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


def given_keys(args: argparse.Namespace) -> dict[str, str]:
    """Config keys the user fixed with --set or --config, and where."""
    given = {key: "--set" for key, _ in (parse_override(o) for o in args.overrides)}
    if args.config:
        given.update({k: str(args.config) for k in read_config_file(args.config)})
    return given


def expand_grid(spec: "SweepSpec", axes: list[tuple[str, list[tuple[str, Any]]]]) -> list[dict[str, Any]]:
    """The script's rows x seeds crossed with the --sweep axes: one trial per (row, values, seed),
    labelled `<row> <key>=<value> ...` so that tables and analysis never pool different values as
    seeds of one configuration; the values are also kept as `swept` (the results table's `swept`
    column). Every trial is validated (ranges, combinations), naming the field and the trial."""
    import itertools

    from t2i_ray.sweep.run import _slug
    from t2i_ray.sweep.space import axis_labels

    short = axis_labels([k for k, _ in axes])
    rows: dict[str, dict[str, Any]] = {}
    seeds: dict[str, list[int]] = {}
    for t in spec.grid:
        rows.setdefault(t["row"], t["overrides"])
        seeds.setdefault(t["row"], []).append(t["seed"])
    grid: list[dict[str, Any]] = []
    for row, overrides in rows.items():
        for combo in itertools.product(*(values for _, values in axes)):
            label = " ".join([row] + [f"{short[k]}={text}" for (k, _), (text, _) in zip(axes, combo)])
            swept = {k: typed for (k, _), (_, typed) in zip(axes, combo)}
            for seed in seeds[row]:
                trial = {"row": label, "seed": seed, "overrides": {**overrides, **swept}, "swept": swept}
                try:
                    apply_overrides(spec.base, {**trial["overrides"], "seed": seed})
                except ConfigError as exc:
                    raise ConfigError(f"{exc} (in trial {label!r} seed {seed}, from --sweep)") from None
                grid.append(trial)
    slugs: dict[str, str] = {}
    for t in grid:  # run names are slugs of the labels: two labels must not share one
        other = slugs.setdefault(_slug(t["row"]), t["row"])
        if other != t["row"]:
            raise ConfigError(f"--sweep: the trials {other!r} and {t['row']!r} would get the same run name "
                              f"({_slug(other)}); spell the values differently")
    return grid


def apply_search_options(spec: "SweepSpec", args: argparse.Namespace) -> "SweepSpec":
    """--sweep, --space and --scheduler applied to a script's spec, validated (ConfigError)."""
    from t2i_ray.sweep.space import parse_space_range, parse_sweep_axis

    given = given_keys(args)
    if getattr(args, "sweep_axes", None):
        if spec.search != "grid":
            raise ConfigError("--sweep builds a grid, and this is an Optuna search: give ranges with --space "
                              "(e.g. --space train.lr_g=log:1e-5:1e-3), or fix a value with --set")
        axes = [parse_sweep_axis(text, spec.base) for text in args.sweep_axes]
        keys = [k for k, _ in axes]
        for key in keys:
            if keys.count(key) > 1:
                raise ConfigError(f"--sweep {key}: given twice; list all its values in one --sweep {key}=a,b,c")
            if key in given:
                raise ConfigError(f"--sweep {key}: also fixed by {given[key]}; drop one of them")
            setters = [t["row"] for t in spec.grid if key in t["overrides"]]
            if setters:
                from t2i_ray.sweep.space import WEIGHT_KEYS

                flag = {v: k for k, v in WEIGHT_KEYS.items()}.get(key)
                how = (f"pass --{flag} (the weight a row uses when its term is on) and pick rows with --rows"
                       if flag else "pick its rows with the script's own options (see --help)")
                raise ConfigError(f"--sweep {key}: set per row by this script (row {setters[0]!r} sets it); {how}")
        spec.grid = expand_grid(spec, axes)
    if getattr(args, "space", None):
        if spec.search != "optuna":
            raise ConfigError("--space gives Optuna ranges, and this is a grid: use --search optuna "
                              "(sweeps/ablate_losses.py), or --sweep KEY=v1,v2 for a grid axis")
        space = dict(parse_space_range(text, spec.base) for text in args.space)
        if len(space) < len(args.space):
            raise ConfigError("--space: a key is given twice; give each key one range")
        for key in space:
            if key in given:
                raise ConfigError(f"--space {key}: also fixed by {given[key]}; drop one of them")
        spec.optuna_space = space
    if getattr(args, "scheduler", "fifo") == "asha":
        from t2i_ray.sweep.run import asha_settings

        spec.scheduler = asha_settings(spec.base, args.asha_metric, args.asha_mode, args.asha_grace)
    elif getattr(args, "asha_metric", None) or getattr(args, "asha_mode", None) or getattr(args, "asha_grace", None):
        raise ConfigError("--asha-metric/--asha-mode/--asha-grace configure --scheduler asha; add it")
    return spec


def sweep_main(args: argparse.Namespace, build_spec, order: Sequence[str],
               title: "str | Callable[[SweepSpec], str]") -> None:
    """What every sweep script does: build and validate the spec (errors before Ray), then either
    list the trials (--dry-run) or run and report; `title` names the printed table (a callable: of
    the built spec)."""
    from t2i_ray.sweep.run import check_shared_pretraining

    try:
        spec = apply_search_options(build_spec(args), args)
        check_shared_pretraining(spec)
    except ConfigError as exc:
        fail(str(exc))
    if args.dry_run:
        print_dry_run(spec)
        return
    run_and_report(spec, args, order=order, title=title if isinstance(title, str) else title(spec))


def print_dry_run(spec: "SweepSpec", cpus: int | None = None) -> None:
    """The settings that differ from the defaults, the trials, and an estimated wall time."""
    import os

    from t2i_ray.config import base_image_size, image_size
    from t2i_ray.sweep.estimate import estimate_sweep, trial_configs

    b = spec.base
    h, w = image_size(b.data)
    bh, bw = base_image_size(b)
    cascade = f" from a {bh}x{bw} base stage" if b.diffusion.base_resolution else ""
    print(f"[dry-run] experiment {spec.name}")
    print(f"  dataset {b.data.dataset}" + (f" ({b.data.data_root})" if b.data.data_root else "")
          + f", {h}x{w}{'' if h == w else ' (height x width)'}{cascade}, {b.train.steps} steps, "
          f"batch {b.train.batch_size} x "
          f"{b.train.num_workers} worker(s), {'GPU' if b.train.use_gpu else 'CPU'}, "
          f"output {Path(b.output_dir).resolve()}")
    defaults = ExperimentConfig().flat()
    changed = {k: v for k, v in b.flat().items() if defaults.get(k) != v and k not in ("seed", "name")}
    print("  settings that differ from the defaults (config.py): "
          + (", ".join(f"{k}={v}" for k, v in changed.items()) or "none"))
    grid = spec.grid if spec.search == "grid" else []
    width = max([14] + [len(t["row"]) for t in grid])
    for t in grid:
        print(f"  {t['row']:<{width}} seed {t['seed']}  {t['overrides']}")
    if spec.search == "optuna":
        ranges = ", ".join(f"{k} {v}" for k, v in (spec.optuna_space or {}).items())
        print(f"  {spec.num_trials} Optuna TPE trials over {ranges} (objective {spec.objective}); study "
              f"stored in {RunPaths(Path(b.output_dir).resolve()).optuna_db}")
    if spec.scheduler:
        s = spec.scheduler
        print(f"  ASHA on {s['metric']} ({s['mode']}), after at least {s['grace']} of {s['max_t']} steps, "
              f"keeping 1 in {s['reduction']} at each rung")
    print("  networks the trials need:")
    for line in networks_needed(trial_configs(spec), spec.base):
        print(f"    {line}")
    print("  " + estimate_sweep(spec, cpus or os.cpu_count() or 1).describe())


def networks_needed(configs: Sequence[ExperimentConfig], base: ExperimentConfig | None = None) -> list[str]:
    """One line per network that the trials `configs` read or pre-train, with where it comes from
    (a local weights file, a project cache) or "not built yet" for what the protocol names but this
    repository does not have (GCDP arXiv:2308.08157 Sec. 4: HRNet-W48), and the cascade's stages.
    `base`: the sweep's base config, whose DAMSM encoders every trial of the sweep shares (the sweep
    pre-trains them once, `prepare_assets`). Nothing is loaded or downloaded."""
    from t2i_ray.config import base_image_size, image_size, resolved_eval_backbone, sr_unet_settings
    from t2i_ray.eval.clip import clip_score_enabled
    from t2i_ray.train.damsm import damsm_dir

    lines: dict[str, None] = {}
    damsm = sorted({str(damsm_dir(cfg)) for cfg in configs})
    if damsm and base is not None:
        subset = f", caption subset {base.data.caption_subset}%" if base.data.caption_subset != 100 else ""
        diffusion = any(cfg.model.method == "diffusion" for cfg in configs)
        lines[f"DAMSM text + image encoders ({'conditioning text encoder and ' if diffusion else ''}R-precision): "
              f"pre-trained by the project once on {base.data.dataset} (the base config's data{subset}, "
              f"damsm.seed {base.damsm.seed}) and shared by all {len(configs)} trial(s), cached at {damsm_dir(base)}"] = None
    elif damsm:
        diffusion = any(cfg.model.method == "diffusion" for cfg in configs)
        lines[f"DAMSM text + image encoders ({'conditioning text encoder and ' if diffusion else ''}R-precision): "
              f"pre-trained by the project on {configs[0].data.dataset}, {len(damsm)} set(s) (one per data "
              f"and damsm setting), cached under {Path(damsm[0]).parent}"] = None
    for cfg in configs:
        ds, diffusion = cfg.data.dataset, cfg.model.method == "diffusion"
        if resolved_eval_backbone(cfg) == "inception":
            lines[f"FID/KID/IS: TF-ported Inception (pt_inception-2015-12-05) from the local file "
                  f"{cfg.eval.inception_weights or '$T2I_INCEPTION_WEIGHTS'}"] = None
        else:
            lines[f"FID/KID: the `domain` evaluator, trained by the project on {ds} "
                  f"({cfg.eval.evaluator_steps} steps), cached under {RunPaths.of(cfg).cache}/evaluators"] = None
        if clip_score_enabled(cfg):
            lines[f"CLIP score: CLIP from the local files {cfg.eval.clip_weights or '$T2I_CLIP_WEIGHTS'} (weights) "
                  f"and {cfg.eval.clip_vocab or '$T2I_CLIP_VOCAB'} (BPE merges)"] = None
        elif diffusion and ds != "shapes":
            lines["CLIP score: off -- no CLIP weights configured (GCDP uses CLIP ViT-L/14@336px: set "
                  "eval.clip_weights / $T2I_CLIP_WEIGHTS and eval.clip_vocab / $T2I_CLIP_VOCAB; README, "
                  "'CLIP score')"] = None
        if not diffusion:
            continue
        segmenter = resolved_segmenter(cfg)
        if segmenter == "trained":
            lines[f"layout mIoU / semantic recall: the project's `segmenter`, trained on {ds} "
                  f"({cfg.eval.segmenter_steps} steps), cached under {RunPaths.of(cfg).cache}/evaluators"] = None
        elif segmenter == "hrnet":
            lines[f"layout mIoU / semantic recall / segmenter FSD on {ds}: HRNetV2 (GCDP's HRNet-W48) from the local "
                  f"file {cfg.eval.segmenter_weights or '$T2I_SEGMENTER_WEIGHTS'}, input "
                  f"{cfg.eval.segmenter_input}"] = None
        elif ds == "cityscapes":
            lines["layout mIoU / semantic recall on cityscapes: off (eval.segmenter=off; these columns stay empty, "
                  "FSD and image->layout outpainting mIoU need no network)"] = None
        else:
            net = {"mmceleba": "a face parser"}.get(ds, "a segmenter")
            lines[f"layout mIoU / semantic recall on {ds}: {net} from a local weights file -- not built yet "
                  f"(these columns stay empty; FSD and image->layout outpainting mIoU need no network)"] = None
        h, w = image_size(cfg.data)
        if cfg.diffusion.base_resolution:
            bh, bw = base_image_size(cfg)
            sr = sr_unet_settings(cfg.diffusion)
            lines[f"super-resolution stage (GCDP's cascade, diffusion.base_resolution): base U-Net at {bh}x{bw}, SR "
                  f"U-Net (dim {sr['dim']}, mults {sr['dim_mults']}) to {h}x{w}, both trained in each trial; "
                  f"metrics on the {h}x{w} output"] = None
        elif ds != "shapes":
            lines[f"super-resolution stage: none, one stage at {h}x{w} (GCDP's cascade: set "
                  f"diffusion.base_resolution, e.g. {cfg.data.resolution // 2}, for {h // 2}x{w // 2} -> "
                  f"{h}x{w})"] = None
    return list(lines)


def run_and_report(spec: "SweepSpec", args: argparse.Namespace, order: Sequence[str], title: str) -> None:
    """Run (or resume) the sweep, then print and write its mean ± std table and where things are."""
    from t2i_ray.sweep.run import ResumeError, format_table, run_sweep, significance_lines, summarize

    try:
        rows = run_sweep(spec, address=args.address, max_concurrent=args.max_concurrent, resume=args.resume,
                         storage_path=args.storage_path, verbose=getattr(args, "verbose", False))
    except (ConfigError, ResumeError) as exc:
        fail(str(exc))
    if spec.search == "grid":  # the script's rows in its order, each followed by its --sweep values
        order = list(dict.fromkeys(t["row"] for t in spec.grid))
    table = format_table(summarize(rows, list(order)))
    finished = set(rows["row"])
    present = [r for r in order if r in finished]
    try:  # after a finished sweep, a failing test must not hide its table
        tests = significance_lines(rows, present[0]) if present and spec.search == "grid" else []
    except Exception as exc:  # noqa: BLE001 - reported in the table's place
        tests = [f"(p-values not computed: {type(exc).__name__}: {exc})"]
    if tests:
        table += "\n\n" + "\n".join(tests)
    out = RunPaths.of(spec.base).tables
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{spec.name}.md").write_text(table + "\n")
    rows.to_csv(out / f"{spec.name}.csv", index=False)
    failed, stopped = rows[rows["status"] == "error"], rows[rows["status"] == "stopped"]
    from t2i_ray.config import resolved_eval_backbone

    features = "the domain evaluator" if resolved_eval_backbone(spec.base) == "domain" else "Inception"
    e = spec.base.eval  # how the samples were drawn (README "Evaluation as published")
    captions = "caption 0 of each test image" if e.caption_mode == "first" else "a random caption per sample"
    noise = "" if e.truncation is None else f", truncated noise {e.truncation:g}"
    protocol = f", protocol {e.protocol}" if e.protocol else ""
    print(f"\n{title} ({spec.name}; mean ± std over seeds; FID/KID on {features}, "
          f"R-precision with the DAMSM encoders; fakes from {captions}{noise}{protocol}):\n{table}")
    if len(failed):
        print(f"\n{len(failed)} trial(s) failed: " + "; ".join(f"{r.run_name}: {r.error}" for r in failed.itertuples()))
    if len(stopped):
        print(f"\n{len(stopped)} trial(s) stopped early by ASHA (not in the table): "
              + ", ".join(f"{r.row} seed {r.seed} at step {int(r.step)}" for r in stopped.itertuples()))
    print(f"\ntable: {out / (spec.name + '.md')} (+ .csv with every trial)\n"
          + report_locations(spec.base.output_dir, spec.name, args.storage_path))


__all__ = ["base_parser", "config_from_args", "fail", "report_locations", "seeds_for", "grid_trials",
           "expand_grid", "apply_search_options", "print_dry_run", "networks_needed", "run_and_report",
           "add_weight_args",
           "weights_from_args", "sweep_main", "ConfigError"]
