"""Ray-level tests (kept few: each Train run costs ~10-20 s of Ray overhead on 2 cores)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from t2i_ray.config import apply_overrides
from t2i_ray.train.captioner import captioner_is_cached


def test_two_trial_grid_sweep_writes_rows_and_rerun_resumes(tiny_grid_sweep):
    from t2i_ray.sweep.run import run_sweep, summarize

    spec, rows = tiny_grid_sweep
    assert sorted(rows["row"]) == ["+recap", "baseline"]
    assert (rows["status"] == "ok").all(), rows["error"].tolist()
    for col in ("fid", "kid", "r_precision", "attr_pair_recall", "wall_time_s"):
        assert rows[col].map(math.isfinite).all(), col
    # the l4 row got the captioner that run_sweep pre-trained (prepare_assets -> train_driver -> worker)
    assert rows.loc[rows.row == "+recap", "config.loss.recap"].item() == 1.0
    assert rows.loc[rows.row == "baseline", "config.loss.recap"].item() == 0.0
    assert captioner_is_cached(spec.base)
    assert (rows["code_version"] != "").all() and (rows["seed"] == 0).all()
    # one worker: the batch-coupled terms saw the whole batch, without a gather
    assert (rows["workers"] == 1).all() and (rows["negatives_batch"] == 8).all() and not rows["negatives_gathered"].any()
    # model sizes (README "Text-embedding modes"): pretrained DF-GAN, so every parameter but the text encoder's trains
    from t2i_ray.train.method import parameter_columns

    sizes = parameter_columns(spec.base, rows["damsm_path"].iloc[0])
    assert set(sizes) == {"params_g", "params_d", "params_text", "params_trainable"} and min(sizes.values()) > 0
    assert all((rows[k] == v).all() for k, v in sizes.items())
    assert sizes["params_trainable"] == sizes["params_g"] + sizes["params_d"]
    assert all(Path(p).is_dir() for p in rows["checkpoint_path"])
    # eval.every=2: the best of the evaluations at steps 2 and 4 is kept beside Ray Train's checkpoints
    assert set(rows["best_step"]) <= {2, 4} and (rows["best_num_images"] == 16).all()
    for run, path, step in zip(rows["run_name"], rows["best_checkpoint_path"], rows["best_step"]):
        assert Path(path).parent.name == run and json.loads((Path(path) / "config.json").read_text())["seed"] == 0
        assert torch.load(Path(path) / "state.pt", weights_only=True)["step"] == step
    assert all(Path(p, "meta.json").is_file() for p in rows["damsm_path"]) and (rows["reevaluation_of"] == "").all()
    for path in rows["curves_path"]:  # one JSON line per training report, steps 1..4
        steps = [json.loads(line)["step"] for line in Path(path).read_text().splitlines()]
        assert steps == [1.0, 2.0, 3.0, 4.0]
    assert len(summarize(rows)) == 2

    # the same command again: Tune restores the experiment, finished trials are not rerun
    again = run_sweep(spec, log=lambda s: None)
    assert len(again) == 2
    assert sorted(again["finished_at"]) == sorted(rows["finished_at"])


def flaky_worker(config):
    """The real worker loop, but rank 0 dies once right after the step-2 checkpoint."""
    from t2i_ray.config import ExperimentConfig
    from t2i_ray.train.loop import RayEnv, run_training

    class FlakyEnv(RayEnv):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if "loss_d" in metrics:
                with open(Path(config["log_dir"]) / f"steps_rank{self.world_rank}.txt", "a") as f:
                    f.write(f"{metrics['step']}\n")
            marker = Path(config["log_dir"]) / "crashed"
            if self.world_rank == 0 and metrics.get("step") == 2 and "loss_d" in metrics and not marker.exists():
                marker.touch()
                raise RuntimeError("injected worker failure")

    run_training(ExperimentConfig.from_dict(config["experiment"]), FlakyEnv(), config["damsm_path"], "flaky")


def test_two_worker_ddp_trial_restarts_from_checkpoint_after_worker_failure(tiny_cfg, tiny_damsm, local_ray, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = apply_overrides(tiny_cfg, {"train.num_workers": 2, "train.batch_size": 4})
    trainer = TorchTrainer(
        flaky_worker,
        train_loop_config={"experiment": cfg.to_dict(), "damsm_path": tiny_damsm, "log_dir": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name="flaky", storage_path=str(tmp_path / "storage"),
                                       failure_config=ray.train.FailureConfig(max_failures=1)),
    )
    result = trainer.fit()
    assert result.error is None
    # both ranks: steps 1-2, the failure, then only 3-4 from the step-2 checkpoint (not 1-4 again)
    for rank in (0, 1):
        steps = [int(s) for s in (tmp_path / f"steps_rank{rank}.txt").read_text().split()]
        assert steps == [1, 2, 3, 4], (rank, steps)
    assert (tmp_path / "crashed").exists()


def flaky_trial(config):
    """The loop inside a Tune trial (TuneEnv, as run_sweep runs one-worker CPU trials), dying once
    right after its step-2 checkpoint."""
    from t2i_ray.config import ExperimentConfig
    from t2i_ray.train.loop import TuneEnv, run_training

    class FlakyTuneEnv(TuneEnv):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if "loss_d" in metrics:
                with open(Path(config["log_dir"]) / "steps.txt", "a") as f:
                    f.write(f"{metrics['step']} {metrics['loss_d']!r}\n")
            marker = Path(config["log_dir"]) / "crashed"
            if metrics.get("step") == 2 and "loss_d" in metrics and not marker.exists():
                marker.touch()
                raise RuntimeError("injected trial failure")

    run_training(ExperimentConfig.from_dict(config["experiment"]), FlakyTuneEnv(), config["damsm_path"], "flaky1")


def test_one_worker_trial_resumes_from_its_tune_checkpoint_with_the_same_losses(tiny_cfg, tiny_damsm, local_ray,
                                                                                tmp_path):
    """A one-worker trial trains in its Tune trial (no worker group): Tune restarts the failed trial,
    which continues from the checkpoint it reported at step 2, and its losses are those of an
    uninterrupted in-process run of the same seed."""
    from ray import tune

    from t2i_ray.train.loop import LocalEnv, run_training

    tuner = tune.Tuner(
        tune.with_resources(flaky_trial, {"cpu": 1}),
        param_space={"experiment": tiny_cfg.to_dict(), "damsm_path": tiny_damsm, "log_dir": str(tmp_path)},
        run_config=tune.RunConfig(name="flaky1", storage_path=str(tmp_path / "storage"), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)))
    result = tuner.fit()[0]
    assert result.error is None and (tmp_path / "crashed").exists()
    logged = [line.split() for line in (tmp_path / "steps.txt").read_text().splitlines()]
    # steps 1-2, the failure, then only 3-4 from the step-2 checkpoint (not 1-4 again)
    assert [int(float(s)) for s, _ in logged] == [1, 2, 3, 4], logged
    assert result.metrics["finished"] == 1 and result.checkpoint is not None
    uninterrupted = LocalEnv(tmp_path / "local")
    run_training(tiny_cfg, uninterrupted, tiny_damsm, "local")
    assert [float(loss) for _, loss in logged] == [r["loss_d"] for r in uninterrupted.reports if "loss_d" in r]


def test_optuna_sweep_samples_weights_in_range_and_stores_its_study(tiny_cfg, tiny_damsm, local_ray, capsys):
    import optuna

    from t2i_ray.sweep.run import SweepSpec, run_sweep

    space = {"loss.f2r": "float:0.0:1.0", "train.lr_g": "log:0.0001:0.001"}
    spec = SweepSpec(sweep="test_optuna", base=tiny_cfg, search="optuna", optuna_space=space,
                     num_trials=2, objective="both")
    rows = run_sweep(spec, log=lambda s: None)
    assert len(rows) == 2 and (rows["status"] == "ok").all(), rows["error"].tolist()
    f2r, lr = rows["config.loss.f2r"].tolist(), rows["config.train.lr_g"].tolist()
    assert all(0.0 <= w <= 1.0 for w in f2r) and f2r[0] != f2r[1] and all(1e-4 <= v <= 1e-3 for v in lr)
    assert rows["fid"].map(math.isfinite).all() and rows["r_precision"].map(math.isfinite).all()
    # each draw is a configuration of its own: labelled by its values, recorded in `swept`
    assert sorted(rows["row"]) == sorted(f"optuna f2r={a:.4g} lr_g={b:.4g}" for a, b in zip(f2r, lr))
    assert [json.loads(s) for s in rows["swept"]] == [{"loss.f2r": a, "train.lr_g": b} for a, b in zip(f2r, lr)]
    # one status line per trial event, with counts, elapsed time and ETA
    out = capsys.readouterr().out
    events = re.findall(r"^\[sweep \d:\d\d:\d\d\] \d running, (\d)/2 done, 0 failed \| ETA \S+ \| (\w+)", out, re.M)
    assert sorted(events) == [("0", "started"), ("0", "started"), ("1", "done"), ("2", "done")] or \
        sorted(events) == [("0", "started"), ("1", "done"), ("1", "started"), ("2", "done")], out[-3000:]

    # The study is stored under the output folder, where optuna.load_study (and optuna-dashboard) read it.
    storage = f"sqlite:///{Path(tiny_cfg.output_dir).resolve()}/optuna.db"
    study = optuna.load_study(study_name=spec.name, storage=storage)
    trials = sorted(study.trials, key=lambda t: t.params["loss.f2r"])
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    by_f2r = rows.sort_values("config.loss.f2r")
    assert [t.params["loss.f2r"] for t in trials] == list(by_f2r["config.loss.f2r"])
    assert [t.values for t in trials] == [[a, b] for a, b in zip(by_f2r["fid"], by_f2r["r_precision"])]
    # rerunning resumes (Tune restores the searcher with its stored study); nothing is trained again
    logs: list[str] = []
    again = run_sweep(spec, log=logs.append)
    assert any(line.startswith("[sweep] resuming") for line in logs), logs
    assert sorted(again["finished_at"]) == sorted(rows["finished_at"])
    assert len(optuna.load_study(study_name=spec.name, storage=storage).trials) == 2


def test_a_start_that_fails_creating_the_tuner_does_not_break_the_rerun(tiny_cfg, tiny_damsm, local_ray,
                                                                        monkeypatch):
    import threading

    from t2i_ray.sweep import progress
    from t2i_ray.sweep.run import SweepSpec, experiment_path, run_sweep
    from t2i_ray.sweep.space import loss_row_overrides

    spec = SweepSpec(sweep="test_tuner_failure", base=tiny_cfg, search="grid",
                     grid=[{"row": "baseline", "seed": 0, "overrides": loss_row_overrides("baseline")}])
    exp = Path(experiment_path(spec))

    class Unpicklable(progress.TrialProgress):
        """What a callback holding a console stream, a lock or a replaced `print` does to Tune."""

        def __init__(self, total):
            super().__init__(total)
            self.lock = threading.Lock()

    monkeypatch.setattr(progress, "TrialProgress", Unpicklable)
    with pytest.raises(Exception, match="pickle"):
        run_sweep(spec)
    assert not exp.exists()  # no 0-byte tuner.pkl left for the rerun to "restore"
    monkeypatch.undo()

    # What such a failed start left before: Tune state that cannot be read. The rerun sets it
    # aside, says so, and starts over.
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    logs: list[str] = []
    rows = run_sweep(spec, log=logs.append)
    assert list(rows["status"]) == ["ok"] and math.isfinite(rows["fid"].item())
    assert any("cannot be read (EOFError" in line and "starting the sweep over" in line for line in logs), logs
    assert (exp.parent / f"{exp.name}.unreadable" / "tuner.pkl").is_file()
    assert len(run_sweep(spec, log=logs.append)) == 1  # and the new state resumes
    assert any(line.startswith("[sweep] resuming") for line in logs)


def test_unreadable_optuna_state_with_finished_trials_stops_with_the_choice(tiny_cfg, tmp_path):
    from t2i_ray.sweep import store
    from t2i_ray.sweep.run import ResumeError, SweepSpec, restore_experiment

    cfg = apply_overrides(tiny_cfg, {"output_dir": str(tmp_path)})
    spec = SweepSpec(sweep="test_optuna_state", base=cfg, search="optuna", num_trials=2)
    exp = tmp_path / "ray" / "tune" / spec.name
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    store.write_row(tmp_path, store.make_row(
        run_name=f"{spec.name}-t1", sweep=spec.name, row="optuna", seed=0, status="ok", error=None,
        wall_time_s=1.0, config=cfg.to_dict(), metrics={"fid": 1.0}, version="test"))
    with pytest.raises(ResumeError, match=r"cannot be read \(EOFError.*1 of its trials had finished.*"
                                          r"move or delete .*test_optuna_state"):
        restore_experiment(spec, str(exp), None, tmp_path, log=lambda s: None)
    assert (exp / "tuner.pkl").is_file()  # untouched: the user decides
