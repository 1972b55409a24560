"""Pre-train (or show the cached) DAMSM text and image encoders for a dataset config.

    python sweeps/pretrain_damsm.py --preset local
The sweeps call the same code automatically when the encoders are missing; run this to do it
ahead of time or with other settings (e.g. --set damsm.epochs=50; T2I_CL's stage 1, the encoders
of seed 001: --set damsm.second_caption=true --set damsm.contrastive=1).
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
        cfg = config_from_args(args, check_eval_weights=False, stages=("damsm",))
    except ConfigError as exc:
        fail(str(exc))
    from t2i_ray.train.damsm import damsm_dir, ensure_damsm, load_damsm

    if args.dry_run:
        print(f"[dry-run] encoders would be stored in {damsm_dir(cfg)}")
        return
    path = ensure_damsm(cfg)
    meta = load_damsm(path).meta
    print(json.dumps({k: meta[k] for k in ("key", "objective", "class_mask", "vocab_size", "final_loss",
                                           "final_loss_parts", "real_r_precision", "real_r_precision_std",
                                           "seconds")}, indent=1))
    print(f"encoders, vocabulary and meta.json: {path}")


if __name__ == "__main__":
    main()
