"""Images/s of one GAN training step (one D + one G update) on this machine, per setting.

    python benchmarks/step_throughput.py --out benchmarks/results/step_throughput.json
    python benchmarks/step_throughput.py --arch dfgan ssagan attngan_style --settings 1 \
        --untrained-encoders --out benchmarks/results/step_throughput_archs.json

SPEC 3's anchor: the reference DF-GAN code does 86 images/s at 32x32, batch 32, nf=32 on a
2-core CPU (hinge + mismatch + MA-GP).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from t2i_ray.config import ARCHITECTURES, build_config
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.models.factory import build_gan_models
from t2i_ray.models.text import ImageEncoder, TextEncoder
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
    ds = TextImageDataset(registry.source(cfg, "train"), damsm.vocab, cfg.data.words_num, train=True)
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
    p.add_argument("--arch", nargs="+", default=["dfgan"], choices=ARCHITECTURES,
                   help="model.arch values to measure, each with every setting")
    p.add_argument("--settings", type=int, nargs="+", default=None,
                   help=f"indices into SETTINGS (0..{len(SETTINGS) - 1}) to measure; default all")
    p.add_argument("--untrained-encoders", action="store_true",
                   help="use freshly initialised DAMSM encoders instead of pre-training them first: "
                        "a step's cost does not depend on their weights")
    p.add_argument("--out", default="benchmarks/results/step_throughput.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = build_config("local")
    if args.untrained_encoders:
        vocab = registry.vocabulary(base)
        text, image = (TextEncoder(len(vocab), hidden_per_dir=base.model.embed_dim // 2),
                       ImageEncoder(embed_dim=base.model.embed_dim))
        damsm = SimpleNamespace(text_encoder=text, image_encoder=image, vocab=vocab)
    else:
        damsm = load_damsm(ensure_damsm(base))
    chosen = [SETTINGS[i] for i in args.settings] if args.settings is not None else SETTINGS
    # the l4 settings need the captioner (pre-trained and cached on first use)
    captioner = (load_captioner(ensure_captioner(base)).model
                 if any(s.get("loss.recap", 0) > 0 for s in chosen) else None)
    rows = []
    for arch in args.arch:
        for setting in chosen:
            cfg = build_config("local", {**setting, "model.arch": arch})
            ips = measure(cfg, damsm, args.steps, captioner)
            rows.append({"arch": arch, "setting": setting, "resolution": cfg.data.resolution,
                         "batch_size": cfg.train.batch_size, "images_per_s": round(ips, 1)})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the 1-minute load average: on a shared machine, figures taken under load are lower bounds
    out.write_text(json.dumps({"load_avg_1min": round(os.getloadavg()[0], 2),
                               "encoders": "untrained" if args.untrained_encoders else "pretrained",
                               "threads": args.threads, "machine": platform.processor() or platform.machine(),
                               "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
