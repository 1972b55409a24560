"""The super-resolution cascade of the Gaussian-categorical diffusion (diffusion.base_resolution; GCDP,
arXiv:2308.08157, as Imagen, arXiv:2205.11487 Sec. 2.5): the SR U-Net's conditioning, the noise
augmentation, the low-res pair, training + resume + evaluation under the loop, non-square sampling,
the config refusals and the paper preset's dry run."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from t2i_ray.config import ConfigError, apply_overrides, base_image_size, build_config
from t2i_ray.models.diffusion.gaussian_categorical import augment_lowres, lowres_alpha_bar
from t2i_ray.models.diffusion.unet import JointUNet
from t2i_ray.models.text import TextEncoder
from t2i_ray.train import checkpoint as ckpt
from t2i_ray.train.damsm import Damsm
from t2i_ray.train.diffusion import downsample_pair
from t2i_ray.train.loop import LocalEnv, run_training
from t2i_ray.train.method import Assets, build_method, load_trained

from tests.test_architectures import KillAfterCheckpoint, Killed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))
import ablate_diffusion  # noqa: E402  (sweeps/ is not a package)

sys.path.remove(str(REPO / "sweeps"))

CI = {**ablate_diffusion.PRESET_DEFAULTS["ci"], "model.method": "diffusion"}


def _randomise_zero_layers(net: torch.nn.Module) -> None:
    """The U-Net's output conv, second ResBlock convs and attention outputs start at zero (so an
    untrained net ignores every input); give them random weights to see what reaches the output."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.2)


def _text(n: int, text_dim: int = 256):
    g = torch.Generator().manual_seed(1)
    words, sentence = torch.randn(n, 5, text_dim, generator=g), torch.randn(n, text_dim, generator=g)
    return words, torch.ones(n, 5, dtype=torch.bool), sentence


def _offline_method(cfg):
    """The method with a random frozen text encoder (no DAMSM pre-training, no data on disk)."""
    torch.manual_seed(5)
    text = TextEncoder(30, word_dim=16, hidden_per_dir=cfg.model.embed_dim // 2).eval().requires_grad_(False)
    method = build_method(cfg, Assets(Damsm(text, torch.nn.Identity(), None, {}, Path("."))))
    method.prepare(lambda m: m, lambda m: m, torch.device("cpu"))
    return method


# ----------------------------------------------------------------------------- the pieces

def test_sr_unet_reads_each_part_of_its_low_res_condition():
    net = JointUNet(num_classes=5, dim=8, dim_mults=(1, 2), blocks=(1, 1), attention_levels=(False, True),
                    heads=2, lowres_cond=True).eval()
    _randomise_zero_layers(net)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    y = torch.randint(0, 5, (2, 16, 16), generator=g)
    t = torch.tensor([10, 500])
    words, mask, sentence = _text(2)
    low = {"lowres_image": torch.randn(2, 3, 8, 8, generator=g),
           "lowres_layout": torch.randint(0, 5, (2, 8, 8), generator=g), "lowres_level": torch.tensor([0.2, 0.2])}
    with torch.no_grad():
        eps, logits = net(x, y, t, words, mask, sentence, **low)
        assert eps.shape == (2, 3, 16, 16) and logits.shape == (2, 5, 16, 16)
        for key, other in (("lowres_image", -low["lowres_image"]), ("lowres_layout", (low["lowres_layout"] + 1) % 5),
                           ("lowres_level", torch.tensor([0.6, 0.6]))):
            eps2, logits2 = net(x, y, t, words, mask, sentence, **{**low, key: other})
            assert (eps2 - eps).abs().max() > 1e-3 and (logits2 - logits).abs().max() > 1e-3, key
        # upsampled inside by nearest: an 8x8 condition is the 16x16 one whose 2x2 blocks repeat it
        big = {**low, "lowres_image": low["lowres_image"].repeat_interleave(2, 2).repeat_interleave(2, 3),
               "lowres_layout": low["lowres_layout"].repeat_interleave(2, 1).repeat_interleave(2, 2)}
        eps3, _ = net(x, y, t, words, mask, sentence, **big)
        assert torch.allclose(eps3, eps, atol=1e-6)
    with pytest.raises(ValueError, match="needs lowres_image and lowres_layout"):
        net(x, y, t, words, mask, sentence)
    # the base U-Net is unchanged: no low-res parameters
    assert not any("lowres" in k for k in JointUNet(num_classes=5, dim=8, dim_mults=(1, 2), blocks=(1, 1),
                                                    attention_levels=(False, True), heads=2).state_dict())


def test_noise_augmentation_and_downsampling_by_hand():
    # abar of the linear log-SNR schedule: exp(-(1e-4 + 10 l^2)); at GCDP's 0.2: exp(-0.4001)
    level = torch.tensor([0.2], dtype=torch.float64)
    assert float(lowres_alpha_bar(level)) == pytest.approx(math.exp(-0.4001), rel=1e-12)
    assert float(lowres_alpha_bar(torch.tensor([0.0]))) == pytest.approx(math.exp(-1e-4), rel=1e-12)
    n, K = 200_000, 4
    images = torch.full((1, 3, n // 100, 100), 0.5)
    layouts = torch.zeros(1, n // 100, 100, dtype=torch.long)
    out = augment_lowres(images, layouts, torch.tensor([0.2]), K, torch.Generator().manual_seed(0))
    abar = math.exp(-0.4001)
    assert float(out["lowres_image"].mean()) == pytest.approx(0.5 * math.sqrt(abar), abs=5e-3)
    assert float(out["lowres_image"].std()) == pytest.approx(math.sqrt(1 - abar), abs=5e-3)
    # a label survives with probability abar + (1 - abar) / K (uniform resampling may redraw it)
    assert float((out["lowres_layout"] == 0).float().mean()) == pytest.approx(abar + (1 - abar) / K, abs=5e-3)
    assert out["lowres_level"].dtype == torch.float32 and float(out["lowres_level"]) == pytest.approx(0.2)
    # images: the mean of each 2x2 block; layouts: the block's top-left label (nearest)
    img = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4)
    lay = torch.tensor([[[1, 2, 3, 3], [2, 2, 3, 3], [0, 0, 4, 5], [0, 0, 5, 5]]])
    low_img, low_lay = downsample_pair(img, lay, (2, 2))
    assert torch.equal(low_img[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert torch.equal(low_lay, torch.tensor([[[1, 3], [0, 4]]]))


# ----------------------------------------------------------------------- under the training loop

def test_cascade_trains_resumes_evaluates_and_loads(tiny_cfg, tiny_damsm, tmp_path, one_thread):
    """16 -> 32 on shapes: both stages trained in one run, killed after its step-2 checkpoint and
    resumed to the same weights as an uninterrupted run; evaluated on the 32 x 32 output; the
    checkpoint (weights_only) loads back into a cascade that samples at 32 x 32."""
    cfg = apply_overrides(tiny_cfg, {**CI, "diffusion.base_resolution": 16})
    assert base_image_size(cfg) == (16, 16)
    straight = run_training(cfg, LocalEnv(tmp_path / "straight"), tiny_damsm, "straight")
    with pytest.raises(Killed):
        run_training(cfg, KillAfterCheckpoint(tmp_path / "resumed"), tiny_damsm, "resumed")
    resumed = run_training(cfg, LocalEnv(tmp_path / "resumed"), tiny_damsm, "resumed")
    a = ckpt.load_state(tmp_path / "straight" / "checkpoint")  # torch.load(weights_only=True)
    b = ckpt.load_state(tmp_path / "resumed" / "checkpoint")
    assert a["step"] == b["step"] == cfg.train.steps
    assert set(a["modules"]) == {"unet", "unet_ema", "sr_unet", "sr_unet_ema"}
    assert set(a["optimizers"]) == {"unet", "sr_unet"}
    for name in a["modules"]:
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), f"{name}.{key} differs after resume"
    assert a["modules"]["sr_unet"]["init_conv.weight"].shape[1] == 3 + 3 + 3 + 3  # x_t, y_t, low image, low layout
    assert a["modules"]["unet"]["init_conv.weight"].shape[1] == 3 + 3
    assert straight["fid"] == resumed["fid"] and math.isfinite(straight["fid"])
    assert 0 <= straight["layout_miou"] <= 1 and math.isfinite(straight["fsd"])
    assert math.isfinite(straight["outpaint_layout_to_image_miou"])

    run = load_trained(tmp_path / "straight" / "checkpoint")
    assert run.method.cascade and run.step == cfg.train.steps
    for name, module in run.method.checkpointed().items():
        state = ckpt.unwrap(module).state_dict()
        assert all(torch.equal(state[k], a["modules"][name][k]) for k in state), name
    ids = torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]])
    lens = torch.tensor([3, 4])
    images, layouts = run.method.layout_sampler()(ids, lens, torch.Generator().manual_seed(0))
    again, _ = run.method.layout_sampler()(ids, lens, torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32 and torch.equal(images, again)
    assert layouts.shape == (2, 32, 32) and layouts.dtype == torch.int64
    assert 0 <= int(layouts.min()) and int(layouts.max()) < run.method.num_classes


def test_cascade_at_1_to_2_samples_pairs_and_its_sr_stage_follows_the_condition(one_thread):
    """Cityscapes' 1:2 (16 x 32 -> 32 x 64), on random batches: two training steps of both stages,
    the cascade's samples at 32 x 64, and the SR stage's output moving with its low-res input."""
    cfg = build_config("ci", {**CI, "data.dataset": "cityscapes", "data.data_root": "/d", "data.aspect": 2.0,
                              "diffusion.base_resolution": 16})
    method = _offline_method(cfg)
    K = method.num_classes
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(3, 3, 32, 64, generator=g) * 2 - 1,
             "layout": torch.randint(0, K, (3, 32, 64), generator=g),
             "caption": torch.randint(1, 30, (3, 6), generator=g), "caption_len": torch.tensor([6, 4, 2])}
    before = {k: v.clone() for k, v in method.sr_unet.state_dict().items()}
    for i in range(2):
        losses = method.step(batch, torch.Generator().manual_seed(i), lambda: torch.autocast("cpu", enabled=False))
    assert {"loss", "layout_loss", "sr_loss", "sr_image_loss", "sr_layout_loss"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in method.sr_unet.state_dict().items())

    ids, lens = batch["caption"][:2], batch["caption_len"][:2]
    images, layouts = method.layout_sampler()(ids, lens, torch.Generator().manual_seed(1))
    assert images.shape == (2, 3, 32, 64) and layouts.shape == (2, 32, 64) and layouts.dtype == torch.int64
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    out, lay = method.outpaint(ids, lens, torch.Generator().manual_seed(2), known_layouts=layouts)
    assert torch.equal(lay, layouts) and out.shape == (2, 3, 32, 64)

    # fixed noise (same generator seed): the SR sample is a function of its low-res condition, and
    # changing the image or only the layout of the condition changes it (random weights in the
    # zero-initialised layers, so that every input reaches the output)
    _randomise_zero_layers(method.sr_ema)
    text = method._text(ids, lens)
    low_img, low_lay = downsample_pair(batch["image"][:2], batch["layout"][:2], (16, 32))

    def sr(image, layout):
        return method.super_resolve(image, layout, text, torch.Generator().manual_seed(3))

    a, ya = sr(low_img, low_lay)
    a2, ya2 = sr(low_img, low_lay)
    assert a.shape == (2, 3, 32, 64) and ya.shape == (2, 32, 64)
    assert torch.equal(a, a2) and torch.equal(ya, ya2)
    for image, layout in ((-low_img, low_lay), (low_img, (low_lay + 1) % K)):
        b, _ = sr(image, layout)
        assert (a != b).float().mean() > 0.5


# ------------------------------------------------------------------------------ config, dry run

@pytest.mark.parametrize("over,says", [
    ({"diffusion.base_resolution": 32}, r"^diffusion.base_resolution: the base stage's short side must be a power "
                                        r"of two >= 8 below data.resolution=32 .*got 32"),
    ({"diffusion.base_resolution": 12}, r"^diffusion.base_resolution: .*power of two"),
    ({"diffusion.base_resolution": 16, "model.method": "gan"},
     r"^diffusion.base_resolution: the super-resolution cascade belongs to model.method=diffusion"),
    ({"diffusion.base_resolution": 8, "diffusion.dim_mults": "1,2,4,8,16", "diffusion.blocks": "1,1,1,1,1",
      "diffusion.attention_levels": "0,0,0,0,1"},
     r"^diffusion.dim_mults: 5 levels halve the image 4 times: the image size 8x8 \(the base stage"),
    ({"diffusion.base_resolution": 16, "diffusion.sr_dim_mults": "1,2,4"},
     r"^diffusion.sr_blocks: needs one count >= 1 per level \(3 levels in diffusion.sr_dim_mults\)"),
    ({"diffusion.base_resolution": 16, "diffusion.sr_dim": 12}, r"^diffusion.sr_dim: must be a multiple of 8"),
    ({"diffusion.sr_noise_level": 1.0}, r"^diffusion.sr_noise_level: must be in \[0, 1\)"),
    ({"diffusion.sr_dim": 16}, r"^diffusion.sr_dim: sizes the super-resolution stage, which a one-stage run"),
    ({"data.dataset": "cityscapes", "data.data_root": "/d", "data.aspect": 1.0625, "diffusion.base_resolution": 8},
     r"^diffusion.base_resolution: diffusion.base_resolution x data.aspect must be a whole number of pixels"),
])
def test_bad_cascade_settings_are_refused_naming_the_field(over, says):
    with pytest.raises(ConfigError, match=says):
        build_config("ci", {**CI, **over})


def test_paper_preset_dry_run_on_shapes_lists_the_sr_stage(tmp_path, capsys):
    ablate_diffusion.main(["--preset", "paper", "--dry-run", "--seeds", "0", "--output-dir", str(tmp_path)])
    text = capsys.readouterr().out
    assert "256x256 from a 128x128 base stage" in text and "diffusion.base_resolution=128" in text
    assert ("super-resolution stage (GCDP's cascade, diffusion.base_resolution): base U-Net at 128x128, SR U-Net "
            "(dim 128, mults 1,2,3,4) to 256x256, both trained in each trial; metrics on the 256x256 output") in text
    local = ablate_diffusion.PRESET_DEFAULTS["local"]
    assert "diffusion.base_resolution" not in local  # the local preset keeps one stage (the default 0)
