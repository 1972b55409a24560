"""DAMSM pre-training: T2I_CL's contrastive stage 1, same-class masking (pre-training and the
generator's l1 term) and the cache key. The loss values are checked against hand computations on
batches small enough to write out (one region, one word, 2-d embeddings)."""
from __future__ import annotations

import math
from pathlib import Path
import warnings
from dataclasses import fields, replace
from types import SimpleNamespace

import pytest
import torch

from t2i_ray.config import ConfigError, ExperimentConfig, apply_overrides, build_config
from t2i_ray.losses.damsm import damsm_loss, damsm_loss_from_scores
from t2i_ray.train import damsm as D
from t2i_ray.train.damsm import damsm_class_ids, damsm_dir, damsm_key, pretraining_loss

CUB = {"data.dataset": "cub", "data.data_root": "/data/birds"}  # validation does not read the folder
C = 1 / math.sqrt(2)


class TableText(torch.nn.Module):
    """A text encoder stand-in: caption = one word id, its embedding a fixed row of `table`.
    Returns words (B, D, 1) and the sentence (B, D), as the bi-LSTM does."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float64)

    def forward(self, ids, lens):
        vec = self.table[ids[:, 0]]
        return vec.unsqueeze(2), vec


class IdentityImage(torch.nn.Module):
    """An image encoder stand-in: the 'image' is already its (B, D) feature; one region."""

    def forward(self, x):
        return x.unsqueeze(2), x


def _batch(images, cap1, cap2, class_ids=None):
    one = torch.ones(len(cap1), dtype=torch.int64)
    b = {"image": torch.tensor(images, dtype=torch.float64),
         "caption": torch.tensor(cap1).view(-1, 1), "caption_len": one,
         "caption2": torch.tensor(cap2).view(-1, 1), "caption2_len": one}
    if class_ids is not None:
        b["class_id"] = torch.tensor(class_ids)
    return b


# --------------------------------------------------------------------- the contrastive term

def test_contrastive_term_is_nt_xent_of_the_two_captions_by_hand():
    # Two images; caption 1 embeds to a1=(1,0), a2=(0,1); caption 2 to b1=(1,0), b2=(1,1).
    # Cosines: a1.b1 = 1, a1.b2 = a2.b2 = b1.b2 = c = 1/sqrt2, a1.a2 = a2.b1 = 0. tau = 0.5, so
    # logits are 2 x cosine. Anchors a1, a2, b1, b2 with positives b1, b2, a1, a2:
    e = math.exp
    by_hand = (-2 + math.log(1 + e(2) + e(2 * C))          # a1: vs a2, b1, b2
               - 2 * C + math.log(1 + 1 + e(2 * C))        # a2: vs a1, b1, b2
               - 2 + math.log(e(2) + 1 + e(2 * C))         # b1: vs a1, a2, b2
               + math.log(3)) / 4                          # b2: all three at cosine c
    text = TableText([[0, 0], [1, 0], [0, 1], [1, 1]])  # id -> embedding
    batch = _batch([[1.0, 0.3], [0.2, 1.0]], cap1=[1, 2], cap2=[1, 3])
    base = build_config("ci")
    off, parts_off = pretraining_loss(text, IdentityImage(), batch, base)
    assert set(parts_off) == {"damsm"}  # default: AttnGAN's DAMSM alone
    for weight in (1.0, 0.3):
        cfg = apply_overrides(base, {"damsm.contrastive": weight, "damsm.contrastive_temperature": 0.5})
        on, parts = pretraining_loss(text, IdentityImage(), batch, cfg)
        assert parts["contrastive"] == pytest.approx(by_hand, abs=1e-12)
        assert (on - off).item() == pytest.approx(weight * by_hand, abs=1e-12)
    # The temperature is used: tau=1 halves every logit.
    by_hand_tau1 = (-1 + math.log(1 + e(1) + e(C)) - C + math.log(2 + e(C)) - 1 + math.log(e(1) + 1 + e(C))
                    + math.log(3)) / 4
    cfg = apply_overrides(base, {"damsm.contrastive": 1.0, "damsm.contrastive_temperature": 1.0})
    assert pretraining_loss(text, IdentityImage(), batch, cfg)[1]["contrastive"] == pytest.approx(by_hand_tau1)
    # T2I_CL's other stage-1 term: the DAMSM loss of the second caption, added as it is.
    cfg = apply_overrides(base, {"damsm.second_caption": True})
    both, parts = pretraining_loss(text, IdentityImage(), batch, cfg)
    lw = cfg.loss
    second = damsm_loss(*IdentityImage()(batch["image"]), *text(batch["caption2"], None), batch["caption2_len"],
                        lw.gamma1, lw.gamma2, lw.gamma3)
    assert (both - off).item() == pytest.approx(second.item(), abs=1e-12) and parts["damsm2"] == pytest.approx(
        second.item())


# --------------------------------------------------------------------- same-class masking

def _class_batch():
    # Three images whose features are x1=(1,0), x2=(0,1), x3=(1,1), each captioned by the same
    # vector, so image j vs caption i scores cos(x_j, x_i): C = [[1, 0, c], [0, 1, c], [c, c, 1]].
    # Images 0 and 1 share class 7.
    text = TableText([[0, 0], [1, 0], [0, 1], [1, 1]])
    return text, _batch([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], cap1=[1, 2, 3], cap2=[2, 3, 1], class_ids=[7, 7, 9])


def _hand_damsm(masked: bool) -> float:
    # With one region and one word the word-level score is gamma3*gamma2*cos and the sentence-level
    # gamma3*cos; at gamma2 = gamma3 = 1 both score matrices are C. C is symmetric, so the
    # caption->image CE equals the image->caption CE: L_DAMSM = 4 x mean_j CE_j. Masking drops the
    # same-class pair (0, 1)/(1, 0) from rows 0 and 1; row 2 (class 9) keeps all three.
    e = math.exp
    row01 = -1 + math.log(e(1) + e(C) + (0 if masked else e(0)))
    row2 = -1 + math.log(e(1) + 2 * e(C))
    return 4 * (2 * row01 + row2) / 3


@pytest.mark.parametrize("dataset, mode, masked", [
    (CUB, "auto", True), (CUB, "on", True), (CUB, "off", False), ({}, "auto", False)])
def test_pretraining_class_mask_by_hand(dataset, mode, masked):
    text, batch = _class_batch()
    cfg = build_config("ci", {**dataset, "damsm.class_mask": mode, "loss.gamma2": 1.0, "loss.gamma3": 1.0})
    if not dataset:
        batch.pop("class_id")  # shapes items carry no class id
    loss, _ = pretraining_loss(text, IdentityImage(), batch, cfg)
    assert loss.item() == pytest.approx(_hand_damsm(masked), abs=1e-12)
    assert _hand_damsm(True) < _hand_damsm(False) - 0.1  # the case is not vacuous


def test_class_mask_on_needs_class_ids():
    with pytest.raises(ConfigError, match=r"^damsm.class_mask: on needs a dataset with class ids \(cub, oxford102\); "
                                          r"data.dataset='shapes' has none: use auto or off"):
        build_config("ci", {"damsm.class_mask": "on"})
    with pytest.raises(ConfigError, match="damsm.class_mask: must be one of auto, on, off"):
        build_config("ci", {"damsm.class_mask": "yes"})
    # An Oxford-102 tree whose split keys have no class folder gives items without class ids.
    cfg = build_config("ci", {"data.dataset": "oxford102", "data.data_root": "/f", "damsm.class_mask": "on"})
    with pytest.raises(ConfigError, match="damsm.class_mask: on, but the items of data.dataset=oxford102 carry no"):
        damsm_class_ids(cfg, {"image": None})
    with pytest.raises(ConfigError, match="set damsm.class_mask=auto or off"):
        D._class_mask_report(cfg, SimpleNamespace(class_ids=None))  # before any pre-training step
    auto = apply_overrides(cfg, {"damsm.class_mask": "auto"})
    assert damsm_class_ids(auto, {}) is None
    assert D._class_mask_report(auto, SimpleNamespace(class_ids=None)) == "off (the train split has no class ids)"


def test_generator_damsm_term_gets_the_class_mask(tiny_cfg, monkeypatch):
    """gan.py's l1 term passes the batch's class ids when the mask is on, None when off."""
    import torch.nn.functional as F

    from t2i_ray.models.factory import build_gan_models
    from t2i_ray.models.text import TextEncoder
    from t2i_ray.train import gan

    class Pooled(torch.nn.Module):  # frozen image encoder stand-in: 4x4 regions and their mean, 256-d
        def forward(self, x):
            regions = F.adaptive_avg_pool2d(x, 4).repeat(1, 86, 1, 1)[:, :256]
            return regions, regions.mean((2, 3))

    calls = []

    def spy(*args):  # (word scores, fake global, sentences, gamma3, class ids)
        calls.append(args)
        return damsm_loss_from_scores(*args)

    monkeypatch.setattr(gan, "damsm_loss_from_scores", spy)
    torch.manual_seed(0)
    B, T = 4, 5
    lens = torch.tensor([5, 2, 3, 1])
    ids = torch.where(torch.arange(T) < lens[:, None], torch.randint(1, 20, (B, T)), 0)
    image = torch.rand(B, 3, 32, 32) * 2 - 1
    batch = {"image": image, "caption": ids, "caption_len": lens, "class_id": torch.tensor([3, 3, 8, 3])}
    for mode, want in (("auto", batch["class_id"]), ("off", None)):
        cfg = apply_overrides(tiny_cfg, {**CUB, "loss.damsm": 0.05, "damsm.class_mask": mode})
        models = build_gan_models(cfg, TextEncoder(20), Pooled())
        calls.clear()
        out = {}
        gan._generator_loss(models, batch, cfg, image.flip(0), torch.randn(B, 256), None, image, out)
        (args,) = calls
        assert (args[-1] is None) if want is None else torch.equal(args[-1], want)
        assert out["loss_damsm"] == pytest.approx(damsm_loss_from_scores(*args).item())
    masked = damsm_loss_from_scores(*args[:-1], batch["class_id"])
    plain = damsm_loss_from_scores(*args[:-1], None)
    assert masked < plain  # three items of class 3: their pairs leave the softmaxes


# --------------------------------------------------------------------- the cache key

# Every field the encoders (or their meta.json) depend on; any other field must share the cache.
KEY_FIELDS = ({f"data.{f.name}" for f in fields(ExperimentConfig().data)}
              - {"data.loader_workers", "data.cache_dir", "data.max_bad_images"}) | \
             {f"damsm.{f.name}" for f in fields(ExperimentConfig().damsm)} | \
             {"loss.gamma1", "loss.gamma2", "loss.gamma3", "model.embed_dim"}


def _perturb(cfg: ExperimentConfig, dotted: str) -> ExperimentConfig:
    """cfg with one leaf changed (validation bypassed: the key must not depend on validity)."""
    *section, name = dotted.split(".")
    node = getattr(cfg, section[0]) if section else cfg
    old = getattr(node, name)
    new = ("x" if old is None else not old if isinstance(old, bool) else old + 1 if isinstance(old, int)
           else old * 2 + 1 if isinstance(old, float) else old + "x")
    node = replace(node, **{name: new})
    return replace(cfg, **{section[0]: node}) if section else node


def test_damsm_key_covers_exactly_the_fields_that_change_the_encoders():
    base = build_config("ci", {"damsm.contrastive": 1.0})  # the temperature matters only then
    key = damsm_key(base)
    leaves = [k for k in base.flat()]
    assert len(leaves) > 80 and KEY_FIELDS < set(leaves)
    for dotted in leaves:
        if dotted == "damsm.class_mask":
            continue  # enters resolved (auto/on/off): test_class_mask_key
        changed = damsm_key(_perturb(base, dotted)) != key
        assert changed == (dotted in KEY_FIELDS), f"{dotted}: {'changes' if changed else 'keeps'} the DAMSM key"
    # A new folder for each such field, the same one otherwise.
    assert damsm_dir(apply_overrides(base, {"loss.gamma1": 5.0})) != damsm_dir(base)
    assert damsm_dir(apply_overrides(base, {"train.lr_g": 1e-3, "loss.damsm": 5.0})) == damsm_dir(base)
    # Without the contrastive term its temperature trains nothing.
    plain = build_config("ci")
    assert damsm_key(apply_overrides(plain, {"damsm.contrastive_temperature": 0.1})) == damsm_key(plain)


def test_class_mask_key():
    cub = build_config("ci", CUB)
    assert damsm_key(cub) == damsm_key(apply_overrides(cub, {"damsm.class_mask": "on"}))
    assert damsm_key(cub) != damsm_key(apply_overrides(cub, {"damsm.class_mask": "off"}))
    shapes = build_config("ci")
    assert damsm_key(shapes) == damsm_key(apply_overrides(shapes, {"damsm.class_mask": "off"}))


def test_damsm_key_keeps_the_folders_of_earlier_caches():
    # Keys computed before the objective options existed: configs whose encoders train as then
    # (DAMSM on one caption, no class mask, gammas 4/5/10) find their cached encoders again.
    assert damsm_key(build_config("ci")) == "74c0fa8bb7f9"
    assert damsm_key(build_config("local")) == "992a1bad6a63"
    assert damsm_key(build_config("ci", {**CUB, "damsm.class_mask": "off"})) == "fd31ecb0f617"
    # CUB's default now masks same-class captions: other encoders, another folder.
    assert damsm_key(build_config("ci", CUB)) != "fd31ecb0f617"
    # A later data field at its default keeps the key; set, it names another folder.
    assert damsm_key(build_config("ci", {"data.max_objects": 1})) != "74c0fa8bb7f9"
    assert damsm_key(build_config("ci", {"data.object_size": "large"})) != "74c0fa8bb7f9"


# --------------------------------------------------------------------- on a real dataset

def test_t2i_cl_pretraining_on_cub_masks_classes_and_logs_every_term(tmp_path, monkeypatch):
    from tests.test_datasets import write_cub

    write_cub(tmp_path / "birds")  # 6 train images of 2 classes
    seen = []

    def spy(*args):
        seen.append(args[-1])
        return damsm_loss(*args)

    monkeypatch.setattr(D, "damsm_loss", spy)
    cfg = build_config("smoke", {"data.dataset": "cub", "data.data_root": str(tmp_path / "birds"),
                                 "output_dir": str(tmp_path / "out"), "damsm.epochs": 1, "damsm.batch_size": 4,
                                 "eval.r_precision_candidates": 2, "damsm.second_caption": True,
                                 "damsm.contrastive": 1.0})
    logs: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = D.load_damsm(D.ensure_damsm(cfg, log=logs.append)).meta
    assert meta["class_mask"] == "on (2 classes)" and meta["key"] == damsm_key(cfg)
    assert set(meta["final_loss_parts"]) == {"damsm", "damsm2", "contrastive"}
    assert meta["final_loss"] == pytest.approx(sum(meta["final_loss_parts"].values()), rel=1e-6)
    assert meta["objective"] == {"gamma": [4.0, 5.0, 10.0], "class_mask": True, "second_caption": True,
                                 "contrastive": [1.0, 0.5]}
    # Two DAMSM terms in the one batch (4 of the 6 train images: classes 1, 1, 1, 2, 2, 2), both
    # masked by that batch's class ids.
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]) and len(seen[0]) == 4
    assert sorted(seen[0].tolist()) in ([1, 1, 1, 2], [1, 1, 2, 2], [1, 2, 2, 2])
    assert any("objective: DAMSM(caption) + DAMSM(caption2) + 1 x NT-Xent(sent, sent2; tau=0.5); "
               "gammas 4/5/10; same-class mask on (2 classes)" in line for line in logs)
    assert any("(damsm " in line and "damsm2 " in line and "contrastive " in line for line in logs)


def test_every_run_seed_shares_one_pretraining_and_damsm_seed_makes_another(fresh_tiny_cfg):
    """The encoders (and the captioner) depend on damsm.seed (captioner.seed), not on the run's
    seed: seeds added by a later sweep train and score against the first sweep's encoders."""
    from t2i_ray.train.captioner import captioner_dir

    cfg = fresh_tiny_cfg
    other_run = apply_overrides(cfg, {"seed": 3})
    assert damsm_dir(other_run) == damsm_dir(cfg) and captioner_dir(other_run) == captioner_dir(cfg)
    assert damsm_dir(apply_overrides(cfg, {"damsm.seed": 1})) != damsm_dir(cfg)
    assert captioner_dir(apply_overrides(cfg, {"captioner.seed": 1})) != captioner_dir(cfg)
    # the pre-training itself reads damsm.seed only: two run seeds train the same weights
    a, b = (D.pretrain_damsm(c, Path(cfg.output_dir) / name, log=lambda s: None)
            for c, name in ((cfg, "a"), (other_run, "b")))
    for f in ("text_encoder.pt", "image_encoder.pt"):
        wa, wb = (torch.load(d / f, weights_only=True) for d in (a, b))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ConfigError, match="damsm.seed: must be >= 0"):
        apply_overrides(cfg, {"damsm.seed": -1})
