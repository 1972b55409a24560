"""Ablation tables: one row per group (e.g. ablation row), "mean ± std" per metric, best and significance marked.

`ablation_table` returns a plain DataFrame; `to_markdown` / `to_latex` render it as text with a
small built-in formatter (no tabulate/jinja2 needed).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.stats import DEFAULT_METRICS, aggregate, check_one_configuration, compare_to_baseline, higher_is_better

PM = " ± "
DEFAULT_DIGITS: dict[str, int] = {"fid": 2, "kid": 3, "is": 2}


def _digits(metric: str, digits: int | Mapping[str, int] | None) -> int:
    if isinstance(digits, int):
        return digits
    if digits and metric in digits:
        return int(digits[metric])
    return DEFAULT_DIGITS.get(metric, 3)


def ablation_table(df: pd.DataFrame, baseline: str = "baseline", order: Sequence[str] | None = None,
                   metrics: Sequence[str] | None = None, by: str = "row", alpha: float = 0.05,
                   digits: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """The ablation table of a results DataFrame (one row per group of `by`).

    order: group labels in the order wanted; groups not listed follow in order of first appearance,
        listed labels that are absent (a partial sweep) are skipped. Default: baseline first.
    metrics: as in `analysis.stats.aggregate` (None: DEFAULT_METRICS present in df).
    digits: decimals, one int for all or per metric (default 2 for fid/is, 3 otherwise).

    Returns a DataFrame with columns [by, "n", *metrics, and per metric m: m_mean, m_std, m_ci95,
    m_n, m_p, m_best, m_sig]. Column m holds the display text "mean ± std" (just "mean" when n == 1,
    "–" when no value) with a trailing "*" when Welch's test against the baseline gives p < alpha;
    m_best is True for the best group(s) at display precision (lowest fid/kid, highest is,
    r_precision, attr_*; no best for metrics of unknown direction). "n" = successful trials per group.
    `table.attrs` holds by/metrics/baseline/alpha for the renderers.
    """
    metrics = [m for m in DEFAULT_METRICS if m in df.columns] if metrics is None else list(metrics)
    check_one_configuration(df, by)  # trials of a group are seeds of one configuration, never other swept values
    agg = aggregate(df, by=(by,), metrics=metrics)
    ok = df[df["status"] == "ok"] if "status" in df.columns else df
    groups = list(pd.unique(ok[by]))
    first = list(order) if order is not None else ([baseline] if baseline in groups else [])
    groups = [g for g in first if g in groups] + [g for g in groups if g not in first]
    table = pd.DataFrame({by: groups, "n": [int((ok[by] == g).sum()) for g in groups]})

    for m in metrics:
        a = agg[agg["metric"] == m].set_index(by).reindex(groups)
        nd = _digits(m, digits)
        table[f"{m}_mean"] = a["mean"].to_numpy(float)
        table[f"{m}_std"] = a["std"].to_numpy(float)
        table[f"{m}_ci95"] = a["ci95"].to_numpy(float)
        table[f"{m}_n"] = a["n"].fillna(0).astype(int).to_numpy()
        p = pd.Series(np.nan, index=groups)
        has_base = baseline in set(a.dropna(subset=["mean"]).index)
        if has_base:
            cmp = compare_to_baseline(df, baseline=baseline, metric=m, by=by, test="welch", alpha=alpha)
            p.update(cmp.set_index(by)["p_value"])
        table[f"{m}_p"] = p.to_numpy(float)
        table[f"{m}_sig"] = (table[f"{m}_p"] < alpha).to_numpy()
        rounded = table[f"{m}_mean"].round(nd)
        direction = higher_is_better(m)
        if direction is None or rounded.isna().all():
            table[f"{m}_best"] = False
        else:
            target = rounded.max() if direction else rounded.min()
            table[f"{m}_best"] = (rounded == target).to_numpy()
        texts = []
        for mean, std, sig in zip(table[f"{m}_mean"], table[f"{m}_std"], table[f"{m}_sig"]):
            if not np.isfinite(mean):
                texts.append("–")
                continue
            t = f"{mean:.{nd}f}" + (f"{PM}{std:.{nd}f}" if np.isfinite(std) else "")
            texts.append(t + ("*" if sig else ""))
        table[m] = texts
    table = table[[by, "n", *metrics] + [c for c in table.columns if c not in (by, "n", *metrics)]]
    table.attrs.update({"by": by, "metrics": list(metrics), "baseline": baseline, "alpha": alpha})
    return table


LABEL_COLUMNS: tuple[str, ...] = ("config.model.arch", "config.model.text_embedding", "row")


def configuration_labels(df: pd.DataFrame, columns: Sequence[str] = LABEL_COLUMNS) -> pd.Series:
    """One label per trial naming its configuration, e.g. "ssagan +F2R" when architectures differ.

    Joins, with spaces, the values of those `columns` that exist and vary across `df`; the last
    column (the ablation row by default) is always included. Use it as the group column of
    `ablation_table` for a table whose rows are architecture + loss combination.
    """
    present = [c for c in columns if c in df.columns]
    if not present:
        raise KeyError(f"none of the label columns {list(columns)} is in the results table")
    used = [c for c in present[:-1] if df[c].nunique(dropna=False) > 1] + [present[-1]]

    def join(values) -> str:  # a row named after the architecture (compare_architectures) says it once
        return " ".join(dict.fromkeys(str(v) for v in values))

    return df[used].apply(join, axis=1).rename("configuration")


def _layout(table: pd.DataFrame) -> tuple[str, list[str]]:
    """(group column, metric columns) of an ablation table."""
    by = table.attrs.get("by", table.columns[0])
    metrics = table.attrs.get("metrics") or [c for c in table.columns if f"{c}_mean" in table.columns]
    return by, list(metrics)


def _cells(table: pd.DataFrame, bold, star: str, esc) -> tuple[list[str], list[list[str]]]:
    """Header and body cells, escaped, best bold, significance star rendered by `star`."""
    by, metrics = _layout(table)
    header = [esc(str(by)), "n"] + [esc(m) for m in metrics]
    body = []
    for _, r in table.iterrows():
        row = [esc(str(r[by])), str(int(r["n"]))]
        for m in metrics:
            text = str(r[m])
            sig = bool(r.get(f"{m}_sig", False)) and text.endswith("*")
            core = esc(text[:-1] if sig else text)
            if bool(r.get(f"{m}_best", False)):
                core = bold(core)
            row.append(core + (star if sig else ""))
        body.append(row)
    return header, body


def _legend(table: pd.DataFrame) -> str:
    alpha = table.attrs.get("alpha", 0.05)
    base = table.attrs.get("baseline", "baseline")
    return f"mean ± std over seeds; best in bold; * p < {alpha:g} vs {base} (Welch t-test)."


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def to_markdown(table: pd.DataFrame, legend: bool = True) -> str:
    """GitHub-flavoured Markdown of an `ablation_table`: best cells as **x**, significance as \\*."""
    header, body = _cells(table, bold=lambda s: f"**{s}**", star="\\*", esc=_md_escape)
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    if legend:
        lines += ["", _md_escape(_legend(table))]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(s: str) -> str:
    """Escape LaTeX special characters (\\ & % $ # _ { } ~ ^ < >); '±' becomes $\\pm$, '–' becomes --."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)
    return out.replace("±", r"$\pm$").replace("–", "--")


def to_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None,
             booktabs: bool = True) -> str:
    """A LaTeX `table` (tabular, booktabs rules unless booktabs=False) of an `ablation_table`.

    Best cells are \\textbf{x}, significance is $^{*}$; caption (escaped) defaults to the legend.
    """
    header, body = _cells(table, bold=lambda s: f"\\textbf{{{s}}}", star="$^{*}$", esc=latex_escape)
    top, mid, bot = (r"\toprule", r"\midrule", r"\bottomrule") if booktabs else (r"\hline",) * 3
    lines = [r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", top,
             " & ".join(header) + r" \\", mid]
    lines += [" & ".join(row) + r" \\" for row in body]
    lines += [bot, r"\end{tabular}", r"\caption{" + latex_escape(caption or _legend(table)) + "}"]
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
