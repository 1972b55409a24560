"""The sweep's console progress: one line per finished or failed trial.

A Tune callback is pickled with the experiment state (`tuner.pkl`), so it holds only counters and
writes through `t2i_ray.console.console`, looked up when it runs: a captured `print` or stream
would stop pickling once Ray replaces `builtins.print` (README "What happens on bad input").
"""
from __future__ import annotations

from ray.tune import Callback

from t2i_ray.console import console


class TrialProgress(Callback):
    """`[sweep] k/N done: <row> seed <s>: fid=... r_precision=...` (Tune's own tables print every
    config field)."""

    def __init__(self, total: int):
        self.total = total
        self.ended = 0

    @staticmethod
    def label(trial) -> str:
        t = trial.config.get("trial")
        return f"{t['row']} seed {t['seed']}" if t else trial.trial_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        r = trial.last_result or {}
        if r.get("diverged"):
            console(f"[sweep] {self.ended}/{self.total} FAILED: {self.label(trial)}: the loss became "
                    f"non-finite (see the results table's error column); the sweep goes on")
            return
        nan = float("nan")
        console(f"[sweep] {self.ended}/{self.total} done: {self.label(trial)}: fid={r.get('fid', nan):.3f} "
                f"r_precision={r.get('r_precision', nan):.3f} "
                f"attr_pair_recall={r.get('attr_pair_recall', nan):.3f} ({r.get('time_total_s', 0):.0f}s)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        console(f"[sweep] {self.ended}/{self.total} FAILED: {self.label(trial)} (see the results table's "
                f"error column)")


__all__ = ["TrialProgress"]
