"""The layout of an output folder (`--output-dir`, default `t2i_runs/`): every writer and reader
asks `RunPaths` where a thing goes, so the folder is described once (README "Outputs").

    results/<run>.parquet       one row per trial (t2i_ray/sweep/store.py)
    tables/<experiment>.md|csv  the printed summary table
    samples/<run>*.png|json     sample grids
    samples/<run>/<label>/      sweeps/sample.py: a user's captions, grid.png + one PNG per sample
    curves/<run>.jsonl          training reports, appended as a run goes
    tensorboard/<run>/          TensorBoard event files (scalars, sample grids, hparams)
    optuna.db                   Optuna studies of the Optuna sweeps (SQLite)
    figures/                    what analysis/ablation.ipynb saves
    cache/{damsm,captioner,evaluators,reference_stats,data}/   pre-trained and decoded assets
    ray/{tune,train}/           Ray Tune state and Train checkpoints (or --storage-path)
`analysis/` never imports the project; it knows the same names (results/, curves/, samples/).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunPaths:
    output_dir: Path

    @classmethod
    def of(cls, cfg: Any) -> "RunPaths":
        """The paths of an ExperimentConfig's output folder."""
        return cls(Path(cfg.output_dir))

    @property
    def results(self) -> Path:
        return self.output_dir / "results"

    @property
    def tables(self) -> Path:
        return self.output_dir / "tables"

    @property
    def samples(self) -> Path:
        return self.output_dir / "samples"

    @property
    def figures(self) -> Path:
        return self.output_dir / "figures"

    @property
    def cache(self) -> Path:
        """Pre-trained encoders, evaluators, reference statistics and decoded datasets."""
        return self.output_dir / "cache"

    def cached(self, kind: str) -> Path:
        """`cache/<kind>`: damsm, captioner, evaluators, reference_stats or data."""
        if kind not in ("damsm", "captioner", "evaluators", "reference_stats", "data"):
            raise ValueError(f"unknown cache kind {kind!r}")
        return self.cache / kind

    @property
    def ray(self) -> Path:
        """Ray's storage when no --storage-path is given: tune/ (experiments) and train/ (checkpoints)."""
        return self.output_dir / "ray"

    @property
    def optuna_db(self) -> Path:
        """The Optuna studies of this folder's Optuna sweeps (SQLite; one study per sweep name)."""
        return self.output_dir / "optuna.db"

    def sample_grid(self, run_name: str, suffix: str = "") -> Path:
        return self.samples / f"{run_name}{suffix}.png"

    def caption_samples(self, run_name: str, label: str) -> Path:
        """Folder of sweeps/sample.py's samples of one run for one captions file and seed."""
        return self.samples / run_name / label

    def curve(self, run_name: str) -> Path:
        return self.output_dir / "curves" / f"{run_name}.jsonl"

    def tensorboard(self, run_name: str | None = None) -> Path:
        root = self.output_dir / "tensorboard"
        return root / run_name if run_name else root


__all__ = ["RunPaths"]
