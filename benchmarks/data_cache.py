"""Decoded-image cache: build speed (images/s) and reuse time on a synthetic CUB-format folder.

    python benchmarks/data_cache.py --images 200 --out benchmarks/results/data_cache.json

Writes `--images` JPEGs of CUB's typical size (500x375, smooth colour fields plus noise so the
JPEG is not trivially compressible) in the real CUB layout, then times the first build of the
train-split cache at each resolution and thread count, and a reuse (manifest check + memory map).
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from t2i_ray.config import DataConfig
from t2i_ray.data import registry
from t2i_ray.data.cache import cache_folder, load_or_build
from t2i_ray.data.cub import CUB


def write_cub(root: Path, n: int, width: int = 500, height: int = 375) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    lines, boxes, keys = [], [], []
    for i in range(1, n + 1):
        key = f"001.Bird/Bird_{i:04d}"
        c = rng.uniform(0, 255, (3, 3))
        img = np.stack([c[k, 0] + c[k, 1] * xx + c[k, 2] * yy for k in range(3)], -1) % 256
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        path = root / "CUB_200_2011" / "images" / f"{key}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)
        lines.append(f"{i} {key}.jpg")
        boxes.append(f"{i} {rng.uniform(0, 200):.1f} {rng.uniform(0, 150):.1f} {rng.uniform(80, 300):.1f} "
                     f"{rng.uniform(80, 220):.1f}")
        text = root / "text" / f"{key}.txt"
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_text("\n".join(f"a bird {i} caption {k}" for k in range(10)))
        keys.append(key)
    (root / "CUB_200_2011" / "images.txt").write_text("\n".join(lines))
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("\n".join(boxes))
    for split, part in (("train", keys[:-2]), ("test", keys[-2:])):
        (root / split).mkdir()
        (root / split / "filenames.pickle").write_bytes(pickle.dumps(part))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="t2i_cache_bench."))
    rows = []
    try:
        write_cub(work / "birds", args.images)
        for res in args.resolutions:
            cfg = DataConfig(dataset="cub", data_root=str(work / "birds"), resolution=res)
            for threads in args.threads:
                shutil.rmtree(work / "cache", ignore_errors=True)
                start = time.perf_counter()
                items = CUB.index(Path(cfg.data_root), "train", cfg)
                src = load_or_build(CUB, items, Path(cfg.data_root), "train", res, work / "cache", 0,
                                    log=lambda s: None, num_threads=threads)
                build = time.perf_counter() - start
                start = time.perf_counter()
                registry.build_source(cfg, "train", work / "cache", log=lambda s: None)
                reuse = time.perf_counter() - start
                folder = cache_folder(work / "cache", "cub", "train", res, cfg.data_root)
                rows.append({"resolution": res, "threads": threads, "images": len(src),
                             "build_s": round(build, 3), "images_per_s": round(len(src) / build, 1),
                             "reuse_s": round(reuse, 4),
                             "cache_mb": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 2)})
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"benchmark": "data_cache", "source": "synthetic CUB layout, 500x375 JPEG q90",
              "machine": platform.processor() or platform.machine(), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
