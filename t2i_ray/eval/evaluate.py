"""One entry point: a generator -> a dict of metrics, each with its sample count and backbone.

On `shapes` (SPEC 6):
- FID and KID on the features of the `domain` evaluator (trained on real shapes images, frozen,
  cached, versioned), fakes vs the real test split;
- oracle attribute accuracy: the evaluator's (shape, colour) detections in each fake vs the
  objects its caption names;
- R-precision with the frozen DAMSM encoders: 1 true + (candidates-1) captions of other test
  images, top-1, mean and std over folds.
IS needs an ImageNet classifier (the Inception weights of issue "real datasets"); it is not
reported on `shapes` rather than faked with another network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from t2i_ray.config import ExperimentConfig
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data.registry import build_source, data_cache_root
from t2i_ray.eval.features import attribute_scores, load_or_train_domain_evaluator
from t2i_ray.eval.fid import feature_stats, frechet_distance, kernel_inception_distance
from t2i_ray.eval.r_precision import r_precision
from t2i_ray.train.damsm import Damsm

# generate(caption_ids (B,T), caption_lens (B,), z (B,z_dim)) -> images (B,3,H,W) in [-1, 1]
GenerateFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass
class EvalContext:
    """Everything evaluation needs that does not depend on the generator (built once)."""

    evaluator: torch.nn.Module
    evaluator_info: dict
    damsm: Damsm
    test_set: TextImageDataset
    real_features: np.ndarray  # (N_real, F) float64, evaluator features of the real test split
    real_mu: np.ndarray
    real_sigma: np.ndarray
    caption_feats: np.ndarray  # (N_real, E) DAMSM sentence features of each test image's caption 0


def build_eval_context(cfg: ExperimentConfig, damsm: Damsm) -> EvalContext:
    cache_dir = f"{cfg.output_dir}/cache"
    evaluator, info = load_or_train_domain_evaluator(cfg.data, cfg.eval.evaluator_steps, cfg.eval.evaluator_images,
                                                     cache_dir)
    evaluator.eval()
    test_set = TextImageDataset(build_source(cfg.data, "test", data_cache_root(cfg)), damsm.vocab,
                                cfg.data.words_num, train=False)
    feats, caps = [], []
    with torch.no_grad():
        for batch in DataLoader(test_set, batch_size=cfg.eval.batch_size):
            feats.append(evaluator(batch["image"])[0].double())
            caps.append(damsm.text_encoder(batch["caption"], batch["caption_len"])[1])
    real = torch.cat(feats).numpy()
    mu, sigma = feature_stats(real)
    return EvalContext(evaluator, info, damsm, test_set, real, mu, sigma, torch.cat(caps).numpy())


@torch.no_grad()
def evaluate_generator(generate: GenerateFn, ctx: EvalContext, cfg: ExperimentConfig,
                       z_dim: int, seed: int = 0) -> dict[str, float | int | str]:
    """Generate eval.num_images fakes for test captions (cycling over the test split) and score them."""
    e = cfg.eval
    n_test = len(ctx.test_set)
    noise = torch.Generator().manual_seed(seed)
    fake_feats, fake_logits, targets, fake_img_global, image_ids = [], [], [], [], []
    done = 0
    while done < e.num_images:
        idx = [(done + k) % n_test for k in range(min(e.batch_size, e.num_images - done))]
        items = [ctx.test_set[i] for i in idx]
        ids = torch.stack([it["caption"] for it in items])
        lens = torch.stack([it["caption_len"] for it in items])
        z = torch.randn(len(idx), z_dim, generator=noise)
        fake = generate(ids, lens, z).float().cpu().clamp(-1, 1)
        f, logits = ctx.evaluator(fake)
        fake_feats.append(f.double())
        fake_logits.append(logits)
        targets.append(torch.stack([it["attributes"] for it in items]))
        fake_img_global.append(ctx.damsm.image_encoder(fake)[1])
        image_ids.extend(idx)
        done += len(idx)
    fake_np = torch.cat(fake_feats).numpy()
    mu, sigma = feature_stats(fake_np)
    rng = np.random.default_rng(seed)
    kid_size = min(e.kid_subset_size, len(fake_np), len(ctx.real_features))
    kid, kid_std = kernel_inception_distance(fake_np, ctx.real_features, e.kid_subsets, kid_size, rng)
    ids_np = np.asarray(image_ids)
    rp, rp_std = r_precision(torch.cat(fake_img_global).numpy(), ctx.caption_feats[ids_np], ids_np,
                             ctx.caption_feats, np.arange(n_test), num_candidates=e.r_precision_candidates,
                             num_folds=e.r_precision_folds, rng=rng)
    attrs = attribute_scores(torch.cat(fake_logits).numpy(), torch.cat(targets).numpy())
    backbone = ctx.evaluator_info["backbone"]
    out: dict[str, float | int | str] = {
        "fid": frechet_distance(mu, sigma, ctx.real_mu, ctx.real_sigma),
        "kid": float(kid), "kid_std": float(kid_std), "kid_subset_size": int(kid_size),
        "fid_backbone": backbone, "fid_num_fake": len(fake_np), "fid_num_real": len(ctx.real_features),
        "fid_real_set": "shapes/test",
        "r_precision": float(rp), "r_precision_std": float(rp_std),
        "r_precision_num_images": len(ids_np), "r_precision_candidates": e.r_precision_candidates,
        "r_precision_backbone": f"damsm-{ctx.damsm.meta['key']}",
        "attr_backbone": backbone, "attr_num_images": len(ids_np),
    }
    out.update({k: float(v) for k, v in attrs.items()})
    return out
