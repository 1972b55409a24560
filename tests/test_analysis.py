"""analysis/: statistics on synthetic tables with known answers, provenance refusal, loader, renderers."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import (ablation_table, aggregate, bootstrap_pvalue, check_comparable, compare_to_baseline,
                      load_results, to_latex, to_markdown)

PROV = {"fid_backbone": "inception-v3", "fid_num_fake": 1024, "fid_num_real": 1024, "fid_real_set": "shapes/test",
        "r_precision_backbone": "damsm", "r_precision_num_images": 1024, "r_precision_candidates": 100,
        "attr_backbone": "attr-v1", "attr_num_images": 1024, "config.data.dataset": "shapes"}


def table(groups: dict[str, list[float]], metric: str = "fid", **extra) -> pd.DataFrame:
    """One row per (group, seed) with `metric` set to the given values and fixed provenance."""
    rows = []
    for g, vals in groups.items():
        for s, v in enumerate(vals):
            rows.append({"run_name": f"sw-{g}-s{s}", "sweep": "sw", "row": g, "seed": s, "status": "ok",
                         "error": "", metric: v, **PROV, **extra})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------- stats
def test_aggregate_three_seeds_by_hand():
    df = table({"baseline": [10.0, 12.0, 14.0], "x": [1.0, 2.0, 6.0]})
    agg = aggregate(df, metrics=["fid"]).set_index("row")
    assert list(agg.columns) == ["metric", "n", "mean", "std", "ci95"]
    b = agg.loc["baseline"]
    assert b["n"] == 3 and b["mean"] == pytest.approx(12.0) and b["std"] == pytest.approx(2.0)
    assert b["ci95"] == pytest.approx(4.302652729911275 * 2.0 / math.sqrt(3))  # t_{0.975,2}
    x = agg.loc["x"]
    assert x["mean"] == pytest.approx(3.0) and x["std"] == pytest.approx(math.sqrt(7.0))


def test_aggregate_n1_nan_and_failed_rows_ignored():
    df = table({"baseline": [10.0, 12.0], "one": [5.0]})
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "run_name": "bad", "row": "one", "status": "error", "fid": 99.0}
    df.loc[len(df)] = {**df.iloc[0].to_dict(), "run_name": "nan", "row": "one", "fid": float("nan")}
    one = aggregate(df, metrics=["fid"]).set_index("row").loc["one"]
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["std"]) and math.isnan(one["ci95"])


def test_aggregate_default_metrics_skip_absent_explicit_missing_raises():
    df = table({"baseline": [1.0, 2.0]})
    assert set(aggregate(df)["metric"]) == {"fid"}
    with pytest.raises(KeyError, match="kid"):
        aggregate(df, metrics=["kid"])


def test_welch_matches_scipy_and_separates():
    base, sep, same = [30.0, 31.0, 29.5], [40.0, 41.5, 39.0], [30.0, 31.0, 29.5]
    df = table({"baseline": base, "sep": sep, "same": same})
    res = compare_to_baseline(df, metric="fid").set_index("row")
    assert res.loc["sep", "p_value"] == pytest.approx(sps.ttest_ind(sep, base, equal_var=False).pvalue)
    assert res.loc["sep", "diff"] == pytest.approx(np.mean(sep) - np.mean(base))
    assert res.loc["sep", "significant"] and not res.loc["same", "significant"]
    assert res.loc["same", "p_value"] == pytest.approx(1.0)
    assert "baseline" not in res.index


def test_bootstrap_separated_identical_deterministic():
    df = table({"baseline": [30.0, 31.0, 29.5, 30.5, 30.2], "sep": [40.0, 41.5, 39.0, 40.2, 40.9],
                "same": [30.0, 31.0, 29.5, 30.5, 30.2]})
    r1 = compare_to_baseline(df, test="bootstrap", seed=3, n_boot=2000).set_index("row")
    r2 = compare_to_baseline(df, test="bootstrap", seed=3, n_boot=2000).set_index("row")
    assert r1.loc["sep", "p_value"] < 0.01 and r1.loc["sep", "significant"]
    assert r1.loc["same", "p_value"] > 0.5 and not r1.loc["same", "significant"]
    pd.testing.assert_frame_equal(r1, r2)
    assert bootstrap_pvalue(np.array([1.0, 2, 3]), np.array([1.5, 2.5, 3.5]), 500, 7) == \
        bootstrap_pvalue(np.array([1.0, 2, 3]), np.array([1.5, 2.5, 3.5]), 500, 7)


def test_paired_test_by_hand_matches_on_seed_and_names_the_unpaired():
    # seed effects shared by both rows: Welch cannot see a +1 shift under a spread of 10, pairing can
    base, shifted = [10.0, 20.0, 30.0, 40.0], [11.2, 20.9, 31.1, 40.8]
    df = table({"baseline": base, "x": shifted})
    welch = compare_to_baseline(df, metric="fid").set_index("row").loc["x"]
    paired = compare_to_baseline(df, metric="fid", test="paired").set_index("row").loc["x"]
    d = np.array(shifted) - np.array(base)  # 1.2, 0.9, 1.1, 0.8: t = mean / (sd / sqrt(n))
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    assert paired["p_value"] == pytest.approx(2 * sps.t.sf(t, 3)) and paired["p_value"] < 0.01
    assert welch["p_value"] > 0.8 and paired["significant"] and not welch["significant"]
    assert paired["diff"] == pytest.approx(1.0) and paired["n"] == 4 and paired["note"] == ""
    # matched by the seed column, not by order; a seed only one row has is left out and named
    shuffled = df.iloc[[7, 0, 5, 2, 4, 1, 6, 3]]  # the same trials in another order
    extra = {**df.iloc[0].to_dict(), "run_name": "sw-x-s9", "row": "x", "seed": 9, "fid": 99.0}
    more = pd.concat([shuffled, pd.DataFrame([extra])], ignore_index=True)
    r = compare_to_baseline(more, metric="fid", test="paired").set_index("row").loc["x"]
    assert r["p_value"] == pytest.approx(paired["p_value"]) and r["n"] == 4 and "[9]" in r["note"]
    one = table({"baseline": [1.0, 2.0], "x": [1.5]})
    r = compare_to_baseline(one, metric="fid", test="paired").set_index("row").loc["x"]
    assert math.isnan(r["p_value"]) and "1 shared seed" in r["note"]
    twice = pd.concat([df, df[df["row"] == "x"].assign(run_name="again")], ignore_index=True)
    with pytest.raises(ValueError, match="two trials with seed 0"):
        compare_to_baseline(twice, metric="fid", test="paired")


@pytest.mark.parametrize("test", ["welch", "bootstrap"])
def test_n1_not_significant_with_note(test):
    df = table({"baseline": [30.0, 31.0, 29.5], "one": [90.0]})
    r = compare_to_baseline(df, test=test, n_boot=200).set_index("row").loc["one"]
    assert math.isnan(r["p_value"]) and not r["significant"] and "n=1" in r["note"]


def test_missing_baseline_and_bad_test():
    df = table({"a": [1.0, 2.0], "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match="baseline"):
        compare_to_baseline(df)
    with pytest.raises(ValueError, match="welch"):
        compare_to_baseline(df, baseline="a", test="mann-whitney")


def test_provenance_refusal_names_metric_and_values():
    df = table({"baseline": [1.0, 2.0], "x": [3.0, 4.0]})
    df.loc[df["row"] == "x", "fid_backbone"] = "clip-vit"
    with pytest.raises(ValueError) as e:
        aggregate(df, metrics=["fid"])
    msg = str(e.value)
    assert "'fid'" in msg and "fid_backbone" in msg and "inception-v3" in msg and "clip-vit" in msg
    with pytest.raises(ValueError, match="fid_backbone"):
        compare_to_baseline(df)
    # other metrics' provenance is independent; a failed row (no metric value) is not counted
    assert check_comparable(table({"a": [0.1, 0.2]}, metric="r_precision"), "r_precision")["r_precision_candidates"] == 100
    df2 = table({"baseline": [1.0, 2.0]})
    df2.loc[len(df2)] = {**df2.iloc[0].to_dict(), "run_name": "f", "status": "error", "fid": np.nan,
                         "fid_num_fake": 7}
    assert check_comparable(df2, "fid")["fid_num_fake"] == 1024


def test_provenance_dataset_differs_for_attr():
    df = table({"baseline": [0.1, 0.2], "x": [0.3, 0.4]}, metric="attr_pair_recall")
    df.loc[0, "config.data.dataset"] = "cub"
    with pytest.raises(ValueError, match="config.data.dataset.*'cub'"):
        check_comparable(df, "attr_pair_recall")


# ---------------------------------------------------------------------------------------- loader
def write_trials(folder, df: pd.DataFrame) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(df)):
        r = df.iloc[[i]]
        r.to_parquet(folder / f"{r['run_name'].iloc[0]}.parquet", index=False)


def test_load_several_paths_dedup_and_filters(tmp_path):
    a = table({"baseline": [1.0, 2.0]}).assign(finished_at="2026-01-01T00:00:00+00:00")
    b = table({"x": [3.0]}).assign(sweep="other", finished_at="2026-01-01T00:00:00+00:00")
    write_trials(tmp_path / "outA" / "results", a)
    write_trials(tmp_path / "resB", b)
    newer = a.iloc[[0]].assign(fid=100.0, finished_at="2026-02-01T00:00:00+00:00")
    older = a.iloc[[1]].assign(fid=-5.0, finished_at="2025-12-01T00:00:00+00:00")
    failed = b.assign(run_name="sw-x-fail", status="oom", fid=np.nan)
    newer.to_parquet(tmp_path / "rerun.parquet", index=False)
    older.to_parquet(tmp_path / "old.parquet", index=False)
    write_trials(tmp_path / "resB", failed)
    (tmp_path / "outA" / "results" / ".tmp.parquet").write_bytes(b"partial")  # hidden temp file ignored

    df = load_results(tmp_path / "outA", tmp_path / "resB", tmp_path / "rerun.parquet", tmp_path / "old.parquet")
    assert sorted(df["run_name"]) == ["sw-baseline-s0", "sw-baseline-s1", "sw-x-s0"]
    fid = df.set_index("run_name")["fid"]
    assert fid["sw-baseline-s0"] == 100.0 and fid["sw-baseline-s1"] == 2.0  # newest finished_at wins
    assert len(load_results(tmp_path / "resB", include_failed=True)) == 2
    assert list(load_results(tmp_path / "outA", tmp_path / "resB", sweep="other")["run_name"]) == ["sw-x-s0"]


def test_load_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_results(tmp_path / "nope")
    assert "nope" in str(e.value) and "<output_dir>/results/*.parquet" in str(e.value)
    (tmp_path / "empty" / "results").mkdir(parents=True)
    assert load_results(tmp_path / "empty").empty and load_results(tmp_path / "empty" / "results").empty
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="results"):
        load_results(tmp_path / "other")


def test_load_unreadable_file_warns_and_skips(tmp_path):
    write_trials(tmp_path / "results", table({"baseline": [1.0, 2.0]}))
    (tmp_path / "results" / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.warns(RuntimeWarning, match="broken.parquet"):
        df = load_results(tmp_path)
    assert len(df) == 2


# ------------------------------------------------------------------------------------- rendering
def ablation_df() -> pd.DataFrame:
    fid = table({"baseline": [30.0, 31.0, 29.0], "+F2R": [20.0, 21.0, 19.5], "50%_a&b#": [30.5, 29.0, 31.0]})
    fid["r_precision"] = [0.10, 0.11, 0.12, 0.30, 0.31, 0.29, 0.10, 0.12, 0.11]
    return fid


def test_ablation_table_best_sig_order():
    t = ablation_table(ablation_df(), metrics=["fid", "r_precision"], order=["+F2R", "missing"])
    assert list(t["row"]) == ["+F2R", "baseline", "50%_a&b#"]
    r = t.set_index("row")
    assert r.loc["+F2R", "fid"] == "20.17 ± 0.76*"  # std of [20, 21, 19.5] = 0.7638
    assert r.loc["baseline", "fid"] == "30.00 ± 1.00"
    assert r.loc["+F2R", "fid_best"] and not r.loc["baseline", "fid_best"]  # lowest FID
    assert r.loc["+F2R", "r_precision_best"] and r["r_precision_best"].sum() == 1  # highest R-precision
    assert not r.loc["50%_a&b#", "fid_sig"] and r.loc["+F2R", "r_precision_sig"]
    assert r.loc["+F2R", "fid_mean"] == pytest.approx(60.5 / 3)


def test_markdown_and_latex_output():
    t = ablation_table(ablation_df(), metrics=["fid", "r_precision"])
    md = to_markdown(t)
    lines = md.splitlines()
    assert lines[0] == "| row | n | fid | r_precision |" and lines[1].startswith("|:---|")
    assert "| +F2R | 3 | **20.17 ± 0.76**\\* | **0.300 ± 0.010**\\* |" in md
    assert "| baseline | 3 | 30.00 ± 1.00 | 0.110 ± 0.010 |" in md
    tex = to_latex(t, caption="FID_50k & R-prec", label="tab:abl")
    assert r"\textbf{20.17 $\pm$ 0.76}$^{*}$" in tex
    assert r"50\%\_a\&b\#" in tex and "50%_a" not in tex
    assert r"r\_precision" in tex and r"\caption{FID\_50k \& R-prec}" in tex
    assert tex.count(r" \\") == 4 and r"\begin{tabular}{lrrr}" in tex


def test_single_seed_table_shows_mean_only():
    t = ablation_table(table({"baseline": [30.0], "x": [20.0]}), metrics=["fid"])
    r = t.set_index("row")
    assert r.loc["x", "fid"] == "20.00" and r.loc["x", "fid_best"] and not r.loc["x", "fid_sig"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "**20.00**" in to_markdown(t)


def test_configuration_labels_name_only_what_varies():
    from analysis import configuration_labels

    df = pd.DataFrame({"config.model.arch": ["dfgan", "ssagan", "dfgan"],
                       "config.model.text_embedding": ["pretrained"] * 3, "row": ["baseline", "baseline", "+F2R"]})
    assert configuration_labels(df).tolist() == ["dfgan baseline", "ssagan baseline", "dfgan +F2R"]
    same_arch = df.assign(**{"config.model.arch": "dfgan"})
    assert configuration_labels(same_arch).tolist() == ["baseline", "baseline", "+F2R"]
    by_arch = df.assign(row=df["config.model.arch"])  # compare_architectures names rows by architecture
    assert configuration_labels(by_arch).tolist() == ["dfgan", "ssagan", "dfgan"]
    with pytest.raises(KeyError, match="none of the label columns"):
        configuration_labels(df, columns=("nope",))


def test_locate_results_resolves_a_relative_path_from_the_repository_root(tmp_path, monkeypatch):
    from analysis import locate_results

    repo = tmp_path / "repo"
    write_trials(repo / "t2i_runs" / "results", table({"baseline": [1.0]}))
    (repo / "analysis").mkdir()
    monkeypatch.chdir(repo / "analysis")  # where a Jupyter kernel of analysis/ablation.ipynb runs
    assert locate_results("t2i_runs", base=repo) == (repo / "t2i_runs").resolve()
    assert locate_results(str(repo / "t2i_runs")) == (repo / "t2i_runs").resolve()
    with pytest.raises(FileNotFoundError, match=r"no results under .*missing.* or .*repo/missing.*T2I_RESULTS"):
        locate_results("missing", base=repo)
    assert sorted(p.name for p in (repo / "analysis").iterdir()) == []  # nothing created


def test_bootstrap_interval_percentiles_clipped_and_metric_ranges():
    from analysis.stats import bootstrap_interval, metric_range

    x = [0.985, 0.999, 1.0]
    lo, hi = bootstrap_interval(x, n_boot=4000, seed=1)
    assert min(x) <= lo < np.mean(x) < hi <= max(x)  # a resampled mean never leaves the data's range
    assert (lo, hi) == bootstrap_interval(x, n_boot=4000, seed=1)
    rng = np.random.default_rng(1)  # the same draws by hand
    means = np.asarray(x)[rng.integers(0, 3, size=(4000, 3))].mean(axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_interval(x, n_boot=4000, seed=1, bounds=(0.0, 0.995))[1] == 0.995  # clipped
    d_lo, d_hi = bootstrap_interval([3.0, 4.0, 5.0], [1.0, 1.0, 1.0], n_boot=2000)
    assert 2.0 <= d_lo < 3.0 < d_hi <= 4.0  # difference of means
    assert metric_range("fid") == (0.0, math.inf) and metric_range("kid")[0] == 0.0
    assert metric_range("r_precision") == metric_range("attr_pair_recall") == metric_range("semantic_precision") \
        == (0.0, 1.0)
    assert metric_range("is") == (1.0, math.inf) and metric_range("loss_g") == (-math.inf, math.inf)
