"""Plots of sweep results (matplotlib; each function returns a Figure, `save_figure` writes a PNG).

- `plot_metric_vs_weights`: a metric against each loss weight, mean and 95% CI over the trials at
  each weight value (a main effect, pooled over the other settings), individual trials as dots.
- `plot_pareto`: the FID / R-precision trade-off of a set of trials and its Pareto front.
- `plot_training_curves`: training losses against step from the trials' `curves/*.jsonl` files.
- `plot_sample_grid`: one row of generated images per configuration, for the same test captions and
  the same noise (every run saves its grid with noise seed 1234 on the first test items), real
  images on top.

Inputs are results DataFrames from `analysis.load.load_results` and the files the trials wrote
next to the results table (`curves/`, `samples/`); nothing here imports `t2i_ray`. File paths
recorded in a row are absolute on the machine that ran the trial; when a results folder was copied
elsewhere, pass its output dir(s) as `roots` and the files are looked up there by run name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.stats import aggregate, higher_is_better

LOSS_WEIGHTS: tuple[str, ...] = ("config.loss.damsm", "config.loss.f2r", "config.loss.f2f", "config.loss.recap")
LOSS_LABELS = {"config.loss.damsm": "l1 (DAMSM)", "config.loss.f2r": "l2 (F2R)", "config.loss.f2f": "l3 (F2F)",
               "config.loss.recap": "l4 (recaption)"}
_ARROW = {True: " ↑", False: " ↓", None: ""}


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` as a PNG (folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _locate(row: pd.Series, column: str, subdir: str, suffix: str, roots: Iterable[str | Path]) -> Path | None:
    """A trial's file: the recorded path if it exists, else `<root>/<subdir>/<run_name><suffix>`."""
    recorded = row.get(column)
    if isinstance(recorded, str) and recorded and Path(recorded).is_file():
        return Path(recorded)
    for root in roots:
        candidate = Path(root) / subdir / f"{row['run_name']}{suffix}"
        if candidate.is_file():
            return candidate
    return None


# ---- metric vs loss weight -----------------------------------------------------------------------

def varied_weights(df: pd.DataFrame, candidates: Sequence[str] = LOSS_WEIGHTS) -> list[str]:
    """The weight columns that take more than one value among the successful trials."""
    ok = _ok(df)
    return [c for c in candidates if c in ok.columns and ok[c].nunique(dropna=True) > 1]


def plot_metric_vs_weights(df: pd.DataFrame, metric: str = "r_precision", weights: Sequence[str] | None = None,
                           max_discrete: int = 6) -> plt.Figure:
    """One panel per loss weight: `metric` against the weight's value.

    With at most `max_discrete` distinct values (a grid), each value gets the mean and its 95% CI
    over all successful trials at that value (pooled over the other settings and the seeds: a main
    effect), with the trials as dots; with more (an Optuna sweep) the trials are a scatter.
    Raises ValueError when no weight varies (nothing to plot) or the metric's provenance differs.
    """
    ok = _ok(df)
    weights = varied_weights(ok) if weights is None else list(weights)
    if not weights:
        raise ValueError(f"no loss weight varies among the {len(ok)} successful trials "
                         f"(looked at {list(LOSS_WEIGHTS)}); pass weights=[...] explicitly")
    fig, axes = plt.subplots(1, len(weights), figsize=(3.4 * len(weights), 3.0), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], weights):
        sub = ok[[col, metric]].apply(pd.to_numeric, errors="coerce").dropna()
        values = np.sort(sub[col].unique())
        if len(values) <= max_discrete:
            agg = aggregate(ok.assign(**{col: pd.to_numeric(ok[col], errors="coerce")}), by=col, metrics=[metric])
            agg = agg.sort_values(col)
            pos = {v: i for i, v in enumerate(values)}
            rng = np.random.default_rng(0)
            ax.scatter([pos[v] + rng.uniform(-0.08, 0.08) for v in sub[col]], sub[metric], s=12, alpha=0.45,
                       color="tab:gray", label="trials")
            ax.errorbar([pos[v] for v in agg[col]], agg["mean"], yerr=agg["ci95"].fillna(0.0), fmt="o-",
                        color="tab:blue", capsize=4, label="mean ± 95% CI")
            ax.set_xticks(range(len(values)), [f"{v:g}" for v in values])
        else:
            ax.scatter(sub[col], sub[metric], s=16, alpha=0.7, color="tab:blue", label="trials")
        ax.set_xlabel(LOSS_LABELS.get(col, col))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric + _ARROW[higher_is_better(metric)])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{metric} by loss weight (main effect over the other settings and seeds)", fontsize=9)
    fig.tight_layout()
    return fig


# ---- Pareto front --------------------------------------------------------------------------------

def pareto_mask(x: np.ndarray, y: np.ndarray, minimize_x: bool = True, maximize_y: bool = True) -> np.ndarray:
    """True for the points no other point dominates (at least as good in both, better in one)."""
    x = np.asarray(x, float) * (1 if minimize_x else -1)
    y = np.asarray(y, float) * (-1 if maximize_y else 1)  # both now "lower is better"
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        keep[i] = not dominated.any()
    return keep


def _label(row: pd.Series, label: str | None, weights: Sequence[str]) -> str:
    if label is not None:
        return str(row[label])
    if row.get("row") is not None and str(row["row"]).split(" ")[0] != "optuna":  # Optuna rows: their weights
        return f"{row['row']} s{row['seed']}"
    parts = [f"{LOSS_LABELS.get(c, c).split()[0]}={row[c]:.2g}" for c in weights if c in row]
    return ", ".join(parts) or str(row["run_name"])


def plot_pareto(df: pd.DataFrame, x: str = "fid", y: str = "r_precision", label: str | None = None,
                annotate: bool = True) -> plt.Figure:
    """Trials in the (FID, R-precision) plane, the Pareto-optimal ones joined and labelled.

    Works for any set of trials (an Optuna sweep, or a grid's trials); lower x and higher y are better.
    """
    ok = _ok(df)
    ok = ok[np.isfinite(pd.to_numeric(ok[x], errors="coerce")) & np.isfinite(pd.to_numeric(ok[y], errors="coerce"))]
    if ok.empty:
        raise ValueError(f"no successful trial has finite {x!r} and {y!r}")
    xs, ys = ok[x].to_numpy(float), ok[y].to_numpy(float)
    front = pareto_mask(xs, ys)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.scatter(xs[~front], ys[~front], s=22, color="tab:gray", alpha=0.6, label="dominated")
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], "o-", color="tab:red", label="Pareto front")
    if annotate:
        weights = varied_weights(ok)
        for (_, row), on_front in zip(ok.iterrows(), front):
            if on_front:
                ax.annotate(_label(row, label, weights), (row[x], row[y]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(x + _ARROW[higher_is_better(x)])
    ax.set_ylabel(y + _ARROW[higher_is_better(y)])
    ax.set_title(f"{len(ok)} trials, {int(front.sum())} on the front", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---- training curves -----------------------------------------------------------------------------

def read_curve(path: str | Path) -> pd.DataFrame:
    """One trial's curve file (JSON lines of training reports), one row per step (later line wins:
    a resumed run repeats the steps after its last checkpoint)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not lines:
        return pd.DataFrame(columns=["step"])
    curve = pd.DataFrame(lines)
    return curve.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def load_curves(df: pd.DataFrame, roots: Iterable[str | Path] = ()) -> pd.DataFrame:
    """The training curves of the trials in `df`, long form: run_name, row, seed, step, <metrics>.

    Trials whose curve file cannot be found are left out (a RuntimeWarning lists them).
    """
    import warnings

    roots = list(roots)
    frames, missing = [], []
    for _, row in df.iterrows():
        path = _locate(row, "curves_path", "curves", ".jsonl", roots)
        if path is None:
            missing.append(str(row["run_name"]))
            continue
        curve = read_curve(path)
        frames.append(curve.assign(run_name=row["run_name"], row=row.get("row"), seed=row.get("seed")))
    if missing:
        warnings.warn(f"no curve file for {len(missing)} trial(s): {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                      "pass roots=[<output_dir>] if the results folder was moved", RuntimeWarning, stacklevel=2)
    if not frames:
        return pd.DataFrame(columns=["run_name", "row", "seed", "step"])
    return pd.concat(frames, ignore_index=True)


def plot_training_curves(curves: pd.DataFrame, keys: Sequence[str] = ("loss_d", "loss_g"), by: str = "row",
                         order: Sequence[str] | None = None) -> plt.Figure:
    """One panel per key: the mean over the seeds of each group against step, shaded min..max."""
    keys = [k for k in keys if k in curves.columns]
    if not keys:
        raise ValueError(f"none of the requested keys in the curves; available: "
                         f"{sorted(c for c in curves.columns if c not in ('run_name', 'row', 'seed', 'step'))}")
    groups = list(pd.unique(curves[by]))
    if order is not None:
        groups = [g for g in order if g in groups] + [g for g in groups if g not in order]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, key in zip(axes[0], keys):
        for i, g in enumerate(groups):
            stats = curves[curves[by] == g].groupby("step")[key].agg(["mean", "min", "max"])
            ax.plot(stats.index, stats["mean"], color=colors(i % 10), label=str(g), lw=1.4)
            ax.fill_between(stats.index, stats["min"], stats["max"], color=colors(i % 10), alpha=0.15, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


# ---- sample images -------------------------------------------------------------------------------

def _load_grid(path: Path, num: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A run's sample PNG -> (real strip, fake strip), each (H, n*W, 3); the PNG is 2 rows of n images."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    h = img.shape[0] // 2
    real, fake = img[:h], img[h:2 * h]
    if num is not None:
        real, fake = real[:, : num * h], fake[:, : num * h]  # square images: width h each
    return real, fake


def plot_sample_grid(df: pd.DataFrame, by: str = "row", order: Sequence[str] | None = None, seed: int | None = None,
                     num: int | None = 8, roots: Iterable[str | Path] = ()) -> plt.Figure:
    """Real test images on top, then per configuration the fakes for the same captions and noise.

    One trial per group: the one with `seed` (default: each group's lowest seed). Raises
    ValueError when no trial has a sample file, or when the trials' data configs differ (then the
    captions and real images would not be the same).
    """
    ok = _ok(df)
    roots = list(roots)
    data_cols = [c for c in ok.columns if c.startswith("config.data.")]
    if data_cols and len(ok[data_cols].astype(str).drop_duplicates()) > 1:
        raise ValueError("the trials use different data configs, so their sample grids do not show the same "
                         "captions; filter to one dataset/resolution first")
    groups = list(pd.unique(ok[by]))
    if order is not None:
        groups = [g for g in order if g in groups] + [g for g in groups if g not in order]
    strips, labels, real = [], [], None
    for g in groups:
        trials = ok[ok[by] == g].sort_values("seed")
        if seed is not None:
            trials = trials[trials["seed"] == seed]
        for _, row in trials.iterrows():
            path = _locate(row, "samples_path", "samples", ".png", roots)
            if path is None:
                continue
            r, f = _load_grid(path, num)
            real = r if real is None else real
            strips.append(f)
            labels.append(f"{g} (s{row['seed']})")
            break
    if not strips:
        raise ValueError("no sample image found for any trial; pass roots=[<output_dir>] if the results "
                         "folder was moved (samples live in <output_dir>/samples/<run_name>.png)")
    rows = [real, *strips]
    names = ["real", *labels]
    h, w = real.shape[:2]
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(1.0 * w / h, 16), 1.05 * len(rows)), squeeze=False)
    for ax, strip, name in zip(axes[:, 0], rows, names):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(hspace=0.08)
    return fig


def sample_captions(df: pd.DataFrame, roots: Iterable[str | Path] = ()) -> list[str]:
    """The captions of the sample grid's columns (saved beside each sample PNG as JSON)."""
    for _, row in _ok(df).iterrows():
        path = _locate(row, "samples_path", "samples", ".png", list(roots))
        if path is not None and path.with_suffix(".json").is_file():
            return list(json.loads(path.with_suffix(".json").read_text())["captions"])
    return []
