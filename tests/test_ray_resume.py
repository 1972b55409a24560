"""An interrupted sweep continues with `--resume` (one Ray test; ~1 minute on 2 cores).

A subprocess runs a 2-trial sweep (one trial at a time): a normal trial, then a trial whose
learning rates make its loss non-finite. The test kills the whole sweep (driver, its local Ray
cluster and trial processes, like a vanished head node) as soon as the first trial's row is in
the results table, then reruns it with resume=True. Expected: every trial's row exactly once, the
finished trial not rerun (its row, finished_at and wall time unchanged), and the diverged trial
recorded with status "error" and the reason while the sweep still completes.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

DRIVER = '''
import sys
sys.path.insert(0, {tests!r})
from conftest import tiny_overrides
from t2i_ray.config import build_config
from t2i_ray.sweep.run import SweepSpec, run_sweep

def spec(out):
    grid = [{{"row": "baseline", "seed": 0, "overrides": {{}}}},
            {{"row": "diverge", "seed": 0, "overrides": {{"train.lr_d": 1e30, "train.lr_g": 1e30}}}}]
    # max_failures=0: a diverged run fails again on every retry; the test wants it fast
    return SweepSpec(sweep="test_resume", base=build_config("smoke", tiny_overrides(out)),
                     search="grid", grid=grid, max_failures=0)

if __name__ == "__main__":
    out, mode = sys.argv[1], sys.argv[2]
    rows = run_sweep(spec(out), max_concurrent=1, resume=(mode == "resume"))
    print("ROWS", len(rows), flush=True)
'''


def _kill_session(session_id: int) -> None:
    """SIGKILL every process of the session this test created (the driver and what it spawned)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == session_id:
                    os.kill(int(entry), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.mark.timeout(400)
def test_killed_sweep_resumes_without_rerunning_or_duplicating(tiny_cfg, tiny_damsm, tmp_path):
    from t2i_ray.sweep import store

    out = Path(tiny_cfg.output_dir)  # the session's DAMSM encoders are cached here
    script = tmp_path / "sweep_driver.py"
    script.write_text(DRIVER.format(tests=str(REPO / "tests")))
    sys.path.insert(0, str(tmp_path))
    try:
        import sweep_driver
    finally:
        sys.path.remove(str(tmp_path))
    name = sweep_driver.spec(str(out)).name
    first_row = store.results_dir(out) / f"{name}-baseline-s0.parquet"
    # RAY_ADDRESS=local: a Ray cluster of its own, even when another one runs on this machine
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "1", "RAY_ADDRESS": "local"}

    log1 = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), str(out), "new"], cwd=tmp_path, env=env,
                            stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not first_row.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first_row.exists(), (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _kill_session(proc.pid)  # the driver, its Ray cluster and trial workers, at once
        proc.wait()
        log1.close()
    before = store.load_results(out, sweep=name)
    assert list(before["row"]) == ["baseline"], "the kill came too late to interrupt the sweep"
    first = before.iloc[0]

    again = subprocess.Popen([sys.executable, str(script), str(out), "resume"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log, _ = again.communicate(timeout=300)
    finally:
        _kill_session(again.pid)  # nothing is left after a clean exit; after a timeout, all of it
        again.wait()
    assert again.returncode == 0, log[-4000:]
    assert "resuming" in log and "ROWS 2" in log

    rows = store.load_results(out, sweep=name).set_index("row")
    assert sorted(rows.index) == ["baseline", "diverge"] and rows["run_name"].is_unique
    ok = rows.loc["baseline"]
    assert ok["status"] == "ok"
    assert ok["finished_at"] == first["finished_at"] and ok["wall_time_s"] == first["wall_time_s"]
    assert ok["fid"] == first["fid"]
    bad = rows.loc["diverge"]
    assert bad["status"] == "error"
    assert bad["error"].startswith("FloatingPointError:") and "non-finite" in bad["error"], bad["error"]
    assert "FAILED: diverge seed 0: the loss became non-finite" in log
