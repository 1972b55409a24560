"""Multi-Modal CelebA-HQ: faces, 19-class parsing masks and captions (reference diffusion_metrics A.10).

Images `CelebA-HQ-img/{k}.jpg` (1024^2), masks `CelebAMask-HQ-mask-anno/preprocessed/{k}.png`: the
single-channel index maps that CelebAMask-HQ's g_mask.py writes (512^2, 0 = background, then
LAYOUT_CLASSES in this order; later parts overwrite earlier ones). Captions are GCDP's JSONL,
one `{"file_name": "<k>.jpg", "text": [...]}` per line (MM-CelebA-HQ's 10 per image). The split
is given by lists as for CUB (keys "<k>"). Images are resized bicubic, masks nearest (after the
largest centred crop of data.aspect; the 1024^2 faces need none at the default 1); a mask value
>= 19 makes the item unreadable (counted by the cache's bad-image rule).

data.caption_subset (25, 50, 100): GCDP's MM CelebA-HQ-25/50/100 train on that share of the text-image
pairs (arXiv:2308.08157 Fig. 7). GCDP's own subset files ({25,50,100}_captions.jsonl) are not
public, so the subset is drawn here, reproducibly: the round(p% x N) train keys with the smallest
sha1("<k>") (`caption_subset`). It depends on the keys only (not their order or a seed) and is
nested (25 % inside 50 % inside 100 %); the test split is never subsampled.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from t2i_ray.data.reading import (DatasetError, DatasetSpec, Decoded, Item, center_box, hw, open_image,
                                  read_captions_jsonl, read_index_png, read_split_list, require, resize_labels,
                                  resize_rgb)

LAYOUT_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
DEFAULT_CAPTIONS_FILE = "captions.jsonl"

CELEBA_TREE = """\
<data_root>/
  CelebA-HQ-img/<k>.jpg                                 k = 0..29999
  CelebAMask-HQ-mask-anno/preprocessed/<k>.png          index maps 0..18 (CelebAMask-HQ g_mask.py)
  captions.jsonl (or data.captions_file)                {"file_name": "<k>.jpg", "text": [...]} per line
  train/filenames.pickle or train/filenames.txt         keys "<k>" (data.caption_subset: 25/50 % of them)
  test/filenames.pickle  or test/filenames.txt"""


def index_mmceleba(root: Path, split: str, data_cfg: Any = None) -> list[Item]:
    if split not in ("train", "test"):
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    img_dir, mask_dir = root / "CelebA-HQ-img", root / "CelebAMask-HQ-mask-anno" / "preprocessed"
    cap_path = root / (getattr(data_cfg, "captions_file", None) or DEFAULT_CAPTIONS_FILE)
    require([img_dir, mask_dir, cap_path, root / split], "mmceleba", root, CELEBA_TREE)
    names, list_path = read_split_list(root / split)
    captions = read_captions_jsonl(cap_path)
    keys = [Path(n).stem for n in names]
    percent = getattr(data_cfg, "caption_subset", 100)
    if split == "train" and percent != 100:
        keys = caption_subset(keys, percent)
    missing = [k for k in keys if f"{k}.jpg" not in captions]
    if missing:
        raise DatasetError(f"{cap_path}: no captions for {len(missing)} image(s) of {list_path}, e.g. "
                           f"{', '.join(f'{k}.jpg' for k in missing[:3])}")
    return [Item(key=k, image_path=img_dir / f"{k}.jpg", layout_path=mask_dir / f"{k}.png",
                 captions=tuple(captions[f"{k}.jpg"]), meta={"key": k})
            for k in keys]


def caption_subset(keys: list[str], percent: int) -> list[str]:
    """The round(percent% x N) keys (at least 1) with the smallest sha1(key), in their given order."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent: must be in 1..100, got {percent}")
    keep = max(1, math.floor(len(keys) * percent / 100 + 0.5))
    chosen = set(sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())[:keep])
    return [k for k in keys if k in chosen]


def read_index_map(path: Path, num_classes: int) -> np.ndarray:
    """(H, W) uint8 class indices from a single-channel PNG (L or palette indices, never colours)."""
    labels = read_index_png(path)
    if labels.max(initial=0) >= num_classes or labels.min(initial=0) < 0:
        raise ValueError(f"mask {path}: values must be class indices 0..{num_classes - 1}, got "
                         f"{labels.min(initial=0)}..{labels.max(initial=0)}")
    return labels.astype(np.uint8)


def load_mmceleba(item: Item, size: int | tuple[int, int]) -> Decoded:
    """The largest centred crop of the size's aspect (square at R), resized to `size`."""
    img = open_image(item.image_path, "RGB")
    assert item.layout_path is not None
    labels = read_index_map(item.layout_path, len(LAYOUT_CLASSES))
    h, w = hw(size)
    image = resize_rgb(img.crop(center_box(img.width, img.height, w / h)), size)
    mh, mw = labels.shape
    x1, y1, x2, y2 = center_box(mw, mh, w / h)
    return Decoded(image, resize_labels(labels[y1:y2, x1:x2], size))


MMCELEBA = DatasetSpec(name="mmceleba", tree=CELEBA_TREE, layout_classes=LAYOUT_CLASSES,
                       crop_rule="center-square+bicubic/nearest", index=index_mmceleba, load=load_mmceleba)
