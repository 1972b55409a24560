"""The GPU switches (bf16 autocast, channels_last, cuDNN benchmark) on a CPU-only machine: "auto"
turns all of them off on the CPU, the GPU branches resolve as intended (checked with a CUDA
device object, nothing runs on it), and the code paths that a CPU can execute (bf16 autocast,
NHWC tensors) train correctly. No GPU was used for these tests."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader

from t2i_ray.config import ConfigError, apply_overrides
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data import registry
from t2i_ray.models.factory import build_gan_models
from t2i_ray.train.accel import resolve_accel, select_device
from t2i_ray.train.damsm import load_damsm
from t2i_ray.train.gan import build_optimizers, gan_step
from t2i_ray.train.loop import LocalEnv, run_training

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_switches_everything_off_on_cpu(tiny_cfg):
    accel = resolve_accel(tiny_cfg.train, CPU)
    assert accel.amp_dtype is None and not accel.channels_last and not accel.cudnn_benchmark
    assert accel.describe() == {"device": "cpu", "amp": "off", "channels_last": False, "cudnn_benchmark": False}
    x = torch.randn(2, 3, 8, 8)
    assert accel.prepare_batch({"image": x})["image"].is_contiguous()
    with accel.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_gpu_branches_resolve_as_configured(tiny_cfg):
    t = tiny_cfg.train
    on_ampere = resolve_accel(t, CUDA, bf16_supported=True)
    assert on_ampere.amp_dtype == torch.bfloat16 and on_ampere.channels_last and on_ampere.cudnn_benchmark
    on_old_gpu = resolve_accel(t, CUDA, bf16_supported=False)  # e.g. a T4 or V100
    assert on_old_gpu.amp_dtype is None and on_old_gpu.channels_last
    off = apply_overrides(tiny_cfg, {"train.amp": "off", "train.channels_last": "off",
                                     "train.cudnn_benchmark": False}).train
    plain = resolve_accel(off, CUDA, bf16_supported=True)
    assert plain.amp_dtype is None and not plain.channels_last and not plain.cudnn_benchmark
    forced = apply_overrides(tiny_cfg, {"train.amp": "bf16"}).train
    with pytest.raises(ConfigError, match="train.amp: bf16 needs a GPU with bfloat16"):
        resolve_accel(forced, CUDA, bf16_supported=False)
    with pytest.raises(ConfigError, match="train.amp"):
        apply_overrides(tiny_cfg, {"train.amp": "fp16"})


def test_native_amp_follows_the_hardware(tiny_cfg):
    from t2i_ray.train.accel import cpu_has_native_bf16

    native = apply_overrides(tiny_cfg, {"train.amp": "native"}).train
    assert resolve_accel(native, CPU, bf16_supported=True).amp_dtype == torch.bfloat16  # AVX512-BF16 / AMX
    assert resolve_accel(native, CPU, bf16_supported=False).amp_dtype is None  # emulated bf16: float32
    assert resolve_accel(native, CUDA, bf16_supported=True).amp_dtype == torch.bfloat16
    assert resolve_accel(native, CUDA, bf16_supported=False).amp_dtype is None
    # without the argument, this machine's CPU answers; auto stays off on any CPU
    assert resolve_accel(native, CPU).amp_dtype == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_accel(tiny_cfg.train, CPU, bf16_supported=True).amp_dtype is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_use_gpu_without_a_gpu_fails_before_training(tiny_cfg, tiny_damsm, tmp_path):
    with pytest.raises(ConfigError, match="train.use_gpu: true, but torch sees no CUDA device"):
        select_device(True)
    cfg = apply_overrides(tiny_cfg, {"train.use_gpu": True})
    with pytest.raises(ConfigError, match="train.use_gpu"):
        run_training(cfg, LocalEnv(tmp_path / "gpu"), tiny_damsm, "gpu")
    assert not (tmp_path / "gpu" / "checkpoint").exists()


def _models_and_batch(cfg, damsm_path):
    damsm = load_damsm(damsm_path)
    data = TextImageDataset(registry.source(cfg, "train"), damsm.vocab, cfg.data.words_num, train=True)
    batch = next(iter(DataLoader(data, batch_size=cfg.train.batch_size)))
    torch.manual_seed(0)
    models = build_gan_models(cfg, damsm.text_encoder, damsm.image_encoder)
    return models, batch


def _one_step(cfg, models, batch, amp: str, channels_last: str):
    models = copy.deepcopy(models)
    cfg = apply_overrides(cfg, {"train.amp": amp, "train.channels_last": channels_last})
    accel = resolve_accel(cfg.train, CPU)
    for name in ("generator", "discriminator", "damsm_image"):
        accel.prepare_module(getattr(models, name))
    opts = build_optimizers(models, cfg)
    before = {k: p.detach().clone() for k, p in models.generator.named_parameters()}
    losses = gan_step(models, opts, accel.prepare_batch(batch), cfg, torch.Generator().manual_seed(1),
                      autocast=accel.autocast)
    delta = torch.cat([(p.detach() - before[k]).flatten() for k, p in models.generator.named_parameters()])
    return losses, delta


def test_bf16_autocast_and_channels_last_steps_match_float32_on_cpu(one_thread, tiny_cfg, tiny_damsm):
    # F2R on, so every region is exercised: autocast D, head and G, float32 DAMSM image encoder.
    cfg = apply_overrides(tiny_cfg, {"loss.f2r": 0.2})
    models, batch = _models_and_batch(cfg, tiny_damsm)
    ref, ref_delta = _one_step(cfg, models, batch, "off", "off")
    nhwc, nhwc_delta = _one_step(cfg, models, batch, "off", "on")
    bf16, bf16_delta = _one_step(cfg, models, batch, "bf16", "on")
    # NHWC changes only the memory layout: the same numbers up to float reduction order.
    for k in ref:
        assert math.isclose(nhwc[k], ref[k], rel_tol=1e-4, abs_tol=1e-5), (k, nhwc[k], ref[k])
    # (Adam's first step is ~lr * grad / (|grad| + eps): tiny gradients amplify rounding, hence atol.)
    torch.testing.assert_close(nhwc_delta, ref_delta, rtol=1e-3, atol=1e-5)
    # bf16 keeps ~3 significant digits inside the convs: losses agree to a few percent, and the
    # generator's Adam update (~lr * sign(grad) on step 1) points the same way almost everywhere.
    for k in ("loss_d_adv", "loss_g_adv", "loss_f2r"):
        assert math.isfinite(bf16[k]) and abs(bf16[k] - ref[k]) <= 0.05 * abs(ref[k]) + 0.02, (k, bf16[k], ref[k])
    cos = torch.nn.functional.cosine_similarity(bf16_delta, ref_delta, dim=0)
    assert cos > 0.9, float(cos)


def test_training_run_with_bf16_and_channels_last_on_cpu_checkpoints_and_evaluates(tiny_cfg, tiny_damsm, tmp_path):
    cfg = apply_overrides(tiny_cfg, {"train.amp": "bf16", "train.channels_last": "on", "train.steps": 2})
    final = run_training(cfg, LocalEnv(tmp_path / "bf16"), tiny_damsm, "bf16")
    assert final["finished"] == 1 and math.isfinite(final["fid"])
    assert final["amp_dtype"] == "bfloat16"  # the results row says what the run trained with
    state = torch.load(tmp_path / "bf16" / "checkpoint" / "state.pt", weights_only=True)
    # parameters are stored in float32 (autocast never changes the weights' dtype)
    assert all(v.dtype == torch.float32 for v in state["modules"]["generator"].values() if v.is_floating_point())


@pytest.mark.parametrize("arch", ["attngan_style", "style1attngan"])
def test_channels_last_prepares_the_stylegan_architectures_5d_weights_and_all(one_thread, tiny_cfg, tiny_damsm,
                                                                               arch):
    """Their modulated convs keep a 5-D weight, which Module.to(memory_format=channels_last) refuses
    ("required rank 4 tensor"): `auto` on a GPU failed before the first step. The 4-D tensors go NHWC,
    the 5-D ones stay, and the step's losses are the float32 ones up to reduction order."""
    cfg = apply_overrides(tiny_cfg, {"model.arch": arch})
    models, batch = _models_and_batch(cfg, tiny_damsm)
    prepared = resolve_accel(apply_overrides(cfg, {"train.channels_last": "on"}).train, CPU).prepare_module(
        copy.deepcopy(models.generator))
    ranks = {p.dim() for p in prepared.parameters()}
    assert 5 in ranks and 4 in ranks
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in prepared.parameters() if p.dim() == 4)
    ref, _ = _one_step(cfg, models, batch, "off", "off")
    nhwc, _ = _one_step(cfg, models, batch, "off", "on")
    for k in ref:
        assert math.isclose(nhwc[k], ref[k], rel_tol=1e-4, abs_tol=1e-5), (k, nhwc[k], ref[k])
