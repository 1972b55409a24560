"""analysis.plots on synthetic results with known answers, and the notebook on a real tiny sweep."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import plots

REPO = Path(__file__).resolve().parents[1]


def test_pareto_mask_known_front():
    fid = np.array([10.0, 20.0, 15.0, 30.0, 10.0, 25.0])
    rp = np.array([0.10, 0.50, 0.30, 0.40, 0.05, 0.50])
    # (10, .10) beats (10, .05); (20, .50) beats (25, .50) and (30, .40); (15, .30) is on the front.
    assert plots.pareto_mask(fid, rp).tolist() == [True, True, True, False, False, False]
    # maximising both: only the largest x with the largest y survives
    assert plots.pareto_mask(fid, rp, minimize_x=False).tolist() == [False, False, False, True, False, True]


def _grid_rows() -> pd.DataFrame:
    rows = []
    for f2r, values in ((0.0, [0.10, 0.14, 0.12]), (0.2, [0.30, 0.20, 0.25])):
        for seed, v in enumerate(values):
            rows.append({"run_name": f"r{f2r}-{seed}", "row": f"f2r={f2r}", "seed": seed, "status": "ok",
                         "config.loss.f2r": f2r, "config.loss.f2f": 0.0, "r_precision": v,
                         "fid": 30 - 10 * v})
    rows.append({"run_name": "failed", "row": "f2r=0.2", "seed": 9, "status": "error", "config.loss.f2r": 0.2,
                 "config.loss.f2f": 0.0, "r_precision": 99.0, "fid": 0.0})
    return pd.DataFrame(rows)


def _intervals(ax):
    return [c for c in ax.collections if c.get_gid() == "interval"]


def test_metric_by_row_every_seed_and_a_clipped_bootstrap_interval_only_from_3_seeds():
    from analysis.stats import bootstrap_interval

    rows = [{"run_name": f"b{s}", "row": "baseline", "seed": s, "status": "ok", "attr_pair_recall": v}
            for s, v in enumerate([0.985, 0.999, 1.0])]
    rows += [{"run_name": f"f{s}", "row": "+F2R", "seed": s, "status": "ok", "attr_pair_recall": v}
             for s, v in enumerate([0.97, 0.995])]
    df = pd.DataFrame(rows)
    ax = plots.plot_metric_by_row(df, "attr_pair_recall", order=["baseline", "+F2R"]).axes[0]
    seeds = [c for c in ax.collections if c.get_gid() != "interval"]
    assert [len(c.get_offsets()) for c in seeds] == [3, 2]  # one dot per seed
    np.testing.assert_allclose(sorted(np.asarray(seeds[0].get_offsets())[:, 1]), [0.985, 0.999, 1.0])
    (interval,) = _intervals(ax)  # only the 3-seed row has one
    ((x0, lo), (x1, hi)), = interval.get_segments()
    assert x0 == x1 == 0 and 0.0 <= lo <= np.mean([0.985, 0.999, 1.0]) <= hi <= 1.0
    assert (lo, hi) == pytest.approx(bootstrap_interval([0.985, 0.999, 1.0], bounds=(0.0, 1.0)))
    assert "no interval for 1 of 2 rows: n=2" in ax.get_title()

    # two seeds far apart: a t-interval would reach FID -48; no interval at all, and the title says why
    fid = pd.DataFrame({"run_name": ["a", "b"], "row": "baseline", "seed": [0, 1], "status": "ok",
                        "fid": [5.0, 60.0]})
    ax = plots.plot_metric_by_row(fid, "fid").axes[0]
    assert not _intervals(ax) and "no interval for any row: n=2" in ax.get_title()
    assert min(ax.get_ylim()) > -10


def _swept_table() -> pd.DataFrame:
    """Two --sweep values of lr_g, rows baseline and +F2R at each, 3 seeds, plus another sweep's baseline."""
    rows = []
    for lr, shift in ((1e-4, 0.0), (2e-4, 10.0)):
        for row, f2r, fids in (("baseline", 0.0, [30.0, 31.0, 32.0]), ("+F2R", 0.2, [20.0, 22.0, 21.0])):
            for s, v in enumerate(fids):
                rows.append({"run_name": f"{row}-{lr}-{s}", "sweep": "sw", "row": f"{row} lr_g={lr:g}", "seed": s,
                             "status": "ok", "swept": json.dumps({"optim.lr_g": lr}), "config.loss.f2r": f2r,
                             "config.optim.lr_g": lr, "config.seed": s, "config.name": f"{row} lr_g={lr:g}",
                             "fid": v + shift})
    rows += [{"run_name": f"other-{s}", "sweep": "other", "row": "baseline", "seed": s, "status": "ok",
              "swept": "{}", "config.loss.f2r": 0.0, "config.optim.lr_g": 1e-4, "config.seed": s,
              "config.name": "baseline", "fid": 100.0} for s in range(3)]
    return pd.DataFrame(rows)


def test_effects_are_against_the_matching_baseline_row_only():
    from analysis.stats import matching_baselines

    df = _swept_table()
    match = matching_baselines(df).set_index("row")
    assert match.loc["+F2R lr_g=0.0001", "baseline"] == "baseline lr_g=0.0001"
    assert match.loc["+F2R lr_g=0.0002", "baseline"] == "baseline lr_g=0.0002"
    assert match.loc["+F2R lr_g=0.0002", "differs_in"] == ["loss.f2r"]
    ax = plots.plot_effects(df, "fid").axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["+F2R lr_g=0.0001 − baseline lr_g=0.0001", "+F2R lr_g=0.0002 − baseline lr_g=0.0002"]
    means = [line for line in ax.get_lines() if line.get_gid() == "mean"]
    assert [line.get_ydata()[0] for line in means] == pytest.approx([-10.0, -10.0])  # not pooled with "other"
    seeds = [c for c in ax.collections if c.get_gid() != "interval"]
    np.testing.assert_allclose(sorted(np.asarray(seeds[0].get_offsets())[:, 1]), [-11.0, -10.0, -9.0])
    intervals = _intervals(ax)
    assert len(intervals) == 2 and all(s[0][1] <= -10.0 <= s[1][1] for c in intervals for s in c.get_segments())
    assert ax.get_ylabel().startswith("Δ fid") and ax.get_ylabel().endswith("\nvs matching baseline")

    # with 2 seeds: the differences, no interval, and the title says so; no baseline at all: an error
    two = df[df["seed"] < 2]
    ax = plots.plot_effects(two, "fid").axes[0]
    assert not _intervals(ax) and "no interval for any row: n=2" in ax.get_title()
    with pytest.raises(ValueError, match="no row has a matching 'baseline' row"):
        plots.plot_effects(df[~df["row"].str.startswith("baseline")], "fid")


def test_architectures_match_their_own_baseline():
    from analysis.stats import matching_baselines

    rows = [{"run_name": f"{arch}{row}{s}", "sweep": "sw", "row": row, "seed": s, "status": "ok", "swept": "{}",
             "configuration": f"{arch} {row}", "config.model.arch": arch, "config.loss.f2r": f2r, "fid": 1.0}
            for arch in ("dfgan", "ssagan") for row, f2r in (("baseline", 0.0), ("+F2R", 0.2)) for s in range(2)]
    match = matching_baselines(pd.DataFrame(rows), by="configuration").set_index("configuration")
    assert match["baseline"].to_dict() == {"dfgan +F2R": "dfgan baseline", "ssagan +F2R": "ssagan baseline"}


def test_paper_table_rows_match_their_architectures_baseline():
    from analysis.stats import matching_baselines

    table = [("AttnGAN", "attngan", 5.0, 0.0), ("AttnGAN + CL", "attngan", 5.0, 0.2),
             ("SSAGAN", "ssagan", 0.05, 0.0), ("SSAGAN + CL (R2F)", "ssagan", 0.05, 0.2)]
    rows = [{"run_name": f"{row}{s}", "sweep": "sw", "row": row, "seed": s, "status": "ok", "swept": "{}",
             "config.model.arch": arch, "config.loss.damsm": l1, "config.loss.f2r": f2r, "fid": 1.0}
            for row, arch, l1, f2r in table for s in range(2)]
    match = matching_baselines(pd.DataFrame(rows), baseline=("SSAGAN", "AttnGAN")).set_index("row")
    assert match["baseline"].to_dict() == {"AttnGAN + CL": "AttnGAN", "SSAGAN + CL (R2F)": "SSAGAN"}
    assert match.loc["AttnGAN + CL", "differs_in"] == ["loss.f2r"]


def test_metric_vs_weights_pools_nothing():
    df = _grid_rows()
    assert plots.varied_weights(df) == ["config.loss.f2r"]  # f2f is constant; the failed row is ignored
    ax = plots.plot_metric_vs_weights(df, "r_precision").axes[0]
    assert len(ax.get_lines()) == 0 and [len(c.get_offsets()) for c in ax.collections] == [6]
    assert "one dot per trial, nothing pooled" in ax.figure.get_suptitle()
    with pytest.raises(ValueError, match="no loss weight varies"):
        plots.plot_metric_vs_weights(df[df["config.loss.f2r"] == 0.0], "r_precision")


def test_pareto_plot_joins_exactly_the_front():
    df = _grid_rows()
    df.loc[0, ["fid", "r_precision"]] = [5.0, 0.9]  # dominates every other trial
    fig = plots.plot_pareto(df)
    front = [line for line in fig.axes[0].get_lines() if line.get_label() == "Pareto front"][0]
    assert front.get_xdata().tolist() == [5.0] and front.get_ydata().tolist() == [0.9]
    texts = fig.axes[0].texts  # every trial labelled, on the front or not
    assert sorted(t.get_text() for t in texts) == sorted(f"{r} s{s}" for r, s in zip(df["row"][:6], df["seed"][:6]))
    assert sorted(t.xy for t in texts) == sorted(zip(df["fid"][:6], df["r_precision"][:6]))


def test_curves_keep_the_last_line_per_step_and_average_over_seeds(tmp_path):
    (tmp_path / "curves").mkdir()
    for seed, offset in ((0, 0.0), (1, 2.0)):
        lines = [{"step": 1, "loss_d": 9.0}, {"step": 2, "loss_d": 9.0},  # crashed after step 2
                 {"step": 2, "loss_d": 1.0 + offset}, {"step": 3, "loss_d": 0.5 + offset}]  # resumed from 1
        (tmp_path / "curves" / f"run{seed}.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    df = pd.DataFrame({"run_name": ["run0", "run1", "gone"], "row": ["a", "a", "a"], "seed": [0, 1, 2],
                       "status": "ok", "curves_path": ["/nowhere/run0.jsonl", "", ""]})
    with pytest.warns(RuntimeWarning, match="no curve file for 1 trial"):
        curves = plots.load_curves(df, roots=[tmp_path])
    assert curves[curves.run_name == "run0"]["loss_d"].tolist() == [9.0, 1.0, 0.5]
    fig = plots.plot_training_curves(curves, keys=["loss_d", "not_there"])
    (mean_line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(mean_line.get_ydata(), [9.0, 2.0, 1.5])
    two = pd.concat([curves, curves.assign(row="b", loss_g=1.0)]).assign(loss_g=lambda c: c["loss_d"])
    fig = plots.plot_training_curves(two, keys=["loss_d", "loss_g"])
    assert len(fig.axes) == 2 and all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
    with pytest.raises(ValueError, match="available: \\['loss_d'\\]"):
        plots.plot_training_curves(curves, keys=["loss_g"])


def test_sample_grid_stacks_real_once_then_each_configs_fakes(tmp_path):
    (tmp_path / "samples").mkdir()
    h, n = 4, 3
    for i, run in enumerate(("base-s0", "base-s1", "f2r-s0")):
        img = np.zeros((2 * h, n * h, 3), np.uint8)
        img[:h] = 7  # real strip, the same in every run
        img[h:] = 10 * (i + 1)  # fake strip, distinct per run
        Image.fromarray(img).save(tmp_path / "samples" / f"{run}.png")
    (tmp_path / "samples" / "base-s0.json").write_text(json.dumps({"captions": ["a", "b", "c"]}))
    df = pd.DataFrame({"run_name": ["base-s1", "base-s0", "f2r-s0"], "row": ["base", "base", "f2r"],
                       "seed": [1, 0, 0], "status": "ok", "config.data.resolution": 32})
    fig = plots.plot_sample_grid(df, num=2, roots=[tmp_path])
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert [a.shape for a in shown] == [(h, 2 * h, 3)] * 3
    assert [int(a[0, 0, 0]) for a in shown] == [7, 10, 30]  # real, base's lowest seed, f2r
    assert [ax.get_ylabel() for ax in fig.axes] == ["real", "base (s0)", "f2r (s0)"]
    assert plots.sample_captions(df, roots=[tmp_path]) == ["a", "b", "c"]
    captions = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "caption"]
    assert captions == ["a", "b"]  # num=2 columns, each under its caption
    positions = [t.get_position()[0] for t in fig.axes[0].texts]
    assert positions == pytest.approx([0.5 * h - 0.5, 1.5 * h - 0.5])  # column centres in pixels
    (tmp_path / "samples" / "f2r-s0.json").write_text(json.dumps({"captions": ["x", "b", "c"]}))
    with pytest.raises(ValueError, match="different captions"):
        plots.plot_sample_grid(df, roots=[tmp_path])
    for f in (tmp_path / "samples").glob("*.json"):
        f.unlink()
    fig = plots.plot_sample_grid(df, roots=[tmp_path])
    assert not fig.axes[0].texts and "captions not saved" in fig.axes[0].get_title()
    mixed = df.assign(**{"config.data.resolution": [32, 32, 64]})
    with pytest.raises(ValueError, match=r"different data configs \(data.resolution\)"):
        plots.plot_sample_grid(mixed, roots=[tmp_path])
    # a field that older trials did not record yet is no difference
    plots.plot_sample_grid(df.assign(**{"config.data.aspect": [None, None, 1.0]}), roots=[tmp_path])


def test_notebook_runs_top_to_bottom_on_a_real_sweep(tiny_grid_sweep, tmp_path):
    """analysis/ablation.ipynb on the results of a real (tiny) grid sweep: tables and figures appear."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    spec, rows = tiny_grid_sweep
    output_dir = Path(spec.base.output_dir)
    nb = nbformat.read(REPO / "analysis" / "ablation.ipynb", as_version=4)
    env = {"T2I_RESULTS": str(output_dir), "T2I_SWEEP": spec.name}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "analysis")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    comparisons = [o.data["text/plain"] for o in outputs if o.output_type == "execute_result"
                   and "p_value" in o.data.get("text/plain", "")]
    assert comparisons and "welch" in comparisons[0] and "paired" in comparisons[0]  # both tests per metric
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 7  # r_precision and fid per row and against the baseline, Pareto, curves, samples
    figures = output_dir / "figures"
    for name in ("r_precision_by_row", "fid_by_row", "r_precision_vs_baseline", "fid_vs_baseline",
                 "pareto_fid_r_precision", "training_curves", "samples"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    table = (figures / "ablation_table.md").read_text()
    assert "| baseline |" in table and "| +recap |" in table and "fid" in table
    assert "\\begin{tabular}" in (figures / "ablation_table.tex").read_text()
