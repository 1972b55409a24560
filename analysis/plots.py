"""Plots of sweep results (matplotlib; each function returns a Figure, `save_figure` writes a PNG).

- `plot_metric_by_row`: a metric per ablation row, every seed a dot, the mean a bar and, from 3 seeds
  on, a percentile bootstrap 95% interval of the mean clipped to the metric's range (fewer seeds: no
  interval, and the figure says so).
- `plot_effects`: each row's mean minus that of its matching baseline row (same sweep, same swept
  values, config differing only in the row's own factor), never pooled over rows.
- `plot_metric_vs_weights`: a metric against each loss weight, one dot per trial, nothing pooled
  (for Optuna sweeps, where every trial is a configuration of its own).
- `plot_pareto`: the FID / R-precision trade-off of a set of trials and its Pareto front, every
  point labelled with its row and seed.
- `plot_training_curves`: training losses against step from the trials' `curves/*.jsonl` files,
  one legend for the figure.
- `plot_sample_grid`: one row of generated images per configuration, for the same test captions and
  the same noise (every run saves its grid with noise seed 1234 on the first test items), real
  images on top, each column captioned with its text (`samples/<run>.json`).
- `plot_guidance_curve` (diffusion): FID against CLIP score (or R-precision where there is none)
  over classifier-free guidance scales, one line per row, points labelled by scale (GCDP Fig. 7).
- `plot_layout_samples` (diffusion): image | layout | outpainting rows per configuration, from the
  `samples/<run>_layouts.png` and `_outpaint.png` grids the joint trials save.

Inputs are results DataFrames from `analysis.load.load_results` and the files the trials wrote
next to the results table (`curves/`, `samples/`); nothing here imports `t2i_ray`. File paths
recorded in a row are absolute on the machine that ran the trial; when a results folder was copied
elsewhere, pass its output dir(s) as `roots` and the files are looked up there by run name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.stats import (MIN_SEEDS_FOR_INTERVAL, bootstrap_interval, check_comparable, check_one_configuration,
                            _values, effects_vs_baseline, higher_is_better, metric_range)

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


# ---- metric per row, effects against the matching baseline ---------------------------------------

def _ordered(groups: Sequence, order: Sequence | None) -> list:
    groups = list(groups)
    if order is None:
        return groups
    return [g for g in order if g in groups] + [g for g in groups if g not in order]


def _differing_data_fields(ok: pd.DataFrame, ignore: Sequence[str] = ()) -> list[str]:
    """The `data.*` config fields with more than one recorded value among the trials (a field missing
    from some rows, which the code version of those trials did not have yet, is no difference)."""
    return [c[len("config."):] for c in ok.columns
            if c.startswith("config.data.") and c[len("config."):] not in ignore
            and ok[c].dropna().astype(str).nunique() > 1]


def _first_grid_per_group(ok: pd.DataFrame, by: str, order: Sequence | None, seed: int | None,
                          find: Callable[[pd.Series], Path | None]):
    """(group, trial row, path) per group of `by`, in order: the group's first trial by seed (only
    `seed`'s when given) for which `find(row)` gives a grid file; groups without one are left out."""
    for g in _ordered(pd.unique(ok[by]), order):
        trials = ok[ok[by] == g].sort_values("seed")
        if seed is not None:
            trials = trials[trials["seed"] == seed]
        for _, row in trials.iterrows():
            path = find(row)
            if path is not None:
                yield g, row, path
                break


def _no_interval_note(counts: dict, what: str = "row") -> str:
    """The figure's note when some groups have too few seeds for an interval ('' when none)."""
    few = {g: n for g, n in counts.items() if n < MIN_SEEDS_FOR_INTERVAL}
    if not few:
        return ""
    ns = sorted(set(few.values()))
    who = "any " + what if len(few) == len(counts) else f"{len(few)} of {len(counts)} {what}s"
    return (f"no interval for {who}: n={'/'.join(map(str, ns))} seed(s), an interval needs "
            f">= {MIN_SEEDS_FOR_INTERVAL}")


def plot_metric_by_row(df: pd.DataFrame, metric: str = "fid", by: str = "row", order: Sequence[str] | None = None,
                       n_boot: int = 10000, seed: int = 0) -> plt.Figure:
    """`metric` per group of `by` (ablation row or configuration), every seed shown.

    Each seed's value is a dot (one scatter per group, so its offsets are that group's seeds), the
    mean a horizontal bar. A group with at least MIN_SEEDS_FOR_INTERVAL (3) seeds also gets a
    vertical line (gid "interval"): the percentile bootstrap 95% interval of the mean, clipped to
    the metric's valid range (`analysis.stats.metric_range`: FID/KID >= 0, fractions in [0, 1]).
    Groups with fewer seeds get none, and the title says so. Raises ValueError when no trial has
    a finite value of `metric` or its provenance differs (`check_comparable`).
    """
    check_one_configuration(df, by)
    check_comparable(df, metric)
    vals = _values(df, metric)
    if vals.empty:
        raise ValueError(f"no successful trial has a finite {metric!r}")
    groups = df.loc[vals.index, by]
    names = _ordered(pd.unique(groups), order)
    bounds = metric_range(metric)
    fig, ax = plt.subplots(figsize=(max(3.6, 0.9 * len(names) + 1.6) + 1.8, 3.4))
    rng = np.random.default_rng(0)
    counts = {}
    for i, g in enumerate(names):
        x = vals[groups == g].to_numpy(float)
        counts[g] = len(x)
        jitter = rng.uniform(-0.12, 0.12, len(x)) if len(x) > 1 else np.zeros(1)
        ax.scatter(i + jitter, x, s=16, color="tab:gray", alpha=0.8, zorder=3, label="seeds" if i == 0 else None)
        ax.plot([i - 0.25, i + 0.25], [x.mean()] * 2, color="tab:blue", lw=2, zorder=4,
                label="mean" if i == 0 else None, gid="mean")
        if len(x) >= MIN_SEEDS_FOR_INTERVAL:
            lo, hi = bootstrap_interval(x, n_boot=n_boot, seed=seed, bounds=bounds)
            ax.vlines(i, lo, hi, color="tab:blue", lw=1.2, zorder=2, gid="interval",
                      label="bootstrap 95% CI of the mean" if not any(
                          c.get_gid() == "interval" for c in ax.collections) else None)
    ax.set_xticks(range(len(names)), [str(g) for g in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric + _ARROW[higher_is_better(metric)])
    ax.grid(alpha=0.3, axis="y")
    note = _no_interval_note(counts)
    ax.set_title(f"{metric} per {by}: every seed, mean" + (f"\n{note}" if note else
                                                           ", bootstrap 95% CI of the mean"), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_effects(df: pd.DataFrame, metric: str = "fid", baseline: str | Sequence[str] = "baseline", by: str = "row",
                 order: Sequence[str] | None = None, n_boot: int = 10000, seed: int = 0) -> plt.Figure:
    """Each group's effect on `metric`: its mean minus its matching baseline group's mean.

    The baseline of a group is chosen by `analysis.stats.matching_baselines` (same sweep, same
    --sweep values, config differing in the row's factor only); nothing is pooled across rows.
    Per group: every seed's value minus the baseline mean as a dot, the difference of the means as
    a bar, and from 3 seeds in both groups the percentile bootstrap 95% interval of the difference
    (gid "interval"); the tick labels read "<row> − <its baseline>", the title notes groups without
    an interval or without a baseline. Raises ValueError when no group has a matching baseline.
    """
    eff = effects_vs_baseline(df, metric, baseline=baseline, by=by, n_boot=n_boot, seed=seed)
    eff = eff.set_index(by).loc[_ordered(eff[by], order)].reset_index()
    matched = eff[eff["baseline"].notna()]
    if matched.empty:
        reasons = "; ".join(f"{r[by]}: {r['note']}" for _, r in eff.iterrows()) or "only baseline rows"
        raise ValueError(f"no {by} has a matching {baseline!r} row to compare {metric!r} with ({reasons})")
    vals = _values(df, metric)
    groups = df.loc[vals.index, by]
    fig, ax = plt.subplots(figsize=(max(3.6, 0.9 * len(matched) + 1.6) + 1.6, 3.4))
    rng = np.random.default_rng(0)
    counts = {}
    for i, (_, r) in enumerate(matched.iterrows()):
        x = vals[groups == r[by]].to_numpy(float)
        base_mean = vals[groups == r["baseline"]].mean()
        counts[r[by]] = min(r["n"], r["n_baseline"])
        jitter = rng.uniform(-0.12, 0.12, len(x)) if len(x) > 1 else np.zeros(1)
        ax.scatter(i + jitter, x - base_mean, s=16, color="tab:gray", alpha=0.8, zorder=3,
                   label="seed − baseline mean" if i == 0 else None)
        ax.plot([i - 0.25, i + 0.25], [r["diff"]] * 2, color="tab:red", lw=2, zorder=4, gid="mean",
                label="difference of means" if i == 0 else None)
        if np.isfinite(r["lo"]):
            ax.vlines(i, r["lo"], r["hi"], color="tab:red", lw=1.2, zorder=2, gid="interval",
                      label="bootstrap 95% CI" if not any(c.get_gid() == "interval" for c in ax.collections)
                      else None)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(range(len(matched)), [f"{r[by]} − {r['baseline']}" for _, r in matched.iterrows()],
                  rotation=30, ha="right", fontsize=8)
    # two short lines: one line of this length ran past a 3.4-inch-high axis into the title
    ax.set_ylabel(f"Δ {metric}{_ARROW[higher_is_better(metric)]}\nvs matching baseline", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    notes = [_no_interval_note(counts)]
    unmatched = eff[eff["baseline"].isna()]
    if len(unmatched):
        notes.append(f"not shown, no matching baseline: {', '.join(map(str, unmatched[by]))}")
    notes = [n for n in notes if n]
    ax.set_title(f"effect on {metric}: each {by} against its matching baseline row"
                 + "".join(f"\n{n}" for n in notes), fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


# ---- metric vs loss weight (trials, never pooled) ------------------------------------------------

def varied_weights(df: pd.DataFrame, candidates: Sequence[str] = LOSS_WEIGHTS) -> list[str]:
    """The weight columns that take more than one value among the successful trials."""
    ok = _ok(df)
    return [c for c in candidates if c in ok.columns and ok[c].nunique(dropna=True) > 1]


def plot_metric_vs_weights(df: pd.DataFrame, metric: str = "r_precision",
                           weights: Sequence[str] | None = None) -> plt.Figure:
    """One panel per loss weight: `metric` against the weight's value, one dot per trial.

    Nothing is averaged: trials at one weight value differ in the other settings (the rows of a
    one-factor grid change one term each), so a per-value mean would mix configurations. Meant for
    Optuna sweeps, where every trial draws all weights; for a grid use `plot_metric_by_row` and
    `plot_effects`. Raises ValueError when no weight varies.
    """
    ok = _ok(df)
    weights = varied_weights(ok) if weights is None else list(weights)
    if not weights:
        raise ValueError(f"no loss weight varies among the {len(ok)} successful trials "
                         f"(looked at {list(LOSS_WEIGHTS)}); pass weights=[...] explicitly")
    check_comparable(ok, metric)
    fig, axes = plt.subplots(1, len(weights), figsize=(3.4 * len(weights), 3.0), squeeze=False, sharey=True)
    for ax, col in zip(axes[0], weights):
        sub = ok[[col, metric]].apply(pd.to_numeric, errors="coerce").dropna()
        ax.scatter(sub[col], sub[metric], s=16, alpha=0.7, color="tab:blue")
        ax.set_xlabel(LOSS_LABELS.get(col, col))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric + _ARROW[higher_is_better(metric)])
    fig.suptitle(f"{metric} by loss weight: one dot per trial, nothing pooled", fontsize=9)
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
    """Trials in the (FID, R-precision) plane, the Pareto-optimal ones joined.

    One point per trial (per seed); with `annotate` every point is labelled (a text annotation per
    point, trials at the very same place share one): "<row> s<seed>", an Optuna trial by its
    weights, or the column `label`.
    Works for any set of trials (an Optuna sweep, or a grid's trials); lower x and higher y are better.
    """
    ok = _ok(df)
    ok = ok[np.isfinite(pd.to_numeric(ok[x], errors="coerce")) & np.isfinite(pd.to_numeric(ok[y], errors="coerce"))]
    if ok.empty:
        raise ValueError(f"no successful trial has finite {x!r} and {y!r}")
    xs, ys = ok[x].to_numpy(float), ok[y].to_numpy(float)
    front = pareto_mask(xs, ys)
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(xs[~front], ys[~front], s=22, color="tab:gray", alpha=0.6, label="dominated")
    order = np.argsort(xs[front])
    ax.plot(xs[front][order], ys[front][order], "o-", color="tab:red", label="Pareto front")
    if annotate:
        weights = varied_weights(ok)
        at: dict[tuple[float, float, bool], list[str]] = {}  # points at the same place share one annotation
        for (_, row), on_front in zip(ok.iterrows(), front):
            at.setdefault((float(row[x]), float(row[y]), bool(on_front)), []).append(_label(row, label, weights))
        for (px, py, on_front), names in at.items():
            ax.annotate(", ".join(names), (px, py), fontsize=6.5, xytext=(4, 3),
                        textcoords="offset points", color="tab:red" if on_front else "dimgray")
    ax.set_xlabel(x + _ARROW[higher_is_better(x)])
    ax.set_ylabel(y + _ARROW[higher_is_better(y)])
    ax.set_title(f"{len(ok)} trials (one point per seed), {int(front.sum())} on the front", fontsize=9)
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
    """One panel per key: the mean over the seeds of each group against step, shaded min..max.

    The groups share their colours across panels and one legend for the whole figure (right of
    the panels)."""
    keys = [k for k in keys if k in curves.columns]
    if not keys:
        raise ValueError(f"none of the requested keys in the curves; available: "
                         f"{sorted(c for c in curves.columns if c not in ('run_name', 'row', 'seed', 'step'))}")
    groups = _ordered(pd.unique(curves[by]), order)
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
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title=by,
               title_fontsize=7, frameon=False)
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


def _grid_captions(png: Path) -> list[str] | None:
    """The captions saved beside a sample PNG (`<run>.json`, {"captions": [...]}), None if absent."""
    path = png.with_suffix(".json")
    if not path.is_file():
        return None
    return [str(c) for c in json.loads(path.read_text()).get("captions", [])]


def plot_sample_grid(df: pd.DataFrame, by: str = "row", order: Sequence[str] | None = None, seed: int | None = None,
                     num: int | None = 8, roots: Iterable[str | Path] = (), wrap: int = 22) -> plt.Figure:
    """Real test images on top, then per configuration the fakes for the same captions and noise.

    One trial per group: the one with `seed` (default: each group's lowest seed). Each column is
    captioned above the real row with its text from `samples/<run>.json` (wrapped at `wrap`
    characters; text artists with gid "caption"); when no trial saved captions, the title says so.
    Raises ValueError when no trial has a sample file, or when the trials' data configs or saved
    captions differ (then the columns would not show the same captions).
    """
    import textwrap

    from matplotlib.transforms import blended_transform_factory

    ok = _ok(df)
    roots = list(roots)
    differ = _differing_data_fields(ok)
    if differ:
        raise ValueError(f"the trials use different data configs ({', '.join(differ)}), so their sample grids "
                         f"do not show the same captions; filter to one dataset/resolution first")
    strips, labels, real, captions, captions_from = [], [], None, None, None
    for g, row, path in _first_grid_per_group(ok, by, order, seed,
                                              lambda row: _locate(row, "samples_path", "samples", ".png", roots)):
        r, f = _load_grid(path, num)
        real = r if real is None else real
        strips.append(f)
        labels.append(f"{g} (s{row['seed']})")
        saved = _grid_captions(path)
        if saved is not None and captions is None:
            captions, captions_from = saved, path
        elif saved is not None and saved[: len(captions)] != captions[: len(saved)]:
            raise ValueError(f"the sample grids show different captions ({captions_from.name}: "
                             f"{captions[:1]}, {path.name}: {saved[:1]}); filter to trials of one data config")
    if not strips:
        raise ValueError("no sample image found for any trial; pass roots=[<output_dir>] if the results "
                         "folder was moved (samples live in <output_dir>/samples/<run_name>.png)")
    rows = [real, *strips]
    names = ["real", *labels]
    h, w = real.shape[:2]
    columns = w // h
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(1.0 * w / h, 16), 1.05 * len(rows) + 0.6), squeeze=False)
    for ax, strip, name in zip(axes[:, 0], rows, names):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    top = axes[0, 0]
    if captions:
        where = blended_transform_factory(top.transData, top.transAxes)
        for i, caption in enumerate(captions[:columns]):
            top.text((i + 0.5) * h - 0.5, 1.04, textwrap.fill(caption, wrap), transform=where, ha="center",
                     va="bottom", fontsize=5.5, gid="caption")
    else:
        top.set_title("captions not saved for these runs (no samples/<run>.json)", fontsize=7)
    fig.subplots_adjust(hspace=0.08)
    return fig


def sample_captions(df: pd.DataFrame, roots: Iterable[str | Path] = ()) -> list[str]:
    """The captions of the sample grid's columns (saved beside each sample PNG as JSON)."""
    for _, row in _ok(df).iterrows():
        path = _locate(row, "samples_path", "samples", ".png", list(roots))
        saved = _grid_captions(path) if path is not None else None
        if saved is not None:
            return saved
    return []


# ---- diffusion: guidance curves, image | layout | outpainting grids --------------------------------

def _guidance_axis(curve: pd.DataFrame, wanted: str | None, fallbacks: Sequence[str], what: str) -> str:
    have = set(curve["metric"])
    if wanted is not None and wanted != "auto":
        if wanted not in have:
            raise ValueError(f"{what}={wanted!r}: no trial has it at any guidance scale; available: {sorted(have)}")
        return wanted
    for m in fallbacks:
        if m in have:
            return m
    raise ValueError(f"{what}: none of {list(fallbacks)} in the results; available: {sorted(have)}")


def plot_guidance_curve(df: pd.DataFrame, x: str | None = "auto", y: str = "fid", by: str = "row",
                        order: Sequence[str] | None = None) -> plt.Figure:
    """`y` against `x` over classifier-free guidance scales, one line per group of `by` (e.g. joint /
    image-only / MM CelebA-HQ-25/50/100 rows), points in order of scale and labelled "w=<scale>"
    (text artists with gid "scale"); each point the mean over seeds, with std bars in both directions
    where a point has more than one seed (GCDP arXiv:2308.08157 Fig. 7: FID against CLIP score).

    x: a metric of `analysis.diffusion.guidance_curve`; "auto" (default) takes `clip_score` when the
    trials have it, else `r_precision` (on `shapes` there is no CLIP score: CLIP has not seen such
    images; semantic recall is scored at the main scale only), else `attr_pair_recall`; the axis
    label and title name what was drawn. Raises ValueError when the metric is absent.
    """
    from analysis.diffusion import guidance_curve

    curve = guidance_curve(df, by=by)
    if curve.empty:
        raise ValueError("no successful guided diffusion trial in the table (unconditional and GAN rows have no "
                         "guidance scale)")
    xm = _guidance_axis(curve, x, ("clip_score", "r_precision", "attr_pair_recall"), "x")
    ym = _guidance_axis(curve, y, (y,), "y")
    wide = curve[curve["metric"].isin([xm, ym])].pivot_table(index=[by, "scale"], columns="metric",
                                                             values=["mean", "std", "n"], aggfunc="first")
    groups = _ordered(pd.unique(curve[by]), order)
    fig, ax = plt.subplots(figsize=(5.8, 4.2))
    colors = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        if g not in wide.index.get_level_values(0):
            continue
        sub = wide.loc[g].dropna(subset=[("mean", xm), ("mean", ym)]).sort_index()
        if sub.empty:
            continue
        xs, ys = sub[("mean", xm)].to_numpy(float), sub[("mean", ym)].to_numpy(float)
        xe = sub[("std", xm)].to_numpy(float) if ("std", xm) in sub.columns else np.full(len(sub), np.nan)
        ye = sub[("std", ym)].to_numpy(float) if ("std", ym) in sub.columns else np.full(len(sub), np.nan)
        n = int(np.nanmin(sub[("n", ym)].to_numpy(float)))
        ax.errorbar(xs, ys, xerr=np.nan_to_num(xe), yerr=np.nan_to_num(ye), fmt="o-", color=colors(i % 10),
                    ms=4, lw=1.3, capsize=2, label=f"{g} (n={n})")
        for scale, px, py in zip(sub.index, xs, ys):
            ax.annotate(f"w={scale:g}", (px, py), xytext=(4, 3), textcoords="offset points", fontsize=6.5,
                        color=colors(i % 10), gid="scale")
    ax.set_xlabel(xm + _ARROW[higher_is_better(xm)])
    ax.set_ylabel(ym + _ARROW[higher_is_better(ym)])
    note = "" if xm == "clip_score" or x not in ("auto", None) else f" (no clip_score in these results: {xm})"
    ax.set_title(f"{ym} against {xm} over guidance scales w{note}\nmean over seeds, bars: std", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=by, title_fontsize=7)
    fig.tight_layout()
    return fig


# The rows of the diffusion grids (t2i_ray/eval/samples.py save_layout_samples), top to bottom.
LAYOUT_GRID_ROWS = ("real image", "real layout", "generated image", "generated layout")
OUTPAINT_GRID_ROWS = ("real layout", "image from real layout", "real image", "layout from real image")


def _cell_size(row: pd.Series, png_height: int, rows: int) -> tuple[int, int]:
    """(height, width) of one image in a grid PNG of `rows` rows: height from the PNG, width from
    the trial's `config.data.aspect` (width / height; 1 when not recorded)."""
    h = png_height // rows
    aspect = pd.to_numeric(pd.Series([row.get("config.data.aspect", 1.0)]), errors="coerce").iloc[0]
    return h, int(round(h * (aspect if np.isfinite(aspect) else 1.0)))


def load_layout_grid(path: str | Path, row: pd.Series, num: int | None = None,
                     names: Sequence[str] = LAYOUT_GRID_ROWS) -> dict[str, np.ndarray]:
    """A diffusion grid PNG -> {row name: strip (H, k*W, 3)}, its first `num` columns."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = _cell_size(row, img.shape[0], len(names))
    cols = img.shape[1] // w
    k = cols if num is None else min(num, cols)
    return {name: img[i * h:(i + 1) * h, : k * w] for i, name in enumerate(names)}


def plot_layout_samples(df: pd.DataFrame, by: str = "row", order: Sequence[str] | None = None,
                        seed: int | None = None, num: int | None = 8, outpaint: bool = True,
                        roots: Iterable[str | Path] = ()) -> plt.Figure:
    """Image | layout | outpainting grids of joint diffusion trials, from the files their rows name.

    Every joint diffusion trial saves `samples/<run>_layouts.png` (rows: real image, real layout,
    generated image, generated layout, for the first test captions under noise seed 1234) and
    `samples/<run>_outpaint.png` (real layout, the image generated from it, real image, the layout
    generated from it), recorded as `layout_samples_path` / `outpaint_samples_path`. Shown: the real
    image and layout rows once on top, then per group of `by` (one trial: `seed`, default the
    lowest) its generated image and layout, and with `outpaint` its layout -> image and image ->
    layout rows. Layout colours: class 0 black, the other classes evenly spaced hues (the same in
    every figure of a dataset). Raises ValueError when no trial has a layout grid (image-only rows
    have none), or the trials' data configs differ (the columns would show other test items).
    """
    ok = _ok(df)
    roots = list(roots)
    differ = _differing_data_fields(ok, ignore=("data.caption_subset",))
    if differ:
        raise ValueError(f"the trials use different data configs ({', '.join(differ)}), so their grids do not "
                         f"show the same test items; filter to one dataset/resolution first")
    strips: list[tuple[str, np.ndarray]] = []
    real: dict[str, np.ndarray] | None = None
    for g, row, path in _first_grid_per_group(
            ok, by, order, seed, lambda row: _locate(row, "layout_samples_path", "samples", "_layouts.png", roots)):
        grid = load_layout_grid(path, row, num)
        real = real or grid
        label = f"{g} (s{row['seed']})"
        strips += [(f"{label}\ngenerated image", grid["generated image"]),
                   (f"{label}\ngenerated layout", grid["generated layout"])]
        out_path = _locate(row, "outpaint_samples_path", "samples", "_outpaint.png", roots) if outpaint else None
        if out_path is not None:
            out = load_layout_grid(out_path, row, num, OUTPAINT_GRID_ROWS)
            strips += [(f"{label}\nlayout → image", out["image from real layout"]),
                       (f"{label}\nimage → layout", out["layout from real image"])]
    if real is None:
        raise ValueError("no layout grid found for any trial (joint diffusion trials write "
                         "<output_dir>/samples/<run_name>_layouts.png; image-only rows have none); pass "
                         "roots=[<output_dir>] if the results folder was moved")
    rows = [("real image", real["real image"]), ("real layout", real["real layout"]), *strips]
    h, w = rows[0][1].shape[:2]
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(1.0 * w / h, 16) + 1.2, 1.0 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (name, strip) in zip(axes[:, 0], rows):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    axes[0, 0].set_title("layouts: class 0 black, other classes evenly spaced hues; outpainting from the same "
                         "real test items", fontsize=7)
    fig.subplots_adjust(hspace=0.08)
    return fig
