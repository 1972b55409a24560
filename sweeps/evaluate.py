"""Re-score a finished run's checkpoint under other evaluation settings, as a new results row.

    python sweeps/evaluate.py --run RUN_NAME --set eval.num_images=4096
    python sweeps/evaluate.py --run RUN_NAME --eval-protocol cub --inception-weights /path/weights.pth
    python sweeps/evaluate.py --run RUN_NAME --checkpoint best
Only eval.* keys may change (the trained model stays what it is). The new row is
`<run>-reeval-<tag>` in sweep `<sweep>-reeval-<tag>`, with `reevaluation_of` = the run; the run's
own row is never touched, and the same settings again replace their re-evaluation row.
README "Sampling and re-evaluation".
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from t2i_ray.config import EVAL_PROTOCOLS, ConfigError, parse_override, protocol_overrides
from t2i_ray.sweep.runs import RunError

HEADLINE = ("fid", "kid", "r_precision", "attr_pair_recall", "is", "layout_miou", "semantic_recall", "fsd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, metavar="NAME", help="a finished run of the results table (its run_name)")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="last: the run's final checkpoint; best: the one kept by eval.every")
    p.add_argument("--eval-protocol", choices=list(EVAL_PROTOCOLS), default=None,
                   help="a paper evaluation protocol (config.EVAL_PROTOCOLS), applied before --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="an eval field, e.g. --set eval.num_images=4096 (other sections are refused)")
    p.add_argument("--inception-weights", default=None, metavar="PATH",
                   help="FID Inception weights for eval.backbone=inception (default: $T2I_INCEPTION_WEIGHTS)")
    p.add_argument("--output-dir", default="t2i_runs", help="the sweep's output folder (results/, ray/, cache/)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:K; auto: cuda when there is one")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from t2i_ray.sweep.runs import check_eval_overrides, find_run, reevaluate
    from t2i_ray.sweep.store import results_dir

    output_dir = Path(args.output_dir).resolve()
    try:
        overrides = protocol_overrides(args.eval_protocol) if args.eval_protocol else {}
        overrides.update(dict(parse_override(o) for o in args.overrides))
        if args.inception_weights:
            overrides["eval.inception_weights"] = str(Path(args.inception_weights).expanduser().resolve())
        check_eval_overrides(overrides)
        row = find_run(output_dir, args.run)
        device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        new = reevaluate(row, output_dir, overrides, args.checkpoint, device)
    except (ConfigError, RunError, FileNotFoundError) as exc:
        fail(str(exc))
    shown = [m for m in HEADLINE if isinstance(new.get(m), (int, float))]
    print(f"\nre-evaluation of {args.run} ({args.checkpoint} checkpoint, step {new['step']}):")
    print("| | " + " | ".join(shown) + " | fid N |")
    print("|---|" + "---|" * (len(shown) + 1))
    for label, r in (("original", row), ("re-evaluation", new)):
        print(f"| {label} | " + " | ".join(_fmt(r.get(m)) for m in shown) + f" | {_fmt(r.get('fid_num_fake'))} |")
    print(f"\nnew row {new['run_name']} (sweep {new['sweep']}, reevaluation_of={args.run}): "
          f"{results_dir(output_dir) / (new['run_name'] + '.parquet')}\nsample grid: {new.get('samples_path')}")


if __name__ == "__main__":
    main()
