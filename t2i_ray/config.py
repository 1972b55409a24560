"""One typed, validated experiment config.

Every run is described by an `ExperimentConfig` tree of frozen dataclasses. It is built from a
named preset plus overrides (`build_config("local", {"loss.f2r": 0.2})`), validated once, before
any expensive work, and written next to every checkpoint and result row (`to_dict`). Overrides
go through one strict function that rejects unknown keys and wrong types, naming the field.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

DATASETS = ("shapes", "cub", "oxford102", "coco", "mmceleba", "cityscapes")  # readers: t2i_ray/data/registry.py
CAPTION_FILE_DATASETS = ("mmceleba", "cityscapes")  # the ones with a captions JSONL
ARCHITECTURES = ("dfgan", "ssagan", "attngan_style", "style1attngan", "attngan")
METHODS = ("gan", "diffusion")  # model.method: what the training loop trains (t2i_ray/train/method.py)
LAYOUT_DATASETS = ("shapes", "mmceleba", "cityscapes")  # the ones with semantic layouts
# data.aspect != 1 (non-square images): the diffusion U-Net only, on these readers (GCDP trains
# Cityscapes at 1:2, arXiv:2308.08157); `shapes` renders squares and the GANs are square.
ASPECT_DATASETS = ("mmceleba", "cityscapes")
OBJECT_SIZES = ("mixed", "large")  # data.object_size (`shapes` only)
CAPTION_SUBSETS = (25, 50, 100)  # MM CelebA-HQ-25/50/100: % of the train images kept (GCDP Fig. 7)
# Data fields added after caches were first keyed: left out of the DAMSM / captioner cache keys while
# at these defaults, so the caches of earlier configs stay valid (`legacy_data_key`).
LATER_DATA_DEFAULTS: dict[str, Any] = {"aspect": 1.0, "trainval": False, "caption_subset": 100, "max_objects": 3,
                                       "object_size": "mixed"}
# The ones whose items carry class ids (the "<class>/<image>" keys of t2i_ray/data/cub.py): DAMSM's
# same-class masking (damsm.class_mask) and R-precision's other-class mismatches use them.
CLASS_DATASETS = ("cub", "oxford102")
CLASS_MASK_MODES = ("auto", "on", "off")
# model.nf of each architecture at its reference setting (256x256). The presets set model.nf for
# every architecture alike (smoke 8, local 16, paper 32): set model.nf=64 for SSA-GAN's widths
# (512 .. 64) or StyleGAN2's 256x256 config-e widths (attngan_style, style1attngan, w_dim = 8nf = 512);
# plain AttnGAN's nf is its generator width ngf (its D's is 2nf): 32 / 64 in `code/cfg/bird_attn2.yml`.
REFERENCE_NF = {"dfgan": 32, "ssagan": 64, "attngan_style": 64, "style1attngan": 64, "attngan": 32}
TEXT_EMBEDDINGS = ("pretrained", "shared", "dual")
CA_MODES = ("auto", "on", "off")  # model.conditioning_augmentation
IMAGE_ENCODER_BACKBONES = ("cnn", "inception")
# Feature backbones of FID/KID (t2i_ray/eval): `domain` (trained on `shapes`, that dataset only) or
# the standard TF-ported FID Inception (needs its weights file locally); "auto" = domain on shapes,
# inception on every real dataset.
EVAL_BACKBONES = ("auto", "domain", "inception")
CLIP_SCORE_MODES = ("auto", "on", "off")
# eval.segmenter: the network behind the diffusion's layout metrics (layout mIoU, semantic recall,
# segmenter FSD; t2i_ray/eval/layout.py, t2i_ray/eval/hrnet.py): trained = the project's own, trained
# on `shapes`; hrnet = HRNetV2 from a local Cityscapes checkpoint (GCDP's HRNet-W48); off = none;
# auto = trained on shapes, hrnet on cityscapes (refused before training without its file), off elsewhere.
SEGMENTER_MODES = ("auto", "trained", "hrnet", "off")
# Eval fields that say where a file lives, not what is measured (its digest is in every row):
# left out of sweep identities and re-evaluation tags.
EVAL_PATH_FIELDS = ("inception_weights", "clip_weights", "clip_vocab", "segmenter_weights")
# How images reach Inception's 299x299 input (recorded with every number, reference
# diffusion_metrics.md B.5 item 3 / Part C item 5): tf1_bilinear = torch-fidelity's TF1-exact
# bilinear (TTUR-comparable), pil_bicubic = PIL bicubic to 299 then uint8 (clean-fid's filter).
INCEPTION_RESIZE_MODES = ("tf1_bilinear", "pil_bicubic")
AMP_MODES = ("auto", "native", "bf16", "off")
# eval.best_metric: which in-training evaluation keeps the best checkpoint, and in which direction.
BEST_METRICS = {"fid": "min", "r_precision": "max"}
# eval.caption_mode: which caption of a test image a generated image is made from (and R-precision
# scores it against). first: caption 0 of every image, mismatches from the caption-0 pool; random: the
# DM-GAN protocol (MinfengZhu/DM-GAN code/datasets.py: a random caption per pass; code/trainer.py
# R-precision: mismatches from any caption of another class/image), see t2i_ray/eval/evaluate.py.
CAPTION_MODES = ("first", "random")
# loss.f2f_variant: how the F2F loss's second fake (caption 2 of the same image, same noise) trains.
# isolated: it enters the NT-Xent term only. t2i_cl: as T2I_CL (huiyegit/T2I_CL
# `AttnGAN+CL/code/trainer.py` train loop) it also gets the generator's adversarial (and DAMSM) loss
# with its caption and D is trained on it (errD += errD_2), see t2i_ray/train/gan.py.
F2F_VARIANTS = ("isolated", "t2i_cl")


class ConfigError(ValueError):
    """A config value is invalid. The message names the dotted field and how to fix it."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "shapes"
    data_root: str | None = None  # real datasets only; `shapes` is generated
    resolution: int = 32  # power of two in 32..256: the side of square images, the short side otherwise
    # Width / height. 1: square (every method). Otherwise (model.method=diffusion on mmceleba or
    # cityscapes) the short side is data.resolution and the long side resolution x aspect (or
    # resolution / aspect for aspect < 1, portrait): cityscapes at aspect 2 and resolution 128 is
    # 128 x 256 (height x width), GCDP's base stage. `image_size(data_cfg)` gives (H, W).
    aspect: float = 1.0
    num_train: int = 4096  # `shapes`: images in the train split
    num_test: int = 1024  # `shapes`: images in the test split
    data_seed: int = 0  # `shapes`: the dataset is a pure function of (data_seed, n, resolution)
    words_num: int = 18  # max words per caption (longer: random ordered subset in training)
    loader_workers: int = 0  # DataLoader processes per Train worker
    # Real datasets only. Decoded-image cache (default <output_dir>/cache/data); unreadable images
    # skipped at most this many times per split, then the build stops naming them; captions JSONL
    # relative to data_root (mmceleba/cityscapes; default captions.jsonl).
    cache_dir: str | None = None
    max_bad_images: int = 10
    captions_file: str | None = None
    # cityscapes: the train split is leftImg8bit/train + leftImg8bit/val (2,975 + 500 = 3,475 images,
    # as GCDP trains); the test split stays val, so it is then also in the training set.
    trainval: bool = False
    # mmceleba: the share of the train split kept, in percent (25, 50 or 100: MM CelebA-HQ-25/50/100);
    # the images with the lowest sha1(key) (data/celeba.py `caption_subset`): nested, order-free.
    caption_subset: int = 100
    # `shapes`: at most this many objects per image (1-3; each image draws 1..max_objects). 3 is the
    # dataset as built (every preset); 1 is the easiest (one object per image). What each learns in
    # a given number of steps: benchmarks/README.md "Can a 20-minute laptop sweep draw shapes?".
    max_objects: int = 3
    # `shapes`: "mixed" (each object small or large, as built) or "large" (every object drawn at the
    # large size: ~10 px across at 32x32 instead of ~6, easier to draw and to recognise). The scene
    # draws are the same, so only the sizes (and size words) change, item for item.
    object_size: str = "mixed"


@dataclass(frozen=True)
class ModelConfig:
    method: str = "gan"  # METHODS: gan (the architectures below, model.arch) | diffusion (section diffusion)
    arch: str = "dfgan"  # dfgan | ssagan | attngan_style | style1attngan | attngan (t2i_ray/models/factory.py)
    nf: int = 32  # base width (ngf = ndf; plain attngan: ngf, ndf = 2nf); reference per architecture: REFERENCE_NF
    z_dim: int = 100
    embed_dim: int = 256  # DAMSM sentence/word embedding size
    # pretrained: frozen DAMSM text encoder. shared: one encoder trained by G's and D's losses.
    # dual (DTE-GAN, arXiv 2502.01507): S_G conditions G and is trained by G's loss only, S_D
    # conditions D's matching and alignment branches and is trained by D's losses only.
    # README "Text-embedding modes"; t2i_ray/models/factory.py, t2i_ray/train/gan.py.
    text_embedding: str = "pretrained"
    # DTE (shared/dual): weight of the image-text contrastive alignment loss on D's features.
    align_weight: float = 1.0
    align_temperature: float = 0.1
    # shared/dual: start the trainable encoder(s) from the pretrained DAMSM weights (False:
    # random init, i.e. fully end to end as DTE-GAN).
    text_init_from_damsm: bool = False
    # Conditioning augmentation (StackGAN, arXiv 1612.03242 sec. 3.1) between G's sentence
    # embedding and G: auto | on | off (auto: on for shared/dual, off for pretrained).
    conditioning_augmentation: str = "auto"
    ca_dim: int = 256  # CA's output c, G's condition (DF-GAN's sentence size)
    ca_kl_weight: float = 1.0  # KL(N(mu, sigma^2) || N(0, I)) in G's loss (StackGAN: 1)


@dataclass(frozen=True)
class LossWeights:
    """L_G_total = L_G + l1*L_DAMSM + l2*L_F2R + l3*L_F2F + l4*L_recap (seed paper 001)."""

    damsm: float = 0.0  # l1
    f2r: float = 0.0  # l2
    f2f: float = 0.0  # l3
    recap: float = 0.0  # l4: needs the pre-trained captioner (section `captioner`, cached)
    temperature: float = 0.5  # NT-Xent temperature for F2R/F2F
    gamma1: float = 4.0  # DAMSM attention sharpness over regions
    gamma2: float = 5.0  # DAMSM word-level aggregation
    gamma3: float = 10.0  # DAMSM logit scale
    magp: bool = True  # DF-GAN's matching-aware gradient penalty in D's loss (false: no penalty)
    magp_k: float = 2.0
    magp_p: float = 6.0
    # F2F_VARIANTS; applies when f2f > 0. isolated: the second fake only in NT-Xent (the term
    # alone); t2i_cl: T2I_CL's training, the second fake also trains G adversarially and D on it.
    f2f_variant: str = "isolated"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500  # optimiser steps (one D + one G update each)
    batch_size: int = 32  # per Train worker
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    lr_text: float = 1e-4  # trainable text encoders (shared/dual)
    beta1: float = 0.0
    beta2: float = 0.9
    # GAN: decay of an EMA copy of G (and of CA when on) updated after every G step, which then is
    # what samples (evaluation, sample grids, load_trained) and is checkpointed; AttnGAN's 0.999
    # (`taoxugit/AttnGAN` code/trainer.py avg_param_G). 0 = off: G itself samples.
    g_ema: float = 0.0
    num_workers: int = 1  # Ray Train workers per trial (data parallel)
    # Batch-coupled GAN terms (mismatched pairs, NT-Xent F2R/F2F, DAMSM, DTE alignment, recap's
    # token mean) on the global batch of all workers (t2i_ray/train/gather.py); false: each
    # worker's own batch, so the loss depends on num_workers.
    gather_negatives: bool = True
    use_gpu: bool = False
    # GPU speed-ups (t2i_ray/train/accel.py); "auto" turns each on only where it helps (CUDA).
    # bf16 autocast of the forward passes (no GradScaler needed): auto = on a GPU with bf16 (Ampere or
    # newer); native = also on a CPU with bf16 instructions (AVX512-BF16 / AMX: 1.2x the images/s of float32
    # there, benchmarks/README.md); bf16 = always; off = never
    amp: str = "auto"
    channels_last: str = "auto"  # auto | on | off: NHWC memory format for G, D and image batches
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest conv algorithms (CUDA only)
    cpus_per_worker: float = 1.0
    torch_threads: int = 1  # intra-op threads per worker (CPU)
    report_every: int = 100  # steps between ray.train.report / TensorBoard scalars
    checkpoint_every: int = 250  # steps between checkpoints


@dataclass(frozen=True)
class EvalConfig:
    num_images: int = 1024  # generated images for FID/KID/attribute accuracy/R-precision
    batch_size: int = 64
    r_precision_candidates: int = 100  # 1 true + 99 mismatched captions
    r_precision_folds: int = 10
    kid_subsets: int = 50
    kid_subset_size: int = 256
    evaluator_steps: int = 1500  # training steps of the `domain` evaluator (cached)
    evaluator_images: int = 16384  # its training pool: fresh procedural images, own seed
    # The segmenter of the diffusion's layout metrics (SEGMENTER_MODES; auto: the project's trained
    # one on shapes, HRNet on cityscapes).
    segmenter: str = "auto"
    # The trained `segmenter` (shapes only; t2i_ray/eval/layout.py): steps and pool.
    segmenter_steps: int = 800
    segmenter_images: int = 8192
    # HRNetV2 Cityscapes state dict (hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth of
    # HRNet/HRNet-Semantic-Segmentation; t2i_ray/eval/hrnet.py); None: $T2I_SEGMENTER_WEIGHTS. Never downloaded.
    segmenter_weights: str | None = None
    # HRNet's input size "HxW" (generated images are resized bilinearly to it; 1024x2048 is HRNet's
    # own Cityscapes test size, GCDP does not state one) or "native" (the generated size).
    segmenter_input: str = "1024x2048"
    backbone: str = "auto"  # FID/KID features: auto | domain | inception (EVAL_BACKBONES)
    # Local TF-ported FID Inception weights (weights-/pt_inception-2015-12-05-6726825d.pth); None:
    # the T2I_INCEPTION_WEIGHTS environment variable. Never downloaded.
    inception_weights: str | None = None
    inception_resize: str = "tf1_bilinear"  # INCEPTION_RESIZE_MODES
    is_splits: int = 10  # Inception Score: mean and std over this many splits
    # CLIP score (Hessel et al. arXiv:2104.08718; t2i_ray/eval/clip.py): auto = on for diffusion runs
    # on a real dataset when a CLIP weights file is configured (clip_weights or $T2I_CLIP_WEIGHTS),
    # off otherwise (and on `shapes`); on = required (refused before training without the files).
    clip_score: str = "auto"  # CLIP_SCORE_MODES
    # Local CLIP ViT state dict (GCDP: ViT-L/14@336px) and CLIP's BPE merges file
    # (bpe_simple_vocab_16e6.txt.gz); None: $T2I_CLIP_WEIGHTS / $T2I_CLIP_VOCAB. Never downloaded.
    clip_weights: str | None = None
    clip_vocab: str | None = None
    clip_prefix: str = "A photo depicts "  # prepended to every caption (Hessel et al.'s clipscore.py)
    # CAPTION_MODES: first (caption 0 of each test image; R-precision mismatches from caption 0s) or
    # random (DM-GAN: a random caption of the image per generated image, drawn from the eval seed;
    # mismatches from every caption of the other images/classes). The paper protocols use random.
    caption_mode: str = "first"
    # Truncated noise at evaluation (GAN samplers): None = z ~ N(0, I); t = DF-GAN's
    # truncated_noise (tobran/DF-GAN code/lib/utils.py): z = t * (N(0, 1) truncated to [-2, 2]),
    # entries beyond +-2 redrawn; DF-GAN evaluates with t = 0.88. Also the sample grids.
    truncation: float | None = None
    # A named paper protocol (EVAL_PROTOCOLS) the eval fields must match; None: free settings.
    protocol: str | None = None
    # Evaluation during training, to keep the best checkpoint beside the last (the papers report
    # their best epoch): every `every` steps and at the last step, FID/KID/R-precision on
    # `every_num_images` samples (a small budget: compare these numbers only with each other);
    # the checkpoint with the best `best_metric` (fid: lowest, r_precision: highest) is kept.
    # 0: off (no evaluation until the end, only the last checkpoint).
    every: int = 0
    every_num_images: int = 256
    best_metric: str = "fid"


@dataclass(frozen=True)
class DamsmConfig:
    """DAMSM encoder pre-training (AttnGAN's pretrain_DAMSM, scaled to the dataset)."""

    image_backbone: str = "cnn"  # cnn (trained from scratch, for `shapes`) | inception
    inception_weights: str | None = None  # local torchvision Inception-v3 state dict
    epochs: int = 12
    batch_size: int = 48
    lr: float = 2e-3
    lr_decay: float = 0.98  # per epoch, while lr > lr/10 (AttnGAN)
    grad_clip: float = 0.25  # on the RNN only
    # T2I_CL's stage 1 (Ye et al., arXiv:2107.02423; huiyegit/T2I_CL `DM-GAN+CL/code/pretrain_DAMSM.py`),
    # the encoders seed 001 uses: the DAMSM loss of each image's second caption too, plus
    # `contrastive` x NT-Xent between the two captions' sentence embeddings at
    # `contrastive_temperature`. T2I_CL: second_caption=true, contrastive=1.0, temperature 0.5.
    # The defaults train AttnGAN's DAMSM alone.
    second_caption: bool = False
    contrastive: float = 0.0
    contrastive_temperature: float = 0.5
    # Same-class masking (AttnGAN's class_ids): a caption of another image of the same class is
    # left out of the DAMSM softmaxes, in this pre-training and in the generator's l1 DAMSM term.
    # auto: on for the datasets with class ids (CLASS_DATASETS), off elsewhere; on: required.
    class_mask: str = "auto"
    # The pre-training's own seed (init, caption draws, batch order, the real images' R-precision
    # folds), not the run's `seed`: every seed of a sweep, and seeds added later by another sweep,
    # are trained and scored against one set of encoders, as the papers score every run with one
    # released DAMSM (AttnGAN's). Set it to measure the encoders' own seed variance.
    seed: int = 0


@dataclass(frozen=True)
class DiffusionConfig:
    """Gaussian-categorical diffusion (seed paper 002, GCDP; model.method=diffusion): an image and its
    semantic layout denoised jointly at a shared t (t2i_ray/models/diffusion, t2i_ray/train/diffusion.py).
    Defaults follow GCDP's code (pmh9960/GCDP train.py) where it applies to one stage; the U-Net widths
    and the sampling steps are sized for a CPU (README "Gaussian-categorical diffusion")."""

    joint: bool = True  # False: the image-only variant (layout branch off), the ablation baseline
    layout_weight: float = 1.0  # lambda: weight of the categorical layout loss (GCDP --lambdas 1 1)
    timesteps: int = 1000  # T of both forward processes
    schedule: str = "cosine"  # cosine | linear, for both modalities (GCDP: cosine on MM CelebA-HQ)
    dim: int = 32  # U-Net base width
    dim_mults: str = "1,2,4"  # width multiplier per level (comma-separated)
    blocks: str = "1,2,2"  # residual blocks per level
    attention_levels: str = "0,1,1"  # 1: self- and cross-attention after each block of that level
    heads: int = 4
    layout_channels: int = 3  # embed(y_t): one-hot layout -> this many channels (GCDP: 3)
    cond_drop: float = 0.1  # p of training with the null text (classifier-free guidance)
    p2_gamma: float = 0.0  # P2 loss weighting (Choi et al., arXiv:2204.00227); 0: off
    lr: float = 1.2e-4  # Adam(0.9, 0.99) as GCDP
    ema_decay: float = 0.999  # EMA of the weights used for sampling, warmed up as (1+s)/(10+s)
    sample_steps: int = 50  # respaced ancestral steps at evaluation (GCDP: 100)
    guidance_scale: float = 3.0  # classifier-free guidance at evaluation (GCDP test.py: 3)
    # More guidance scales scored by the same final evaluation (no retraining), as extra columns
    # `<metric>@g<scale>`; comma-separated, empty: none.
    extra_guidance_scales: str = ""
    outpaint_resample: int = 5  # RePaint resampling n of layout -> image outpainting (GCDP: 5)
    outpaint_images: int = 64  # real test items scored in each outpainting direction at evaluation
    # Super-resolution cascade (GCDP, as Imagen: a base model, then an SR model conditioned on its
    # output; README "The super-resolution cascade"). 0: one stage at data.resolution. Otherwise the
    # base model generates at this short side (data.resolution / 2^k, same aspect) and a second
    # U-Net, conditioned on the base's image and layout, brings them to data.resolution, the
    # resolution of the data, the samples and every metric (GCDP: 128 -> 256).
    base_resolution: int = 0
    # The SR U-Net's sizes; 0 / "": the base U-Net's value (diffusion.dim, dim_mults, blocks,
    # attention_levels). Heads, layout_channels, lr, EMA and sample_steps are shared.
    sr_dim: int = 0
    sr_dim_mults: str = ""
    sr_blocks: str = ""
    sr_attention_levels: str = ""
    # Level in [0, 1) of the noise added to the base's output before the SR stage sees it (Imagen's
    # noise conditioning augmentation; training draws U(0, 1) per sample; GCDP samples at 0.2).
    sr_noise_level: float = 0.2
    sr_guidance_scale: float = 1.0  # classifier-free guidance of the SR stage (GCDP test_sr.sh: 1)
    # True: unconditional image-layout generation (GCDP Table 1, arXiv:2308.08157): the U-Net sees
    # only the null text, in training and sampling (no guidance; cond_drop and guidance_scale unused).
    unconditional: bool = False


@dataclass(frozen=True)
class CaptionerConfig:
    """The frozen captioner of the re-captioning loss l4 (Show and Tell, models/captioner.py),
    pre-trained on real pairs once per data config and cached like the DAMSM encoders."""

    image_size: int = 32  # images are resized to this before its CNN (power of two, 8..256)
    word_dim: int = 128
    hidden_dim: int = 256  # LSTM
    dropout: float = 0.3
    epochs: int = 20  # one random caption of every train image per epoch
    batch_size: int = 64
    lr: float = 2e-3  # Adam, cosine-decayed to 0 over the run
    grad_clip: float = 5.0
    seed: int = 0  # the pre-training's seed, not the run's (as damsm.seed): one captioner for every seed


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    damsm: DamsmConfig = field(default_factory=DamsmConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    seed: int = 0
    output_dir: str = "t2i_runs"  # results table, checkpoints, caches, TensorBoard logs
    name: str = "default"  # a label for the row in the results table

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        cfg = _from_dict(cls, data, prefix="")
        validate(cfg)
        return cfg

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values (`{"loss.f2r": 0.2, ...}`), for tables and search spaces."""
        return flatten_dict(self.to_dict())

    def key(self, *sections: str) -> str:
        """Short content hash of some sections (e.g. "data", "damsm") for cache folders."""
        d = self.to_dict()
        blob = json.dumps({s: d[s] for s in sections} if sections else d, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def coerce_value(value: Any, type_str: str, where: str) -> Any:
    """Check/convert one leaf value against its annotation (given as a string), e.g. "3" for an
    `int` field; ConfigError starting with `where` when it does not fit."""
    optional = "None" in type_str
    base = type_str.replace(" | None", "").strip()
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: must be a {base}, got None")
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    if base == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: must be an integer, got {value!r}")
    if base == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if base == "str":
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: must be a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {type_str} at {where}")


def _from_dict(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid keys here: {', '.join(prefix + k for k in known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = known[name]
        where = prefix + name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, where + ".")
        else:
            kwargs[name] = coerce_value(value, str(f.type), where)
    return cls(**kwargs)


def apply_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """Return `cfg` with dotted-key overrides applied (`{"loss.f2r": 0.2}`), strictly validated."""
    d = cfg.to_dict()
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = d
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(
                    f"unknown config key {dotted!r}: {'.'.join(parts[: i + 1])} is not a section; "
                    f"sections: {', '.join(k for k, v in cfg.to_dict().items() if isinstance(v, dict))}"
                )
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            section = ".".join(parts[:-1]) or "config"
            raise ConfigError(
                f"unknown config key {dotted!r}; valid keys in {section}: "
                f"{', '.join(k for k, v in node.items() if not isinstance(v, dict))}"
            )
        node[parts[-1]] = value
    return ExperimentConfig.from_dict(d)


def parse_override(text: str) -> tuple[str, Any]:
    """`"loss.f2r=0.2"` -> `("loss.f2r", "0.2")`; values are typed by `apply_overrides`."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. loss.f2r=0.2)")
    key, value = text.split("=", 1)
    value = value.strip()
    return key.strip(), (None if value.lower() in ("none", "null") else value)


def _check(cond: bool, where: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{where}: {message}")


def _check_finite_floats(node: Any, prefix: str = "") -> None:
    """Every float field of the tree must be finite: nan fails every comparison, so range checks
    alone let it through (damsm.lr_decay=nan once trained silently), and no field has a use for inf."""
    for f in fields(node):
        value, where = getattr(node, f.name), prefix + f.name
        if is_dataclass(value):
            _check_finite_floats(value, where + ".")
        elif str(f.type).replace(" | None", "") == "float" and value is not None:
            _check(math.isfinite(value), where, f"must be a finite number, got {value}")


TRAINING_STAGES = ("train", "damsm", "captioner")


def check_batches_fit(cfg: ExperimentConfig, num_train: int, images: str, fix: str = "",
                      stages: tuple[str, ...] = TRAINING_STAGES) -> None:
    """Refuse batch sizes larger than the train split. Every train loader drops its last partial
    batch, so such a run would take no optimisation step (DAMSM once logged `loss nan` for every
    epoch and cached untrained encoders). `images` names the split, e.g. "data.num_train=64 train
    images"; `fix` is an alternative appended to the advice; `stages` the trainings that will run
    (a pre-training script runs one)."""
    t, p, c = cfg.train, cfg.damsm, cfg.captioner
    workers = t.num_workers > 1
    per_gan_step = (f"train.batch_size x train.num_workers = {t.batch_size} x {t.num_workers} = "
                    f"{t.batch_size * t.num_workers}" if workers else str(t.batch_size))
    for stage, where, need, shown, what, most in (
            ("train", "train.batch_size", t.batch_size * t.num_workers, per_gan_step,
             "diffusion training" if cfg.model.method == "diffusion" else "GAN training",
             f"{num_train // t.num_workers}" + (" (or lower train.num_workers)" if workers else "")),
            ("damsm", "damsm.batch_size", p.batch_size, str(p.batch_size), "DAMSM pre-training", num_train),
            ("captioner", "captioner.batch_size", c.batch_size, str(c.batch_size), "captioner pre-training",
             num_train)):
        if stage not in stages:
            continue
        _check(need <= num_train, where,
               f"{shown} is more than the {images}, so {what} would get no full batch and run no step; "
               f"lower {where} to at most {most}{fix}")


def image_size(data_cfg: DataConfig) -> tuple[int, int]:
    """(height, width) of the images: data.resolution is the short side, data.aspect = width / height."""
    r, a = data_cfg.resolution, data_cfg.aspect
    if a == 1:
        return r, r
    return (r, int(round(r * a))) if a > 1 else (int(round(r / a)), r)


def base_image_size(cfg: "ExperimentConfig") -> tuple[int, int]:
    """(height, width) of the base stage's samples: diffusion.base_resolution at data.aspect, or
    image_size(cfg.data) when there is no super-resolution stage (base_resolution 0)."""
    base = cfg.diffusion.base_resolution
    return image_size(replace(cfg.data, resolution=base)) if base else image_size(cfg.data)


def sr_unet_settings(f: "DiffusionConfig") -> dict[str, Any]:
    """The SR U-Net's dim, dim_mults, blocks, attention_levels: diffusion.sr_* where set, else the base's."""
    return {"dim": f.sr_dim or f.dim, "dim_mults": f.sr_dim_mults or f.dim_mults, "blocks": f.sr_blocks or f.blocks,
            "attention_levels": f.sr_attention_levels or f.attention_levels}


def legacy_data_key(data: Mapping[str, Any]) -> dict[str, Any]:
    """A data section's dict without the later fields that are at their defaults (LATER_DATA_DEFAULTS),
    for cache keys that must not change for configs from before those fields."""
    return {k: v for k, v in data.items() if not (k in LATER_DATA_DEFAULTS and v == LATER_DATA_DEFAULTS[k])}


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Raise ConfigError naming the first bad field; return cfg unchanged when valid."""
    d, m, l, t, e, p, c = cfg.data, cfg.model, cfg.loss, cfg.train, cfg.eval, cfg.damsm, cfg.captioner
    _check_finite_floats(cfg)
    _check(d.dataset in DATASETS, "data.dataset",
           f"unknown dataset {d.dataset!r}; available: {', '.join(DATASETS)}")
    real = d.dataset != "shapes"
    _check(not real or bool(d.data_root), "data.data_root",
           f"required for data.dataset={d.dataset!r}: the dataset's folder (README, 'Using a real dataset')")
    _check(real or d.data_root is None, "data.data_root",
           "the shapes dataset is generated and reads no files; set data.dataset too (e.g. cub) or drop it")
    _check(d.max_bad_images >= 0, "data.max_bad_images", f"must be >= 0, got {d.max_bad_images}")
    _check(d.captions_file is None or d.dataset in CAPTION_FILE_DATASETS, "data.captions_file",
           f"only {', '.join(CAPTION_FILE_DATASETS)} read a captions JSONL, not {d.dataset!r}")
    _check(d.cache_dir is None or bool(d.cache_dir), "data.cache_dir", "must be a non-empty path or none")
    _check(1 <= d.max_objects <= 3, "data.max_objects", f"must be 1, 2 or 3 (objects per shapes image), got {d.max_objects}")
    _check(d.max_objects == 3 or d.dataset == "shapes", "data.max_objects",
           f"sets the difficulty of the generated shapes dataset only, not {d.dataset!r}; drop it")
    _check(d.object_size in OBJECT_SIZES, "data.object_size",
           f"must be one of {', '.join(OBJECT_SIZES)} (the sizes of shapes objects), got {d.object_size!r}")
    _check(d.object_size == "mixed" or d.dataset == "shapes", "data.object_size",
           f"sets the difficulty of the generated shapes dataset only, not {d.dataset!r}; drop it")
    r = d.resolution
    _check(32 <= r <= 256 and r & (r - 1) == 0, "data.resolution",
           f"must be a power of two in 32..256 (32, 64, 128, 256), got {r}")
    _check(0.25 <= d.aspect <= 4, "data.aspect",
           f"must be width / height in 0.25..4 (1: square; cityscapes as GCDP: 2), got {d.aspect}")
    long_side = r * max(d.aspect, 1 / d.aspect) if d.aspect > 0 else 0
    _check(abs(long_side - round(long_side)) < 1e-6, "data.aspect",
           f"data.resolution x data.aspect (or / data.aspect below 1) must be a whole number of pixels, got "
           f"{r} -> {long_side:g}; e.g. aspect 2 or 0.5")
    if d.aspect != 1:
        _check(d.dataset in ASPECT_DATASETS, "data.aspect",
               f"non-square images are read for {', '.join(ASPECT_DATASETS)} only, not {d.dataset!r} "
               f"(shapes renders squares); set data.aspect=1")
        _check(m.method == "diffusion", "data.aspect",
               f"only model.method=diffusion takes non-square images (the GANs are square); set data.aspect=1 "
               f"for model.method={m.method!r}")
    _check(not d.trainval or d.dataset == "cityscapes", "data.trainval",
           f"train + val is a cityscapes option (GCDP's 3,475 images), not for {d.dataset!r}; set it to false")
    _check(d.caption_subset in CAPTION_SUBSETS, "data.caption_subset",
           f"must be one of {', '.join(map(str, CAPTION_SUBSETS))} (percent of the train images), got "
           f"{d.caption_subset}")
    _check(d.caption_subset == 100 or d.dataset == "mmceleba", "data.caption_subset",
           f"the 25/50 % subsets are MM CelebA-HQ's (data.dataset=mmceleba), not {d.dataset!r}; set it to 100")
    _check(d.num_train >= 64, "data.num_train", f"must be >= 64, got {d.num_train}")
    _check(d.num_test >= 2, "data.num_test", f"must be >= 2, got {d.num_test}")
    _check(d.data_seed >= 0, "data.data_seed", f"must be >= 0 (numpy refuses negative seeds), got {d.data_seed}")
    _check(1 <= d.words_num <= 64, "data.words_num", f"must be in 1..64, got {d.words_num}")
    _check(d.loader_workers >= 0, "data.loader_workers", "must be >= 0")
    _check(m.method in METHODS, "model.method",
           f"unknown method {m.method!r}; available: {', '.join(METHODS)}")
    _check(m.arch in ARCHITECTURES, "model.arch",
           f"unknown architecture {m.arch!r}; available: {', '.join(ARCHITECTURES)}")
    _check(m.text_embedding in TEXT_EMBEDDINGS, "model.text_embedding",
           f"must be one of {', '.join(TEXT_EMBEDDINGS)}, got {m.text_embedding!r}")
    _check(m.nf >= 4, "model.nf", f"must be >= 4, got {m.nf}")
    _check(m.z_dim >= 1, "model.z_dim", f"must be >= 1, got {m.z_dim}")
    _check(m.embed_dim >= 2 and m.embed_dim % 2 == 0, "model.embed_dim",
           f"must be an even number >= 2 (bi-LSTM halves), got {m.embed_dim}")
    _check(m.align_weight >= 0 and math.isfinite(m.align_weight), "model.align_weight",
           f"must be a finite number >= 0, got {m.align_weight}")
    _check(m.align_temperature > 0, "model.align_temperature", "must be > 0")
    _check(m.conditioning_augmentation in CA_MODES, "model.conditioning_augmentation",
           f"must be one of {', '.join(CA_MODES)}, got {m.conditioning_augmentation!r}")
    _check(m.ca_dim >= 1, "model.ca_dim", f"must be >= 1, got {m.ca_dim}")
    _check(m.ca_kl_weight >= 0 and math.isfinite(m.ca_kl_weight), "model.ca_kl_weight",
           f"must be a finite number >= 0, got {m.ca_kl_weight}")
    for name in ("damsm", "f2r", "f2f", "recap"):
        w = getattr(l, name)
        _check(math.isfinite(w) and w >= 0, f"loss.{name}",
               f"loss weight must be a finite number >= 0 (0 turns the term off), got {w}")
    _check(l.temperature > 0, "loss.temperature", f"must be > 0, got {l.temperature}")
    _check(l.f2f_variant in F2F_VARIANTS, "loss.f2f_variant",
           f"must be one of {', '.join(F2F_VARIANTS)}, got {l.f2f_variant!r}")
    for name in ("gamma1", "gamma2", "gamma3", "magp_k", "magp_p"):
        _check(getattr(l, name) > 0, f"loss.{name}", f"must be > 0, got {getattr(l, name)}")
    _check(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    _check(t.batch_size >= 2, "train.batch_size",
           f"must be >= 2 (mismatched pairs and contrastive losses need a batch), got {t.batch_size}")
    for name in ("lr_g", "lr_d", "lr_text"):
        _check(getattr(t, name) > 0, f"train.{name}", "must be > 0")
    _check(0 <= t.beta1 < 1 and 0 <= t.beta2 < 1, "train.beta1/beta2", "must be in [0, 1)")
    _check(0 <= t.g_ema < 1, "train.g_ema", f"must be in [0, 1) (0 = off), got {t.g_ema}")
    _check(t.g_ema == 0 or m.method == "gan", "train.g_ema",
           f"is the GAN generator's EMA; model.method={m.method!r} has its own (diffusion.ema_decay): "
           f"set train.g_ema=0")
    _check(t.num_workers >= 1, "train.num_workers", f"must be >= 1, got {t.num_workers}")
    _check(t.amp in AMP_MODES, "train.amp", f"must be one of {', '.join(AMP_MODES)}, got {t.amp!r}")
    _check(t.channels_last in ("auto", "on", "off"), "train.channels_last",
           f"must be one of auto, on, off, got {t.channels_last!r}")
    _check(t.cpus_per_worker > 0, "train.cpus_per_worker", "must be > 0")
    _check(t.torch_threads >= 1, "train.torch_threads", "must be >= 1")
    _check(t.report_every >= 1, "train.report_every", "must be >= 1")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    _check(e.num_images >= 2, "eval.num_images", f"must be >= 2, got {e.num_images}")
    _check(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    # The split sizes of real datasets are known only from their files (checked at evaluation).
    _check(2 <= e.r_precision_candidates and (real or e.r_precision_candidates <= d.num_test),
           "eval.r_precision_candidates",
           f"must be in 2..data.num_test ({d.num_test}) so mismatched captions come from other "
           f"test images, got {e.r_precision_candidates}")
    _check(e.r_precision_folds >= 1 and e.num_images >= e.r_precision_folds,
           "eval.r_precision_folds", "must be in 1..eval.num_images")
    _check(e.kid_subsets >= 1 and e.kid_subset_size >= 2, "eval.kid_subsets/kid_subset_size",
           "must be >= 1 and >= 2")
    _check(e.evaluator_steps >= 1, "eval.evaluator_steps", "must be >= 1")
    _check(e.evaluator_images >= 64, "eval.evaluator_images", "must be >= 64 (one evaluator batch)")
    _check(e.backbone in EVAL_BACKBONES, "eval.backbone",
           f"must be one of {', '.join(EVAL_BACKBONES)}, got {e.backbone!r}")
    _check(not (e.backbone == "domain" and d.dataset != "shapes"), "eval.backbone",
           f"the domain evaluator is trained on `shapes` images and exists for data.dataset=shapes only; "
           f"use eval.backbone=inception (or auto) for {d.dataset!r}")
    _check(e.inception_resize in INCEPTION_RESIZE_MODES, "eval.inception_resize",
           f"must be one of {', '.join(INCEPTION_RESIZE_MODES)}, got {e.inception_resize!r}")
    _check(e.inception_weights is None or bool(e.inception_weights.strip()), "eval.inception_weights",
           "must be a file path or None (then T2I_INCEPTION_WEIGHTS is used)")
    _check(e.clip_score in CLIP_SCORE_MODES, "eval.clip_score",
           f"must be one of {', '.join(CLIP_SCORE_MODES)}, got {e.clip_score!r}")
    for key, env in (("clip_weights", "T2I_CLIP_WEIGHTS"), ("clip_vocab", "T2I_CLIP_VOCAB")):
        value = getattr(e, key)
        _check(value is None or bool(value.strip()), f"eval.{key}",
               f"must be a file path or None (then ${env} is used), got {value!r}")
    _check(e.every >= 0, "eval.every", f"must be >= 0 (steps between evaluations during training; 0: off), "
           f"got {e.every}")
    _check(e.every == 0 or e.every_num_images >= max(2, e.r_precision_folds), "eval.every_num_images",
           f"must be >= 2 and >= eval.r_precision_folds ({e.r_precision_folds}), got {e.every_num_images}")
    _check(e.best_metric in BEST_METRICS, "eval.best_metric",
           f"must be one of {', '.join(BEST_METRICS)}, got {e.best_metric!r}")
    _check(2 <= e.is_splits <= e.num_images, "eval.is_splits",
           f"must be in 2..eval.num_images ({e.num_images}), got {e.is_splits}")
    _check(e.caption_mode in CAPTION_MODES, "eval.caption_mode",
           f"must be one of {', '.join(CAPTION_MODES)}, got {e.caption_mode!r}")
    _check(e.truncation is None or (math.isfinite(e.truncation) and e.truncation > 0), "eval.truncation",
           f"must be a number > 0 (DF-GAN: 0.88; the noise is t * N(0,1) truncated to [-2, 2]) or none "
           f"(plain N(0, I)), got {e.truncation!r}")
    _check(e.truncation is None or m.method == "gan", "eval.truncation",
           f"truncated noise is an option of the GAN samplers (z); model.method={m.method!r} has no z to "
           f"truncate: set eval.truncation=none")
    if e.protocol is not None:
        _check(e.protocol in EVAL_PROTOCOLS, "eval.protocol",
               f"unknown protocol {e.protocol!r}; available: {', '.join(EVAL_PROTOCOLS)} (or None)")
        proto = EVAL_PROTOCOLS[e.protocol]
        _check(d.dataset == proto["dataset"], "eval.protocol",
               f"{e.protocol!r} is the protocol of data.dataset={proto['dataset']!r}, not {d.dataset!r}")
        for key, want in proto["eval"].items():
            _check(getattr(e, key) == want, f"eval.{key}",
                   f"eval.protocol={e.protocol!r} requires {want!r}, got {getattr(e, key)!r}; apply the "
                   f"protocol's values with --eval-protocol {e.protocol} (protocol_overrides) or unset "
                   f"eval.protocol")
        # R-precision is scored with the DAMSM encoders; the papers' numbers come from AttnGAN's
        # Inception-v3 image encoder (reference code taoxugit/AttnGAN code/model.py CNN_ENCODER), so
        # the protocol refuses the from-scratch `cnn` one instead of publishing a number it did not make.
        for key, want in proto["damsm"].items():
            _check(getattr(p, key) == want, f"damsm.{key}",
                   f"eval.protocol={e.protocol!r} scores R-precision with AttnGAN's Inception-v3 DAMSM image "
                   f"encoder: set damsm.{key}={want} (with damsm.inception_weights=/path/to/"
                   f"inception_v3_google-0cc3c7bd.pth) so the run's DAMSM is pre-trained on it, or unset "
                   f"eval.protocol (got damsm.{key}={getattr(p, key)!r})")
    _check(p.image_backbone in IMAGE_ENCODER_BACKBONES, "damsm.image_backbone",
           f"must be one of {', '.join(IMAGE_ENCODER_BACKBONES)}, got {p.image_backbone!r}")
    _check(p.epochs >= 1, "damsm.epochs", "must be >= 1")
    _check(p.batch_size >= 2, "damsm.batch_size", "must be >= 2")
    _check(p.lr > 0, "damsm.lr", "must be > 0")
    _check(0 < p.lr_decay <= 1, "damsm.lr_decay",
           f"must be a finite number in (0, 1] (the lr factor per epoch; 1: no decay), got {p.lr_decay}")
    _check(p.grad_clip > 0, "damsm.grad_clip", f"must be a finite number > 0, got {p.grad_clip}")
    _check(p.contrastive >= 0, "damsm.contrastive",
           f"must be a finite number >= 0 (0 turns the term off; T2I_CL: 1.0), got {p.contrastive}")
    _check(p.contrastive_temperature > 0, "damsm.contrastive_temperature",
           f"must be > 0 (T2I_CL: 0.5), got {p.contrastive_temperature}")
    _check(p.class_mask in CLASS_MASK_MODES, "damsm.class_mask",
           f"must be one of {', '.join(CLASS_MASK_MODES)}, got {p.class_mask!r}")
    _check(p.class_mask != "on" or d.dataset in CLASS_DATASETS, "damsm.class_mask",
           f"on needs a dataset with class ids ({', '.join(CLASS_DATASETS)}); data.dataset={d.dataset!r} has "
           f"none: use auto or off")
    _check(p.inception_weights is None or bool(p.inception_weights.strip()), "damsm.inception_weights",
           f"must be a file path or none, got {p.inception_weights!r}")
    _check(p.image_backbone != "inception" or p.inception_weights is not None, "damsm.inception_weights",
           "damsm.image_backbone=inception needs torchvision's ImageNet Inception-v3 weights file "
           "(inception_v3_google-0cc3c7bd.pth): set damsm.inception_weights=/path/to/it, "
           "or use damsm.image_backbone=cnn")
    s = c.image_size
    _check(8 <= s <= 256 and s & (s - 1) == 0, "captioner.image_size",
           f"must be a power of two in 8..256, got {s}")
    for name in ("word_dim", "hidden_dim", "epochs"):
        _check(getattr(c, name) >= 1, f"captioner.{name}", f"must be >= 1, got {getattr(c, name)}")
    _check(c.batch_size >= 2, "captioner.batch_size", f"must be >= 2, got {c.batch_size}")
    _check(0 <= c.dropout < 1, "captioner.dropout", f"must be in [0, 1), got {c.dropout}")
    _check(c.lr > 0, "captioner.lr", "must be > 0")
    _check(c.grad_clip > 0, "captioner.grad_clip", "must be > 0")
    if not real:  # a real dataset's split sizes are known from its files (config_checks.py)
        check_batches_fit(cfg, d.num_train, f"data.num_train={d.num_train} train images", " or raise data.num_train")
    _check_diffusion(cfg)
    _check_combinations(cfg)
    _check(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    _check(cfg.damsm.seed >= 0, "damsm.seed", f"must be >= 0, got {cfg.damsm.seed}")
    _check(cfg.captioner.seed >= 0, "captioner.seed", f"must be >= 0, got {cfg.captioner.seed}")
    _check(bool(cfg.output_dir), "output_dir", "must be a non-empty path")
    return cfg


def int_list(text: str, where: str) -> tuple[int, ...]:
    """"1,2,4" -> (1, 2, 4); ConfigError naming `where` otherwise."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{where}: must be comma-separated integers (e.g. 1,2,4), got {text!r}") from None
    return values


def float_list(text: str, where: str) -> tuple[float, ...]:
    """"1,2.5" -> (1.0, 2.5); "" -> (); ConfigError naming `where` otherwise."""
    if not text.strip():
        return ()
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{where}: must be comma-separated numbers (e.g. 1,2,4) or empty, got {text!r}") from None
    return values


def _check_unet_sizes(cfg: ExperimentConfig, prefix: str, size: tuple[int, int], what: str) -> None:
    """The sizes of one diffusion U-Net (prefix "": the base's fields, "sr_": the SR stage's) at
    image size `size` (H, W), described by `what` in the message."""
    f = cfg.diffusion
    s = sr_unet_settings(f) if prefix else {"dim": f.dim, "dim_mults": f.dim_mults, "blocks": f.blocks,
                                            "attention_levels": f.attention_levels}
    key = {k: f"diffusion.{prefix}{k}" for k in s}
    mults = int_list(s["dim_mults"], key["dim_mults"])
    blocks = int_list(s["blocks"], key["blocks"])
    attn = int_list(s["attention_levels"], key["attention_levels"])
    _check(len(mults) >= 1 and all(m >= 1 for m in mults), key["dim_mults"],
           f"needs one multiplier >= 1 per level, got {s['dim_mults']!r}")
    _check(len(blocks) == len(mults) and all(b >= 1 for b in blocks), key["blocks"],
           f"needs one count >= 1 per level ({len(mults)} levels in {key['dim_mults']}), got {s['blocks']!r}")
    _check(len(attn) == len(mults) and set(attn) <= {0, 1}, key["attention_levels"],
           f"needs one 0/1 per level ({len(mults)} levels in {key['dim_mults']}), got {s['attention_levels']!r}")
    h, w = size
    _check(h % 2 ** (len(mults) - 1) == 0 and w % 2 ** (len(mults) - 1) == 0, key["dim_mults"],
           f"{len(mults)} levels halve the image {len(mults) - 1} times: the image size {h}x{w} ({what}) is not "
           f"divisible by {2 ** (len(mults) - 1)}")
    _check(s["dim"] >= 8 and s["dim"] % 8 == 0, key["dim"],
           f"must be a multiple of 8 (GroupNorm groups), got {s['dim']}")
    _check(f.heads >= 1 and (s["dim"] * min(mults)) % f.heads == 0, "diffusion.heads",
           f"must divide every level's width ({key['dim']} x multiplier), got {f.heads}")


def _check_diffusion(cfg: ExperimentConfig) -> None:
    f = cfg.diffusion
    d, base = cfg.data, f.base_resolution
    _check(f.sr_dim >= 0, "diffusion.sr_dim", f"must be >= 0 (0: diffusion.dim), got {f.sr_dim}")
    if base:
        _check(cfg.model.method == "diffusion", "diffusion.base_resolution",
               f"the super-resolution cascade belongs to model.method=diffusion, not {cfg.model.method!r}: "
               f"set diffusion.base_resolution=0")
        _check(8 <= base < d.resolution and base & (base - 1) == 0, "diffusion.base_resolution",
               f"the base stage's short side must be a power of two >= 8 below data.resolution={d.resolution} "
               f"(the resolution of the data and of the cascade's output; e.g. {d.resolution // 2} for GCDP's 2x), "
               f"or 0 for one stage; got {base}")
        long_side = base * max(d.aspect, 1 / d.aspect)
        _check(abs(long_side - round(long_side)) < 1e-6, "diffusion.base_resolution",
               f"diffusion.base_resolution x data.aspect must be a whole number of pixels, got {base} x "
               f"{d.aspect:g} -> {long_side:g}; pick another base_resolution or aspect")
        bh, bw = base_image_size(cfg)
        _check_unet_sizes(cfg, "", (bh, bw), f"the base stage: diffusion.base_resolution={base}, "
                                             f"data.aspect={d.aspect:g}")
        _check_unet_sizes(cfg, "sr_", image_size(d), f"the SR stage's output: data.resolution={d.resolution}, "
                                                     f"data.aspect={d.aspect:g}")
    else:
        _check_unet_sizes(cfg, "", image_size(d), f"data.resolution={d.resolution}, data.aspect={d.aspect:g}")
        for key in ("sr_dim", "sr_dim_mults", "sr_blocks", "sr_attention_levels"):
            _check(not getattr(f, key), f"diffusion.{key}",
                   f"sizes the super-resolution stage, which a one-stage run (diffusion.base_resolution=0) does not "
                   f"have: set diffusion.base_resolution (e.g. {d.resolution // 2}) or leave it unset")
    _check(0 <= f.sr_noise_level < 1, "diffusion.sr_noise_level", f"must be in [0, 1), got {f.sr_noise_level}")
    _check(f.sr_guidance_scale >= 0, "diffusion.sr_guidance_scale", f"must be >= 0, got {f.sr_guidance_scale}")
    _check(f.layout_channels >= 1, "diffusion.layout_channels", f"must be >= 1, got {f.layout_channels}")
    _check(f.timesteps >= 2, "diffusion.timesteps", f"must be >= 2, got {f.timesteps}")
    _check(1 <= f.sample_steps <= f.timesteps, "diffusion.sample_steps",
           f"must be in 1..diffusion.timesteps ({f.timesteps}), got {f.sample_steps}")
    _check(f.schedule in ("cosine", "linear"), "diffusion.schedule", f"must be cosine or linear, got {f.schedule!r}")
    _check(f.layout_weight >= 0, "diffusion.layout_weight", f"must be >= 0, got {f.layout_weight}")
    _check(0 <= f.cond_drop < 1, "diffusion.cond_drop", f"must be in [0, 1), got {f.cond_drop}")
    _check(f.p2_gamma >= 0, "diffusion.p2_gamma", f"must be >= 0, got {f.p2_gamma}")
    _check(f.lr > 0, "diffusion.lr", f"must be > 0, got {f.lr}")
    _check(0 <= f.ema_decay < 1, "diffusion.ema_decay", f"must be in [0, 1), got {f.ema_decay}")
    _check(f.guidance_scale >= 0, "diffusion.guidance_scale", f"must be >= 0, got {f.guidance_scale}")
    _check(all(g >= 0 for g in float_list(f.extra_guidance_scales, "diffusion.extra_guidance_scales")),
           "diffusion.extra_guidance_scales", f"must be numbers >= 0, got {f.extra_guidance_scales!r}")
    _check(not (f.unconditional and float_list(f.extra_guidance_scales, "diffusion.extra_guidance_scales")),
           "diffusion.extra_guidance_scales", "an unconditional model (diffusion.unconditional=true) has no guidance "
           f"to vary; leave it empty, got {f.extra_guidance_scales!r}")
    _check(f.outpaint_resample >= 1, "diffusion.outpaint_resample", f"must be >= 1, got {f.outpaint_resample}")
    _check(f.outpaint_images >= 1, "diffusion.outpaint_images", f"must be >= 1, got {f.outpaint_images}")
    _check(cfg.eval.segmenter in SEGMENTER_MODES, "eval.segmenter",
           f"must be one of {', '.join(SEGMENTER_MODES)}, got {cfg.eval.segmenter!r}")
    _check(cfg.eval.segmenter != "trained" or cfg.data.dataset == "shapes", "eval.segmenter",
           f"the trained segmenter learns from procedural `shapes` layouts and exists for data.dataset=shapes only, "
           f"not {cfg.data.dataset!r}; use eval.segmenter=hrnet (cityscapes), auto or off")
    _check(cfg.eval.segmenter != "hrnet" or cfg.data.dataset == "cityscapes", "eval.segmenter",
           f"HRNet's Cityscapes checkpoint predicts the 19 Cityscapes classes: it serves data.dataset=cityscapes "
           f"only, not {cfg.data.dataset!r}; use auto, trained (shapes) or off")
    _check(cfg.eval.segmenter_weights is None or bool(cfg.eval.segmenter_weights.strip()), "eval.segmenter_weights",
           f"must be a file path or None (then $T2I_SEGMENTER_WEIGHTS is used), got {cfg.eval.segmenter_weights!r}")
    try:
        parse_input_size(cfg.eval.segmenter_input)
    except ValueError as err:
        raise ConfigError(f"eval.segmenter_input: {err}") from None
    _check(cfg.eval.segmenter_steps >= 1, "eval.segmenter_steps", f"must be >= 1, got {cfg.eval.segmenter_steps}")
    _check(cfg.eval.segmenter_images >= 32, "eval.segmenter_images",
           f"must be >= 32 (one segmenter batch), got {cfg.eval.segmenter_images}")
    if cfg.model.method == "diffusion":
        _check(not f.joint or cfg.data.dataset in LAYOUT_DATASETS, "diffusion.joint",
               f"the joint model generates layouts and needs a dataset with them ({', '.join(LAYOUT_DATASETS)}), "
               f"not {cfg.data.dataset!r}; set diffusion.joint=false for the image-only model")
        _check(cfg.loss.damsm == cfg.loss.f2r == cfg.loss.f2f == cfg.loss.recap == 0, "loss",
               "loss.damsm/f2r/f2f/recap are GAN generator terms; model.method=diffusion trains with its own "
               "loss (diffusion.layout_weight): set them to 0")
        _check(cfg.train.gather_negatives, "train.gather_negatives",
               "model.method=diffusion has no batch-coupled loss terms (each is a mean of per-sample "
               "values), so there are no negatives to keep per worker: leave it at true (the default)")
        _check(cfg.model.text_embedding == "pretrained", "model.text_embedding",
               "model.method=diffusion conditions on the frozen DAMSM text encoder (pretrained); shared/dual "
               "are DTE-GAN's trainable embeddings")


def uses_ca(m: ModelConfig) -> bool:
    """Whether G's sentence embedding goes through conditioning augmentation (model.
    conditioning_augmentation; auto: on for the trainable embeddings shared/dual, except on plain
    AttnGAN, whose generator has its own CA, F^ca of arXiv 1711.10485 section 2.1)."""
    if m.conditioning_augmentation == "auto":
        return m.text_embedding in ("shared", "dual") and m.arch != "attngan"
    return m.conditioning_augmentation == "on"


def _check_combinations(cfg: ExperimentConfig) -> None:
    """Settings that are valid alone but contradict each other (which parts train what:
    README "Text-embedding modes")."""
    m = cfg.model
    _check(not m.text_init_from_damsm or m.text_embedding != "pretrained", "model.text_init_from_damsm",
           "only applies to the trainable text encoders of model.text_embedding=shared|dual; with "
           "pretrained the frozen DAMSM encoder is used as is: set it to false or pick shared/dual")
    if uses_ca(m):
        _check(m.method == "gan", "model.conditioning_augmentation",
               f"conditioning augmentation is a GAN generator's input stage; model.method={m.method} has none: "
               "set it to auto or off")
        _check(m.arch != "attngan", "model.conditioning_augmentation",
               "model.arch=attngan has its own conditioning augmentation inside its generator (with its KL "
               "term, loss_kl); a second one would be applied on top: set it to auto or off")
        # attngan_style's word attention reads the words at the width G's condition has.
        _check(m.arch != "attngan_style" or m.ca_dim == m.embed_dim, "model.ca_dim",
               f"model.arch=attngan_style attends over words of model.embed_dim={m.embed_dim} with the same "
               f"width as its sentence condition: set model.ca_dim={m.embed_dim}, or conditioning_augmentation=off")
    # T2I_CL trains its GANs on the frozen DAMSM text encoder; which of D's and G's flows would reach
    # a trainable embedding through the second caption is not defined there.
    _check(cfg.loss.f2f_variant != "t2i_cl" or m.arch != "attngan", "loss.f2f_variant",
           "t2i_cl shows the second fake to a single-stage D; plain AttnGAN's three discriminators are not "
           "built for it here: use loss.f2f_variant=isolated, or another model.arch")
    _check(cfg.loss.f2f_variant != "t2i_cl" or m.text_embedding == "pretrained", "loss.f2f_variant",
           f"t2i_cl is T2I_CL's training with the frozen DAMSM text encoder (model.text_embedding=pretrained), "
           f"not {m.text_embedding!r}: use loss.f2f_variant=isolated or text_embedding=pretrained")


# Presets: the CLI and the sweeps both start from one of these. `smoke` and `local` train at
# 32x32 with a narrow DF-GAN so that a 2-core CPU finishes them (SPEC 3 speed figures). Their
# learning rates are 4x / 2x DF-GAN's 1e-4 / 4e-4, which learn too slowly for these budgets
# (baseline R-precision after 600 steps: 0.02-0.04 with those, 0.04-0.10 with these;
# benchmarks/README.md). At `local`'s 300 steps the text conditioning has only begun; the main job
# (sweeps/ablate_losses.py) adds its laptop design on top on `shapes` (LAPTOP_DEFAULTS: one object per
# image, 3x these rates, 1,750 steps, SSA-GAN without and with its DAMSM term x 3 seeds): in about 20
# minutes on 2 cores, objects of the named colour, of the named shape in about 40 % of the images, and
# the two rows separated at p < 0.05 (benchmarks/README.md "What 20 minutes can separate").
PRESETS: dict[str, dict[str, Any]] = {
    # `ci`: every stage runs for real (pre-training, Ray Train, evaluation), at sizes that finish in
    # seconds, so that tests run the scripts as users do; its numbers mean nothing.
    "ci": {
        "data.num_train": 128, "data.num_test": 64,
        "model.nf": 4,
        "train.steps": 4, "train.batch_size": 8, "train.report_every": 2, "train.checkpoint_every": 2,
        "train.lr_g": 4e-4, "train.lr_d": 8e-4,
        "eval.num_images": 64, "eval.batch_size": 64, "eval.r_precision_candidates": 32, "eval.every": 0,
        "eval.r_precision_folds": 2, "eval.kid_subsets": 5, "eval.kid_subset_size": 32,
        "eval.evaluator_steps": 30, "eval.evaluator_images": 256,
        "eval.segmenter_steps": 20, "eval.segmenter_images": 256, "diffusion.outpaint_images": 8,
        "damsm.epochs": 1, "damsm.batch_size": 16,
        "captioner.epochs": 1, "captioner.batch_size": 16,
    },
    "smoke": {
        "data.num_train": 512, "data.num_test": 256,
        "model.nf": 8,
        "train.steps": 40, "train.batch_size": 16, "train.report_every": 20,
        "train.lr_g": 4e-4, "train.lr_d": 8e-4,
        "train.checkpoint_every": 20,
        "eval.num_images": 256, "eval.kid_subset_size": 128, "eval.kid_subsets": 20,
        "eval.evaluator_steps": 300, "eval.evaluator_images": 4096,
        "damsm.epochs": 3,
        "captioner.epochs": 4,
    },
    "local": {
        "data.num_train": 4096, "data.num_test": 1024,
        "model.nf": 16,
        "train.steps": 300, "train.batch_size": 32, "train.report_every": 50,
        "train.lr_g": 4e-4, "train.lr_d": 8e-4,
        "train.checkpoint_every": 100,
        "eval.num_images": 1024,
        "eval.every": 100, "eval.every_num_images": 256,
        "eval.evaluator_steps": 1500,
        "damsm.epochs": 12,
        "captioner.epochs": 12,
    },
    "paper": {
        "data.resolution": 256, "data.num_train": 8855, "data.num_test": 2933,
        "model.nf": 32,
        "train.steps": 300000, "train.batch_size": 32, "train.report_every": 1000,
        "train.checkpoint_every": 5000, "train.use_gpu": True, "train.torch_threads": 4,
        "eval.num_images": 30000, "eval.kid_subset_size": 1000, "eval.kid_subsets": 100,
        # 2048 = the Inception feature dimension: the fewest samples with a full-rank covariance.
        "eval.every": 10000, "eval.every_num_images": 2048,
        "eval.evaluator_steps": 5000,
        "damsm.epochs": 200,
        "captioner.image_size": 128, "captioner.hidden_dim": 512, "captioner.word_dim": 256,
        "captioner.epochs": 100,
    },
}


# Paper evaluation protocols as named eval presets (`protocol_overrides(name)` gives the overrides;
# `eval.protocol=name` then makes validation hold every field to them). The real set is always the
# dataset's test split at data.resolution. Sources: reference/gan_anchors.md §3.6 (DM-GAN
# R-precision: 30,000 images, 1 true + 99 other-class captions, 10 folds), §1.6 DF-GAN FID ("~30k
# generated"; CUB 2933//32*32*10 = 29,120; the *_FIDK0.npz real stats are of the test set, COCO test
# = val2014; CUB/flowers test images were flip/shift-augmented to ~30k, which we do not reproduce),
# §6 (AttnGAN/DM-GAN rows: 30k), caption_mode random (DM-GAN code/datasets.py: a random caption of
# the image per generated image); diffusion_metrics.md B.3 (IS: 10 splits, ddof-0 std; CUB papers
# use a fine-tuned Inception, so our CUB IS is not comparable with theirs) and B.2 (torch-fidelity's
# KID defaults: 100 subsets of 1000). FID uses torch-fidelity's TF1 bilinear resize (TTUR numbers).
_T2I_PAPER_EVAL: dict[str, Any] = {
    "num_images": 30000, "backbone": "inception", "inception_resize": "tf1_bilinear", "is_splits": 10,
    "r_precision_candidates": 100, "r_precision_folds": 10, "kid_subsets": 100, "kid_subset_size": 1000,
    "caption_mode": "random",
}
# `damsm`: fields the run's DAMSM must have (validation refuses others, naming the fix; they are not
# set by protocol_overrides, since they change what is trained and need a local weights file).
_T2I_PAPER_DAMSM: dict[str, Any] = {"image_backbone": "inception"}
EVAL_PROTOCOLS: dict[str, dict[str, Any]] = {
    "cub": {"dataset": "cub", "eval": dict(_T2I_PAPER_EVAL), "damsm": dict(_T2I_PAPER_DAMSM),
            "real_set": "test split (2,933 images), 30k fakes from random captions of its images"},
    "oxford102": {"dataset": "oxford102", "eval": dict(_T2I_PAPER_EVAL), "damsm": dict(_T2I_PAPER_DAMSM),
                  "real_set": "test split, 30k fakes from random captions of its images"},
    "coco": {"dataset": "coco", "eval": dict(_T2I_PAPER_EVAL), "damsm": dict(_T2I_PAPER_DAMSM),
             "real_set": "test split = val2014 (~40k images), 30k fakes from random captions of its images"},
}


def protocol_overrides(name: str) -> dict[str, Any]:
    """Dotted overrides that apply paper protocol `name` (and record it in eval.protocol)."""
    if name not in EVAL_PROTOCOLS:
        raise ConfigError(f"eval.protocol: unknown protocol {name!r}; available: {', '.join(EVAL_PROTOCOLS)}")
    return {**{f"eval.{k}": v for k, v in EVAL_PROTOCOLS[name]["eval"].items()}, "eval.protocol": name}


def resolved_eval_backbone(cfg: ExperimentConfig) -> str:
    """eval.backbone with "auto" resolved: domain on `shapes`, inception on real datasets."""
    if cfg.eval.backbone != "auto":
        return cfg.eval.backbone
    return "domain" if cfg.data.dataset == "shapes" else "inception"


def resolved_segmenter(cfg: ExperimentConfig) -> str:
    """eval.segmenter resolved for this run: "trained" | "hrnet" | "off". Only diffusion runs score
    layouts; auto = trained on shapes, hrnet on cityscapes, off on the other datasets."""
    if cfg.model.method != "diffusion":
        return "off"
    if cfg.eval.segmenter != "auto":
        return cfg.eval.segmenter
    return {"shapes": "trained", "cityscapes": "hrnet"}.get(cfg.data.dataset, "off")


def parse_input_size(value: str) -> tuple[int, int] | None:
    """eval.segmenter_input: "HxW" (height first, e.g. "1024x2048") -> (H, W); "native" -> None."""
    if value == "native":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(value))
    if not m or min(int(m.group(1)), int(m.group(2))) < 32:
        raise ValueError(f"must be 'HEIGHTxWIDTH' (each >= 32, e.g. 1024x2048, HRNet's Cityscapes test size) or "
                         f"'native' (the generated size), got {value!r}")
    return int(m.group(1)), int(m.group(2))


def resolved_damsm_class_mask(cfg: ExperimentConfig) -> bool:
    """damsm.class_mask with "auto" resolved: on for the datasets with class ids (CLASS_DATASETS)."""
    if cfg.damsm.class_mask != "auto":
        return cfg.damsm.class_mask == "on"
    return cfg.data.dataset in CLASS_DATASETS


def build_config(preset: str = "local", overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    cfg = apply_overrides(ExperimentConfig(), PRESETS[preset])
    return apply_overrides(cfg, dict(overrides or {}))


class _YamlLeaf:
    """A leaf value of a config file and the line it came from (for error messages)."""

    def __init__(self, value: Any, line: int):
        self.value, self.line = value, line


def read_config_file(path: str | Path) -> dict[str, _YamlLeaf]:
    """Read a YAML config file into dotted keys (`{"train.steps": leaf}`), strictly.

    The file mirrors the config tree (`train: {steps: 300}`; dotted keys such as `train.steps: 300`
    are accepted too). Syntax errors, duplicate keys (YAML would silently keep the last) and
    non-mapping sections raise ConfigError with `file:line`. Unknown keys and wrong types are
    caught by `build_config`, which `config_file_overrides` maps back to their lines.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it ({exc.strerror or exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return {}
        out: dict[str, _YamlLeaf] = {}
        sections = {k for k, v in ExperimentConfig().to_dict().items() if isinstance(v, dict)}

        def walk(node, prefix: str) -> None:
            if not isinstance(node, yaml.MappingNode):
                where = prefix.rstrip(".") or "the top level"
                raise ConfigError(f"{path}:{node.start_mark.line + 1}: {where} must be a mapping of "
                                  f"config keys (e.g. train: {{steps: 300}}), got a {node.id}")
            for key_node, value_node in node.value:
                key = prefix + str(loader.construct_object(key_node))
                line = key_node.start_mark.line + 1
                if isinstance(value_node, yaml.MappingNode):
                    walk(value_node, key + ".")
                    continue
                if key in sections:
                    raise ConfigError(f"{path}:{line}: {key} is a config section: give its keys as a "
                                      f"mapping (e.g. {key}: {{...}}), got a {value_node.id}")
                if key in out:
                    raise ConfigError(f"{path}:{line}: duplicate key {key!r} (first set on line "
                                      f"{out[key].line}); YAML would silently keep the last one")
                out[key] = _YamlLeaf(loader.construct_object(value_node, deep=True), line)

        walk(root, "")
        return out
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    finally:
        loader.dispose()


def build_config_with_file(preset: str, config_file: str | Path | None,
                           overrides: Mapping[str, Any] | None = None,
                           defaults: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """preset < `defaults` (a script's own, e.g. the diffusion sweep's sizes) < config file < explicit
    overrides; an error in the file names its line."""
    leaves = read_config_file(config_file) if config_file else {}
    if defaults:
        build_config(preset, defaults)  # a bad default is the script's bug, reported as such
    try:
        cfg = build_config(preset, {**(defaults or {}), **{k: leaf.value for k, leaf in leaves.items()}})
    except ConfigError as exc:
        msg = str(exc)
        # The failing dotted key is the message's subject: "train.steps: ..." or "unknown config key 'x.y'".
        for key, leaf in leaves.items():
            if msg.startswith(f"{key}:") or f"'{key}'" in msg or f" {key};" in msg or f" {key}," in msg:
                raise ConfigError(f"{config_file}:{leaf.line}: {msg}") from None
        raise ConfigError(f"{config_file}: {msg}") from None
    return apply_overrides(cfg, dict(overrides or {}))


__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "LossWeights", "TrainConfig", "EvalConfig",
    "DamsmConfig", "CaptionerConfig", "DiffusionConfig", "ExperimentConfig", "PRESETS", "EVAL_PROTOCOLS", "build_config",
    "apply_overrides", "coerce_value", "parse_override", "protocol_overrides", "resolved_eval_backbone",
    "resolved_damsm_class_mask", "validate", "replace", "image_size", "base_image_size", "sr_unet_settings",
    "legacy_data_key",
    "check_batches_fit",
    "read_config_file", "build_config_with_file",
]
