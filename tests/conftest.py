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
