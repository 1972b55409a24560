"""Reading weights files the user points at (FID Inception, DAMSM's ImageNet Inception-v3, CLIP,
HRNet).

One resolver (config field, else environment variable) and one loader for the config-time check
(`config_checks.check_paths`) and the models that use the files, so that a file the check accepts
is a file they can read. Files are loaded with
`weights_only=True`: a pickle from disk never runs code.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable, Mapping
from typing import IO, Any

import torch


class WeightsFileError(ValueError):
    """A file is not a state dict of tensors; the message says what it holds instead."""


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        if not obj:
            return "an empty mapping"
        bad = next(k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor)))
        return f"a mapping whose entry {bad!r} is a {type(obj[bad]).__name__}"
    return f"a {type(obj).__name__}"


def load_state_dict_file(source: str | os.PathLike | IO[bytes], mmap: bool | None = None
                         ) -> dict[str, torch.Tensor]:
    """{name: tensor} of a torch weights file (a training checkpoint that nests it under
    "state_dict" is unwrapped). `mmap` (default: for zip-format files on disk) maps the tensors
    instead of reading them, so checking a 100 MB file costs little; legacy non-zip files cannot be
    mapped and are read. Raises WeightsFileError when the file is not such a state dict."""
    if mmap is None:
        mmap = isinstance(source, (str, os.PathLike)) and zipfile.is_zipfile(source)
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch.load raises many types on foreign files (KeyError on a text file)
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        reason = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
        raise WeightsFileError(f"cannot be read by torch.load(weights_only=True) ({reason})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise WeightsFileError(f"holds {_describe(obj)}, not a state dict of tensors")
    return dict(obj)


__all__ = ["WeightsFileError", "load_state_dict_file", "resolve_local_file", "file_sha256"]


def resolve_local_file(config_path: str | None, env: str, missing: Callable[[str | None], Exception]) -> str:
    """Absolute path of a file the user points at: `config_path` (a config field) if set, else the
    environment variable `env`. Raises `missing(None)` when neither names a path and `missing(path)`
    when the path is not a file (each caller's error type and message: Inception, CLIP, HRNet)."""
    path = config_path if config_path else os.environ.get(env) or None
    if path is None:
        raise missing(None)
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise missing(path)
    return path


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks (weights files, cached statistics)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
