"""The `domain` feature backbone for `shapes` (SPEC §6): a small CNN trained on real images.

No pretrained Inception fits the procedural `shapes` images (and none can be downloaded
offline), so the project trains its own evaluator once per data config: multi-label BCE on the
(shape, colour) pairs present, on a fresh pool of procedurally drawn images (its own seed, so it
shares no image with the GAN's train or test split and cannot memorise either). Its penultimate
activations (B, 128) are the features for FID/KID, and its pair logits give the oracle attribute
accuracy of generated images. The trained weights are frozen and cached under a versioned key,
so every trial of a sweep scores with the same network and a changed architecture or recipe can
never be mixed with old numbers.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i_ray.console import console
from t2i_ray.config import ConfigError, DataConfig
from t2i_ray.data import shapes

# Bump when the architecture, the training recipe or the preprocessing changes: old cache files
# then stop matching (the version is in the file name and in the stored config).
DOMAIN_EVALUATOR_VERSION = 2

# Fixed training recipe of cached evaluators (part of the cache key). v1 (3 stride-2 convs, lr
# 1e-3, trained on the GAN train split) reached only 0.22 held-out pair recall at 1500 steps;
# v2 (two convs per scale, lr 2e-3, 16384 fresh images) reaches 0.93 (benchmarks/README.md).
_RECIPE = {"batch_size": 64, "seed": 0, "lr": 2e-3}
# Source seed of the evaluator's pool: far above the split seeds 2*data_seed and 2*data_seed+1.
_POOL_SEED_OFFSET = 1_000_000_007


class DomainEvaluator(nn.Module):
    """images (B, 3, R, R) in [-1, 1] -> (features (B, feature_dim), pair_logits (B, num_attributes)).

    Each scale has a stride-1 and a stride-2 3x3 conv (a stride-2 conv alone cannot see the
    4-pixel shapes of 32x32 images well enough); the image is halved down to 4x4 (3 scales at
    R=32, 6 at R=256) and the 4x4 map is flattened rather than pooled so the features keep where
    things are, which FID should see.
    Features are the ReLU activations feeding the last Linear, as Inception's pool3 is.
    """

    def __init__(self, resolution: int, num_attributes: int, feature_dim: int = 128):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"DomainEvaluator: resolution must be a power of two >= 8, got {resolution}")
        self.config = {"resolution": resolution, "num_attributes": num_attributes, "feature_dim": feature_dim}
        num_down = int(np.log2(resolution // 4))
        widths = [min(32 * 2**i, 128) for i in range(num_down)]  # 32, 64, 128, 128, ...
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in widths:
            # BN makes 1500 Adam steps from scratch enough; eval() freezes its statistics.
            for c, stride in ((c_in, 1), (c_out, 2)):
                layers += [nn.Conv2d(c, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 4 * 4, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_attributes)
        # Features are divided by this (set after training so the real pool has mean
        # ||f||^2 / F = 1): KID's cubic kernel (x.y/F + 1)^3 is only meaningful at Inception-like
        # scales; unscaled ReLU features of size ~10 made it track feature norms, not the images.
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.config["resolution"]
        if images.shape[1:] != (3, r, r):
            raise ValueError(f"DomainEvaluator({r}x{r}) got images of shape {tuple(images.shape)}")
        features = self.fc(self.convs(images))  # (B, feature_dim)
        return features / self.feature_scale, self.head(features)  # (B, num_attributes)


def _to_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) / (B, 3, H, W), or float (B, 3, H, W) in [-1, 1] -> float32 (B, 3, H, W).

    Float images are rounded to the 256 uint8 levels first, so generated images get exactly the
    preprocessing of real ones (continuous outputs would otherwise shift FID; reference Part B.5).
    """
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)  # NHWC (as shapes renders) -> NCHW
        levels = x.float()
    else:
        levels = ((x.float().clamp(-1, 1) + 1) * 127.5).round()
    return levels / 127.5 - 1.0


def _render(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """All images uint8 (N, H, W, 3) and pair targets float32 (N, A) of a ShapesSource."""
    samples = [source[i] for i in range(len(source))]
    images = np.stack([s.image for s in samples])
    targets = np.stack([shapes.attribute_vector(s.meta) for s in samples]).astype(np.float32)
    return images, targets


def fit_metric_network(model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor,
                       logits_of: Callable[[torch.Tensor], torch.Tensor],
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], steps: int, batch_size: int,
                       lr: float, seed: int, name: str, loss_name: str, log: Callable[[str], None],
                       device: str | torch.device) -> None:
    """The training loop every cached metric network shares (domain evaluator, segmenter): Adam
    with cosine decay to 0 (the last steps average out batch noise, which lifts held-out scores),
    batches drawn from `np.random.default_rng(seed)` over the rendered pool `x_all`/`y_all`, the
    mean loss logged five times. A non-finite loss raises before the caller caches anything."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    rng = np.random.default_rng(seed)
    model.train()
    log_every = max(steps // 5, 1)
    start, running = time.perf_counter(), []
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, len(x_all), size=batch_size))
        loss = loss_fn(logits_of(x_all[idx].to(device)), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(loss.item())
        if not math.isfinite(running[-1]):
            raise FloatingPointError(f"{name}: non-finite {loss_name} ({running[-1]}) at step {step}/{steps} "
                                     f"(nothing was cached)")
        if step % log_every == 0 or step == steps:
            log(f"{name}: step {step}/{steps} {loss_name} {np.mean(running):.4f} "
                f"({time.perf_counter() - start:.1f}s)")
            running = []


@torch.enable_grad()  # also when an evaluation under no_grad trains it on first use
def train_domain_evaluator(
    source: Any,
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 1e-3,
    log: Callable[[str], None] = console,
    device: str | torch.device = "cpu",
) -> DomainEvaluator:
    """Train a DomainEvaluator with BCE on `shapes.attribute_vector(meta)` of real images.

    The source (a ShapesSource) is rendered once into memory: at 32x32 drawing a batch costs
    more than a training step. Init and batches are pure functions of `seed`. Returns the model
    in eval mode with requires_grad off (a frozen metric network), its `feature_scale` set from
    the training images.
    """
    images, targets = _render(source)
    n, res = images.shape[0], images.shape[1]
    # Callers cache the result: an untrained evaluator would score every later FID silently.
    if steps < 1 or n == 0:
        raise ConfigError(f"eval.evaluator_steps: the domain evaluator needs >= 1 training step on >= 1 "
                          f"image, got {steps} step(s) on {n} image(s)")
    x_all = _to_model_input(images)  # (N, 3, R, R)
    y_all = torch.from_numpy(targets)  # (N, A)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = DomainEvaluator(res, targets.shape[1]).to(device)
    fit_metric_network(model, x_all, y_all, lambda x: model(x)[1], F.binary_cross_entropy_with_logits, steps,
                       batch_size, lr, seed, f"domain evaluator {res}x{res}", "bce", log, device)
    model.eval().requires_grad_(False)
    feats, _ = extract(model, torch.split(x_all, 256))  # (N, F) float64, scale 1 so far
    model.feature_scale.fill_(float(np.sqrt((feats**2).sum(axis=1).mean() / feats.shape[1])))
    return model


@torch.no_grad()
def extract(model: DomainEvaluator, images_iter: Iterable[torch.Tensor | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Features float64 (N, feature_dim) and pair logits float32 (N, A) of all batches.

    Batches: float (B, 3, R, R) in [-1, 1] (generator outputs, dataset images) or uint8 images
    (B, R, R, 3) / (B, 3, R, R); both are quantised identically (see `_to_model_input`).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    for batch in images_iter:
        f, lg = model(_to_model_input(batch).to(device))
        feats.append(f.double().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
    model.train(was_training)
    if not feats:
        raise ValueError("extract: images_iter yielded no batches")
    return np.concatenate(feats), np.concatenate(logits)


def attribute_scores(pair_logits: np.ndarray, targets: np.ndarray, num_colors: int | None = None) -> dict[str, float]:
    """Oracle attribute accuracy of images whose captions name the `targets` pairs.

    pair_logits, targets (N, A) with A = num_shapes * num_colors, pair index shape * num_colors +
    colour (`shapes.pair_index`); a pair is predicted present when sigmoid(logit) > 0.5. Recalls
    are over all target entries (micro average); shape/colour level = max over the other axis.
    `attr_pair_precision` is an extra: recall alone rewards images that show everything.
    """
    logits, tgt = np.asarray(pair_logits, np.float64), np.asarray(targets) > 0.5
    if logits.shape != tgt.shape or logits.ndim != 2:
        raise ValueError(f"attribute_scores: pair_logits {logits.shape} and targets {tgt.shape} must both be (N, A)")
    c = len(shapes.COLOR_NAMES) if num_colors is None else num_colors
    if logits.shape[1] % c:
        raise ValueError(f"attribute_scores: A={logits.shape[1]} is not a multiple of num_colors={c}")
    pred = logits > 0.0  # sigmoid(x) > 0.5 <=> x > 0
    n = len(pred)
    pred3, tgt3 = pred.reshape(n, -1, c), tgt.reshape(n, -1, c)  # (N, S, C)

    def recall(p: np.ndarray, t: np.ndarray) -> float:
        return float((p & t).sum() / max(t.sum(), 1))

    return {
        "attr_pair_recall": recall(pred, tgt),
        "attr_shape_recall": recall(pred3.any(axis=2), tgt3.any(axis=2)),
        "attr_color_recall": recall(pred3.any(axis=1), tgt3.any(axis=1)),
        "attr_exact": float((pred == tgt).all(axis=1).mean()),
        "attr_pair_precision": float((pred & tgt).sum() / max(pred.sum(), 1)),
    }


def _cache_config(data_cfg: DataConfig, steps: int, pool_images: int, num_attributes: int) -> dict[str, Any]:
    """Everything that determines the cached weights; stored in the file and checked on load."""
    return {
        "version": DOMAIN_EVALUATOR_VERSION,
        "dataset": data_cfg.dataset, "resolution": data_cfg.resolution, "data_seed": data_cfg.data_seed,
        "pool_images": pool_images, "pool_seed": _POOL_SEED_OFFSET + data_cfg.data_seed,
        **shapes.difficulty_key(data_cfg),
        "steps": steps, "num_attributes": num_attributes, "feature_dim": 128, **_RECIPE,
    }


def _save_atomic(payload: dict[str, Any], path: str) -> None:
    # tmp + os.replace: concurrent trials may train the same evaluator; readers see a whole file.
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write (disk full) leaves no stray file
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------
# Cached evaluators (shared by the `domain` evaluator and the layout `segmenter`, eval/layout.py)


def evaluator_file(name: str, config: dict[str, Any], cache_dir: str) -> str:
    """`<cache_dir>/evaluators/<name>-v<version>-<sha1(config)[:10]>.pt`.

    `config` holds every field that changes the weights, its "version" included, so a changed
    recipe or architecture is a new file and never mixes with old numbers.
    """
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(cache_dir, "evaluators", f"{name}-v{config['version']}-{key}.pt")


def load_cached_evaluator(path: str, config: dict[str, Any], what: str,
                          log: Callable[[str], None]) -> dict[str, Any] | None:
    """The payload {"state_dict", "config", "info"} cached at `path` if it was trained with
    `config`, else None (nothing there, or a stale config: the caller retrains)."""
    if not os.path.exists(path):
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise RuntimeError(f"cannot read cached {what} {path} ({e}); delete it to retrain") from e
    if payload.get("config") != config:
        log(f"ignoring cached {what} {path}: its config {payload.get('config')} != {config}; retraining")
        return None
    log(f"loaded {what} from {path}")
    return payload


def cache_evaluator(path: str, model: nn.Module, config: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Write model + config + info atomically to `path`; returns info with "backbone" and "cache_path".

    The recipe fixes the weights only up to float reduction order (thread count, CPU vs GPU), so
    the backbone name also carries a digest of the weights: scores of two differently trained
    evaluators never share a backbone and cannot be mixed in one column.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = hashlib.sha1(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()[:8]
    info = {"backbone": f"{os.path.basename(path)[:-len('.pt')]}-{digest}", "cache_path": path, **info}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _save_atomic({"state_dict": state, "config": config, "info": info}, path)
    return info


def evaluator_cache_path(data_cfg: DataConfig, steps: int, pool_images: int, cache_dir: str) -> tuple[str, dict[str, Any]]:
    """Where the evaluator for these settings is cached, and the config stored with it."""
    config = _cache_config(data_cfg, steps, pool_images, shapes.NUM_ATTRIBUTES)
    return evaluator_file("domain", config, cache_dir), config


def load_or_train_domain_evaluator(
    data_cfg: DataConfig,
    steps: int,
    pool_images: int,
    cache_dir: str,
    log: Callable[[str], None] = console,
    device: str | torch.device = "cpu",
) -> tuple[DomainEvaluator, dict[str, Any]]:
    """The frozen evaluator for `data_cfg`, from `<cache_dir>/evaluators/` or trained and cached.

    info: "backbone" ("domain-v2-<config hash>-<weights digest>", recorded with every FID/KID),
    the cache config and the held-out attribute scores on the test split ("heldout_attr_...").
    """
    if data_cfg.dataset != "shapes":
        raise ValueError(f"the domain evaluator exists for data.dataset 'shapes' only, not {data_cfg.dataset!r}")
    num_attributes = shapes.NUM_ATTRIBUTES
    path, config = evaluator_cache_path(data_cfg, steps, pool_images, cache_dir)

    payload = load_cached_evaluator(path, config, "domain evaluator", log)
    if payload is not None:
        model = DomainEvaluator(config["resolution"], num_attributes, config["feature_dim"])
        model.load_state_dict(payload["state_dict"])
        model.eval().requires_grad_(False)
        return model.to(device), dict(payload["info"])

    start = time.perf_counter()
    pool = shapes.source_like(data_cfg, pool_images, config["pool_seed"])
    model = train_domain_evaluator(pool, steps, batch_size=_RECIPE["batch_size"], seed=_RECIPE["seed"],
                                   lr=_RECIPE["lr"], log=log, device=device)
    train_seconds = time.perf_counter() - start
    test_images, test_targets = _render(shapes.build_source(data_cfg, "test"))
    _, logits = extract(model, np.array_split(test_images, max(len(test_images) // 256, 1)))
    heldout = {f"heldout_{k}": v for k, v in attribute_scores(logits, test_targets).items()}
    info = cache_evaluator(path, model, config, {"train_seconds": train_seconds,
                                                 "heldout_num_images": len(test_images), **config, **heldout})
    log(f"trained domain evaluator in {train_seconds:.1f}s, held-out pair recall "
        f"{heldout['heldout_attr_pair_recall']:.3f}; cached at {path}")
    return model, info
