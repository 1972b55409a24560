"""What every real-dataset reader shares: the item record, tree checks, split lists, decoding.

A reader turns a dataset folder into a list of `Item`s (cheap: paths, captions, crop boxes; no
pixels) and decodes one item into `(image uint8 (H, W, 3), layout uint8 (H, W) or None)` (H = W = R
but for the non-square diffusion data, config.image_size). The
decoded arrays go into the cache (cache.py) once; training reads only the cache.

Split lists (`train/filenames.pickle` as the AttnGAN-family repos ship them) are read with an
unpickler that resolves no global at all, so a pickle can only build plain containers and
strings; the result must then be a list/tuple of strings. A pickle that would call a function
(os.system, ...) fails at its first GLOBAL/STACK_GLOBAL opcode, before anything runs.
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from t2i_ray.config import ConfigError

# A split list of COCO size is ~2 MB; anything far larger is not a list of file names.
MAX_SPLIT_LIST_BYTES = 64 * 1024**2


class DatasetError(ConfigError):
    """The dataset that data.* points at is missing, malformed, or has too many unreadable files."""


@dataclass(frozen=True)
class Item:
    """One image of a split, before decoding."""

    key: str  # the dataset's own id ("001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111")
    image_path: Path
    captions: tuple[str, ...]
    layout_path: Path | None = None
    box: tuple[float, float, float, float] | None = None  # CUB bbox (x, y, w, h) in pixels
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # JSON-ready extras

    def source_files(self) -> tuple[Path, ...]:
        return (self.image_path,) if self.layout_path is None else (self.image_path, self.layout_path)


def tree_error(dataset: str, root: Path, tree: str, problem: str, fix: str = "") -> DatasetError:
    """An error that shows the expected folder tree under `root` and what was wrong."""
    hint = f"\n{fix}" if fix else ""
    return DatasetError(f"data.data_root: {problem}\nexpected for data.dataset={dataset!r} "
                        f"(data.data_root={str(root)!r}):\n{tree.rstrip()}{hint}")


def require(paths: Sequence[Path], dataset: str, root: Path, tree: str) -> None:
    """Raise a tree error naming every path of `paths` that does not exist."""
    if not root.is_dir():
        raise tree_error(dataset, root, tree, f"{root} is not a directory")
    missing = [p for p in paths if not p.exists()]
    if missing:
        names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in missing)
        raise tree_error(dataset, root, tree, f"missing under {root}: {names}")


# ------------------------------------------------------------------------------- split lists


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Builds only what pickle opcodes make without importing: str, bytes, numbers, containers."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: the pickle references {module}.{name}; split lists "
                                     f"may hold only a list of strings")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused: the pickle uses persistent ids")


def load_string_list_pickle(path: Path) -> list[str]:
    """A list/tuple of str from a pickle, refusing every other content (see module docstring)."""
    data = path.read_bytes()
    if len(data) > MAX_SPLIT_LIST_BYTES:
        raise DatasetError(f"{path}: {len(data)} bytes is too large for a split list of file names")
    try:
        # latin1: the reference repos' lists were pickled by Python 2 (str -> bytes otherwise).
        obj = _NoGlobalsUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise DatasetError(f"{path}: not a plain split list ({err}); replace it with a .txt file, one "
                           f"name per line") from err
    except Exception as err:  # truncated or not a pickle at all: EOFError, ValueError, ...
        raise DatasetError(f"{path}: cannot read it as a pickle ({type(err).__name__}: {err}); "
                           f"replace it with a .txt file, one name per line") from err
    if not isinstance(obj, (list, tuple)) or not all(isinstance(s, str) for s in obj):
        kind = type(obj).__name__
        if isinstance(obj, (list, tuple)):
            kind += " holding " + ", ".join(sorted({type(s).__name__ for s in obj} - {"str"}))
        raise DatasetError(f"{path}: a split list must be a list of strings, got a {kind}")
    return list(obj)


def read_split_list(split_dir: Path) -> tuple[list[str], Path]:
    """Names of `split_dir/filenames.pickle` (preferred, as shipped) or `split_dir/filenames.txt`."""
    for path in (split_dir / "filenames.pickle", split_dir / "filenames.txt"):
        if path.is_file():
            if path.suffix == ".txt":
                names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
                names = [n for n in names if n]
            else:
                names = load_string_list_pickle(path)
            if not names:
                raise DatasetError(f"{path}: the split list is empty")
            if len(set(names)) != len(names):
                raise DatasetError(f"{path}: the split list names some files twice")
            return names, path
    raise DatasetError(f"{split_dir}: no filenames.pickle or filenames.txt split list")


def read_caption_lines(path: Path) -> list[str]:
    """Non-empty lines of a caption file (Reed et al. text_c10 style: one caption per line)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_captions_jsonl(path: Path) -> dict[str, list[str]]:
    """`{"file_name": ..., "text": [...]}` per line (GCDP's caption files) -> file_name -> captions."""
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{n}: not a JSON object ({err})") from err
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                raise DatasetError(f"{path}:{n}: each line must be {{\"file_name\": str, \"text\": [str, ...]}}")
            text = rec.get("text")
            if isinstance(text, str):
                text = [text]
            if not isinstance(text, list) or not text or not all(isinstance(t, str) for t in text):
                raise DatasetError(f"{path}:{n}: 'text' must be a non-empty list of strings")
            out.setdefault(rec["file_name"], []).extend(t.strip() for t in text)
    return out


# ------------------------------------------------------------------------------------ decoding


def open_image(path: Path, mode: str):
    """Fully decoded PIL image in `mode` (raises on missing, truncated or corrupt files)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()  # decode now: a truncated JPEG raises here, not later
        return img.convert(mode) if img.mode != mode else img.copy()


def read_index_png(path: Path) -> np.ndarray:
    """(H, W) integer array of a single-channel PNG's stored values (palette indices, never colours)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "P", "I", "I;16"):
            raise ValueError(f"{img.mode} image: expected a single-channel label map")
        labels = np.asarray(img)
    if labels.ndim != 2:
        raise ValueError(f"label map of shape {labels.shape}: expected (H, W)")
    return labels


def hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a size given as R (square) or (H, W)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_rgb(img, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 (size R: R x R); bicubic with PIL's built-in antialiasing when shrinking."""
    from PIL import Image

    h, w = hw(size)
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


def resize_labels(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 label map, nearest neighbour (a class index must never be interpolated)."""
    from PIL import Image

    h, w = hw(size)
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L")
    return np.asarray(img.resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the largest centred square."""
    return center_box(width, height, 1.0)


def center_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the largest centred box of width / height = `aspect`."""
    if width >= height * aspect:
        bw, bh = round(height * aspect), height
    else:
        bw, bh = width, round(width / aspect)
    x1, y1 = (width - bw) // 2, (height - bh) // 2
    return x1, y1, x1 + bw, y1 + bh


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray  # (H, W, 3) uint8
    layout: np.ndarray | None = None  # (H, W) uint8 class indices
    captions: tuple[str, ...] | None = None  # only readers that derive captions from pixels


@dataclass(frozen=True)
class DatasetSpec:
    """A real dataset format: how to list a split and how to decode one item."""

    name: str
    tree: str  # the expected folder tree, printed by every "missing or malformed" error
    layout_classes: tuple[str, ...] | None  # class names by index; None: no layouts
    crop_rule: str  # recorded in the cache manifest: a change of rule must rebuild the cache
    index: Callable[[Path, str, Any], list[Item]]  # (data_root, split, DataConfig) -> items
    # (item, size) -> pixels; size is R (square) or (H, W); raises on a bad file. Readers of
    # non-square images (config.ASPECT_DATASETS) take (H, W), the others R only.
    load: Callable[[Item, Any], Decoded]
