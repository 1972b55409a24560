"""DTE-GAN's text-embedding modes (README "Text-embedding modes"): which losses reach which
embedding on one real GAN step, conditioning augmentation's KL against a hand computation, the
MA-GP switch and the parameter counts of the results rows.

The flow checks scale a term that only D's loss has (D's hinge) or only G's loss has (G's hinge)
and compare the text encoders' gradients after one `gan_step`: an encoder that the scaled loss
reaches gets another gradient, one it does not reach gets bit-for-bit the same. D's optimiser has
lr 0, so the G step sees the same D in both runs and only the scaled term differs between them.
(MA-GP cannot serve as the D-only probe: for D's piecewise-linear head, grad_e D is piecewise
constant in e, so the penalty's own gradient w.r.t. the sentence is 0.)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from t2i_ray.config import apply_overrides, build_config
from t2i_ray.models.conditioning import ConditioningAugmentation, kl_to_standard_normal
from t2i_ray.models.text import ImageEncoder, TextEncoder
from t2i_ray.train import gan
from t2i_ray.train.damsm import Damsm
from t2i_ray.train.method import Assets, build_method, parameter_columns

B, T, VOCAB, EMBED = 4, 6, 30, 32


def _cfg(mode: str, **overrides):
    return build_config("smoke", {"model.text_embedding": mode, "model.nf": 4, "model.embed_dim": EMBED,
                                  "model.ca_dim": 16, "train.batch_size": B, **overrides})


def _batch():
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(B, 3, 32, 32, generator=g) * 2 - 1,
            "caption": torch.randint(1, VOCAB, (B, T), generator=g),
            "caption_len": torch.tensor([T, T - 1, 3, T])}


def _step(cfg):
    """One gan_step from fixed weights and noise; returns (method, reported losses)."""
    torch.manual_seed(5)
    text = TextEncoder(VOCAB, word_dim=8, hidden_per_dir=EMBED // 2, dropout=0.0)
    damsm = Damsm(text, ImageEncoder(embed_dim=EMBED, backbone="cnn"), None, {}, Path("."))
    torch.manual_seed(0)
    method = build_method(cfg, Assets(damsm))
    for module in method.models.text_encoders().values():  # no dropout masks: deterministic reruns
        module.eval()
    with torch.no_grad():  # DF-GAN zero-initialises the affine layers that read the condition: G
        g = torch.Generator().manual_seed(2)  # would ignore it at step 0 (as would its gradient)
        for p in method.models.generator.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    d_params = method.optimizers["d"].param_groups[0]["params"]
    method.optimizers["d"] = torch.optim.SGD(d_params, lr=0.0)  # D unchanged for the G step
    out = gan.gan_step(method.models, method.optimizers, _batch(), cfg, torch.Generator().manual_seed(3))
    return method, out


def _grads(method) -> dict[str, torch.Tensor]:
    """Each text encoder's parameter gradient after the step, flattened (zeros where none)."""
    return {name: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                             for p in enc.parameters()])
            for name, enc in method.models.text_encoders().items()}


def _scaled(fn, factor=3.0):
    return lambda *args, **kwargs: factor * fn(*args, **kwargs)


def _flows(mode: str, monkeypatch, arch: str = "dfgan") -> dict[str, dict[str, bool]]:
    """{encoder: {"G": G's loss reaches it, "D": D's losses reach it}} measured on one step, by
    scaling D's adversarial loss (a term of D's loss only) or G's (of G's loss only): the hinge
    losses, or plain AttnGAN's BCE losses over its stages."""
    losses = ("discriminator_bce_loss", "generator_bce_loss") if arch == "attngan" else (
        "discriminator_hinge_loss", "generator_hinge_loss")
    base = _grads(_step(_cfg(mode, **{"model.arch": arch}))[0])
    changed = {}
    for side, name in zip(("D", "G"), losses):
        with monkeypatch.context() as m:
            m.setattr(gan, name, _scaled(getattr(gan, name)))
            changed[side] = _grads(_step(_cfg(mode, **{"model.arch": arch}))[0])
    out = {}
    for name, grad in base.items():
        assert grad.abs().sum() > 0, f"{name} got no gradient at all"
        out[name] = {side: not torch.equal(changed[side][name], grad) for side in ("G", "D")}
    return out


def test_dual_s_g_gets_only_g_gradient_and_s_d_only_d_gradient(one_thread, monkeypatch):
    assert _flows("dual", monkeypatch) == {"text_g": {"G": True, "D": False}, "text_d": {"G": False, "D": True}}


def test_dual_flows_on_plain_attngan_multi_stage_path(one_thread, monkeypatch):
    # AttnGAN's G has its own CA (so the DTE one stays off) and three discriminators: S_G still
    # reaches only G's loss, S_D only the discriminators' losses.
    assert _flows("dual", monkeypatch, arch="attngan") == {"text_g": {"G": True, "D": False},
                                                            "text_d": {"G": False, "D": True}}


def test_shared_embedding_gets_both_flows(one_thread, monkeypatch):
    assert _flows("shared", monkeypatch) == {"text_g": {"G": True, "D": True}}


def test_pretrained_embedding_gets_no_gradient(one_thread):
    method, _ = _step(_cfg("pretrained"))
    damsm_text = method.models.text_g
    assert method.models.text_d is damsm_text and "text" not in method.optimizers
    assert all(p.grad is None and not p.requires_grad for p in damsm_text.parameters())
    assert method.models.ca is None  # auto: CA only for the trainable embeddings


def test_ca_kl_matches_a_hand_computation():
    mu = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [-1.0, 0.3]])
    # KL(N(m, s^2) || N(0, 1)) = 1/2 (s^2 + m^2 - 1 - log s^2) per dimension, averaged over (B, C)
    hand = [0.5 * (math.exp(lv) + m * m - 1 - lv) for m, lv in zip(mu.flatten().tolist(), logvar.flatten().tolist())]
    assert kl_to_standard_normal(mu, logvar).item() == pytest.approx(sum(hand) / 4, rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0  # N(0, I) itself
    ca = ConditioningAugmentation(3, 2)
    with torch.no_grad():
        ca.fc.weight.zero_()
        ca.fc.bias.copy_(torch.tensor([0.5, -1.0, 0.0, math.log(4.0)]))  # mu = (0.5, -1), log s^2 = (0, log 4)
    eps = torch.tensor([[1.0, -0.5]])
    c, m, lv = ca(torch.randn(1, 3), eps)
    torch.testing.assert_close(c, torch.tensor([[0.5 + 1.0, -1.0 + 2.0 * -0.5]]))
    torch.testing.assert_close(m, torch.tensor([[0.5, -1.0]]))


def test_ca_kl_enters_g_loss_at_its_weight(one_thread):
    _, w1 = _step(_cfg("dual", **{"model.ca_kl_weight": 1.0}))
    _, w3 = _step(_cfg("dual", **{"model.ca_kl_weight": 3.0}))
    assert w1["loss_ca_kl"] == w3["loss_ca_kl"] > 0
    assert w3["loss_g"] - w1["loss_g"] == pytest.approx(2 * w1["loss_ca_kl"], rel=1e-4)
    _, off = _step(_cfg("dual", **{"model.conditioning_augmentation": "off"}))
    assert "loss_ca_kl" not in off


def test_magp_switch(one_thread):
    _, on = _step(_cfg("pretrained"))
    assert on["loss_magp"] > 0 and on["loss_d"] == pytest.approx(on["loss_d_adv"] + on["loss_magp"], rel=1e-6)
    _, off = _step(_cfg("pretrained", **{"loss.magp": False}))
    assert "loss_magp" not in off and off["loss_d"] == off["loss_d_adv"]
    assert off["loss_d_adv"] == on["loss_d_adv"]  # the hinge terms are the same, only the penalty went


def test_results_row_parameter_counts(tmp_path):
    damsm_dir = tmp_path / "damsm"
    damsm_dir.mkdir()
    text_cfg = {"vocab_size": VOCAB, "word_dim": 8, "hidden_per_dir": EMBED // 2, "dropout": 0.0}
    (damsm_dir / "meta.json").write_text(json.dumps({"text_encoder": text_cfg}))
    n_text = sum(p.numel() for p in TextEncoder(**text_cfg).parameters())
    counts = {}
    for mode in ("pretrained", "shared", "dual"):
        cfg = _cfg(mode)
        counts[mode] = parameter_columns(cfg, str(damsm_dir))
        built = build_method(cfg, Assets(Damsm(TextEncoder(**text_cfg), ImageEncoder(EMBED, "cnn"), None, {},
                                               Path(".")))).models
        assert counts[mode] == built.parameter_counts()  # the meta-device build counts what training builds
        assert counts[mode]["params_trainable"] == sum(p.numel() for m in built.trainable().values()
                                                       for p in m.parameters())
    assert counts["pretrained"]["params_text"] == counts["shared"]["params_text"] == n_text
    assert counts["dual"]["params_text"] == 2 * n_text
    ca = EMBED * 2 * 16 + 2 * 16  # FC embed -> (mu, log sigma^2) of model.ca_dim
    # G takes CA's 16-wide condition instead of the 32-wide sentence; CA's FC is counted with G
    assert counts["shared"]["params_g"] - ca < counts["pretrained"]["params_g"]
    assert counts["pretrained"]["params_trainable"] == counts["pretrained"]["params_g"] + counts["pretrained"]["params_d"]
    assert counts["dual"]["params_trainable"] == sum(counts["dual"][k] for k in ("params_g", "params_d", "params_text"))
    assert parameter_columns(_cfg("pretrained"), str(tmp_path / "missing")) == {}
    assert parameter_columns(apply_overrides(_cfg("pretrained"), {"model.method": "diffusion"}), str(damsm_dir)) == {}
