"""Tokenizer and vocabulary shared by every dataset (SPEC 1).

Captions become lists of word ids: lower-case ASCII `\\w+` tokens, id 0 = "<end>" (padding and
end of caption, as in AttnGAN/DF-GAN). The vocabulary is stored as JSON, never pickled, because
it is frozen together with the DAMSM encoders: a checkpoint must name exactly which word each
embedding row belongs to, and `fingerprint()` lets a loader verify that it got the same words.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

END_TOKEN = "<end>"
_FORMAT = "t2i_ray.vocabulary"
_VERSION = 1
_WORD_RE = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-case, drop non-ASCII characters, split into `\\w+` tokens.

    Non-ASCII characters are removed (not replaced by a separator), so "café" -> ["caf"] and
    "naïve" -> ["nave"]: the same rule AttnGAN applies before its RegexpTokenizer(r"\\w+").
    """
    ascii_text = text.lower().encode("ascii", "ignore").decode("ascii")
    return _WORD_RE.findall(ascii_text)


class Vocabulary:
    """Word <-> id map; id 0 is "<end>", ids 1.. are the words in sorted order."""

    def __init__(self, words: Sequence[str]):
        words = tuple(words)
        if not words or words[0] != END_TOKEN:
            raise ValueError(f"words: the first word must be {END_TOKEN!r} (id 0), got {words[:1]}")
        if len(set(words)) != len(words):
            raise ValueError("words: duplicate entries in the vocabulary")
        for w in words[1:]:
            if not isinstance(w, str) or tokenize(w) != [w]:
                raise ValueError(f"words: {w!r} is not a single lower-case ASCII \\w+ token")
        self.words: tuple[str, ...] = words
        self._ids: dict[str, int] = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, captions: Iterable[str]) -> "Vocabulary":
        """All tokens of `captions`, sorted, so the ids do not depend on caption order."""
        seen: set[str] = set()
        for caption in captions:
            seen.update(tokenize(caption))
        return cls((END_TOKEN, *sorted(seen)))

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def __hash__(self) -> int:
        return hash(self.words)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, fingerprint={self.fingerprint()[:10]})"

    def encode(self, caption: str, max_words: int, rng: np.random.Generator | None = None) -> list[int]:
        """Word ids of `caption`, unknown words dropped, at most `max_words` of them.

        A longer caption keeps, with `rng`, a random subset of `max_words` tokens in their original
        order (DF-GAN's training-time augmentation); without `rng`, its first `max_words` tokens
        (deterministic, for evaluation).
        """
        if max_words < 1:
            raise ValueError(f"max_words: must be >= 1, got {max_words}")
        ids = [self._ids[t] for t in tokenize(caption) if t in self._ids]
        if len(ids) <= max_words:
            return ids
        if rng is None:
            return ids[:max_words]
        keep = np.sort(rng.choice(len(ids), size=max_words, replace=False))
        return [ids[k] for k in keep]

    def unknown_words(self, caption: str) -> list[str]:
        """The tokens of `caption` that `encode` drops (not in the vocabulary), each once, in order."""
        return list(dict.fromkeys(t for t in tokenize(caption) if t not in self._ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Words of `ids` up to the first 0 ("<end>"), joined by spaces."""
        out = []
        for i in ids:
            i = int(i)
            if i == 0:
                break
            if not 0 < i < len(self.words):
                raise ValueError(f"ids: {i} is outside the vocabulary (size {len(self.words)})")
            out.append(self.words[i])
        return " ".join(out)

    def fingerprint(self) -> str:
        """sha1 (hex) of the word list in id order: equal fingerprints mean identical ids."""
        return hashlib.sha1("\n".join(self.words).encode("ascii")).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict that `save` writes (checkpoints embed it as vocab.json)."""
        return {"format": _FORMAT, "version": _VERSION, "fingerprint": self.fingerprint(),
                "words": list(self.words)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Vocabulary":
        """Inverse of `to_json`; checks the format tag and the stored fingerprint."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"data: not a vocabulary (expected format {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ValueError(f"data: unsupported vocabulary version {data.get('version')!r}")
        words = data.get("words")
        if not isinstance(words, list):
            raise ValueError("data: 'words' must be a list of strings")
        vocab = cls(words)
        if data.get("fingerprint") != vocab.fingerprint():
            raise ValueError("data: fingerprint does not match the word list (file edited or corrupt)")
        return vocab

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=0) + "\n", encoding="ascii")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            data = json.loads(Path(path).read_text(encoding="ascii"))
        except json.JSONDecodeError as err:
            raise ValueError(f"path: {path} is not valid JSON ({err})") from err
        try:
            return cls.from_json(data)
        except ValueError as err:
            raise ValueError(f"path: {path}: {err}") from err


def pad_ids(ids: Sequence[int], length: int) -> np.ndarray:
    """(length,) int64: `ids` followed by zeros ("<end>"). Raises if `ids` is longer."""
    if length < 1:
        raise ValueError(f"length: must be >= 1, got {length}")
    if len(ids) > length:
        raise ValueError(f"ids: {len(ids)} ids do not fit in length {length}; encode with max_words")
    out = np.zeros(length, dtype=np.int64)
    out[: len(ids)] = ids
    return out
