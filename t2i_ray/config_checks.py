"""Config checks that read files, run once by the command line before Ray or any training starts
(`sweep.cli.config_from_args`, also on --dry-run).

`config.validate` checks values alone and runs wherever a config is built (Ray workers too), so it
reads nothing; these checks catch what only the file system shows: a path that exists but is not
what its field needs, and a real dataset with fewer train images than one batch. Each raises
ConfigError naming the field and the fix.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from t2i_ray.config import TRAINING_STAGES, ConfigError, ExperimentConfig, check_batches_fit


def _check_cache_dir(path: str | None) -> None:
    if not path:
        return
    folder = Path(path).expanduser()
    # The first existing folder on the path must be a folder, or creating the cache fails later.
    for existing in (folder, *folder.parents):
        if existing.exists():
            if existing.is_dir():
                return
            where = "" if existing == folder else f" ({existing} on its path is a file)"
            raise ConfigError(f"data.cache_dir: must be a folder (it is created if missing), got a file "
                              f"{folder}{where}; point it at a folder or leave it unset "
                              f"(<output_dir>/cache/data)")


def check_paths(cfg: ExperimentConfig) -> None:
    """Refuse paths that exist but cannot serve their field: data.cache_dir on a file, weights
    files that are not a state dict of tensors (read with mmap: cheap even for 100 MB). A missing
    weights file keeps the message of the code that needs it (FID Inception: resolve_inception_weights)."""
    from t2i_ray.eval.inception import not_weights_message
    from t2i_ray.models.text import missing_inception_weights_message, not_inception_weights_message
    from t2i_ray.weights import WeightsFileError, load_state_dict_file

    _check_cache_dir(cfg.data.cache_dir)
    e, p = cfg.eval, cfg.damsm
    if e.inception_weights and os.path.isfile(e.inception_weights):
        try:
            load_state_dict_file(e.inception_weights)
        except WeightsFileError as err:
            raise ConfigError(not_weights_message(e.inception_weights, str(err))) from None
    if p.inception_weights and os.path.isfile(p.inception_weights):
        try:
            load_state_dict_file(p.inception_weights)
        except WeightsFileError as err:
            raise ConfigError(not_inception_weights_message(p.inception_weights, str(err))) from None
    elif p.image_backbone == "inception":  # would fail in DAMSM pre-training, after the data is decoded
        raise ConfigError(f"damsm.inception_weights: {missing_inception_weights_message(p.inception_weights)}")
    if e.clip_weights and os.path.isfile(e.clip_weights):
        from t2i_ray.eval.clip import ClipArchitecture, read_clip_state_dict

        try:  # a TorchScript .pt (OpenAI's download) refuses with the conversion command
            ClipArchitecture.of(read_clip_state_dict(e.clip_weights))
        except WeightsFileError as err:
            raise ConfigError(f"eval.clip_weights: {e.clip_weights} {err}") from None
    if e.segmenter_weights and os.path.isfile(e.segmenter_weights):
        from t2i_ray.eval.hrnet import HRNetWeightsError, read_hrnet_state_dict, where_to_get

        try:  # keys and shapes only (mmap): an OCR or non-Cityscapes checkpoint refuses before training
            read_hrnet_state_dict(e.segmenter_weights)
        except HRNetWeightsError as err:
            raise ConfigError(f"eval.segmenter_weights: {e.segmenter_weights} {err}. {where_to_get()}") from None


def check_split_sizes(cfg: ExperimentConfig, sizes: Mapping[str, int],
                      stages: tuple[str, ...] = TRAINING_STAGES) -> None:
    """A real dataset's train split (`sizes["train"]` images listed) must hold one batch of every
    train loader of `stages`; `shapes` is checked by config.validate from data.num_train."""
    if cfg.data.dataset == "shapes":
        return
    d = cfg.data
    check_batches_fit(cfg, sizes["train"], f"{sizes['train']} train images listed for "
                                           f"data.dataset={d.dataset} under {d.data_root}", stages=stages)


def check_inputs(cfg: ExperimentConfig, split_sizes: Mapping[str, int] | None = None,
                 stages: tuple[str, ...] = TRAINING_STAGES) -> None:
    """check_paths and check_split_sizes; `split_sizes` as `registry.check_dataset` returns them
    (None: index the dataset here)."""
    from t2i_ray.data.registry import check_dataset

    check_paths(cfg)
    check_split_sizes(cfg, split_sizes if split_sizes is not None else check_dataset(cfg.data), stages)


__all__ = ["check_paths", "check_split_sizes", "check_inputs"]
