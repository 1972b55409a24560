"""`model.method=diffusion`: Gaussian-categorical diffusion (seed paper 002, GCDP) under the loop.

One step: t ~ U{1..T} shared by both modalities, x_t ~ q(x_t | x_0) (Gaussian) and y_t ~ q(y_t | y_0)
(uniform categorical), the U-Net predicts eps and the layout logits, loss = MSE(eps) + lambda *
categorical VLB term (t2i_ray/models/diffusion/gaussian_categorical.py); the text is dropped with
p = diffusion.cond_drop for classifier-free guidance. The text conditioning is the frozen DAMSM text
encoder's word and sentence features (GCDP uses frozen T5, which is not available offline; any
encoder with (words (B, E, T), sentence (B, E)) plugs in through `Assets`). An EMA copy of the
U-Net (warmed up as (1 + s) / (10 + s), capped at diffusion.ema_decay) is what samples, as GCDP
samples with its EMA weights. `diffusion.joint=false` is the image-only model: the same U-Net
without the layout input and output. `diffusion.unconditional=true` never shows the U-Net the text
(only its null tokens, in training and sampling): GCDP's unconditional image-layout generation
(arXiv:2308.08157 Table 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from t2i_ray.config import ExperimentConfig, float_list, image_size, int_list
from t2i_ray.data.registry import layout_classes
from t2i_ray.models.diffusion.gaussian_categorical import (GaussianCategoricalDiffusion, outpaint, sample,
                                                           text_drop_mask)
from t2i_ray.models.diffusion.unet import JointUNet
from t2i_ray.models.text import word_mask
from t2i_ray.train.ema import ema_copy, update_ema, warmed_decay
from t2i_ray.train.method import Assets, Method, SampleFn, encode_text


def build_unet(cfg: ExperimentConfig, num_classes: int) -> JointUNet:
    f = cfg.diffusion
    attention = tuple(bool(a) for a in int_list(f.attention_levels, "diffusion.attention_levels"))
    return JointUNet(num_classes=num_classes, dim=f.dim, dim_mults=int_list(f.dim_mults, "diffusion.dim_mults"),
                     blocks=int_list(f.blocks, "diffusion.blocks"), attention_levels=attention, heads=f.heads,
                     text_dim=cfg.model.embed_dim, layout_channels=f.layout_channels, image_only=not f.joint)


class DiffusionMethod(Method):
    name = "diffusion"
    # Every term is a mean over samples of per-sample values (MSE(eps) and the layout VLB, each
    # per-sample weighted; text dropout per sample; GroupNorm only in the U-Net), so DDP's gradient
    # average over equal shards is already the global batch's gradient: nothing to gather.
    batch_coupled = False

    def __init__(self, cfg: ExperimentConfig, assets: Assets):
        f = cfg.diffusion
        self.cfg = cfg
        classes = layout_classes(cfg.data.dataset) if f.joint else None
        self.num_classes = len(classes) if classes else 0
        self.process = GaussianCategoricalDiffusion(self.num_classes, f.timesteps, f.schedule, f.schedule)
        self.text = assets.damsm.text_encoder  # frozen (load_damsm)
        self.unet = build_unet(cfg, self.num_classes)
        self.ema = ema_copy(self.unet)
        adam = torch.optim.Adam(self.unet.parameters(), lr=f.lr, betas=(0.9, 0.99), eps=1e-8)  # GCDP's
        self.optimizers = {"unet": adam}
        self.updates = 0  # EMA updates since the start, restored from the checkpoint with the step

    @classmethod
    def needs_layouts(cls, cfg: ExperimentConfig) -> bool:
        return cfg.diffusion.joint

    def trainable(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def checkpointed(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "unet_ema": self.ema}

    def prepare(self, wrap, prepare_module, device) -> None:
        self.device = device
        self.unet = wrap(self.unet)
        self.ema = self.ema.to(device)
        self.text = self.text.to(device)

    def _text(self, ids: Tensor, lens: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(words (B, T, E), mask (B, T), sentence (B, E)) of the frozen text encoder, float32;
        all None for an unconditional model (JointUNet then uses its null text for every sample)."""
        if self.cfg.diffusion.unconditional:
            return None, None, None
        words, sentence = encode_text(self.text, ids, lens, trainable=False)  # (B, E, T), (B, E)
        return words.transpose(1, 2), word_mask(lens, ids.shape[1]), sentence

    def step(self, batch, rng, autocast) -> dict[str, float]:
        f = self.cfg.diffusion
        images = batch["image"]
        layouts = batch["layout"] if f.joint else None
        words, mask, sentence = self._text(batch["caption"], batch["caption_len"])
        drop = text_drop_mask(images.shape[0], f.cond_drop, rng).to(images.device)
        opt = self.optimizers["unet"]
        opt.zero_grad(set_to_none=True)
        with autocast():
            losses = self.process.training_losses(self.unet, images, layouts, words, mask, sentence, drop,
                                                  rng, layout_weight=f.layout_weight, p2_gamma=f.p2_gamma)
        losses["loss"].backward()
        opt.step()
        self._update_ema()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _update_ema(self) -> None:
        self.updates += 1
        update_ema(self.ema, self.unet, warmed_decay(self.cfg.diffusion.ema_decay, self.updates))

    def restored(self, step: int) -> None:
        self.updates = step

    def sample_pairs(self, ids: Tensor, lens: Tensor, rng: torch.Generator,
                     guidance_scale: float | None = None) -> tuple[Tensor, Tensor | None]:
        """(images (B, 3, H, W) in [-1, 1], layouts (B, H, W) long or None) from the EMA U-Net."""
        f, (h, w) = self.cfg.diffusion, image_size(self.cfg.data)
        device = next(self.ema.parameters()).device
        words, mask, sentence = self._text(ids.to(device), lens.to(device))
        return sample(self.ema, self.process, len(ids), h, w, words, mask, sentence, rng,
                      sample_steps=f.sample_steps,
                      guidance_scale=f.guidance_scale if guidance_scale is None else guidance_scale,
                      with_layout=f.joint, device=device)

    def sampler(self, guidance_scale: float | None = None) -> SampleFn:
        return lambda ids, lens, rng: self.sample_pairs(ids, lens, rng, guidance_scale)[0]

    def eval_variants(self) -> dict[str, SampleFn]:
        """diffusion.guidance_scale for the main columns, each extra scale as `<metric>@g<scale>`."""
        f = self.cfg.diffusion
        extra = float_list(f.extra_guidance_scales, "diffusion.extra_guidance_scales")
        return {"": self.sampler(), **{f"@g{g:g}": self.sampler(g) for g in extra if g != f.guidance_scale}}

    def layout_sampler(self):
        if not self.cfg.diffusion.joint:
            return None
        return lambda ids, lens, rng: self.sample_pairs(ids, lens, rng)

    def outpainter(self):
        return self.outpaint if self.cfg.diffusion.joint else None

    @property
    def num_layout_classes(self) -> int:
        return self.num_classes

    def outpaint(self, ids: Tensor, lens: Tensor, rng: torch.Generator, known_images: Tensor | None = None,
                 known_layouts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Layout -> image (known_layouts, RePaint resampling diffusion.outpaint_resample) or image ->
        layout (known_images, n = 1 as GCDP); returns (images, layouts), the known one unchanged."""
        f = self.cfg.diffusion
        device = next(self.ema.parameters()).device
        words, mask, sentence = self._text(ids.to(device), lens.to(device))
        n = f.outpaint_resample if known_layouts is not None else 1
        return outpaint(self.ema, self.process, words, mask, sentence, rng, known_images=known_images,
                        known_layouts=known_layouts, sample_steps=f.sample_steps,
                        guidance_scale=f.guidance_scale, resample_steps=n)


__all__ = ["DiffusionMethod", "build_unet"]
