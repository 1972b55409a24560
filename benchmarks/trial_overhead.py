"""Per-trial overhead of a sweep: from a trial's start to its first training step, and from its
last training step to its row in the results table, for 1 and 2 workers per trial.

    python benchmarks/trial_overhead.py --out benchmarks/results/trial_overhead.json

Real sweeps (`run_sweep`, a private local Ray instance, two trials: seeds 0 and 1) at a preset's
sizes (--preset, default `smoke`) with `--steps` steps and a report per step; per repeat, three settings alternate so
that a change in the machine's load hits all of them alike:
  - `1w_in_trial`: one worker per trial, trained inside its Tune trial (the default since
    `runs_in_trial`), two trials side by side as in the `local` preset;
  - `1w_worker_group`: the same trials each under a TorchTrainer (Ray Train worker group;
    `run_sweep(worker_group="always")`, what every trial did before);
  - `2w_worker_group`: two workers per trial (always a TorchTrainer), one trial at a time.
Times are taken from outside the trials, in this process (the sweep's driver): the trial's start
is when Tune starts it (the sweep's progress callback), a step's end is when its line appears in
the run's curves file (written at every report, before the report itself), the row's when its
parquet file appears (polled every 20 ms). Then per trial:
  start_to_first_step_s = first curves line - start - one median step (the step itself)
  last_step_to_row_s    = row written - last training line; it holds the final evaluation
                          (`eval_seconds` of the row), so after_training_overhead_s leaves it out
  overhead_s            = start_to_first_step_s + after_training_overhead_s
The evaluation and the steps cost the same under every setting; the DAMSM encoders and the
evaluator are trained once before the first timed sweep (in --output-dir, a temporary folder by
default).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

LOCAL_TRIAL_S = 105.6  # the `local` baseline row's wall time per trial (README.md, the default run)
SETTINGS = {  # name: (workers per trial, run_sweep's worker_group)
    "1w_in_trial": (1, "auto"),
    "1w_worker_group": (1, "always"),
    "2w_worker_group": (2, "always"),
}


class Watcher(threading.Thread):
    """Polls the curves files and results rows of the runs that started, timestamping what appears."""

    def __init__(self, paths, results_dir: Path, starts: dict[str, float]):
        super().__init__(daemon=True)
        self.paths, self.results_dir, self.starts = paths, results_dir, starts
        self.lines: dict[str, list[tuple[float, dict]]] = {}
        self.rows: dict[str, float] = {}
        self.offsets: dict[str, int] = {}
        self.stop = threading.Event()
        self.load: list[float] = []

    def poll(self) -> None:
        now = time.time()
        for run in list(self.starts):
            curve = self.paths.curve(run)
            if curve.is_file():
                with open(curve, "rb") as f:
                    f.seek(self.offsets.get(run, 0))
                    text = f.read()
                complete = text[:text.rfind(b"\n") + 1]
                self.offsets[run] = self.offsets.get(run, 0) + len(complete)
                for line in complete.decode().splitlines():
                    self.lines.setdefault(run, []).append((now, json.loads(line)))
            if run not in self.rows and (self.results_dir / f"{run}.parquet").is_file():
                self.rows[run] = now

    def run(self) -> None:
        last_load = 0.0
        while not self.stop.is_set():
            self.poll()
            if time.time() - last_load > 5:
                self.load.append(os.getloadavg()[0])
                last_load = time.time()
            time.sleep(0.02)


def _trial_times(run: str, start: float, lines: list[tuple[float, dict]], row_at: float, row: dict,
                 steps: int, batch: int, workers: int) -> dict:
    train = [(t, m) for t, m in lines if "images_per_s" in m]  # training reports (steps 1..steps)
    step_s = statistics.median(batch * workers / m["images_per_s"] for _, m in train[1:])
    first, last = train[0][0], train[-1][0]
    assert int(train[0][1]["step"]) == 1 and int(train[-1][1]["step"]) == steps, [m["step"] for _, m in train]
    to_first = first - start - step_s
    after = row_at - last
    eval_s = float(row["eval_seconds"])
    return {"run": run, "status": row["status"], "start_to_first_step_s": round(to_first, 2),
            "median_step_s": round(step_s, 3),
            "training_s": round(last - first + step_s, 2),
            "report_overhead_per_step_s": round((last - first) / (steps - 1) - step_s, 3),
            "last_step_to_row_s": round(after, 2), "eval_seconds": round(eval_s, 2),
            "after_training_overhead_s": round(after - eval_s, 2),
            "overhead_s": round(to_first + after - eval_s, 2), "row_wall_time_s": round(float(row["wall_time_s"]), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2, help="sweeps per setting (the settings alternate)")
    p.add_argument("--steps", type=int, default=12, help="training steps per trial (a report each)")
    p.add_argument("--preset", default="smoke", choices=["ci", "smoke", "local"],
                   help="sizes of the model, data and evaluation (the overhead hardly depends on them)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--output-dir", default=None, help="sweep outputs and cached encoders (default: temporary)")
    p.add_argument("--out", default="benchmarks/results/trial_overhead.json")
    args = p.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    import ray
    import torch

    from t2i_ray.config import apply_overrides, build_config
    from t2i_ray.paths import RunPaths
    from t2i_ray.sweep import store
    from t2i_ray.sweep.progress import TrialProgress
    from t2i_ray.sweep.run import SweepSpec, prepare_assets, run_sweep, trial_identity

    tmp = tempfile.TemporaryDirectory(prefix="t2i-overhead-")
    out = Path(args.output_dir or tmp.name).resolve()
    base = build_config(args.preset, {"output_dir": str(out), "train.steps": args.steps, "train.report_every": 1,
                                  "train.checkpoint_every": max(1, args.steps // 2)})
    prepare_assets(base, log=lambda s: None)  # once, before any timed sweep

    starts: dict[str, float] = {}
    on_start = TrialProgress.on_trial_start

    def timed_start(self, iteration, trials, trial, **info):
        starts[trial_identity(trial.config, trial.trial_id).run_name] = time.time()
        return on_start(self, iteration, trials, trial, **info)

    TrialProgress.on_trial_start = timed_start
    paths = RunPaths(out)
    watcher = Watcher(paths, store.results_dir(out), starts)
    watcher.start()
    load_before = os.getloadavg()[0]
    trials: list[dict] = []
    sweeps: list[dict] = []
    try:
        for repeat in range(args.repeats):
            for name in args.settings:
                workers, group = SETTINGS[name]
                cfg = apply_overrides(base, {"train.num_workers": workers})
                grid = [{"row": "baseline", "seed": s, "overrides": {}} for s in (0, 1)]
                spec = SweepSpec(sweep=f"overhead_{name}_r{repeat}", base=cfg, search="grid", grid=grid)
                t0, load0 = time.time(), os.getloadavg()[0]
                rows = run_sweep(spec, worker_group=group, log=lambda s: None)
                watcher.poll()
                sweeps.append({"setting": name, "repeat": repeat, "wall_s": round(time.time() - t0, 1),
                               "load_avg_1min_at_start": round(load0, 2)})
                for row in rows.to_dict("records"):
                    run = row["run_name"]
                    times = _trial_times(run, starts[run], watcher.lines[run], watcher.rows[run], row,
                                         args.steps, cfg.train.batch_size, workers)
                    trials.append({"setting": name, "repeat": repeat, "workers": workers, **times})
                    print(json.dumps(trials[-1]), flush=True)
    finally:
        watcher.stop.set()
        TrialProgress.on_trial_start = on_start
        ray.shutdown()
    summary = {}
    for name in args.settings:
        mine = [t for t in trials if t["setting"] == name]
        med = {k: round(statistics.median(t[k] for t in mine), 2)
               for k in ("start_to_first_step_s", "after_training_overhead_s", "overhead_s", "last_step_to_row_s",
                         "eval_seconds", "report_overhead_per_step_s", "median_step_s")}
        med["overhead_share_of_local_trial"] = round(med["overhead_s"] / LOCAL_TRIAL_S, 3)
        med["trials"] = len(mine)
        summary[name] = med
        print(name, med, flush=True)
    result = {
        "preset": args.preset, "steps": args.steps, "report_every": 1, "checkpoint_every": base.train.checkpoint_every,
        "trials_per_sweep": 2, "repeats": args.repeats, "settings": {k: SETTINGS[k] for k in args.settings},
        "statistic": "median over trials (both seeds x repeats)",
        "local_trial_s": LOCAL_TRIAL_S, "local_trial_source": "README.md, the default run's baseline row",
        "load_avg_1min_before": round(load_before, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2),
        "load_avg_1min_during": [round(x, 1) for x in watcher.load],
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "torch": torch.__version__, "ray": ray.__version__,
        "summary": summary, "sweeps": sweeps, "trials": trials}
    dest = Path(args.out)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1))
    tmp.cleanup()


if __name__ == "__main__":
    main()
