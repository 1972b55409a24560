"""Real-dataset readers and the decoded-image cache, on tiny fixtures written in each real format."""
from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_ray.config import ConfigError, DataConfig, build_config, parse_override
from t2i_ray.data import cache as C
from t2i_ray.data import registry as R
from t2i_ray.data.cityscapes import LABEL_TO_TRAIN, label_ids_to_train_ids, template_captions
from t2i_ray.data.cub import cub_crop_box
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data.reading import DatasetError, load_string_list_pickle, read_split_list
from t2i_ray.data.text import Vocabulary

REPO = Path(__file__).resolve().parents[1]
W, H = 40, 30  # fixture images: 40 wide, 30 high
CUB_CLASSES = ("001.Black_footed_Albatross", "002.Laysan_Albatross")


def _jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=95, subsampling=0)


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode=mode).save(path)


def _noise(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3))


def _quiet(_: str) -> None:
    pass


def _source(dataset: str, root: Path, split: str, cache: Path, res: int = 32, **kw):
    return R.build_source(DataConfig(dataset=dataset, data_root=str(root), resolution=res, **kw), split, cache,
                          log=_quiet)


# --------------------------------------------------------------------------------- fixtures


def write_cub(root: Path, per_class: int = 4) -> dict[str, tuple]:
    """CUB_200_2011 tree; returns key -> bbox. Inside each crop box the image is red, outside blue."""
    base = root / "CUB_200_2011"
    lines_img, lines_box, keys, boxes = [], [], [], {}
    n = 0
    for c, cls in enumerate(CUB_CLASSES):
        for j in range(per_class):
            n += 1
            key = f"{cls}/{cls.split('.')[1]}_{j:04d}_{n}"
            box = (10.0 + j % 20, 5.0, 12.0, 8.0) if j != 1 else (30.0, 20.0, 8.0, 8.0)  # j=1: clipped at the corner
            x1, y1, x2, y2 = cub_crop_box(W, H, box)
            rgb = np.zeros((H, W, 3))
            rgb[..., 2] = 255
            rgb[y1:y2, x1:x2] = (255, 0, 0)
            _jpeg(base / "images" / f"{key}.jpg", rgb)
            lines_img.append(f"{n} {key}.jpg")
            lines_box.append(f"{n} {box[0]} {box[1]} {box[2]} {box[3]}")
            text = root / "text" / f"{key}.txt"
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text(f"a bird number {n} with red wings\nthis bird is class {c} and small\n\n"
                            f"the bird has a short beak\n")
            keys.append(key)
            boxes[key] = box
    (base / "images.txt").write_text("\n".join(lines_img) + "\n")
    (base / "bounding_boxes.txt").write_text("\n".join(lines_box) + "\n")
    train = [k for k in keys if int(k.rsplit("_", 2)[1]) % 4 != 3]
    test = [k for k in keys if k not in train]
    (root / "train").mkdir()
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(train, f, protocol=2)  # as the reference repos ship them
    (root / "test").mkdir()
    (root / "test" / "filenames.txt").write_text("\n".join(test) + "\n")
    return boxes


@pytest.fixture
def cub_root(tmp_path):
    root = tmp_path / "birds"
    write_cub(root)
    return root


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- split lists


def test_split_lists_pickle_and_txt_and_restricted_unpickling(tmp_path):
    names = ["001.A/a_1", "002.B/b_2"]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "filenames.pickle").write_bytes(pickle.dumps(names))
    assert read_split_list(tmp_path / "p")[0] == names
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "filenames.txt").write_text("001.A/a_1\n\n002.B/b_2\n")
    assert read_split_list(tmp_path / "t")[0] == names
    tup = tmp_path / "tuple.pickle"
    tup.write_bytes(pickle.dumps(tuple(names), protocol=0))
    assert load_string_list_pickle(tup) == names

    marker = tmp_path / "pwned"
    for protocol in (0, 2, 4):
        evil = tmp_path / f"evil{protocol}.pickle"
        evil.write_bytes(pickle.dumps(["ok", _Evil(marker)], protocol=protocol))
        with pytest.raises(DatasetError, match=r"refused.*(posix|os|nt)\.system.*\.txt"):
            load_string_list_pickle(evil)
    assert not marker.exists()  # refused before anything ran

    for obj, what in (({"a": 1}, "dict"), (["a", 3], "list holding int"), ([b"a"], "list holding bytes")):
        bad = tmp_path / "bad.pickle"
        bad.write_bytes(pickle.dumps(obj))
        with pytest.raises(DatasetError, match=f"must be a list of strings, got a {what}"):
            load_string_list_pickle(bad)
    (tmp_path / "trunc.pickle").write_bytes(pickle.dumps(names)[:-5])
    with pytest.raises(DatasetError, match=r"trunc\.pickle: (not a plain split list|cannot read it)"):
        load_string_list_pickle(tmp_path / "trunc.pickle")
    with pytest.raises(DatasetError, match="no filenames.pickle or filenames.txt"):
        read_split_list(tmp_path / "nothing")


# ------------------------------------------------------------------------------------- CUB


def test_cub_crop_box_matches_attngan_by_hand():
    # r = int(0.75 * 12) = 9; centre (int(32/2), int(18/2)) = (16, 9); clipped at the top.
    assert cub_crop_box(W, H, (10, 5, 12, 8)) == (7, 0, 25, 18)
    # r = 6, centre (34, 24): clipped at the right and bottom, so not square.
    assert cub_crop_box(W, H, (30, 20, 8, 8)) == (28, 18, 40, 30)
    # far from the borders it is a square of side 1.5 x the larger side
    x1, y1, x2, y2 = cub_crop_box(1000, 1000, (400, 300, 100, 60))
    assert (x2 - x1, y2 - y1) == (150, 150) and (x1 + x2) / 2 == 450 and (y1 + y2) / 2 == 330


def test_cub_reads_crop_captions_and_meta(cub_root, tmp_path):
    train = _source("cub", cub_root, "train", tmp_path / "cache")
    test = _source("cub", cub_root, "test", tmp_path / "cache")
    assert (len(train), len(test)) == (6, 2)
    s = train[0]
    assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8 and s.layout is None
    assert s.captions == ["a bird number 1 with red wings", "this bird is class 0 and small",
                          "the bird has a short beak"]  # blank lines dropped
    assert s.meta["class"] == CUB_CLASSES[0] and s.meta["class_id"] == 1 and s.meta["index"] == 0
    assert train.meta(4)["class_id"] == 2
    for i in range(len(train)):
        img = train.image(i).astype(int)
        # the crop holds exactly the red region (blue only outside the 1.5x box)
        assert img[..., 0].mean() > 230 and img[..., 2].mean() < 25, train.keys[i]
        path = cub_root / "CUB_200_2011" / "images" / f"{train.keys[i]}.jpg"
        box = tuple(float(v) for v in (cub_root / "CUB_200_2011" / "bounding_boxes.txt").read_text()
                    .splitlines()[int(train.keys[i].rsplit("_", 1)[1]) - 1].split()[1:])
        with Image.open(path) as im:
            want = np.asarray(im.convert("RGB").crop(cub_crop_box(W, H, box))
                              .resize((32, 32), Image.Resampling.BICUBIC))
        assert np.array_equal(train.image(i), want)
    assert isinstance(train.images(), np.memmap) and not train.images().flags.writeable
    assert R.layout_classes("cub") is None


def test_text_image_dataset_on_a_real_source(cub_root, tmp_path):
    src = _source("cub", cub_root, "train", tmp_path / "cache")
    ds = TextImageDataset(src, Vocabulary.build(src.all_captions()), 18, train=True, seed=0)
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and "attributes" not in item
    torch.testing.assert_close(item["image"], torch.from_numpy(src.image(3)).permute(2, 0, 1).float() / 127.5 - 1)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["caption"].shape == (4, 18)
    assert "layout" not in batch
    with pytest.raises(ValueError, match="has no layouts; datasets with layouts: shapes, mmceleba, cityscapes"):
        TextImageDataset(src, Vocabulary.build(src.all_captions()), 18, train=True, layouts=True)


# ---------------------------------------------------------------------- other formats


def test_oxford102_reads_split_lists_and_centre_crop(tmp_path):
    root = tmp_path / "flowers"
    keys = [f"class_{c:05d}/image_{i:05d}" for c, i in ((1, 1), (1, 2), (2, 3))]
    for n, key in enumerate(keys):
        _jpeg(root / "images" / f"{key.split('/')[1]}.jpg", _noise(n))
        (root / "text" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "text" / f"{key}.txt").write_text(f"a flower {n} with petals\npurple petals {n}\n")
    (root / "train").mkdir()
    (root / "train" / "filenames.txt").write_text("\n".join(keys[:2]))
    (root / "test").mkdir()
    (root / "test" / "filenames.pickle").write_bytes(pickle.dumps(keys[2:]))
    train, test = (_source("oxford102", root, s, tmp_path / "c") for s in ("train", "test"))
    assert (len(train), len(test)) == (2, 1) and test.meta(0)["class_id"] == 2
    assert train.captions(1) == ["a flower 1 with petals", "purple petals 1"]
    with Image.open(root / "images" / "image_00001.jpg") as im:  # 40x30: centre square x 5..35
        want = np.asarray(im.convert("RGB").crop((5, 0, 35, 30)).resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(train.image(0), want)


def write_coco(root: Path) -> None:
    for folder, ids in (("train2014", (9, 25, 30)), ("val2014", (42, 73))):
        images, anns = [], []
        for n, i in enumerate(ids):
            name = f"COCO_{folder}_{i:012d}.jpg"
            rgb = _noise(i)
            if n == 0:  # COCO has some grey-scale JPEGs
                _jpeg(root / folder / name, np.repeat(rgb[..., :1], 3, axis=2))
                with Image.open(root / folder / name) as im:
                    im.convert("L").save(root / folder / name, quality=95)
            else:
                _jpeg(root / folder / name, rgb)
            images.append({"id": i, "file_name": name, "width": W, "height": H})
            anns += [{"id": 100 * i + k, "image_id": i, "caption": f"  Picture {i} caption {k}. "} for k in range(5)]
        images.append({"id": 999, "file_name": f"COCO_{folder}_000000000999.jpg"})  # no caption: not listed
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"captions_{folder}.json").write_text(
            json.dumps({"images": images, "annotations": anns}))


def test_coco_captions_from_the_2014_json(tmp_path):
    write_coco(tmp_path / "coco")
    train, test = (_source("coco", tmp_path / "coco", s, tmp_path / "c") for s in ("train", "test"))
    assert (len(train), len(test)) == (3, 2)
    assert train.keys == ["COCO_train2014_000000000009", "COCO_train2014_000000000025",
                          "COCO_train2014_000000000030"]
    assert train.captions(1) == [f"Picture 25 caption {k}." for k in range(5)]
    assert test.meta(1)["image_id"] == 73
    grey = train.image(0)
    assert np.array_equal(grey[..., 0], grey[..., 1])  # grey-scale converted to RGB


def write_celeba(root: Path, n: int = 4) -> None:
    for k in range(n):
        _jpeg(root / "CelebA-HQ-img" / f"{k}.jpg", _noise(k, 40, 40))
        mask = np.zeros((20, 20), np.uint8)
        mask[:10] = 13  # hair on top
        mask[10:, :10] = 1  # skin bottom-left
        mask[10:, 10:] = 18 if k else 1  # cloth bottom-right
        _png(root / "CelebAMask-HQ-mask-anno" / "preprocessed" / f"{k}.png", mask, "L")
    with open(root / "captions.jsonl", "w") as f:
        for k in range(n):
            f.write(json.dumps({"file_name": f"{k}.jpg", "text": [f"she has black hair {k}", f"the woman {k} smiles"]})
                    + "\n")
    (root / "train").mkdir()
    (root / "train" / "filenames.txt").write_text("\n".join(str(k) for k in range(n - 1)))
    (root / "test").mkdir()
    (root / "test" / "filenames.pickle").write_bytes(pickle.dumps([str(n - 1)]))


def test_mmceleba_masks_and_jsonl_captions(tmp_path):
    root = tmp_path / "celeba"
    write_celeba(root)
    train = _source("mmceleba", root, "train", tmp_path / "c")
    assert len(train) == 3 and train.layout_classes == R.layout_classes("mmceleba")
    assert len(R.layout_classes("mmceleba")) == 19 and R.layout_classes("mmceleba")[13] == "hair"
    s = train[1]
    assert s.captions == ["she has black hair 1", "the woman 1 smiles"]
    assert s.layout.shape == (32, 32) and s.layout.dtype == np.uint8
    want = np.zeros((32, 32), np.uint8)
    want[:16], want[16:, :16], want[16:, 16:] = 13, 1, 18  # nearest x1.6: exact halves
    assert np.array_equal(s.layout, want)
    assert train.layouts().shape == (3, 32, 32)
    ds = TextImageDataset(train, Vocabulary.build(train.all_captions()), 18, train=True, layouts=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["layout"].shape == (3, 32, 32) and batch["layout"].dtype == torch.int64
    assert torch.equal(batch["layout"][1], torch.from_numpy(want).long())
    # a mask with a value outside 0..18 is an unreadable item
    _png(root / "CelebAMask-HQ-mask-anno" / "preprocessed" / "2.png", np.full((20, 20), 19), "L")
    with pytest.raises(DatasetError, match=r"(?s)max_bad_images.*2\.jpg: ValueError: mask .*preprocessed/2\.png: "
                                           r"values must be class indices 0\.\.18"):
        _source("mmceleba", root, "train", tmp_path / "c", max_bad_images=0)


def write_cityscapes(root: Path, n_val: int = 1) -> None:
    """Frames 20 x 40 (Cityscapes' 1:2): train aachen x 2, val lindau x n_val."""
    for split, city, n in (("train", "aachen", 2), ("val", "lindau", n_val)):
        for j in range(n):
            stem = f"{city}_{j:06d}_000019"
            _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _noise(j, 20, 40))
            ids = np.zeros((20, 40), np.uint8)  # 0 = unlabeled
            ids[:8] = 23  # sky
            ids[8:14] = 11  # building
            ids[14:] = 7  # road
            ids[15:18, 2:10] = 26  # car
            ids[19, 39] = 1 if j == 0 else 33  # one pixel of ego vehicle / bicycle (< 0.1%: not named)
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids, "L")


def test_cityscapes_label_ids_to_train_ids():
    ids = np.array([[0, 1, 6, 7, 8, 9], [11, 23, 24, 26, 33, 255]], np.uint8)
    assert label_ids_to_train_ids(ids).tolist() == [[19, 19, 19, 0, 1, 19], [2, 10, 11, 13, 18, 19]]
    assert sorted(LABEL_TO_TRAIN.values()) == list(range(19))
    assert len(R.layout_classes("cityscapes")) == 20 and R.layout_classes("cityscapes")[19] == "unlabeled"


def test_cityscapes_layouts_and_template_captions(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes(root)
    train, test = (_source("cityscapes", root, s, tmp_path / "c") for s in ("train", "test"))
    assert (len(train), len(test)) == (2, 1) and test.meta(0)["city"] == "lindau"
    caps = train.captions(0)
    # by area: sky 320 px, building 240, road 240 - 24 - 1 = 215, car 24; the 1-px bicycle is below 0.1%
    assert caps[0] == "An image of an urban scene with sky, building, road and car."
    assert len(caps) == 5 and all(sorted(c[:-1].replace(" and", ",").split("with ")[1].split(", ")) ==
                                  ["building", "car", "road", "sky"] for c in caps)
    lay = train.layout(0)
    assert lay.shape == (32, 32) and set(np.unique(lay)) <= {0, 2, 10, 13, 19}
    assert lay[0, 0] == 10 and lay[-1, 0] == 0 and lay[13, 0] == 2  # sky top, road bottom, building between
    assert template_captions(np.full((4, 4), 19, np.uint8), "x")[0] == "An image of an urban scene."
    # a captions JSONL replaces the template
    with open(root / "captions.jsonl", "w") as f:
        for stem in ("aachen_000000_000019", "aachen_000001_000019", "lindau_000000_000019"):
            f.write(json.dumps({"file_name": f"{stem}_leftImg8bit.png", "text": [f"street {stem}", "cars"]}) + "\n")
    train = _source("cityscapes", root, "train", tmp_path / "c")
    assert train.captions(1) == ["street aachen_000001_000019", "cars"]


# ---------------------------------------------------------------------------- failures


def test_missing_folder_error_shows_the_expected_tree(cub_root, tmp_path):
    (cub_root / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    with pytest.raises(DatasetError) as err:
        _source("cub", cub_root, "train", tmp_path / "c")
    msg = str(err.value)
    assert msg.startswith("data.data_root: missing under") and "CUB_200_2011/bounding_boxes.txt" in msg
    assert "expected for data.dataset='cub'" in msg and "text/<class>/<image>.txt" in msg
    with pytest.raises(DatasetError, match="is not a directory"):
        _source("coco", tmp_path / "nowhere", "train", tmp_path / "c")
    with pytest.raises(DatasetError, match=r"missing under .*annotations/captions_val2014\.json"):
        (tmp_path / "coco" / "val2014").mkdir(parents=True)
        _source("coco", tmp_path / "coco", "test", tmp_path / "c")
    with pytest.raises(ConfigError, match="data.data_root: required for data.dataset='cub'"):
        R.build_source(DataConfig(dataset="cub"), "train", tmp_path / "c")


def test_bad_pickle_fails_the_source_with_the_fix(cub_root, tmp_path):
    marker = tmp_path / "pwned"
    (cub_root / "train" / "filenames.pickle").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(DatasetError, match=r"filenames\.pickle: not a plain split list \(refused"):
        _source("cub", cub_root, "train", tmp_path / "c")
    assert not marker.exists()


def test_corrupt_images_are_skipped_up_to_the_limit_then_named(cub_root, tmp_path):
    images = cub_root / "CUB_200_2011" / "images"
    bad1 = images / CUB_CLASSES[0] / "Black_footed_Albatross_0000_1.jpg"
    bad2 = images / CUB_CLASSES[1] / "Laysan_Albatross_0000_5.jpg"
    bad1.write_bytes(b"this is not a jpeg")
    bad2.write_bytes(bad2.read_bytes()[:200])  # truncated
    with pytest.raises(DatasetError) as err:
        _source("cub", cub_root, "train", tmp_path / "c", max_bad_images=1)
    msg = str(err.value)
    assert msg.startswith("data.max_bad_images: 2 unreadable image(s) in cub/train")
    assert str(bad1) in msg and str(bad2) in msg and "raise data.max_bad_images" in msg
    assert not any((tmp_path / "c").iterdir())  # nothing half-built left behind
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        src = _source("cub", cub_root, "train", tmp_path / "c", max_bad_images=2)
    assert len(src) == 4 and src.images().shape[0] == 4
    assert {s["path"] for s in src.skipped} == {str(bad1), str(bad2)}
    # the cache remembers them: a stricter limit on reuse refuses without rebuilding
    with pytest.raises(DatasetError, match="2 unreadable"):
        _source("cub", cub_root, "train", tmp_path / "c", max_bad_images=0)


# ------------------------------------------------------------------------------- cache


def test_cache_is_built_once_reused_and_invalidated(cub_root, tmp_path):
    logs: list[str] = []
    cfg = DataConfig(dataset="cub", data_root=str(cub_root), resolution=32)

    def build():
        logs.clear()
        return R.build_source(cfg, "train", tmp_path / "c", log=logs.append)

    first = build()
    assert any("no cache yet" in m for m in logs)
    folder = first.folder
    assert folder.parent == tmp_path / "c" and folder.name.startswith("cub-train-32px-")
    assert {p.name for p in folder.iterdir()} == {"manifest.json", "records.json", "images.npy"}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["num_items"] == 6 and manifest["crop_rule"].startswith("attngan-bbox-1.5x")
    stamp = (folder / "images.npy").stat().st_mtime_ns
    second = build()
    assert logs == [] and (folder / "images.npy").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert np.array_equal(second.images(), first.images())

    # a caption edit changes the source fingerprint: rebuilt
    text = cub_root / "text" / f"{first.keys[0]}.txt"
    text.write_text("a new caption for this bird\nanother one\n")
    assert build().captions(0) == ["a new caption for this bird", "another one"]
    assert any("stale: source files or captions changed" in m for m in logs)
    # a truncated array: rebuilt
    data = (folder / "images.npy").read_bytes()
    (folder / "images.npy").write_bytes(data[: len(data) // 2])
    assert np.array_equal(build().images(), first.images())
    assert any("truncated" in m for m in logs)
    # another resolution is another cache
    other = R.build_source(DataConfig(dataset="cub", data_root=str(cub_root), resolution=64), "train",
                           tmp_path / "c", log=_quiet)
    assert other.folder != folder and other.images().shape == (6, 64, 64, 3)
    # a killed build: its temporary folder is never read, and is removed by the next build
    dead = tmp_path / "c" / f".{folder.name}.tmp-{C.socket.gethostname()}-999999999"
    dead.mkdir()
    (folder / "manifest.json").unlink()  # and the old cache looks incomplete
    build()
    assert any("no cache yet" in m for m in logs) and not dead.exists()


def test_a_worker_without_the_dataset_uses_the_prepared_cache(cub_root, tmp_path):
    built = _source("cub", cub_root, "train", tmp_path / "c")
    cub_root.rename(tmp_path / "moved")  # as on a node that mounts the cache but not the data
    logs: list[str] = []
    again = R.build_source(DataConfig(dataset="cub", data_root=str(cub_root), resolution=32), "train",
                           tmp_path / "c", log=logs.append)
    assert again.folder == built.folder and np.array_equal(again.images(), built.images())
    assert "is not on this machine" in logs[0]
    with pytest.raises(DatasetError, match="is not a directory"):  # no cache for this split: the tree error
        _source("cub", cub_root, "test", tmp_path / "c")


def test_data_cache_root_and_prepare_data(cub_root, tmp_path):
    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(cub_root),
                                 "output_dir": str(tmp_path / "out")})
    assert R.data_cache_root(cfg) == tmp_path / "out" / "cache" / "data"
    assert R.prepare_data(cfg, log=_quiet) == {"train": 6, "test": 2}
    assert len(list((tmp_path / "out" / "cache" / "data").iterdir())) == 2
    cfg2 = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(cub_root),
                                  "data.cache_dir": str(tmp_path / "elsewhere")})
    assert R.data_cache_root(cfg2) == tmp_path / "elsewhere"


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize("override,field", [
    ({"data.dataset": "cub"}, "data.data_root"),
    ({"data.dataset": "imagenet"}, "data.dataset"),
    ({"data.data_root": "/data/birds"}, "data.data_root"),  # shapes reads no files
    ({"data.dataset": "cub", "data.data_root": "x", "data.captions_file": "c.jsonl"}, "data.captions_file"),
    ({"data.max_bad_images": -1}, "data.max_bad_images"),
])
def test_data_config_errors_name_their_field(override, field):
    with pytest.raises(ConfigError) as err:
        build_config("smoke", override)
    assert str(err.value).startswith(field)


def test_cli_dataset_shorthand_checks_the_tree_before_anything_runs(tmp_path, monkeypatch):
    from t2i_ray.sweep.cli import base_parser, config_from_args

    root = tmp_path / "celeba"
    write_celeba(root)
    monkeypatch.chdir(tmp_path)
    # real datasets are scored with the Inception backbone: its weights file must exist and be a state
    # dict (its keys are checked when the network is built, not here)
    torch.save({"w": torch.zeros(1)}, tmp_path / "inception.pth")
    monkeypatch.setenv("T2I_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    small = [f"--set={k}.batch_size=2" for k in ("train", "damsm", "captioner")]  # 3 train images
    args = base_parser("x").parse_args(["--preset", "smoke", "--dataset", "mmceleba", "--data-root", "celeba", *small])
    cfg = config_from_args(args)
    assert (cfg.data.dataset, cfg.data.data_root) == ("mmceleba", str(root.resolve()))  # made absolute
    assert not (tmp_path / "t2i_runs").exists()  # the check decodes nothing and writes no cache
    (root / "captions.jsonl").unlink()
    with pytest.raises(ConfigError, match=r"(?s)missing under .*captions\.jsonl.*CelebAMask-HQ-mask-anno/preprocessed"):
        config_from_args(args)
    assert config_from_args(base_parser("x").parse_args(["--preset", "smoke"])) == build_config("smoke")


@pytest.mark.parametrize("sets,field,says", [
    (["damsm.batch_size=48"], "damsm.batch_size", "48 is more than the 18 train images listed for data.dataset=cub "
                                                  "under {root}, so DAMSM pre-training would get no full batch"),
    (["captioner.batch_size=64"], "captioner.batch_size", "64 is more than the 18 train images"),
    (["train.batch_size=10", "train.num_workers=2"], "train.batch_size",
     "train.batch_size x train.num_workers = 10 x 2 = 20 is more than the 18 train images"),
])
def test_a_real_train_split_smaller_than_a_batch_is_refused_at_start(tmp_path, sets, field, says):
    """A 24-image CUB tree (18 train): before, DAMSM pre-training ran no step, logged `loss nan`
    for every epoch and cached the untrained encoders."""
    from t2i_ray.sweep.cli import base_parser, config_from_args

    root = tmp_path / "birds"
    write_cub(root, per_class=12)
    fits = {"train.batch_size": 4, "damsm.batch_size": 4, "captioner.batch_size": 4}
    fits.update(parse_override(s) for s in sets)
    argv = ["--preset", "smoke", "--dataset", "cub", "--data-root", str(root), "--output-dir", str(tmp_path / "out"),
            "--set", "eval.backbone=inception", "--inception-weights", str(tmp_path / "w.pth")]
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ConfigError) as err:
        config_from_args(base_parser("x").parse_args(argv + [f"--set={k}={v}" for k, v in fits.items()]))
    msg = str(err.value)
    assert msg.startswith(f"{field}: ") and says.format(root=root) in msg and f"lower {field} to at most " in msg
    assert not (tmp_path / "out").exists()
    fits.update({"train.batch_size": 9, "damsm.batch_size": 18, "captioner.batch_size": 18})  # exactly fits
    config_from_args(base_parser("x").parse_args(argv + [f"--set={k}={v}" for k, v in fits.items()]))


def test_damsm_on_a_train_split_smaller_than_a_batch_fails_and_caches_nothing(tmp_path):
    """The second guard, for configs built without the command line's check."""
    from t2i_ray.train.damsm import damsm_dir, ensure_damsm

    write_cub(tmp_path / "birds", per_class=12)
    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(tmp_path / "birds"),
                                 "output_dir": str(tmp_path / "out"), "damsm.batch_size": 48,
                                 "eval.r_precision_candidates": 2})
    with pytest.raises(ConfigError, match=r"^damsm.batch_size: 48 is more than the 18 train images of "
                                          r"data.dataset=cub, so DAMSM pre-training would run no step; lower "
                                          r"damsm.batch_size to at most 18"):
        ensure_damsm(cfg, log=_quiet)
    assert not damsm_dir(cfg).exists() and list(damsm_dir(cfg).parent.iterdir()) == []


# ---------------------------------------------------------------- DAMSM + a GAN step on real data


def test_damsm_pretraining_and_a_gan_step_run_on_a_real_dataset(cub_root, tmp_path):
    from t2i_ray.models.factory import build_gan_models
    from t2i_ray.train.damsm import ensure_damsm, load_damsm
    from t2i_ray.train.gan import build_optimizers, gan_step

    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(cub_root),
                                 "output_dir": str(tmp_path / "out"), "model.nf": 4, "train.batch_size": 4,
                                 "damsm.epochs": 1, "damsm.batch_size": 4, "eval.r_precision_candidates": 2,
                                 "loss.damsm": 0.05, "loss.f2r": 0.2, "loss.f2f": 0.2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damsm = load_damsm(ensure_damsm(cfg, log=_quiet))
    assert damsm.vocab == R.build_vocabulary(cfg.data, R.data_cache_root(cfg), log=_quiet)
    ds = TextImageDataset(R.build_source(cfg.data, "train", R.data_cache_root(cfg), log=_quiet), damsm.vocab,
                          cfg.data.words_num, train=True)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, drop_last=True)))
    models = build_gan_models(cfg, damsm.text_encoder, damsm.image_encoder)
    losses = gan_step(models, build_optimizers(models, cfg), batch, cfg, torch.Generator().manual_seed(0))
    assert all(np.isfinite(v) for v in losses.values()) and "loss_d" in losses


def test_the_training_loop_runs_end_to_end_on_a_real_dataset_with_inception_metrics(cub_root, tmp_path):
    """The main job's worker loop (in-process, one worker) on a CUB tree: cache, DAMSM, training,
    checkpoint, and the standard-Inception evaluation (random weights of the right shapes)."""
    from t2i_ray.eval.inception import random_inception_state_dict
    from t2i_ray.train.damsm import ensure_damsm
    from t2i_ray.train.loop import LocalEnv, run_training

    weights = tmp_path / "inception.pth"
    torch.save(random_inception_state_dict(seed=0), weights)
    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(cub_root),
                                 "output_dir": str(tmp_path / "out"), "model.nf": 4, "train.batch_size": 4,
                                 "train.steps": 2, "train.report_every": 1, "train.checkpoint_every": 2,
                                 "damsm.epochs": 1, "damsm.batch_size": 4, "eval.inception_weights": str(weights),
                                 "eval.num_images": 8, "eval.batch_size": 8, "eval.r_precision_candidates": 2,
                                 "eval.r_precision_folds": 1, "eval.kid_subsets": 2, "eval.kid_subset_size": 2,
                                 "eval.is_splits": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damsm_path = str(ensure_damsm(cfg, log=_quiet))
        final = run_training(cfg, LocalEnv(tmp_path / "run"), damsm_path, "cub-run")
    assert final["step"] == 2 and final["finished"] == 1
    assert final["fid_backbone"].startswith("inception-v3") and final["fid_real_set"] == "cub/test"
    assert final["fid_num_fake"] == 8 and final["fid_below_feature_dim"]
    for key in ("fid", "kid", "is", "r_precision"):
        assert np.isfinite(final[key]), key
    assert (tmp_path / "run" / "checkpoint").is_dir()
    assert final["r_precision_mismatch_from"] == "other classes"  # CUB's class ids reach R-precision


# ------------------------------------------------------------- the captioner (l4) on real data

# 6 train / 2 test images in the CUB fixture: every batch size <= 6, a tiny captioner
CAPTIONER_TINY = {"captioner.epochs": 1, "captioner.batch_size": 4, "captioner.image_size": 16,
                  "captioner.word_dim": 8, "captioner.hidden_dim": 16}


def test_captioner_pretraining_runs_on_a_real_dataset(cub_root, tmp_path):
    """It reads the data through the registry (the cache under the output folder): a real dataset
    once failed with 'set data.cache_dir or pass cache_root'."""
    from t2i_ray.train.captioner import captioner_dir, captioner_is_cached, ensure_captioner, load_captioner

    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(cub_root),
                                 "output_dir": str(tmp_path / "out"), **CAPTIONER_TINY})
    logs: list[str] = []
    path = ensure_captioner(cfg, log=logs.append)
    assert path == captioner_dir(cfg) and captioner_is_cached(cfg)
    # the decoded images it read are the experiment's cache (data_cache_root), reused from here on
    assert R.source(cfg, "test", log=_quiet).folder.parent == tmp_path / "out" / "cache" / "data"
    cached = load_captioner(path)
    meta = cached.meta
    assert meta["test_num_captions"] == 2 * 2  # captions 0 and 1 of the 2 test images
    for key in ("test_token_accuracy", "test_perplexity", "test_token_accuracy_mismatched",
                "test_perplexity_mismatched", "final_loss"):
        assert math.isfinite(meta[key]), key
    assert 0.0 <= meta["test_token_accuracy"] <= 1.0
    assert cached.vocab == R.vocabulary(cfg, log=_quiet) == R.build_vocabulary(cfg.data, R.data_cache_root(cfg),
                                                                              log=_quiet)
    assert any("token accuracy" in m for m in logs)


def test_pretrain_captioner_script_on_a_real_dataset(cub_root, tmp_path):
    """The user's command line, as a subprocess from the repository root (no Inception weights)."""
    # PYTHONPATH: this checkout's t2i_ray, not whichever one an editable install points at
    env = {**{k: v for k, v in os.environ.items() if k != "T2I_INCEPTION_WEIGHTS"}, "PYTHONPATH": str(REPO)}
    sets = [f"--set={k}={v}" for k, v in CAPTIONER_TINY.items()]
    proc = subprocess.run([sys.executable, "sweeps/pretrain_captioner.py", "--preset", "smoke", "--dataset", "cub",
                           "--data-root", str(cub_root), "--output-dir", str(tmp_path / "out"), *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("captioner, vocabulary and meta.json: ")]
    assert len(printed) == 1, proc.stdout
    folder = Path(printed[0].split(": ", 1)[1])
    assert folder.parent == tmp_path / "out" / "cache" / "captioner" and (folder / "meta.json").is_file()
    assert math.isfinite(json.loads((folder / "meta.json").read_text())["test_perplexity"])
