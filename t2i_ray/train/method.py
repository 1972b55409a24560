"""The seam between the training loop and what it trains (`model.method`: gan, diffusion).

A method supplies its models and optimisers, one training step, a sampler and what its
checkpoint carries; the loop (train/loop.py) owns devices, DDP, data order, resume, reporting and
checkpoints and names no method. Evaluation (eval/evaluate.py) sees a method only through its
sampler, so every metric is computed the same way for every method.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Mapping

import torch
from torch import Tensor, nn

from t2i_ray.config import ExperimentConfig, apply_overrides
from t2i_ray.train.checkpoint import unwrap
from t2i_ray.train.damsm import Damsm, load_damsm

# sample(caption_ids (B, T), caption_lens (B,), generator) -> images (B, 3, H, W) in [-1, 1].
# All randomness comes from `generator` (a CPU torch.Generator), so samples are a function of the
# weights, the captions and the seed.
SampleFn = Callable[[Tensor, Tensor, torch.Generator], Tensor]


@dataclass
class Assets:
    """Frozen networks a run loads from the sweep's caches (the same for every method)."""

    damsm: Damsm  # text + image encoders and the vocabulary they were trained with
    captioner: nn.Module | None = None  # l4's captioner, only when loss.recap > 0 (and training)
    for_training: bool = True  # False: models to load a checkpoint into and sample from


class Method:
    """Base of the training methods. Subclasses build their modules in __init__ (in a fixed order:
    the global RNG seeded by the loop gives every run the same initial weights) and fill
    `self.optimizers`."""

    name: ClassVar[str]
    # Whether a sample's loss depends on the other samples of the batch (negatives, mismatched
    # pairs): then `train.gather_negatives` gives those terms the global batch of all workers.
    batch_coupled: ClassVar[bool] = False
    optimizers: dict[str, torch.optim.Optimizer]

    @classmethod
    def needs_layouts(cls, cfg: ExperimentConfig) -> bool:
        """Whether batches must carry "layout" (B, H, W) int64 class indices (asked before the
        method is built: the data comes first)."""
        return False

    def restored(self, step: int) -> None:
        """Called after the checkpointed modules and optimisers were loaded at `step` (state that
        counts steps, e.g. an EMA warm-up, resumes from it)."""

    def trainable(self) -> dict[str, nn.Module]:
        """Modules the optimisers update: DDP-wrapped by the loop and checkpointed."""
        raise NotImplementedError

    def checkpointed(self) -> dict[str, nn.Module]:
        """Everything a checkpoint holds: the trainable modules plus state that is not trained by
        gradients (e.g. EMA weights)."""
        return self.trainable()

    def prepare(self, wrap: Callable[[nn.Module], nn.Module], prepare_module: Callable[[nn.Module], nn.Module],
                device: torch.device) -> None:
        """Move every module to `device` (through `prepare_module`, e.g. channels_last, for the conv
        nets that benefit) and replace each trainable one by `wrap(module)` (DDP under Ray Train)."""
        raise NotImplementedError

    def train_mode(self) -> None:
        for module in self.trainable().values():
            module.train()

    def step(self, batch: Mapping[str, Tensor], rng: torch.Generator,
             autocast: Callable[[], ContextManager]) -> dict[str, float]:
        """One optimisation step on `batch`; returns its losses as floats. `rng` is the run's
        checkpointed CPU generator (noise, timesteps), so a resumed run replays the same draws."""
        raise NotImplementedError

    def sampler(self) -> SampleFn:
        raise NotImplementedError

    def mask_sampler(self) -> Callable[[Tensor, Tensor, torch.Generator], list[Tensor]] | None:
        """Optional: per-block spatial masks for the same draws as `sampler` (SSA-GAN)."""
        return None

    def eval_variants(self) -> dict[str, SampleFn]:
        """Samplers the final evaluation scores, by column suffix: "" is the main one (its metrics
        are the row's `fid`, `r_precision`, ...), others add `<metric><suffix>` columns (diffusion:
        one per extra guidance scale, "@g1.5"), all from the same trained weights."""
        return {"": self.sampler()}

    def layout_sampler(self) -> Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]] | None:
        """Optional: (images, layouts) drawn jointly, for the layout metrics."""
        return None

    def outpainter(self) -> Callable[..., tuple[Tensor, Tensor]] | None:
        """Optional: f(ids, lens, generator, known_images=None | known_layouts=None) -> (images,
        layouts), the known modality kept (cross-modal outpainting)."""
        return None

    @property
    def num_layout_classes(self) -> int:
        return 0


def encode_text(encoder, ids: Tensor, lengths: Tensor, trainable: bool) -> tuple[Tensor, Tensor]:
    """(words (B,E,T), sentence (B,E)); gradients only when the encoder is being trained.
    Always in float32, also inside an autocast region (a small LSTM: nothing to gain from bf16)."""
    with torch.autocast(ids.device.type, enabled=False):
        if trainable:
            return encoder(ids, lengths)
        with torch.no_grad():
            return unwrap(encoder)(ids, lengths)


def load_assets(cfg: ExperimentConfig, damsm_path: str, captioner_path: str | None) -> Assets:
    from t2i_ray.train.captioner import load_frozen_captioner

    damsm = load_damsm(damsm_path)
    captioner = load_frozen_captioner(captioner_path, damsm.vocab) if cfg.loss.recap > 0 else None
    return Assets(damsm, captioner)


@dataclass
class TrainedRun:
    """A method restored from a checkpoint, ready to sample from (`load_trained`)."""

    cfg: ExperimentConfig
    method: Method
    damsm: Damsm
    step: int  # the training step the checkpoint was written at
    checkpoint: str  # where it was loaded from


def load_trained(checkpoint: str | Path, damsm_path: str | Path | None = None,
                 device: torch.device | str = "cpu", overrides: Mapping[str, Any] | None = None) -> TrainedRun:
    """The method of a checkpoint folder (local, or a storage URI) with its trained weights on `device`.

    The folder is enough: config.json rebuilds the models, state.pt fills them (weights_only), and
    assets.json names the DAMSM folder whose frozen text encoder conditions the models (or pass
    `damsm_path`); its vocabulary must be the checkpoint's vocab.json. `overrides` change config
    fields that do not change the trained models (output_dir, eval.*: the caller checks).
    """
    from t2i_ray.data.text import Vocabulary
    from t2i_ray.train import checkpoint as ckpt

    with ckpt.local_dir(checkpoint) as folder:
        cfg = ExperimentConfig.from_dict(json.loads((folder / "config.json").read_text()))
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        if damsm_path is None:
            if not (folder / ckpt.ASSETS_FILE).is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint} names no DAMSM folder (no {ckpt.ASSETS_FILE}); "
                                        f"pass the DAMSM folder the run trained with (its results row's damsm_path)")
            damsm_path = json.loads((folder / ckpt.ASSETS_FILE).read_text())["damsm_path"]
        damsm = load_damsm(damsm_path)
        if (folder / "vocab.json").is_file() and Vocabulary.load(folder / "vocab.json") != damsm.vocab:
            raise ValueError(f"the DAMSM folder {damsm_path} has another vocabulary than checkpoint {checkpoint} "
                             f"(fingerprint {damsm.vocab.fingerprint()[:10]}): its text encoder is not the one "
                             f"the run trained with")
        state = ckpt.load_state(folder)
    method = method_class(cfg)(cfg, Assets(damsm, None, for_training=False))
    step = ckpt.restore(state, method.checkpointed(), {})  # no optimisers: nothing trains
    method.restored(step)
    device = torch.device(device)
    method.prepare(lambda module: module.to(device), lambda module: module, device)
    return TrainedRun(cfg, method, damsm, step, str(checkpoint))


def method_class(cfg: ExperimentConfig) -> type[Method]:
    """The class `model.method` names (validate() refuses unknown names)."""
    # Imported here: each method module imports this one.
    from t2i_ray.train.diffusion import DiffusionMethod
    from t2i_ray.train.gan import GanMethod

    methods: dict[str, type[Method]] = {"gan": GanMethod, "diffusion": DiffusionMethod}
    if cfg.model.method not in methods:
        raise ValueError(f"model.method={cfg.model.method!r} is not built by this version; "
                         f"available: {', '.join(methods)}")
    return methods[cfg.model.method]


def data_parallel_columns(cfg: ExperimentConfig) -> dict[str, int | bool | None]:
    """What a results row records about data parallelism: `workers` (Ray Train workers of the
    trial), `negatives_gathered` (its batch-coupled terms saw the global batch through an
    all-gather: more than one worker and train.gather_negatives) and `negatives_batch` (how many
    samples those terms compare across: batch_size x workers when gathered or on one worker,
    batch_size otherwise; None for a method without such terms)."""
    t = cfg.train
    coupled = method_class(cfg).batch_coupled
    gathered = coupled and t.num_workers > 1 and t.gather_negatives
    global_batch = gathered or t.num_workers == 1
    return {"workers": t.num_workers, "negatives_gathered": gathered,
            "negatives_batch": (t.batch_size * t.num_workers if global_batch else t.batch_size) if coupled else None}


def parameter_columns(cfg: ExperimentConfig, damsm_path: str | None) -> dict[str, int]:
    """What a GAN results row records about model size (DTE-GAN compares it):
    `GANModels.parameter_counts` of the models the config builds, built on the meta device (no
    memory, no weights, no draws from the RNG); the text encoders' size comes from the DAMSM
    folder's meta.json. {} for other methods, or when that folder is not readable here."""
    if cfg.model.method != "gan" or not damsm_path:
        return {}
    try:
        text_config = json.loads((Path(damsm_path) / "meta.json").read_text())["text_encoder"]
    except (OSError, KeyError, ValueError):
        return {}
    from t2i_ray.models.factory import build_gan_models
    from t2i_ray.models.text import TextEncoder

    with torch.device("meta"):
        models = build_gan_models(cfg, TextEncoder(**text_config), nn.Identity(), for_training=False)
    return models.parameter_counts()


def build_method(cfg: ExperimentConfig, assets: Assets) -> Method:
    return method_class(cfg)(cfg, assets)


__all__ = ["Assets", "Method", "SampleFn", "TrainedRun", "build_method", "data_parallel_columns", "encode_text",
           "load_assets", "load_trained",
           "method_class", "parameter_columns"]
