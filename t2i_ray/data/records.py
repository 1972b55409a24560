"""The records every dataset shares: the bottom of t2i_ray.data (imports nothing of the project).

`Sample` is one decoded item, as the built-in `shapes` source (shapes.py) and every real dataset's
decoded-image cache (cache.py) return it from `source[i]`; `Source` is the interface both sources
have, which is all TextImageDataset, the training loop and the pre-training jobs use. Sources are
built by name through t2i_ray.data.registry (`build_source`, or `source(cfg, split)`), the one way
in for every caller that reads a dataset by config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass
class Sample:
    """One item; real datasets (data/cache.py) give the same record, with their own meta."""

    image: np.ndarray  # (H, W, 3) uint8
    captions: list[str]  # shapes: exactly NUM_CAPTIONS
    layout: np.ndarray | None  # (H, W) uint8 class indices; shapes: 0 background, 1 + shape index
    meta: dict[str, Any]  # shapes: {"index", "objects": [{"shape", "color", "size", "cx", "cy"}]}


class Source(Protocol):
    """A split of a dataset: `ShapesSource` (shapes.py) or `CachedSource` (cache.py)."""

    resolution: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Sample: ...

    def captions(self, i: int) -> list[str]: ...

    def meta(self, i: int) -> dict[str, Any]: ...

    def image(self, i: int) -> np.ndarray: ...

    def images(self) -> np.ndarray: ...

    def layout(self, i: int) -> np.ndarray | None: ...

    def layouts(self) -> np.ndarray | None: ...  # (n, H, W) uint8 class indices; None: no layouts

    def all_captions(self) -> list[str]: ...


__all__ = ["Sample", "Source"]
