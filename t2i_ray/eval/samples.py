"""The sample grid every finished run writes: `samples/<run>.png` (first row real test images, then
the method's samples for the same captions under a fixed seed) and `<run>.json` (the captions)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from t2i_ray.paths import RunPaths
from t2i_ray.config import ExperimentConfig

GRID_SEED = 1234  # the same draws for every run, so grids of different runs compare image by image


def tile(images: np.ndarray, cols: int) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> one (rows*H, cols*W[, C]) canvas, row-major."""
    n, h, w = images.shape[:3]
    rows = -(-n // cols)
    canvas = np.zeros((rows * h, cols * w) + images.shape[3:], np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[k]
    return canvas


@torch.no_grad()
def save_samples(cfg: ExperimentConfig, sample, ctx, run_name: str, num: int = 16,
                 mask_sample: Callable | None = None) -> Path:
    """Write the grid for `sample(ids, lens, generator)`; return the PNG's path.

    With `mask_sample` (generators that predict spatial masks, e.g. SSA-GAN), `<run>_masks.png`
    beside it: one row per block (coarse to fine), the same samples, masks in grey (white = 1).
    """
    from PIL import Image

    items = [ctx.test_set[i] for i in range(min(num, len(ctx.test_set)))]
    ids = torch.stack([it["caption"] for it in items])
    lens = torch.stack([it["caption_len"] for it in items])
    real = torch.stack([it["image"] for it in items])
    fake = sample(ids, lens, torch.Generator().manual_seed(GRID_SEED)).float().cpu().clamp(-1, 1)
    grid = ((torch.cat([real, fake]) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # (2n, H, W, 3)
    n, h, w = len(items), grid.shape[1], grid.shape[2]
    out = RunPaths.of(cfg).sample_grid(run_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile(grid, n)).save(out)
    captions = [ctx.damsm.vocab.decode(it["caption"][: int(it["caption_len"])].tolist()) for it in items]
    out.with_suffix(".json").write_text(json.dumps({"captions": captions}, indent=1))
    if mask_sample is not None:
        masks = mask_sample(ids, lens, torch.Generator().manual_seed(GRID_SEED))  # [(n, 1, h_k, w_k)] per block
        rows = [F.interpolate(m.float().cpu(), size=(h, w), mode="nearest") for m in masks]
        mask_grid = (torch.cat(rows)[:, 0] * 255).round().byte().numpy()  # (blocks * n, H, W)
        Image.fromarray(tile(mask_grid, n)).save(RunPaths.of(cfg).sample_grid(run_name, "_masks"))
    return out


def colorize(layouts: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, H, W) class indices -> (N, H, W, 3) uint8 in a fixed palette (class 0 black, the rest
    evenly spaced hues), the same colours in every figure of a dataset."""
    import colorsys

    palette = np.zeros((max(num_classes, 1), 3), np.uint8)
    for k in range(1, num_classes):
        hue = (k - 1) / max(num_classes - 1, 1)
        palette[k] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.95)]
    return palette[np.clip(layouts, 0, num_classes - 1)]


def _uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def save_layout_samples(cfg: ExperimentConfig, layout_sample: Callable, outpaint: Callable | None, ctx,
                        run_name: str, num_classes: int, num: int = 8) -> dict[str, str]:
    """`<run>_layouts.png`: rows real image | real layout | generated image | generated layout for
    the same test captions; with `outpaint`, `<run>_outpaint.png`: rows real layout | image generated
    from it (layout -> image) | real image | layout generated from it (image -> layout)."""
    from PIL import Image

    items = [ctx.test_set[i] for i in range(min(num, len(ctx.test_set)))]
    ids = torch.stack([it["caption"] for it in items])
    lens = torch.stack([it["caption_len"] for it in items])
    real = torch.stack([it["image"] for it in items])
    real_layouts = torch.stack([it["layout"] for it in items]) if "layout" in items[0] else None
    images, layouts = layout_sample(ids, lens, torch.Generator().manual_seed(GRID_SEED))
    rows = [_uint8(real)]
    if real_layouts is not None:
        rows.append(colorize(real_layouts.numpy(), num_classes))
    rows += [_uint8(images), colorize(layouts.cpu().numpy(), num_classes)]
    out = RunPaths.of(cfg).sample_grid(run_name, "_layouts")
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile(np.concatenate(rows), len(items))).save(out)
    paths = {"layout_samples_path": str(out)}
    if outpaint is not None and real_layouts is not None:
        seed = GRID_SEED
        from_layout, _ = outpaint(ids, lens, torch.Generator().manual_seed(seed), known_layouts=real_layouts)
        _, from_image = outpaint(ids, lens, torch.Generator().manual_seed(seed), known_images=real)
        grid = np.concatenate([colorize(real_layouts.numpy(), num_classes), _uint8(from_layout), _uint8(real),
                               colorize(from_image.cpu().numpy(), num_classes)])
        path = RunPaths.of(cfg).sample_grid(run_name, "_outpaint")
        Image.fromarray(tile(grid, len(items))).save(path)
        paths["outpaint_samples_path"] = str(path)
    return paths


__all__ = ["save_samples", "save_layout_samples", "colorize", "tile", "GRID_SEED"]
