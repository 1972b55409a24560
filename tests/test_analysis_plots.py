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


def test_metric_vs_weight_plots_seed_means_and_t_intervals():
    df = _grid_rows()
    assert plots.varied_weights(df) == ["config.loss.f2r"]  # f2f is constant; the failed row is ignored
    fig = plots.plot_metric_vs_weights(df, "r_precision")
    ax = fig.axes[0]
    means_line = [line for line in ax.get_lines() if line.get_marker() == "o"][0]
    np.testing.assert_allclose(np.asarray(means_line.get_ydata(), float), [0.12, 0.25])
    # error bar half-width = t_{0.975,2} * std / sqrt(3) per weight value
    lower, upper = (np.asarray(line.get_ydata(), float) for line in ax.get_lines() if line.get_marker() == "_")
    ci = [4.302652729911275 * np.std(v, ddof=1) / np.sqrt(3) for v in ([0.10, 0.14, 0.12], [0.30, 0.20, 0.25])]
    np.testing.assert_allclose(lower, np.array([0.12, 0.25]) - ci, rtol=1e-9)
    np.testing.assert_allclose(upper, np.array([0.12, 0.25]) + ci, rtol=1e-9)
    with pytest.raises(ValueError, match="no loss weight varies"):
        plots.plot_metric_vs_weights(df[df["config.loss.f2r"] == 0.0], "r_precision")


def test_pareto_plot_joins_exactly_the_front():
    df = _grid_rows()
    df.loc[0, ["fid", "r_precision"]] = [5.0, 0.9]  # dominates every other trial
    fig = plots.plot_pareto(df)
    front = [line for line in fig.axes[0].get_lines() if line.get_label() == "Pareto front"][0]
    assert front.get_xdata().tolist() == [5.0] and front.get_ydata().tolist() == [0.9]


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
    mixed = df.assign(**{"config.data.resolution": [32, 32, 64]})
    with pytest.raises(ValueError, match="different data configs"):
        plots.plot_sample_grid(mixed, roots=[tmp_path])


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
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 5  # r_precision and fid vs weight, Pareto, training curves, samples
    figures = output_dir / "figures"
    for name in ("r_precision_vs_weights", "fid_vs_weights", "pareto_fid_r_precision", "training_curves", "samples"):
        assert (figures / f"{name}.png").stat().st_size > 1000, name
    table = (figures / "ablation_table.md").read_text()
    assert "| baseline |" in table and "| +recap |" in table and "fid" in table
    assert "\\begin{tabular}" in (figures / "ablation_table.tex").read_text()
