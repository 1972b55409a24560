"""Pre-train (or show the cached) captioner of the re-captioning loss l4 for a dataset config.

    python sweeps/pretrain_captioner.py --preset local
The sweeps call the same code automatically when a trial has loss.recap > 0 and the captioner is
missing; run this to do it ahead of time or with other settings (e.g. --set captioner.epochs=40).
It prints the captioner's held-out token accuracy and perplexity on real test images.
"""
from __future__ import annotations

import json

from t2i_ray.config import ConfigError
from t2i_ray.sweep.cli import base_parser, config_from_args, fail


def main(argv: list[str] | None = None) -> None:
    p = base_parser(__doc__.splitlines()[0], search=False)
    args = p.parse_args(argv)
    try:
        # no FID here (no Inception needed), and only this pre-training's batch must fit the data
        cfg = config_from_args(args, check_eval_weights=False, stages=("captioner",))
    except ConfigError as exc:
        fail(str(exc))
    from t2i_ray.train.captioner import captioner_dir, ensure_captioner, load_captioner

    if args.dry_run:
        print(f"[dry-run] captioner would be stored in {captioner_dir(cfg)}")
        return
    path = ensure_captioner(cfg)
    meta = load_captioner(path).meta
    print(json.dumps({k: meta[k] for k in ("key", "vocab_size", "final_loss", "test_token_accuracy",
                                           "test_perplexity", "test_token_accuracy_mismatched",
                                           "test_perplexity_mismatched", "seconds")}, indent=1))
    print(f"captioner, vocabulary and meta.json: {path}")


if __name__ == "__main__":
    main()
