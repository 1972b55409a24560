"""HRNetV2 segmenter (t2i_ray/eval/hrnet.py): the official checkpoint's names and shapes, loading a
local file through the real path (prefixes, loss keys, refusals), and its layout metrics."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from t2i_ray.config import ConfigError, build_config, resolved_segmenter
from t2i_ray.eval import hrnet as H
from t2i_ray.eval.layout import image_layout_alignment, layout_agreement, segment
from t2i_ray.weights import file_sha256

# A reduced HRNetV2 for speed: the same HRNetV2 class that builds W48, smaller sizes.
SMALL = H.HRNetArch(stem_width=16, layer1_planes=8, layer1_blocks=1, widths=(8, 16, 32, 64),
                    stage_modules=(1, 1, 1), stage_blocks=(1, 1, 1))


def write_hrnet_file(path, arch: H.HRNetArch = SMALL) -> str:
    """A checkpoint file in the official layout ("model." keys, loss weights) with random weights of
    `arch`: what the tests of other files point eval.segmenter_weights / $T2I_SEGMENTER_WEIGHTS at."""
    torch.save(H.random_hrnet_state_dict(arch), path)
    return str(path)

# Hand-listed keys and shapes of the official Cityscapes HRNetV2-W48: github.com/HRNet/HRNet-Semantic-Segmentation
# lib/models/seg_hrnet.py built with
# experiments/cityscapes/seg_hrnet_w48_train_512x1024_sgd_lr1e-2_wd5e-4_bs_12_epoch484.yaml.
OFFICIAL_W48 = {
    "conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.downsample.1.running_mean": (256,),
    "layer1.3.conv2.weight": (64, 64, 3, 3), "layer1.3.bn3.bias": (256,),
    "transition1.0.0.weight": (48, 256, 3, 3), "transition1.0.1.weight": (48,),
    "transition1.1.0.0.weight": (96, 256, 3, 3), "transition2.2.0.0.weight": (192, 96, 3, 3),
    "transition3.3.0.0.weight": (384, 192, 3, 3),
    "stage2.0.branches.0.0.conv1.weight": (48, 48, 3, 3), "stage2.0.branches.1.3.conv2.weight": (96, 96, 3, 3),
    "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1), "stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
    "stage3.3.branches.2.3.bn2.running_var": (192,), "stage3.3.fuse_layers.0.2.0.weight": (48, 192, 1, 1),
    "stage3.0.fuse_layers.2.0.0.0.weight": (48, 48, 3, 3), "stage3.0.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),
    "stage4.2.branches.3.3.conv2.weight": (384, 384, 3, 3), "stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
    "stage4.2.fuse_layers.0.3.1.running_mean": (48,), "stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
    "stage4.2.fuse_layers.3.2.0.0.weight": (384, 192, 3, 3), "stage4.2.fuse_layers.2.1.0.1.weight": (192,),
    "last_layer.0.weight": (720, 720, 1, 1), "last_layer.0.bias": (720,), "last_layer.1.running_var": (720,),
    "last_layer.3.weight": (19, 720, 1, 1), "last_layer.3.bias": (19,),
}
NOT_IN_OFFICIAL = ("transition2.0.0.weight", "transition2.1.0.weight", "stage2.0.fuse_layers.0.0.0.weight",
                   "stage4.3.branches.0.0.conv1.weight", "stage3.0.branches.0.4.conv1.weight",
                   "layer1.1.downsample.0.weight")


def test_w48_has_the_official_checkpoint_names_and_shapes():
    with torch.device("meta"):  # shapes only
        net = H.HRNetV2(H.HRNET_W48)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: shapes.get(k) for k in OFFICIAL_W48} == OFFICIAL_W48
    assert not set(NOT_IN_OFFICIAL) & set(shapes)
    # 1839 entries and 65.86M parameters, as the official class builds them (README: 65.8M)
    assert len(shapes) == 1839
    assert sum(p.numel() for p in net.parameters()) == 65_859_379
    assert H.HRNetArch.of(net.state_dict()) == H.HRNET_W48 and H.HRNET_W48.name == "HRNetV2-W48"


def test_forward_shape_and_sizes_read_from_the_state_dict(one_thread):
    net = H.HRNetV2(SMALL).eval()
    assert H.HRNetArch.of(net.state_dict()) == SMALL and SMALL.name.startswith("HRNetV2-W8(")
    with torch.no_grad():
        out = net(torch.randn(2, 3, 36, 70))  # odd sizes on the way down (9x18 -> 5x9 -> 3x5 -> 2x3)
    assert out.shape == (2, 19, 9, 18)


def _save(tmp_path, state, name="hrnet.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def test_loads_a_local_file_with_the_checkpoint_prefixes(tmp_path, one_thread):
    """FullModel's "model." prefix and "loss.*" keys, DataParallel's "module.", or none: one network."""
    official = H.random_hrnet_state_dict(SMALL, seed=3)  # "model.*" + "loss.criterion.weight"
    assert "model.last_layer.3.weight" in official and "loss.criterion.weight" in official
    path = _save(tmp_path, official)
    seg = H.load_hrnet(path, (64, 128))
    assert seg.info["backbone"] == SMALL.name + "-cityscapes19" and seg.info["dropped_keys"] == 1
    assert seg.info["weights_sha256"] == file_sha256(path) and seg.info["input_size"] == "64x128"
    loaded = seg.net.state_dict()
    for key, value in official.items():
        if key.startswith("model."):
            assert torch.equal(loaded[key[len("model."):]], value), key
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    ref = seg(x)
    for variant in ({k[len("model."):]: v for k, v in official.items() if k.startswith("model.")},
                    {"module." + k: v for k, v in official.items()},
                    {"state_dict": official}):
        other = H.load_hrnet(_save(tmp_path, variant, "v.pth"), (64, 128))
        assert torch.equal(other(x), ref)
    # logits at the layout's size, class 19 (unlabeled) never the argmax
    assert ref.shape == (2, 20, 32, 64) and torch.isneginf(ref[:, 19]).all()
    assert H.load_hrnet(path, None).info["input_size"] == "native"


def test_refuses_missing_and_foreign_files(tmp_path, monkeypatch):
    monkeypatch.delenv(H.WEIGHTS_ENV, raising=False)
    cfg = build_config("smoke", {"model.method": "diffusion", "data.dataset": "cityscapes", "data.data_root": "/d"})
    with pytest.raises(H.HRNetWeightsError) as err:
        H.resolve_segmenter_weights(cfg)
    for part in ("eval.segmenter_weights", "$T2I_SEGMENTER_WEIGHTS", "HRNet/HRNet-Semantic-Segmentation",
                 H.CHECKPOINT_FILE, "eval.segmenter=off"):
        assert part in str(err.value), part
    monkeypatch.setenv(H.WEIGHTS_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(H.HRNetWeightsError, match=r"no file at '.*nope\.pth'"):
        H.resolve_segmenter_weights(cfg)
    good = H.random_hrnet_state_dict(SMALL, prefix="")
    cases = [
        ({k: v for k, v in good.items() if k != "last_layer.3.weight"}, r"no key 'last_layer\.3\.weight'"),
        ({**good, "stage2.0.extra.weight": torch.zeros(1)}, r"1 unexpected key\(s\): stage2\.0\.extra\.weight"),
        ({k: v for k, v in good.items() if k != "stage3.0.fuse_layers.0.1.0.weight"},
         r"1 missing key\(s\): stage3\.0\.fuse_layers\.0\.1\.0\.weight"),
        ({**good, "stage2.0.fuse_layers.0.1.0.weight": torch.zeros(8, 16, 3, 3)}, r"mis-shaped: stage2\.0\.fuse_"),
        ({**good, "cls_head.weight": torch.zeros(1)}, r"HRNet\+OCR checkpoint"),
        ({**good, "last_layer.3.weight": torch.zeros(59, 120, 1, 1)}, r"predicts 59 classes"),
        ({"w": torch.zeros(1)}, r"not an HRNetV2 segmentation state dict"),
    ]
    for state, message in cases:
        with pytest.raises(H.HRNetWeightsError, match=message):
            H.load_hrnet(_save(tmp_path, state, "bad.pth"))
    (tmp_path / "text.pth").write_text("not torch")
    with pytest.raises(H.HRNetWeightsError, match=r"eval\.segmenter_weights: .*text\.pth cannot be read"):
        H.load_hrnet(str(tmp_path / "text.pth"))


def test_config_fields_and_resolution():
    def cfg(**over):
        return build_config("smoke", {"model.method": "diffusion", **over})

    assert resolved_segmenter(cfg()) == "trained"  # shapes
    cs = {"data.dataset": "cityscapes", "data.data_root": "/d"}
    assert resolved_segmenter(cfg(**cs)) == "hrnet"
    assert resolved_segmenter(cfg(**cs, **{"eval.segmenter": "off"})) == "off"
    assert resolved_segmenter(build_config("smoke", {})) == "off"  # GANs score no layouts
    for over, message in (({"eval.segmenter": "hrnet"}, "serves data.dataset=cityscapes only"),
                          ({**cs, "eval.segmenter": "trained"}, "data.dataset=shapes only"),
                          ({"eval.segmenter": "deeplab"}, "must be one of auto, trained, hrnet, off"),
                          ({"eval.segmenter_input": "1024*2048"}, "eval.segmenter_input: must be 'HEIGHTxWIDTH'")):
        with pytest.raises(ConfigError, match=message):
            cfg(**over)
    assert cfg(**{"eval.segmenter_input": "512x1024"}).eval.segmenter_input == "512x1024"


def test_segments_a_batch_into_layout_metrics(tmp_path, one_thread):
    """Through the loaded file: argmax at the layout size, mIoU without the unlabeled pixels."""
    seg = H.load_hrnet(_save(tmp_path, H.random_hrnet_state_dict(SMALL, seed=1)), (64, 128))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 16, 32, generator=gen) * 2 - 1
    pred = segment(seg, [images[:3], images[3:]])
    assert pred.shape == (5, 16, 32) and pred.max() < 19
    layouts = torch.from_numpy(pred.astype(np.int64))
    layouts[:, :4] = 19  # unlabeled rows: left out, however predicted
    layouts[0, 8:, :] = (layouts[0, 8:, :] + 1) % 19  # half of image 0 disagrees
    got = image_layout_alignment(seg, images, layouts, batch_size=2, ignore_index=19)
    scored = layouts != 19
    assert got["pixel_accuracy"] == pytest.approx(float((torch.from_numpy(pred.astype(np.int64)) == layouts)[scored]
                                                        .float().mean()))
    # by hand: per-class IoU over the scored pixels, classes 0..18 present in either
    p, t = pred[scored.numpy()].astype(np.int64), layouts[scored].numpy()
    ious = [((p == k) & (t == k)).sum() / ((p == k) | (t == k)).sum() for k in range(19) if ((p == k) | (t == k)).any()]
    assert got["miou"] == pytest.approx(float(np.mean(ious)))
    assert layout_agreement(pred, layouts.numpy(), 20)["miou"] < got["miou"]  # class 19 counted: IoU 0 drags it


def test_cityscapes_diffusion_refuses_before_any_work_without_hrnet(tmp_path, capsys, monkeypatch):
    """sweeps/ablate_diffusion.py --dataset cityscapes (auto: HRNet) exits 2 naming the field, the
    variable and where to get the checkpoint; a file that is not an HRNetV2 state dict likewise."""
    import sys
    from pathlib import Path

    from tests.test_datasets import write_cityscapes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sweeps"))
    import ablate_diffusion

    write_cityscapes(tmp_path / "cityscapes")
    inception = _save(tmp_path, {"w": torch.zeros(1)}, "inception.pth")
    monkeypatch.setenv("T2I_INCEPTION_WEIGHTS", inception)
    monkeypatch.delenv(H.WEIGHTS_ENV, raising=False)
    argv = ["--dataset", "cityscapes", "--data-root", str(tmp_path / "cityscapes"), "--preset", "paper", "--dry-run",
            "--output-dir", str(tmp_path / "out"), "--set", "train.batch_size=3", "--set", "damsm.batch_size=3"]
    with pytest.raises(SystemExit) as code:
        ablate_diffusion.main(argv)
    assert code.value.code == 2
    assert f"error: {H.missing_weights_message(None)}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as code:
        ablate_diffusion.main(argv + ["--set", f"eval.segmenter_weights={inception}"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert f"error: eval.segmenter_weights: {inception} is not an HRNetV2 segmentation state dict" in err
    assert H.CHECKPOINT_FILE in err
    ablate_diffusion.main(argv + ["--set", "eval.segmenter=off"])  # the switch that skips the metrics
    assert "layout mIoU / semantic recall on cityscapes: off (eval.segmenter=off" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_caption_class_search_and_recall_without_unlabeled():
    from t2i_ray.eval.layout import cityscapes_named_classes, semantic_scores

    text = "An image of an urban scene with road, Sidewalk, traffic light, cars, two buses and people."
    assert cityscapes_named_classes(text) == [0, 1, 6, 11, 13, 15]
    # whole words only: no "rain" in terrain, no "wall" in sidewalks, no "car" in "cart"
    assert cityscapes_named_classes("a cart on the sidewalks beside terrain and a train") == [1, 9, 16]
    layouts = np.full((2, 4, 4), 19)
    layouts[0, 0] = 0  # road found (4 pixels) in image 0
    layouts[1, :2] = 13  # car in image 1
    # unlabeled covers most pixels but is never "found"; road counts (class 0 is not background here)
    assert semantic_scores(layouts, [[0, 13], [13]], min_pixels=2, exclude=(19,)) == (pytest.approx(2 / 3), 1.0)


def test_sweep_refuses_before_work_and_pins_the_file(tmp_path, monkeypatch):
    from t2i_ray.config import apply_overrides
    from t2i_ray.eval.evaluate import eval_asset_overrides
    from t2i_ray.sweep import run as run_mod
    from t2i_ray.sweep.run import SweepSpec

    monkeypatch.delenv(H.WEIGHTS_ENV, raising=False)
    inception = _save(tmp_path, {"w": torch.zeros(1)}, "inception.pth")
    cfg = build_config("smoke", {"model.method": "diffusion", "data.dataset": "cityscapes",
                                 "data.data_root": str(tmp_path), "output_dir": str(tmp_path / "out"),
                                 "eval.inception_weights": inception})

    def no_training(*a, **k):
        raise AssertionError("work started before the HRNet file was checked")

    monkeypatch.setattr("t2i_ray.data.registry.prepare_data", no_training)
    monkeypatch.setattr("t2i_ray.train.damsm.ensure_damsm", no_training)
    with pytest.raises(H.HRNetWeightsError, match="eval.segmenter_weights: the Cityscapes layout metrics"):
        run_mod.prepare_assets(cfg, log=lambda s: None)  # the sweep's first step
    weights = _save(tmp_path, H.random_hrnet_state_dict(SMALL))
    monkeypatch.setenv(H.WEIGHTS_ENV, weights)
    assert eval_asset_overrides(cfg)["eval.segmenter_weights"] == weights  # reaches Ray workers in the config
    pinned = apply_overrides(cfg, {"eval.segmenter_weights": weights})
    moved = apply_overrides(cfg, {"eval.segmenter_weights": "/elsewhere/hrnet.pth"})
    assert SweepSpec("s", pinned, "grid").name == SweepSpec("s", moved, "grid").name  # a moved file resumes
    assert "eval.segmenter_weights" not in eval_asset_overrides(apply_overrides(cfg, {"eval.segmenter": "off"}))
