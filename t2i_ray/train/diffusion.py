"""`model.method=diffusion`: Gaussian-categorical diffusion (seed paper 002, GCDP) under the loop.

One step: t ~ U{1..T} shared by both modalities, x_t ~ q(x_t | x_0) (Gaussian) and y_t ~ q(y_t | y_0)
(uniform categorical), the U-Net predicts eps and the layout logits, loss = MSE(eps) + lambda *
categorical VLB term (t2i_ray/models/diffusion/gaussian_categorical.py); the text is dropped with
p = diffusion.cond_drop for classifier-free guidance. The text conditioning is the frozen DAMSM text
encoder's word and sentence features (GCDP uses frozen T5, which is not available offline; any
encoder with (words (B, E, T), sentence (B, E)) plugs in through `Assets`). An EMA copy of the
U-Net (warmed up as (1 + s) / (10 + s), capped at diffusion.ema_decay) is what samples, as GCDP
samples with its EMA weights. `diffusion.joint=false` is the image-only model: the same U-Net
without the layout input and output.

`diffusion.base_resolution` > 0 makes it GCDP's two-stage cascade (as Imagen, arXiv:2205.11487 Sec.
2.5): a base U-Net at the base resolution and a super-resolution U-Net (the same class with
`lowres_cond`) at data.resolution, conditioned on the noise-augmented low-res image and layout.
Batches carry the data at data.resolution; the base stage's pair is made from it on the fly (image:
area downsampling, the mean of each f x f block; layout: nearest, one pixel per block, as GCDP
resizes labels). Both stages train at every step on the same batch, each with its own loss, Adam and
EMA: their losses share no parameter (the SR stage is conditioned on real low-res data, never on
base samples, as in Imagen and GCDP), so this is the same as training them one after the other,
with one run, one data pass and one checkpoint holding both. Sampling runs the base, then the SR
stage conditioned on its output augmented at diffusion.sr_noise_level. `diffusion.unconditional=true` never shows the U-Net
the text (only its null tokens, in training and sampling): GCDP's unconditional image-layout
generation (arXiv:2308.08157 Table 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

import torch.nn.functional as F

from t2i_ray.config import ExperimentConfig, base_image_size, float_list, image_size, int_list, sr_unet_settings
from t2i_ray.data.registry import layout_classes
from t2i_ray.models.diffusion.gaussian_categorical import (GaussianCategoricalDiffusion, augment_lowres, draw,
                                                           outpaint, sample, text_drop_mask)
from t2i_ray.models.diffusion.unet import JointUNet
from t2i_ray.models.text import word_mask
from t2i_ray.train.ema import ema_copy, update_ema, warmed_decay
from t2i_ray.train.method import Assets, Method, SampleFn, encode_text


def build_unet(cfg: ExperimentConfig, num_classes: int, sr: bool = False) -> JointUNet:
    """The base U-Net (diffusion.dim, ...), or with sr=True the super-resolution stage's
    (diffusion.sr_dim, ..., falling back to the base's; conditioned on the low-res pair)."""
    f = cfg.diffusion
    s = sr_unet_settings(f) if sr else {"dim": f.dim, "dim_mults": f.dim_mults, "blocks": f.blocks,
                                        "attention_levels": f.attention_levels}
    attention = tuple(bool(a) for a in int_list(s["attention_levels"], "diffusion.attention_levels"))
    return JointUNet(num_classes=num_classes, dim=s["dim"], dim_mults=int_list(s["dim_mults"], "diffusion.dim_mults"),
                     blocks=int_list(s["blocks"], "diffusion.blocks"), attention_levels=attention, heads=f.heads,
                     text_dim=cfg.model.embed_dim, layout_channels=f.layout_channels, image_only=not f.joint,
                     lowres_cond=sr)


def downsample_pair(images: Tensor | None, layouts: Tensor | None, size: tuple[int, int]
                    ) -> tuple[Tensor | None, Tensor | None]:
    """The low-res version of a batch at `size` (h, w), a whole factor below: images (B, 3, H, W) by
    area averaging (each output pixel the mean of its f x f block), layouts (B, H, W) long by nearest
    (the block's top-left pixel: a label stays a label; GCDP resizes labels with nearest throughout)."""
    low = None if images is None else F.interpolate(images, size=size, mode="area")
    if layouts is None:
        return low, None
    return low, F.interpolate(layouts[:, None].float(), size=size, mode="nearest")[:, 0].long()


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
        self.cascade = f.base_resolution > 0
        if self.cascade:  # built after the base: a one-stage run's initial weights stay what they were
            self.sr_unet = build_unet(cfg, self.num_classes, sr=True)
            self.sr_ema = ema_copy(self.sr_unet)
            self.optimizers["sr_unet"] = torch.optim.Adam(self.sr_unet.parameters(), lr=f.lr, betas=(0.9, 0.99),
                                                          eps=1e-8)
        self.updates = 0  # EMA updates since the start, restored from the checkpoint with the step

    @classmethod
    def needs_layouts(cls, cfg: ExperimentConfig) -> bool:
        return cfg.diffusion.joint

    def trainable(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, **({"sr_unet": self.sr_unet} if self.cascade else {})}

    def checkpointed(self) -> dict[str, nn.Module]:
        out = {"unet": self.unet, "unet_ema": self.ema}
        if self.cascade:
            out.update(sr_unet=self.sr_unet, sr_unet_ema=self.sr_ema)
        return out

    def prepare(self, wrap, prepare_module, device) -> None:
        self.device = device
        self.unet = wrap(self.unet)
        self.ema = self.ema.to(device)
        if self.cascade:
            self.sr_unet = wrap(self.sr_unet)
            self.sr_ema = self.sr_ema.to(device)
        self.text = self.text.to(device)

    def _text(self, ids: Tensor, lens: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(words (B, T, E), mask (B, T), sentence (B, E)) of the frozen text encoder, float32;
        all None for an unconditional model (JointUNet then uses its null text for every sample)."""
        if self.cfg.diffusion.unconditional:
            return None, None, None
        words, sentence = encode_text(self.text, ids, lens, trainable=False)  # (B, E, T), (B, E)
        return words.transpose(1, 2), word_mask(lens, ids.shape[1]), sentence

    def step(self, batch, rng, autocast) -> dict[str, float]:
        """One update of the U-Net, or of both stages of the cascade: losses "loss", "image_loss",
        "layout_loss" of the base stage, and "sr_loss", "sr_image_loss", ... of the SR stage."""
        f = self.cfg.diffusion
        images = batch["image"]
        layouts = batch["layout"] if f.joint else None
        words, mask, sentence = self._text(batch["caption"], batch["caption_len"])
        drop = text_drop_mask(images.shape[0], f.cond_drop, rng).to(images.device)
        high = (images, layouts)
        if self.cascade:
            images, layouts = downsample_pair(images, layouts, base_image_size(self.cfg))
        losses = self._update("unet", self.unet, images, layouts, (words, mask, sentence, drop), rng, autocast)
        if self.cascade:
            # The SR stage on the same captions (and text dropout): the real low-res pair,
            # noise-augmented at a level ~ U(0, 1) per sample (imagen-pytorch draws one per batch
            # by default and per sample with `per_sample_random_aug_noise_level`), is its condition.
            level = draw(torch.rand, (images.shape[0],), rng, "cpu")
            cond = augment_lowres(images, layouts, level, self.num_classes, rng)
            sr = self._update("sr_unet", self.sr_unet, *high, (words, mask, sentence, drop), rng, autocast, cond)
            losses.update({f"sr_{k}": v for k, v in sr.items()})
        self._update_ema()
        return losses

    def _update(self, name: str, unet: nn.Module, images: Tensor, layouts: Tensor | None, text, rng, autocast,
                cond: dict | None = None) -> dict[str, float]:
        f = self.cfg.diffusion
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        with autocast():
            losses = self.process.training_losses(unet, images, layouts, *text, rng, layout_weight=f.layout_weight,
                                                  p2_gamma=f.p2_gamma, cond=cond)
        losses["loss"].backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _update_ema(self) -> None:
        self.updates += 1
        decay = warmed_decay(self.cfg.diffusion.ema_decay, self.updates)
        update_ema(self.ema, self.unet, decay)
        if self.cascade:
            update_ema(self.sr_ema, self.sr_unet, decay)

    def restored(self, step: int) -> None:
        self.updates = step

    def sample_pairs(self, ids: Tensor, lens: Tensor, rng: torch.Generator,
                     guidance_scale: float | None = None) -> tuple[Tensor, Tensor | None]:
        """(images (B, 3, H, W) in [-1, 1], layouts (B, H, W) long or None) from the EMA U-Net(s),
        at data.resolution: the cascade's base sample brought up by the SR stage."""
        f = self.cfg.diffusion
        device = next(self.ema.parameters()).device
        words, mask, sentence = self._text(ids.to(device), lens.to(device))
        bh, bw = base_image_size(self.cfg)
        images, layouts = sample(self.ema, self.process, len(ids), bh, bw, words, mask, sentence, rng,
                                 sample_steps=f.sample_steps,
                                 guidance_scale=f.guidance_scale if guidance_scale is None else guidance_scale,
                                 with_layout=f.joint, device=device)
        if not self.cascade:
            return images, layouts
        return self.super_resolve(images, layouts, (words, mask, sentence), rng)

    def sr_condition(self, images: Tensor, layouts: Tensor | None, rng: torch.Generator) -> dict:
        """The SR stage's keyword inputs for a low-res pair: augmented at diffusion.sr_noise_level."""
        level = torch.full((images.shape[0],), self.cfg.diffusion.sr_noise_level)
        return augment_lowres(images, layouts, level, self.num_classes, rng)

    def super_resolve(self, images: Tensor, layouts: Tensor | None, text: tuple, rng: torch.Generator
                      ) -> tuple[Tensor, Tensor | None]:
        """The SR stage's sample at data.resolution conditioned on the low-res (images, layouts)."""
        f, (h, w) = self.cfg.diffusion, image_size(self.cfg.data)
        return sample(self.sr_ema, self.process, images.shape[0], h, w, *text, rng, sample_steps=f.sample_steps,
                      guidance_scale=f.sr_guidance_scale, with_layout=f.joint, device=images.device,
                      cond=self.sr_condition(images, layouts, rng))

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
        if not self.cascade:
            return outpaint(self.ema, self.process, words, mask, sentence, rng, known_images=known_images,
                            known_layouts=known_layouts, sample_steps=f.sample_steps,
                            guidance_scale=f.guidance_scale, resample_steps=n)
        # Cascade: outpaint at the base resolution from the downsampled known modality, then again
        # with the SR stage at full resolution, conditioned on that low-res pair.
        size = base_image_size(self.cfg)
        if known_images is not None:
            low_known, _ = downsample_pair(known_images, None, size)
            low = outpaint(self.ema, self.process, words, mask, sentence, rng, known_images=low_known,
                           sample_steps=f.sample_steps, guidance_scale=f.guidance_scale, resample_steps=n)
        else:
            _, low_known = downsample_pair(None, known_layouts, size)
            low = outpaint(self.ema, self.process, words, mask, sentence, rng, known_layouts=low_known,
                           sample_steps=f.sample_steps, guidance_scale=f.guidance_scale, resample_steps=n)
        return outpaint(self.sr_ema, self.process, words, mask, sentence, rng, known_images=known_images,
                        known_layouts=known_layouts, sample_steps=f.sample_steps,
                        guidance_scale=f.sr_guidance_scale, resample_steps=n, cond=self.sr_condition(*low, rng))


__all__ = ["DiffusionMethod", "build_unet", "downsample_pair"]
