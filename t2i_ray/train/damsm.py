"""DAMSM encoder pre-training (AttnGAN's pretrain_DAMSM: taoxugit/AttnGAN `code/pretrain_DAMSM.py`;
optionally with T2I_CL's contrastive stage 1, huiyegit/T2I_CL `DM-GAN+CL/code/pretrain_DAMSM.py`) and
its cache.

The trained text encoder, image encoder and vocabulary are one frozen unit (a new vocabulary makes
old encoders useless), stored under `<output_dir>/cache/damsm/<key>/` where the key hashes every
config field they depend on (`damsm_key`). Later runs load them; the main job pre-trains them first
if they are missing. Differences from AttnGAN, on purpose: on `shapes` the image encoder is a small
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
from t2i_ray.config import ConfigError, ExperimentConfig, legacy_data_key, resolved_damsm_class_mask
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.data.text import Vocabulary
from t2i_ray.eval.r_precision import r_precision
from t2i_ray.losses.contrastive import nt_xent
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


# The fields of the `damsm` section that set the pre-training objective: they enter the key through
# `damsm_objective`, resolved, rather than as written.
OBJECTIVE_FIELDS = ("second_caption", "contrastive", "contrastive_temperature", "class_mask")
# The objective every encoder cached before these options was trained with (AttnGAN's DAMSM on one
# caption, no class mask, gammas 4/5/10): such a config keeps its old key, and its cache.
LEGACY_OBJECTIVE = {"gamma": [4.0, 5.0, 10.0], "class_mask": False, "second_caption": False}


def damsm_objective(cfg: ExperimentConfig) -> dict:
    """The pre-training loss as it acts: the DAMSM gammas (loss.gamma1-3), the resolved class mask,
    the second caption's DAMSM term and, only when its weight is > 0, the contrastive term."""
    p, lw = cfg.damsm, cfg.loss
    out = {"gamma": [lw.gamma1, lw.gamma2, lw.gamma3], "class_mask": resolved_damsm_class_mask(cfg),
           "second_caption": p.second_caption}
    if p.contrastive > 0:
        out["contrastive"] = [p.contrastive, p.contrastive_temperature]
    return out


def damsm_key(cfg: ExperimentConfig) -> str:
    """Hash of every config field that changes the encoders or their meta.json: the data (not where
    or how strictly its cache is built), the `damsm` section, the pre-training objective
    (`damsm_objective`), model.embed_dim and damsm.seed (not the run's seed). Nothing else (train.*, eval.*, the other
    loss weights) shares in it, so GAN sweeps reuse one pre-training."""
    d = cfg.to_dict()
    # An unset captions_file (the default file) is left out so that keys, and caches, from before
    # that field stay valid; likewise the objective when it is the one all earlier caches had.
    data = {k: v for k, v in legacy_data_key(d["data"]).items()
            if k not in ("loader_workers", "cache_dir", "max_bad_images") and not (k == "captions_file" and v is None)}
    # damsm.seed sits where the run's seed did, so that the keys of seed-0 caches stay valid
    damsm = {k: v for k, v in d["damsm"].items() if k not in OBJECTIVE_FIELDS and k != "seed"}
    blob = {"v": DAMSM_VERSION, "data": data, "damsm": damsm, "embed_dim": cfg.model.embed_dim, "seed": cfg.damsm.seed}
    objective = damsm_objective(cfg)
    if objective != LEGACY_OBJECTIVE:
        blob["objective"] = objective
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:12]


def damsm_dir(cfg: ExperimentConfig) -> Path:
    return RunPaths.of(cfg).cached("damsm") / damsm_key(cfg)


def damsm_class_ids(cfg: ExperimentConfig, batch) -> torch.Tensor | None:
    """The class ids the DAMSM losses mask with (AttnGAN's `class_ids`), or None: the batch's
    "class_id" when damsm.class_mask resolves to on. Used by the pre-training and the generator's
    l1 term alike."""
    if not resolved_damsm_class_mask(cfg):
        return None
    if "class_id" not in batch:
        if cfg.damsm.class_mask == "on":
            raise _no_class_ids(cfg)
        return None
    return batch["class_id"]


def _no_class_ids(cfg: ExperimentConfig) -> ConfigError:
    return ConfigError(f"damsm.class_mask: on, but the items of data.dataset={cfg.data.dataset} carry no class id "
                       f"(split keys without a '<class>/' folder); set damsm.class_mask=auto or off")


def pretraining_loss(text: TextEncoder, image: ImageEncoder, batch, cfg: ExperimentConfig,
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one pre-training batch and its parts (for the log).

    L = L_DAMSM(image, caption) [+ L_DAMSM(image, caption2) if damsm.second_caption]
        [+ damsm.contrastive * NT-Xent(sent(caption), sent(caption2)) at damsm.contrastive_temperature]
    L_DAMSM is AttnGAN's word + sentence loss (t2i_ray/losses/damsm.py) at loss.gamma1-3, masked by
    same-class pairs when damsm.class_mask is on. The bracketed terms are T2I_CL's stage 1 (Ye et
    al., arXiv:2107.02423; huiyegit/T2I_CL `DM-GAN+CL/code/pretrain_DAMSM.py`, function `train`): it
    runs the image encoder on the same images twice (`imgs_2` is a copy of `imgs`), which here is
    one pass; its NT-Xent pairs the two captions of each image, the other 2N-2 sentences being
    negatives, and is not class-masked. (The copy in `AttnGAN+CL/code/pretrain_DAMSM.py` normalises
    `sent_emb` into `sent_emb_2`, i.e. contrasts each caption with itself; the DM-GAN+CL copy,
    followed here, contrasts the two captions.) T2I_CL draws the second caption independently of
    the first; the dataset here always gives a different one.
    """
    p, lw = cfg.damsm, cfg.loss
    class_ids = damsm_class_ids(cfg, batch)
    regions, glob = image(batch["image"])
    words, sent = text(batch["caption"], batch["caption_len"])
    loss = damsm_loss(regions, glob, words, sent, batch["caption_len"], lw.gamma1, lw.gamma2, lw.gamma3, class_ids)
    parts = {"damsm": loss.item()}
    if p.second_caption or p.contrastive > 0:
        words2, sent2 = text(batch["caption2"], batch["caption2_len"])
        if p.second_caption:
            loss2 = damsm_loss(regions, glob, words2, sent2, batch["caption2_len"], lw.gamma1, lw.gamma2,
                               lw.gamma3, class_ids)
            loss = loss + loss2
            parts["damsm2"] = loss2.item()
        if p.contrastive > 0:
            contrastive = nt_xent(sent, sent2, p.contrastive_temperature)
            loss = loss + p.contrastive * contrastive
            parts["contrastive"] = contrastive.item()
    return loss, parts


def _make_encoders(cfg: ExperimentConfig, vocab_size: int) -> tuple[TextEncoder, ImageEncoder]:
    text = TextEncoder(vocab_size=vocab_size, hidden_per_dir=cfg.model.embed_dim // 2)
    image = ImageEncoder(embed_dim=cfg.model.embed_dim, backbone=cfg.damsm.image_backbone,
                         inception_weights=cfg.damsm.inception_weights)
    return text, image


def pretrain_damsm(cfg: ExperimentConfig, out_dir: str | Path, log: Callable[[str], None] = console) -> Path:
    """Train DAMSM text+image encoders on real (image, caption) pairs; write them to `out_dir`."""
    p = cfg.damsm
    torch.manual_seed(p.seed)
    vocab = registry.vocabulary(cfg, log)
    train_set = TextImageDataset(registry.source(cfg, "train", log), vocab, cfg.data.words_num, train=True,
                                 seed=p.seed)
    loader = DataLoader(train_set, batch_size=p.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(p.seed))
    # Raised inside build_dir_atomically: nothing is cached, so the next run trains again.
    if len(loader) == 0:
        raise ConfigError(f"damsm.batch_size: {p.batch_size} is more than the {len(train_set)} train images of "
                          f"data.dataset={cfg.data.dataset}, so DAMSM pre-training would run no step; lower "
                          f"damsm.batch_size to at most {len(train_set)}")
    class_mask = _class_mask_report(cfg, train_set)
    log(f"[damsm] objective: {_describe_objective(cfg, class_mask)}")
    text, image = _make_encoders(cfg, len(vocab))
    params = [q for q in list(text.parameters()) + list(image.parameters()) if q.requires_grad]
    lr = p.lr
    start = time.time()
    for epoch in range(p.epochs):
        train_set.set_epoch(epoch)
        text.train()
        image.train()
        # AttnGAN re-creates the optimiser every epoch (state reset) with the decayed lr.
        opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
        losses, parts = [], []
        for batch in loader:
            loss, batch_parts = pretraining_loss(text, image, batch, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(text.parameters(), p.grad_clip)
            opt.step()
            losses.append(loss.item())
            parts.append(batch_parts)
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"[damsm] non-finite loss ({losses[-1]}) at epoch {epoch + 1}, batch {len(losses)}; "
                    f"try a lower damsm.lr or damsm.grad_clip (nothing was cached)")
        if lr > p.lr / 10:
            lr *= p.lr_decay
        shown = "" if len(parts[0]) == 1 else " (" + ", ".join(
            f"{k} {np.mean([b[k] for b in parts]):.3f}" for k in parts[0]) + ")"
        log(f"[damsm] epoch {epoch + 1}/{p.epochs} loss {np.mean(losses):.3f}{shown} "
            f"({time.time() - start:.0f}s)")
    text.eval()
    image.eval()
    rp_mean, rp_std = real_r_precision(cfg, text, image, vocab)
    log(f"[damsm] R-precision of real test images with their own captions: {rp_mean:.3f} +- {rp_std:.3f}")
    meta = {"version": DAMSM_VERSION, "key": damsm_key(cfg), "config": cfg.to_dict(),
            "vocab_size": len(vocab), "vocab_fingerprint": vocab.fingerprint(),
            "final_loss": float(np.mean(losses)),
            "final_loss_parts": {k: float(np.mean([b[k] for b in parts])) for k in parts[0]},
            "objective": damsm_objective(cfg), "class_mask": class_mask, "real_r_precision": rp_mean,
            "real_r_precision_std": rp_std, "seconds": time.time() - start,
            "text_encoder": text.config, "image_encoder": image.config}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(text.state_dict(), out_dir / "text_encoder.pt")
    torch.save(image.state_dict(), out_dir / "image_encoder.pt")
    vocab.save(out_dir / "vocab.json")
    write_json(out_dir / "meta.json", meta)
    return out_dir


def _class_mask_report(cfg: ExperimentConfig, train_set: TextImageDataset) -> str:
    """"off", or "on (K classes)"; refuses class_mask=on on a split without class ids before any step."""
    if not resolved_damsm_class_mask(cfg):
        return "off"
    if train_set.class_ids is None:
        if cfg.damsm.class_mask == "on":
            raise _no_class_ids(cfg)
        return "off (the train split has no class ids)"
    return f"on ({len(np.unique(train_set.class_ids))} classes)"


def _describe_objective(cfg: ExperimentConfig, class_mask: str) -> str:
    p = cfg.damsm
    terms = ["DAMSM(caption)"] + (["DAMSM(caption2)"] if p.second_caption else [])
    if p.contrastive > 0:
        terms.append(f"{p.contrastive:g} x NT-Xent(sent, sent2; tau={p.contrastive_temperature:g})")
    return (f"{' + '.join(terms)}; gammas {cfg.loss.gamma1:g}/{cfg.loss.gamma2:g}/{cfg.loss.gamma3:g}; "
            f"same-class mask {class_mask}")


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
                       rng=np.random.default_rng(cfg.damsm.seed))


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
