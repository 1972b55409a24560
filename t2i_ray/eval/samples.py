"""The sample grid every finished run writes: `samples/<run>.png` (first row real test images, then
the method's samples for the same captions under a fixed seed) and `<run>.json` (the captions);
and samples of a trained run for a user's own captions (sweeps/sample.py): `read_captions`,
`encode_captions` (what the run reads of each), `sample_captions`, `save_caption_samples`."""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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


@dataclass
class Caption:
    """A user's caption as the run reads it: the word ids it keeps and the words it drops."""

    text: str
    ids: list[int]
    unknown: list[str]  # not in the run's vocabulary: dropped
    cut: list[str]  # known words past data.words_num: dropped (the run reads at most that many)


def read_captions(path: str | Path) -> list[str]:
    """One caption per line of a UTF-8 text file; blank lines and lines starting with # skipped.
    FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions: no file at {path} (a text file, one caption per line)")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    captions = [c for c in captions if c and not c.startswith("#")]
    if not captions:
        raise ValueError(f"--captions: {path} holds no caption (one per line; blank and # lines are skipped)")
    return captions


def encode_captions(texts: list[str], vocab, words_num: int) -> list[Caption]:
    """Each caption's ids as training and evaluation encode it (`Vocabulary.encode`: unknown words
    dropped, the first `words_num` known words kept), with what was dropped."""
    out = []
    for text in texts:
        known = vocab.encode(text, 10**6)
        out.append(Caption(text, known[:words_num], vocab.unknown_words(text),
                           [vocab.words[i] for i in known[words_num:]]))
    return out


def caption_seed(seed: int, text: str) -> int:
    """The seed of one caption's samples: a function of `seed` and the caption's text only."""
    return int(np.random.SeedSequence([seed, zlib.crc32(text.encode("utf-8"))]).generate_state(1)[0])


@torch.no_grad()
def sample_captions(method, captions: list[Caption], per_caption: int, seed: int, batch_size: int,
                    words_num: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`per_caption` samples of every caption, (images (C*K, 3, H, W) in [-1, 1], layouts (C*K, H, W)
    or None), sample k of caption c at c*K + k. A caption's samples are drawn from their own CPU
    generator seeded by (`seed`, its text) (`caption_seed`), as is torch's global RNG (StyleGAN2's
    noise inputs) inside a fork of it: they do not change when other captions are added or moved."""
    from t2i_ray.data.text import pad_ids

    layout_sample = method.layout_sampler()
    sample = layout_sample or (lambda ids, lens, g: (method.sampler()(ids, lens, g), None))
    images, layouts = [], []
    with torch.random.fork_rng(devices=[]):
        for caption in captions:
            ids = torch.from_numpy(np.stack([pad_ids(caption.ids, words_num)] * per_caption))
            lens = torch.full((per_caption,), len(caption.ids))
            generator = torch.Generator().manual_seed(caption_seed(seed, caption.text))
            torch.manual_seed(caption_seed(seed, caption.text))
            for b in range(0, per_caption, batch_size):
                img, lay = sample(ids[b:b + batch_size], lens[b:b + batch_size], generator)
                images.append(img.float().cpu().clamp(-1, 1))
                if lay is not None:
                    layouts.append(lay.cpu())
    return torch.cat(images), (torch.cat(layouts) if layouts else None)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


def caption_grid(images: np.ndarray, layouts: np.ndarray | None, captions: list[str], title: str,
                 legend: list[tuple[str, tuple[int, int, int]]] | None = None, notes: list[str] | None = None,
                 cell: int = 128, label_width: int = 280) -> np.ndarray:
    """A labelled grid: one row per caption, its text on the left (and its note below it in red,
    e.g. the words the run dropped), then its K images (each followed by its colourised layout
    when `layouts` is given), upscaled to `cell` pixels high (nearest; width by the images' aspect,
    e.g. 2 x cell for Cityscapes' 1:2); `title` above and a colour
    legend of the layout classes below. images (C, K, H, W, 3) uint8, layouts (C, K, H, W, 3)
    uint8. Returns (height, width, 3) uint8."""
    from PIL import Image, ImageDraw

    n_caps, k = images.shape[:2]
    cell_w = max(1, round(cell * images.shape[3] / images.shape[2]))  # keep the aspect
    per_sample = 2 if layouts is not None else 1
    pad, font, small = 6, _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(probe, c, font, label_width - 2 * pad) for c in captions]
    noted = [_wrap(probe, n, small, label_width - 2 * pad) if n else [] for n in (notes or [""] * len(captions))]
    line_h = 18
    row_h = [max(cell, (len(w) + len(n)) * line_h + 2 * pad) + pad for w, n in zip(wrapped, noted)]
    title_h = 2 * line_h
    legend_h = (line_h + pad) * (-(-len(legend) // 4)) + pad if legend else 0
    width = label_width + k * per_sample * (cell_w + pad) + pad
    canvas = Image.new("RGB", (width, title_h + sum(row_h) + legend_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=small)
    y = title_h
    for c in range(n_caps):
        for j, line in enumerate(wrapped[c]):
            draw.text((pad, y + pad + j * line_h), line, fill="black", font=font)
        for j, line in enumerate(noted[c], start=len(wrapped[c])):
            draw.text((pad, y + pad + j * line_h), line, fill=(200, 0, 0), font=small)
        x = label_width
        for s in range(k):
            tiles = [images[c, s]] + ([layouts[c, s]] if layouts is not None else [])
            for t in tiles:
                canvas.paste(Image.fromarray(t).resize((cell_w, cell), Image.NEAREST), (x, y))
                x += cell_w + pad
        y += row_h[c]
    for i, (name, colour) in enumerate(legend or []):
        lx, ly = pad + (i % 4) * 160, y + pad + (i // 4) * (line_h + pad)
        draw.rectangle([lx, ly, lx + line_h, ly + line_h], fill=tuple(colour), outline="black")
        draw.text((lx + line_h + pad, ly + 1), name, fill="black", font=small)
    return np.asarray(canvas)


def save_caption_samples(out_dir: str | Path, captions: list[Caption], images: torch.Tensor,
                         layouts: torch.Tensor | None, title: str, class_names: tuple[str, ...] | None,
                         info: dict) -> dict[str, Any]:
    """Write `grid.png` (labelled), one PNG per sample (`caption<c>_sample<k>.png`, and
    `..._layout.png` beside it for a layout), and `samples.json` (the captions as read, the words
    dropped, every file, and `info`: run, checkpoint, seed, ...). Returns that JSON's content."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    k = len(images) // len(captions)
    pixels = _uint8(images).reshape(len(captions), k, *images.shape[2:], 3)
    num_classes = len(class_names) if class_names else int(layouts.max()) + 1 if layouts is not None else 0
    coloured = None if layouts is None else colorize(layouts.numpy(), num_classes).reshape(
        len(captions), k, *layouts.shape[1:], 3)
    entries = []
    for c, caption in enumerate(captions):
        files = []
        for s in range(k):
            name = f"caption{c:02d}_sample{s}"
            Image.fromarray(pixels[c, s]).save(out / f"{name}.png")
            sample = {"image": f"{name}.png"}
            if coloured is not None:
                Image.fromarray(coloured[c, s]).save(out / f"{name}_layout.png")
                sample["layout"] = f"{name}_layout.png"
            files.append(sample)
        entries.append({"caption": caption.text, "words_read": len(caption.ids), "unknown_words": caption.unknown,
                        "words_past_limit": caption.cut, "samples": files})
    legend = None
    if coloured is not None and class_names:
        palette = colorize(np.arange(num_classes)[:, None, None], num_classes)[:, 0, 0]
        legend = [(name, tuple(int(v) for v in palette[i])) for i, name in enumerate(class_names)]
    notes = ["dropped: " + ", ".join(c.unknown + c.cut) if c.unknown or c.cut else "" for c in captions]
    grid = caption_grid(pixels, coloured, [c.text for c in captions], title, legend, notes)
    Image.fromarray(grid).save(out / "grid.png")
    meta = {**info, "grid": "grid.png", "per_caption": k, "captions": entries,
            "layout_classes": list(class_names) if coloured is not None and class_names else None}
    (out / "samples.json").write_text(json.dumps(meta, indent=1))
    return meta


__all__ = ["save_samples", "save_layout_samples", "colorize", "tile", "GRID_SEED", "Caption", "read_captions",
           "encode_captions", "caption_seed", "sample_captions", "caption_grid", "save_caption_samples"]
