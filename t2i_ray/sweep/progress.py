"""The sweep's console progress: one status line per trial event (started, done, failed, stopped
early), each with the trials running / done / failed, the elapsed time and an estimated time left.

    [sweep 0:02:13] 2 running, 3/12 done, 1 failed | ETA 0:08:40 | done: +F2R seed 0: fid=38.793 ...

A Tune callback is pickled with the experiment state (`tuner.pkl`), so it holds only plain data and
writes through `t2i_ray.console.console`, looked up when it runs: a captured `print` or stream
would stop pickling once Ray replaces `builtins.print` (README "What happens on bad input").
Counts are taken from Tune's trial list at each event, so a resumed sweep counts the trials that
finished before it; the elapsed time and the rate behind the ETA are this run's own.
"""
from __future__ import annotations

import math
import time
from typing import Any

from ray.tune import Callback

from t2i_ray.console import console

TERMINATED, ERROR, RUNNING = "TERMINATED", "ERROR", "RUNNING"


def format_duration(seconds: float | None) -> str:
    """`0:02:13`, `1:02:03`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_line(elapsed_s: float, running: int, done: int, failed: int, total: int,
                eta_s: float | None, event: str) -> str:
    """One status line. `done` counts finished trials (including those stopped early), `failed`
    the errored or diverged ones; both out of `total`."""
    return (f"[sweep {format_duration(elapsed_s)}] {running} running, {done}/{total} done, {failed} failed"
            f" | ETA {format_duration(eta_s)} | {event}")


def estimate_remaining(elapsed_s: float, progress: float, carried: float, total: int) -> float | None:
    """Seconds left at this run's rate: `progress` trials' worth of work is finished (finished trials
    count 1, running ones the share of their steps done), `carried` of it was done before this run
    (a resumed sweep). None until this run has done some work."""
    done_here = progress - carried
    if done_here <= 1e-9 or elapsed_s <= 0:
        return None
    return max(total - progress, 0.0) * elapsed_s / done_here


def trial_steps(config: dict[str, Any]) -> int:
    """train.steps of one trial: the base's, unless its row, a --sweep axis or Optuna sets it."""
    trial = config.get("trial") or {}
    steps = trial.get("overrides", {}).get("train.steps", config.get("train.steps"))
    return int(steps if steps is not None else config["base"]["train"]["steps"])


class TrialProgress(Callback):
    """Status lines for a sweep of `total` trials (Tune's own tables print every config field)."""

    def __init__(self, total: int):
        self.total = total
        self.start = time.time()
        self.carried: float | None = None
        self.fraction: dict[str, float] = {}  # trial id -> share of its steps reported so far

    def setup(self, **info):
        self.start, self.carried = time.time(), None  # a resumed sweep counts from its own start

    @staticmethod
    def label(trial) -> str:
        t = trial.config.get("trial")
        return f"{t['row']} seed {t['seed']}" if t else trial.trial_id

    @staticmethod
    def _diverged(trial) -> bool:
        return bool((trial.last_result or {}).get("diverged"))

    def _counts(self, trials, current=None, current_status: str | None = None) -> tuple[int, int, int, float]:
        """(running, done, failed, progress in trials) with `current` taken as `current_status`
        (Tune calls the callbacks before it sets the new status)."""
        running = done = failed = 0
        progress = 0.0
        for t in trials:
            status = current_status if t is current else t.status
            if status == RUNNING:
                running += 1
                progress += min(self.fraction.get(t.trial_id, 0.0), 1.0)
            elif status == ERROR or (status == TERMINATED and self._diverged(t)):
                failed += 1
                progress += 1
            elif status == TERMINATED:
                done += 1
                progress += 1
        return running, done, failed, progress

    def _emit(self, trials, trial, status: str, event: str) -> None:
        running, done, failed, progress = self._counts(trials, trial, status)
        if self.carried is None:  # the first event of this run: what was finished before it
            self.carried = sum(1.0 for t in trials if t is not trial and t.status in (TERMINATED, ERROR))
        elapsed = time.time() - self.start
        eta = estimate_remaining(elapsed, progress, self.carried, self.total)
        console(status_line(elapsed, running, done, failed, self.total, eta, event))

    def on_trial_start(self, iteration, trials, trial, **info):
        self._emit(trials, trial, RUNNING, f"started: {self.label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "step" in result:
            self.fraction[trial.trial_id] = float(result["step"]) / max(trial_steps(trial.config), 1)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        if r.get("diverged"):
            event = (f"FAILED: {self.label(trial)}: the loss became non-finite (see the results table's "
                     f"error column); the sweep goes on")
        elif not r.get("finished"):
            # Ended without its final evaluation and without an error: the scheduler stopped it.
            event = f"stopped early: {self.label(trial)} at step {int(r.get('step', 0))}"
            record_stopped_trial(trial)
        else:
            nan = float("nan")
            event = (f"done: {self.label(trial)}: fid={r.get('fid', nan):.3f} "
                     f"r_precision={r.get('r_precision', nan):.3f} "
                     f"attr_pair_recall={r.get('attr_pair_recall', nan):.3f} ({r.get('time_total_s', 0):.0f}s)")
        self._emit(trials, trial, TERMINATED, event)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._emit(trials, trial, ERROR, f"FAILED: {self.label(trial)} (see the results table's error column)")


def record_stopped_trial(trial) -> None:
    """The row of a trial that the scheduler (ASHA) stopped: Tune ended its trial driver before it
    could write one. Status `stopped`, its last training report as the metrics."""
    from t2i_ray.sweep.run import trial_identity, write_trial_row

    r = dict(trial.last_result or {})
    identity = trial_identity(trial.config, trial.trial_id)
    reported = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k.startswith(("loss", "eval_", "d_")) or k in ("step", "images_per_s"))}
    write_trial_row(identity, trial.config, status="stopped",
                    error=f"stopped early by the scheduler at step {int(r.get('step', 0))}",
                    wall_time_s=float(r.get("time_total_s", 0.0)), metrics=reported, checkpoint_path="")


__all__ = ["TrialProgress", "status_line", "format_duration", "estimate_remaining", "trial_steps"]
