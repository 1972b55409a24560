"""What rank 0 of a run writes as it goes: TensorBoard scalars, the curves file and a console line.

The curves file (`curves/<run>.jsonl`, one JSON line per training report) is appended as the run
goes, so a crashed run keeps its curve; after a resume the steps between the last checkpoint and
the crash appear twice and readers (`analysis.plots.load_curves`) keep the later line per step.
"""
from __future__ import annotations

import json
from typing import Any

from t2i_ray.paths import RunPaths
from t2i_ray.config import ExperimentConfig


class RunLog:
    def __init__(self, cfg: ExperimentConfig, run_name: str):
        from tensorboardX import SummaryWriter

        self.cfg, self.run_name = cfg, run_name
        paths = RunPaths.of(cfg)
        self.writer = SummaryWriter(str(paths.tensorboard(run_name)))
        self.curves = paths.curve(run_name)
        self.curves.parent.mkdir(parents=True, exist_ok=True)

    def training(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(f"train/{k}", v, step)
        self.writer.flush()
        with open(self.curves, "a") as f:
            f.write(json.dumps({k: float(v) for k, v in metrics.items()}) + "\n")
        print(f"[{self.run_name}] step {step}/{self.cfg.train.steps} " +
              " ".join(f"{k}={v:.3g}" for k, v in metrics.items() if k != "step"), flush=True)

    def evaluation(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"eval/{k}", v, step)
        extra = (f"attr_pair_recall={metrics['attr_pair_recall']:.3f}" if "attr_pair_recall" in metrics
                 else f"is={metrics['is']:.3f}")  # domain backbone: oracle attributes; inception: IS
        print(f"[{self.run_name}] eval: fid={metrics['fid']:.3f} kid={metrics['kid']:.4f} "
              f"r_precision={metrics['r_precision']:.3f} {extra} ({metrics['eval_seconds']:.0f}s)", flush=True)

    def close(self) -> None:
        self.writer.close()


__all__ = ["RunLog"]
