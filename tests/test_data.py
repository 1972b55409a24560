"""Tokenizer/vocabulary, the procedural `shapes` dataset and the torch Dataset (SPEC 1)."""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from t2i_ray.config import DataConfig
from t2i_ray.data import shapes as S
from t2i_ray.data.dataset import TextImageDataset
from t2i_ray.data.records import Sample
from t2i_ray.data.text import Vocabulary, pad_ids, tokenize

REPO = Path(__file__).resolve().parents[1]
RELATION_TOKENS = {"above": "above", "over": "above", "below": "below", "under": "below",
                   "beneath": "below", "underneath": "below"}
ZONE_TOKENS = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom", "left": "left",
               "right": "right", "middle": "middle", "center": "middle"}


@pytest.fixture(scope="module")
def samples64() -> list[Sample]:
    src = S.ShapesSource(300, 64, seed=11)
    return [src[i] for i in range(len(src))]


@pytest.fixture(scope="module")
def captioned() -> list[tuple[list[str], dict]]:
    src = S.ShapesSource(1500, 32, seed=5)
    return [(src.captions(i), src.meta(i)) for i in range(len(src))]


# ------------------------------------------------------------------------------------- text


def test_tokenize_lowercases_strips_non_ascii_and_splits_on_word_chars():
    assert tokenize("A Red-Circle, LEFT of the box!") == ["a", "red", "circle", "left", "of", "the", "box"]
    assert tokenize("café naïve") == ["caf", "nave"]  # non-ASCII removed, not turned into a separator
    assert tokenize("x_1 + 2.5\tTabs\nlines") == ["x_1", "2", "5", "tabs", "lines"]
    assert tokenize("  ¿¡ !! ") == []


def test_vocabulary_build_is_sorted_deterministic_and_starts_with_end():
    caps = ["the red circle", "A blue square", "the square is RED"]
    v = Vocabulary.build(caps)
    assert v.words == ("<end>", "a", "blue", "circle", "is", "red", "square", "the")
    assert len(v) == 8
    assert Vocabulary.build(reversed(caps)) == v
    assert "red" in v and "<end>" in v and "green" not in v


def test_encode_drops_unknown_words_and_decode_stops_at_end():
    v = Vocabulary.build(["a red circle", "a blue square"])
    ids = v.encode("A red hexagon and a BLUE square", max_words=18)
    assert ids == [v.words.index(w) for w in ("a", "red", "a", "blue", "square")]
    assert v.decode(ids) == "a red a blue square"
    assert v.decode([*ids[:2], 0, ids[3]]) == "a red"  # 0 = <end>
    assert v.decode(pad_ids(ids, 10)) == "a red a blue square"
    with pytest.raises(ValueError, match="ids"):
        v.decode([len(v)])


def test_encode_truncation_first_words_without_rng_and_ordered_subset_with_rng():
    words = [f"w{k:02d}" for k in range(30)]
    v = Vocabulary.build([" ".join(words)])
    full = v.encode(" ".join(words), 64)
    assert len(full) == 30 and full == sorted(full)  # words are sorted, so ids increase here
    assert v.encode(" ".join(words), 18) == full[:18]
    seen = set()
    for seed in range(20):
        sub = v.encode(" ".join(words), 18, np.random.default_rng(seed))
        assert len(sub) == 18 and len(set(sub)) == 18
        assert sub == sorted(sub)  # the original order is kept
        assert set(sub) <= set(full)
        assert sub == v.encode(" ".join(words), 18, np.random.default_rng(seed))  # reproducible
        seen.add(tuple(sub))
    assert len(seen) > 15  # actually random
    short = v.encode("w03 w01", 18, np.random.default_rng(0))
    assert short == [v.words.index("w03"), v.words.index("w01")]  # short captions untouched
    with pytest.raises(ValueError, match="max_words"):
        v.encode("w01", 0)


def test_vocabulary_json_round_trip_and_fingerprint(tmp_path):
    v = Vocabulary.build(["a red circle", "a blue square left of a green cross"])
    path = tmp_path / "vocab.json"
    v.save(path)
    data = json.loads(path.read_text())
    assert data["words"][0] == "<end>" and data["words"] == list(v.words)
    loaded = Vocabulary.load(path)
    assert loaded == v and loaded.fingerprint() == v.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{40}", v.fingerprint())
    assert Vocabulary.from_json(v.to_json()) == v
    other = Vocabulary.build(["a red circle"])
    assert other.fingerprint() != v.fingerprint()
    data["words"] = data["words"][:-1]  # edited file: fingerprint no longer matches
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="fingerprint"):
        Vocabulary.load(path)
    path.write_text("not json")
    with pytest.raises(ValueError, match="JSON"):
        Vocabulary.load(path)
    with pytest.raises(ValueError, match="words"):
        Vocabulary(["red", "<end>"])
    with pytest.raises(ValueError, match="words"):
        Vocabulary(["<end>", "red", "red"])


def test_pad_ids():
    out = pad_ids([4, 2, 7], 5)
    assert out.dtype == np.int64 and out.tolist() == [4, 2, 7, 0, 0]
    assert pad_ids([], 2).tolist() == [0, 0]
    with pytest.raises(ValueError, match="ids"):
        pad_ids([1, 2, 3], 2)
    with pytest.raises(ValueError, match="length"):
        pad_ids([], 0)


# ---------------------------------------------------------------------------- shapes: names


def test_names_and_pair_index():
    assert len(S.SHAPE_NAMES) >= 5 and len(S.COLOR_NAMES) >= 6
    assert S.LAYOUT_CLASSES == ("background", *S.SHAPE_NAMES)
    assert S.NUM_ATTRIBUTES == len(S.SHAPE_NAMES) * len(S.COLOR_NAMES)
    rgb = np.array([S.COLOR_RGB[c] for c in S.COLOR_NAMES], dtype=float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + 1e3 * np.eye(len(rgb))
    assert dist.min() > 120  # well separated colours
    indices = [S.pair_index(s, c) for s in S.SHAPE_NAMES for c in S.COLOR_NAMES]
    assert indices == list(range(S.NUM_ATTRIBUTES))
    assert S.pair_index("triangle", "green") == 2 * len(S.COLOR_NAMES) + S.COLOR_NAMES.index("green")
    with pytest.raises(ValueError, match="shape"):
        S.pair_index("hexagon", "red")
    with pytest.raises(ValueError, match="color"):
        S.pair_index("circle", "grey")
    for shape, pairs in S.SHAPE_SYNONYMS.items():  # every shape word maps back to its shape
        assert pairs[0][0] == shape
        assert all(S.SHAPE_WORDS[w] == shape for pair in pairs for w in pair)


def test_attribute_vector():
    meta = {"index": 0, "objects": [
        {"shape": "circle", "color": "red", "size": "small", "cx": 0.2, "cy": 0.3},
        {"shape": "cross", "color": "blue", "size": "large", "cx": 0.7, "cy": 0.7},
        {"shape": "circle", "color": "red", "size": "large", "cx": 0.7, "cy": 0.2},
    ]}
    vec = S.attribute_vector(meta)
    assert vec.dtype == np.float32 and vec.shape == (S.NUM_ATTRIBUTES,)
    expected = np.zeros(S.NUM_ATTRIBUTES, np.float32)
    expected[0 * 6 + 0] = 1.0  # circle (0), red (0); the duplicate pair counts once
    expected[4 * 6 + 4] = 1.0  # cross (4), blue (4)
    np.testing.assert_array_equal(vec, expected)
    with pytest.raises(ValueError, match="shape"):
        S.attribute_vector({"objects": [{"shape": "star", "color": "red"}]})


# ---------------------------------------------------------------------- shapes: determinism


def test_items_are_pure_functions_of_seed_index_and_resolution():
    a, b = S.ShapesSource(40, 32, seed=3), S.ShapesSource(40, 32, seed=3)
    for i in (0, 7, 39):
        x, y = a[i], b[i]
        assert x.image.tobytes() == y.image.tobytes() and x.layout.tobytes() == y.layout.tobytes()
        assert x.captions == y.captions and x.meta == y.meta
    # Item i alone, among others, in a source of another length, in any order: identical.
    big = S.ShapesSource(5000, 32, seed=3)
    order = [39, 7, 0]
    for i, s in zip(order, [big[i] for i in order]):
        assert s.image.tobytes() == a[i].image.tobytes() and s.captions == a[i].captions
    other = S.ShapesSource(40, 32, seed=4)
    assert all(other[i].image.tobytes() != a[i].image.tobytes() for i in range(5))
    assert all(other.captions(i) != a.captions(i) for i in range(5))
    # The scene does not depend on the resolution; only its rendering does.
    hi = S.ShapesSource(40, 128, seed=3)
    assert hi[7].meta == a[7].meta and hi[7].captions == a[7].captions
    assert hi[7].image.shape == (128, 128, 3) and hi[7].layout.shape == (128, 128)


def test_cheap_accessors_match_full_items():
    src = S.ShapesSource(6, 32, seed=2)
    images = src.images()
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    for i in range(6):
        s = src[i]
        assert src.captions(i) == s.captions and src.meta(i) == s.meta
        assert np.array_equal(src.image(i), s.image) and np.array_equal(images[i], s.image)
    assert src.all_captions() == [c for i in range(6) for c in src[i].captions]
    assert src[-1].meta["index"] == 5
    with pytest.raises(IndexError):
        src[6]


def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="n:"):
        S.ShapesSource(0, 32, 0)
    with pytest.raises(ValueError, match="resolution"):
        S.ShapesSource(4, 4, 0)
    with pytest.raises(ValueError, match="seed"):
        S.ShapesSource(4, 32, -1)
    # shapes builds only itself: another dataset is the registry's (with its cache), not forwarded
    for build in (lambda c: S.build_source(c, "train"), S.build_vocabulary):
        with pytest.raises(ValueError, match=r"not data\.dataset='cub'.*t2i_ray\.data\.registry\.build_"):
            build(DataConfig(dataset="cub", data_root="/nowhere"))
    with pytest.raises(ValueError, match="split"):
        S.build_source(DataConfig(), "val")


def test_max_objects_lowers_the_object_count_and_leaves_the_full_dataset_unchanged():
    full, explicit = S.ShapesSource(60, 32, seed=5), S.ShapesSource(60, 32, seed=5, max_objects=3)
    assert all(full[i].image.tobytes() == explicit[i].image.tobytes() for i in range(0, 60, 7))
    assert {len(full.meta(i)["objects"]) for i in range(60)} == {1, 2, 3}
    one = S.ShapesSource(60, 32, seed=5, max_objects=1)
    assert all(len(one.meta(i)["objects"]) == 1 for i in range(60))
    for i in range(0, 60, 6):  # captions name the one object, layouts cover one shape class
        (obj,) = one.meta(i)["objects"]
        assert all(obj["color"] in c for c in one.captions(i))
        assert set(np.unique(one.layout(i))) <= {0, 1 + S.SHAPE_NAMES.index(obj["shape"])}
    two = S.ShapesSource(60, 32, seed=5, max_objects=2)
    assert {len(two.meta(i)["objects"]) for i in range(60)} == {1, 2}
    assert "max_objects=1" in repr(one) and "max_objects" not in repr(full)
    cfg = DataConfig(num_train=8, num_test=8, max_objects=1)
    assert S.build_source(cfg, "test").max_objects == 1
    with pytest.raises(ValueError, match="max_objects"):
        S.ShapesSource(4, 32, 0, max_objects=4)
    # The evaluator's and segmenter's cache keys name the difficulty only when it is lowered.
    from t2i_ray.eval.features import evaluator_cache_path
    from t2i_ray.eval.layout import segmenter_cache_path

    assert S.difficulty_key(DataConfig()) == {} and S.difficulty_key(cfg) == {"max_objects": 1}
    for cache_path in (evaluator_cache_path, segmenter_cache_path):
        (full, full_cfg), (easy, easy_cfg) = (cache_path(c, 10, 64, "/c") for c in (DataConfig(), cfg))
        assert "max_objects" not in full_cfg and easy_cfg["max_objects"] == 1 and full != easy


def test_large_objects_only_changes_the_sizes_and_nothing_else():
    mixed = S.ShapesSource(80, 32, seed=5, max_objects=2)
    large = S.ShapesSource(80, 32, seed=5, max_objects=2, object_size="large")
    assert {o["size"] for i in range(80) for o in mixed.meta(i)["objects"]} == {"small", "large"}
    for i in range(80):
        m, g = mixed.meta(i)["objects"], large.meta(i)["objects"]
        assert all(o["size"] == "large" for o in g)
        # the same scene draws: objects, shapes and colours item for item (positions may differ
        # where a larger object had to be placed elsewhere)
        assert [(o["shape"], o["color"]) for o in g] == [(o["shape"], o["color"]) for o in m]
        assert not any(w in c.split() for c in large.captions(i) for w in S.SIZE_WORDS["small"])
    # a large object covers more pixels than the same object drawn small
    small_items = [i for i in range(80) if len(mixed.meta(i)["objects"]) == 1
                   and mixed.meta(i)["objects"][0]["size"] == "small"]
    assert small_items
    for i in small_items[:5]:
        assert (large.layout(i) > 0).sum() > 1.5 * (mixed.layout(i) > 0).sum()
    assert "object_size='large'" in repr(large) and "object_size" not in repr(mixed)
    cfg = DataConfig(num_train=8, num_test=8, object_size="large")
    assert S.build_source(cfg, "train").object_size == "large"
    assert S.difficulty_key(cfg) == {"object_size": "large"}
    with pytest.raises(ValueError, match="object_size"):
        S.ShapesSource(4, 32, 0, object_size="huge")
    # three large objects still place (the scene sampler's constants allow it)
    crowded = S.ShapesSource(300, 32, seed=1, object_size="large")
    assert max(len(crowded.meta(i)["objects"]) for i in range(300)) == 3


def test_the_procedural_dataset_does_not_import_the_registry():
    """Records at the bottom, readers above, the registry the one way in: shapes never reaches up."""
    above = ["t2i_ray.data.registry", "t2i_ray.data.cub", "t2i_ray.data.coco", "t2i_ray.data.celeba",
             "t2i_ray.data.cityscapes"]
    code = ("import sys, t2i_ray.data.shapes, t2i_ray.data.cache, t2i_ray.data.dataset\n"
            f"loaded = [m for m in {above!r} if m in sys.modules]\n"
            "assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_build_source_splits_and_vocabulary():
    cfg = DataConfig(resolution=32, num_train=64, num_test=16, data_seed=1)
    train, test = S.build_source(cfg, "train"), S.build_source(cfg, "test")
    assert (len(train), len(test)) == (64, 16) and train.resolution == test.resolution == 32
    assert train.seed != test.seed
    assert all(train[i].image.tobytes() != test[i].image.tobytes() for i in range(8))
    assert S.build_source(replace(cfg, data_seed=2), "train").seed not in (train.seed, test.seed)
    vocab = S.build_vocabulary(cfg)
    assert vocab == Vocabulary.build(train.all_captions() + test.all_captions())
    assert all(c in vocab for c in S.COLOR_NAMES)


# ----------------------------------------------------------------------- shapes: content


def test_image_and_layout_are_consistent(samples64):
    r = 64
    centres = (np.arange(r) + 0.5) / r
    counts = np.zeros(4, int)
    for s in samples64:
        img, lay = s.image.astype(int), s.layout
        assert img.shape == (r, r, 3) and s.image.dtype == np.uint8 and lay.dtype == np.uint8
        assert lay.max() <= len(S.SHAPE_NAMES)
        objs = s.meta["objects"]
        counts[len(objs)] += 1
        present = {1 + S.SHAPE_NAMES.index(o["shape"]) for o in objs}
        assert set(np.unique(lay)) - {0} == present  # every object visible, nothing else drawn
        for o in objs:
            assert o["size"] in S.SIZE_NAMES and 0 < o["cx"] < 1 and 0 < o["cy"] < 1
            # A disc of radius 0.03 around the centre lies inside every shape (>= 0.4 * the
            # smallest size) and no other object reaches it: exactly the object's class and colour.
            core = np.hypot(centres[None, :] - o["cx"], centres[:, None] - o["cy"]) < 0.03  # (r, r)
            assert core.sum() >= 9
            assert np.all(lay[core] == 1 + S.SHAPE_NAMES.index(o["shape"]))
            assert np.abs(img[core] - np.array(S.COLOR_RGB[o["color"]])).max() <= 11  # jitter 10 + rounding
            spread = img[core].max(-1) - img[core].min(-1)
            assert spread.min() >= 100  # saturated object colours ...
        # ... on a muted background: pixels whose 3x3 neighbourhood is background are grey-ish.
        pad = np.pad(lay, 1, mode="edge")
        bg = np.ones_like(lay, bool)
        for dy, dx in itertools.product(range(3), range(3)):
            bg &= pad[dy:dy + r, dx:dx + r] == 0
        spread = img[bg].max(-1) - img[bg].min(-1)
        assert spread.max() < 90
        assert img[bg].std(axis=0).max() > 0.5  # textured, not flat
    assert counts[1:].min() > 60  # 1, 2 and 3 objects all common


@pytest.mark.parametrize("shape, area", [
    ("circle", np.pi), ("square", (2 * 0.886) ** 2), ("diamond", 2 * 1.253**2),
    ("triangle", 3 * np.sqrt(3) / 4 * 1.4**2), ("cross", 2 * 2.2 * 0.8 - 0.8**2),
])
def test_layout_is_exactly_the_half_coverage_set_and_shapes_have_their_area(shape, area):
    # White object on black: the red channel is the anti-aliasing coverage, and a pixel is in the
    # layout exactly when its centre is inside the shape, i.e. coverage >= 0.5.
    black = np.zeros(3, np.float32)
    bg = S._Background("gradient", black, black, 0.0, 1.0, 0.0, np.zeros((5, 5), np.float32))
    s, r = 0.25, 128
    for angle in (0.2, 0.0):
        obj = S._Object(shape, "red", "large", s, 0.5, 0.5, angle, (255.0, 255.0, 255.0))
        img, lay = S._render([obj], bg, r)
        np.testing.assert_array_equal(lay > 0, img[:, :, 0] >= 128)
        assert set(np.unique(lay)) == {0, 1 + S.SHAPE_NAMES.index(shape)}
        expected = area * (s * r) ** 2  # pixels (area is in units of s^2)
        assert abs((lay > 0).sum() / expected - 1) < 0.04  # pixel-centre sampling: +-1 row/column
        assert abs(img[:, :, 0].sum() / 255 / expected - 1) < 0.01  # anti-aliased coverage: sub-pixel
    if shape == "triangle":  # apex up (angle 0): the rows get wider downwards
        widths = (lay > 0).sum(axis=1)
        rows = np.nonzero(widths)[0]
        assert widths[rows[0]] < widths[rows[len(rows) // 2]] < widths[rows[-1]]


def test_later_objects_occlude_earlier_ones_in_image_and_layout():
    # Two overlapping objects drawn in order: the overlap takes the second one's colour and class.
    bg = S._sample_background(np.random.default_rng(0))
    a = S._Object("square", "red", "large", 0.15, 0.45, 0.5, 0.0, S.COLOR_RGB["red"])
    b = S._Object("circle", "blue", "large", 0.15, 0.55, 0.5, 0.0, S.COLOR_RGB["blue"])
    img, lay = S._render([a, b], bg, 64)
    assert lay[32, 32] == 1 + S.SHAPE_NAMES.index("circle")
    assert tuple(img[32, 32]) == S.COLOR_RGB["blue"]
    img2, lay2 = S._render([b, a], bg, 64)
    assert lay2[32, 32] == 1 + S.SHAPE_NAMES.index("square") and tuple(img2[32, 32]) == S.COLOR_RGB["red"]


def test_captions_name_every_object_and_vary(captioned):
    shape_words_used, lengths = set(), []
    for caps, meta in captioned:
        assert len(caps) == S.NUM_CAPTIONS
        assert len({tuple(tokenize(c)) for c in caps}) == S.NUM_CAPTIONS  # all distinct
        for cap in caps:
            tokens = tokenize(cap)
            lengths.append(len(tokens))
            named_shapes = {S.SHAPE_WORDS[t] for t in tokens if t in S.SHAPE_WORDS}
            shape_words_used.update(t for t in tokens if t in S.SHAPE_WORDS)
            for o in meta["objects"]:
                assert o["color"] in tokens, (cap, meta)
                assert o["shape"] in named_shapes, (cap, meta)
            # no colour or shape is mentioned that the image does not show
            assert {t for t in tokens if t in S.COLOR_NAMES} == {o["color"] for o in meta["objects"]}
            assert named_shapes == {o["shape"] for o in meta["objects"]}
    assert max(lengths) <= S.MAX_CAPTION_WORDS and 4 <= np.mean(lengths) <= 18
    assert shape_words_used == set(S.SHAPE_WORDS)  # every synonym and plural shows up
    all_tokens = {t for caps, _ in captioned for c in caps for t in tokenize(c)}
    for word in ("left", "right", "above", "below", "two", "three", "big", "small", "tiny", "striped"):
        assert word in all_tokens


def _relation_at(tokens: list[str], j: int) -> str | None:
    t = tokens[j]
    if t in ("left", "right") and j + 1 < len(tokens) and tokens[j + 1] == "of":
        return t
    return RELATION_TOKENS.get(t)


def _holds(rel: str, a: dict, b: dict) -> bool:
    """Raw geometry (y down): is a <rel> b?"""
    return {"left": a["cx"] < b["cx"], "right": a["cx"] > b["cx"],
            "above": a["cy"] < b["cy"], "below": a["cy"] > b["cy"]}[rel]


def _objects_named(tokens: list[str], meta: dict) -> list[dict]:
    colors = [t for t in tokens if t in S.COLOR_NAMES]
    shapes = [S.SHAPE_WORDS[t] for t in tokens if t in S.SHAPE_WORDS]
    return [o for o in meta["objects"] if o["color"] in colors and o["shape"] in shapes]


def test_relations_are_true_for_the_rendered_positions(captioned):
    checked = 0
    for caps, meta in captioned:
        for cap in caps:
            tokens = tokenize(cap)
            for j in range(len(tokens)):
                rel = _relation_at(tokens, j)
                if rel is None:
                    continue
                # "A <rel> B": A is the nearest colour + shape before the relation, B the first after.
                before = [t for t in tokens[:j] if t in S.COLOR_NAMES or t in S.SHAPE_WORDS]
                after = [t for t in tokens[j + 1:] if t in S.COLOR_NAMES or t in S.SHAPE_WORDS]
                subj = next(t for t in reversed(before) if t in S.COLOR_NAMES)
                subj_shape = S.SHAPE_WORDS[next(t for t in reversed(before) if t in S.SHAPE_WORDS)]
                obj = next(t for t in after if t in S.COLOR_NAMES)
                obj_shape = S.SHAPE_WORDS[next(t for t in after if t in S.SHAPE_WORDS)]
                named = (subj, subj_shape, obj, obj_shape)
                pairs = [(a, b) for a, b in itertools.permutations(meta["objects"], 2)
                         if (a["color"], a["shape"], b["color"], b["shape"]) == named]
                assert pairs and any(_holds(rel, a, b) for a, b in pairs), (cap, meta)
                checked += 1
    assert checked > 1000


def test_absolute_positions_are_true(captioned):
    checked = 0
    for caps, meta in captioned:
        for cap in caps:
            tokens = tokenize(cap)
            if any(_relation_at(tokens, j) for j in range(len(tokens))):
                continue
            for clause in re.split(r",|;| and | with | along with | as well as ", cap):
                words = tokenize(clause)
                zones = {ZONE_TOKENS[t] for t in words if t in ZONE_TOKENS}
                named = _objects_named(words, meta)
                if not zones or not named:
                    continue
                assert any(all(_in_zone(z, o) for z in zones) for o in named), (cap, meta)
                checked += 1
    assert checked > 500


def _in_zone(z: str, o: dict) -> bool:
    """Raw geometry, independent of the generator's zone thresholds (y down)."""
    x, y = o["cx"], o["cy"]
    return {"top": y < 0.5, "bottom": y > 0.5, "left": x < 0.5, "right": x > 0.5,
            "middle": abs(x - 0.5) < 0.15 and abs(y - 0.5) < 0.15}[z]


def test_size_words_match_sizes(captioned):
    for caps, meta in captioned[:300]:
        sizes = {o["size"] for o in meta["objects"]}
        for cap in caps:
            tokens = set(tokenize(cap))
            for size, words in S.SIZE_WORDS.items():
                if tokens & set(words):
                    assert size in sizes, (cap, meta)


# ---------------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def data():
    src = S.ShapesSource(48, 32, seed=9)
    return src, Vocabulary.build(src.all_captions())


def _ds(data, **kw) -> TextImageDataset:
    src, vocab = data
    return TextImageDataset(src, vocab, kw.pop("words_num", 18), **kw)


def test_dataset_items_shapes_dtypes_and_ranges(data):
    src, vocab = data
    ds = _ds(data, train=True, seed=1)
    assert len(ds) == 48 and ds.images.shape == (48, 32, 32, 3) and ds.images.dtype == np.uint8
    for i in (0, 17, 47):
        it = ds[i]
        assert it["image"].shape == (3, 32, 32) and it["image"].dtype == torch.float32
        assert it["image"].min() >= -1 and it["image"].max() <= 1
        expected = torch.from_numpy(src[i].image).permute(2, 0, 1).float() / 127.5 - 1
        torch.testing.assert_close(it["image"], expected)
        for key in ("caption", "caption2"):
            ids, n = it[key], it[f"{key}_len"]
            assert ids.shape == (18,) and ids.dtype == torch.int64 and n.dtype == torch.int64 and n.dim() == 0
            assert 1 <= int(n) <= 18 and bool((ids[:n] > 0).all()) and bool((ids[n:] == 0).all())
        assert not torch.equal(it["caption"], it["caption2"])
        assert it["attributes"].dtype == torch.float32 and it["attributes"].shape == (S.NUM_ATTRIBUTES,)
        assert np.array_equal(it["attributes"].numpy(), S.attribute_vector(src.meta(i)))
        assert it["index"].dtype == torch.int64 and int(it["index"]) == i
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["caption_len"].shape == (8,)


def test_dataset_with_layouts_gives_the_exact_shapes_layouts(data):
    src, _ = data
    assert "layout" not in _ds(data, train=True)[0]  # only when asked for
    ds = _ds(data, train=True, layouts=True)
    for i in (0, 30):
        layout = ds[i]["layout"]
        assert layout.shape == (32, 32) and layout.dtype == torch.int64
        assert np.array_equal(layout.numpy(), src[i].layout)
        assert np.array_equal(src.layout(i), src[i].layout)
    assert int(layout.max()) <= len(S.LAYOUT_CLASSES) - 1
    assert np.array_equal(src.layouts()[30], src[30].layout)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["layout"].shape == (8, 32, 32)


def test_dataset_test_mode_uses_captions_0_and_1_truncated(data):
    src, vocab = data
    ds = _ds(data, train=False, words_num=6)
    for i in range(len(ds)):
        it = ds[i]
        caps = src.captions(i)
        assert vocab.decode(it["caption"].tolist()) == vocab.decode(vocab.encode(caps[0], 6))
        assert vocab.decode(it["caption2"].tolist()) == vocab.decode(vocab.encode(caps[1], 6))
        ds.set_epoch(3)
        assert torch.equal(ds[i]["caption"], it["caption"])
        ds.set_epoch(0)
    full = _ds(data, train=False, words_num=S.MAX_CAPTION_WORDS)
    assert all(not torch.equal(full[i]["caption"], full[i]["caption2"]) for i in range(len(full)))


def test_dataset_training_choice_is_a_pure_function_of_seed_epoch_index(data):
    src, vocab = data
    a, b = _ds(data, train=True, seed=4, words_num=5), _ds(data, train=True, seed=4, words_num=5)
    order = list(range(len(a)))
    first = [a[i] for i in order]
    second = [b[i] for i in reversed(order)][::-1]  # other instance, other access order
    for x, y in zip(first, second):
        assert all(torch.equal(x[k], y[k]) for k in x)
    for it, i in zip(first, order):  # long captions: random ordered subsets of one of the captions
        full_ids = [vocab.encode(c, 64) for c in src.captions(i)]
        for key in ("caption", "caption2"):
            ids = it[key][: int(it[f"{key}_len"])].tolist()
            assert any(_is_subsequence(ids, f) and len(ids) == min(5, len(f)) for f in full_ids)
    a.set_epoch(1)
    epoch1 = [a[i] for i in order]
    assert sum(not torch.equal(x["caption"], y["caption"]) for x, y in zip(first, epoch1)) > len(order) // 2
    a.set_epoch(0)
    assert all(torch.equal(a[i]["caption"], first[i]["caption"]) for i in order)
    # The F2F pair is always two different captions (full length: distinct token sequences).
    full = _ds(data, train=True, seed=4, words_num=S.MAX_CAPTION_WORDS)
    for epoch in range(3):
        full.set_epoch(epoch)
        assert all(not torch.equal(full[i]["caption"], full[i]["caption2"]) for i in order)
    c = _ds(data, train=True, seed=5, words_num=5)
    assert any(not torch.equal(c[i]["caption"], first[i]["caption"]) for i in order)
    with pytest.raises(ValueError, match="epoch"):
        a.set_epoch(-1)


def _is_subsequence(sub: list[int], seq: list[int]) -> bool:
    it = iter(seq)
    return all(x in it for x in sub)


def test_dataset_rejects_bad_arguments(data):
    src, vocab = data
    with pytest.raises(ValueError, match="words_num"):
        TextImageDataset(src, vocab, 0, train=True)
    with pytest.raises(ValueError, match="vocab"):
        TextImageDataset(src, Vocabulary.build(["zebra"]), 18, train=True)
    ds = TextImageDataset(src, vocab, 18, train=True)
    with pytest.raises(IndexError):
        ds[len(ds)]
