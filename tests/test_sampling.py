"""Sampling and re-evaluation of trained runs in-process: a checkpoint restores exactly for every
architecture, text-embedding mode and method; the best checkpoint kept by eval.every; captions as a
run reads them; finding runs in the results table and the errors when they cannot be found.
(tests/test_user_commands.py runs sweeps/sample.py and sweeps/evaluate.py on a finished sweep.)"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from t2i_ray.config import ConfigError, apply_overrides
from t2i_ray.eval.evaluate import PeriodicEval, evaluate_method
from t2i_ray.eval.samples import encode_captions, sample_captions
from t2i_ray.sweep import store
from t2i_ray.sweep.runs import RunError, best_run, check_eval_overrides, checkpoint_location, find_run
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.loop import LocalEnv, run_training
from t2i_ray.train.method import load_trained
from tests.test_architectures import KillAfterCheckpoint, Killed  # a run killed right after its step-2 checkpoint
from tests.test_sweep_scripts import _script  # sweeps/<name>.py as a module


ablate_diffusion, evaluate_script, sample_script = (_script(n) for n in ("ablate_diffusion", "evaluate", "sample"))


@pytest.mark.parametrize("overrides", [
    {"model.arch": "dfgan", "model.text_embedding": "shared"},
    {"model.arch": "ssagan", "model.text_embedding": "dual", "loss.recap": 1.0},  # no captioner needed to sample
    {"model.arch": "attngan_style"},  # noise inputs from torch's global RNG
    {**ablate_diffusion.PRESET_DEFAULTS["ci"], "model.method": "diffusion",  # joint: images and layouts
     "eval.segmenter_steps": 20, "eval.segmenter_images": 256, "diffusion.outpaint_images": 8,
     "diffusion.outpaint_resample": 1, "eval.num_images": 16},
], ids=["dfgan-shared", "ssagan-dual-recap", "attngan_style-pretrained", "diffusion-joint"])
def test_a_checkpoint_alone_restores_the_trained_model_exactly(tiny_cfg, tiny_damsm, tmp_path, overrides):
    """Re-scoring the final checkpoint with the run's own eval settings gives the final evaluation's
    numbers to the last digit: the checkpoint folder (config.json, state.pt, vocab.json and the
    DAMSM folder its assets.json names) rebuilds exactly the models that were evaluated."""
    captioner = None
    cfg = apply_overrides(tiny_cfg, {**overrides, "train.steps": 2})
    if cfg.loss.recap > 0:
        from t2i_ray.train.captioner import ensure_captioner

        captioner = str(ensure_captioner(cfg, log=lambda s: None))
    final = run_training(cfg, LocalEnv(tmp_path / "run"), tiny_damsm, "trained", captioner)
    files = json.loads((tmp_path / "run" / "checkpoint" / ckpt.ASSETS_FILE).read_text())
    assert files["damsm_path"] == str(Path(tiny_damsm).resolve())
    trained = load_trained(tmp_path / "run" / "checkpoint")  # nothing but the folder
    assert trained.step == 2 and trained.cfg == cfg
    again = evaluate_method(trained.cfg, trained.method, trained.damsm, "restored")
    keys = ["fid", "kid", "r_precision"] + (["layout_miou", "fsd"] if cfg.model.method == "diffusion" else [])
    assert {k: again[k] for k in keys} == {k: final[k] for k in keys}
    # samples for new captions: a caption's are a function of the seed and its text (not of the
    # other captions), and another seed draws others
    captions = encode_captions(["a red circle", "a blue square above a green triangle"], trained.damsm.vocab,
                               cfg.data.words_num)
    a = sample_captions(trained.method, captions, 2, seed=5, batch_size=64, words_num=cfg.data.words_num)
    b = sample_captions(trained.method, captions[1:], 2, seed=5, batch_size=64, words_num=cfg.data.words_num)
    c = sample_captions(trained.method, captions, 2, seed=6, batch_size=64, words_num=cfg.data.words_num)
    assert a[0].shape == (4, 3, 32, 32) and torch.equal(a[0][2:], b[0]) and not torch.equal(a[0], c[0])
    assert (a[1] is not None) == (cfg.model.method == "diffusion")
    if a[1] is not None:
        assert a[1].shape == (4, 32, 32) and torch.equal(a[1][2:], b[1])


def test_best_checkpoint_is_kept_beside_the_last_without_changing_training(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"model.arch": "attngan_style"})  # global-RNG noise: the strictest case
    every = apply_overrides(cfg, {"eval.every": 2, "eval.every_num_images": 16, "eval.r_precision_folds": 2})
    run_training(cfg, LocalEnv(tmp_path / "off"), tiny_damsm, "off")
    env = LocalEnv(tmp_path / "on")
    final = run_training(every, env, tiny_damsm, "on")
    off, on = ckpt.load_state(tmp_path / "off" / "checkpoint"), ckpt.load_state(tmp_path / "on" / "checkpoint")
    for name in off["modules"]:  # evaluating during training draws nothing from the training's RNG
        for key, value in off["modules"][name].items():
            assert torch.equal(value, on["modules"][name][key]), f"{name}.{key} differs with eval.every"
    scores = {r["step"]: r["eval_fid"] for r in env.reports if "eval_fid" in r}
    assert sorted(scores) == [2, 4]  # every 2 steps and the last
    best_step = min(scores, key=lambda s: (scores[s], s))
    assert final["best_step"] == best_step and final["best_fid"] == scores[best_step]
    assert final["best_num_images"] == 16 and final["best_metric"] == "fid"
    assert final["best_checkpoint_path"] == str(tmp_path / "on" / "best")
    assert math.isfinite(final["fid"]) and final["fid_num_fake"] == cfg.eval.num_images  # the full final evaluation
    kept = ckpt.load_state(tmp_path / "on" / "best")
    assert kept["step"] == best_step and kept["best"]["fid"] == final["best_fid"]
    # the kept checkpoint scores what was recorded for it
    trained = load_trained(tmp_path / "on" / "best")
    rescored, _ = PeriodicEval(trained.cfg, trained.damsm, trained.method)(best_step)
    assert rescored["eval_fid"] == final["best_fid"]
    # killed after the step-2 checkpoint and resumed: the same best record at the end
    with pytest.raises(Killed):
        run_training(every, KillAfterCheckpoint(tmp_path / "resumed"), tiny_damsm, "resumed")
    resumed = run_training(every, LocalEnv(tmp_path / "resumed"), tiny_damsm, "resumed")
    assert {k: v for k, v in resumed.items() if k.startswith("best_") and k != "best_checkpoint_path"} == \
        {k: v for k, v in final.items() if k.startswith("best_") and k != "best_checkpoint_path"}


def test_eval_every_settings_are_validated(tiny_cfg):
    with pytest.raises(ConfigError, match=r"^eval.every: must be >= 0"):
        apply_overrides(tiny_cfg, {"eval.every": -1})
    with pytest.raises(ConfigError, match=r"^eval.best_metric: must be one of fid, r_precision"):
        apply_overrides(tiny_cfg, {"eval.best_metric": "kid"})
    with pytest.raises(ConfigError, match=r"^eval.every_num_images: must be >= 2 and >= eval.r_precision_folds"):
        apply_overrides(tiny_cfg, {"eval.every": 10, "eval.every_num_images": 1})
    from t2i_ray.config import build_config

    assert build_config("ci").eval.every == 0 and build_config("local").eval.every == 100


def test_captions_are_read_as_the_run_reads_them(tiny_damsm):
    from t2i_ray.train.damsm import load_damsm

    vocab = load_damsm(tiny_damsm).vocab
    assert vocab.unknown_words("A red ZEBRA, a zebra and a unicorn") == ["zebra", "unicorn"]
    [known, long] = encode_captions(["a red zebra circle", "a red circle " * 4], vocab, words_num=5)
    assert known.ids == vocab.encode("a red circle", 5) and known.unknown == ["zebra"] and known.cut == []
    assert len(long.ids) == 5 and long.cut == ["circle", "a", "red", "circle", "a", "red", "circle"]


# ---- finding runs in the results table -------------------------------------------------------------

def _row(out, name, sweep, fid, status="ok", **extra):
    row = store.make_row(run_name=name, sweep=sweep, row=name, seed=0, status=status, error=None, wall_time_s=1.0,
                         config={"x": 1}, metrics={"fid": fid, "fid_backbone": "domain-v2-abc", "fid_num_fake": 64,
                                                   "fid_real_set": "shapes/test", "fid_resize": "none"},
                         version="test", extra={"checkpoint_path": str(out / "gone" / name / "checkpoint_1"),
                                                "reevaluation_of": "", **extra})
    store.write_row(out, row)


def test_runs_are_found_by_name_or_best_metric_with_clear_errors(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(RunError, match=f"no results table at {tmp_path / 'runs' / 'results'}"):
        find_run(out, "a")
    _row(out, "a", "s1", 30.0)
    _row(out, "b", "s1", 20.0)
    _row(out, "c", "s2", 10.0, status="error")
    _row(out, "b-reeval-1", "s1-reeval-1", 5.0, reevaluation_of="b")
    with pytest.raises(RunError, match=r"no run named 'z' in .*; runs there: a, b, b-reeval-1, c"):
        find_run(out, "z")
    row, why = best_run(out, "fid")  # finished runs only, re-evaluations left out
    assert row["run_name"] == "b" and why.startswith("fid=20, the lowest of 2 finished run(s)")
    assert best_run(out, "fid", sweep="s1-reeval-1")[0]["run_name"] == "b-reeval-1"
    with pytest.raises(RunError, match="--sweep: no sweep named 'nope' in the results table; "
                                       "sweeps there: s1, s1-reeval-1, s2"):
        best_run(out, "fid", sweep="nope")
    _row(out, "d", "s3", 1.0, fid_num_fake=30000)
    with pytest.raises(RunError, match=r"measured fid differently \(fid_num_fake: 30000, 64\).*"
                                       r"pick one sweep with --sweep"):
        best_run(out, "fid")
    with pytest.raises(RunError, match=r"the last checkpoint of run a is missing: no state.pt in .*gone/a/checkpoint_1 "
                                       r"or .*runs/ray/train/a/checkpoint_1"):
        checkpoint_location(find_run(out, "a"), out)
    (out / "ray" / "train" / "a" / "checkpoint_1").mkdir(parents=True)
    (out / "ray" / "train" / "a" / "checkpoint_1" / "state.pt").write_bytes(b"")
    # a folder copied from another machine: the checkpoint is found under this output folder's ray/train
    assert checkpoint_location(find_run(out, "a"), out) == str(out.resolve() / "ray" / "train" / "a" / "checkpoint_1")
    # a one-worker trial's checkpoint lives in Tune's trial folder: found under this folder's ray/tune
    moved = out / "ray" / "tune" / "exp" / "trial_1" / "checkpoint_000002"
    _row(out, "e", "s4", 40.0, checkpoint_path=str(tmp_path / "elsewhere" / "exp" / "trial_1" / "checkpoint_000002"))
    with pytest.raises(RunError, match=r"no state.pt in .*elsewhere/exp/trial_1/checkpoint_000002 or "
                                       r".*runs/ray/tune/exp/trial_1/checkpoint_000002.*ray/tune/ holds it"):
        checkpoint_location(find_run(out, "e"), out)
    moved.mkdir(parents=True)
    (moved / "state.pt").write_bytes(b"")
    assert checkpoint_location(find_run(out, "e"), out) == str(out.resolve() / "ray" / "tune" / "exp" / "trial_1"
                                                                / "checkpoint_000002")
    with pytest.raises(RunError, match=r"run a kept no best checkpoint \(eval.every=0.*--checkpoint last"):
        checkpoint_location(find_run(out, "a"), out, which="best")
    check_eval_overrides({"eval.num_images": 8, "eval.protocol": "cub"})
    with pytest.raises(ConfigError, match=r"^--set model.nf: evaluate.py re-scores a trained checkpoint"):
        check_eval_overrides({"eval.num_images": 8, "model.nf": 8})


def test_sample_script_errors_name_what_exists(tmp_path, capsys):
    out = tmp_path / "runs"
    captions = tmp_path / "caps.txt"
    captions.write_text("a red circle\n")

    def error(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            sample_script.main([*argv, "--output-dir", str(out)])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert f"error: no results table at {out / 'results'}" in error("--run", "a", "--captions", str(captions))
    _row(out, "a", "s1", 30.0)
    assert "error: no run named 'b' in" in error("--run", "b", "--captions", str(captions))
    assert "error: --captions: no file at" in error("--run", "a", "--captions", str(tmp_path / "none.txt"))
    assert "error: --n-per-caption: must be >= 1, got 0" in error("--run", "a", "--captions", str(captions),
                                                                   "--n-per-caption", "0")


def test_evaluate_script_changes_only_eval_keys(tmp_path, capsys):
    out = tmp_path / "runs"
    _row(out, "a", "s1", 30.0)
    for argv, message in ((["--set", "train.steps=8"], "error: --set train.steps: evaluate.py re-scores a trained "
                                                       "checkpoint and changes only eval.* keys"),
                          (["--run", "b"], "error: no run named 'b' in")):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_script.main(["--run", "a", *argv, "--output-dir", str(out)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_checkpoints_are_written_to_and_read_from_storage_uris(tmp_path):
    """The best checkpoint on a cluster goes to --storage-path (s3://, gs://) through pyarrow, and a
    sampler reads a checkpoint from there; file:// exercises the same code on this machine."""
    module = torch.nn.Linear(3, 2)

    def write(folder):
        return ckpt.save_checkpoint(folder, step=7, modules={"m": module}, optimizers={}, rng={}, config={"a": 1},
                                    extra_state={"best": {"step": 7, "fid": 1.5}})

    uri = f"file://{tmp_path / 'storage' / 'run' / 'best'}"
    ckpt.write_to(uri, write)
    ckpt.write_to(uri, write)  # a second best replaces the first
    with ckpt.local_dir(uri) as folder:
        state = ckpt.load_state(folder)
        assert json.loads((folder / "config.json").read_text()) == {"a": 1}
    assert state["step"] == 7 and state["best"] == {"step": 7, "fid": 1.5}
    assert torch.equal(state["modules"]["m"]["weight"], module.weight.detach())
    with pytest.raises(FileNotFoundError, match="no checkpoint at file://.*/nothing \\(missing state.pt\\)"):
        with ckpt.local_dir(f"file://{tmp_path / 'nothing'}"):
            pass
