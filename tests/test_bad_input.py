"""What the user sees on bad input and on failures (fast, no Ray cluster): each case fails before
any expensive work with a message that names the problem and the fix. The README's failure table
lists the same cases; the NaN trial inside a sweep and the killed sweep are in test_ray_resume.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from t2i_ray.config import ConfigError, apply_overrides, build_config_with_file, read_config_file
from t2i_ray.sweep.run import ResumeError, SweepSpec, check_output_dir, check_resumable, failure_reason
from t2i_ray.train.loop import LocalEnv, run_training

REPO = Path(__file__).resolve().parents[1]


def _ablate_main():
    """sweeps/ablate_losses.py's main (the sweep scripts are files, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablate_losses", REPO / "sweeps" / "ablate_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_yaml_config_file_sets_fields_and_flags_win(tmp_path):
    path = _yaml(tmp_path, "train:\n  steps: 30\n  lr_g: 1e-3   # YAML 1.1 reads this as a string\n"
                           "loss: {f2r: 0.2}\nmodel.nf: 8\n")
    cfg = build_config_with_file("smoke", path, {"train.steps": 5})
    assert (cfg.train.steps, cfg.train.lr_g, cfg.loss.f2r, cfg.model.nf) == (5, 1e-3, 0.2, 8)
    assert read_config_file(_yaml(tmp_path, "")) == {}


@pytest.mark.parametrize("text,message", [
    ("train:\n  steps: 3\n   lr_g: 1\n", r"sweep.yaml:3:8: YAML syntax error: mapping values are not allowed here"),
    ("train:\n  steps: [1,\n", r"sweep.yaml:3:1: YAML syntax error"),
    ("train:\n  stepz: 3\n", r"sweep.yaml:2: unknown config key 'train.stepz'; valid keys in train: steps, "),
    ("trian:\n  steps: 3\n", r"sweep.yaml:2: unknown config key 'trian.steps': trian is not a section"),
    ("train:\n  steps: ten\n", r"sweep.yaml:2: train.steps: must be an integer, got 'ten'"),
    ("loss:\n  f2r: -1\n", r"sweep.yaml:2: loss.f2r: loss weight must be a finite number >= 0"),
    ("train:\n  steps: 3\ntrain:\n  steps: 4\n", r"sweep.yaml:4: duplicate key 'train.steps' \(first set on line 2\)"),
    ("train: [1, 2]\n", r"sweep.yaml:1: train is a config section: give its keys as a mapping"),
    ("- steps\n", r"sweep.yaml:1: the top level must be a mapping"),
])
def test_bad_yaml_names_file_line_and_problem(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        build_config_with_file("smoke", _yaml(tmp_path, text))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml: cannot read it"):
        build_config_with_file("smoke", tmp_path / "nope.yaml")


def test_cli_reports_bad_yaml_and_exits_2(tmp_path, capsys):
    main = _ablate_main()
    with pytest.raises(SystemExit) as code:
        main(["--preset", "smoke", "--config", str(_yaml(tmp_path, "train:\n  stepz: 3\n")), "--dry-run"])
    assert code.value.code == 2
    assert "error: " in (err := capsys.readouterr().err) and "sweep.yaml:2: unknown config key 'train.stepz'" in err


def _spec(cfg):
    return SweepSpec(sweep="test_bad", base=cfg, search="grid", grid=[{"row": "baseline", "seed": 0, "overrides": {}}])


def test_resume_without_a_saved_sweep_says_so_before_any_work(fresh_tiny_cfg, capsys):
    out = Path(fresh_tiny_cfg.output_dir)
    with pytest.raises(ResumeError, match=r"--resume: no saved sweep test_bad-grid-\w+ at .*nothing to resume"
                                          r".*Run without --resume to start it"):
        check_resumable(_spec(fresh_tiny_cfg))
    # a saved sweep of the same script under other settings is pointed out
    (out / "ray" / "tune" / "test_bad-grid-00000000").mkdir(parents=True)
    (out / "ray" / "tune" / "test_bad-grid-00000000" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(ResumeError, match=r"saved sweeps of test_bad there: test_bad-grid-00000000"):
        check_resumable(_spec(fresh_tiny_cfg))
    # through the CLI: exit 2 and the message, no DAMSM pre-training started
    main = _ablate_main()
    with pytest.raises(SystemExit) as code:
        main(["--preset", "smoke", "--resume", "--output-dir", str(out / "elsewhere"), "--seeds", "0",
              "--rows", "baseline"])
    assert code.value.code == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not (out / "elsewhere" / "cache").exists()


def test_unwritable_results_folder_fails_before_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"output_dir: cannot write results under .*a_file/out .*--output-dir"):
        check_output_dir(blocker / "out")


def test_failure_reason_finds_the_worker_error_and_classifies_divergence():
    import ray.train

    nan = FloatingPointError("[run] non-finite loss_d at step 3; try lower learning rates or loss weights")
    reason, diverged = failure_reason(ray.train.WorkerGroupError("rank 0 failed", {0: nan, 1: nan}))
    assert diverged and reason == f"FloatingPointError: {nan}"  # one line, not once per rank
    crash = RuntimeError("CUDA error: an illegal memory access was encountered")
    reason, diverged = failure_reason(ray.train.WorkerGroupError("rank 1 failed", {1: crash}))
    assert not diverged and reason == f"RuntimeError: {crash}"
    # Ray's wrappers carry the worker traceback as text: its last "Type: message" line is kept
    wrapped = RuntimeError("ray::RayTrainWorker.run()\nTraceback (most recent call last):\n  ...\n"
                           "FloatingPointError: [run] non-finite loss_g at step 1; try lower")
    assert failure_reason(wrapped) == ("FloatingPointError: [run] non-finite loss_g at step 1; try lower", True)


def test_nan_loss_in_process_raises_with_step_and_fix(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"train.lr_d": 1e30, "train.lr_g": 1e30, "train.steps": 3})
    with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+; try lower learning rates"):
        run_training(cfg, LocalEnv(tmp_path / "nan"), tiny_damsm, "nan")


def test_dataset_assets_vanishing_mid_run_fail_on_restart_with_the_path(tiny_cfg, tiny_damsm, tmp_path):
    """`shapes` is generated in memory, so the files a run depends on after its start are the
    DAMSM folder (encoders + vocabulary trained on the dataset), read again whenever a worker
    (re)starts. Deleted mid-run, the restarted worker names the folder and the fix."""
    damsm_copy = tmp_path / "damsm"
    shutil.copytree(tiny_damsm, damsm_copy)

    class Preempted(Exception):
        pass

    class DieAtStep2(LocalEnv):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if checkpoint_dir is not None and metrics.get("step") == 2:
                raise Preempted

    with pytest.raises(Preempted):
        run_training(tiny_cfg, DieAtStep2(tmp_path / "run"), str(damsm_copy), "vanish")
    shutil.rmtree(damsm_copy)
    with pytest.raises(FileNotFoundError, match=r"DAMSM folder .*damsm is incomplete \(missing .*\); "
                                                r"delete it and rerun, or run sweeps/pretrain_damsm.py"):
        run_training(tiny_cfg, LocalEnv(tmp_path / "run"), str(damsm_copy), "vanish")


def test_real_dataset_folder_vanishing_mid_run(tmp_path):
    """A real dataset is decoded once, before the trials, into the cache; a worker that (re)starts
    after `data_root` vanished reads that cache and says so. With the cache gone too, it fails
    with the dataset's expected tree."""
    from t2i_ray.config import DataConfig
    from t2i_ray.data import registry
    from t2i_ray.data.reading import DatasetError
    from tests.test_datasets import write_cub

    root = tmp_path / "birds"
    write_cub(root)
    data_cfg = DataConfig(dataset="cub", data_root=str(root), resolution=32)
    built = registry.build_source(data_cfg, "train", tmp_path / "cache", log=lambda s: None)
    shutil.rmtree(root)  # vanishes mid-run
    logs: list[str] = []
    again = registry.build_source(data_cfg, "train", tmp_path / "cache", log=logs.append)
    assert again.images().shape == built.images().shape
    assert "is not on this machine; using the cache the driver built" in logs[0]
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(DatasetError, match=r"birds.*is not a directory"):
        registry.build_source(data_cfg, "train", tmp_path / "cache", log=lambda s: None)


def test_swept_loss_weight_in_the_config_file_is_refused_not_silently_replaced(tmp_path, capsys):
    main = _ablate_main()
    with pytest.raises(SystemExit) as code:
        main(["--preset", "smoke", "--config", str(_yaml(tmp_path, "loss: {f2r: 0.3}\n")), "--dry-run"])
    assert code.value.code == 2
    assert "loss.f2r: set per ablation row by this sweep; pass --l2" in capsys.readouterr().err


# ------------------------------------------------ paths that exist but are not what the field needs


def _cli_cfg(*argv: str):
    from t2i_ray.sweep.cli import base_parser, config_from_args

    return config_from_args(base_parser("x").parse_args(["--preset", "smoke", *argv]))


def test_cache_dir_on_a_file_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^data.cache_dir: must be a folder \(it is created if missing\), "
                                          r"got a file .*a_file; point it at a folder"):
        _cli_cfg("--set", f"data.cache_dir={blocker}")
    with pytest.raises(ConfigError, match=r"^data.cache_dir: .*got a file .*a_file/sub "
                                          r"\(.*a_file on its path is a file\)"):
        _cli_cfg("--set", f"data.cache_dir={blocker / 'sub'}")
    assert _cli_cfg("--set", f"data.cache_dir={tmp_path / 'new' / 'cache'}").data.cache_dir  # created later


def _weights_files(tmp_path) -> dict[str, Path]:
    import torch

    files = {name: tmp_path / f"{name}.pth" for name in ("text", "empty", "list", "zip", "nested", "legacy")}
    files["text"].write_text("weights are on the other machine\n")
    files["empty"].write_bytes(b"")
    torch.save([torch.zeros(2)], files["list"])
    torch.save({"w": torch.zeros(2)}, files["zip"])
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, files["nested"])
    torch.save({"w": torch.zeros(2)}, files["legacy"], _use_new_zipfile_serialization=False)
    return files


@pytest.mark.parametrize("field,argv", [
    ("eval.inception_weights", ["--set", "eval.backbone=inception", "--inception-weights"]),
    ("damsm.inception_weights", ["--set", "damsm.image_backbone=inception", "--set"]),
])
def test_weights_that_are_not_a_state_dict_refuse_before_any_work(tmp_path, field, argv, monkeypatch):
    monkeypatch.delenv("T2I_INCEPTION_WEIGHTS", raising=False)
    files = _weights_files(tmp_path)

    def value(path):
        return str(path) if field.startswith("eval") else f"{field}={path}"

    for name, says in (("text", r"cannot be read by torch.load\(weights_only=True\) \(.*Error"),
                       ("empty", r"cannot be read by torch.load\(weights_only=True\)"),
                       ("list", r"holds a list, not a state dict of tensors")):
        with pytest.raises(ConfigError, match=rf"^{field}: .*{name}.pth {says}.*; it must be .*Inception"):
            _cli_cfg("--output-dir", str(tmp_path / "out"), *argv, value(files[name]))
    for name in ("zip", "nested", "legacy"):  # state dicts: accepted (their keys are checked on loading)
        _cli_cfg("--output-dir", str(tmp_path / "out"), *argv, value(files[name]))
    assert not (tmp_path / "out").exists()


def test_missing_weights_files_keep_their_messages(tmp_path, monkeypatch):
    from t2i_ray.eval.inception import missing_weights_message
    from t2i_ray.models.text import missing_inception_weights_message

    monkeypatch.delenv("T2I_INCEPTION_WEIGHTS", raising=False)
    gone = str(tmp_path / "gone.pth")
    with pytest.raises(ConfigError) as err:
        _cli_cfg("--set", "eval.backbone=inception", "--inception-weights", gone)
    assert str(err.value) == missing_weights_message(gone)
    # before: a FileNotFoundError in DAMSM pre-training, after the dataset was decoded
    with pytest.raises(ConfigError) as err:
        _cli_cfg("--set", "damsm.image_backbone=inception", "--set", f"damsm.inception_weights={gone}")
    assert str(err.value) == f"damsm.inception_weights: {missing_inception_weights_message(gone)}"


def test_weights_check_maps_zip_files_and_reads_legacy_ones(tmp_path, monkeypatch):
    """mmap keeps the check cheap for 100 MB files; legacy (non-zip) files cannot be mapped."""
    import torch

    from t2i_ray.weights import load_state_dict_file

    files = _weights_files(tmp_path)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    for name in ("zip", "legacy", "nested"):
        state = load_state_dict_file(files[name])
        assert list(state) == ["w"] and isinstance(state["w"], torch.Tensor)
    assert [(c["mmap"], c["weights_only"]) for c in calls] == [(True, True), (False, True), (True, True)]


def test_cli_prints_the_weights_error_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("T2I_INCEPTION_WEIGHTS", raising=False)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(SystemExit) as code:
        _ablate_main()(["--preset", "smoke", "--output-dir", str(tmp_path / "out"), "--set", "eval.backbone=inception",
                        "--inception-weights", str(text), "--dry-run"])
    assert code.value.code == 2
    assert f"error: eval.inception_weights: {text} cannot be read by torch.load" in capsys.readouterr().err


# ------------------------- pre-training that would cache untrained weights fails and caches nothing


def _nan_times(fn):
    """`fn` with its loss made NaN (still differentiable, as a diverged loss is)."""
    return lambda *a, **k: fn(*a, **k) * float("nan")


def test_damsm_pretraining_with_a_nan_loss_caches_nothing(fresh_tiny_cfg, monkeypatch):
    from t2i_ray.train import damsm

    monkeypatch.setattr(damsm, "damsm_loss", _nan_times(damsm.damsm_loss))
    with pytest.raises(FloatingPointError, match=r"^\[damsm\] non-finite loss \(nan\) at epoch 1, batch 1; "
                                                 r"try a lower damsm.lr"):
        damsm.ensure_damsm(fresh_tiny_cfg, log=lambda s: None)
    folder = damsm.damsm_dir(fresh_tiny_cfg)
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # no temporary folder either
    assert not damsm.damsm_is_cached(fresh_tiny_cfg)  # the next run trains again


def test_captioner_pretraining_with_a_nan_loss_or_no_step_caches_nothing(fresh_tiny_cfg, monkeypatch):
    import dataclasses

    from t2i_ray.train import captioner

    folder = captioner.captioner_dir(fresh_tiny_cfg)
    with monkeypatch.context() as m:
        m.setattr(captioner, "recaption_loss", _nan_times(captioner.recaption_loss))
        with pytest.raises(FloatingPointError, match=r"^\[captioner\] non-finite loss \(nan\) at epoch 1, batch 1"):
            captioner.ensure_captioner(fresh_tiny_cfg, log=lambda s: None)
    assert not folder.exists() and list(folder.parent.iterdir()) == []
    # A batch larger than the train split (validate refuses it; replace() skips validate, as a
    # config built elsewhere might): no step would run.
    big = dataclasses.replace(fresh_tiny_cfg, captioner=dataclasses.replace(fresh_tiny_cfg.captioner, batch_size=65))
    with pytest.raises(ConfigError, match=r"^captioner.batch_size: 65 is more than the 64 train images .* "
                                          r"at most 64"):
        captioner.ensure_captioner(big, log=lambda s: None)
    assert not captioner.captioner_dir(big).exists() and list(folder.parent.iterdir()) == []


def test_domain_evaluator_with_a_nan_loss_or_no_step_caches_nothing(fresh_tiny_cfg, monkeypatch):
    from t2i_ray.eval import features

    cache = Path(fresh_tiny_cfg.output_dir) / "cache"
    data, steps, pool = fresh_tiny_cfg.data, fresh_tiny_cfg.eval.evaluator_steps, fresh_tiny_cfg.eval.evaluator_images
    with monkeypatch.context() as m:
        m.setattr(features.F, "binary_cross_entropy_with_logits",
                  _nan_times(features.F.binary_cross_entropy_with_logits))
        with pytest.raises(FloatingPointError, match=r"domain evaluator 32x32: non-finite bce \(nan\) at step 1/20"):
            features.load_or_train_domain_evaluator(data, steps, pool, str(cache), log=lambda s: None)
    assert not cache.exists() or not any(cache.rglob("*"))
    with pytest.raises(ConfigError, match=r"^eval.evaluator_steps: .* got 0 step\(s\) on 128 image\(s\)"):
        features.load_or_train_domain_evaluator(data, 0, pool, str(cache), log=lambda s: None)
    assert not cache.exists() or not any(cache.rglob("*"))
