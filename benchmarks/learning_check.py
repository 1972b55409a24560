"""Does training learn? Domain FID / R-precision / attribute recall of an untrained vs a trained
generator on `shapes`, same evaluation protocol. Writes JSON.

    python benchmarks/learning_check.py --preset local --out benchmarks/results/learning_local.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from t2i_ray.config import build_config, parse_override
from t2i_ray.data import registry
from t2i_ray.eval.features import extract, load_or_train_domain_evaluator
from t2i_ray.eval.fid import feature_stats, frechet_distance
from t2i_ray.eval.evaluate import evaluate_method
from t2i_ray.train.damsm import ensure_damsm, load_damsm
from t2i_ray.train.loop import LocalEnv, run_training
from t2i_ray.train.method import Assets, build_method

KEYS = ("fid", "kid", "r_precision", "r_precision_std", "attr_pair_recall", "attr_shape_recall",
        "attr_color_recall", "fid_num_fake", "fid_num_real", "fid_backbone", "r_precision_backbone")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="local")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default="benchmarks/results/learning_check.json")
    args = p.parse_args()
    cfg = build_config(args.preset, dict(parse_override(o) for o in args.overrides))
    torch.set_num_threads(cfg.train.torch_threads)
    damsm_path = str(ensure_damsm(cfg))
    damsm = load_damsm(damsm_path)
    evaluator, evaluator_info = load_or_train_domain_evaluator(
        cfg.data, cfg.eval.evaluator_steps, cfg.eval.evaluator_images, f"{cfg.output_dir}/cache")
    # The floor: FID of as many real train images as the evaluation generates, vs the test set.
    n = min(cfg.eval.num_images, cfg.data.num_train)
    train_src, test_src = registry.source(cfg, "train"), registry.source(cfg, "test")
    real_train, _ = extract(evaluator, [np.stack([train_src[i].image for i in range(n)])])
    real_test, _ = extract(evaluator, [np.stack([test_src[i].image for i in range(len(test_src))])])
    real_fid = frechet_distance(*feature_stats(real_train), *feature_stats(real_test))
    torch.manual_seed(cfg.seed * 1000)  # the same init the training run starts from
    untrained = evaluate_method(cfg, build_method(cfg, Assets(damsm)), damsm, "untrained")
    run_dir = Path(cfg.output_dir) / "benchmarks" / f"learning-{cfg.key()}"
    start = time.time()
    trained = run_training(cfg, LocalEnv(run_dir), damsm_path, f"learning-{cfg.key()}")
    result = {
        "preset": args.preset, "overrides": args.overrides, "train_seconds": time.time() - start,
        "chance_r_precision": 1.0 / cfg.eval.r_precision_candidates,
        "real_images_r_precision": damsm.meta["real_r_precision"],
        "real_images_attr_pair_recall": evaluator_info["heldout_attr_pair_recall"],
        "real_train_vs_test_fid": real_fid,
        "untrained": {k: untrained[k] for k in KEYS}, "trained": {k: trained[k] for k in KEYS},
        "config": cfg.to_dict(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("untrained", "trained", "chance_r_precision",
                                             "real_images_r_precision", "real_images_attr_pair_recall", "real_train_vs_test_fid", "train_seconds")}, indent=1))


if __name__ == "__main__":
    main()
