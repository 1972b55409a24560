"""Seed statistics for sweep results: per-group mean/std/CI, tests against a baseline, provenance checks.

Input everywhere is a results DataFrame as returned by `analysis.load.load_results`: one row per
trial, a group column such as `row` (ablation row label), a `seed` column and metric columns
(`fid`, `kid`, `r_precision`, `attr_pair_recall`, ...). Only rows with `status == "ok"` (when that
column exists) and a finite value of the metric enter the statistics.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

# The papers' column order: IS up, FID down, R-precision up (then KID and the oracle attribute recall).
DEFAULT_METRICS: tuple[str, ...] = ("is", "fid", "r_precision", "kid", "attr_pair_recall")

_FID_PROVENANCE = ("fid_backbone", "fid_num_fake", "fid_num_real", "fid_real_set", "fid_resize",
                   "config.data.dataset")
_RP_PROVENANCE = ("r_precision_backbone", "r_precision_num_images", "r_precision_candidates", "config.data.dataset")
_ATTR_PROVENANCE = ("attr_backbone", "attr_num_images", "config.data.dataset")
_IS_PROVENANCE = ("is_backbone", "is_num_images", "is_splits", "is_resize", "config.data.dataset")
_CLIP_PROVENANCE = ("clip_score_backbone", "clip_score_n", "clip_score_definition", "clip_score_prefix",
                    "config.data.dataset")
_LAYOUT_PROVENANCE = ("layout_backbone", "layout_num_images", "config.data.dataset")
_FSD_PROVENANCE = ("fsd_num_fake", "fsd_num_real", "config.data.dataset")


def provenance_columns(metric: str) -> tuple[str, ...]:
    """Columns that must hold one value for numbers of `metric` to be comparable (existing or not)."""
    metric = metric.split("@g")[0]  # a guidance variant shares its metric's evaluation
    if metric in ("fid", "kid") or metric.startswith(("fid_", "kid_")):
        return _FID_PROVENANCE
    if metric.startswith("r_precision"):
        return _RP_PROVENANCE
    if metric.startswith("attr_"):
        return _ATTR_PROVENANCE
    if metric == "is" or metric.startswith("is_"):
        return _IS_PROVENANCE
    if metric.startswith("clip_score"):
        return _CLIP_PROVENANCE
    if metric in ("layout_miou", "layout_pixel_accuracy"):
        return _LAYOUT_PROVENANCE
    if metric == "fsd":
        return _FSD_PROVENANCE
    return ("config.data.dataset",)


def higher_is_better(metric: str) -> bool | None:
    """True for is, r_precision, attr_*, clip_score and the diffusion's semantic recall/precision and
    mIoU columns; False for fid/kid/fsd; None when the direction is unknown. A guidance variant
    `<metric>@g<scale>` goes the way of its metric."""
    metric = metric.split("@g")[0]
    if metric in ("fid", "kid", "fsd"):
        return False
    if metric in ("is", "clip_score") or metric.startswith(("r_precision", "attr_", "semantic_")) \
            or metric.endswith("miou"):
        return True
    return None


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _values(df: pd.DataFrame, metric: str) -> pd.Series:
    """The finite values of `metric` (float) on successful rows, index kept."""
    if metric not in df.columns:
        raise KeyError(f"metric column {metric!r} not in the results table; available metric-like columns: "
                       f"{sorted(c for c in df.columns if not c.startswith(('config.', 'lib.')))}")
    v = pd.to_numeric(_ok(df)[metric], errors="coerce").astype(float)
    return v[np.isfinite(v)]


def check_comparable(df: pd.DataFrame, metric: str) -> dict[str, Any]:
    """Refuse to pool numbers of `metric` measured under different protocols.

    Looks at the rows that carry a finite value of `metric` and, for each of the metric's provenance
    columns present in `df` (see `provenance_columns`), requires a single value (a missing value
    counts as a value of its own). Returns {column: the common value}. Raises ValueError naming the
    metric, each differing column and its values.
    """
    rows = df.loc[_values(df, metric).index]
    found: dict[str, Any] = {}
    problems: list[str] = []
    for col in provenance_columns(metric):
        if col not in rows.columns or rows.empty:
            continue
        vals = rows[col].astype(object).where(rows[col].notna(), "<missing>")
        counts = vals.value_counts(sort=False)
        if len(counts) > 1:
            listed = ", ".join(f"{v!r} ({n} rows)" for v, n in counts.items())
            problems.append(f"{col}: {listed}")
        else:
            found[col] = counts.index[0]
    if problems:
        raise ValueError(f"{metric!r} values are not comparable, their provenance differs - "
                         + "; ".join(problems)
                         + f". Filter the table to one protocol (e.g. df[df[{problems[0].split(':')[0]!r}] == ...]) "
                         "or report the groups in separate tables.")
    return found


def check_one_configuration(df: pd.DataFrame, by: str | Sequence[str]) -> None:
    """Refuse to treat trials with different swept values as seeds of one configuration.

    A sweep's `--sweep` axes and Optuna draws are recorded per trial in the `swept` column (JSON of
    {config key: value}); the `row` label names them too, so grouping by `row` keeps them apart. A
    group (by any other column) that holds more than one `swept` value would average different
    configurations as if they were seeds: ValueError naming the group and the values. Tables
    without a `swept` column (results written before it existed) are not checked.
    """
    if "swept" not in df.columns:
        return
    keys = _by_list(by)
    ok = _ok(df)
    swept = ok["swept"].astype(object).where(ok["swept"].notna(), "{}")
    for key, values in swept.groupby([ok[k] for k in keys], sort=False, dropna=False):
        distinct = list(pd.unique(values))
        if len(distinct) > 1:
            group = key if isinstance(key, tuple) and len(keys) > 1 else (key[0] if isinstance(key, tuple) else key)
            raise ValueError(f"group {group!r} of {keys if len(keys) > 1 else keys[0]!r} holds trials with different "
                             f"swept values ({'; '.join(map(str, distinct[:4]))}): they are different "
                             f"configurations, not seeds of one. Group by 'row' (its label names the swept "
                             f"values) or filter the table to one value of each swept key")


def _by_list(by: str | Sequence[str]) -> list[str]:
    return [by] if isinstance(by, str) else list(by)


def aggregate(df: pd.DataFrame, by: str | Sequence[str] = ("row",),
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-group seed statistics of each metric, in long form.

    metrics: metric columns; None means DEFAULT_METRICS that exist in `df` (an explicitly named
        metric that is missing raises KeyError). `check_comparable` is called for every metric.
    Returns one row per (group, metric), groups in order of first appearance, columns
    [*by, "metric", "n", "mean", "std", "ci95"]: n = number of finite values (seeds), std with
    ddof=1, ci95 = half-width t_{0.975, n-1} * std / sqrt(n) of the 95% confidence interval of the
    mean; std and ci95 are NaN when n == 1. Groups without any value of a metric are left out.
    """
    keys = _by_list(by)
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(f"group column(s) {missing} not in the results table")
    metrics = [m for m in DEFAULT_METRICS if m in df.columns] if metrics is None else list(metrics)
    out: list[dict[str, Any]] = []
    for metric in metrics:
        check_comparable(df, metric)
        vals = _values(df, metric)
        sub = df.loc[vals.index, keys].assign(_v=vals)
        for key, g in sub.groupby(keys, sort=False, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            x = g["_v"].to_numpy(float)
            n = len(x)
            std = float(np.std(x, ddof=1)) if n > 1 else float("nan")
            ci = float(sps.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else float("nan")
            out.append({**dict(zip(keys, key)), "metric": metric, "n": n, "mean": float(np.mean(x)),
                        "std": std, "ci95": ci})
    cols = [*keys, "metric", "n", "mean", "std", "ci95"]
    return pd.DataFrame(out, columns=cols).astype({"n": int})


def bootstrap_pvalue(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value for H0: mean(a) == mean(b).

    Both samples are shifted to the pooled mean (so H0 holds), each is resampled with replacement
    `n_boot` times (numpy Generator seeded with `seed`), and p = (1 + #{|d*| >= |d_obs|}) / (n_boot + 1),
    where d = mean(a) - mean(b). Deterministic for a given seed. With very few values per sample
    (a handful of seeds) the resampling distribution is coarse and p is too small; prefer Welch there.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    d_obs = a.mean() - b.mean()
    pooled = np.concatenate([a, b]).mean()
    a0, b0 = a - a.mean() + pooled, b - b.mean() + pooled
    rng = np.random.default_rng(seed)
    da = a0[rng.integers(0, len(a0), size=(n_boot, len(a0)))].mean(axis=1)
    db = b0[rng.integers(0, len(b0), size=(n_boot, len(b0)))].mean(axis=1)
    d = da - db
    tol = 1e-12 * max(1.0, abs(d_obs), float(np.abs(np.concatenate([a, b])).max()))
    return float((1 + np.count_nonzero(np.abs(d) >= abs(d_obs) - tol)) / (n_boot + 1))


def compare_to_baseline(df: pd.DataFrame, baseline: str = "baseline", metric: str = "fid", by: str = "row",
                        test: str = "welch", alpha: float = 0.05, seed: int = 0,
                        n_boot: int = 10000) -> pd.DataFrame:
    """Test each group's mean of `metric` against the baseline group's.

    test: "welch" (scipy.stats.ttest_ind with equal_var=False), "paired" (scipy.stats.ttest_rel on
        the seeds both groups have, matched by the `seed` column: rows trained from the same seed
        start from the same initial weights, so their difference varies less than either; seeds
        only one group has are left out and named in `note`) or "bootstrap" (see bootstrap_pvalue,
        seeded with `seed` for every group, so results do not depend on group order). With
        "paired", n / mean are over the shared seeds.
    Returns one row per non-baseline group (order of first appearance) with columns
    [by, "n", "n_baseline", "mean", "mean_baseline", "diff" (= mean - mean_baseline), "p_value",
    "significant" (p_value < alpha), "test", "note"]. When either group has fewer than 2 values
    p_value is NaN, significant is False and `note` says why. Raises ValueError when the baseline
    group is absent or the metric's provenance differs (see check_comparable).
    """
    if test not in ("welch", "paired", "bootstrap"):
        raise ValueError(f"unknown test {test!r}; use 'welch', 'paired' or 'bootstrap'")
    if by not in df.columns:
        raise KeyError(f"group column {by!r} not in the results table")
    if test == "paired" and "seed" not in df.columns:
        raise KeyError("test='paired' matches trials by their 'seed' column, which the results table lacks")
    check_one_configuration(df, by)
    check_comparable(df, metric)
    vals = _values(df, metric)
    groups = df.loc[vals.index, by]
    if not (groups == baseline).any():
        raise ValueError(f"baseline group {baseline!r} has no {metric!r} values in column {by!r}; "
                         f"groups present: {list(pd.unique(groups))}. Pass baseline=<one of them>.")
    base = vals[groups == baseline].to_numpy(float)
    if test == "paired":
        seeds = df.loc[vals.index, "seed"]
        base_by_seed = _by_seed(vals[groups == baseline], seeds, baseline)
    out: list[dict[str, Any]] = []
    for name in pd.unique(groups):
        if name == baseline:
            continue
        x, b = vals[groups == name].to_numpy(float), base
        p, note = float("nan"), ""
        if test == "paired":  # both groups' values on their shared seeds, in seed order
            x_by_seed = _by_seed(vals[groups == name], seeds, name)
            shared = sorted(set(x_by_seed) & set(base_by_seed))
            alone = sorted(set(x_by_seed) ^ set(base_by_seed))
            x, b = (np.array([d[k] for k in shared], float) for d in (x_by_seed, base_by_seed))
            notes = [f"seeds {alone} are in one group only: left out"] if alone else []
            if len(shared) < 2:
                notes.append(f"{len(shared)} shared seed(s) - need at least 2 for a paired test")
            else:
                p = float(sps.ttest_rel(x, b).pvalue)
                if not np.isfinite(p):
                    notes.append("every seed differs by the same amount - test undefined")
            note = "; ".join(notes)
        elif len(x) < 2 or len(b) < 2:
            small = [f"{g!r} has n={k}" for g, k in ((name, len(x)), (baseline, len(b))) if k < 2]
            note = "; ".join(small) + " - need at least 2 seeds per group for a test"
        elif test == "welch":
            p = float(sps.ttest_ind(x, b, equal_var=False).pvalue)
            if not np.isfinite(p):
                note = "no variance in either group - test undefined"
        else:
            p = bootstrap_pvalue(x, b, n_boot=n_boot, seed=seed)
            if min(len(x), len(b)) < 5:
                note = "bootstrap with fewer than 5 seeds per group is anti-conservative; prefer welch"
        mean, mean_b = (float(v.mean()) if len(x) else float("nan") for v in (x, b))
        out.append({by: name, "n": len(x), "n_baseline": len(b), "mean": mean, "mean_baseline": mean_b,
                    "diff": mean - mean_b, "p_value": p, "significant": bool(np.isfinite(p) and p < alpha),
                    "test": test, "note": note})
    cols = [by, "n", "n_baseline", "mean", "mean_baseline", "diff", "p_value", "significant", "test", "note"]
    return pd.DataFrame(out, columns=cols)


def _by_seed(values: pd.Series, seeds: pd.Series, group: Any) -> dict[int, float]:
    """A group's values keyed by seed; two trials of one group with the same seed are an error (a
    paired test could not tell which to pair)."""
    keyed = seeds.loc[values.index]
    if keyed.duplicated().any():
        raise ValueError(f"group {group!r} has two trials with seed {int(keyed[keyed.duplicated()].iloc[0])}: "
                         f"a paired test needs one trial per seed")
    return {int(k): float(v) for k, v in zip(keyed, values)}


# ---- ranges, bootstrap intervals, matching baseline rows (used by analysis.plots) ---------------

MIN_SEEDS_FOR_INTERVAL = 3


def metric_range(metric: str) -> tuple[float, float]:
    """The values `metric` can take: FID/KID >= 0 (a distance and a squared MMD), IS >= 1 (the exp of
    a mean KL divergence), fractions (R-precision, recalls, precisions, attribute scores, mIoU) in
    [0, 1]; (-inf, inf) for a metric not known here."""
    if metric in ("fid", "kid"):
        return 0.0, float("inf")
    if metric == "is":
        return 1.0, float("inf")
    if metric == "clip_score":  # Hessel et al.'s CLIP-S = 2.5 * max(cos, 0)
        return 0.0, 2.5
    if metric.startswith(("r_precision", "attr_", "semantic_")) or metric.endswith(("recall", "precision", "miou")):
        return 0.0, 1.0
    return float("-inf"), float("inf")


def bootstrap_interval(a: Sequence[float], b: Sequence[float] | None = None, level: float = 0.95,
                       n_boot: int = 10000, seed: int = 0,
                       bounds: tuple[float, float] = (float("-inf"), float("inf"))) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a), or of mean(a) - mean(b) when `b` is given.

    Each sample is resampled with replacement `n_boot` times (numpy Generator seeded with `seed`;
    the two samples independently), and the (1-level)/2 and (1+level)/2 quantiles of the resampled
    statistic are returned, clipped to `bounds` (the statistic's valid range, see `metric_range`).
    A resampled mean never leaves [min(a), max(a)], so unlike a t-interval it cannot run below 0
    for FID; with a handful of seeds it is narrower than the truth (use it only from
    MIN_SEEDS_FOR_INTERVAL values on, as the plots do).
    """
    a = np.asarray(a, float)
    if len(a) < 1 or (b is not None and len(b) < 1):
        raise ValueError("bootstrap_interval needs at least one value per sample")
    rng = np.random.default_rng(seed)
    stat = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
    if b is not None:
        b = np.asarray(b, float)
        stat = stat - b[rng.integers(0, len(b), size=(n_boot, len(b)))].mean(axis=1)
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(np.clip(lo, *bounds)), float(np.clip(hi, *bounds))


def base_row(row: str, swept: Any = None) -> str:
    """The ablation row of a trial without its --sweep suffix: "baseline lr_g=1e-4" -> "baseline".

    `swept` is the trial's `swept` value (JSON text or dict of the swept keys): the label ends with
    one "key=value" token per swept key (t2i_ray/sweep/cli.py, expand_grid)."""
    keys = _swept_dict(swept)
    tokens = str(row).split(" ")
    return " ".join(tokens[: len(tokens) - len(keys)]) if keys and len(tokens) > len(keys) else str(row)


def _swept_dict(swept: Any) -> dict[str, Any]:
    if isinstance(swept, dict):
        return swept
    if isinstance(swept, str) and swept.strip():
        import json

        try:
            value = json.loads(swept)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    return {}


_IGNORED_CONFIG = ("config.seed", "config.name")  # differ per trial / per row label by construction


def matching_baselines(df: pd.DataFrame, baseline: str | Sequence[str] = "baseline", by: str = "row"
                       ) -> pd.DataFrame:
    """For every group of `by` that is not a baseline, the baseline group it is to be compared with.

    A baseline group is one whose trials' ablation row, without its --sweep suffix (`base_row`),
    is `baseline` (or one of the names in it: e.g. ("SSAGAN", "AttnGAN") for a paper table whose
    architectures each have their own baseline row, where the fewest-keys rule below pairs every
    row with its architecture's baseline). A group's matching baseline is the baseline group of the same `sweep`, with the
    same `swept` values (--sweep axes), whose recorded config (`config.*` columns, but for seed and
    name) differs from the group's in the fewest keys: in a one-factor-at-a-time grid exactly the
    keys of the row's own factor. Tables without config columns match on sweep and swept alone.
    Returns one row per non-baseline group (order of first appearance) with columns
    [by, "baseline", "differs_in" (list of config keys, "config." dropped), "note"]; "baseline"
    is None and "note" says why when there is no candidate or two candidates tie.
    """
    if by not in df.columns or "row" not in df.columns:
        raise KeyError(f"matching_baselines needs the columns {by!r} and 'row' in the results table")
    ok = _ok(df)
    swept = ok["swept"] if "swept" in ok.columns else pd.Series("{}", index=ok.index)
    bases = pd.Series([base_row(r, s) for r, s in zip(ok["row"], swept)], index=ok.index)
    canon = swept.map(lambda s: str(sorted(_swept_dict(s).items())))
    config_cols = [c for c in ok.columns if c.startswith("config.") and c not in _IGNORED_CONFIG]

    def describe(rows: pd.DataFrame) -> dict[str, Any]:
        out = {}
        for key in ("sweep",):
            out[key] = rows[key].iloc[0] if key in rows.columns else None
        out["swept"] = canon.loc[rows.index].iloc[0]
        cfg = {}
        for c in config_cols:  # keys that vary between the seeds of a group are not the group's setting
            vals = rows[c].astype(str).unique()
            if len(vals) == 1:
                cfg[c] = vals[0]
        out["config"] = cfg
        return out

    groups = list(pd.unique(ok[by]))
    info = {g: describe(ok[ok[by] == g]) for g in groups}
    names = {baseline} if isinstance(baseline, str) else set(baseline)
    is_base = {g: bool(bases[ok[by] == g].isin(names).all()) for g in groups}
    candidates = [g for g in groups if is_base[g]]
    out = []
    for g in groups:
        if is_base[g]:
            continue
        me = info[g]
        same = [b for b in candidates if info[b]["sweep"] == me["sweep"] and info[b]["swept"] == me["swept"]]
        match, differs, note = None, [], ""
        if not same:
            note = (f"no {baseline!r} row in sweep {me['sweep']!r} with the same swept values; "
                    f"baseline rows present: {candidates}")
        else:
            def diff(b):
                keys = set(me["config"]) | set(info[b]["config"])
                return sorted(k[len("config."):] for k in keys if me["config"].get(k) != info[b]["config"].get(k))

            diffs = {b: diff(b) for b in same}
            fewest = min(len(d) for d in diffs.values())
            best = [b for b in same if len(diffs[b]) == fewest]
            if len(best) > 1:
                note = f"{len(best)} baseline rows match equally well ({best}); filter the table to one of them"
            else:
                match, differs = best[0], diffs[best[0]]
        out.append({by: g, "baseline": match, "differs_in": differs, "note": note})
    return pd.DataFrame(out, columns=[by, "baseline", "differs_in", "note"])


def effects_vs_baseline(df: pd.DataFrame, metric: str, baseline: str | Sequence[str] = "baseline", by: str = "row",
                        n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Each group's mean of `metric` minus that of its matching baseline group (`matching_baselines`).

    Returns one row per non-baseline group with columns [by, "baseline", "differs_in", "n",
    "n_baseline", "diff", "lo", "hi", "note"]: lo..hi is the percentile bootstrap 95% interval of
    the difference (`bootstrap_interval`, clipped to the range a difference of the metric can take)
    when both groups have at least MIN_SEEDS_FOR_INTERVAL values, else NaN with the reason in "note".
    Groups without a matching baseline have NaN diff and the reason in "note". Never pools groups.
    """
    check_one_configuration(df, by)
    check_comparable(df, metric)
    vals = _values(df, metric)
    matches = matching_baselines(df.loc[vals.index], baseline=baseline, by=by)
    lo_m, hi_m = metric_range(metric)
    bounds = (lo_m - hi_m, hi_m - lo_m)
    groups = df.loc[vals.index, by]
    out = []
    for _, m in matches.iterrows():
        x = vals[groups == m[by]].to_numpy(float)
        rec = {by: m[by], "baseline": m["baseline"], "differs_in": m["differs_in"], "n": len(x), "n_baseline": 0,
               "diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "note": m["note"]}
        if m["baseline"] is not None:
            base = vals[groups == m["baseline"]].to_numpy(float)
            rec.update(n_baseline=len(base), diff=float(x.mean() - base.mean()))
            if min(len(x), len(base)) >= MIN_SEEDS_FOR_INTERVAL:
                rec["lo"], rec["hi"] = bootstrap_interval(x, base, n_boot=n_boot, seed=seed, bounds=bounds)
            else:
                rec["note"] = (f"n={len(x)} vs n={len(base)} seeds: no interval below "
                               f"{MIN_SEEDS_FOR_INTERVAL} seeds per row")
        out.append(rec)
    return pd.DataFrame(out, columns=[by, "baseline", "differs_in", "n", "n_baseline", "diff", "lo", "hi", "note"])
