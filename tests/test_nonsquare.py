"""Non-square images (data.aspect) and the real datasets as GCDP uses them (arXiv:2308.08157):
Cityscapes at 1:2 on train + val, MM CelebA-HQ's caption subsets; the diffusion, its sample grids and
its metrics at a non-square size; the paper-preset dry run per dataset. Fixtures: the writers of
tests/test_datasets.py (Cityscapes frames there are 20 x 40, the paper's 1:2)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2i_ray.config import ConfigError, DataConfig, build_config, image_size
from t2i_ray.data import cache as C
from t2i_ray.data import registry as R
from t2i_ray.data.celeba import caption_subset
from t2i_ray.data.cityscapes import label_ids_to_train_ids
from t2i_ray.data.reading import read_index_png

from tests.test_datasets import write_celeba, write_cityscapes
from tests.test_hrnet import SMALL, write_hrnet_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sweeps"))
import ablate_diffusion  # noqa: E402  (sweeps/ is not a package)

sys.path.remove(str(REPO / "sweeps"))


def _source(dataset: str, root: Path, split: str, cache: Path, log=lambda s: None, **kw):
    return R.build_source(DataConfig(dataset=dataset, data_root=str(root), **kw), split, cache, log=log)


def _diffusion(**over):
    return build_config("smoke", {"model.method": "diffusion", "data.dataset": "cityscapes", "data.data_root": "/d",
                                  **over})


# ------------------------------------------------------------------------------------ config


def test_image_size_is_short_side_by_aspect():
    assert image_size(DataConfig()) == (32, 32)
    assert image_size(DataConfig(dataset="cityscapes", resolution=128, aspect=2.0)) == (128, 256)
    assert image_size(DataConfig(dataset="cityscapes", resolution=256, aspect=2.0)) == (256, 512)  # GCDP's SR size
    assert image_size(DataConfig(dataset="mmceleba", resolution=64, aspect=0.5)) == (128, 64)  # portrait


@pytest.mark.parametrize("over,field,says", [
    ({"data.dataset": "shapes", "data.data_root": None, "data.aspect": 2.0}, "data.aspect", "shapes renders squares"),
    ({"model.method": "gan", "data.aspect": 2.0}, "data.aspect", "the GANs are square"),
    ({"data.aspect": 1.3}, "data.aspect", "whole number of pixels"),
    ({"data.aspect": 8.0}, "data.aspect", "0.25..4"),
    ({"data.aspect": 1.5, "diffusion.dim_mults": "1,1,1,1,1,1", "diffusion.blocks": "1,1,1,1,1,1",
      "diffusion.attention_levels": "0,0,0,0,0,0"}, "diffusion.dim_mults", "32x48"),
    ({"data.trainval": True, "data.dataset": "mmceleba"}, "data.trainval", "cityscapes option"),
    ({"data.caption_subset": 30, "data.dataset": "mmceleba"}, "data.caption_subset", "25, 50, 100"),
    ({"data.caption_subset": 25}, "data.caption_subset", "MM CelebA-HQ"),
])
def test_bad_aspect_and_subset_settings_name_their_field(over, field, says):
    with pytest.raises(ConfigError) as err:
        _diffusion(**over)
    assert str(err.value).startswith(field) and says in str(err.value)


def test_cache_keys_of_earlier_configs_do_not_change():
    """The new data fields at their defaults leave the DAMSM / captioner keys as main computed them
    before those fields existed (values from commit 22bb484); set, they change them."""
    from t2i_ray.train.captioner import captioner_key
    from t2i_ray.train.damsm import damsm_key

    local, celeba = build_config("local"), build_config("smoke", {"data.dataset": "mmceleba", "data.data_root": "/d"})
    assert (damsm_key(local), captioner_key(local)) == ("992a1bad6a63", "6db6f2029bb4")
    assert (damsm_key(celeba), captioner_key(celeba)) == ("81b67d08d61f", "f197b46d8f71")
    subset = build_config("smoke", {"data.dataset": "mmceleba", "data.data_root": "/d", "data.caption_subset": 25})
    assert damsm_key(subset) != damsm_key(celeba)


# ------------------------------------------------------------------------------------- data


def test_cityscapes_at_1_to_2_on_train_plus_val(tmp_path):
    root = tmp_path / "cityscapes"
    write_cityscapes(root)  # train: aachen x 2, val: lindau x 1, frames 20 x 40
    logs: list[str] = []
    train = _source("cityscapes", root, "train", tmp_path / "c", logs.append, aspect=2.0, trainval=True)
    assert train.size == (32, 64) and train.images().shape == (3, 32, 64, 3) and train.layouts().shape == (3, 32, 64)
    assert [train.meta(i)["folder"] for i in range(3)] == ["train", "train", "val"]
    assert any("cityscapes/train: 3 images = 2 from leftImg8bit/train + 1 from leftImg8bit/val" in s for s in logs)
    assert train.folder.name.startswith("cityscapes-train+val-32x64px-")
    manifest = json.loads((train.folder / "manifest.json").read_text())
    assert (manifest["resolution"], manifest["width"], manifest["split"]) == (32, 64, "train+val")
    # the whole frame, undistorted: layouts are the nearest x1.6 resize of the 20 x 40 trainIds, the
    # image PIL's bicubic resize of the whole frame (no crop)
    src = root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png"
    want = np.asarray(Image.fromarray(label_ids_to_train_ids(read_index_png(src))).resize((64, 32), Image.NEAREST))
    assert np.array_equal(train.layout(2), want) and set(np.unique(want)) == {0, 2, 10, 13, 19}
    frame = Image.open(root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    assert np.array_equal(train.image(2), np.asarray(frame.convert("RGB").resize((64, 32), Image.BICUBIC)))
    # the test split is val alone; the square cache of the same data is another folder, both reused
    test = _source("cityscapes", root, "test", tmp_path / "c", aspect=2.0, trainval=True)
    assert len(test) == 1 and test.folder.name.startswith("cityscapes-test-32x64px-")
    square = _source("cityscapes", root, "train", tmp_path / "c")
    assert len(square) == 2 and square.size == (32, 32) and square.folder.name.startswith("cityscapes-train-32px-")
    assert "width" not in json.loads((square.folder / "manifest.json").read_text())  # square manifests as before
    logs.clear()
    again = _source("cityscapes", root, "train", tmp_path / "c", logs.append, aspect=2.0, trainval=True)
    assert again.folder == train.folder and not any("decoding" in s for s in logs)  # reused, not rebuilt
    # a cache whose arrays are square no longer validates as the 32 x 64 one
    np.save(train.folder / "images.npy", np.zeros((3, 32, 32, 3), np.uint8))
    assert "expected (3, 32, 64, 3)" in C.open_prebuilt(R.READERS["cityscapes"], root, "train+val", (32, 64),
                                                        tmp_path / "c")


def test_mmceleba_caption_subsets_are_nested_and_reproducible(tmp_path):
    root = tmp_path / "celeba"
    write_celeba(root, n=9)  # train: keys 0..7, test: 8
    keys = [str(k) for k in range(8)]
    by_hash = sorted(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
    got = {p: _source("mmceleba", root, "train", tmp_path / "c", caption_subset=p).keys for p in (25, 50, 100)}
    assert sorted(got[25]) == sorted(by_hash[:2]) and sorted(got[50]) == sorted(by_hash[:4]) and got[100] == keys
    assert set(got[25]) < set(got[50]) < set(got[100])
    assert caption_subset(list(reversed(keys)), 25) == [k for k in reversed(keys) if k in got[25]]  # order-free
    assert len(_source("mmceleba", root, "test", tmp_path / "c", caption_subset=25)) == 1  # test never subsampled
    # the largest centred crop of the aspect: a 1:2 box of the 40 x 40 face is its middle 20 rows
    wide = _source("mmceleba", root, "train", tmp_path / "c", aspect=2.0)
    assert wide.size == (32, 64)
    mask = read_index_png(root / "CelebAMask-HQ-mask-anno" / "preprocessed" / "1.png")  # 20 x 20
    want = np.asarray(Image.fromarray(mask[5:15]).resize((64, 32), Image.NEAREST))
    assert np.array_equal(wide.layout(1), want)


# ------------------------------------------------------------------ grids and metrics at H != W


def test_grids_and_layout_metrics_keep_height_and_width():
    from t2i_ray.eval.layout import class_shares, fsd, layout_agreement, semantic_scores
    from t2i_ray.eval.samples import caption_grid, colorize, tile

    layouts = np.zeros((2, 16, 32), np.int64)
    layouts[:, :, 16:] = 1  # right half class 1
    assert tile(colorize(layouts, 3), 2).shape == (16, 64, 3)
    pred = layouts.copy()
    pred[1, :8, 16:] = 2  # a quarter of image 1 wrong
    agreement = layout_agreement(pred, layouts, 3)
    assert agreement["pixel_accuracy"] == pytest.approx(1 - 128 / 1024)
    # IoU: class 0 512/512, class 1 384/512, class 2 0/128 -> mean 7/12 (classes present in either)
    assert agreement["miou"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert class_shares(layouts, 3).tolist() == [[0.5, 0.5, 0.0]] * 2
    assert fsd(layouts, layouts, 3) == pytest.approx(0.0, abs=1e-6)
    # micro averages: named (1,2) + (2), found {1} + {1,2}: 2 of 3 named found, 2 of 3 found named
    assert semantic_scores(pred, [[1, 2], [2]], min_pixels=1) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    images = np.zeros((1, 2, 16, 32, 3), np.uint8)
    grid = caption_grid(images, colorize(layouts, 3)[None], ["a street"], "t", cell=64, label_width=100)
    assert grid.shape[1] == 100 + 2 * 2 * (128 + 6) + 6  # cells 64 high and 128 wide: the 1:2 kept


# --------------------------------------------------------------- the diffusion at 32 x 64, end to end


def test_diffusion_trains_samples_and_evaluates_on_cityscapes_at_1_to_2(tmp_path, one_thread):
    """The main job's loop in-process on a Cityscapes tree at 32 x 64 (train + val): cache, DAMSM,
    diffusion steps, sampling, the Inception metrics (random weights of the right shapes), FSD and
    outpainting, the HRNet layout metrics (a reduced HRNetV2 of random weights, saved as the official
    checkpoints are), the sample grids at 1:2."""
    from t2i_ray.eval.inception import random_inception_state_dict
    from t2i_ray.weights import file_sha256
    from t2i_ray.train.damsm import ensure_damsm
    from t2i_ray.train.loop import LocalEnv, run_training

    root = tmp_path / "cityscapes"
    write_cityscapes(root, n_val=2)  # train + val: 4 images, test: 2
    weights = tmp_path / "inception.pth"
    torch.save(random_inception_state_dict(seed=0), weights)
    hrnet = write_hrnet_file(tmp_path / "hrnet.pth")
    paper_data = ablate_diffusion.DATASET_DEFAULTS["cityscapes"]  # 1:2, train + val
    cfg = build_config("ci", {**ablate_diffusion.PRESET_DEFAULTS["ci"], **paper_data, "model.method": "diffusion",
                              "data.dataset": "cityscapes", "data.data_root": str(root),
                              "output_dir": str(tmp_path / "out"), "train.batch_size": 2, "train.steps": 2,
                              "train.report_every": 1, "train.checkpoint_every": 2, "damsm.batch_size": 2,
                              "eval.inception_weights": str(weights), "eval.num_images": 4, "eval.batch_size": 4,
                              "eval.r_precision_candidates": 2, "eval.r_precision_folds": 1, "eval.kid_subsets": 2,
                              "eval.kid_subset_size": 2, "eval.is_splits": 2, "diffusion.outpaint_images": 1,
                              "eval.segmenter_weights": str(hrnet), "eval.segmenter_input": "64x128"})
    assert image_size(cfg.data) == (32, 64) and cfg.data.trainval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        damsm_path = str(ensure_damsm(cfg, log=lambda s: None))
        final = run_training(cfg, LocalEnv(tmp_path / "run"), damsm_path, "cs")
    assert final["step"] == 2 and final["finished"] == 1
    assert final["fid_real_set"] == "cityscapes/test" and final["fid_num_fake"] == 4
    for key in ("fid", "kid", "fsd", "outpaint_image_to_layout_miou"):
        assert math.isfinite(final[key]), key
    for key in ("layout_miou", "outpaint_layout_to_image_miou", "semantic_recall", "semantic_precision",
                "segmenter_heldout_miou", "segmenter_heldout_semantic_recall"):
        assert 0 <= final[key] <= 1, key
    assert math.isfinite(final["fsd_segmenter"]) and final["fsd_segmenter_num_real"] == 2
    assert final["layout_backbone"] == SMALL.name + "-cityscapes19" and final["layout_input_size"] == "64x128"
    assert final["layout_weights_sha256"] == file_sha256(str(hrnet))
    assert final["layout_miou_ignored_class"] == "unlabeled (19)" and final["layout_num_images"] == 4
    assert final["semantic_recall_num_images"] == 4 and final["semantic_recall_min_pixels"] == 3  # 0.1% of 32x64
    grid = np.asarray(Image.open(final["samples_path"]))
    assert grid.shape == (2 * 32, 2 * 64, 3)  # two test images: a real row and a sample row, 32 x 64 each
    assert np.asarray(Image.open(final["layout_samples_path"])).shape == (4 * 32, 2 * 64, 3)
    assert np.asarray(Image.open(final["outpaint_samples_path"])).shape == (4 * 32, 2 * 64, 3)


# ------------------------------------------------------------------------- paper-preset dry runs


def test_paper_dry_run_lists_trials_and_networks_per_dataset(tmp_path, capsys):
    """The script as a user runs it (subprocess) on Cityscapes; in-process on MM CelebA-HQ."""
    weights = tmp_path / "inception.pth"  # only named and opened by a dry run, never run
    torch.save({"w": torch.zeros(1)}, weights)
    write_cityscapes(tmp_path / "cityscapes")
    write_celeba(tmp_path / "celeba")
    hrnet = write_hrnet_file(tmp_path / "hrnet.pth")  # checked for HRNetV2 keys and shapes by the dry run
    env = {**os.environ, "PYTHONPATH": str(REPO), "T2I_INCEPTION_WEIGHTS": str(weights),
           "T2I_SEGMENTER_WEIGHTS": str(hrnet)}
    out = subprocess.run([sys.executable, str(REPO / "sweeps" / "ablate_diffusion.py"), "--dataset", "cityscapes",
                          "--data-root", str(tmp_path / "cityscapes"), "--preset", "paper", "--dry-run",
                          "--output-dir", str(tmp_path / "out"), "--set", "train.batch_size=3",
                          "--set", "damsm.batch_size=3"],  # the fixture's train + val: 3 images
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "256x512 (height x width) from a 128x256 base stage" in text and "data.aspect=2.0" in text
    assert "data.trainval=True" in text and "diffusion.base_resolution=128" in text
    trials = [line.split() for line in text.splitlines() if " seed " in line and "{" in line]
    assert sorted((t[0], t[2]) for t in trials) == sorted((r, s) for r in ("joint", "image-only") for s in "012")
    assert f"Inception (pt_inception-2015-12-05) from the local file {weights}" in text
    assert f"semantic recall / segmenter FSD on cityscapes: HRNetV2 (GCDP's HRNet-W48) from the local file {hrnet}, " \
           f"input 1024x2048" in text
    assert "CLIP score: off -- no CLIP weights configured (GCDP uses CLIP ViT-L/14@336px" in text
    assert "base U-Net at 128x256, SR U-Net (dim 128, mults 1,2,3,4) to 256x512" in text
    assert "DAMSM text + image encoders" in text
    os.environ["T2I_INCEPTION_WEIGHTS"] = str(weights)
    try:
        ablate_diffusion.main(["--dataset", "mmceleba", "--data-root", str(tmp_path / "celeba"), "--preset", "paper",
                               "--dry-run", "--output-dir", str(tmp_path / "out"), "--set", "train.batch_size=2",
                               "--set", "damsm.batch_size=2", "--set", "data.caption_subset=50"])
    finally:
        del os.environ["T2I_INCEPTION_WEIGHTS"]
    text = capsys.readouterr().out
    assert "256x256 from a 128x128 base stage, " in text and "data.caption_subset=50" in text
    assert "a face parser from a local weights file -- not built yet" in text
    assert len([line for line in text.splitlines() if " seed " in line and "{" in line]) == 6
