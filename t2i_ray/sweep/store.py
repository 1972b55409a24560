"""The results table: one parquet file per finished (or failed) trial under `<output_dir>/results/`.

A folder of one-row parquet files is one table for pyarrow/pandas, can be written by concurrent
trials on any node of a shared filesystem without locks, and survives a crash of the sweep: a
trial's row is written (atomically: temporary file, then rename) as soon as the trial ends. The
file name is the run name, so a rerun of the same trial replaces its row instead of duplicating it.
`analysis/` reads only these files.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from t2i_ray.paths import RunPaths
from t2i_ray.config import flatten_dict

ROW_COLUMNS = ("run_name", "sweep", "row", "seed", "status", "error", "wall_time_s",
               "code_version", "finished_at")


def results_dir(output_dir: str | Path) -> Path:
    return RunPaths(Path(output_dir)).results


def code_version() -> str:
    """git commit of the checkout (with '-dirty' when it has uncommitted changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "t2i-ray " + version("t2i-ray")
        except PackageNotFoundError:
            return "unknown"


def library_versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    return out


def _cell(value: Any) -> Any:
    """Parquet-friendly scalar: nested values become JSON text, non-finite floats stay floats."""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and not math.isfinite(value):
        return value
    return value


def write_row(output_dir: str | Path, row: Mapping[str, Any]) -> Path:
    """Write one trial's row; `row` must carry every ROW_COLUMNS key."""
    missing = [c for c in ROW_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"result row lacks {missing}")
    folder = results_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    flat = {k: _cell(v) for k, v in row.items()}
    path = folder / f"{row['run_name']}.parquet"
    tmp = folder / f".{row['run_name']}.parquet.tmp"
    pq.write_table(pa.Table.from_pylist([flat]), tmp)
    os.replace(tmp, path)
    return path


def read_row(output_dir: str | Path, run_name: str) -> dict[str, Any] | None:
    """The row of one run, or None when it has none yet."""
    path = results_dir(output_dir) / f"{run_name}.parquet"
    if not path.is_file():
        return None
    return pq.read_table(path).to_pylist()[0]


def make_row(*, run_name: str, sweep: str, row: str, seed: int, status: str, error: str | None,
             wall_time_s: float, config: Mapping[str, Any], metrics: Mapping[str, Any],
             version: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble a row: identity, status, config (as `config.<dotted key>` columns), metrics."""
    out: dict[str, Any] = {
        "run_name": run_name, "sweep": sweep, "row": row, "seed": int(seed), "status": status,
        "error": error or "", "wall_time_s": float(wall_time_s), "code_version": version,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
    }
    out.update({f"lib.{k}": v for k, v in library_versions().items()})
    out.update({f"config.{k}": v for k, v in flatten_dict(config).items()})
    out["config_json"] = json.dumps(config, sort_keys=True)
    out.update({k: v for k, v in metrics.items() if k not in out})
    out.update(extra or {})
    return out


def load_results(output_dir: str | Path, sweep: str | None = None) -> pd.DataFrame:
    """All rows (optionally of one sweep) as a DataFrame; empty when nothing finished yet."""
    folder = results_dir(output_dir)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    df = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)
    if sweep is not None:
        df = df[df["sweep"] == sweep].reset_index(drop=True)
    return df
