"""Reference statistics of a real image set: computed once, cached with their provenance, compared
many times (DESIGN.md, after NVlabs/edm's "FID as reference stats once, compare many").

An entry is keyed by (dataset hash, split, resolution, detector) - the detector string names the
backbone with its weights digest and the resize mode - and stored as two files under
`<cache_dir>/reference_stats/`:
  <name>.npz   mu (F,) float64, sigma (F, F) float64, features (N, F) float32 (for KID); no pickle
  <name>.json  the manifest: key fields, N, feature dim, backbone, weights digest, library versions,
               the npz's sha256, creation time
The npz is written first and the manifest last (both atomically), so a manifest means a whole
entry; on load the manifest's key must equal the requested key and the npz its recorded sha256,
else the entry is recomputed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from t2i_ray.console import console
from t2i_ray.eval.fid import feature_stats
from t2i_ray.weights import file_sha256

REFERENCE_STATS_VERSION = 1


@dataclass
class ReferenceStats:
    mu: np.ndarray  # (F,) float64
    sigma: np.ndarray  # (F, F) float64
    features: np.ndarray  # (N, F) float32: the extractor's own output precision
    manifest: dict[str, Any]
    cache_hit: bool


def reference_key(dataset_hash: str, split: str, resolution: int, detector: str) -> dict[str, Any]:
    return {"version": REFERENCE_STATS_VERSION, "dataset_hash": dataset_hash, "split": split,
            "resolution": int(resolution), "detector": detector}


def reference_paths(cache_dir: str, dataset: str, key: dict[str, Any]) -> tuple[str, str]:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{key['split']}-{key['resolution']}-{digest}")
    folder = os.path.join(cache_dir, "reference_stats")
    return os.path.join(folder, stem + ".npz"), os.path.join(folder, stem + ".json")



def _replace_atomic(path: str, write: Callable[[str], None]) -> None:
    # Concurrent trials may compute the same entry; readers only ever see whole files.
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    write(tmp)
    os.replace(tmp, path)


def _try_load(npz_path: str, json_path: str, key: dict[str, Any]) -> tuple[ReferenceStats | None, str]:
    """(stats, "") on a valid entry, else (None, why not)."""
    if not os.path.exists(json_path):
        return None, "no cached entry"
    with open(json_path) as fh:
        manifest = json.load(fh)
    if manifest.get("key") != key:
        return None, f"cached key {manifest.get('key')} != requested {key}"
    if not os.path.exists(npz_path) or file_sha256(npz_path) != manifest.get("npz_sha256"):
        return None, f"{npz_path} is missing or does not match its manifest's sha256"
    with np.load(npz_path, allow_pickle=False) as z:
        return ReferenceStats(z["mu"], z["sigma"], z["features"], manifest, cache_hit=True), ""


def load_or_compute_reference_stats(
    cache_dir: str,
    *,
    dataset: str,
    dataset_hash: str,
    split: str,
    resolution: int,
    detector: str,
    compute_features: Callable[[], np.ndarray],
    provenance: dict[str, Any] | None = None,
    log: Callable[[str], None] = console,
) -> ReferenceStats:
    """The cached statistics of (dataset_hash, split, resolution, detector), or compute_features()
    -> (N, F) once, cache mu/sigma/features with a manifest, and return them.

    `provenance` (backbone, weights digest, resize, library versions, ...) goes into the manifest.
    """
    key = reference_key(dataset_hash, split, resolution, detector)
    npz_path, json_path = reference_paths(cache_dir, dataset, key)
    stats, why = _try_load(npz_path, json_path, key)
    if stats is not None:
        log(f"[eval] reference stats of {dataset}/{split} ({stats.manifest['num_images']} images, {detector}) "
            f"from {npz_path}")
        return stats
    log(f"[eval] computing reference stats of {dataset}/{split} at {resolution}px with {detector} ({why})")
    features = np.asarray(compute_features())
    mu, sigma = feature_stats(features)
    features32 = features.astype(np.float32)
    os.makedirs(os.path.dirname(npz_path), exist_ok=True)

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a str path
            np.savez(fh, mu=mu, sigma=sigma, features=features32)

    _replace_atomic(npz_path, write_npz)
    manifest = {
        "key": key, "dataset": dataset, "split": split, "resolution": int(resolution), "detector": detector,
        "num_images": int(features.shape[0]), "feature_dim": int(features.shape[1]),
        "npz_sha256": file_sha256(npz_path), "npz_file": os.path.basename(npz_path),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **(provenance or {}),
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)

    _replace_atomic(json_path, write_json)
    log(f"[eval] cached reference stats at {npz_path}")
    return ReferenceStats(mu, sigma, features32, manifest, cache_hit=False)
