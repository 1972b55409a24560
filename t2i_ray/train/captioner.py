"""Captioner pre-training for the re-captioning loss l4 (seed paper 001 Sec. 3.4.3) and its cache.

The captioner (t2i_ray.models.captioner) is trained with teacher forcing on real (image, caption)
pairs of the train split, then frozen for GAN training. Like the DAMSM encoders it is one unit with
the vocabulary it predicts (SPEC 1), stored under `<output_dir>/cache/captioner/<key>/` where the
key hashes everything it depends on; sweeps pre-train it once when a trial needs it. Its held-out
quality (teacher-forced token accuracy and perplexity on real test images, and the perplexity with
every caption scored against another test image, which shows how much it reads the image) is
written to meta.json and the log.
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
from t2i_ray.config import ConfigError, ExperimentConfig, legacy_data_key
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.data.text import Vocabulary
from t2i_ray.losses.recaption import caption_token_nll, recaption_loss
from t2i_ray.models.captioner import Captioner
from t2i_ray.train.checkpoint import build_dir_atomically, write_json

CAPTIONER_VERSION = 1
FILES = ("captioner.pt", "vocab.json", "meta.json")


@dataclass
class CachedCaptioner:
    model: Captioner  # frozen: eval mode, no parameter gradients
    vocab: Vocabulary
    meta: dict
    path: Path


def captioner_key(cfg: ExperimentConfig) -> str:
    d = cfg.to_dict()
    data = {k: v for k, v in legacy_data_key(d["data"]).items() if k not in ("loader_workers",)}
    # captioner.seed sits where the run's seed did, so that the keys of seed-0 caches stay valid
    captioner = {k: v for k, v in d["captioner"].items() if k != "seed"}
    blob = json.dumps({"v": CAPTIONER_VERSION, "data": data, "captioner": captioner, "seed": cfg.captioner.seed},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def captioner_dir(cfg: ExperimentConfig) -> Path:
    return RunPaths.of(cfg).cached("captioner") / captioner_key(cfg)


def build_captioner(cfg: ExperimentConfig, vocab_size: int) -> Captioner:
    c = cfg.captioner
    return Captioner(vocab_size=vocab_size, image_size=c.image_size, word_dim=c.word_dim,
                     hidden_dim=c.hidden_dim, dropout=c.dropout)


def pretrain_captioner(cfg: ExperimentConfig, out_dir: str | Path, log: Callable[[str], None] = console) -> Path:
    """Train a captioner on the real train pairs (one random caption per image and epoch); write
    it, its vocabulary and meta.json (with held-out test metrics) to `out_dir`."""
    c = cfg.captioner
    torch.manual_seed(c.seed)
    vocab = registry.vocabulary(cfg, log)
    train_set = TextImageDataset(registry.source(cfg, "train", log), vocab, cfg.data.words_num, train=True,
                                 seed=c.seed)
    model = build_captioner(cfg, len(vocab))
    loader = DataLoader(train_set, batch_size=c.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(c.seed))
    # Raised inside build_dir_atomically: nothing is cached, so the next run trains again.
    if len(loader) == 0:
        raise ConfigError(f"captioner.batch_size: {c.batch_size} is more than the {len(train_set)} train images "
                          f"of data.dataset={cfg.data.dataset}, so captioner pre-training would run no step; "
                          f"lower captioner.batch_size to at most {len(train_set)}")
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    # Cosine decay to 0: short CPU budgets end on a low-noise model.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs * len(loader))
    start = time.time()
    model.train()
    for epoch in range(c.epochs):
        train_set.set_epoch(epoch)
        losses = []
        for batch in loader:
            logits = model(batch["image"], batch["caption"])  # (B, T + 1, V)
            loss = recaption_loss(logits, batch["caption"], batch["caption_len"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(
                    f"[captioner] non-finite loss ({losses[-1]}) at epoch {epoch + 1}, batch {len(losses)}; "
                    f"try a lower captioner.lr or captioner.grad_clip (nothing was cached)")
        log(f"[captioner] epoch {epoch + 1}/{c.epochs} loss {np.mean(losses):.3f} "
            f"({time.time() - start:.0f}s)")
    model.eval()
    stats = evaluate_captioner(cfg, model, vocab, log=log)
    log(f"[captioner] real test images: token accuracy {stats['test_token_accuracy']:.3f}, perplexity "
        f"{stats['test_perplexity']:.2f} (captions scored against another test image: accuracy "
        f"{stats['test_token_accuracy_mismatched']:.3f}, perplexity {stats['test_perplexity_mismatched']:.2f})")
    for s in stats["samples"][:3]:
        log(f"[captioner]   caption: {s['caption']!r}  greedy: {s['greedy']!r}")
    meta = {"version": CAPTIONER_VERSION, "key": captioner_key(cfg), "config": cfg.to_dict(),
            "vocab_size": len(vocab), "vocab_fingerprint": vocab.fingerprint(),
            "final_loss": float(np.mean(losses)), "seconds": time.time() - start,
            "captioner": model.config, **stats}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / "captioner.pt")
    vocab.save(out_dir / "vocab.json")
    write_json(out_dir / "meta.json", meta)
    return out_dir


@torch.no_grad()
def evaluate_captioner(cfg: ExperimentConfig, model: Captioner, vocab: Vocabulary,
                       num_samples: int = 5, log: Callable[[str], None] = console) -> dict:
    """Teacher-forced token accuracy and perplexity (exp of the mean token NLL, "<end>" included)
    on the real test split's captions 0 and 1; the same with the images rolled by one (each
    caption against another image: the gap is what the captioner takes from the image); and
    greedy decodes of a few test images."""
    model.eval()
    test_set = TextImageDataset(registry.source(cfg, "test", log), vocab, cfg.data.words_num, train=False)
    sums = {"nll": 0.0, "correct": 0, "nll_mis": 0.0, "correct_mis": 0, "tokens": 0}
    samples: list[dict[str, str]] = []
    for batch in DataLoader(test_set, batch_size=128):
        images = batch["image"]
        for key_ids, key_len in (("caption", "caption_len"), ("caption2", "caption2_len")):
            ids, lens = batch[key_ids], batch[key_len]
            for suffix, imgs in (("", images), ("_mis", images.roll(1, dims=0))):
                logits = model(imgs, ids)  # (B, T + 1, V)
                nll, targets, mask = caption_token_nll(logits, ids, lens)
                sums["nll" + suffix] += float((nll * mask).sum())
                sums["correct" + suffix] += int(((logits.argmax(dim=2) == targets) & mask).sum())
            sums["tokens"] += int(mask.sum())
        if len(samples) < num_samples:
            decoded = model.greedy_decode(images[:num_samples], cfg.data.words_num)
            for k in range(min(num_samples - len(samples), len(images))):
                samples.append({"caption": vocab.decode(batch["caption"][k].tolist()),
                                "greedy": vocab.decode(decoded[k].tolist())})
    n = sums["tokens"]
    return {"test_token_accuracy": sums["correct"] / n, "test_perplexity": math.exp(sums["nll"] / n),
            "test_token_accuracy_mismatched": sums["correct_mis"] / n,
            "test_perplexity_mismatched": math.exp(sums["nll_mis"] / n),
            "test_num_tokens": n, "test_num_captions": 2 * len(test_set), "samples": samples}


def load_captioner(path: str | Path) -> CachedCaptioner:
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"captioner folder {path} is incomplete (missing {', '.join(missing)}); "
                                f"delete it and rerun, or run sweeps/pretrain_captioner.py")
    meta = json.loads((path / "meta.json").read_text())
    vocab = Vocabulary.load(path / "vocab.json")
    if vocab.fingerprint() != meta["vocab_fingerprint"]:
        raise ValueError(f"{path}/vocab.json does not match the vocabulary the captioner was trained with")
    # Its random init is overwritten below; building it outside the caller's RNG keeps a seed's
    # GAN init identical whether or not a run uses l4 (ablation rows differ only in the loss).
    with torch.random.fork_rng(devices=[]):
        model = Captioner(**meta["captioner"])
    model.load_state_dict(torch.load(path / "captioner.pt", map_location="cpu", weights_only=True))
    model.eval()
    model.requires_grad_(False)
    return CachedCaptioner(model, vocab, meta, path)


def captioner_is_cached(cfg: ExperimentConfig) -> bool:
    return all((captioner_dir(cfg) / f).is_file() for f in FILES)


def ensure_captioner(cfg: ExperimentConfig, log: Callable[[str], None] = console) -> Path:
    """Return the cached captioner folder for `cfg`, pre-training it first if it is missing."""
    final = captioner_dir(cfg)
    if captioner_is_cached(cfg):
        log(f"[captioner] using cached captioner {final}")
        return final
    log(f"[captioner] no cached captioner for this data/captioner config: pre-training into {final}")
    return build_dir_atomically(final, lambda tmp: pretrain_captioner(cfg, tmp, log))


def load_frozen_captioner(captioner_path: str | None, vocab) -> Captioner:
    """The cached captioner for l4, refused unless it predicts the same vocabulary as the DAMSM."""
    if captioner_path is None:
        raise ValueError("loss.recap > 0 needs a pre-trained captioner: pass captioner_path (the sweeps "
                         "do, see t2i_ray.sweep.run.prepare_assets) or set loss.recap=0")
    cached = load_captioner(captioner_path)
    if cached.vocab.fingerprint() != vocab.fingerprint():
        raise ValueError(f"captioner {captioner_path} was trained with another vocabulary than the DAMSM "
                         f"encoders; pre-train both for this data config")
    return cached.model
