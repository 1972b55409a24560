"""MS-COCO 2014 captions: train = train2014, test = val2014 (the T2I convention, gan_anchors 3.7).

Captions come from the official `annotations/captions_{train,val}2014.json` (5-7 per image);
images without a caption are not listed. No bounding-box crop: the largest centred square is
resized to R x R (DF-GAN resizes the short side then crops at random; the cache keeps the
centre). Grey-scale COCO images are converted to RGB.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2i_ray.data.cub import load_center_square
from t2i_ray.data.reading import DatasetError, DatasetSpec, Item, require

COCO_TREE = """\
<data_root>/
  train2014/COCO_train2014_<id>.jpg
  val2014/COCO_val2014_<id>.jpg
  annotations/captions_train2014.json         official COCO 2014 caption annotations
  annotations/captions_val2014.json"""

SPLIT_DIRS = {"train": "train2014", "test": "val2014"}


def index_coco(root: Path, split: str, data_cfg: Any = None) -> list[Item]:
    if split not in SPLIT_DIRS:
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    folder = SPLIT_DIRS[split]
    ann_path = root / "annotations" / f"captions_{folder}.json"
    require([root / folder, ann_path], "coco", root, COCO_TREE)
    try:
        data = json.loads(ann_path.read_text(encoding="utf-8"))
        images = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]).strip())
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{ann_path}: not a COCO caption file with 'images' [{{id, file_name}}] and "
                           f"'annotations' [{{image_id, caption}}] ({type(err).__name__}: {err})") from err
    orphans = sorted(set(captions) - set(images))
    if orphans:
        raise DatasetError(f"{ann_path}: {len(orphans)} caption(s) refer to image ids not in 'images', "
                           f"e.g. {orphans[:3]}")
    items = [Item(key=Path(name).stem, image_path=root / folder / name, captions=tuple(captions[i]),
                  meta={"key": Path(name).stem, "image_id": i})
             for i, name in sorted(images.items(), key=lambda kv: kv[1]) if captions.get(i)]
    if not items:
        raise DatasetError(f"{ann_path}: no image has a caption")
    return items


COCO = DatasetSpec(name="coco", tree=COCO_TREE, layout_classes=None, crop_rule="center-square+bicubic",
                   index=index_coco, load=load_center_square)
