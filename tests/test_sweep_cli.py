"""The sweep options every script shares, without Ray: --sweep grid axes, --space Optuna ranges,
--scheduler asha, the dry-run's settings and time estimate, the status lines, the result rows and
TensorBoard records of a trial, and analysis refusing to pool different swept values as seeds."""
from __future__ import annotations

import heapq
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from t2i_ray.config import ConfigError, build_config
from t2i_ray.sweep import progress, store
from t2i_ray.sweep.run import SweepSpec, asha_settings, build_scheduler, trial_identity, write_trial_row
from t2i_ray.sweep.space import parse_space_range, tune_domain
from tests.test_sweep_scripts import _script  # sweeps/<name>.py as a module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def losses():
    return _script("ablate_losses")


def _spec(script, argv):
    from t2i_ray.sweep.cli import apply_search_options

    args = script.parse_args(argv)
    return apply_search_options(script.build_spec(args), args)


def test_dry_run_crosses_two_sweep_keys_with_the_rows_and_seeds(losses, tmp_path, capsys):
    argv = ["--preset", "ci", "--output-dir", str(tmp_path), "--rows", "baseline", "+F2R", "--seeds", "0", "1",
            "--sweep", "train.lr_g=1e-4,2e-4", "--sweep", "model.nf=4,8", "--dry-run"]
    losses.main(argv)
    out = capsys.readouterr().out
    listed = re.findall(r"^  (\S+ lr_g=\S+ nf=\d+) +seed (\d)  (\{.*\})$", out, flags=re.M)
    assert [(label, int(seed)) for label, seed, _ in listed] == [
        (f"{row} lr_g={lr} nf={nf}", seed) for row in ("baseline", "+F2R") for lr in ("1e-4", "2e-4")
        for nf in (4, 8) for seed in (0, 1)]
    first = eval(listed[0][2])  # the trial's overrides: the row's loss weights and both swept values
    assert first["train.lr_g"] == 1e-4 and first["model.nf"] == 4 and first["loss.f2r"] == 0.0
    assert eval(listed[-1][2])["loss.f2r"] == 0.2
    # the settings that differ from the defaults and an estimate from the measured rates
    assert re.search(r"^  dataset shapes, 32x32, 4 steps, batch 8 x 1 worker\(s\), CPU, output ", out, re.M)
    assert "model.nf=4" in out.split("settings that differ from the defaults")[1].splitlines()[0]
    assert re.search(r"estimated wall time: ~\d+ (s|min) for 16 trial\(s\), \d+ at a time on \d+ CPUs.*"
                     r"step_throughput_archs\.json", out)
    spec = _spec(losses, argv[:-1])
    assert all(t["swept"] == {"train.lr_g": t["overrides"]["train.lr_g"], "model.nf": t["overrides"]["model.nf"]}
               for t in spec.grid)
    assert spec.name != _spec(losses, argv[:-5]).name  # another sweep: its own name, nothing resumed into it


@pytest.mark.parametrize("extra, message", [
    (["--sweep", "train.lr_gg=1,2"], "--sweep train.lr_gg: unknown config key; valid keys in train: steps,"),
    (["--sweep", "train=1,2"], "--sweep train: a config section, not a key"),
    (["--sweep", "train.lr_g=1e-4"], "--sweep train.lr_g: one value ('1e-4') is not a sweep; use --set"),
    (["--sweep", "train.lr_g=1e-4,0.0001"], "--sweep train.lr_g: '0.0001' is the same value as '1e-4'"),
    (["--sweep", "model.nf=4,eight"], "--sweep model.nf=eight: model.nf: must be an integer, got 'eight'"),
    (["--sweep", "train.lr_g=-1,1e-4"],
     "train.lr_g: must be > 0 (in trial 'baseline lr_g=-1' seed 0, from --sweep)"),
    (["--sweep", "loss.f2r=0.1,0.2"],
     "--sweep loss.f2r: set per row by this script (row 'baseline' sets it); pass --l2"),
    (["--sweep", "seed=0,1"], "--sweep seed: cannot be swept; use --seeds"),
    (["--sweep", "model.nf=4,8", "--set", "model.nf=8"], "--sweep model.nf: also fixed by --set; drop one"),
    (["--sweep", "model.nf=4,8", "--sweep", "model.nf=16,32"], "--sweep model.nf: given twice"),
    (["--search", "optuna", "--sweep", "model.nf=4,8"], "--sweep builds a grid, and this is an Optuna search"),
    (["--space", "train.lr_g=log:1e-5:1e-3"], "--space gives Optuna ranges, and this is a grid"),
    (["--search", "optuna", "--space", "model.nf=float:4:8"], "--space model.nf: an integer key; use int:4:8"),
    (["--search", "optuna", "--space", "train.lr_g=log:0:1"], "--space train.lr_g=log:0:1: log ranges need LOW > 0"),
    (["--search", "optuna", "--space", "train.lr_g=float:-1:1"],
     "the bound -1 is not a valid value: train.lr_g: must be > 0"),
    (["--search", "optuna", "--space", "model.arch=float:0:1"], "--space model.arch: a str key, not a number"),
    (["--scheduler", "asha", "--asha-metric", "fid"], "--asha-metric fid: not in the training reports"),
    (["--asha-metric", "loss_d"], "configure --scheduler asha; add it"),
])
def test_bad_sweep_options_fail_before_ray_naming_the_field(losses, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        losses.main(["--preset", "ci", "--output-dir", str(tmp_path), "--rows", "baseline", "--dry-run", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "results").exists()


def test_space_ranges_replace_the_default_space_and_keep_the_name_stable(losses, tmp_path):
    base = ["--preset", "ci", "--output-dir", str(tmp_path), "--search", "optuna", "--trials", "3"]
    default = _spec(losses, base)
    assert default.optuna_space == {"loss.damsm": "float:0.0:0.25", "loss.f2r": "float:0.0:1.0",
                                    "loss.f2f": "float:0.0:1.0", "loss.recap": "float:0.0:5.0"}
    # The name is a hash of the settings: the same command must give the same name (resume).
    assert _spec(losses, base).name == default.name
    spec = _spec(losses, base + ["--space", "train.lr_g=log:1e-5:1e-3", "--space", "model.nf=int:4:8",
                                 "--space", "loss.f2r=float:0:1"])
    assert spec.optuna_space == {"train.lr_g": "log:1e-05:0.001", "model.nf": "int:4:8", "loss.f2r": "float:0.0:1.0"}
    assert spec.name != default.name
    lr, nf = tune_domain(spec.optuna_space["train.lr_g"]), tune_domain(spec.optuna_space["model.nf"])
    assert (lr.lower, lr.upper, type(lr.sampler).__name__) == (1e-5, 1e-3, "_LogUniform")
    assert (nf.lower, nf.upper) == (4, 9)  # inclusive 8: Tune's upper bound is exclusive
    with pytest.raises(ConfigError, match=r"--space train.lr_g=float:2:1: needs finite bounds with LOW < HIGH"):
        parse_space_range("train.lr_g=float:2:1", build_config("ci"))


def test_asha_defaults_to_the_reported_training_loss(tmp_path):
    gan = build_config("ci")
    s = asha_settings(gan, None, None, None)
    assert s == {"kind": "asha", "metric": "loss_g_adv", "mode": "min", "grace": 2, "max_t": 4, "reduction": 2}
    diffusion = build_config("ci", {"model.method": "diffusion"})
    assert asha_settings(diffusion, None, None, 3)["metric"] == "loss"
    assert asha_settings(gan, "images_per_s", None, None)["mode"] == "max"
    with pytest.raises(ConfigError, match="--asha-metric eval_fid: reported only by evaluation during training"):
        asha_settings(gan, "eval_fid", None, None)
    with pytest.raises(ConfigError, match=r"--asha-grace 1: shorter than train.report_every=2"):
        asha_settings(gan, None, None, 1)
    with pytest.raises(ConfigError, match=r"--asha-grace: must be in 1..train.steps-1 \(3\), got 4"):
        asha_settings(gan, None, None, 4)
    # never a stop at the last training report: the trial's final evaluation comes after it
    scheduler = build_scheduler(SweepSpec(sweep="x", base=gan, search="grid", scheduler=s))
    assert (scheduler._time_attr, scheduler._metric, scheduler._max_t) == ("step", "loss_g_adv", 3)
    assert not scheduler._stop_last_trials
    trial = SimpleNamespace(trial_id="t")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"step": 4, "loss_g_adv": 1.0}) == "CONTINUE"


def test_status_line_format_and_eta():
    assert progress.format_duration(133) == "0:02:13" and progress.format_duration(3723.4) == "1:02:03"
    assert progress.format_duration(None) == "?"
    line = progress.status_line(133, running=2, done=3, failed=1, total=12, eta_s=520, event="started: +F2R seed 0")
    assert line == "[sweep 0:02:13] 2 running, 3/12 done, 1 failed | ETA 0:08:40 | started: +F2R seed 0"
    # 4 of 12 trials' work done in 100 s (2 before this run, which therefore do not count): 8 left
    assert progress.estimate_remaining(100, progress=4.0, carried=2.0, total=12) == pytest.approx(400)
    assert progress.estimate_remaining(100, progress=2.0, carried=2.0, total=12) is None


def _trial(trial_id, row, status="PENDING", steps=4, last=None):
    config = {"trial": {"row": row, "seed": 0, "overrides": {}}, "base": {"train": {"steps": steps}}}
    return SimpleNamespace(trial_id=trial_id, config=config, status=status, last_result=last or {})


def test_status_lines_of_trial_events(monkeypatch):
    lines: list[str] = []
    monkeypatch.setattr(progress, "console", lines.append)
    cb = progress.TrialProgress(total=3)
    a, b, c = _trial("a", "baseline"), _trial("b", "+F2R"), _trial("c", "all")
    trials = [a, b, c]
    cb.setup()
    cb.on_trial_start(0, trials, a)
    a.status = "RUNNING"
    cb.on_trial_start(0, trials, b)
    b.status = "RUNNING"
    cb.on_trial_result(0, trials, a, {"step": 2})  # half of a's 4 steps: progress, no line
    a.last_result = {"finished": 1, "fid": 31.5, "r_precision": 0.25, "attr_pair_recall": 0.5, "time_total_s": 42}
    cb.on_trial_complete(0, trials, a)
    a.status = "TERMINATED"
    cb.on_trial_error(0, trials, b)
    b.status = "ERROR"
    c.last_result = {"step": 2, "loss_g": 3.0}
    monkeypatch.setattr(progress, "record_stopped_trial", lambda trial: lines.append(f"row of {trial.trial_id}"))
    cb.on_trial_complete(0, trials, c)  # no final metrics: the scheduler stopped it
    pattern = r"^\[sweep \d:\d\d:\d\d\] (\d) running, (\d)/3 done, (\d) failed \| ETA (\S+) \| (.*)$"
    parsed = [re.match(pattern, line).groups() for line in lines if line.startswith("[sweep")]
    assert [(r, d, f, event) for r, d, f, _, event in parsed] == [
        ("1", "0", "0", "started: baseline seed 0"),
        ("2", "0", "0", "started: +F2R seed 0"),
        ("1", "1", "0", "done: baseline seed 0: fid=31.500 r_precision=0.250 attr_pair_recall=0.500 (42s)"),
        ("0", "1", "1", "FAILED: +F2R seed 0 (see the results table's error column)"),
        ("0", "2", "1", "stopped early: all seed 0 at step 2"),
    ]
    assert parsed[0][3] == "?" and re.match(r"\d:\d\d:\d\d$", parsed[2][3])  # an ETA once work is done
    assert "row of c" in lines


def test_trial_row_records_the_swept_values_and_tensorboard_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    base = build_config("ci", {"output_dir": str(tmp_path)})
    swept = {"train.lr_g": 1e-4, "model.nf": 8}
    config = {"base": base.to_dict(), "experiment": "ablate_losses-grid-0000", "code_version": "test",
              "trial": {"row": "baseline lr_g=1e-4 nf=8", "seed": 1, "overrides": {"loss.f2r": 0.0, **swept},
                        "swept": swept}}
    ident = trial_identity(config, "t1")
    assert ident.run_name == "ablate_losses-grid-0000-baseline_lr_g_1e_4_nf_8-s1"
    assert (ident.cfg.train.lr_g, ident.cfg.model.nf, ident.cfg.seed) == (1e-4, 8, 1)
    write_trial_row(ident, config, status="ok", error=None, wall_time_s=3.0, metrics={"fid": 2.0},
                    checkpoint_path="")
    row = store.load_results(tmp_path).iloc[0]
    assert json.loads(row["swept"]) == swept and row["config.train.lr_g"] == 1e-4 and row["row"] == ident.row
    events = EventAccumulator(str(tmp_path / "tensorboard" / ident.run_name))
    events.Reload()
    start = metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["train.lr_g"].number_value == 1e-4 and start.hparams["model.nf"].number_value == 8
    assert start.hparams["row"].string_value == "baseline lr_g=1e-4 nf=8"
    assert start.hparams["loss.f2r"].number_value == 0.0

    # an Optuna trial: its draw is its label and its swept values
    optuna = {**{k: v for k, v in config.items() if k != "trial"}, "train.lr_g": 3.3e-4, "loss.f2r": 0.5}
    ident = trial_identity(optuna, "abc_00001")
    assert ident.row == "optuna f2r=0.5 lr_g=0.00033" and ident.swept == {"train.lr_g": 3.3e-4, "loss.f2r": 0.5}
    assert ident.run_name == "ablate_losses-grid-0000-abc_00001"


def test_stopped_trial_gets_a_row_with_its_last_report(tmp_path):
    base = build_config("ci", {"output_dir": str(tmp_path)})
    trial = SimpleNamespace(trial_id="t2", config={
        "base": base.to_dict(), "experiment": "exp", "code_version": "test",
        "trial": {"row": "baseline lr_g=1e-4", "seed": 0, "overrides": {"train.lr_g": 1e-4},
                  "swept": {"train.lr_g": 1e-4}}},
        last_result={"step": 2, "loss_g": 1.5, "time_total_s": 9.0, "trial_id": "t2"})
    progress.record_stopped_trial(trial)
    row = store.load_results(tmp_path).iloc[0]
    assert (row["status"], row["step"], row["loss_g"], row["wall_time_s"]) == ("stopped", 2, 1.5, 9.0)
    assert row["error"] == "stopped early by the scheduler at step 2"


def test_sample_grids_reach_tensorboard_at_each_evaluation(tmp_path):
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from t2i_ray.train.runlog import RunLog

    cfg = build_config("ci", {"output_dir": str(tmp_path)})
    grid, masks = tmp_path / "samples" / "r.png", tmp_path / "samples" / "r_masks.png"
    grid.parent.mkdir()
    Image.fromarray(np.full((32, 64, 3), 200, np.uint8)).save(grid)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(masks)
    log = RunLog(cfg, "r")
    metrics = {"fid": 3.0, "kid": 1.0, "r_precision": 0.1, "attr_pair_recall": 0.2, "eval_seconds": 1.0,
               "samples_path": str(grid)}
    log.evaluation(metrics, 2)
    log.evaluation(metrics, 4)
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard" / "r"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("samples/grid")
    assert [(e.step, e.width, e.height) for e in images] == [(2, 64, 32), (4, 64, 32)]
    assert [e.step for e in events.Images("samples/masks")] == [2, 4]
    assert [e.value for e in events.Scalars("eval/fid")] == [3.0, 3.0]


def test_analysis_keeps_swept_values_apart(tmp_path):
    from analysis import ablation_table, compare_to_baseline

    def row(label, seed, lr, fid):
        cfg = build_config("ci", {"train.lr_g": lr}).to_dict()
        r = store.make_row(run_name=f"{label}-{seed}", sweep="s", row=label, seed=seed, status="ok", error=None,
                           wall_time_s=1.0, config=cfg, metrics={"fid": fid}, version="v",
                           extra={"swept": {"train.lr_g": lr}})
        return {k: store._cell(v) for k, v in r.items()}

    df = pd.DataFrame([row("baseline lr_g=1e-4", 0, 1e-4, 10.0), row("baseline lr_g=1e-4", 1, 1e-4, 12.0),
                       row("baseline lr_g=2e-4", 0, 2e-4, 20.0), row("baseline lr_g=2e-4", 1, 2e-4, 22.0)])
    table = ablation_table(df, baseline="baseline lr_g=1e-4", metrics=["fid"])
    assert list(table["row"]) == ["baseline lr_g=1e-4", "baseline lr_g=2e-4"] and list(table["n"]) == [2, 2]
    assert list(table["fid_mean"]) == [11.0, 21.0]
    # grouping by a column that does not name the swept value would average 1e-4 and 2e-4 as seeds
    with pytest.raises(ValueError, match=r"group 'shapes' of 'config.data.dataset' holds trials with different "
                                         r"swept values .*not seeds of one"):
        ablation_table(df, by="config.data.dataset", metrics=["fid"])
    with pytest.raises(ValueError, match="different swept values"):
        compare_to_baseline(df.assign(group="g"), baseline="g", by="group")


def test_estimate_figures_are_the_measured_ones(losses, tmp_path, monkeypatch):
    """The dry-run's step rates are the benchmark JSON's (t2i_ray/sweep/estimate.py cites them)."""
    from t2i_ray.sweep import estimate

    results = REPO / "benchmarks" / "results"
    for name, threads in (("step_throughput_archs.json", 0), ("step_throughput_archs_2threads.json", 1)):
        for r in json.loads((results / name).read_text())["rows"]:
            assert (r["resolution"], r["batch_size"], r["setting"]) == (32, 32, {"model.nf": 16})
            assert estimate.GAN_IMAGES_PER_S[r["arch"]][threads] == r["images_per_s"]
    # style1attngan / attngan: attngan_style's figures times their ratio to it, measured in one run
    loaded = {r["arch"]: r["images_per_s"]
              for r in json.loads((results / "step_throughput_new_archs_loaded.json").read_text())["rows"]}
    for arch in ("style1attngan", "attngan"):
        ratio = loaded[arch] / loaded["attngan_style"]
        assert estimate.GAN_IMAGES_PER_S[arch] == pytest.approx(
            [r * ratio for r in estimate.GAN_IMAGES_PER_S["attngan_style"]], abs=0.05)
    diffusion = json.loads((results / "diffusion_step_1thread_quieter.json").read_text())["rows"][0]
    assert (diffusion["resolution"], diffusion["dim"]) == (32, 32)
    assert diffusion["images_per_s"] == estimate.DIFFUSION_IMAGES_PER_S
    # the local preset's measured DF-GAN baseline trial: 57-106 s in the one-factor sweep on a quiet
    # 2-core machine (benchmarks/README.md "Per-trial overhead"; 105.6 s with a worker group)
    local = estimate.estimate_trial(build_config("local"))
    assert 55 < local.total_s < 110
    # start-up per trial and the CPU bf16 factor are the measured ones
    overhead = json.loads((results / "trial_overhead_local_quiet.json").read_text())["summary"]
    assert estimate.TRIAL_STARTUP_S == {"in_trial": overhead["1w_in_trial"]["overhead_s"],
                                        "worker_group": overhead["1w_worker_group"]["overhead_s"]}
    assert local.startup_s == estimate.TRIAL_STARTUP_S["in_trial"]
    assert estimate.estimate_trial(build_config("local", {"train.num_workers": 2})).startup_s == 23.23
    curves = json.loads((results / "learning_curves_1obj.json").read_text())["runs"]
    native = json.loads((results / "learning_local_ssagan_1obj_1750_lr2x_native_s0.json").read_text())
    assert native["config"]["train"]["amp"] == "native" and curves["e7"]["median_images_per_s"] == 116.0
    bf16 = build_config("local", {"train.amp": "bf16"})
    assert estimate.train_images_per_s(bf16) == pytest.approx(
        estimate.train_images_per_s(build_config("local")) * estimate.CPU_BF16_SPEEDUP)
    # the contrastive terms' share, from one run: SSA-GAN + DAMSM (e1) and with F2R+F2F (e2)
    assert curves["e2"]["setting"].startswith("+ CL (R2F+F2F), 1 object, local rates")
    assert curves["e1"]["setting"].startswith("SSA-GAN, 1 object, local rates")
    assert estimate.CONTRASTIVE_FACTOR == curves["e2"]["median_images_per_s"] / curves["e1"]["median_images_per_s"]
    ssagan = {"model.arch": "ssagan", "loss.damsm": 0.05}
    damsm, cl = (estimate.train_images_per_s(build_config("local", {**ssagan, **extra}))
                 for extra in ({}, {"loss.f2r": 0.2, "loss.f2f": 0.2}))
    assert cl / damsm == pytest.approx(estimate.CONTRASTIVE_FACTOR)
    # the main command's 6 trials (benchmarks/results/laptop_sweep_damsm), two at a time in the
    # grid's order, each on the first free slot as Tune started them
    laptop = json.loads((results / "laptop_sweep_damsm" / "trials.json").read_text())["trials"]
    slots = [0.0, 0.0]
    for r in sorted(laptop, key=lambda r: (r["row"] != "baseline", r["seed"])):
        heapq.heappush(slots, heapq.heappop(slots) + r["wall_time_s"])
    measured = max(slots)
    assert len(laptop) == 6 and 15 * 60 < measured < 21 * 60, measured
    monkeypatch.setattr(estimate, "_cpu_bf16", lambda cfg: True)  # that machine had bf16; this one may not
    default = estimate.estimate_sweep(_spec(losses, ["--output-dir", str(tmp_path)]), cpus=2)
    assert default.trials == 6 and abs(default.total_s - measured) < 0.1 * measured, (default.total_s, measured)


def test_a_sweep_refuses_trials_that_would_need_other_pretrained_encoders(losses, tmp_path):
    """One DAMSM and one captioner per sweep, from the base config: a grid axis or an Optuna range
    over their fields is refused by name before any work, and another set of seeds reuses them."""
    from t2i_ray.sweep.run import check_shared_pretraining
    from t2i_ray.train.damsm import damsm_dir

    base = ["--preset", "ci", "--output-dir", str(tmp_path), "--rows", "baseline"]
    for extra, field in ((["--sweep", "damsm.epochs=1,2"], "damsm.epochs"),
                         (["--sweep", "captioner.seed=0,1"], "captioner.seed"),
                         (["--sweep", "model.embed_dim=64,128"], "model.embed_dim"),
                         (["--search", "optuna", "--space", "damsm.lr=log:1e-4:1e-3"], "damsm.lr")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(field)}: .*cannot vary"):
            check_shared_pretraining(_spec(losses, base + extra))
    with pytest.raises(SystemExit):
        losses.main(base + ["--sweep", "damsm.epochs=1,2", "--dry-run"])
    # seeds 2 3 run later use the encoders that seeds 0 1 trained
    first, later = (_spec(losses, base + ["--seeds", *s]) for s in (["0", "1"], ["2", "3"]))
    check_shared_pretraining(first)
    assert damsm_dir(later.base) == damsm_dir(first.base)
