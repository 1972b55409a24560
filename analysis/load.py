"""Read the results table of one or more sweeps from their parquet files.

Every finished (or failed) trial writes one one-row parquet file to `<output_dir>/results/<run_name>.parquet`
(see `t2i_ray/sweep/store.py`). This module reads those files directly with pyarrow; by design it
never imports `t2i_ray`, so analysis runs anywhere pandas/pyarrow are installed.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable

import pandas as pd
import pyarrow.parquet as pq

# Identity/status columns every result row carries (mirrors t2i_ray.sweep.store.ROW_COLUMNS).
ROW_COLUMNS: tuple[str, ...] = ("run_name", "sweep", "row", "seed", "status", "error", "wall_time_s",
                                "code_version", "finished_at")
LAYOUT_HINT = "expected `<output_dir>/results/*.parquet` (one file per trial), a results folder or a .parquet file"


def result_files(path: str | Path) -> list[Path]:
    """The parquet files one path stands for, sorted by name.

    `path` may be a sweep's output dir (its `results/` subfolder is read), a results folder holding
    `*.parquet` files directly, or a single `.parquet` file. An existing but empty folder gives [].
    Hidden files (temporary files of a trial being written) are ignored.
    Raises FileNotFoundError, naming the path and the expected layout, when there is nothing to read.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.exists():
        raise FileNotFoundError(f"results path {str(p)!r} does not exist; {LAYOUT_HINT}. "
                                "Check the path (a sweep writes results/ only once its first trial ends).")
    if not p.is_dir():
        raise FileNotFoundError(f"results path {str(p)!r} is neither a file nor a folder; {LAYOUT_HINT}.")

    def visible(folder: Path) -> list[Path]:
        return sorted(f for f in folder.glob("*.parquet") if not f.name.startswith(".") and f.is_file())

    sub = p / "results"
    if sub.is_dir():
        return visible(sub)
    direct = visible(p)
    if direct or p.name == "results" or not any(p.iterdir()):
        return direct
    raise FileNotFoundError(f"no results folder at {str(sub)!r} and no .parquet files in {str(p)!r}; "
                            f"{LAYOUT_HINT}. Pass the sweep's output_dir (the folder holding results/).")


def locate_results(path: str | Path, base: str | Path | None = None) -> Path:
    """The output folder a notebook or script was pointed at, resolved.

    A relative `path` is looked up as given (against the working directory) and then against
    `base`: a Jupyter kernel runs in the notebook's folder (`analysis/`), while the sweep wrote
    `t2i_runs/` relative to where it was started (the repository root), so the notebook passes the
    repository root as `base`. The first candidate that holds results is returned; otherwise a
    FileNotFoundError names every place looked at, and nothing is created.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() or base is None else [p, Path(base).expanduser() / p]
    for candidate in candidates:
        try:
            if result_files(candidate):
                return candidate.resolve()
        except FileNotFoundError:
            continue
    looked = " or ".join(repr(str(c.resolve())) for c in candidates)
    raise FileNotFoundError(f"no results under {looked}; {LAYOUT_HINT}. Set T2I_RESULTS to the sweep's "
                            f"--output-dir (an absolute path, or relative to the repository root)")


def _read(file: Path) -> pd.DataFrame | None:
    try:
        return pq.read_table(file).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, not fatal
        warnings.warn(f"skipping unreadable result file {str(file)!r}: {type(exc).__name__}: {exc}",
                      RuntimeWarning, stacklevel=3)
        return None


def load_results(*paths: str | Path, sweep: str | Iterable[str] | None = None,
                 include_failed: bool = False) -> pd.DataFrame:
    """All result rows found under `paths`, one row per trial (run_name).

    paths: output dirs, results dirs and/or single parquet files (at least one); their rows are
        concatenated. A partial table from a sweep still running is fine.
    sweep: keep only rows whose `sweep` column equals this name (or is in this collection of names).
    include_failed: keep rows whose `status` is not "ok" (by default only successful trials are kept).

    Returns a DataFrame with one row per run_name: when the same run_name appears more than once
    (a rerun, or overlapping paths) the row with the newest `finished_at` is kept (the later-read one
    when `finished_at` is absent or tied). Columns are the union of all files' columns; when nothing
    is found the result is an empty DataFrame with the identity columns ROW_COLUMNS.
    Files that cannot be read are skipped with a RuntimeWarning naming the file.
    """
    if not paths:
        raise TypeError("load_results() needs at least one path: an output dir, a results dir or a .parquet file")
    files: list[Path] = []
    for path in paths:
        files.extend(result_files(path))
    frames = [f for f in (_read(file) for file in files) if f is not None and len(f)]
    if not frames:
        return pd.DataFrame(columns=list(ROW_COLUMNS))
    df = pd.concat(frames, ignore_index=True)

    if "run_name" in df.columns and df["run_name"].duplicated().any():
        df["_order"] = range(len(df))
        if "finished_at" in df.columns:
            df["_when"] = pd.to_datetime(df["finished_at"], utc=True, errors="coerce", format="ISO8601")
            df = df.sort_values(["_when", "_order"], na_position="first", kind="stable")
        df = df.drop_duplicates("run_name", keep="last").sort_values("_order", kind="stable")
        df = df.drop(columns=[c for c in ("_order", "_when") if c in df.columns])

    if sweep is not None:
        if "sweep" not in df.columns:
            raise KeyError("cannot filter by sweep: the result files have no 'sweep' column")
        names = [sweep] if isinstance(sweep, str) else list(sweep)
        df = df[df["sweep"].isin(names)]
    if not include_failed and "status" in df.columns:
        df = df[df["status"] == "ok"]
    return df.reset_index(drop=True)
