"""CUB-200-2011 and Oxford-102 flowers in the AttnGAN/DF-GAN layout (reference gan_anchors 3.7).

Both use Reed et al.'s captions (`text/<class>/<image>.txt`, 10 lines each) and the split lists
`train/filenames.*`, `test/filenames.*` whose entries are keys "<class>/<image>" (no extension).
CUB images are cropped around the bird first, exactly as AttnGAN's `get_imgs`: a box of side
1.5 x the bounding box's larger side (r = int(0.75 * max(w, h))) centred on the bbox centre
(integer-truncated), clipped to the image, then resized to R x R. Near a border the clipped box is
not square and the resize stretches it, as in the reference code. Flowers have no boxes: the
largest centred square is resized.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from t2i_ray.data.reading import (DatasetError, DatasetSpec, Decoded, Item, center_square, open_image,
                                  read_caption_lines, read_split_list, require, resize_rgb, tree_error)

CUB_TREE = """\
<data_root>/
  CUB_200_2011/images/<class>/<image>.jpg     official CUB_200_2011.tgz
  CUB_200_2011/images.txt                     "<id> <class>/<image>.jpg"
  CUB_200_2011/bounding_boxes.txt             "<id> <x> <y> <width> <height>"
  text/<class>/<image>.txt                    captions, one per line (10 per image)
  train/filenames.pickle or train/filenames.txt   keys "<class>/<image>"
  test/filenames.pickle  or test/filenames.txt"""

OXFORD_TREE = """\
<data_root>/
  images/<image>.jpg                          e.g. images/image_06734.jpg
  text/<class>/<image>.txt                    captions, one per line (10 per image)
  train/filenames.pickle or train/filenames.txt   keys "<class>/<image>" (or "<image>" with text/<image>.txt)
  test/filenames.pickle  or test/filenames.txt"""

SPLIT_DIRS = {"train": "train", "test": "test"}


def _split_dir(split: str) -> str:
    if split not in SPLIT_DIRS:
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    return SPLIT_DIRS[split]


def _strip_jpg(key: str) -> str:
    return key[:-4] if key.lower().endswith(".jpg") else key


def _read_captions(root: Path, keys: list[str], dataset: str, tree: str) -> list[list[str]]:
    out, missing, empty = [], [], []
    for key in keys:
        path = root / "text" / f"{key}.txt"
        if not path.is_file():
            missing.append(path)
            out.append([])
            continue
        caps = read_caption_lines(path)
        if not caps:
            empty.append(path)
        out.append(caps)
    if missing:
        raise tree_error(dataset, root, tree, f"{len(missing)} caption file(s) missing, e.g. "
                         f"{', '.join(str(p) for p in missing[:3])}")
    if empty:
        raise DatasetError(f"{len(empty)} caption file(s) have no caption, e.g. "
                           f"{', '.join(str(p) for p in empty[:3])}")
    return out


def _class_meta(key: str) -> dict[str, Any]:
    """CUB/flower class folders look like "001.Black_footed_Albatross" / "class_00001"."""
    if "/" not in key:
        return {}
    cls = key.split("/", 1)[0]
    digits = cls.split(".", 1)[0] if "." in cls else cls.rsplit("_", 1)[-1]
    return {"class": cls, "class_id": int(digits)} if digits.isdigit() else {"class": cls}


def read_cub_boxes(base: Path) -> dict[str, tuple[float, float, float, float]]:
    """key "<class>/<image>" -> bbox (x, y, w, h) from images.txt + bounding_boxes.txt."""
    id_to_key: dict[str, str] = {}
    for n, line in enumerate((base / "images.txt").read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{base / 'images.txt'}:{n}: expected '<id> <class>/<image>.jpg', got {line!r}")
            id_to_key[parts[0]] = _strip_jpg(parts[1])
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for n, line in enumerate((base / "bounding_boxes.txt").read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            parts = line.split()
            try:
                box = tuple(float(v) for v in parts[1:])
            except ValueError:
                box = ()
            if len(parts) != 5 or len(box) != 4 or parts[0] not in id_to_key or box[2] <= 0 or box[3] <= 0:
                raise DatasetError(f"{base / 'bounding_boxes.txt'}:{n}: expected '<id> <x> <y> <w> <h>' with an "
                                   f"id from images.txt and w, h > 0, got {line!r}")
            boxes[id_to_key[parts[0]]] = box  # type: ignore[assignment]
    return boxes


def cub_crop_box(width: int, height: int, box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2): AttnGAN's crop of side 1.5 x max(w, h) around the bbox, clipped to the image."""
    x, y, w, h = box
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    return max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r)


def index_cub(root: Path, split: str, data_cfg: Any = None) -> list[Item]:
    base = root / "CUB_200_2011"
    require([base / "images", base / "images.txt", base / "bounding_boxes.txt", root / "text",
             root / _split_dir(split)], "cub", root, CUB_TREE)
    names, list_path = read_split_list(root / _split_dir(split))
    keys = [_strip_jpg(k) for k in names]
    boxes = read_cub_boxes(base)
    unknown = [k for k in keys if k not in boxes]
    if unknown:
        raise DatasetError(f"{list_path}: {len(unknown)} key(s) not in CUB_200_2011/images.txt, e.g. "
                           f"{', '.join(unknown[:3])}; keys look like '001.Black_footed_Albatross/"
                           f"Black_Footed_Albatross_0001_796111'")
    captions = _read_captions(root, keys, "cub", CUB_TREE)
    return [Item(key=k, image_path=base / "images" / f"{k}.jpg", captions=tuple(c), box=boxes[k],
                 meta={"key": k, **_class_meta(k)})
            for k, c in zip(keys, captions)]


def load_cub(item: Item, resolution: int) -> Decoded:
    img = open_image(item.image_path, "RGB")
    assert item.box is not None
    return Decoded(resize_rgb(img.crop(cub_crop_box(img.width, img.height, item.box)), resolution))


def index_oxford102(root: Path, split: str, data_cfg: Any = None) -> list[Item]:
    require([root / "images", root / "text", root / _split_dir(split)], "oxford102", root, OXFORD_TREE)
    names, _ = read_split_list(root / _split_dir(split))
    keys = [_strip_jpg(k) for k in names]
    captions = _read_captions(root, keys, "oxford102", OXFORD_TREE)
    return [Item(key=k, image_path=root / "images" / f"{k.rsplit('/', 1)[-1]}.jpg", captions=tuple(c),
                 meta={"key": k, **_class_meta(k)})
            for k, c in zip(keys, captions)]


def load_center_square(item: Item, resolution: int) -> Decoded:
    img = open_image(item.image_path, "RGB")
    return Decoded(resize_rgb(img.crop(center_square(img.width, img.height)), resolution))


CUB = DatasetSpec(name="cub", tree=CUB_TREE, layout_classes=None,
                  crop_rule="attngan-bbox-1.5x-clipped+bicubic", index=index_cub, load=load_cub)
OXFORD102 = DatasetSpec(name="oxford102", tree=OXFORD_TREE, layout_classes=None,
                        crop_rule="center-square+bicubic", index=index_oxford102, load=load_center_square)
