"""Shared fixtures: a tiny experiment config and its DAMSM encoders, built once per session."""
from __future__ import annotations

import pytest

from t2i_ray.config import build_config


def tiny_overrides(output_dir) -> dict:
    return {
        "output_dir": str(output_dir),
        "data.num_train": 64, "data.num_test": 32,
        "model.nf": 4,
        "train.steps": 4, "train.batch_size": 8, "train.report_every": 1, "train.checkpoint_every": 2,
        "eval.num_images": 32, "eval.batch_size": 32, "eval.r_precision_candidates": 10,
        "eval.r_precision_folds": 2, "eval.kid_subsets": 5, "eval.kid_subset_size": 16,
        "eval.evaluator_steps": 20,
        "eval.evaluator_images": 128,
        "damsm.epochs": 1, "damsm.batch_size": 16,
        "captioner.epochs": 1, "captioner.batch_size": 16,
    }


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("t2i")


@pytest.fixture(scope="session")
def tiny_cfg(tiny_root):
    return build_config("smoke", tiny_overrides(tiny_root))


@pytest.fixture
def fresh_tiny_cfg(tmp_path):
    """The tiny config with an empty output folder of its own (nothing cached yet)."""
    return build_config("smoke", tiny_overrides(tmp_path))


@pytest.fixture(scope="session")
def tiny_damsm(tiny_cfg):
    from t2i_ray.train.damsm import ensure_damsm

    return str(ensure_damsm(tiny_cfg, log=lambda s: None))


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance (2 CPUs) for every Ray-level test of the session."""
    from pathlib import Path

    import ray

    repo = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": repo}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_grid_sweep(tiny_cfg, tiny_damsm, local_ray):
    """A real two-trial grid sweep (baseline and +recap, seed 0) on the tiny config, evaluated every
    2 steps to keep a best checkpoint: (spec, rows)."""
    from t2i_ray.config import apply_overrides
    from t2i_ray.sweep.run import SweepSpec, run_sweep
    from t2i_ray.sweep.space import loss_row_overrides

    grid = [{"row": r, "seed": 0, "overrides": loss_row_overrides(r)} for r in ("baseline", "+recap")]
    base = apply_overrides(tiny_cfg, {"eval.every": 2, "eval.every_num_images": 16})
    spec = SweepSpec(sweep="test_sweep", base=base, search="grid", grid=grid)
    return spec, run_sweep(spec, log=lambda s: None)


@pytest.fixture
def one_thread():
    """Tiny models: intra-op threads only add contention on a shared 2-core machine (the loop
    also runs one thread per worker)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
