"""The decoded-image cache: every real dataset split decoded once into uint8 arrays on disk.

One folder per (dataset, split, size, data_root) under the cache root
(`<output_dir>/cache/data/` or `data.cache_dir`); the size is R (square, `<R>px`) or H x W
(non-square diffusion data, `<H>x<W>px`, config.image_size):

    images.npy    (N, H, W, 3) uint8, opened memory-mapped (DataLoader workers share the pages)
    layouts.npy   (N, H, W) uint8 class indices, datasets with layouts only
    records.json  keys, captions and meta per item, and the skipped (unreadable) files
    manifest.json written last: format version, dataset, split, resolution (H; "width" W when it
                  differs), crop rule, and a
                  fingerprint of the source (every file's relative path and size, every caption)

It is built in a temporary sibling folder and renamed into place, so a killed build never leaves
a folder that looks complete. On reuse the manifest is compared with the dataset as it is now and
the arrays are checked against it (shape, dtype, size); any difference rebuilds, with the reason
logged. Unreadable images are skipped and listed; more than `data.max_bad_images` of them stops
the build with the file names, so training never meets a broken file in a DataLoader worker.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from t2i_ray.console import console
from t2i_ray.data.reading import DatasetError, DatasetSpec, Decoded, Item, hw
from t2i_ray.data.records import Sample

CACHE_FORMAT = "t2i_ray.data_cache"
CACHE_VERSION = 1
MANIFEST, RECORDS, IMAGES, LAYOUTS = "manifest.json", "records.json", "images.npy", "layouts.npy"


class CachedSource:
    """A decoded split with the records.Source interface of `ShapesSource` (`len`, `[i]`, captions, meta, images)."""

    def __init__(self, folder: Path, manifest: dict[str, Any], images: np.ndarray, layouts: np.ndarray | None,
                 records: dict[str, Any], layout_classes: tuple[str, ...] | None):
        self.folder, self.manifest = folder, manifest
        self.dataset, self.split, self.resolution = manifest["dataset"], manifest["split"], manifest["resolution"]
        self.size: tuple[int, int] = (self.resolution, manifest.get("width", self.resolution))  # (H, W)
        self._images, self._layouts = images, layouts
        self.keys: list[str] = records["keys"]
        self._captions: list[list[str]] = records["captions"]
        self._meta: list[dict[str, Any]] = records["meta"]
        self.skipped: list[dict[str, str]] = records["skipped"]
        self.layout_classes = layout_classes

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        h, w = self.size
        at = f"{h}px" if h == w else f"{h}x{w}px"
        return f"CachedSource({self.dataset}/{self.split}, {len(self)} images at {at}, {self.folder})"

    def _check(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return i

    def __getitem__(self, i: int) -> Sample:
        i = self._check(i)
        return Sample(image=np.array(self._images[i]), captions=self.captions(i), layout=self.layout(i),
                      meta=self.meta(i))

    def captions(self, i: int) -> list[str]:
        return list(self._captions[self._check(i)])

    def meta(self, i: int) -> dict[str, Any]:
        return {"index": self._check(i), **self._meta[i]}

    def image(self, i: int) -> np.ndarray:
        return np.array(self._images[self._check(i)])

    def layout(self, i: int) -> np.ndarray | None:
        return None if self._layouts is None else np.array(self._layouts[self._check(i)])

    def images(self) -> np.ndarray:
        """(N, H, W, 3) uint8, read-only memory map (not loaded into RAM)."""
        return self._images

    def layouts(self) -> np.ndarray | None:
        """(N, H, W) uint8 read-only memory map, or None."""
        return self._layouts

    def all_captions(self) -> list[str]:
        return [c for caps in self._captions for c in caps]

    def attribute_vectors(self) -> None:
        """Real datasets have no ground-truth attribute list (the `shapes` oracle's targets)."""
        return None


def cache_folder(cache_root: str | Path, dataset: str, split: str, size: int | tuple[int, int],
                 data_root: str | Path) -> Path:
    """`<cache_root>/<dataset>-<split>-<R>px-<hash of the absolute data_root>` (`<H>x<W>px` when not square)."""
    root_hash = hashlib.sha1(str(Path(data_root).expanduser().resolve()).encode()).hexdigest()[:8]
    return Path(cache_root) / f"{dataset}-{split}-{_size_name(size)}-{root_hash}"


def _size_name(size: int | tuple[int, int]) -> str:
    h, w = hw(size)
    return f"{h}px" if h == w else f"{h}x{w}px"


def _size_fields(size: int | tuple[int, int]) -> dict[str, int]:
    """The manifest's size: {"resolution": H}, and "width" only when W != H (square manifests as before)."""
    h, w = hw(size)
    return {"resolution": h} if h == w else {"resolution": h, "width": w}


def source_fingerprint(items: Sequence[Item], data_root: Path) -> str:
    """sha1 over every item's key, captions, crop box and source files (relative path + size)."""
    h = hashlib.sha1()
    for it in items:
        files = []
        for p in it.source_files():
            try:
                size = p.stat().st_size
            except OSError:
                size = -1
            files.append([str(p.relative_to(data_root)) if p.is_relative_to(data_root) else str(p), size])
        h.update(json.dumps([it.key, list(it.captions), it.box, files]).encode())
        h.update(b"\n")
    return h.hexdigest()


def expected_manifest(spec: DatasetSpec, items: Sequence[Item], split: str, size: int | tuple[int, int],
                      data_root: Path) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "dataset": spec.name, "split": split,
        **_size_fields(size), "crop_rule": spec.crop_rule,
        "num_layout_classes": len(spec.layout_classes) if spec.layout_classes else 0,
        "num_source_items": len(items), "source_fingerprint": source_fingerprint(items, data_root),
        "data_root": str(data_root.expanduser().resolve()),
    }


def _bad_images_error(spec: DatasetSpec, split: str, bad: list[dict[str, str]], limit: int) -> DatasetError:
    shown = "\n".join(f"  {b['path']}: {b['reason']}" for b in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    return DatasetError(f"data.max_bad_images: {len(bad)} unreadable image(s) in {spec.name}/{split}, more than "
                        f"data.max_bad_images={limit}:\n{shown}{more}\nreplace or remove these files (or drop "
                        f"them from the split list), or raise data.max_bad_images to skip them")


def open_cache(folder: Path, expected: dict[str, Any], layout_classes: tuple[str, ...] | None) -> CachedSource | str:
    """The cached source if `folder` is complete and matches `expected`; else why it is not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no cache yet"
    except (OSError, json.JSONDecodeError) as err:
        return f"unreadable manifest ({err})"
    for k, v in expected.items():
        if manifest.get(k) != v:
            what = "source files or captions changed" if k == "source_fingerprint" else \
                f"{k} {manifest.get(k)!r} -> {v!r}"
            return f"stale: {what}"
    n = manifest.get("num_items")
    h, w = expected["resolution"], expected.get("width", expected["resolution"])
    if manifest.get("width", h) != w:
        return f"stale: width {manifest.get('width', h)!r} -> {w!r}"
    try:
        records = json.loads((folder / RECORDS).read_text())
        images = np.load(folder / IMAGES, mmap_mode="r")
        layouts = np.load(folder / LAYOUTS, mmap_mode="r") if layout_classes else None
    except (OSError, ValueError, json.JSONDecodeError) as err:  # truncated .npy: ValueError from mmap
        return f"unreadable or truncated file ({type(err).__name__}: {err})"
    if images.shape != (n, h, w, 3) or images.dtype != np.uint8:
        return f"{IMAGES} is {images.shape} {images.dtype}, expected ({n}, {h}, {w}, 3) uint8"
    if layouts is not None and (layouts.shape != (n, h, w) or layouts.dtype != np.uint8):
        return f"{LAYOUTS} is {layouts.shape} {layouts.dtype}, expected ({n}, {h}, {w}) uint8"
    if not all(len(records.get(k, ())) == n for k in ("keys", "captions", "meta")):
        return f"{RECORDS} does not hold {n} items"
    return CachedSource(folder, manifest, images, layouts, records, layout_classes)


def _decode(spec: DatasetSpec, item: Item, size: int | tuple[int, int]) -> Decoded | Exception:
    h, w = hw(size)
    try:
        out = spec.load(item, size if h != w else h)  # square: R, as every reader takes
    except Exception as err:  # any decoder failure is a bad file; counted, never swallowed silently
        return err
    if out.image.shape != (h, w, 3) or out.image.dtype != np.uint8:
        return ValueError(f"decoded to {out.image.shape} {out.image.dtype}")
    return out


def _remove_dead_tmp(parent: Path, name: str) -> None:
    """Remove temporary folders of builds on this host whose process is gone (killed builds)."""
    host = socket.gethostname()
    for tmp in parent.glob(f".{name}.tmp-{host}-*"):
        try:
            os.kill(int(tmp.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def build_cache(spec: DatasetSpec, items: Sequence[Item], folder: Path, expected: dict[str, Any],
                max_bad_images: int, log: Callable[[str], None] = console, num_threads: int | None = None) -> None:
    """Decode `items` into `folder` (atomically: a temporary sibling renamed at the end)."""
    from tqdm import tqdm

    split, n = expected["split"], len(items)
    h, w = expected["resolution"], expected.get("width", expected["resolution"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_tmp(folder.parent, folder.name)
    tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        images = np.lib.format.open_memmap(tmp / IMAGES, mode="w+", dtype=np.uint8, shape=(n, h, w, 3))
        layouts = (np.lib.format.open_memmap(tmp / LAYOUTS, mode="w+", dtype=np.uint8, shape=(n, h, w))
                   if spec.layout_classes else None)
        records: dict[str, Any] = {"keys": [], "captions": [], "meta": [], "skipped": []}
        bad = records["skipped"]
        # Threads, not processes: PIL releases the GIL while decoding and resizing.
        pool = ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1))
        try:
            with tqdm(total=n, desc=f"[data] caching {spec.name}/{split} at {_size_name((h, w))}", unit="img",
                      mininterval=1.0) as bar:
                for item, out in zip(items, pool.map(lambda it: _decode(spec, it, (h, w)), items)):
                    bar.update(1)
                    if isinstance(out, Exception):
                        bad.append({"key": item.key, "path": str(item.image_path),
                                    "reason": f"{type(out).__name__}: {out}"})
                        log(f"[data] skipping unreadable {item.image_path}: {type(out).__name__}: {out}")
                        if len(bad) > max_bad_images:
                            raise _bad_images_error(spec, split, bad, max_bad_images)
                        continue
                    captions = list(out.captions if out.captions is not None else item.captions)
                    if not captions:
                        raise DatasetError(f"{spec.name}/{split}: item {item.key} has no caption")
                    k = len(records["keys"])
                    images[k] = out.image
                    if layouts is not None:
                        if out.layout is None or out.layout.shape != (h, w):
                            raise DatasetError(f"{spec.name}: reader gave no ({h}, {w}) layout for {item.key}")
                        layouts[k] = out.layout
                    records["keys"].append(item.key)
                    records["captions"].append(captions)
                    records["meta"].append(dict(item.meta))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error: do not decode the rest
        kept = len(records["keys"])
        if kept == 0:
            raise DatasetError(f"{spec.name}/{split}: no readable image")
        images.flush()
        del images
        if layouts is not None:
            layouts.flush()
            del layouts
        if kept < n:  # drop the rows of skipped images
            _truncate_rows(tmp / IMAGES, kept)
            if spec.layout_classes:
                _truncate_rows(tmp / LAYOUTS, kept)
        (tmp / RECORDS).write_text(json.dumps(records))
        (tmp / MANIFEST).write_text(json.dumps({**expected, "num_items": kept, "num_skipped": len(bad)}, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # A concurrent build of the same split renamed its folder in first: keep it if valid.
            if isinstance(open_cache(folder, expected, spec.layout_classes), str):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        warnings.warn(f"{spec.name}/{split}: skipped {len(bad)} unreadable image(s) (listed in "
                      f"{folder / RECORDS}, 'skipped')", stacklevel=2)


def _truncate_rows(path: Path, rows: int) -> None:
    src = np.load(path, mmap_mode="r")
    part = path.with_suffix(".part.npy")
    dst = np.lib.format.open_memmap(part, mode="w+", dtype=src.dtype, shape=(rows, *src.shape[1:]))
    for start in range(0, rows, 1024):
        dst[start:start + 1024] = src[start:min(rows, start + 1024)]
    dst.flush()
    del dst, src
    os.replace(part, path)


def open_prebuilt(spec: DatasetSpec, data_root: Path, split: str, size: int | tuple[int, int],
                  cache_root: str | Path) -> CachedSource | str:
    """A complete cache of this split, without reading the dataset (which may not be on this machine).

    Checks everything but the source fingerprint: for Ray workers on nodes that see the shared
    cache but not `data_root`; the driver verified the fingerprint when it prepared the cache.
    """
    folder = cache_folder(cache_root, spec.name, split, size, data_root)
    expected = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "dataset": spec.name, "split": split,
                **_size_fields(size), "crop_rule": spec.crop_rule,
                "num_layout_classes": len(spec.layout_classes) if spec.layout_classes else 0,
                "data_root": str(data_root.expanduser().resolve())}
    return open_cache(folder, expected, spec.layout_classes)


def load_or_build(spec: DatasetSpec, items: Sequence[Item], data_root: Path, split: str, size: int | tuple[int, int],
                  cache_root: str | Path, max_bad_images: int,
                  log: Callable[[str], None] = console, num_threads: int | None = None) -> CachedSource:
    """The cached split, built first if it is missing, stale or damaged."""
    folder = cache_folder(cache_root, spec.name, split, size, data_root)
    expected = expected_manifest(spec, items, split, size, data_root)
    cached = open_cache(folder, expected, spec.layout_classes)
    if isinstance(cached, str):
        log(f"[data] {spec.name}/{split} cache at {folder}: {cached}; decoding {len(items)} images once")
        build_cache(spec, items, folder, expected, max_bad_images, log, num_threads)
        cached = open_cache(folder, expected, spec.layout_classes)
        if isinstance(cached, str):  # another process replaced it meanwhile with something else
            raise DatasetError(f"{folder}: the cache just built does not validate ({cached})")
    if len(cached.skipped) > max_bad_images:
        raise _bad_images_error(spec, split, cached.skipped, max_bad_images)
    if cached.skipped:
        log(f"[data] {spec.name}/{split}: {len(cached.skipped)} unreadable image(s) skipped "
            f"(see {folder / RECORDS})")
    return cached
