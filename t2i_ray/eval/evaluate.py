"""One entry point: a generator -> a dict of metrics, each with its sample count and backbone.

The FID/KID feature backbone is `eval.backbone` (auto: `domain` on shapes, `inception` on real
datasets; `config.resolved_eval_backbone`):
- `domain` (`shapes` only, SPEC 6): the project's evaluator trained on real shapes images (frozen,
  cached, versioned); FID and KID on its features, fakes vs the real test split, and the oracle
  attribute accuracy (the evaluator's (shape, colour) detections vs the caption's objects). No IS:
  that needs an ImageNet classifier, and faking it with another network would mislead.
- `inception`: the standard TF-ported FID Inception from local weights (`eval/inception.py`);
  FID/KID on pool3, IS (10 splits) on its logits (none from a pool3-only file, such as the one
  `inception_convert` writes); the real test split's statistics are computed once and cached
  under (dataset hash, split, resolution, detector) (`eval/reference_stats.py`).
Both: R-precision with the frozen DAMSM encoders, 1 true + (candidates-1) captions of other test
images (other classes where the dataset has them), top-1, mean and std over folds. With
eval.clip_score on (`clip.clip_score_enabled`: by default diffusion runs on real datasets whose CLIP
weights are configured), the CLIP score of each fake with the caption it was made from
(`eval/clip.py`, Hessel et al.'s definition). Every number carries N, the real set, the resize,
the backbone and the library versions in its row (`fid_*`, `is_*`, `r_precision_*`, `clip_score_*`
columns).

Captions (`eval.caption_mode`, recorded as `eval_caption_mode`): generated image j is made for test
image j mod N_test, from its caption 0 (`first`) or, as DM-GAN (MinfengZhu/DM-GAN code/datasets.py
test items, code/trainer.py R-precision), from a random caption of that image (`random`: drawn per
generated image from the eval seed, independent of the batch size); R-precision's true caption is
the one the image was made from, and its mismatched captions come from the caption-0 pool (`first`)
or from every caption of the other images/classes (`random`). FID, KID, IS, attribute accuracy and
R-precision all score the same samples. GAN samplers draw z ~ N(0, I), or DF-GAN's truncated noise
with `eval.truncation` (t2i_ray/train/gan.py `eval_noise`; recorded as `eval_noise`).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from t2i_ray.paths import RunPaths
from t2i_ray.config import (BEST_METRICS, ExperimentConfig, apply_overrides, parse_input_size, resolved_eval_backbone,
                             resolved_segmenter)
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.eval.clip import (CLIP_SCORE_DEFINITION, ClipScorer, clip_score, clip_score_enabled, load_clip,
                               resolve_clip_files)
from t2i_ray.eval.features import attribute_scores, load_or_train_domain_evaluator
from t2i_ray.eval.fid import feature_stats, frechet_distance, kernel_inception_distance
from t2i_ray.eval.inception import (InceptionBackbone, extract_inception, load_inception, metric_library_versions,
                                    resolve_inception_weights, to_uint8_nchw)
from t2i_ray.eval.inception_score import inception_score
from t2i_ray.eval.r_precision import r_precision
from t2i_ray.eval.reference_stats import load_or_compute_reference_stats
from t2i_ray.train.damsm import Damsm

# sample(caption_ids (B,T), caption_lens (B,), generator) -> images (B,3,H,W) in [-1, 1]
SampleFn = Callable[[Tensor, Tensor, torch.Generator], Tensor]


@dataclass
class EvalContext:
    """Everything evaluation needs that does not depend on the generator (built once)."""

    backbone: str  # "domain" | "inception"
    # images (B,3,H,W) in [-1, 1] -> (features (B, F) float64, logits (B, A|1008) float64 or None: pool3-only)
    extract: Callable[[Tensor], tuple[np.ndarray, np.ndarray | None]]
    backbone_info: dict  # "backbone" (name with weights digest), "resize", "libraries", ...
    damsm: Damsm
    test_set: TextImageDataset
    real_features: np.ndarray  # (N_real, F) features of the real test split
    real_mu: np.ndarray
    real_sigma: np.ndarray
    caption_feats: np.ndarray  # (N_real, E) DAMSM sentence features of each test image's caption 0
    reference: dict = field(default_factory=dict)  # real-set provenance: name, N, cache hit, dataset hash
    clip: ClipScorer | None = None  # the CLIP score's model (eval.clip_score on), else None
    # The captions R-precision reads (`caption_pool`): eval.caption_mode=first: caption 0 of each
    # test image (pool_feats = caption_feats); random: every caption of every test image, image by image.
    caption_mode: str = "first"
    pool_feats: np.ndarray | None = None  # (M, E) DAMSM sentence features of the pool's captions
    pool_image: np.ndarray | None = None  # (M,) test image index of each pool caption
    pool_start: np.ndarray | None = None  # (N_real,) pool index of each test image's caption 0
    num_captions: np.ndarray | None = None  # (N_real,) captions of each test image


def caption_pool(test_set: TextImageDataset, damsm: Damsm, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """DAMSM sentence features (M, E) of every caption of every test image (image 0's captions
    first, then image 1's, ...), each read as evaluation reads it (`eval_caption`), and the test
    image index (M,) of each. Encoded `batch_size` captions at a time (a fixed number, so the
    features do not depend on eval.batch_size)."""
    pairs = [(i, k) for i in range(len(test_set)) for k in range(len(test_set.captions[i]))]
    feats = []
    with torch.no_grad():
        for b in range(0, len(pairs), batch_size):
            encoded = [test_set.eval_caption(i, k) for i, k in pairs[b:b + batch_size]]
            feats.append(damsm.text_encoder(torch.stack([ids for ids, _ in encoded]),
                                            torch.stack([n for _, n in encoded]))[1])
    return torch.cat(feats).numpy(), np.array([i for i, _ in pairs], np.int64)


def caption_choices(ctx: EvalContext, num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(test image index (num_images,), caption index (num_images,)) of each generated image:
    image j % N_test; caption 0 (`first`) or uniform over that image's captions (`random`), drawn
    from a stream of its own seeded by (seed, 1) so that the noise, KID and R-precision draws of
    `first` stay as they were and the choice does not depend on eval.batch_size."""
    images = np.arange(num_images) % len(ctx.test_set)
    if ctx.caption_mode == "first":
        return images, np.zeros(num_images, np.int64)
    return images, np.random.default_rng([seed, 1]).integers(0, ctx.num_captions[images])


def _eval_device(cfg: ExperimentConfig) -> torch.device:
    return torch.device("cuda" if cfg.train.use_gpu and torch.cuda.is_available() else "cpu")


def check_eval_assets(cfg: ExperimentConfig) -> str | None:
    """Fail before any training when the configured backbone or the CLIP score cannot run (a
    missing file refuses naming it and the fix); returns the resolved Inception weights path
    (absolute) for eval.backbone=inception, else None."""
    if clip_score_enabled(cfg):
        resolve_clip_files(cfg)
    if resolved_segmenter(cfg) == "hrnet":
        from t2i_ray.eval.hrnet import resolve_segmenter_weights

        resolve_segmenter_weights(cfg)
    if resolved_eval_backbone(cfg) == "inception":
        return resolve_inception_weights(cfg.eval.inception_weights)
    return None


def eval_asset_overrides(cfg: ExperimentConfig) -> dict[str, str]:
    """`check_eval_assets`, and the resolved absolute paths as config overrides (eval.inception_weights,
    eval.clip_weights, eval.clip_vocab, eval.segmenter_weights), so that files named by environment
    variables reach Ray workers on other nodes with the config."""
    out = {}
    inception = check_eval_assets(cfg)
    if inception is not None:
        out["eval.inception_weights"] = inception
    if clip_score_enabled(cfg):
        out["eval.clip_weights"], out["eval.clip_vocab"] = resolve_clip_files(cfg)
    if resolved_segmenter(cfg) == "hrnet":
        from t2i_ray.eval.hrnet import resolve_segmenter_weights

        out["eval.segmenter_weights"] = resolve_segmenter_weights(cfg)
    return out


def build_eval_context(cfg: ExperimentConfig, damsm: Damsm, layouts: bool = False) -> EvalContext:
    """`layouts`: test items carry their true layouts (layout metrics, outpainting)."""
    cache_dir = str(RunPaths.of(cfg).cache)
    backbone = resolved_eval_backbone(cfg)
    weights_path = check_eval_assets(cfg)  # refuse before the test-set pass
    test_set = TextImageDataset(registry.source(cfg, "test"), damsm.vocab, cfg.data.words_num, train=False,
                                layouts=layouts)
    loader = DataLoader(test_set, batch_size=cfg.eval.batch_size)
    # One pass: DAMSM caption features and a content hash of the real images as the evaluator sees
    # them (uint8 levels), which keys the cached reference statistics.
    caps, content = [], hashlib.sha256()
    with torch.no_grad():
        for batch in loader:
            caps.append(damsm.text_encoder(batch["caption"], batch["caption_len"])[1])
            content.update(to_uint8_nchw(batch["image"]).numpy().tobytes())
    dataset_hash = f"{cfg.data.dataset}-n{len(test_set)}-{content.hexdigest()[:16]}"
    real_set = f"{cfg.data.dataset}/test"

    if backbone == "domain":
        evaluator, info = load_or_train_domain_evaluator(cfg.data, cfg.eval.evaluator_steps,
                                                         cfg.eval.evaluator_images, cache_dir)
        evaluator.eval()

        def extract(images: Tensor) -> tuple[np.ndarray, np.ndarray]:
            with torch.no_grad():
                f, logits = evaluator(images)
            return f.double().numpy(), logits.double().numpy()

        backbone_info = {**info, "resize": f"none (native {cfg.data.resolution}px)",
                         "libraries": metric_library_versions()}
        real = np.concatenate([extract(batch["image"])[0] for batch in loader])
        mu, sigma = feature_stats(real)
        reference = {"real_set": real_set, "num_images": len(real), "cache_hit": False, "dataset_hash": dataset_hash}
    else:
        inc: InceptionBackbone = load_inception(weights_path, cfg.eval.inception_resize, _eval_device(cfg))

        def extract(images: Tensor) -> tuple[np.ndarray, np.ndarray]:
            return extract_inception(inc, [images])

        backbone_info = dict(inc.info)
        detector = f"{inc.name}/{inc.info['resize']}"
        stats = load_or_compute_reference_stats(
            cache_dir, dataset=cfg.data.dataset, dataset_hash=dataset_hash, split="test",
            resolution=cfg.data.resolution, detector=detector,
            compute_features=lambda: extract_inception(inc, (b["image"] for b in loader))[0],
            provenance={"backbone": inc.name, "weights_sha256": inc.info["weights_sha256"],
                        "resize": inc.info["resize"], "libraries": inc.info["libraries"],
                        "dataset_hash": dataset_hash, "data_root": cfg.data.data_root})
        real, mu, sigma = stats.features.astype(np.float64), stats.mu, stats.sigma
        reference = {"real_set": real_set, "num_images": len(real), "cache_hit": stats.cache_hit,
                     "dataset_hash": dataset_hash}
    clip = None
    if clip_score_enabled(cfg):
        clip = load_clip(*resolve_clip_files(cfg), device=_eval_device(cfg), prefix=cfg.eval.clip_prefix)
    caption_feats = torch.cat(caps).numpy()
    num_captions = np.array([len(c) for c in test_set.captions], np.int64)
    if cfg.eval.caption_mode == "random":
        pool_feats, pool_image = caption_pool(test_set, damsm)
    else:
        pool_feats, pool_image = caption_feats, np.arange(len(test_set))
    pool_start = np.searchsorted(pool_image, np.arange(len(test_set)))
    return EvalContext(backbone, extract, backbone_info, damsm, test_set, real, mu, sigma, caption_feats, reference,
                       clip, cfg.eval.caption_mode, pool_feats, pool_image, pool_start, num_captions)


@torch.no_grad()
def evaluate_generator(sample: SampleFn, ctx: EvalContext, cfg: ExperimentConfig,
                       seed: int = 0, warn: bool = True, clip: bool = True) -> dict[str, float | int | str | bool]:
    """Sample eval.num_images fakes for test captions (cycling over the test split; which caption:
    `caption_choices`) and score them. Every batch draws from one generator seeded with `seed`.
    `warn`: print the small-N FID warning (the `fid_below_feature_dim` column records it either way).
    `clip`: the CLIP score too when the context has a CLIP model (each fake with the full text of
    the caption it was made from)."""
    e = cfg.eval
    if e.caption_mode != ctx.caption_mode:
        raise ValueError(f"eval.caption_mode={e.caption_mode!r} but the evaluation context was built for "
                         f"{ctx.caption_mode!r}; build it from this config (build_eval_context)")
    n_test = len(ctx.test_set)
    noise = torch.Generator().manual_seed(seed)
    chosen_image, chosen_caption = caption_choices(ctx, e.num_images, seed)
    fake_feats, fake_logits, targets, fake_img_global, image_ids, clip_images = [], [], [], [], [], []
    scorer = ctx.clip if clip else None
    done = 0
    while done < e.num_images:
        idx = [(done + k) % n_test for k in range(min(e.batch_size, e.num_images - done))]
        items = [ctx.test_set[i] for i in idx]
        if ctx.caption_mode == "first":
            ids = torch.stack([it["caption"] for it in items])
            lens = torch.stack([it["caption_len"] for it in items])
        else:
            encoded = [ctx.test_set.eval_caption(i, int(k)) for i, k in
                       zip(idx, chosen_caption[done:done + len(idx)])]
            ids, lens = torch.stack([c for c, _ in encoded]), torch.stack([n for _, n in encoded])
        fake = sample(ids, lens, noise).float().cpu().clamp(-1, 1)
        f, logits = ctx.extract(fake)
        fake_feats.append(f)
        fake_logits.append(logits)
        if ctx.backbone == "domain":
            targets.append(torch.stack([it["attributes"] for it in items]))
        fake_img_global.append(ctx.damsm.image_encoder(fake)[1])
        if scorer is not None:
            clip_images.append(scorer.image_embeddings(fake))
        image_ids.extend(idx)
        done += len(idx)
    fake_np = np.concatenate(fake_feats)
    mu, sigma = feature_stats(fake_np)  # warns below N = F (rank-deficient covariance)
    feature_dim = fake_np.shape[1]
    below = min(len(fake_np), len(ctx.real_features)) < feature_dim
    if below and warn:
        print(f"[eval] WARNING: FID from N_fake={len(fake_np)}, N_real={len(ctx.real_features)} < feature "
              f"dimension {feature_dim}: rank-deficient covariances, FID strongly biased in N; compare only at "
              f"equal N and prefer KID", flush=True)
    rng = np.random.default_rng(seed)
    kid_size = min(e.kid_subset_size, len(fake_np), len(ctx.real_features))
    kid, kid_std = kernel_inception_distance(fake_np, ctx.real_features, e.kid_subsets, kid_size, rng)
    ids_np = np.asarray(image_ids)
    # DM-GAN draws the mismatched captions from other *classes* on CUB/flowers (MinfengZhu/DM-GAN
    # code/datasets.py get_mis_caption): a test set with classes exposes `class_ids` (N_test,); else
    # other images. The true caption is the one each image was made from.
    class_ids = getattr(ctx.test_set, "class_ids", None)
    owner = np.arange(n_test) if class_ids is None else np.asarray(class_ids)  # test image -> R-precision id
    true_feats = ctx.pool_feats[ctx.pool_start[ids_np] + chosen_caption]
    rp, rp_std = r_precision(torch.cat(fake_img_global).numpy(), true_feats, owner[ids_np],
                             ctx.pool_feats, owner[ctx.pool_image], num_candidates=e.r_precision_candidates,
                             num_folds=e.r_precision_folds, rng=rng)
    info = ctx.backbone_info
    backbone = info["backbone"]
    libraries = json.dumps(info["libraries"], sort_keys=True)
    out: dict[str, float | int | str | bool] = {
        "fid": frechet_distance(mu, sigma, ctx.real_mu, ctx.real_sigma),
        "kid": float(kid), "kid_std": float(kid_std), "kid_subset_size": int(kid_size), "kid_subsets": e.kid_subsets,
        "fid_backbone": backbone, "fid_num_fake": len(fake_np), "fid_num_real": len(ctx.real_features),
        "fid_real_set": ctx.reference["real_set"], "fid_resize": info["resize"], "fid_feature_dim": feature_dim,
        "fid_below_feature_dim": bool(below), "fid_library_versions": libraries,
        "fid_reference_cached": bool(ctx.reference["cache_hit"]),
        "fid_reference_dataset_hash": ctx.reference["dataset_hash"],
        "eval_protocol": e.protocol or "",
        "eval_caption_mode": e.caption_mode,
        "eval_noise": "normal" if e.truncation is None else f"truncnorm(-2,2)*{e.truncation:g}",
        "r_precision": float(rp), "r_precision_std": float(rp_std),
        "r_precision_num_images": len(ids_np), "r_precision_candidates": e.r_precision_candidates,
        "r_precision_folds": e.r_precision_folds,
        "r_precision_mismatch_from": "other images" if class_ids is None else "other classes",
        "r_precision_mismatch_pool": "caption 0" if ctx.caption_mode == "first" else "all captions",
        "r_precision_pool_size": len(ctx.pool_feats),
        "r_precision_backbone": f"damsm-{ctx.damsm.meta['key']}",
    }
    if scorer is not None:
        # each fake with the caption it was made from (caption 0, or its random draw)
        texts = scorer.text_embeddings([ctx.test_set.captions[i][int(k)] for i, k in zip(image_ids, chosen_caption)])
        score, cosine = clip_score(np.concatenate(clip_images), texts)
        out.update({"clip_score": score, "clip_score_cosine": cosine, "clip_score_n": len(ids_np),
                    "clip_score_backbone": scorer.info["backbone"],
                    "clip_score_weights_sha256": scorer.info["weights_sha256"],
                    "clip_score_vocab_sha256": scorer.info["vocab_sha256"],
                    "clip_score_definition": CLIP_SCORE_DEFINITION, "clip_score_prefix": scorer.prefix,
                    "clip_score_resize": scorer.info["resize"]})
    if ctx.backbone == "domain":
        attrs = attribute_scores(np.concatenate(fake_logits), torch.cat(targets).numpy())
        out.update({"attr_backbone": backbone, "attr_num_images": len(ids_np)})
        out.update({k: float(v) for k, v in attrs.items()})
    elif info["is_logits"] is not None:  # a pool3-only Inception (inception_convert) has no classifier: no IS
        is_mean, is_std = inception_score(np.concatenate(fake_logits), e.is_splits, np.random.default_rng(seed))
        out.update({"is": is_mean, "is_std": is_std, "is_splits": e.is_splits, "is_num_images": len(fake_np),
                    "is_backbone": backbone, "is_resize": info["resize"], "is_library_versions": libraries})
    return out


# The headline numbers repeated per extra sampler variant (Method.eval_variants), e.g. `fid@g1.5`.
VARIANT_METRICS = ("fid", "kid", "r_precision", "attr_pair_recall", "is", "clip_score")


def evaluate_method(cfg: ExperimentConfig, method, damsm: Damsm, run_name: str,
                    ctx: EvalContext | None = None) -> dict[str, Any]:
    """The final evaluation of a trained method (t2i_ray.train.method.Method) through its samplers,
    and its sample grids; `eval_seconds` and the grids' paths join the metrics. A method that
    samples layouts also gets the layout metrics (`evaluate_layouts`) on the same samples. `ctx`:
    the context built for the in-training evaluations (`PeriodicEval.ctx`), reused."""
    from t2i_ray.eval.samples import save_layout_samples, save_samples

    start = time.time()
    layout_sample = method.layout_sampler()
    # Semantic recall needs only images: every diffusion row with a segmenter gets it (the image-only
    # baseline included, GCDP's comparison), with the segmenter prepared beside the sweep's assets.
    semantics = resolved_segmenter(cfg) != "off"
    if ctx is None:
        ctx = build_eval_context(cfg, damsm, layouts=layout_sample is not None)
    metrics: dict[str, Any] = {}
    pairs: list[tuple[Tensor, Tensor | None]] = []

    def keeping(sample: Callable) -> Callable:
        """The main variant's sampler, keeping its draws (and layouts) for the layout metrics."""
        def run(ids: Tensor, lens: Tensor, generator: torch.Generator) -> Tensor:
            if layout_sample is not None:
                images, layouts = layout_sample(ids, lens, generator)
            else:
                images, layouts = sample(ids, lens, generator), None
            pairs.append((images.float().cpu().clamp(-1, 1), None if layouts is None else layouts.cpu()))
            return images
        return run

    # Randomness drawn from torch's global RNG inside a sampler (StyleGAN2's noise inputs) is
    # seeded too, so that evaluation is a function of the weights and the seed, without disturbing
    # the training RNG.
    with torch.random.fork_rng(devices=[]):
        for suffix, sample in method.eval_variants().items():
            torch.manual_seed(cfg.seed)
            if not suffix and (layout_sample is not None or semantics):
                sample = keeping(sample)  # the main variant's draws, with their layouts
            scores = evaluate_generator(sample, ctx, cfg, seed=cfg.seed)
            if suffix:
                metrics.update({f"{k}{suffix}": scores[k] for k in VARIANT_METRICS if k in scores})
            else:
                metrics.update(scores)
        if layout_sample is not None:
            images, layouts = (torch.cat(t) for t in zip(*pairs))
            metrics.update(evaluate_layouts(cfg, ctx, images, layouts, method))
        elif semantics:
            metrics.update(evaluate_semantics(cfg, ctx, torch.cat([images for images, _ in pairs])))
        metrics["eval_seconds"] = time.time() - start
        samples = save_samples(cfg, method.sampler(), ctx, run_name, mask_sample=method.mask_sampler())
        if layout_sample is not None:
            metrics.update(save_layout_samples(cfg, layout_sample, method.outpainter(), ctx, run_name,
                                               method.num_layout_classes))
    metrics["samples_path"] = str(samples)
    return metrics


class PeriodicEval:
    """Evaluation during training (eval.every > 0) and the best checkpoint's record.

    Every eval.every steps and at the last step, FID, KID and R-precision of eval.every_num_images
    samples for the test captions, drawn exactly as the final evaluation draws (same captions,
    same seed), so successive evaluations differ only by the weights. `best` is the record of the
    best one by eval.best_metric (strictly better replaces it: ties keep the earlier step); the
    loop keeps its checkpoint and saves `best` in every checkpoint, so a resumed run continues it.
    Nothing here touches the training RNG: it runs inside `torch.random.fork_rng`.
    """

    KEYS = ("fid", "kid", "r_precision")

    def __init__(self, cfg: ExperimentConfig, damsm: Damsm, method, best: dict[str, Any] | None = None):
        e = cfg.eval
        n = e.every_num_images
        self.cfg = apply_overrides(cfg, {"eval.protocol": None, "eval.num_images": n,
                                         "eval.is_splits": min(e.is_splits, n)})
        self.damsm, self.method = damsm, method
        self.metric, self.mode = e.best_metric, BEST_METRICS[e.best_metric]
        self.best: dict[str, Any] = dict(best or {})
        self.ctx: EvalContext | None = None

    def __call__(self, step: int) -> tuple[dict[str, float], bool]:
        """(`eval_fid`, `eval_kid`, `eval_r_precision` (and `eval_attr_pair_recall` on the domain
        backbone) at `step`, whether it is the best so far)."""
        cuda = self.cfg.train.use_gpu and torch.cuda.is_available()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
            if self.ctx is None:  # the test set's features, once per run (the final evaluation reuses it)
                self.ctx = build_eval_context(self.cfg, self.damsm, layouts=self.method.layout_sampler() is not None)
            torch.manual_seed(self.cfg.seed)
            scores = evaluate_generator(self.method.sampler(), self.ctx, self.cfg, seed=self.cfg.seed, warn=False,
                                        clip=False)
        value = scores[self.metric]
        better = np.isfinite(value) and (not self.best or (value < self.best[self.metric] if self.mode == "min"
                                                            else value > self.best[self.metric]))
        if better:
            self.best = {"step": int(step), "num_images": int(scores["fid_num_fake"]),
                         **{k: float(scores[k]) for k in self.KEYS}}
        reported = {f"eval_{k}": float(scores[k]) for k in self.KEYS}
        if "attr_pair_recall" in scores:  # domain backbone (`shapes`): the oracle's recall, for learning curves
            reported["eval_attr_pair_recall"] = float(scores["attr_pair_recall"])
        return reported, bool(better)

    def summary(self, checkpoint_path: str | None) -> dict[str, Any]:
        """The results row's `best_*` columns."""
        if not self.best:
            return {}
        return {"best_step": self.best["step"], "best_metric": self.metric, "best_num_images": self.best["num_images"],
                **{f"best_{k}": self.best[k] for k in self.KEYS}, "best_checkpoint_path": checkpoint_path or ""}


@torch.no_grad()
def evaluate_layouts(cfg: ExperimentConfig, ctx: EvalContext, images: Tensor, layouts: Tensor,
                     method) -> dict[str, Any]:
    """Layout metrics of generated (image, layout) pairs made for the test captions in evaluation
    order (item k of the test split for sample k, cycling), GCDP Sec. 4 (arXiv:2308.08157):
    - `fsd`: Frechet segmentation distance of the layouts' class shares vs the real test layouts;
    - `outpaint_image_to_layout_miou`: layouts generated from real test images vs their true ones;
    and, with the segmenter of eval.segmenter (`config.resolved_segmenter`: on `shapes` the project's
    trained one, eval/layout.py; on cityscapes HRNetV2 from a local file, eval/hrnet.py):
    - `layout_miou`: generated layout vs the segmenter on the generated image (image-layout alignment);
    - `semantic_recall` / `fsd_segmenter` (`evaluate_semantics`);
    - `outpaint_layout_to_image_miou`: a real test layout vs the segmenter on the image generated
      from it. On cityscapes the mIoUs leave out the pixels whose (generated or given) layout is
      class 19 "unlabeled", which HRNet never predicts (the Cityscapes benchmark's void), and
      average over the 19 classes present. Each number carries its N and the segmenter's name,
      weights digest, input size and its scores on the real test images."""
    from t2i_ray.eval.layout import fsd, image_layout_alignment, layout_agreement

    k = method.num_layout_classes
    n_test = len(ctx.test_set)
    real_layouts = torch.from_numpy(np.asarray(ctx.test_set.layouts)).long()  # (N_test, H, W)
    out: dict[str, Any] = {"fsd": fsd(real_layouts.numpy(), layouts.numpy(), k), "fsd_num_fake": len(layouts),
                           "fsd_num_real": n_test}
    # Outpainting both ways on the first items of the test split, from one seeded generator each.
    n_out = min(cfg.diffusion.outpaint_images, n_test)
    items = [ctx.test_set[i] for i in range(n_out)]
    ids = torch.stack([it["caption"] for it in items])
    lens = torch.stack([it["caption_len"] for it in items])
    real = torch.stack([it["image"] for it in items])
    true_layouts = real_layouts[:n_out]
    outpaint = method.outpainter()
    from_layout, from_image = [], []
    for b in range(0, n_out, cfg.eval.batch_size):
        sl = slice(b, b + cfg.eval.batch_size)
        _, lay = outpaint(ids[sl], lens[sl], torch.Generator().manual_seed(cfg.seed + b), known_images=real[sl])
        img, _ = outpaint(ids[sl], lens[sl], torch.Generator().manual_seed(cfg.seed + b),
                          known_layouts=true_layouts[sl])
        from_image.append(lay.cpu())
        from_layout.append(img.float().cpu().clamp(-1, 1))
    to_layout = layout_agreement(torch.cat(from_image), true_layouts, k)
    out.update(outpaint_image_to_layout_miou=to_layout["miou"], outpaint_num_images=n_out,
               outpaint_resample=cfg.diffusion.outpaint_resample)
    if resolved_segmenter(cfg) == "off":
        return out
    seg = _segmenter(cfg, ctx)
    align = image_layout_alignment(seg.model, images, layouts, ignore_index=seg.ignore_index)
    out.update(
        layout_miou=align["miou"], layout_pixel_accuracy=align["pixel_accuracy"], layout_num_images=len(images),
        outpaint_layout_to_image_miou=image_layout_alignment(seg.model, torch.cat(from_layout), true_layouts,
                                                             ignore_index=seg.ignore_index)["miou"],
        **evaluate_semantics(cfg, ctx, images, seg))
    return out


@dataclass
class ScoringSegmenter:
    """The segmenter of the layout metrics with what its rows record (`_segmenter`)."""

    model: Any  # images (B, 3, H, W) in [-1, 1] -> logits (B, K, H, W)
    info: dict[str, Any]  # layout_* / segmenter_* columns
    ignore_index: int | None  # layout class left out of mIoU (cityscapes: 19, unlabeled)
    exclude: tuple[int, ...]  # classes never counted by semantic recall (shapes: 0 background; cityscapes: 19)
    real_pred: np.ndarray  # (N_test, H, W) the segmenter on the real test images
    min_share: float  # semantic recall: a class is found from this share of the pixels


def _segment_all(model, images) -> np.ndarray:
    from t2i_ray.eval.layout import segment, segment_batch_size

    b = segment_batch_size(model)
    return segment(model, [images[i:i + b] for i in range(0, len(images), b)])


def _caption_classes(cfg: ExperimentConfig, ctx: EvalContext, num_images: int) -> list[list[int]]:
    """Per generated image (made for test image j % N_test, caption `caption_choices`), the layout
    classes its caption names: the `shapes` objects, or the Cityscapes class names in the text."""
    from t2i_ray.eval.layout import cityscapes_named_classes, named_classes

    if cfg.data.dataset == "shapes":
        n_test = len(ctx.test_set)
        return [named_classes(ctx.test_set.source.meta(i % n_test)) for i in range(num_images)]
    images, captions = caption_choices(ctx, num_images, cfg.seed)
    return [cityscapes_named_classes(ctx.test_set.captions[i][k]) for i, k in zip(images, captions)]


def _segmenter(cfg: ExperimentConfig, ctx: EvalContext) -> ScoringSegmenter:
    """The resolved eval.segmenter (`config.resolved_segmenter`) and its scores on the real test
    split: the trained one (shapes; its held-out scores come from its cache) or HRNet (cityscapes:
    its mIoU and semantic recall on the real test images at the data resolution, here)."""
    from t2i_ray.eval.layout import (DEFAULT_MIN_SHARE, cityscapes_named_classes, default_min_pixels,
                                     layout_agreement, load_or_train_segmenter, segmenter_cache_path,
                                     semantic_scores)
    from t2i_ray.weights import file_sha256

    real = torch.stack([ctx.test_set[i]["image"] for i in range(len(ctx.test_set))])
    if resolved_segmenter(cfg) == "trained":
        e, cache_dir = cfg.eval, str(RunPaths.of(cfg).cache)
        model, info = load_or_train_segmenter(cfg.data, e.segmenter_steps, e.segmenter_images, cache_dir)
        path = segmenter_cache_path(cfg.data, e.segmenter_steps, e.segmenter_images, cache_dir)[0]  # where it is now
        info = {"layout_backbone": info["backbone"], "layout_weights_sha256": file_sha256(path),
                "layout_input_size": "native", "layout_miou_ignored_class": "none",
                "segmenter_heldout_miou": info["heldout_miou"],
                "segmenter_heldout_semantic_recall": info["heldout_semantic_recall"]}
        return ScoringSegmenter(model, info, None, (0,), _segment_all(model, real), DEFAULT_MIN_SHARE)
    from t2i_ray.data.cityscapes import LAYOUT_CLASSES, TEMPLATE_MIN_FRACTION, UNLABELED
    from t2i_ray.eval.hrnet import load_hrnet, resolve_segmenter_weights

    model = load_hrnet(resolve_segmenter_weights(cfg), parse_input_size(cfg.eval.segmenter_input), _eval_device(cfg))
    real_pred = _segment_all(model, real)
    # the true test layouts (a context built for the image-only model has none loaded)
    true = np.asarray(ctx.test_set.layouts if ctx.test_set.layouts is not None else ctx.test_set.source.layouts())
    heldout = layout_agreement(real_pred, true, len(LAYOUT_CLASSES), ignore_index=UNLABELED)
    named = [cityscapes_named_classes(caps[0]) for caps in ctx.test_set.captions]  # each real image's caption 0
    info = {"layout_backbone": model.info["backbone"], "layout_weights_sha256": model.info["weights_sha256"],
            "layout_input_size": model.info["input_size"],
            "layout_miou_ignored_class": f"{LAYOUT_CLASSES[UNLABELED]} ({UNLABELED})",
            "segmenter_heldout_miou": heldout["miou"], "segmenter_heldout_pixel_accuracy": heldout["pixel_accuracy"],
            "segmenter_heldout_semantic_recall": semantic_scores(
                real_pred, named, default_min_pixels(*real_pred.shape[1:], TEMPLATE_MIN_FRACTION),
                exclude=(UNLABELED,))[0]}
    # A class counts as found from the share at which the template captions name it (0.1%).
    return ScoringSegmenter(model, info, UNLABELED, (UNLABELED,), real_pred, TEMPLATE_MIN_FRACTION)


@torch.no_grad()
def evaluate_semantics(cfg: ExperimentConfig, ctx: EvalContext, images: Tensor,
                       seg: ScoringSegmenter | None = None) -> dict[str, Any]:
    """`semantic_recall` of generated images (made for the test captions in evaluation order): the
    share of the classes their captions name (`shapes`: its objects; cityscapes: the class names in
    the text) that the segmenter finds in the image (GCDP Sec. 4.3, arXiv:2308.08157), and
    `semantic_precision`, the share of the classes it finds that the caption names; `fsd_segmenter`,
    the Frechet segmentation distance of the segmenter's layouts of the generated vs the real test
    images (Bau et al. arXiv:1910.11626, both sides through the network); with their N, the
    segmenter's name, weights digest, input size and its scores on real test images. Needs no
    layout, so the image-only model is scored the same way."""
    from t2i_ray.eval.layout import default_min_pixels, fsd, semantic_scores

    seg = seg or _segmenter(cfg, ctx)  # built once by evaluate_layouts
    predicted = _segment_all(seg.model, images)
    min_pixels = default_min_pixels(*predicted.shape[1:], seg.min_share)
    recall, precision = semantic_scores(predicted, _caption_classes(cfg, ctx, len(images)), min_pixels,
                                        exclude=seg.exclude)
    k = seg.model.config["num_classes"]
    return {"semantic_recall": recall, "semantic_precision": precision, "semantic_recall_num_images": len(images),
            "semantic_recall_min_pixels": min_pixels,
            "fsd_segmenter": fsd(seg.real_pred, predicted, k), "fsd_segmenter_num_fake": len(predicted),
            "fsd_segmenter_num_real": len(seg.real_pred), **seg.info}
