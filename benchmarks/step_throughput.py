"""Images/s of one GAN training step (one D + one G update) on this machine, per setting.

    python benchmarks/step_throughput.py --out benchmarks/results/step_throughput.json

SPEC 3's anchor: the reference DF-GAN code does 86 images/s at 32x32, batch 32, nf=32 on a
2-core CPU (hinge + mismatch + MA-GP).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from t2i_ray.config import build_config
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data.shapes import build_source
from t2i_ray.models.factory import build_gan_models
from t2i_ray.train.captioner import ensure_captioner, load_captioner
from t2i_ray.train.damsm import ensure_damsm, load_damsm
from t2i_ray.train.gan import build_optimizers, gan_step

SETTINGS = [
    {"model.nf": 32},
    {"model.nf": 16},
    {"model.nf": 8},
    {"model.nf": 16, "loss.f2r": 0.2, "loss.f2f": 0.2, "loss.damsm": 0.05},
    {"model.nf": 16, "loss.recap": 1.0},
    {"model.nf": 16, "loss.f2r": 0.2, "loss.f2f": 0.2, "loss.damsm": 0.05, "loss.recap": 1.0},
    {"model.nf": 16, "model.text_embedding": "dual"},
]


def measure(cfg, damsm, steps: int, captioner=None) -> float:
    models = build_gan_models(cfg, damsm.text_encoder, damsm.image_encoder,
                              captioner if cfg.loss.recap > 0 else None)
    opts = build_optimizers(models, cfg)
    ds = TextImageDataset(build_source(cfg.data, "train"), damsm.vocab, cfg.data.words_num, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    batches = [b for _, b in zip(range(steps + 2), loader)]
    noise = torch.Generator().manual_seed(0)
    for b in batches[:2]:  # warm-up
        gan_step(models, opts, b, cfg, noise)
    start = time.perf_counter()
    for b in batches[2:]:
        gan_step(models, opts, b, cfg, noise)
    return steps * cfg.train.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/step_throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = build_config("local")
    damsm = load_damsm(ensure_damsm(base))
    captioner = load_captioner(ensure_captioner(base)).model  # for the l4 settings
    rows = []
    for setting in SETTINGS:
        cfg = build_config("local", setting)
        ips = measure(cfg, damsm, args.steps, captioner)
        rows.append({"setting": setting, "resolution": cfg.data.resolution,
                     "batch_size": cfg.train.batch_size, "images_per_s": round(ips, 1)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"threads": args.threads, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
