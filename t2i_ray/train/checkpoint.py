"""Checkpoints: state dicts + constructor kwargs + config, never pickled objects.

A checkpoint is a folder:
    state.pt     {"step", "modules": {name: state_dict}, "optimizers": {name: state_dict},
                  "rng": {name: ByteTensor}}  -- loadable with torch.load(weights_only=True)
    config.json  the ExperimentConfig that produced it
    modules.json constructor kwargs of every module (rebuild without the config machinery)
    vocab.json   the vocabulary the text encoders were trained with (SPEC 1)
    assets.json  the frozen files the run used and a sampler needs (the DAMSM folder with its text
                 encoder, the captioner of l4), by absolute path and fingerprint
Writes go to a temporary sibling folder first and are moved into place with os.replace, so a
crash mid-write never leaves a half checkpoint where a resume would find it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

STATE_FILE = "state.pt"
ASSETS_FILE = "assets.json"


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_checkpoint(
    directory: str | Path,
    *,
    step: int,
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    rng: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    vocab_json: Mapping[str, Any] | None = None,
    assets: Mapping[str, Any] | None = None,
    extra_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint folder atomically; return its path. `extra_state` joins
    state.pt (plain numbers and strings, e.g. the best in-training evaluation so far)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    state = {
        "step": int(step),
        "modules": {k: unwrap(m).state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "rng": dict(rng),
        **dict(extra_state or {}),
    }
    torch.save(state, tmp / STATE_FILE)
    write_json(tmp / "config.json", dict(config))
    write_json(tmp / "modules.json", {k: getattr(unwrap(m), "config", {}) for k, m in modules.items()})
    if vocab_json is not None:
        write_json(tmp / "vocab.json", dict(vocab_json))
    if assets is not None:
        write_json(tmp / ASSETS_FILE, dict(assets))
    replace_dir(tmp, directory)
    return directory


def replace_dir(src: str | Path, target: str | Path) -> None:
    """Move folder `src` to `target`, replacing it; `target` is never left half-written."""
    src, target = Path(src), Path(target)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, target)


def build_dir_atomically(final: str | Path, build: Callable[[Path], Any]) -> Path:
    """Run `build(tmp)` in a temporary sibling folder of `final`, then move it into place, so a
    crash mid-build never leaves a half-written cache folder where a later run would load it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_state(directory: str | Path) -> dict[str, Any]:
    """Load `state.pt` safely (weights_only=True: tensors, numbers, strings, dicts, lists)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint state at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(
    state: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> int:
    """Load module/optimizer states in place; return the step to resume from."""
    missing = set(modules) - set(state["modules"])
    if missing:
        raise ValueError(f"checkpoint lacks modules {sorted(missing)}; it was written by another model config")
    for name, module in modules.items():
        unwrap(module).load_state_dict(state["modules"][name])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    return int(state["step"])


def write_to(dest: str, write: Callable[[Path], Path]) -> None:
    """Run `write(folder)` (e.g. a save_checkpoint) for `dest`: a local folder, written in place
    (save_checkpoint replaces it atomically), or a storage URI (s3://, gs://), written to a
    temporary folder and uploaded (the old copy is deleted first: object stores cannot rename)."""
    if "://" not in dest:
        write(Path(dest))
        return
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(dest)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write(Path(tmp) / "upload")
        if fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound:
            fs.delete_dir(inner)
        fs.create_dir(inner, recursive=True)
        pyarrow.fs.copy_files(str(folder), inner, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)


@contextlib.contextmanager
def local_dir(path: str | Path) -> Iterator[Path]:
    """A checkpoint folder on this machine: `path` itself, or a temporary download of a storage URI.
    FileNotFoundError names the path when it holds no checkpoint."""
    path = str(path)
    if "://" not in path:
        if not (Path(path) / STATE_FILE).is_file():
            raise FileNotFoundError(f"no checkpoint at {path} (missing {STATE_FILE})")
        yield Path(path)
        return
    import pyarrow.fs

    fs, inner = pyarrow.fs.FileSystem.from_uri(path)
    if fs.get_file_info(f"{inner}/{STATE_FILE}").type == pyarrow.fs.FileType.NotFound:
        raise FileNotFoundError(f"no checkpoint at {path} (missing {STATE_FILE})")
    with tempfile.TemporaryDirectory(prefix="t2i-checkpoint-") as tmp:
        pyarrow.fs.copy_files(inner, tmp, source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        yield Path(tmp)
