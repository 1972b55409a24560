"""Dataset name -> source. The one place that knows every dataset, and the one way in.

`source(cfg, split)` (an ExperimentConfig: the cache root comes with it) and, for callers that have
only a DataConfig, `build_source(data_cfg, split, cache_root)` return the built-in `ShapesSource`
for `shapes` and, for a real dataset, its reader's items decoded through the cache (cache.py): both
have the same interface (records.Source: `len`, `[i]` -> records.Sample(image, captions, layout,
meta), `captions(i)`, `images()`, ...), which is all TextImageDataset, the training loop and the
pre-training jobs use. `vocabulary(cfg)` / `build_vocabulary` likewise.

Layers of t2i_ray.data: records (and text) at the bottom; reading, the readers (cub, coco, celeba,
cityscapes), cache and the procedural shapes above them, none of which imports this module; then
this registry, which imports them all.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from t2i_ray.paths import RunPaths
from t2i_ray.console import console
from t2i_ray.config import ConfigError, DataConfig, ExperimentConfig, image_size
from t2i_ray.data import shapes
from t2i_ray.data.cache import CachedSource, load_or_build, open_prebuilt
from t2i_ray.data.celeba import MMCELEBA
from t2i_ray.data.cityscapes import CITYSCAPES
from t2i_ray.data.coco import COCO
from t2i_ray.data.cub import CUB, OXFORD102
from t2i_ray.data.reading import DatasetSpec
from t2i_ray.data.text import Vocabulary

READERS: dict[str, DatasetSpec] = {s.name: s for s in (CUB, OXFORD102, COCO, MMCELEBA, CITYSCAPES)}


def layout_classes(dataset: str) -> tuple[str, ...] | None:
    """Class names by layout index (SPEC 1 table); None where the dataset has no layouts."""
    if dataset == "shapes":
        return shapes.LAYOUT_CLASSES
    if dataset not in READERS:
        raise ConfigError(f"data.dataset: unknown dataset {dataset!r}; available: shapes, {', '.join(READERS)}")
    return READERS[dataset].layout_classes


def data_cache_root(cfg: ExperimentConfig) -> Path:
    """Where decoded real datasets live: `data.cache_dir`, else `<output_dir>/cache/data`."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else RunPaths.of(cfg).cached("data")


def _reader(data_cfg: DataConfig) -> tuple[DatasetSpec, Path]:
    spec = READERS.get(data_cfg.dataset)
    if spec is None:
        raise ConfigError(f"data.dataset: unknown dataset {data_cfg.dataset!r}; available: shapes, "
                          f"{', '.join(READERS)}")
    if not data_cfg.data_root:
        raise ConfigError(f"data.data_root: required for data.dataset={data_cfg.dataset!r}; set it to the "
                          f"folder that holds\n{spec.tree}")
    return spec, Path(data_cfg.data_root).expanduser()


def build_source(data_cfg: DataConfig, split: Literal["train", "test"], cache_root: str | Path | None = None,
                 log: Callable[[str], None] = console) -> shapes.ShapesSource | CachedSource:
    """The split's source; a real dataset is decoded into the cache first if needed."""
    if data_cfg.dataset == "shapes":
        return shapes.build_source(data_cfg, split)
    spec, root = _reader(data_cfg)
    if split not in ("train", "test"):
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    where = data_cfg.cache_dir or cache_root
    if where is None:
        raise ConfigError(f"data.cache_dir: data.dataset={data_cfg.dataset!r} is read through a decoded-image "
                          f"cache; set data.cache_dir or pass cache_root (data_cache_root(cfg))")
    size, label = image_size(data_cfg), cache_split(data_cfg, split)
    if not root.exists():  # e.g. a Ray worker on a node that sees the shared cache only
        cached = open_prebuilt(spec, root, label, size, where)
        if isinstance(cached, CachedSource):
            log(f"[data] {root} is not on this machine; using the cache the driver built ({cached.folder})")
            return cached
    items = spec.index(root, split, data_cfg)
    describe = split_description(data_cfg, split, items)
    if describe:
        log(f"[data] {describe}")
    return load_or_build(spec, items, root, label, size, where, data_cfg.max_bad_images, log)


def cache_split(data_cfg: DataConfig, split: str) -> str:
    """The split's name in its cache folder and manifest: the split, or what it holds when data.trainval
    or data.caption_subset change the train split ("train+val", "train-25pct"), so that each has its
    own cache and switching never rebuilds another's."""
    if split != "train":
        return split
    if data_cfg.trainval:
        return "train+val"
    if data_cfg.caption_subset != 100:
        return f"train-{data_cfg.caption_subset}pct"
    return split


def split_description(data_cfg: DataConfig, split: str, items: list) -> str:
    """What a split is made of, for the log (empty when it is just the split's own folder or list)."""
    if data_cfg.dataset == "cityscapes":
        counts: dict[str, int] = {}
        for it in items:
            counts[it.meta.get("folder", "?")] = counts.get(it.meta.get("folder", "?"), 0) + 1
        parts = " + ".join(f"{n} from leftImg8bit/{f}" for f, n in counts.items())
        note = (" (data.trainval: GCDP's train + val; the test split, val, is inside it)"
                if split == "train" and data_cfg.trainval else "")
        return f"cityscapes/{split}: {len(items)} images = {parts}{note}"
    if data_cfg.dataset == "mmceleba" and split == "train" and data_cfg.caption_subset != 100:
        return (f"mmceleba/train: data.caption_subset={data_cfg.caption_subset}: {len(items)} images, the "
                f"{data_cfg.caption_subset} % of the train list with the smallest sha1(key) (MM CelebA-HQ-"
                f"{data_cfg.caption_subset})")
    return ""


def build_vocabulary(data_cfg: DataConfig, cache_root: str | Path | None = None,
                     log: Callable[[str], None] = console) -> Vocabulary:
    """The vocabulary of the train + test captions (as AttnGAN's build_dictionary)."""
    if data_cfg.dataset == "shapes":
        return shapes.build_vocabulary(data_cfg)
    train, test = (build_source(data_cfg, s, cache_root, log) for s in ("train", "test"))
    return Vocabulary.build([*train.all_captions(), *test.all_captions()])


def source(cfg: ExperimentConfig, split: Literal["train", "test"],
           log: Callable[[str], None] = console) -> shapes.ShapesSource | CachedSource:
    """`build_source` for an experiment: a real dataset is cached under `data_cache_root(cfg)`."""
    return build_source(cfg.data, split, data_cache_root(cfg), log)


def vocabulary(cfg: ExperimentConfig, log: Callable[[str], None] = console) -> Vocabulary:
    """`build_vocabulary` for an experiment: a real dataset is cached under `data_cache_root(cfg)`."""
    return build_vocabulary(cfg.data, data_cache_root(cfg), log)


def check_dataset(data_cfg: DataConfig) -> dict[str, int]:
    """Cheap start-up check of a real dataset's tree and lists (no decoding); split -> number of
    images listed (shapes: data.num_train / data.num_test, nothing is read)."""
    if data_cfg.dataset == "shapes":
        return {"train": data_cfg.num_train, "test": data_cfg.num_test}
    spec, root = _reader(data_cfg)
    return {split: len(spec.index(root, split, data_cfg)) for split in ("train", "test")}


def prepare_data(cfg: ExperimentConfig, log: Callable[[str], None] = console) -> dict[str, int]:
    """Build or validate both splits' caches (before Ray starts); split -> number of images."""
    if cfg.data.dataset == "shapes":
        return {"train": cfg.data.num_train, "test": cfg.data.num_test}
    root = data_cache_root(cfg)
    sizes = {s: len(build_source(cfg.data, s, root, log)) for s in ("train", "test")}
    h, w = image_size(cfg.data)
    log(f"[data] {cfg.data.dataset}: {sizes['train']} train / {sizes['test']} test images at "
        f"{f'{h}px' if h == w else f'{h}x{w}px (height x width)'}, cached under {root}")
    return sizes


__all__ = ["READERS", "build_source", "build_vocabulary", "cache_split", "check_dataset", "data_cache_root",
           "layout_classes", "prepare_data", "source", "split_description", "vocabulary", "CachedSource", "DatasetSpec"]
