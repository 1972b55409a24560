"""Layout metrics for image + semantic-layout generation (GCDP, Park et al. ICCV 2023, arXiv 2308.08157 §4).

The paper scores Cityscapes samples with a pretrained HRNet-W48 segmenter; for the procedural
`shapes` dataset none exists (and none can be downloaded offline), so, as with the `domain`
evaluator (eval/features.py), the project trains its own `segmenter` once per data config: a
small U-Net, cross-entropy on fresh procedural images and their exact layouts (its own seed, so
it shares no image with the train or test split), frozen and cached under a versioned key.

Metrics, all on integer layouts (N, H, W) with values in [0, K), K = len(LAYOUT_CLASSES):
  - `confusion_matrix` / `mean_iou` / `layout_agreement`: mIoU and pixel accuracy over a set.
    Used for image-layout alignment (generated layout vs the segmenter on the generated image,
    as GCDP after Semantic Palette), and for cross-modal outpainting (GCDP §4.6): image->layout
    (predicted layout vs the true layout of a real test image) and layout->image (given layout
    vs the segmenter on the generated image).
  - `semantic_recall`: share of the caption's classes that the segmenter finds (GCDP §4.3-4.5).
  - `fsd`: Frechet segmentation distance on per-class pixel shares (Bau et al. ICCV 2019,
    arXiv 1910.11626).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from t2i_ray.config import ConfigError, DataConfig
from t2i_ray.console import console
from t2i_ray.data import shapes
from t2i_ray.eval.features import (_to_model_input, cache_evaluator, evaluator_file, fit_metric_network,
                                   load_cached_evaluator)
from t2i_ray.eval.fid import feature_stats, frechet_distance

NUM_LAYOUT_CLASSES = len(shapes.LAYOUT_CLASSES)

# Bump when the architecture, the training recipe or the preprocessing changes: old cache files
# then stop matching (the version is in the file name and in the stored config).
SEGMENTER_VERSION = 1
# Defaults for the caller's config (benchmarks/README.md: held-out mIoU and time at 32x32).
DEFAULT_SEGMENTER_STEPS = 800
DEFAULT_SEGMENTER_POOL_IMAGES = 8192
# Fixed training recipe of cached segmenters (part of the cache key). Held-out mIoU at 32x32: the
# shape classes are learnt late and abruptly (width 16: 0.44 at 400 steps, 0.96 at 600; lr 1.5e-3
# or 6e-3 no faster), so the default keeps a margin; width 8 matches 16 (0.970 vs 0.977 at 800
# steps) at half the time, and gave 0.95-0.97 over data seeds 0-2.
_RECIPE = {"batch_size": 32, "seed": 0, "lr": 3e-3, "width": 8}
# Source seed of the segmenter's pool: far from the split seeds (2*data_seed, 2*data_seed+1) and
# from the domain evaluator's pool (1_000_000_007 + data_seed).
_POOL_SEED_OFFSET = 2_000_000_011


# ---------------------------------------------------------------------------------------------
# Metrics (pure functions)


def confusion_matrix(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                     num_classes: int) -> np.ndarray:
    """int64 (K, K) counts: [t, p] = pixels of class t in `target` labelled p in `pred`.

    pred, target: integer label maps of one shape, e.g. (N, H, W), values in [0, num_classes).
    Matrices of several sets add up, so a large set can be scored batch by batch.
    """
    p = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred)
    t = np.asarray(target.cpu() if isinstance(target, torch.Tensor) else target)
    if p.shape != t.shape:
        raise ValueError(f"confusion_matrix: pred {p.shape} and target {t.shape} must have one shape")
    for name, x in (("pred", p), ("target", t)):
        if x.dtype.kind not in "iu":
            raise TypeError(f"confusion_matrix: {name} must hold integer class ids, got dtype {x.dtype}; "
                            f"take the argmax over class logits first")
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has class ids in [{x.min()}, {x.max()}], outside "
                             f"[0, {num_classes}); pass num_classes = the number of layout classes")
    index = t.astype(np.int64).ravel() * num_classes + p.astype(np.int64).ravel()
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(confusion: np.ndarray) -> np.ndarray:
    """float64 (K,) IoU_k = C_kk / (sum_p C_kp + sum_t C_tk - C_kk); NaN where class k occurs in
    neither pred nor target (0/0: no evidence either way)."""
    c = np.asarray(confusion, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"class_iou: confusion must be (K, K), got {c.shape}")
    tp = np.diag(c)
    union = c.sum(axis=0) + c.sum(axis=1) - tp  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1.0), np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in pred or target of the (K, K) confusion matrix.

    A class absent from both is left out of the mean rather than counted as 1 (perfect) or 0
    (failed): a set of images without crosses says nothing about crosses. IoU is symmetric in
    pred and target, so which layout is the "prediction" does not matter.
    """
    iou = class_iou(confusion)
    if np.isnan(iou).all():
        raise ValueError("mean_iou: the confusion matrix is empty (no pixels were scored)")
    return float(np.nanmean(iou))


def layout_agreement(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                     num_classes: int = NUM_LAYOUT_CLASSES, ignore_index: int | None = None) -> dict[str, float]:
    """mIoU and pixel accuracy of layouts pred vs target, both (N, H, W) integer class ids.

    One confusion matrix accumulated over the whole set (as the Cityscapes benchmark and
    mmsegmentation do), not a mean of per-image mIoUs: small classes in one image would swing a
    per-image mean. Symmetric in pred and target. Used for image-layout alignment (generated
    layout vs segmenter(generated image)) and both outpainting directions (see the module doc).
    `ignore_index`: pixels whose *target* has this class are left out, and the class drops out of
    the mean (the Cityscapes benchmark's void pixels; HRNet never predicts "unlabeled").
    """
    shape = tuple(pred.shape)
    if len(shape) != 3:
        raise ValueError(f"layout_agreement: expected layouts (N, H, W), got pred {shape}")
    c = confusion_matrix(pred, target, num_classes)
    if ignore_index is None:
        return {"miou": mean_iou(c), "pixel_accuracy": float(np.trace(c) / c.sum()), "n": shape[0]}
    c = c.copy()
    c[ignore_index, :] = 0  # target pixels of the ignored class are not scored
    if c.sum() == 0:
        raise ValueError(f"layout_agreement: every target pixel is of the ignored class {ignore_index}")
    iou = class_iou(c)  # a prediction of the ignored class on a scored pixel still costs its true class
    iou[ignore_index] = np.nan
    return {"miou": float(np.nanmean(iou)), "pixel_accuracy": float(np.trace(c) / c.sum()), "n": shape[0]}


# Objects of `shapes` cover >= 2.2% of the image (a small circle, radius 0.085: ~23 pixels at
# 32x32); a class counts as found from 0.5% of the pixels (6 at 32x32), so that a few stray pixels
# of a class at object edges do not.
DEFAULT_MIN_SHARE = 0.005


def default_min_pixels(height: int, width: int, share: float = DEFAULT_MIN_SHARE) -> int:
    """Pixels a class needs to count as found by `semantic_recall`: ceil(share of H * W), by
    default 0.5% (6 at 32x32); cityscapes uses 0.1%, its template captions' naming threshold."""
    return max(1, math.ceil(share * height * width))


def named_classes(meta: dict[str, Any]) -> list[int]:
    """Layout class ids (1 + shape index, sorted, unique) of the objects a `shapes` caption names.

    Every `shapes` caption names every object (data/shapes.py), so the item's meta is its
    captions' ground truth: a generated image is scored against the objects it was asked for.
    """
    return sorted({1 + shapes.SHAPE_NAMES.index(o["shape"]) for o in meta["objects"]})


def cityscapes_named_classes(caption: str) -> list[int]:
    """Cityscapes train ids (sorted) whose class name a caption contains, GCDP's "searching class
    names in the caption" (arXiv:2308.08157 Sec. 4.3): whole words, case-insensitive, a plural "s"/"es"
    allowed ("cars", "buses"), and "people" for person. The template captions (data/cityscapes.py)
    name every class by its exact name."""
    from t2i_ray.data.cityscapes import TRAIN_CLASSES

    text = caption.lower()
    found = []
    for k, name in enumerate(TRAIN_CLASSES):
        words = r"\s+".join(re.escape(w) for w in name.split())
        pattern = rf"\b{words}(?:s|es)?\b" + (r"|\bpeople\b" if name == "person" else "")
        if re.search(pattern, text):
            found.append(k)
    return found


def semantic_recall(pred_layouts: np.ndarray | torch.Tensor, caption_classes: Sequence[Iterable[int]],
                    min_pixels: int | None = None) -> float:
    """Share of (image, named class) pairs whose class the segmenter finds in the image.

    pred_layouts: (N, H, W) integer class ids, the segmenter's prediction on generated images;
    caption_classes: per image, the class ids its caption names (`named_classes(meta)`).
    A class is found when it covers >= `min_pixels` pixels (default `default_min_pixels(H, W)`;
    the paper counts any pixel, which a segmenter's edge noise would satisfy by chance).
    Averaged over all pairs (micro, like the domain evaluator's attribute recall), whereas GCDP's
    formula averages per-image recalls; the two agree when every caption names as many classes.
    On real `shapes` test images (benchmarks/README.md) the default threshold cuts images with a
    spurious class from 3.7% (1 pixel) to 1.0% and keeps the recall of named classes at 0.999.
    Recall alone rewards clutter (noise images "show" every class): read it with
    `semantic_precision`.
    """
    return semantic_scores(pred_layouts, caption_classes, min_pixels, "semantic_recall")[0]


def semantic_precision(pred_layouts: np.ndarray | torch.Tensor, caption_classes: Sequence[Iterable[int]],
                       min_pixels: int | None = None) -> float:
    """Share of the object classes the segmenter finds in the images (>= `min_pixels` pixels, as
    in `semantic_recall`) that their captions name: 1 when nothing unasked for appears. The
    counterpart that keeps semantic recall honest (an image of noise finds every class). Images in
    which nothing is found add nothing; with no class found at all it is 0."""
    return semantic_scores(pred_layouts, caption_classes, min_pixels, "semantic_precision")[1]


def semantic_scores(pred_layouts, caption_classes, min_pixels: int | None = None,
                    name: str = "semantic_scores", exclude: Iterable[int] = (0,)) -> tuple[float, float]:
    """(`semantic_recall`, `semantic_precision`) in one pass over the images; the classes in
    `exclude` are never counted as found (`shapes`: 0, the background; cityscapes: 19, unlabeled)."""
    exclude = set(int(k) for k in exclude)
    layouts = np.asarray(pred_layouts.cpu() if isinstance(pred_layouts, torch.Tensor) else pred_layouts)
    if layouts.ndim != 3 or len(layouts) != len(caption_classes):
        raise ValueError(f"{name}: expected pred_layouts (N, H, W) and N caption class lists, got "
                         f"{layouts.shape} and {len(caption_classes)} lists")
    threshold = default_min_pixels(*layouts.shape[1:]) if min_pixels is None else min_pixels
    named_found = named_total = found_total = 0
    for layout, named in zip(layouts, caption_classes):
        named = sorted(set(int(k) for k in named))
        if not named:
            continue
        counts = np.bincount(layout.ravel().astype(np.int64), minlength=max(named) + 1)
        found = set(np.flatnonzero(counts >= threshold).tolist()) - exclude
        named_found += len(found & set(named))
        named_total += len(named)
        found_total += len(found)
    if named_total == 0:
        raise ValueError(f"{name}: no caption names a class; nothing to recall")
    return named_found / named_total, (named_found / found_total if found_total else 0.0)


def class_shares(layouts: np.ndarray | torch.Tensor, num_classes: int = NUM_LAYOUT_CLASSES) -> np.ndarray:
    """float64 (N, K): the share of each layout's pixels per class (rows sum to 1)."""
    x = np.asarray(layouts.cpu() if isinstance(layouts, torch.Tensor) else layouts).astype(np.int64)
    if x.ndim != 3:
        raise ValueError(f"class_shares: expected layouts (N, H, W), got {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"class_shares: class ids in [{x.min()}, {x.max()}] outside [0, {num_classes})")
    n, pixels = len(x), x.shape[1] * x.shape[2]
    flat = x.reshape(n, -1) + np.arange(n)[:, None] * num_classes  # (N, H*W), row-offset ids
    return np.bincount(flat.ravel(), minlength=n * num_classes).reshape(n, num_classes) / pixels


def fsd(real_layouts: np.ndarray | torch.Tensor, fake_layouts: np.ndarray | torch.Tensor,
        num_classes: int = NUM_LAYOUT_CLASSES) -> float:
    """Frechet segmentation distance: Frechet distance of Gaussians fitted to the per-class pixel
    shares, in percent, of real (N1, H, W) and generated (N2, H, W) layouts.

    Percent as in Bau et al.'s code (davidbau/ganseeing, seeing/fsd.py: `tally * 100`); GCDP does
    not state its scaling, so compare our values with its Table 1 in kind, not in number. Shares
    rather than counts make real and generated sets of different resolutions comparable. Shares sum to 100, so the covariance has rank <= K - 1;
    fid.frechet_distance handles rank-deficient covariances.
    """
    real = class_shares(real_layouts, num_classes) * 100.0  # (N1, K)
    fake = class_shares(fake_layouts, num_classes) * 100.0  # (N2, K)
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


# ---------------------------------------------------------------------------------------------
# The segmenter


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BN + ReLU at one scale (U-Net, Ronneberger et al. 2015, arXiv 1505.04597)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class LayoutSegmenter(nn.Module):
    """images (B, 3, R, R) in [-1, 1] -> class logits (B, K, R, R).

    A small U-Net: the encoder halves the image down to 4x4 (3 scales at R=32, 6 at R=256), so
    the receptive field at the bottom spans the largest object at every resolution; the decoder
    upsamples (nearest) and concatenates the encoder map of the same scale, which keeps edges
    sharp. Widths width * 2^i, capped at 8 * width.
    """

    def __init__(self, resolution: int, num_classes: int = NUM_LAYOUT_CLASSES, width: int = 8):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"LayoutSegmenter: resolution must be a power of two >= 8, got {resolution}")
        self.config = {"resolution": resolution, "num_classes": num_classes, "width": width}
        num_down = int(np.log2(resolution // 4))
        widths = [min(width * 2**i, 8 * width) for i in range(num_down + 1)]  # 8, 16, 32, 64 at R=32
        self.stem = _conv_block(3, widths[0])
        self.down = nn.ModuleList(_conv_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.up = nn.ModuleList(_conv_block(b + a, a) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        r = self.config["resolution"]
        if images.shape[1:] != (3, r, r):
            raise ValueError(f"LayoutSegmenter({r}x{r}) got images of shape {tuple(images.shape)}")
        skips = [self.stem(images)]  # (B, w0, R, R)
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))  # (B, w_i, R / 2^i, R / 2^i)
        x = skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = block(torch.cat([skip, F.interpolate(x, scale_factor=2.0, mode="nearest")], dim=1))
        return self.head(x)  # (B, K, R, R)


def _render_with_layouts(source: shapes.ShapesSource) -> tuple[np.ndarray, np.ndarray]:
    """All images uint8 (N, R, R, 3) and layouts uint8 (N, R, R) of a ShapesSource."""
    samples = [source[i] for i in range(len(source))]
    return np.stack([s.image for s in samples]), np.stack([s.layout for s in samples])


@torch.enable_grad()  # also when an evaluation under no_grad trains it on first use
def train_segmenter(
    source: shapes.ShapesSource,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
    lr: float = 3e-3,
    width: int = 8,
    log: Callable[[str], None] = console,
    device: str | torch.device = "cpu",
) -> LayoutSegmenter:
    """Train a LayoutSegmenter with per-pixel cross-entropy on the source's exact layouts.

    The source is rendered once into memory; init and batches are pure functions of `seed`.
    Returns the model in eval mode with requires_grad off (a frozen metric network). Raises
    before caching anything on zero steps or a non-finite loss.
    """
    images, layouts = _render_with_layouts(source)
    n, res = images.shape[0], images.shape[1]
    # Callers cache the result: an untrained segmenter would score every later mIoU silently.
    if steps < 1 or n == 0:
        raise ConfigError(f"segmenter: needs >= 1 training step on >= 1 image, got {steps} step(s) on {n} "
                          f"image(s); pass steps >= 1 (default {DEFAULT_SEGMENTER_STEPS})")
    x_all = torch.from_numpy(images)  # (N, R, R, 3) uint8; converted per batch
    y_all = torch.from_numpy(layouts).long()  # (N, R, R)
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = LayoutSegmenter(res, NUM_LAYOUT_CLASSES, width).to(device)
    fit_metric_network(model, x_all, y_all, lambda x: model(_to_model_input(x)), F.cross_entropy, steps,
                       batch_size, lr, seed, f"segmenter {res}x{res}", "cross-entropy", log, device)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def segment(model: LayoutSegmenter, images_iter: Iterable[torch.Tensor | np.ndarray]) -> np.ndarray:
    """Predicted layouts uint8 (N, R, R) (argmax class per pixel) of all batches.

    Batches: float (B, 3, R, R) in [-1, 1] or uint8 (B, R, R, 3) / (B, 3, R, R), quantised to
    the 256 uint8 levels as the domain evaluator does, so real and generated images get the same
    preprocessing.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(_to_model_input(batch).to(device)).argmax(dim=1).to(torch.uint8).cpu().numpy()
           for batch in images_iter]
    model.train(was_training)
    if not out:
        raise ValueError("segment: images_iter yielded no batches")
    return np.concatenate(out)


def _batches(images: np.ndarray | torch.Tensor, batch_size: int) -> list:
    """Split (N, ...) into consecutive batches of at most batch_size."""
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def image_layout_alignment(model: LayoutSegmenter, images: np.ndarray | torch.Tensor,
                           layouts: np.ndarray | torch.Tensor, batch_size: int | None = None,
                           ignore_index: int | None = None) -> dict[str, float]:
    """`layout_agreement` of layouts (N, R, R) vs the segmenter's prediction on images (N, ...).

    images: generated float (N, 3, R, R) in [-1, 1] or uint8 (N, R, R, 3). With the generated
    pair (image, layout) this is GCDP's image-layout alignment mIoU; with a given layout
    and the image generated for it, the layout->image outpainting score (§4.6).
    """
    if len(images) != len(layouts):
        raise ValueError(f"image_layout_alignment: {len(images)} images but {len(layouts)} layouts")
    pred = segment(model, _batches(images, batch_size or segment_batch_size(model)))  # (N, R, R)
    return layout_agreement(pred, layouts, model.config["num_classes"], ignore_index)


def segment_batch_size(model: nn.Module) -> int:
    """Images per segmenter batch: 256, or what the model asks for (HRNet at 1024x2048: a few)."""
    return int(getattr(model, "batch_size", 256))


def _cache_config(data_cfg: DataConfig, steps: int, pool_images: int) -> dict[str, Any]:
    """Everything that determines the cached weights; stored in the file and checked on load."""
    return {
        "version": SEGMENTER_VERSION,
        "dataset": data_cfg.dataset, "resolution": data_cfg.resolution, "data_seed": data_cfg.data_seed,
        "pool_images": pool_images, "pool_seed": _POOL_SEED_OFFSET + data_cfg.data_seed,
        **shapes.difficulty_key(data_cfg),
        "steps": steps, "num_classes": NUM_LAYOUT_CLASSES, **_RECIPE,
    }


def segmenter_cache_path(data_cfg: DataConfig, steps: int, pool_images: int,
                         cache_dir: str) -> tuple[str, dict[str, Any]]:
    """Where the segmenter for these settings is cached, and the config stored with it."""
    config = _cache_config(data_cfg, steps, pool_images)
    return evaluator_file("segmenter", config, cache_dir), config


def load_or_train_segmenter(
    data_cfg: DataConfig,
    steps: int,
    pool_images: int,
    cache_dir: str,
    log: Callable[[str], None] = console,
    device: str | torch.device = "cpu",
) -> tuple[LayoutSegmenter, dict[str, Any]]:
    """The frozen segmenter for `data_cfg`, from `<cache_dir>/evaluators/` or trained and cached.

    info: "backbone" ("segmenter-v1-<config hash>-<weights digest>", to record with every layout
    metric), "cache_path", the cache config, and on the real test split "heldout_miou",
    "heldout_pixel_accuracy", "heldout_iou_<class>" and "heldout_semantic_recall" (the real-image
    references of the layout metrics).
    """
    if data_cfg.dataset != "shapes":
        raise ValueError(f"the segmenter is trained on procedural layouts and exists for data.dataset 'shapes' "
                         f"only, not {data_cfg.dataset!r}; real datasets need a segmentation network loaded "
                         f"from a local weights file, which is not implemented yet")
    path, config = segmenter_cache_path(data_cfg, steps, pool_images, cache_dir)
    payload = load_cached_evaluator(path, config, "segmenter", log)
    if payload is not None:
        model = LayoutSegmenter(config["resolution"], config["num_classes"], config["width"])
        model.load_state_dict(payload["state_dict"])
        model.eval().requires_grad_(False)
        return model.to(device), dict(payload["info"])

    start = time.perf_counter()
    pool = shapes.source_like(data_cfg, pool_images, config["pool_seed"])
    model = train_segmenter(pool, steps, batch_size=_RECIPE["batch_size"], seed=_RECIPE["seed"], lr=_RECIPE["lr"],
                            width=_RECIPE["width"], log=log, device=device)
    train_seconds = time.perf_counter() - start
    test = shapes.build_source(data_cfg, "test")
    test_images, test_layouts = _render_with_layouts(test)
    pred = segment(model, _batches(test_images, 256))  # (N, R, R)
    confusion = confusion_matrix(pred, test_layouts, NUM_LAYOUT_CLASSES)
    iou = class_iou(confusion)
    heldout = {
        "heldout_miou": mean_iou(confusion), "heldout_pixel_accuracy": float(np.trace(confusion) / confusion.sum()),
        **{f"heldout_iou_{name}": float(v) for name, v in zip(shapes.LAYOUT_CLASSES, iou)},
        "heldout_semantic_recall": semantic_recall(pred, [named_classes(test.meta(i)) for i in range(len(test))]),
    }
    info = cache_evaluator(path, model, config, {"train_seconds": train_seconds,
                                                 "heldout_num_images": len(test_images), **config, **heldout})
    log(f"trained segmenter in {train_seconds:.1f}s, held-out mIoU {heldout['heldout_miou']:.3f} "
        f"(pixel accuracy {heldout['heldout_pixel_accuracy']:.3f}) on {len(test_images)} real test images; "
        f"cached at {path}")
    return model, info
