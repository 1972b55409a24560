"""Draw images from a trained run for your own captions: a labelled grid and one PNG per sample.

    python sweeps/sample.py --run RUN_NAME --captions captions.txt
    python sweeps/sample.py --best fid --captions captions.txt --n-per-caption 8 --seed 1
    python sweeps/sample.py --best r_precision --sweep ablate_losses-grid-1a2b3c4d --captions captions.txt
    python sweeps/sample.py --run RUN_NAME --captions captions.txt --guidance-scale 5   # a diffusion run
The run's checkpoint and the DAMSM folder its results row names (the frozen text encoder and the
vocabulary) are all it needs. Words that the run's vocabulary lacks are dropped with a warning
(--strict refuses them). Run names are in the results table (`run_name`; README "Outputs").
README "Sampling and re-evaluation".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2i_ray.config import ConfigError
from t2i_ray.sweep.runs import METRIC_MODES, RunError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="NAME", help="a run of the results table (its run_name)")
    which.add_argument("--best", choices=list(METRIC_MODES), metavar="METRIC",
                       help=f"the finished run with the best final METRIC ({', '.join(METRIC_MODES)}: lowest "
                            f"fid/kid/fsd, highest of the others)")
    p.add_argument("--sweep", default=None, metavar="NAME",
                   help="with --best: among this sweep's runs (default: every run that is not a re-evaluation)")
    p.add_argument("--captions", required=True, metavar="FILE",
                   help="text file, one caption per line (blank lines and lines starting with # skipped)")
    p.add_argument("--n-per-caption", type=int, default=4, metavar="K", help="samples per caption")
    p.add_argument("--seed", type=int, default=0, help="the same seed, run and captions give the same images")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="last: the run's final (evaluated) checkpoint; best: the one kept by eval.every")
    p.add_argument("--guidance-scale", type=float, default=None, metavar="W",
                   help="diffusion runs: classifier-free guidance scale (default: the run's diffusion.guidance_scale)")
    p.add_argument("--strict", action="store_true",
                   help="refuse captions with words the run's vocabulary lacks (default: drop them, with a warning)")
    p.add_argument("--output-dir", default="t2i_runs", help="the sweep's output folder (results/, ray/, cache/)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write (default <output-dir>/samples/<run>/<captions file>-seed<S>[-best][-g<W>])")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:K; auto: cuda when there is one "
                                                    "(CPU and GPU samples of one seed differ)")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from t2i_ray.data.registry import layout_classes
    from t2i_ray.data.text import Vocabulary
    from t2i_ray.eval.samples import encode_captions, read_captions, sample_captions, save_caption_samples
    from t2i_ray.paths import RunPaths
    from t2i_ray.sweep.runs import best_run, damsm_location, find_run, open_run, run_config

    output_dir = Path(args.output_dir).resolve()
    try:  # everything that can be wrong is checked before the checkpoint is loaded
        if args.n_per_caption < 1:
            raise ConfigError(f"--n-per-caption: must be >= 1, got {args.n_per_caption}")
        if args.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {args.seed}")
        if args.sweep and not args.best:
            raise ConfigError("--sweep: picks among a sweep's runs for --best; with --run, drop it")
        texts = read_captions(args.captions)
        if args.run:
            row, reason = find_run(output_dir, args.run), "named by --run"
        else:
            row, reason = best_run(output_dir, args.best, args.sweep)
        cfg = run_config(row)
        overrides = {}
        if args.guidance_scale is not None:
            if cfg.model.method != "diffusion":
                raise ConfigError(f"--guidance-scale: run {row['run_name']} is a GAN (model.method="
                                  f"{cfg.model.method}); guidance applies to model.method=diffusion runs")
            if not args.guidance_scale >= 0:
                raise ConfigError(f"--guidance-scale: must be >= 0, got {args.guidance_scale}")
            if cfg.diffusion.unconditional:
                raise ConfigError(f"--guidance-scale: run {row['run_name']} is unconditional (diffusion.unconditional"
                                  f"=true): it never sees the text, so there is no guidance to set; drop the option")
            overrides["diffusion.guidance_scale"] = args.guidance_scale
        vocab = Vocabulary.load(Path(damsm_location(row, cfg, output_dir)) / "vocab.json")
        captions = encode_captions(texts, vocab, cfg.data.words_num)
        unknown = [(i, c) for i, c in enumerate(captions) if c.unknown]
        if args.strict and unknown:
            raise ConfigError("--strict: words not in the run's vocabulary (" + str(len(vocab) - 1) + " words): "
                              + "; ".join(f"caption {i + 1} {c.text!r}: {', '.join(c.unknown)}" for i, c in unknown)
                              + ". Rephrase with words the run was trained on, or drop --strict to skip them")
        empty = [i + 1 for i, c in enumerate(captions) if not c.ids]
        if empty:
            raise ConfigError(f"--captions: caption(s) {', '.join(map(str, empty))} have no word the run's vocabulary "
                              f"knows; nothing would condition the images")
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        trained = open_run(row, output_dir, args.checkpoint, device, overrides)
    except (ConfigError, RunError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    for i, c in unknown:
        print(f"warning: caption {i + 1} {c.text!r}: unknown word(s) dropped: {', '.join(c.unknown)} (not in the "
              f"run's vocabulary of {len(vocab) - 1} words; --strict refuses them)", file=sys.stderr)
    for i, c in enumerate(captions):
        if c.cut:
            print(f"warning: caption {i + 1} {c.text!r}: the run reads at most data.words_num="
                  f"{cfg.data.words_num} words; dropped: {', '.join(c.cut)}", file=sys.stderr)
    name = row["run_name"]
    if cfg.model.method == "diffusion" and cfg.diffusion.unconditional:
        print(f"note: run {name} is unconditional (diffusion.unconditional=true): its samples do not depend on the "
              f"captions", file=sys.stderr)
    print(f"[sample] run {name} ({reason}): {args.checkpoint} checkpoint, step {trained.step}, {trained.checkpoint}")
    images, layouts = sample_captions(trained.method, captions, args.n_per_caption, args.seed,
                                      trained.cfg.eval.batch_size, trained.cfg.data.words_num)
    label = f"{Path(args.captions).stem}-seed{args.seed}" + ("-best" if args.checkpoint == "best" else "") \
        + (f"-g{args.guidance_scale:g}" if args.guidance_scale is not None else "")
    out = Path(args.out) if args.out else RunPaths(output_dir).caption_samples(name, label)
    method = trained.cfg.model.method
    guidance = f", guidance {trained.cfg.diffusion.guidance_scale:g}" if method == "diffusion" else ""
    title = f"{name}  ({args.checkpoint} checkpoint, step {trained.step}, seed {args.seed}{guidance})"
    info = {"run_name": name, "selected": reason, "checkpoint": trained.checkpoint, "which_checkpoint": args.checkpoint,
            "step": trained.step, "seed": args.seed, "method": method, "device": device,
            "guidance_scale": trained.cfg.diffusion.guidance_scale if method == "diffusion" else None,
            "damsm_path": str(trained.damsm.path), "vocab_fingerprint": vocab.fingerprint()}
    classes = layout_classes(trained.cfg.data.dataset) if layouts is not None else None
    meta = save_caption_samples(out, captions, images, layouts, title, classes, info)
    extra = " and its colourised layout" if layouts is not None else ""
    print(f"[sample] {len(captions)} caption(s) x {meta['per_caption']} sample(s), seed {args.seed}{guidance}:\n"
          f"  grid:    {out / 'grid.png'}\n"
          f"  images:  {out}/caption<c>_sample<k>.png (one per sample{extra})\n"
          f"  details: {out / 'samples.json'}")


if __name__ == "__main__":
    main()
