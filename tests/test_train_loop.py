"""The training loop in-process: learning signal, checkpoint/resume exactness, outputs, errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from t2i_ray.config import apply_overrides
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.damsm import ensure_damsm, load_damsm
from t2i_ray.train.loop import LocalEnv, run_training


class Killed(Exception):
    pass


class KillAfterCheckpoint(LocalEnv):
    """Dies right after the checkpoint at `step` is written, like a preempted worker."""

    def __init__(self, run_dir, step):
        super().__init__(run_dir)
        self.kill_step = step

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if checkpoint_dir is not None and metrics.get("step") == self.kill_step:
            raise Killed


def _final_state(run_dir):
    return ckpt.load_state(run_dir / "checkpoint")


def test_killed_run_resumes_from_checkpoint_with_identical_state(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"loss.f2r": 0.2, "loss.f2f": 0.2, "loss.damsm": 0.05})
    straight = LocalEnv(tmp_path / "straight")
    run_training(cfg, straight, tiny_damsm, "straight")

    killed = KillAfterCheckpoint(tmp_path / "resumed", step=2)
    with pytest.raises(Killed):
        run_training(cfg, killed, tiny_damsm, "resumed")
    assert _final_state(tmp_path / "resumed")["step"] == 2
    resumed = LocalEnv(tmp_path / "resumed")
    final = run_training(cfg, resumed, tiny_damsm, "resumed")

    # the second run trained only steps 3 and 4, then evaluated
    train_steps = [r["step"] for r in resumed.reports if "loss_d" in r]
    assert train_steps == [3, 4]
    a, b = _final_state(tmp_path / "straight"), _final_state(tmp_path / "resumed")
    assert a["step"] == b["step"] == 4
    for name in a["modules"]:
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key} differs after resume"
    assert final["finished"] == 1 and math.isfinite(final["fid"])


def test_final_metrics_outputs_and_safe_checkpoint(tiny_cfg, tiny_damsm, tmp_path):
    env = LocalEnv(tmp_path / "run")
    final = run_training(tiny_cfg, env, tiny_damsm, "outputs")
    for key in ("fid", "kid", "r_precision", "r_precision_std", "attr_pair_recall"):
        assert math.isfinite(final[key]), key
    assert final["fid_num_fake"] == tiny_cfg.eval.num_images
    assert final["fid_num_real"] == tiny_cfg.data.num_test
    assert final["r_precision_num_images"] == tiny_cfg.eval.num_images
    assert final["fid_backbone"].startswith("domain-v") and final["r_precision_backbone"].startswith("damsm-")
    assert 0.0 <= final["r_precision"] <= 1.0
    # checkpoint folder: safe to load, carries config + vocab + constructor kwargs
    folder = tmp_path / "run" / "checkpoint"
    state = torch.load(folder / "state.pt", weights_only=True)
    assert set(state["modules"]) == {"generator", "discriminator", "head"}
    assert set(state["optimizers"]) == {"g", "d"}  # `pretrained`: the DAMSM text encoder stays frozen
    assert json.loads((folder / "config.json").read_text())["seed"] == tiny_cfg.seed
    assert json.loads((folder / "modules.json").read_text())["generator"]["nf"] == tiny_cfg.model.nf
    assert (folder / "vocab.json").is_file()
    assert Image.open(Path(tiny_cfg.output_dir) / "samples" / "outputs.png").size == (16 * 32, 2 * 32)
    assert list(Path(tiny_cfg.output_dir).glob("tensorboard/outputs/events.out.tfevents.*"))


@pytest.mark.parametrize("mode", ["shared", "dual"])
def test_trainable_text_embeddings_are_trained_and_checkpointed(tiny_cfg, tiny_damsm, tmp_path, mode):
    cfg = apply_overrides(tiny_cfg, {"model.text_embedding": mode, "train.steps": 2,
                                     "train.checkpoint_every": 2})
    env = LocalEnv(tmp_path / mode)
    run_training(cfg, env, tiny_damsm, f"text-{mode}")
    state = _final_state(tmp_path / mode)
    expected = {"generator", "discriminator", "head", "ca", "align_proj", "text_g"} | ({"text_d"} if mode == "dual" else set())
    assert set(state["modules"]) == expected
    assert "loss_align_d" in env.reports[0] and "loss_align_g" in env.reports[0]
    # the text optimiser really stepped: Adam moments exist and are non-zero for the encoder(s)
    text_state = state["optimizers"]["text"]["state"]
    assert text_state and any(float(v["exp_avg"].abs().sum()) > 0 for v in text_state.values())


def test_nan_loss_stops_with_a_clear_error(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"train.lr_d": 1e30, "train.lr_g": 1e30, "train.steps": 3})
    with pytest.raises(FloatingPointError, match="non-finite .* at step"):
        run_training(cfg, LocalEnv(tmp_path / "nan"), tiny_damsm, "nan")


def test_damsm_cache_is_reused_and_vocab_frozen(tiny_cfg, tiny_damsm):
    logs = []
    again = ensure_damsm(tiny_cfg, log=logs.append)
    assert str(again) == tiny_damsm and "using cached" in logs[0]
    d = load_damsm(tiny_damsm)
    assert d.meta["vocab_fingerprint"] == d.vocab.fingerprint()
    assert 0.0 <= d.meta["real_r_precision"] <= 1.0


# The losses of DF-GAN's second step (after one D + G update) at a fixed seed and batch, with the
# DAMSM, F2R and F2F terms on, as this code computed them before the performance work of issue 16
# (float32, 1 thread, this CPU): a speed-up must leave them as they are, to float round-off.
PINNED_STEP_2 = {"loss_d": 1.9997849464416504, "loss_d_adv": 1.999781847000122, "loss_magp": 3.1563931770506315e-06,
                 "d_real": 0.017318038269877434, "d_fake": 0.016909830272197723, "loss_g_adv": -0.012858749367296696,
                 "loss_damsm": 8.306523323059082, "loss_f2r": 1.9508013725280762, "loss_f2f": 1.9459022283554077,
                 "loss_g": 1.1818081140518188}


def test_a_fixed_step_keeps_its_losses(tmp_path, one_thread):
    import contextlib
    from types import SimpleNamespace

    from t2i_ray.config import build_config
    from t2i_ray.data import registry
    from t2i_ray.data.dataset import TextImageDataset
    from t2i_ray.train.damsm import _make_encoders
    from t2i_ray.train.method import Assets, build_method

    cfg = build_config("ci", {"output_dir": str(tmp_path), "model.nf": 4, "train.batch_size": 4, "data.num_train": 64,
                              "loss.damsm": 0.05, "loss.f2r": 0.2, "loss.f2f": 0.2})
    vocab = registry.vocabulary(cfg, log=lambda s: None)
    torch.manual_seed(0)
    text, image = _make_encoders(cfg, len(vocab))  # freshly initialised: the step needs no pre-training
    method = build_method(cfg, Assets(SimpleNamespace(text_encoder=text, image_encoder=image, vocab=vocab)))
    method.prepare(lambda m: m, lambda m: m, torch.device("cpu"))
    method.train_mode()
    data = TextImageDataset(registry.source(cfg, "train"), vocab, cfg.data.words_num, train=True, seed=0)
    first, second = [b for _, b in zip(range(2), torch.utils.data.DataLoader(data, batch_size=4, shuffle=False))]
    noise = torch.Generator().manual_seed(7)
    method.step(first, noise, contextlib.nullcontext)
    losses = method.step(second, noise, contextlib.nullcontext)
    assert losses.keys() == PINNED_STEP_2.keys()
    for k, v in PINNED_STEP_2.items():
        assert losses[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_g_ema_updates_after_each_g_step_samples_and_survives_a_checkpoint(tmp_path, one_thread):
    """train.g_ema (AttnGAN's avg_param_G, with TF's warm-up): after the first step EMA =
    d1 * G_0 + (1 - d1) * G_1 for G and CA with d1 = min(d, 2 / 11), buffers are G's; the sampler draws from the EMA weights (from G itself when off); a
    checkpoint round trip into a freshly initialised method keeps the EMA and its samples."""
    import contextlib
    from types import SimpleNamespace

    from t2i_ray.config import build_config
    from t2i_ray.data import registry
    from t2i_ray.data.dataset import TextImageDataset
    from t2i_ray.train.damsm import _make_encoders
    from t2i_ray.train.method import Assets, build_method

    decay = 0.9
    cfg = build_config("ci", {"output_dir": str(tmp_path), "model.nf": 4, "train.batch_size": 4,
                              "data.num_train": 64, "model.arch": "ssagan",  # ssagan: G with BN buffers
                              "model.conditioning_augmentation": "on", "train.g_ema": decay})
    vocab = registry.vocabulary(cfg, log=lambda s: None)
    torch.manual_seed(0)
    text, image = _make_encoders(cfg, len(vocab))
    assets = Assets(SimpleNamespace(text_encoder=text, image_encoder=image, vocab=vocab))
    method = build_method(cfg, assets)
    method.prepare(lambda m: m, lambda m: m, torch.device("cpu"))
    method.train_mode()
    assert set(method.ema) == {"generator", "ca"}
    assert set(method.checkpointed()) == set(method.trainable()) | {"generator_ema", "ca_ema"}
    trained = {"generator": method.models.generator, "ca": method.models.ca}
    before = {n: [p.detach().clone() for p in trained[n].parameters()] for n in trained}
    for n in trained:  # the copies start at G's (and CA's) initial weights
        assert all(torch.equal(e, p) for e, p in zip(method.ema[n].parameters(), before[n]))
    data = TextImageDataset(registry.source(cfg, "train"), vocab, cfg.data.words_num, train=True, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)))
    method.step(batch, torch.Generator().manual_seed(7), contextlib.nullcontext)
    assert method.updates == 1
    d1 = min(decay, (1 + 1) / (10 + 1))  # the warm-up's first decay, 0.18
    assert not all(torch.equal(p0, p1) for p0, p1 in zip(before["generator"], trained["generator"].parameters()))
    for n in trained:
        for e, p0, p1 in zip(method.ema[n].parameters(), before[n], trained[n].parameters()):
            torch.testing.assert_close(e, d1 * p0 + (1 - d1) * p1.detach(), rtol=1e-6, atol=1e-7)
    ema_buffers = dict(method.ema["generator"].named_buffers())
    assert any("running_mean" in k for k in ema_buffers)
    for k, b in method.models.generator.named_buffers():
        assert torch.equal(ema_buffers[k], b), k

    ids, lens = batch["caption"], batch["caption_len"]

    def draw(m):
        return m.sampler()(ids, lens, torch.Generator().manual_seed(3))

    with_ema = draw(method)
    ema = method.ema
    method.ema = {}  # off: G itself samples
    raw = draw(method)
    assert not torch.allclose(with_ema, raw)
    # G and CA holding the EMA weights sample exactly what the EMA copies sampled
    saved = {n: {k: v.clone() for k, v in trained[n].state_dict().items()} for n in trained}
    for n in trained:
        trained[n].load_state_dict(ema[n].state_dict())
    assert torch.equal(draw(method), with_ema)
    for n in trained:
        trained[n].load_state_dict(saved[n])
    method.ema = ema

    folder = ckpt.save_checkpoint(tmp_path / "ckpt", step=1, modules=method.checkpointed(),
                                  optimizers=method.optimizers, rng={}, config=cfg.to_dict())
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    fresh = build_method(cfg, assets)
    assert not torch.equal(next(fresh.ema["generator"].parameters()), next(ema["generator"].parameters()))
    ckpt.restore(ckpt.load_state(folder), fresh.checkpointed(), {})
    fresh.prepare(lambda m: m, lambda m: m, torch.device("cpu"))
    for n in trained:
        for (k, a), b in zip(ema[n].state_dict().items(), fresh.ema[n].state_dict().values()):
            assert torch.equal(a, b), f"{n}_ema.{k}"
    assert torch.equal(draw(fresh), with_ema)
