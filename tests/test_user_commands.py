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
    return pd.concat([pd.read_parquet(p) for p in sorted((output_dir / "results").glob("*.parquet"))],
                     ignore_index=True)


def _check_sweep(proc: subprocess.CompletedProcess, output_dir: Path, rows: list[str]) -> pd.DataFrame:
    log = proc.stdout
    assert proc.returncode == 0, log[-6000:]
    assert not re.search(r"^Traceback", log, flags=re.M), log[-6000:]  # the driver's own errors
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
def test_main_command_runs_and_a_rerun_retrains_nothing(tmp_path, local_ray):
    out = tmp_path / "runs"
    first = run_script("ablate_losses", "--preset", "ci", "--output-dir", str(out), cwd=tmp_path)
    rows = ["baseline", "+DAMSM", "+F2R", "+F2F", "+F2R+F2F", "all"]
    table = _check_sweep(first, out, rows)
    assert "[damsm] no cached encoders" in first.stdout and "[captioner]" in first.stdout
    assert (out / "tables").is_dir() and any((out / "samples").glob("*.png"))

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


@pytest.mark.parametrize("script", ["ablate_losses", "ablate_embeddings", "compare_architectures"])
def test_every_sweep_refuses_a_swept_loss_weight_in_set(script, tmp_path):
    proc = run_script(script, "--preset", "ci", "--set", "loss.f2r=0.3", "--dry-run",
                      "--output-dir", str(tmp_path), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "error: loss.f2r: set per ablation row by this sweep; pass --l2" in proc.stdout
