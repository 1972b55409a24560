"""DAMSM encoder pre-training (AttnGAN's pretrain_DAMSM, gan_anchors 3.4) and its cache.

The trained text encoder, image encoder and vocabulary are one frozen unit (SPEC 1: a new
vocabulary makes old encoders useless), stored under `<output_dir>/cache/damsm/<key>/` where the
key hashes everything they depend on. Later runs load them; the main job pre-trains them first if
they are missing. Differences from AttnGAN, on purpose: on `shapes` the image encoder is a small
CNN trained from scratch (no ImageNet Inception weights offline, and Inception at 299x299 would
dominate CPU time); with `damsm.image_backbone=inception` only the projections train, as in AttnGAN.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from t2i_ray.paths import RunPaths
from t2i_ray.console import console
from t2i_ray.config import ConfigError, ExperimentConfig
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.data.text import Vocabulary
from t2i_ray.eval.r_precision import r_precision
from t2i_ray.losses.damsm import damsm_loss
from t2i_ray.models.text import ImageEncoder, TextEncoder
from t2i_ray.train.checkpoint import build_dir_atomically, write_json

DAMSM_VERSION = 2  # 2: the cnn image encoder lost its 4th conv (models/text.py)
FILES = ("text_encoder.pt", "image_encoder.pt", "vocab.json", "meta.json")


@dataclass
class Damsm:
    text_encoder: TextEncoder
    image_encoder: ImageEncoder
    vocab: Vocabulary
    meta: dict
    path: Path


def damsm_key(cfg: ExperimentConfig) -> str:
    d = cfg.to_dict()
    # Where/how strictly the cache is built does not change the encoders; an unset captions_file
    # (the default file) is left out so that keys, and caches, from before that field stay valid.
    data = {k: v for k, v in d["data"].items()
            if k not in ("loader_workers", "cache_dir", "max_bad_images") and not (k == "captions_file" and v is None)}
    blob = json.dumps({"v": DAMSM_VERSION, "data": data, "damsm": d["damsm"],
                       "embed_dim": cfg.model.embed_dim, "seed": cfg.seed}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def damsm_dir(cfg: ExperimentConfig) -> Path:
    return RunPaths.of(cfg).cached("damsm") / damsm_key(cfg)


def _make_encoders(cfg: ExperimentConfig, vocab_size: int) -> tuple[TextEncoder, ImageEncoder]:
    text = TextEncoder(vocab_size=vocab_size, hidden_per_dir=cfg.model.embed_dim // 2)
    image = ImageEncoder(embed_dim=cfg.model.embed_dim, backbone=cfg.damsm.image_backbone,
                         inception_weights=cfg.damsm.inception_weights)
    return text, image


def pretrain_damsm(cfg: ExperimentConfig, out_dir: str | Path, log: Callable[[str], None] = console) -> Path:
    """Train DAMSM text+image encoders on real (image, caption) pairs; write them to `out_dir`."""
    p = cfg.damsm
    torch.manual_seed(cfg.seed)
    vocab = registry.vocabulary(cfg, log)
    train_set = TextImageDataset(registry.source(cfg, "train", log), vocab, cfg.data.words_num, train=True,
                                 seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=p.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    # Raised inside build_dir_atomically: nothing is cached, so the next run trains again.
    if len(loader) == 0:
        raise ConfigError(f"damsm.batch_size: {p.batch_size} is more than the {len(train_set)} train images of "
                          f"data.dataset={cfg.data.dataset}, so DAMSM pre-training would run no step; lower "
                          f"damsm.batch_size to at most {len(train_set)}")
    text, image = _make_encoders(cfg, len(vocab))
    params = [q for q in list(text.parameters()) + list(image.parameters()) if q.requires_grad]
    lr, lw = p.lr, cfg.loss
    start = time.time()
    for epoch in range(p.epochs):
        train_set.set_epoch(epoch)
        text.train()
        image.train()
        # AttnGAN re-creates the optimiser every epoch (state reset) with the decayed lr.
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
        losses = []
        for batch in loader:
            words, sent = text(batch["caption"], batch["caption_len"])
            regions, glob = image(batch["image"])
            loss = damsm_loss(regions, glob, words, sent, batch["caption_len"],
                              lw.gamma1, lw.gamma2, lw.gamma3)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(text.parameters(), p.grad_clip)
            opt.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"[damsm] non-finite loss ({losses[-1]}) at epoch {epoch + 1}, batch {len(losses)}; "
                    f"try a lower damsm.lr or damsm.grad_clip (nothing was cached)")
        if lr > p.lr / 10:
            lr *= p.lr_decay
        log(f"[damsm] epoch {epoch + 1}/{p.epochs} loss {np.mean(losses):.3f} "
            f"({time.time() - start:.0f}s)")
    text.eval()
    image.eval()
    rp_mean, rp_std = real_r_precision(cfg, text, image, vocab)
    log(f"[damsm] R-precision of real test images with their own captions: {rp_mean:.3f} +- {rp_std:.3f}")
    meta = {"version": DAMSM_VERSION, "key": damsm_key(cfg), "config": cfg.to_dict(),
            "vocab_size": len(vocab), "vocab_fingerprint": vocab.fingerprint(),
            "final_loss": float(np.mean(losses)), "real_r_precision": rp_mean,
            "real_r_precision_std": rp_std, "seconds": time.time() - start,
            "text_encoder": text.config, "image_encoder": image.config}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(text.state_dict(), out_dir / "text_encoder.pt")
    torch.save(image.state_dict(), out_dir / "image_encoder.pt")
    vocab.save(out_dir / "vocab.json")
    write_json(out_dir / "meta.json", meta)
    return out_dir


@torch.no_grad()
def real_r_precision(cfg: ExperimentConfig, text: TextEncoder, image: ImageEncoder,
                     vocab: Vocabulary) -> tuple[float, float]:
    """R-precision of the real test images: the ceiling a generator can reach with these encoders."""
    test_set = TextImageDataset(registry.source(cfg, "test"), vocab, cfg.data.words_num, train=False)
    img_feats, txt_feats = [], []
    for batch in DataLoader(test_set, batch_size=128):
        img_feats.append(image(batch["image"])[1])
        txt_feats.append(text(batch["caption"], batch["caption_len"])[1])
    img, txt = torch.cat(img_feats).numpy(), torch.cat(txt_feats).numpy()
    ids = np.arange(len(img))
    n_cand = min(cfg.eval.r_precision_candidates, len(img))
    folds = min(cfg.eval.r_precision_folds, len(img))
    return r_precision(img, txt, ids, txt, ids, num_candidates=n_cand, num_folds=folds,
                       rng=np.random.default_rng(cfg.seed))


def load_damsm(path: str | Path) -> Damsm:
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"DAMSM folder {path} is incomplete (missing {', '.join(missing)}); "
                                f"delete it and rerun, or run sweeps/pretrain_damsm.py")
    meta = json.loads((path / "meta.json").read_text())
    vocab = Vocabulary.load(path / "vocab.json")
    if vocab.fingerprint() != meta["vocab_fingerprint"]:
        raise ValueError(f"{path}/vocab.json does not match the vocabulary the encoders were trained with")
    text = TextEncoder(**meta["text_encoder"])
    image = ImageEncoder(**meta["image_encoder"])
    text.load_state_dict(torch.load(path / "text_encoder.pt", map_location="cpu", weights_only=True))
    image.load_state_dict(torch.load(path / "image_encoder.pt", map_location="cpu", weights_only=True))
    for m in (text, image):
        m.eval()
        m.requires_grad_(False)
    return Damsm(text, image, vocab, meta, path)


def damsm_is_cached(cfg: ExperimentConfig) -> bool:
    return all((damsm_dir(cfg) / f).is_file() for f in FILES)


def ensure_damsm(cfg: ExperimentConfig, log: Callable[[str], None] = console) -> Path:
    """Return the cached DAMSM folder for `cfg`, pre-training it first if it is missing."""
    final = damsm_dir(cfg)
    if damsm_is_cached(cfg):
        log(f"[damsm] using cached encoders {final}")
        return final
    log(f"[damsm] no cached encoders for this data/damsm config: pre-training into {final}")
    return build_dir_atomically(final, lambda tmp: pretrain_damsm(cfg, tmp, log))
