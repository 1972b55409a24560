"""Re-captioning loss l4: the loss against a hand computation, the captioner (shapes, learning,
cache), and its wiring into the GAN step and the training loop."""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from torch import nn

from t2i_ray.config import apply_overrides
from t2i_ray.data import registry
from t2i_ray.losses.recaption import caption_targets, recaption_loss
from t2i_ray.models.captioner import Captioner
from t2i_ray.models.factory import build_gan_models
from t2i_ray.models.text import ImageEncoder, TextEncoder
from t2i_ray.train.captioner import captioner_dir, captioner_is_cached, ensure_captioner, load_captioner
from t2i_ray.train.gan import build_optimizers, gan_step
from t2i_ray.train.loop import LocalEnv, run_training


# ---------------------------------------------------------------- the loss

def test_caption_targets_append_end_and_mask_by_length():
    ids = torch.tensor([[5, 7, 0], [4, 4, 9]])
    targets, mask = caption_targets(ids, torch.tensor([2, 3]))
    assert targets.tolist() == [[5, 7, 0, 0], [4, 4, 9, 0]]  # words, then "<end>" (0)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_recaption_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)  # B=2, T+1=4, V=5
    ids = torch.tensor([[3, 1, 0], [2, 2, 4]])
    lengths = torch.tensor([2, 3])
    # Tokens that count: caption 0 predicts 3, 1, <end> at positions 0..2; caption 1 predicts
    # 2, 2, 4, <end> at positions 0..3. Mean of -log softmax over those 7 tokens.
    wanted = [(0, 0, 3), (0, 1, 1), (0, 2, 0), (1, 0, 2), (1, 1, 2), (1, 2, 4), (1, 3, 0)]
    total = 0.0
    for b, t, word in wanted:
        row = logits[b, t].tolist()
        total += -row[word] + math.log(sum(math.exp(x) for x in row))
    assert recaption_loss(logits, ids, lengths).item() == pytest.approx(total / 7, rel=1e-12)


def test_recaption_loss_uniform_logits_is_log_vocab_and_ignores_padding():
    logits = torch.zeros(3, 6, 11, requires_grad=True)
    ids = torch.tensor([[1, 0, 0, 0, 0], [2, 3, 0, 0, 0], [4, 5, 6, 7, 8]])
    loss = recaption_loss(logits, ids, torch.tensor([1, 2, 5]))
    assert loss.item() == pytest.approx(math.log(11))
    loss.backward()
    # positions past "<end>" get no gradient: caption 0 uses positions 0..1 only
    assert logits.grad[0, 2:].abs().sum() == 0 and logits.grad[0, :2].abs().sum() > 0
    assert logits.grad[1, 3:].abs().sum() == 0 and logits.grad[2].abs().sum() > 0


# ---------------------------------------------------------------- the captioner

def test_captioner_shapes_and_greedy_decode_stops_at_end():
    torch.manual_seed(0)
    model = Captioner(vocab_size=30, image_size=32, word_dim=16, hidden_dim=24)
    images = torch.randn(4, 3, 64, 64)  # resized to 32 inside
    logits = model(images, torch.randint(1, 30, (4, 7)))
    assert logits.shape == (4, 8, 30)
    model.eval()
    decoded = model.greedy_decode(images, max_words=7)
    assert decoded.shape == (4, 7)
    for row in decoded.tolist():
        if 0 in row:
            assert all(w == 0 for w in row[row.index(0):])


def test_captioner_overfits_a_tiny_batch():
    torch.manual_seed(0)
    B, T, V = 8, 6, 40
    images = torch.rand(B, 3, 32, 32) * 2 - 1
    ids = torch.randint(1, V, (B, T))
    lengths = torch.randint(3, T + 1, (B,))
    ids = ids.masked_fill(torch.arange(T) >= lengths.view(B, 1), 0)
    model = Captioner(vocab_size=V, image_size=32, word_dim=32, hidden_dim=64, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~10x faster than two on a busy 2-core box
    try:
        for _ in range(60):
            loss = recaption_loss(model(images, ids), ids, lengths)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert losses[0] == pytest.approx(math.log(V), rel=0.2)
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_captioner_cache_is_built_once_then_reused(fresh_tiny_cfg):
    cfg = fresh_tiny_cfg
    assert not captioner_is_cached(cfg)
    logs: list[str] = []
    path = ensure_captioner(cfg, logs.append)
    assert path == captioner_dir(cfg) and captioner_is_cached(cfg)
    assert any("token accuracy" in m for m in logs)  # the log says how well it learned
    stamp = os.stat(path / "captioner.pt").st_mtime_ns
    logs.clear()
    assert ensure_captioner(cfg, logs.append) == path
    assert logs == [f"[captioner] using cached captioner {path}"]
    assert os.stat(path / "captioner.pt").st_mtime_ns == stamp
    cached = load_captioner(path)
    meta = cached.meta
    assert 0.0 <= meta["test_token_accuracy"] <= 1.0 and math.isfinite(meta["test_perplexity"])
    assert meta["test_num_captions"] == 2 * cfg.data.num_test
    assert cached.vocab == registry.vocabulary(cfg)  # the project's vocabulary, saved beside it
    assert not cached.model.training and not any(p.requires_grad for p in cached.model.parameters())
    # a different captioner setting is a different cache entry
    other = apply_overrides(cfg, {"captioner.hidden_dim": 32})
    assert captioner_dir(other) != path and not captioner_is_cached(other)


# ---------------------------------------------------------------- wiring into the GAN step

class Exploding(nn.Module):
    def forward(self, *args):
        raise AssertionError("the captioner must not run when loss.recap = 0")


def _tiny_models(cfg, vocab_size=20, captioner=None):
    torch.manual_seed(0)
    text = TextEncoder(vocab_size, hidden_per_dir=cfg.model.embed_dim // 2)
    image = ImageEncoder(embed_dim=cfg.model.embed_dim)
    return build_gan_models(cfg, text, image, captioner)


def _batch(cfg, vocab_size=20, B=4, T=6):
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(2, T + 1, (B,), generator=g)
    ids = torch.randint(1, vocab_size, (B, T), generator=g).masked_fill(torch.arange(T) >= lens.view(B, 1), 0)
    r = cfg.data.resolution
    return {"image": torch.rand(B, 3, r, r, generator=g) * 2 - 1, "caption": ids, "caption_len": lens,
            "caption2": ids.roll(1, 0), "caption2_len": lens.roll(1, 0)}


def test_gan_step_with_zero_recap_weight_never_calls_the_captioner(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"loss.recap": 0.0, "loss.f2r": 0.2})
    models = dataclasses.replace(_tiny_models(cfg), captioner=Exploding())
    out = gan_step(models, build_optimizers(models, cfg), _batch(cfg), cfg, torch.Generator().manual_seed(0))
    assert "loss_recap" not in out and "loss_f2r" in out


def test_gan_step_adds_the_recap_term_and_keeps_the_captioner_frozen(tiny_cfg):
    cfg = apply_overrides(tiny_cfg, {"loss.recap": 0.7})
    with pytest.raises(ValueError, match="loss.recap > 0 needs the pre-trained captioner"):
        _tiny_models(cfg)
    captioner = Captioner(vocab_size=20, image_size=32, word_dim=16, hidden_dim=24)
    before = {k: v.clone() for k, v in captioner.state_dict().items()}
    models = _tiny_models(cfg, captioner=captioner)
    assert models.captioner is captioner and not captioner.training
    assert "captioner" not in models.trainable()
    out = gan_step(models, build_optimizers(models, cfg), _batch(cfg), cfg, torch.Generator().manual_seed(0))
    assert math.isfinite(out["loss_recap"]) and out["loss_recap"] > 0
    assert out["loss_g"] == pytest.approx(out["loss_g_adv"] + 0.7 * out["loss_recap"], rel=1e-5)
    for k, v in captioner.state_dict().items():
        assert torch.equal(v, before[k]), f"captioner {k} changed"
    assert all(p.grad is None for p in captioner.parameters())


def test_training_loop_loads_the_cached_captioner_for_recap(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"loss.recap": 1.0, "train.steps": 2, "train.checkpoint_every": 2})
    with pytest.raises(ValueError, match="needs a pre-trained captioner"):
        run_training(cfg, LocalEnv(tmp_path / "none"), tiny_damsm, "no-captioner")
    captioner_path = str(ensure_captioner(tiny_cfg, log=lambda s: None))
    env = LocalEnv(tmp_path / "recap")
    final = run_training(cfg, env, tiny_damsm, "recap", captioner_path)
    assert all(math.isfinite(r["loss_recap"]) for r in env.reports if "loss_d" in r)
    assert final["finished"] == 1
