"""The `shapes` layout segmenter at its default recipe: training time and held-out mIoU. Writes JSON.

    python benchmarks/segmenter.py --threads 1 --out benchmarks/results/segmenter.json

Trains `load_or_train_segmenter` from scratch (a temporary cache folder) once per thread count
and reports its held-out scores on the real `shapes` test split, plus what the semantic-recall
threshold changes on real images: recall of the caption's classes, and the share of images in
which the segmenter "finds" a class the caption does not name, at 1 pixel and at the default.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from t2i_ray.config import DataConfig
from t2i_ray.data import shapes
from t2i_ray.eval import layout


def spurious_rate(pred: np.ndarray, named: list[list[int]], min_pixels: int) -> float:
    """Share of images where a non-background class the caption does not name has >= min_pixels."""
    hits = 0
    for p, classes in zip(pred, named):
        counts = np.bincount(p.ravel(), minlength=layout.NUM_LAYOUT_CLASSES)
        others = [k for k in range(1, layout.NUM_LAYOUT_CLASSES) if k not in classes]
        hits += bool((counts[others] >= min_pixels).any())
    return hits / len(pred)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=layout.DEFAULT_SEGMENTER_STEPS)
    p.add_argument("--pool-images", type=int, default=layout.DEFAULT_SEGMENTER_POOL_IMAGES)
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--out", default="benchmarks/results/segmenter.json")
    args = p.parse_args()
    data = DataConfig(resolution=args.resolution)
    test = shapes.build_source(data, "test")
    test_images = test.images()
    named = [layout.named_classes(test.meta(i)) for i in range(len(test))]
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load_before = os.getloadavg()[0]
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            model, info = layout.load_or_train_segmenter(data, args.steps, args.pool_images, cache)
            seconds = time.perf_counter() - start  # pool rendering + training + held-out scoring
        pred = layout.segment(model, [test_images])
        default_min = layout.default_min_pixels(args.resolution, args.resolution)
        rows.append({
            "threads": threads, "total_s": round(seconds, 1), "train_s": round(info["train_seconds"], 1),
            "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
            "backbone": info["backbone"],
            **{k: round(v, 4) for k, v in info.items() if k.startswith("heldout_") and isinstance(v, float)},
            "semantic_recall_min1": round(layout.semantic_recall(pred, named, min_pixels=1), 4),
            "spurious_class_rate_min1": round(spurious_rate(pred, named, 1), 4),
            f"spurious_class_rate_min{default_min}": round(spurious_rate(pred, named, default_min), 4),
        })
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the 1-minute load average: on a shared machine, times taken under load are upper bounds
    out.write_text(json.dumps({"benchmark": "segmenter", "resolution": args.resolution, "steps": args.steps,
                               "pool_images": args.pool_images, "heldout_num_images": len(test),
                               "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                               "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
