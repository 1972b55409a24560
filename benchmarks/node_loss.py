"""What a lost node costs a trial, on the simulated cluster of tests/simcluster.py (CPU only).

    python benchmarks/node_loss.py --checkpoint-every 20 50 100 --out benchmarks/results/node_loss.json

For each checkpoint_every C: one trial at the `local` preset's model and batch sizes (DF-GAN nf=16,
32x32, batch 32 per worker, 2 Train workers of 1 CPU, a report every 5 steps) on the simulated
cluster, with Ray Train's default controller poll (2 s). Once the trial has reported step 1.5*C
(half-way between two checkpoints: the mean place of a kill at a random time) its worker node is
killed (SIGKILL, no drain: a spot reclaim without notice); a node that joined earlier is free for
its workers, so no time is spent waiting for a new machine (on a cloud, add the minutes the
autoscaler needs to start one when none is free). From the timestamps of the training reports:

  t_step_s                 seconds per step before the kill (report intervals without a checkpoint)
  checkpoint_write_s       writing one of the run's checkpoints (torch.save of its state) and copying
                           it into a storage folder (Ray Train's persist to a local --storage-path),
                           median of 5, timed apart from the cluster: the report intervals are too
                           noisy on a shared machine to show a fraction of a second
  redone_steps             steps finished before the kill that the resumed run trains again
  kill_to_resumed_step_s   from the kill to the first step after the resume (detection, new worker
                           group, restore)
  lost_s                   what the loss cost the trial: kill_to_resumed_step_s + redone_steps * t_step_s
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.simcluster import run_in_subprocess  # noqa: E402

REPORT_EVERY = 5
LOCAL_SIZES = {"model.nf": 16, "train.batch_size": 32, "data.resolution": 32}


def figures(result: dict, checkpoint_every: int) -> dict:
    """The measurements of one run (module docstring) from its report timestamps."""
    ev = result["events"]
    run, t_kill = ev["first_run"], ev["kill"]
    reports = result["steps"][run]
    resumed = result["resumed"][run][0]
    pre = [(t, s) for t, s in reports if t <= t_kill]
    steps = [s for _, s in reports]
    restart = len(steps) - 1 - steps[::-1].index(resumed + REPORT_EVERY)
    post = reports[restart:]
    # rank 0 writes a report's curves line before it saves the checkpoint: the save falls into the
    # interval that starts at a checkpoint step, left out of the step time
    t_step = statistics.median((t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in zip(pre, pre[1:])
                               if s0 % checkpoint_every)
    t_last, s_last = pre[-1]
    at_kill = s_last + int((t_kill - t_last) / t_step)  # steps done when the node died (estimate)
    t_first, s_first = post[0]
    kill_to_step = t_first - t_kill - (s_first - resumed - 1) * t_step
    placed = next((u["t"] for u in result["usage"] if u["t"] > t_kill
                   and u["used"].get("joined", {}).get("CPU", 0) >= 2), None)
    return {
        "checkpoint_every": checkpoint_every, "killed_after_step": s_last, "resumed_from_step": resumed,
        "redone_steps": at_kill - resumed, "t_step_s": round(t_step, 3),
        **checkpoint_cost(Path(result["rows"][0]["checkpoint_path"])),
        "kill_to_workers_placed_s": None if placed is None else round(placed - t_kill, 1),
        "kill_to_resumed_step_s": round(kill_to_step, 1),
        "lost_s": round(kill_to_step + (at_kill - resumed) * t_step, 1),
        "row_status": [r["status"] for r in result["rows"]], "wall_s": result["wall_s"], "cpu_s": result["cpu_s"],
        "load_average": result.get("load_average"),
    }


def checkpoint_cost(folder: Path, repeats: int = 5) -> dict:
    """Size of a checkpoint folder and the time to write its state and persist it (median)."""
    import torch

    from t2i_ray.train import checkpoint as ckpt

    state = ckpt.load_state(folder)
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            (Path(tmp) / "ckpt").mkdir()
            torch.save(state, Path(tmp) / "ckpt" / ckpt.STATE_FILE)
            shutil.copytree(Path(tmp) / "ckpt", Path(tmp) / "storage")
            times.append(time.perf_counter() - start)
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {"checkpoint_mb": round(size / 2**20, 1), "checkpoint_write_s": round(statistics.median(times), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-every", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--out", default=None)
    p.add_argument("--keep", default=None, help="keep each run's folder (log, result.json) under this path")
    p.add_argument("--from", dest="source", default=None,
                   help="recompute the figures from the runs kept by an earlier --keep (no new runs)")
    args = p.parse_args()
    rows = []
    for c in args.checkpoint_every:
        if args.source:
            row = figures(json.loads((Path(args.source) / f"c{c}" / "result.json").read_text()), c)
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        if c % (2 * REPORT_EVERY):
            raise SystemExit(f"--checkpoint-every {c}: must be a multiple of {2 * REPORT_EVERY} (a report at 1.5x)")
        work = Path(args.keep) / f"c{c}" if args.keep else Path(tempfile.mkdtemp(prefix="node_loss"))
        result = run_in_subprocess(work, timeout=3600, steps=2 * c, checkpoint_every=c, report_every=REPORT_EVERY,
                                   kill_at_step=c + c // 2, seeds=[0], per_class=48, overrides=LOCAL_SIZES)
        if result["error"]:
            raise SystemExit(f"checkpoint_every={c}: the sweep failed: {result['error']}")
        row = figures(result, c)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| checkpoint_every | t_step (s) | checkpoint write (s) | redone steps | kill -> workers placed (s) "
          "| kill -> resumed step (s) | lost (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint_every']} | {r['t_step_s']:.2f} | {r['checkpoint_write_s']:.2f} | {r['redone_steps']} | "
              f"{r['kill_to_workers_placed_s']} | {r['kill_to_resumed_step_s']:.1f} | {r['lost_s']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "setup": {"model_sizes": LOCAL_SIZES, "train_workers": 2, "cpus_per_worker": 1, "report_every": REPORT_EVERY,
                      "kill": "SIGKILL of the worker node's processes once step 1.5*C is reported",
                      "train_poll_interval_s": "2 (Ray Train default)", "cpu_count": os.cpu_count(),
                      "platform": platform.platform()},
            "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
