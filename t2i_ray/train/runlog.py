"""What rank 0 of a run writes as it goes: TensorBoard scalars and sample grids, the curves file and a
console line; and, once the trial's row is written, its hyperparameters for TensorBoard's HParams view.

The curves file (`curves/<run>.jsonl`, one JSON line per training report) is appended as the run
goes, so a crashed run keeps its curve; after a resume the steps between the last checkpoint and
the crash appear twice and readers (`analysis.plots.load_curves`) keep the later line per step.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2i_ray.paths import RunPaths
from t2i_ray.config import ExperimentConfig

# Sample grids an evaluation writes (eval/samples.py; their paths are in its metrics) -> TensorBoard
# image tags. SSA-GAN's masks lie beside the main grid as `<run>_masks.png`.
SAMPLE_IMAGES = {"samples_path": "samples/grid", "layout_samples_path": "samples/layouts",
                 "outpaint_samples_path": "samples/outpaint"}


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
        self.sample_images(metrics, step)
        extra = (f"attr_pair_recall={metrics['attr_pair_recall']:.3f}" if "attr_pair_recall" in metrics
                 else f"is={metrics['is']:.3f}")  # domain backbone: oracle attributes; inception: IS
        print(f"[{self.run_name}] eval: fid={metrics['fid']:.3f} kid={metrics['kid']:.4f} "
              f"r_precision={metrics['r_precision']:.3f} {extra} ({metrics['eval_seconds']:.0f}s)", flush=True)

    def sample_images(self, metrics: dict[str, Any], step: int) -> None:
        """The evaluation's sample grids (PNG files named in `metrics`) as TensorBoard images at `step`."""
        import numpy as np
        from PIL import Image

        files = {tag: Path(metrics[key]) for key, tag in SAMPLE_IMAGES.items() if metrics.get(key)}
        if "samples/grid" in files:
            masks = files["samples/grid"].with_name(files["samples/grid"].stem + "_masks.png")
            if masks.is_file():
                files["samples/masks"] = masks
        for tag, path in files.items():
            if path.is_file():
                with Image.open(path) as img:
                    self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def write_hparams(tensorboard_dir: str | Path, hparams: dict[str, Any]) -> None:
    """Record a finished run's hyperparameters in its TensorBoard folder, so that the HParams view
    lists every run of a sweep with its values beside its `eval/*` metrics (the scalars the run
    already wrote). Only the session start/end records are written, no experiment record: with one
    per run, TensorBoard would show the first run's columns only; without, it takes their union."""
    from tensorboardX import SummaryWriter
    from tensorboardX.summary import hparams as hparams_summaries

    values = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
    _, session_start, session_end = hparams_summaries(values, {})
    # its own file name: a writer opened in the same second as the run's would otherwise replace its file
    with SummaryWriter(str(tensorboard_dir), filename_suffix=".hparams") as writer:
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)


__all__ = ["RunLog", "write_hparams", "SAMPLE_IMAGES"]
