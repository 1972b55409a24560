"""The diffusion paper's studies from the results table (GCDP, Park et al., ICCV 2023, arXiv:2308.08157).

- `guidance_curve`: every metric per row and classifier-free guidance scale, mean/std over seeds, in
  long form. A trial scores its `config.diffusion.guidance_scale` in the main columns (`fid`, ...)
  and every extra scale in `<metric>@g<scale>` columns from the same weights
  (`sweeps/ablate_diffusion.py --guidance 3 1 5`); `analysis.plots.plot_guidance_curve` draws it
  (GCDP Fig. 7: FID against CLIP score over guidance scales, MM CelebA-HQ-25/50/100).
- `PAPER_RESULTS` / `paper_reference_rows`: published numbers, each with its citation, in this
  repository's units; `compare_with_paper` puts our rows (mean ± std over seeds) beside them.

Like the rest of `analysis`, nothing here imports `t2i_ray`.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.stats import _ok, aggregate, check_comparable, check_one_configuration

# The metrics the evaluation repeats per extra guidance scale (t2i_ray/eval/evaluate.py VARIANT_METRICS).
GUIDANCE_METRICS: tuple[str, ...] = ("fid", "kid", "r_precision", "attr_pair_recall", "is", "clip_score")
_VARIANT = re.compile(r"^(?P<metric>.+)@g(?P<scale>[0-9.eE+-]+)$")
SCALE_COLUMN = "config.diffusion.guidance_scale"
UNCONDITIONAL_COLUMN = "config.diffusion.unconditional"


def guidance_columns(df: pd.DataFrame) -> dict[str, list[float]]:
    """{metric: the extra guidance scales it has a `<metric>@g<scale>` column for}, scales ascending."""
    out: dict[str, set[float]] = {}
    for col in df.columns:
        m = _VARIANT.match(str(col))
        if m:
            out.setdefault(m["metric"], set()).add(float(m["scale"]))
    return {k: sorted(v) for k, v in out.items()}


def _scale_text(scale: float) -> str:
    return f"{scale:g}"


def _guided_trials(df: pd.DataFrame) -> pd.DataFrame:
    """The successful diffusion trials that sample with guidance (unconditional rows have none)."""
    ok = _ok(df)
    if SCALE_COLUMN not in ok.columns:
        raise KeyError(f"no {SCALE_COLUMN!r} column: these are not diffusion results (sweeps/ablate_diffusion.py)")
    if "config.model.method" in ok.columns:
        ok = ok[ok["config.model.method"].astype(str) == "diffusion"]
    if UNCONDITIONAL_COLUMN in ok.columns:
        ok = ok[~ok[UNCONDITIONAL_COLUMN].fillna(False).astype(bool)]
    return ok


def guidance_curve(df: pd.DataFrame, metrics: Sequence[str] | None = None, by: str = "row") -> pd.DataFrame:
    """Seed statistics of each metric per group of `by` and guidance scale, in long form.

    Per trial, the main column `m` is its value at `config.diffusion.guidance_scale` and each
    `m@g<s>` column its value at scale s (the same weights, sampled again). Unconditional rows
    (`config.diffusion.unconditional`) and non-diffusion rows are left out: they have no guidance.
    metrics: default every one of GUIDANCE_METRICS that has a main column in `df`; a named metric
        without one raises KeyError.
    Returns columns [by, "scale", "metric", "n", "mean", "std", "ci95"] (as `analysis.stats.aggregate`:
    std with ddof=1, NaN at n=1), groups in order of first appearance, scales ascending. Raises
    ValueError, as `aggregate` does, when the metric's provenance differs between trials (checked on
    the main column: the extra scales share its evaluation) or a group holds different --sweep values.
    """
    ok = _guided_trials(df)
    metrics = [m for m in GUIDANCE_METRICS if m in df.columns] if metrics is None else list(metrics)
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise KeyError(f"metric column(s) {missing} not in the results table; guidance metrics present: "
                       f"{[m for m in GUIDANCE_METRICS if m in df.columns]}")
    if by not in ok.columns:
        raise KeyError(f"group column {by!r} not in the results table")
    check_one_configuration(ok, by)
    for m in metrics:
        check_comparable(ok, m)
    extra = guidance_columns(ok)
    records: list[dict[str, Any]] = []
    for _, trial in ok.iterrows():
        main = float(trial[SCALE_COLUMN])
        per_scale: dict[float, dict[str, Any]] = {}
        for m in metrics:
            for scale in [main] + extra.get(m, []):
                col = m if scale == main else f"{m}@g{_scale_text(scale)}"
                value = pd.to_numeric(pd.Series([trial.get(col)]), errors="coerce").iloc[0]
                if col in trial.index and np.isfinite(value):
                    per_scale.setdefault(scale, {})[m] = float(value)
        for scale, values in per_scale.items():
            records.append({by: trial[by], "scale": scale, "seed": trial.get("seed"), **values})
    cols = [by, "scale", "metric", "n", "mean", "std", "ci95"]
    if not records:
        return pd.DataFrame(columns=cols)
    long = pd.DataFrame(records)
    present = [m for m in metrics if m in long.columns]
    out = aggregate(long, by=(by, "scale"), metrics=present)
    order = {g: i for i, g in enumerate(pd.unique(ok[by]))}
    out = out.assign(_g=out[by].map(order)).sort_values(["_g", "scale", "metric"], kind="stable")
    return out.drop(columns="_g").reset_index(drop=True)[cols]


# ---- published numbers ---------------------------------------------------------------------------

# In this repository's units: FID as is, `layout_miou` a fraction (papers print %), `fsd` as printed.
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "gcdp_cityscapes_uncond": {
        "citation": "Park et al., Learning to Generate Semantic Layouts for Higher Text-Image Correspondence "
                    "in Text-to-Image Synthesis, ICCV 2023, arXiv:2308.08157, Table 1",
        "what": "unconditional image-layout generation on Cityscapes (FID of the images; mIoU of the "
                "generated layout vs HRNet-W48 on the generated image; FSD of the layouts)",
        "ours": "sweeps/ablate_diffusion.py --dataset cityscapes --rows unconditional",
        "metrics": ("fid", "layout_miou", "fsd"),
        "rows": [
            {"method": "GANformer + HRNet", "fid": 24.86, "layout_miou": float("nan"), "fsd": 481.5},
            {"method": "DatasetDDPM", "fid": 55.38, "layout_miou": 0.3388, "fsd": 90.31},
            {"method": "Semantic Palette", "fid": 52.13, "layout_miou": 0.5317, "fsd": 48.29},
            {"method": "GCDP", "fid": 20.36, "layout_miou": 0.6580, "fsd": 42.22},
        ],
    },
}


def paper_reference_rows(name: str) -> pd.DataFrame:
    """The published rows of `name` (a key of PAPER_RESULTS): columns method, the metrics, source.
    `attrs` holds the citation and what the numbers measure."""
    if name not in PAPER_RESULTS:
        raise KeyError(f"no published results named {name!r}; known: {sorted(PAPER_RESULTS)}")
    ref = PAPER_RESULTS[name]
    table = pd.DataFrame(ref["rows"], columns=["method", *ref["metrics"]]).assign(source="paper")
    table.attrs.update({k: ref[k] for k in ("citation", "what", "ours")})
    return table


def compare_with_paper(df: pd.DataFrame, name: str, rows: Sequence[str] | None = None, by: str = "row",
                       digits: int = 3) -> pd.DataFrame:
    """Our rows beside the published ones of `name` (PAPER_RESULTS), metric by metric.

    Our rows are the groups of `by` (all, or `rows`), each "mean ± std" over seeds with its n
    (`analysis.stats.aggregate`, provenance checked); the paper's rows follow with their numbers.
    A metric our rows do not have shows "–" (e.g. `layout_miou` on Cityscapes without a segmentation
    network). Returns columns [method, source, n, *metrics] (display text; `<metric>_mean` columns
    hold the numbers); `attrs` carries the citation.
    """
    ref = paper_reference_rows(name)
    metrics = list(PAPER_RESULTS[name]["metrics"])
    ok = _ok(df)
    if rows is not None:
        ok = ok[ok[by].isin(list(rows))]
    if ok.empty:
        raise ValueError(f"no successful trial{' in rows ' + str(list(rows)) if rows is not None else ''} to compare "
                         f"with {name!r} ({ref.attrs['ours']})")
    present = [m for m in metrics if m in ok.columns]
    agg = aggregate(ok, by=(by,), metrics=present) if present else pd.DataFrame(columns=[by, "metric"])
    out: list[dict[str, Any]] = []
    for group in pd.unique(ok[by]):
        rec: dict[str, Any] = {"method": str(group), "source": "ours", "n": int((ok[by] == group).sum())}
        for m in metrics:
            a = agg[(agg[by] == group) & (agg["metric"] == m)]
            mean = float(a["mean"].iloc[0]) if len(a) else float("nan")
            std = float(a["std"].iloc[0]) if len(a) else float("nan")
            rec[f"{m}_mean"] = mean
            rec[m] = "–" if not np.isfinite(mean) else (f"{mean:.{digits}f}"
                                                         + (f" ± {std:.{digits}f}" if np.isfinite(std) else ""))
        out.append(rec)
    for _, r in ref.iterrows():
        rec = {"method": r["method"], "source": "paper", "n": pd.NA}
        for m in metrics:
            v = float(r[m])
            rec[f"{m}_mean"] = v
            rec[m] = f"{v:.{digits}f}" if np.isfinite(v) else "–"
        out.append(rec)
    table = pd.DataFrame(out, columns=["method", "source", "n", *metrics, *[f"{m}_mean" for m in metrics]])
    table["n"] = table["n"].astype("Int64")  # seeds of our rows; <NA> for the paper's
    table.attrs.update(ref.attrs)
    return table


__all__ = ["GUIDANCE_METRICS", "guidance_columns", "guidance_curve", "PAPER_RESULTS", "paper_reference_rows",
           "compare_with_paper"]
