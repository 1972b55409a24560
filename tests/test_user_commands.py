"""The scripts in sweeps/ run as a user runs them: `python sweeps/<script>.py` in a subprocess, from
a fresh output folder, with the default logging, on the `ci` preset (every stage runs for real at
sizes that finish in seconds). While they run, another Ray instance is up on the machine (the
session's `local_ray`), as when a user runs two sweeps at once: a sweep must start its own.

A test that passed the sweep a `log=lambda` once hid a crash of the main command for every new user
(Tune could not pickle `print` once Ray had replaced it); nothing here hooks into the code.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"


def run_script(name: str, *args: str, cwd: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    """`python sweeps/<name>.py args...` with the user's environment. PYTHONPATH names this checkout,
    which is what the README's editable install gives a user (an install made from another checkout
    of the repository would otherwise be imported)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, str(SWEEPS / f"{name}.py"), *args], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def _rows(output_dir: Path) -> pd.DataFrame:
    """The sweep's own rows (re-evaluations, added by sweeps/evaluate.py, left out)."""
    table = pd.concat([pd.read_parquet(p) for p in sorted((output_dir / "results").glob("*.parquet"))],
                      ignore_index=True)
    return table[table["reevaluation_of"].fillna("") == ""].reset_index(drop=True)


@pytest.fixture(scope="session")
def main_sweep(tmp_path_factory, local_ray):
    """The main command, `python sweeps/ablate_losses.py --preset ci`, run once from a fresh folder:
    (working directory, output folder, the finished process). Later tests sample from its runs."""
    cwd = tmp_path_factory.mktemp("main")
    out = cwd / "runs"
    return cwd, out, run_script("ablate_losses", "--preset", "ci", "--output-dir", str(out), cwd=cwd)


def _check_sweep(proc: subprocess.CompletedProcess, output_dir: Path, rows: list[str]) -> pd.DataFrame:
    log = proc.stdout
    assert proc.returncode == 0, log[-6000:]
    assert not re.search(r"^Traceback", log, flags=re.M), log[-6000:]  # the driver's own errors
    assert "Checkpoint successfully created" not in log  # Ray's INFO line per checkpoint, off unless -v
    for row in rows:  # the printed table: one line per row, one seed each on `ci`
        assert f"| {row} | 1 | " in log, log[-3000:]
    table = _rows(output_dir)
    assert sorted(table["row"]) == sorted(rows) and table["run_name"].is_unique
    assert (table["status"] == "ok").all(), table["error"].tolist()
    for col in ("fid", "r_precision", "kid", "wall_time_s"):
        assert table[col].map(math.isfinite).all(), (col, table[col].tolist())
    assert set(table["config.train.steps"]) == {4}  # the ci preset, nothing else
    return table


@pytest.mark.timeout(900)
def test_main_command_runs_and_a_rerun_retrains_nothing(main_sweep):
    tmp_path, out, first = main_sweep
    rows = ["SSAGAN", "SSAGAN + CL (F2F)", "SSAGAN + CL (R2F+F2F)", "SSAGAN + CL (R2F+F2F+R)"]  # Table 1's
    table = _check_sweep(first, out, rows)
    assert set(table["config.model.arch"]) == {"ssagan"}
    assert "\nLoss ablation (seed paper 001, Table 1 rows) (ablate_losses-grid-" in first.stdout  # its title
    assert "[damsm] no cached encoders" in first.stdout and "[captioner]" in first.stdout
    assert (out / "tables").is_dir() and any((out / "samples").glob("*.png"))
    assert "Experiment state snapshotting" not in first.stdout  # Tune's warning on expected snapshots

    again = run_script("ablate_losses", "--preset", "ci", "--output-dir", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-6000:]
    assert "[sweep] resuming" in again.stdout
    assert "[damsm] using cached encoders" in again.stdout and "pre-training" not in again.stdout
    assert "step 1/4" not in again.stdout and "step 4/4" not in again.stdout  # nothing trained
    after = _rows(out)
    assert len(after) == len(table)
    assert sorted(after["finished_at"]) == sorted(table["finished_at"])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("script, rows", [
    ("ablate_embeddings", ["pretrained", "shared", "dual"]),
    ("compare_architectures", ["dfgan", "ssagan", "attngan_style"]),
    ("ablate_diffusion", ["joint", "image-only"]),
])
def test_sibling_sweeps_run_with_their_defaults(script, rows, tmp_path, local_ray):
    out = tmp_path / "runs"
    proc = run_script(script, "--preset", "ci", "--output-dir", str(out), cwd=tmp_path)
    table = _check_sweep(proc, out, rows)
    assert (table["sweep"].str.startswith(f"{script}-grid-")).all()
    if script == "ablate_diffusion":  # the joint model also wrote its image | layout and outpainting grids
        joint = table.set_index("row").loc["joint"]
        assert Path(joint["layout_samples_path"]).is_file() and Path(joint["outpaint_samples_path"]).is_file()
        assert (table["config.model.method"] == "diffusion").all()
        # sampling new captions from it writes each sample's layout beside it, at the asked guidance
        (tmp_path / "captions.txt").write_text("a red circle above a blue square\n")
        sample = run_script("sample", "--run", joint["run_name"], "--captions", str(tmp_path / "captions.txt"),
                            "--n-per-caption", "2", "--guidance-scale", "1.5", "--output-dir", str(out), cwd=tmp_path,
                            timeout=300)
        assert sample.returncode == 0, sample.stdout[-4000:]
        folder = out / "samples" / joint["run_name"] / "captions-seed0-g1.5"
        assert {p.name for p in folder.iterdir()} == {"grid.png", "samples.json"} | {
            f"caption00_sample{k}{kind}.png" for k in (0, 1) for kind in ("", "_layout")}
        meta = json.loads((folder / "samples.json").read_text())
        assert meta["guidance_scale"] == 1.5 and meta["layout_classes"][0] == "background"


@pytest.mark.parametrize("script, folder, keys", [
    ("pretrain_damsm", "damsm", ("final_loss", "real_r_precision")),
    ("pretrain_captioner", "captioner", ("final_loss", "test_token_accuracy", "test_perplexity")),
])
def test_pretraining_scripts_run_and_cache(script, folder, keys, tmp_path):
    out = tmp_path / "runs"
    proc = run_script(script, "--preset", "ci", "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    start = proc.stdout.index("{")
    meta = json.loads(proc.stdout[start:proc.stdout.index("\n}", start) + 2])
    assert all(math.isfinite(meta[k]) for k in keys), meta
    cached = [p for p in (out / "cache" / folder).iterdir()]
    assert len(cached) == 1 and (cached[0] / "meta.json").is_file()
    assert str(cached[0]) in proc.stdout
    again = run_script(script, "--preset", "ci", "--output-dir", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "using cached" in again.stdout, again.stdout[-3000:]


def test_dry_run_of_every_sweep_lists_trials_without_starting_ray(tmp_path):
    for script in ("ablate_losses", "ablate_embeddings", "compare_architectures", "ablate_diffusion"):
        proc = run_script(script, "--preset", "ci", "--output-dir", str(tmp_path / "runs"), "--dry-run",
                          cwd=tmp_path, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert "[dry-run] experiment" in proc.stdout and "seed 0" in proc.stdout
        assert "Started a local Ray instance" not in proc.stdout
    assert not (tmp_path / "runs" / "results").exists()


def test_the_main_commands_default_is_the_laptop_design(tmp_path):
    """`python sweeps/ablate_losses.py` as the README writes it (no argument; --dry-run here): the
    laptop design (one object per image, 3x the preset's rates, SSA-GAN without and with its DAMSM
    term x 3 seeds; --table cub: Table 1's SSAGAN and its CL row); a real dataset or another preset
    keeps Table 1's four SSA-GAN rows and the preset's settings."""
    proc = run_script("ablate_losses", "--dry-run", cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    out = proc.stdout
    assert "dataset shapes, 32x32, 1750 steps, batch 32" in out
    assert "data.max_objects=1" in out and "train.lr_g=0.0012" in out and "train.lr_d=0.0024" in out
    assert "train.amp=native" in out and "model.arch=ssagan" in out
    trials = re.findall(r"^  (\S+)\s+seed (\d)  \{'loss.damsm': ([0-9.]+), 'loss.f2r': 0.0, 'loss.f2f': 0.0, "
                        r"'loss.recap': 0.0\}$", out, flags=re.M)
    assert trials == [("baseline", s, "0.0") for s in "012"] + [("+DAMSM", s, "0.05") for s in "012"], out
    assert str(tmp_path / "t2i_runs") in out  # the default output folder, in the working directory
    cub = run_script("ablate_losses", "--dry-run", "--table", "cub", cwd=tmp_path, timeout=120)
    trials = re.findall(r"^  (SSAGAN.*?)\s+seed (\d)", cub.stdout, flags=re.M)
    assert trials == [(row, s) for row in ("SSAGAN", "SSAGAN + CL (R2F+F2F)") for s in "012"], cub.stdout[-3000:]
    named = run_script("ablate_losses", "--dry-run", "--rows", "SSAGAN", "--seeds", "4", cwd=tmp_path, timeout=120)
    assert re.findall(r"^  (SSAGAN.*?)\s+seed (\d)", named.stdout, flags=re.M) == [("SSAGAN", "4")]
    # the user's settings win over the design's; other presets are unchanged
    mine = run_script("ablate_losses", "--dry-run", "--steps", "300", "--set", "data.max_objects=3",
                      "--set", "train.lr_g=4e-4", cwd=tmp_path, timeout=120)
    assert "300 steps" in mine.stdout and "max_objects" not in mine.stdout and "train.lr_g=0.0004" in mine.stdout
    smoke = run_script("ablate_losses", "--preset", "smoke", "--dry-run", cwd=tmp_path, timeout=120)
    assert smoke.returncode == 0 and "max_objects" not in smoke.stdout, smoke.stdout[-3000:]
    assert "SSAGAN + CL (R2F+F2F+R) seed 0" in smoke.stdout and "SSAGAN + CL (F2F)" in smoke.stdout
    assert not (tmp_path / "t2i_runs" / "results").exists()


@pytest.mark.parametrize("script", ["ablate_losses", "ablate_embeddings", "compare_architectures"])
def test_every_sweep_refuses_a_swept_loss_weight_in_set(script, tmp_path):
    proc = run_script(script, "--preset", "ci", "--set", "loss.f2r=0.3", "--dry-run",
                      "--output-dir", str(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "error: loss.f2r: set per ablation row by this sweep; pass --l2" in proc.stdout


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.timeout(900)
def test_sample_script_draws_new_captions_from_a_finished_run(main_sweep, tmp_path):
    cwd, out, _ = main_sweep
    table = _rows(out)
    best = table.loc[table["fid"].idxmin(), "run_name"]
    captions = tmp_path / "captions.txt"
    captions.write_text("a red circle left of a blue square\n# skipped\n\na small green zebra triangle\n")
    first = run_script("sample", "--best", "fid", "--captions", str(captions), "--n-per-caption", "2", "--seed", "3",
                       "--output-dir", str(out), "--out", str(tmp_path / "a"), cwd=cwd, timeout=300)
    assert first.returncode == 0, first.stdout[-4000:]
    assert "warning: caption 2 'a small green zebra triangle': unknown word(s) dropped: zebra" in first.stdout
    assert f"[sample] run {best} (fid=" in first.stdout  # --best fid: the lowest final FID of the sweep
    written = _files(tmp_path / "a")
    samples = {f"caption{c:02d}_sample{k}.png" for c in (0, 1) for k in (0, 1)}
    assert set(written) == {"grid.png", "samples.json"} | samples
    from PIL import Image

    assert Image.open(tmp_path / "a" / "caption00_sample0.png").size == (32, 32)
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.width > 2 * 128 and grid.height > 2 * 128  # label column + 2 upscaled samples per caption row
    meta = json.loads(written["samples.json"])
    assert [c["caption"] for c in meta["captions"]] == ["a red circle left of a blue square",
                                                        "a small green zebra triangle"]
    assert meta["captions"][1]["unknown_words"] == ["zebra"] and meta["run_name"] == best and meta["seed"] == 3
    # the same run (named this time), captions and seed: the same images, byte for byte
    again = run_script("sample", "--run", best, "--captions", str(captions), "--n-per-caption", "2", "--seed", "3",
                       "--output-dir", str(out), "--out", str(tmp_path / "b"), "--device", "cpu", cwd=cwd, timeout=300)
    assert again.returncode == 0, again.stdout[-4000:]
    same = _files(tmp_path / "b")
    assert all(same[name] == written[name] for name in samples)
    # --strict refuses the unknown word before loading anything
    strict = run_script("sample", "--run", best, "--captions", str(captions), "--strict", "--output-dir", str(out),
                        "--out", str(tmp_path / "c"), cwd=cwd, timeout=120)
    assert strict.returncode == 2 and "error: --strict: words not in the run's vocabulary" in strict.stdout
    assert "'a small green zebra triangle': zebra" in strict.stdout and not (tmp_path / "c").exists()
    # (unknown run names, a folder without results, ...: tests/test_sampling.py, in-process)


@pytest.mark.timeout(900)
def test_evaluate_script_adds_a_reevaluation_row_and_keeps_the_original(main_sweep, tmp_path):
    cwd, out, _ = main_sweep
    run = _rows(out).set_index("row").loc["SSAGAN", "run_name"]
    original = out / "results" / f"{run}.parquet"
    before = original.read_bytes()
    proc = run_script("evaluate", "--run", run, "--set", "eval.num_images=32", "--output-dir", str(out), cwd=cwd,
                      timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert original.read_bytes() == before  # the run's own row is never touched
    table = pd.concat([pd.read_parquet(p) for p in sorted((out / "results").glob("*.parquet"))], ignore_index=True)
    new = table[table["reevaluation_of"] == run]
    assert len(new) == 1, table[["run_name", "reevaluation_of"]]
    new, old = new.iloc[0], table.set_index("run_name").loc[run]
    assert new["run_name"].startswith(f"{run}-reeval-") and new["sweep"].startswith(f"{old['sweep']}-reeval-")
    assert new["fid_num_fake"] == 32 and new["config.eval.num_images"] == 32 and old["fid_num_fake"] == 64
    assert math.isfinite(new["fid"]) and new["checkpoint_path"] == old["checkpoint_path"]
    assert all(new[c] == old[c] for c in new.index if c.startswith("config.") and not c.startswith("config.eval."))
    assert f"new row {new['run_name']}" in proc.stdout
    # (a --set outside eval.* is refused: tests/test_sampling.py, in-process)
    # Tune's best checkpoint is the trial's own evaluated checkpoint (reported with its metrics)
    from ray.tune import ExperimentAnalysis

    sweep = old["sweep"]
    analysis = ExperimentAnalysis(str(out / "ray" / "tune" / sweep), default_metric="fid", default_mode="min")
    best = analysis.best_checkpoint
    rows = _rows(out)
    lowest = rows.loc[rows["fid"].idxmin()]
    assert json.loads((Path(best.path) / "config.json").read_text())["name"] == lowest["row"]
    assert (Path(best.path) / "state.pt").is_file()
