"""Cityscapes fine annotations: street images, 20-class layouts, captions (diffusion_metrics A.10).

train = `leftImg8bit/train`, test = `leftImg8bit/val` (the official test split has no public
labels). With data.trainval the train split is train + val, 2,975 + 500 = 3,475 images, as GCDP
trains ("3475 image-layout pairs", arXiv:2308.08157); the test split is then part of the training
set, and every item's meta names its folder ("folder": "train" | "val").
`gtFine/*_gtFine_labelIds.png` holds Cityscapes label ids; they are mapped to the 19 training ids
of cityscapesscripts' labels.py, and every ignored id (255 / -1: void, ego vehicle, parking, guard
rail, ...) to class 19 "unlabeled", so K = 20 (as GCDP).

Captions: GCDP's JSONL (`{"file_name": "<stem>_leftImg8bit.png", "text": [...]}`) when present;
otherwise the paper's template "An image of an urban scene with {classes}." over the classes
covering at least TEMPLATE_MIN_FRACTION of the frame. F2F needs two captions per image, so the
template is written CAPTIONS_PER_IMAGE times with the classes in different orders (caption 0 by
decreasing area, the others in seeded shuffles of the key); with one class they coincide.

The whole 2:1 frame is resized (image bicubic, labels nearest), never cropped: captions and the
semantic-recall metric refer to the whole frame. At data.aspect=2 (the diffusion only; GCDP's
128 x 256 base and 256 x 512 super-resolution sizes) that is an undistorted downscale; at the
default aspect 1 it is squashed to R x R, as FID libraries squash Cityscapes (diffusion_metrics B).
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from t2i_ray.data.reading import (DatasetError, DatasetSpec, Decoded, Item, open_image, read_captions_jsonl,
                                  read_index_png, require, resize_labels, resize_rgb, tree_error)

TRAIN_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
LAYOUT_CLASSES: tuple[str, ...] = (*TRAIN_CLASSES, "unlabeled")
UNLABELED = 19
# labelId -> trainId for the 19 evaluated classes (cityscapesscripts/helpers/labels.py).
LABEL_TO_TRAIN: dict[int, int] = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                                  23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
LUT = np.full(256, UNLABELED, dtype=np.uint8)
for _label, _train in LABEL_TO_TRAIN.items():
    LUT[_label] = _train

TEMPLATE = "An image of an urban scene with {classes}."
TEMPLATE_MIN_FRACTION = 0.001  # a class named by the template covers >= 0.1% of the frame
CAPTIONS_PER_IMAGE = 5
DEFAULT_CAPTIONS_FILE = "captions.jsonl"
SPLIT_DIRS = {"train": "train", "test": "val"}
TRAINVAL_DIRS = ("train", "val")  # data.trainval: the train split reads both (GCDP's 3,475 images)

CITYSCAPES_TREE = """\
<data_root>/
  leftImg8bit/train/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  leftImg8bit/val/<city>/<city>_<seq>_<frame>_leftImg8bit.png      (the test split; also trained on
                                                                   with data.trainval=true)
  gtFine/train/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  gtFine/val/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  captions.jsonl (optional, or data.captions_file)   {"file_name": "..._leftImg8bit.png", "text": [...]}
                                                     without it: "An image of an urban scene with <classes>." """


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes labelIds -> trainIds 0..18, everything ignored -> 19."""
    return LUT[np.asarray(label_ids, dtype=np.uint8)]


def template_captions(train_ids: np.ndarray, key: str) -> tuple[str, ...]:
    counts = np.bincount(train_ids.ravel(), minlength=len(LAYOUT_CLASSES))[:UNLABELED]
    present = [c for c in np.argsort(-counts, kind="stable") if counts[c] >= TEMPLATE_MIN_FRACTION * train_ids.size]
    if not present:
        return (TEMPLATE.replace(" with {classes}", ""),) * 2
    rng = np.random.default_rng([zlib.crc32(key.encode()), 0])
    caps = []
    for k in range(CAPTIONS_PER_IMAGE):
        order = present if k == 0 else [present[j] for j in rng.permutation(len(present))]
        names = [TRAIN_CLASSES[c] for c in order]
        classes = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        caps.append(TEMPLATE.format(classes=classes))
    return tuple(caps)


def split_folders(split: str, data_cfg: Any = None) -> tuple[str, ...]:
    """The leftImg8bit/gtFine folders a split reads: test -> val; train -> train (+ val with data.trainval)."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    if split == "train" and getattr(data_cfg, "trainval", False):
        return TRAINVAL_DIRS
    return (SPLIT_DIRS[split],)


def index_cityscapes(root: Path, split: str, data_cfg: Any = None) -> list[Item]:
    folders = split_folders(split, data_cfg)
    named = getattr(data_cfg, "captions_file", None)
    cap_path = root / (named or DEFAULT_CAPTIONS_FILE)
    dirs = [(f, root / "leftImg8bit" / f, root / "gtFine" / f) for f in folders]
    require([p for _, img, gt in dirs for p in (img, gt)] + ([cap_path] if named else []), "cityscapes", root,
            CITYSCAPES_TREE)
    captions = read_captions_jsonl(cap_path) if cap_path.is_file() else None
    items = []
    for folder, img_dir, gt_dir in dirs:
        images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise tree_error("cityscapes", root, CITYSCAPES_TREE, f"no <city>/*_leftImg8bit.png under {img_dir}")
        for path in images:
            stem = path.name[: -len("_leftImg8bit.png")]
            caps: tuple[str, ...] = ()
            if captions is not None:
                if path.name not in captions:
                    raise DatasetError(f"{cap_path}: no captions for {path.name}; add it, or remove the file "
                                       f"to use the template captions")
                caps = tuple(captions[path.name])
            items.append(Item(key=stem, image_path=path, captions=caps,
                              layout_path=gt_dir / path.parent.name / f"{stem}_gtFine_labelIds.png",
                              meta={"key": stem, "city": path.parent.name, "folder": folder}))
    return items


def load_cityscapes(item: Item, size: int | tuple[int, int]) -> Decoded:
    """The whole frame resized to `size` (R: R x R, squashed; (H, W): e.g. 128 x 256, undistorted)."""
    img = open_image(item.image_path, "RGB")
    assert item.layout_path is not None
    label_ids = read_index_png(item.layout_path)
    if label_ids.max(initial=0) > 255 or label_ids.min(initial=0) < 0:
        raise ValueError(f"labelIds must be 0..255, got {label_ids.min()}..{label_ids.max()}")
    if label_ids.shape != (img.height, img.width):
        raise ValueError(f"labelIds {label_ids.shape[1]}x{label_ids.shape[0]} do not match the image "
                         f"{img.width}x{img.height}")
    train_ids = label_ids_to_train_ids(label_ids)
    caps = None if item.captions else template_captions(train_ids, item.key)
    return Decoded(resize_rgb(img, size), resize_labels(train_ids, size), caps)


CITYSCAPES = DatasetSpec(name="cityscapes", tree=CITYSCAPES_TREE, layout_classes=LAYOUT_CLASSES,
                         crop_rule=f"squash-full-frame+bicubic/nearest;template-v1-{TEMPLATE_MIN_FRACTION}",
                         index=index_cityscapes, load=load_cityscapes)
