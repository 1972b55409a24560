"""torch Dataset of (image, caption ids, second caption ids, attributes[, layout]) from a source.

A source is the built-in ShapesSource or a real dataset's CachedSource (data/registry.py); only
`shapes` has ground-truth attributes, so items of real datasets have no "attributes" entry, and
only datasets with class ids (CUB, Oxford-102) have a "class_id" entry.

Training picks a random caption of the image per epoch (and a second, different one for the
F2F loss) and, for captions longer than `words_num`, a random ordered subset of their words
(DF-GAN). Every random choice is a pure function of (seed, epoch, index) through
`np.random.default_rng([seed, epoch, i])`, so batches are reproducible whatever the DataLoader
worker count, worker assignment or resume point. Evaluation items (train=False) carry captions 0
and 1 truncated to their first `words_num` words; `eval_caption(i, k)` reads any caption of an item
the same way (eval.caption_mode=random). There are no flips: a mirrored image would
contradict its "left of"/"right of" captions.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from t2i_ray.data.shapes import ShapesSource, attribute_vector
from t2i_ray.data.cache import CachedSource
from t2i_ray.data.text import Vocabulary, pad_ids


class TextImageDataset(Dataset):
    def __init__(self, source: ShapesSource | CachedSource, vocab: Vocabulary, words_num: int, train: bool,
                 seed: int = 0, layouts: bool = False):
        if words_num < 1:
            raise ValueError(f"words_num: must be >= 1, got {words_num}")
        if seed < 0:
            raise ValueError(f"seed: must be >= 0 (it seeds numpy's default_rng), got {seed}")
        self.source, self.vocab, self.words_num = source, vocab, words_num
        self.train, self.seed, self.epoch = bool(train), int(seed), 0
        n = len(source)
        self.captions: list[list[str]] = [source.captions(i) for i in range(n)]
        for i, caps in enumerate(self.captions):
            if len(caps) < 2:
                raise ValueError(f"source: item {i} has {len(caps)} captions; two distinct ones are needed")
            for k, cap in enumerate(caps):
                if not vocab.encode(cap, words_num):
                    # Fail here, not in a DataLoader worker mid-training: an empty caption has no
                    # length-0 encoding the LSTM could pack.
                    raise ValueError(f"vocab: caption {k} of item {i} ({cap!r}) has no word in the "
                                     f"vocabulary ({len(vocab)} words); build the vocabulary from this data")
        self.attributes: np.ndarray | None = None  # (n, A) float32, shapes only
        if isinstance(source, ShapesSource):
            self.attributes = np.stack([attribute_vector(source.meta(i)) for i in range(n)])
        # Class labels where the dataset has them (CUB, Oxford-102): R-precision then draws its
        # mismatched captions from other classes (gan_anchors 3.6). None otherwise.
        self.class_ids: np.ndarray | None = None
        if not isinstance(source, ShapesSource) and n and all("class_id" in source.meta(i) for i in range(n)):
            self.class_ids = np.array([source.meta(i)["class_id"] for i in range(n)], np.int64)
        # Rendered now rather than lazily: DataLoader workers forked afterwards share these pages
        # instead of each re-rendering the whole source every epoch. A real dataset's images are a
        # read-only memory map of its cache, shared the same way without loading it into RAM.
        self.images: np.ndarray = source.images()  # (n, H, W, 3) uint8
        # Semantic layouts (the joint diffusion's second modality), only when asked for: GANs do not
        # read them, and most real datasets have none.
        self.layouts: np.ndarray | None = None  # (n, H, W) uint8 class indices
        if layouts:
            self.layouts = source.layouts()
            if self.layouts is None:
                raise ValueError(f"source {source!r} has no layouts; datasets with layouts: shapes, "
                                 f"mmceleba, cityscapes")

    def __len__(self) -> int:
        return len(self.captions)

    def set_epoch(self, epoch: int) -> None:
        """Select the per-epoch caption choice (call before iterating each epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch: must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _encode(self, caption: str, rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.vocab.encode(caption, self.words_num, rng)
        return torch.from_numpy(pad_ids(ids, self.words_num)), torch.tensor(len(ids), dtype=torch.int64)

    def eval_caption(self, i: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Caption k of item i as evaluation reads it (its first `words_num` known words): ids
        (words_num,) zero-padded and length (). Item i's caption 0 is its `caption` entry."""
        return self._encode(self.captions[i][k], None)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        caps = self.captions[i]
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            k1 = int(rng.integers(len(caps)))
            k2 = (k1 + 1 + int(rng.integers(len(caps) - 1))) % len(caps)  # uniform over the others
        else:
            rng, k1, k2 = None, 0, 1
        caption, caption_len = self._encode(caps[k1], rng)
        caption2, caption2_len = self._encode(caps[k2], rng)
        pixels = self.images[i]
        if not pixels.flags.writeable:  # memory-mapped cache: torch wants a writable buffer
            pixels = np.array(pixels)
        image = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        image = image.float() / 127.5 - 1.0  # [-1, 1]
        item = {
            "image": image,  # (3, H, W) float32
            "caption": caption,  # (words_num,) int64, zero-padded
            "caption_len": caption_len,  # () int64, >= 1
            "caption2": caption2,
            "caption2_len": caption2_len,
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if self.layouts is not None:
            item["layout"] = torch.from_numpy(np.array(self.layouts[i])).long()  # (H, W) int64
        if self.attributes is not None:
            item["attributes"] = torch.tensor(self.attributes[i])  # (NUM_ATTRIBUTES,) float32
        if self.class_ids is not None:
            item["class_id"] = torch.tensor(self.class_ids[i], dtype=torch.int64)  # (), DAMSM's class mask
        return item

