"""Layout metrics (eval/layout.py): hand computations, FSD properties, the cached segmenter."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from t2i_ray.config import ConfigError, DataConfig
from t2i_ray.data import shapes
from t2i_ray.eval import layout as lm


@pytest.fixture(autouse=True)
def one_torch_thread():
    # On a shared 2-core machine two OpenMP threads wait on each other at every op: a 3-step
    # training took 5 s on 2 threads under a load of 2.5, 0.1 s on 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# ---------------------------------------------------------------------------- mIoU


def test_confusion_matrix_and_miou_by_hand_with_an_absent_class():
    # K = 4; class 3 occurs in neither layout and must not enter the mean.
    target = np.array([[[0, 0, 1],
                        [1, 2, 2]]])
    pred = np.array([[[0, 1, 1],
                      [1, 2, 0]]])
    c = lm.confusion_matrix(pred, target, 4)
    assert c.dtype == np.int64 and c.shape == (4, 4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1] = 1, 1  # target 0: one right, one labelled 1
    expected[1, 1] = 2
    expected[2, 2], expected[2, 0] = 1, 1  # target 2: one right, one labelled 0
    np.testing.assert_array_equal(c, expected)
    # IoU_0 = 1 / (2 + 2 - 1), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 1 / (2 + 1 - 1), class 3: NaN
    iou = lm.class_iou(c)
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert np.isnan(iou[3])
    assert lm.mean_iou(c) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    # Accumulated over a set, symmetric in pred and target, torch input alike.
    agreement = lm.layout_agreement(torch.from_numpy(pred), torch.from_numpy(target), 4)
    assert agreement == {"miou": pytest.approx(0.5), "pixel_accuracy": pytest.approx(4 / 6), "n": 1}
    assert lm.layout_agreement(target, pred, 4)["miou"] == pytest.approx(agreement["miou"])
    twice = lm.layout_agreement(np.concatenate([pred, target]), np.concatenate([target, pred]), 4)
    assert twice["n"] == 2 and twice["pixel_accuracy"] == pytest.approx(4 / 6)


def test_confusion_matrix_refuses_bad_labels():
    good = np.zeros((1, 2, 2), np.int64)
    with pytest.raises(ValueError, match=r"outside \[0, 3\); pass num_classes"):
        lm.confusion_matrix(good + 3, good, 3)
    with pytest.raises(TypeError, match="take the argmax"):
        lm.confusion_matrix(good.astype(np.float32), good, 3)
    with pytest.raises(ValueError, match="one shape"):
        lm.confusion_matrix(good, good[:, :1], 3)
    with pytest.raises(ValueError, match="empty"):
        lm.mean_iou(np.zeros((3, 3)))


# ---------------------------------------------------------------------------- FSD


def test_fsd_zero_for_identical_sets_positive_when_shifted_and_symmetric():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 6, size=(64, 8, 8))
    shares = lm.class_shares(real)
    assert shares.shape == (64, 6) and np.allclose(shares.sum(axis=1), 1.0)
    assert lm.fsd(real, real.copy()) == pytest.approx(0.0, abs=1e-8)
    # More background in every fake layout: the mean share vector moves.
    fake = np.where(rng.random(real.shape) < 0.5, 0, real)
    d = lm.fsd(real, fake)
    assert d > 1.0
    assert lm.fsd(fake, real) == pytest.approx(d, rel=1e-9)


# ---------------------------------------------------------------------------- semantic recall


def test_semantic_recall_by_hand():
    layouts = np.zeros((2, 4, 4), np.uint8)
    layouts[0, :2, :2] = 1  # image 0: 4 pixels of class 1
    layouts[0, 3, 3] = 2  # ... and 1 stray pixel of class 2
    layouts[1, :, :3] = 3  # image 1: 12 pixels of class 3
    caption_classes = [[1, 2], [3, 4, 5]]  # 5 (image, named class) pairs
    # min_pixels 2: found (0, 1), (1, 3); the stray pixel of class 2 does not count -> 2 / 5
    assert lm.semantic_recall(layouts, caption_classes, min_pixels=2) == pytest.approx(2 / 5)
    assert lm.semantic_recall(layouts, caption_classes, min_pixels=1) == pytest.approx(3 / 5)
    assert lm.semantic_recall(layouts, caption_classes, min_pixels=5) == pytest.approx(1 / 5)
    assert lm.default_min_pixels(4, 4) == 1 and lm.default_min_pixels(32, 32) == 6
    # precision: found classes {1} and {3} (min 2) are both named -> 1; at min 1 the stray class 2
    # is named too -> 3 / 3; a class found but not named lowers it
    assert lm.semantic_precision(layouts, caption_classes, min_pixels=2) == pytest.approx(1.0)
    layouts[1, 3, :] = 6  # image 1: 4 pixels of class 6, which its caption does not name
    assert lm.semantic_precision(layouts, caption_classes, min_pixels=2) == pytest.approx(2 / 3)
    assert lm.semantic_recall(layouts, caption_classes, min_pixels=2) == pytest.approx(2 / 5)
    assert lm.semantic_precision(np.zeros((2, 4, 4), np.uint8), caption_classes) == 0.0
    with pytest.raises(ValueError, match="N caption class lists"):
        lm.semantic_recall(layouts, caption_classes[:1])


def test_named_classes_match_the_layout_of_real_items():
    source = shapes.ShapesSource(8, 32, 5)
    for i in range(8):
        named = lm.named_classes(source.meta(i))
        assert all(1 <= k < len(shapes.LAYOUT_CLASSES) for k in named)
        assert [shapes.LAYOUT_CLASSES[k] for k in named] == sorted(
            {o["shape"] for o in source.meta(i)["objects"]}, key=shapes.LAYOUT_CLASSES.index)
        # Objects may be occluded, never hidden entirely: the exact layout shows every named class.
        assert set(named) <= set(np.unique(source.layout(i)).tolist())
    assert lm.semantic_recall(source.layouts(), [lm.named_classes(source.meta(i)) for i in range(8)]) == 1.0


# ---------------------------------------------------------------------------- the segmenter


@pytest.mark.parametrize("resolution", [32, 64])
def test_segmenter_shapes(resolution):
    model = lm.LayoutSegmenter(resolution, width=4)
    logits = model(torch.zeros(2, 3, resolution, resolution))
    assert logits.shape == (2, len(shapes.LAYOUT_CLASSES), resolution, resolution)
    with pytest.raises(ValueError, match="power of two"):
        lm.LayoutSegmenter(48)


def test_segmenter_cached_reloaded_and_scores_images(tmp_path, monkeypatch):
    data = DataConfig(resolution=32, num_train=16, num_test=16, data_seed=3)
    logs: list[str] = []
    model, info = lm.load_or_train_segmenter(data, 3, 32, str(tmp_path), log=logs.append)
    assert info["backbone"].startswith(f"segmenter-v{lm.SEGMENTER_VERSION}-")
    assert info["cache_path"].startswith(str(tmp_path / "evaluators"))
    assert info["pool_seed"] not in (shapes.split_seed(3, "train"), shapes.split_seed(3, "test"))
    assert 0.0 <= info["heldout_miou"] <= 1.0 and info["heldout_num_images"] == 16
    assert any("held-out mIoU" in m for m in logs)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training

    # Second call: loaded, not trained (training would raise), same weights and info.
    monkeypatch.setattr(lm, "train_segmenter", lambda *a, **k: pytest.fail("retrained a cached segmenter"))
    logs.clear()
    again, info2 = lm.load_or_train_segmenter(data, 3, 32, str(tmp_path), log=logs.append)
    assert any("loaded segmenter" in m for m in logs)
    np.testing.assert_equal(info2, info)  # NaN-aware: an IoU of a class absent from the test split
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k

    # Scoring generated-style float images and uint8 images gives the same predictions.
    test = shapes.build_source(data, "test")
    images, layouts = test.images(), test.layouts()
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    scores = lm.image_layout_alignment(again, as_float, layouts, batch_size=5)
    assert scores == lm.image_layout_alignment(again, images, layouts)
    assert scores["n"] == 16 and scores["miou"] == pytest.approx(info["heldout_miou"])


def test_segmenter_refuses_other_datasets(tmp_path):
    with pytest.raises(ValueError, match="'shapes' only, not 'cub'.*local weights file"):
        lm.load_or_train_segmenter(DataConfig(dataset="cub"), 3, 32, str(tmp_path), log=lambda s: None)
    assert not any(tmp_path.iterdir())


def test_segmenter_with_a_nan_loss_or_no_step_caches_nothing(tmp_path, monkeypatch):
    data = DataConfig(resolution=32, num_train=16, num_test=16)
    cross_entropy = lm.F.cross_entropy
    with monkeypatch.context() as m:
        m.setattr(lm.F, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * float("nan"))
        with pytest.raises(FloatingPointError, match=r"segmenter 32x32: non-finite cross-entropy \(nan\) at step 1/3"):
            lm.load_or_train_segmenter(data, 3, 32, str(tmp_path), log=lambda s: None)
    assert not any(tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=r"got 0 step\(s\) on 32 image\(s\)"):
        lm.load_or_train_segmenter(data, 0, 32, str(tmp_path), log=lambda s: None)
    assert not any(tmp_path.rglob("*"))
    assert os.path.exists(tmp_path)
