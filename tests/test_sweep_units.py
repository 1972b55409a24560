"""Sweep pieces that need no Ray cluster: resource fitting, ablation rows, the results store."""
import math
import os

import pytest

from t2i_ray.config import ConfigError, build_config
from t2i_ray.eval.features import evaluator_cache_path
from t2i_ray.sweep import store
from t2i_ray.sweep.run import DRIVER_CPUS, fit_resources, format_table, prepare_assets, summarize
from t2i_ray.train.captioner import captioner_dir, captioner_is_cached
from t2i_ray.train.damsm import damsm_dir, damsm_is_cached
from t2i_ray.sweep.space import DEFAULT_LOSS_ROWS, LOSS_ROWS, loss_row_overrides


def test_fit_two_single_worker_trials_on_two_cpus():
    fit = fit_resources(2, 0, num_workers=1, cpus_per_worker=1.0, use_gpu=False, num_trials=12)
    assert fit.max_concurrent == 2
    # both drivers and both workers fit at once: no trial can starve its own workers
    assert 2 * (DRIVER_CPUS + fit.worker_resources["CPU"]) <= 2 + 1e-9


def test_fit_two_worker_trial_on_two_cpus_trims_worker_cpus():
    fit = fit_resources(2, 0, num_workers=2, cpus_per_worker=1.0, use_gpu=False, num_trials=3)
    assert fit.max_concurrent == 1
    assert DRIVER_CPUS + 2 * fit.worker_resources["CPU"] <= 2 + 1e-9


def test_fit_gpus_bound_concurrency_and_refuse_impossible():
    fit = fit_resources(64, 8, num_workers=4, cpus_per_worker=2, use_gpu=True, num_trials=10)
    assert fit.max_concurrent == 2 and fit.worker_resources["GPU"] == 1
    with pytest.raises(ConfigError, match=r"train.num_workers=4 .* 2 GPUs"):
        fit_resources(64, 2, num_workers=4, cpus_per_worker=1, use_gpu=True, num_trials=1)
    with pytest.raises(ConfigError, match=r"= 8 CPUs per trial, but the Ray cluster has 2 CPUs"):
        fit_resources(2, 0, num_workers=4, cpus_per_worker=2, use_gpu=False, num_trials=1)


def test_fit_counts_workers_per_node_not_only_totals():
    # cluster.yaml's shape: an 8-CPU head without GPUs and two g5.xlarge (4 CPUs, 1 GPU)
    head, g5 = {"CPU": 8.0, "t2i_driver": 1000.0}, {"CPU": 4.0, "GPU": 1.0}
    fit = fit_resources(16, 2, num_workers=1, cpus_per_worker=1, use_gpu=True, num_trials=6, nodes=[head, g5, g5])
    assert fit.max_concurrent == 2  # one GPU worker per g5 node; the head holds none
    # 4 CPUs per worker: the totals (16 CPUs) admit 2 trials, but only the head has 4+ CPUs
    # besides the GPU nodes, so per node: head 2 + g5 1 + g5 1 = 4 workers -> 2 trials of 2
    fit = fit_resources(16, 0, num_workers=2, cpus_per_worker=4, use_gpu=False, num_trials=6, nodes=[head, g5, g5])
    assert fit.max_concurrent == 2
    # the simulated cluster of tests/simcluster.py: a 1-CPU head and one 2-CPU worker node. Its
    # 3 CPUs admit 2 workers of 1.5 CPUs by the totals, but no node holds two of them and the
    # head none: without the per-node bound this trial would wait for a placement forever.
    sim = [{"CPU": 1.0, "t2i_driver": 1000.0}, {"CPU": 2.0}]
    assert fit_resources(3, 0, 2, 1.0, False, 2, nodes=sim).max_concurrent == 1
    with pytest.raises(ConfigError, match=r"train.num_workers=2 workers of 1.5 CPUs each, but the nodes of "
                                          r"the Ray cluster hold only 1 such worker\(s\) \(a worker cannot "
                                          r"span nodes; the largest node has 2 CPUs\); lower"):
        fit_resources(3, 0, num_workers=2, cpus_per_worker=1.5, use_gpu=False, num_trials=1, nodes=sim)
    with pytest.raises(ConfigError, match=r"workers of 8 CPUs and 1 GPU each.*hold only 0 such.*"
                                          r"largest node has 4 CPUs and 1 GPUs"):
        fit_resources(16, 2, num_workers=1, cpus_per_worker=8, use_gpu=True, num_trials=1, nodes=[head, g5, g5])


def test_loss_rows_turn_exactly_their_terms_on():
    off = {"loss.damsm": 0.0, "loss.f2r": 0.0, "loss.f2f": 0.0, "loss.recap": 0.0}
    assert loss_row_overrides("baseline") == off
    assert loss_row_overrides("+F2R+F2F", {"l2": 0.3}) == {**off, "loss.f2r": 0.3, "loss.f2f": 0.2}
    # `all` is the paper's full model (Table 1, SSAGAN + CL (R2F+F2F+R)): re-captioning included
    assert loss_row_overrides("all") == {"loss.damsm": 0.05, "loss.f2r": 0.2, "loss.f2f": 0.2, "loss.recap": 1.0}
    assert loss_row_overrides("+recap", {"l4": 0.5}) == {**off, "loss.recap": 0.5}
    assert set(LOSS_ROWS) == {"baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all", "+recap"}
    assert DEFAULT_LOSS_ROWS == ("baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all")
    with pytest.raises(ValueError, match="unknown ablation row"):
        loss_row_overrides("+everything")


def _row(run, row, seed, fid, status="ok"):
    cfg = build_config("smoke").to_dict()
    return store.make_row(run_name=run, sweep="s1", row=row, seed=seed, status=status, error=None,
                          wall_time_s=10.0, config=cfg, metrics={"fid": fid, "r_precision": 0.5},
                          version="abc")


def test_store_rows_replace_not_duplicate_and_summary(tmp_path):
    store.write_row(tmp_path, _row("a-s0", "baseline", 0, 10.0))
    store.write_row(tmp_path, _row("a-s1", "baseline", 1, 14.0))
    store.write_row(tmp_path, _row("b-s0", "+F2R", 0, 6.0))
    store.write_row(tmp_path, _row("b-s0", "+F2R", 0, 8.0))  # rerun of the same trial
    store.write_row(tmp_path, _row("c-s0", "+F2F", 0, float("nan"), status="error"))
    df = store.load_results(tmp_path, sweep="s1")
    assert len(df) == 4
    assert df.loc[df.run_name == "b-s0", "fid"].item() == 8.0
    assert {"config.loss.f2r", "code_version", "wall_time_s", "lib.torch"} <= set(df.columns)
    summary = summarize(df, order=["baseline", "+F2R", "+F2F"])
    assert list(summary.index) == ["baseline", "+F2R"]  # the failed trial is not averaged
    assert summary.loc["baseline", ("fid", "mean")] == 12.0
    assert math.isclose(summary.loc["baseline", ("fid", "std")], math.sqrt(8.0))
    text = format_table(summary)
    assert "| baseline | 2 | 12.000 ± 2.828" in text
    assert "| +F2R | 1 | 8.000 | " in text  # one seed: the mean alone, no "± 0"


def test_the_printed_table_says_which_rows_differ_from_the_first(tmp_path):
    """significance_lines: Welch's and the seed-paired p of each row against the script's first
    row, read from the results table (rows of one seed share their initial weights)."""
    from scipy import stats as sps

    from t2i_ray.sweep.run import significance_lines

    base, shifted, same = [10.0, 20.0, 30.0], [11.0, 21.2, 30.9], [30.0, 10.0, 20.0]
    for row, fids in (("baseline", base), ("+F2R", shifted), ("+F2F", same)):
        for seed, fid in enumerate(fids):
            store.write_row(tmp_path, _row(f"{row}-s{seed}", row, seed, fid))
    store.write_row(tmp_path, _row("x-s0", "+recap", 0, float("nan"), status="error"))
    df = store.load_results(tmp_path, sweep="s1")
    lines = significance_lines(df, "baseline")
    assert lines[0] == "Against baseline (difference of the means; * p < 0.05):"  # fid alone is tested
    welch = sps.ttest_ind(shifted, base, equal_var=False).pvalue
    paired = sps.ttest_rel(shifted, base).pvalue
    assert paired < 0.05 < welch
    f2r = next(line for line in lines if line.startswith("  +F2R: "))
    assert f"fid +1.03 (Welch p {welch:.2g}, paired p {paired:.2g} over 3 seeds)*" in f2r
    assert "r_precision +0 (no test: no variance in either group - test undefined)" in f2r  # 0.5 in every trial
    one_seed = significance_lines(df[(df["row"] == "baseline") | (df["seed"] == 0)], "baseline")
    assert "  +F2R: fid -9 (no test: '+F2R' has n=1 - need at least 2 seeds per group for a test)" in \
        "\n".join(one_seed)
    f2f = next(line for line in lines if line.startswith("  +F2F: "))
    assert "fid +0 (Welch p 1, paired p 1 over 3 seeds);" in f2f and ")*" not in f2f
    assert not any("+recap" in line for line in lines)  # failed trials are not compared
    # with two metrics tested, the * is said to be uncorrected for them
    varied = df.assign(r_precision=[0.1, 0.2, 0.3, 0.15, 0.2, 0.35, 0.4, 0.1, 0.2, 0.5][:len(df)])
    assert significance_lines(varied, "baseline")[0] == ("Against baseline (difference of the means; * p < 0.05 "
                                                         "for that metric alone, not corrected for the 2 "
                                                         "metrics tested):")
    # one seed per row: nothing to test, nothing printed
    assert significance_lines(df[df["seed"] == 0], "baseline") == []


def test_store_refuses_incomplete_rows_and_reads_empty(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        store.write_row(tmp_path, {"run_name": "x"})
    assert store.load_results(tmp_path).empty


def test_prepare_assets_trains_both_then_reuses_them(fresh_tiny_cfg):
    cfg = fresh_tiny_cfg
    logs: list[str] = []
    assets = prepare_assets(cfg, logs.append)  # nothing cached yet: trains both
    path = assets["damsm_path"]
    assert path == str(damsm_dir(cfg).resolve()) and damsm_is_cached(cfg)
    assert assets["captioner_path"] is None and not captioner_is_cached(cfg)  # no trial needs l4
    e = cfg.eval
    evaluator_file = evaluator_cache_path(cfg.data, e.evaluator_steps, e.evaluator_images, f"{cfg.output_dir}/cache")[0]
    assert os.path.isfile(evaluator_file)
    stamp = os.stat(evaluator_file).st_mtime_ns
    logs.clear()
    assert prepare_assets(cfg, logs.append) == assets
    assert any("using cached encoders" in m for m in logs)
    assert any("loaded domain evaluator" in m for m in logs)
    assert os.stat(evaluator_file).st_mtime_ns == stamp
    with_captioner = prepare_assets(cfg, logs.append, need_captioner=True)
    assert with_captioner["captioner_path"] == str(captioner_dir(cfg).resolve()) and captioner_is_cached(cfg)
