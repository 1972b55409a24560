"""`shapes`: the built-in procedural text-to-image dataset (SPEC 1).

Each image holds 1 to 3 flat-coloured objects on a muted, low-contrast textured background.
An object has a shape (SHAPE_NAMES), a colour (COLOR_NAMES), a size (small/large), a position
and a small rotation. Every image comes with
  - 10 captions in varied wording (synonyms, templates, word order, counts, absolute positions
    and pairwise relations that are true for the rendered positions); every caption names every
    object's colour word and a shape word (SHAPE_WORDS maps synonyms and plurals back), so an
    oracle can score whether a generated image shows what its caption says;
  - the exact layout: per pixel 0 = background, 1 + shape index where an object covers the
    pixel centre (later objects occlude earlier ones, as in the image);
  - `meta`: the ground-truth objects, from which `attribute_vector` builds the (shape, colour)
    multi-hot target of the `domain` evaluator (SPEC 6).

Item i is a pure function of (seed, i, resolution): it draws from `np.random.default_rng([seed,
i])` only, so items can be generated alone, in any order, in any process. The scene and the
captions do not depend on the resolution at all (the same scene is rendered at 32 and at 256).

Rendering is vectorised numpy on coordinate grids: each object is a signed distance function
(SDF) evaluated on its bounding box only, and its alpha is the SDF in pixels clipped to a 1-pixel
ramp, which anti-aliases edges without supersampling.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Sequence

import numpy as np

from t2i_ray.config import OBJECT_SIZES, DataConfig
from t2i_ray.data.records import Sample
from t2i_ray.data.text import Vocabulary, tokenize

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOR_NAMES: tuple[str, ...] = ("red", "yellow", "green", "cyan", "blue", "purple")
# Saturated and far apart in RGB (every pair differs by >= 100 in some channel) so that colours
# stay distinguishable at 32x32 and against the muted backgrounds.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "yellow": (240, 210, 30),
    "green": (40, 170, 60),
    "cyan": (40, 200, 220),
    "blue": (40, 70, 215),
    "purple": (160, 50, 200),
}
SIZE_NAMES: tuple[str, ...] = ("small", "large")
LAYOUT_CLASSES: tuple[str, ...] = ("background", *SHAPE_NAMES)
NUM_ATTRIBUTES: int = len(SHAPE_NAMES) * len(COLOR_NAMES)
NUM_CAPTIONS = 10
MAX_CAPTION_WORDS = 25
MAX_OBJECTS = 3  # objects per image: 1..MAX_OBJECTS (data.max_objects may lower it)

# (singular, plural) words per shape; the first is the canonical name.
SHAPE_SYNONYMS: dict[str, tuple[tuple[str, str], ...]] = {
    "circle": (("circle", "circles"), ("disc", "discs"), ("disk", "disks")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks"), ("tile", "tiles")),
    "triangle": (("triangle", "triangles"), ("pyramid", "pyramids")),
    "diamond": (("diamond", "diamonds"), ("rhombus", "rhombuses"), ("lozenge", "lozenges")),
    "cross": (("cross", "crosses"), ("plus", "pluses")),
}
# Every caption token that names a shape -> the shape (what an oracle needs to parse captions).
SHAPE_WORDS: dict[str, str] = {w: s for s, pairs in SHAPE_SYNONYMS.items() for pair in pairs for w in pair}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Relation phrases: "A <phrase> B" is stated only when `relations_between(A, B)` holds.
RELATION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath", "underneath"),
}
# A relation needs a clear offset on its axis: at least this much (in image widths) and at least
# half the offset on the other axis, so "left of" is never said of two vertically stacked objects.
RELATION_MARGIN = 0.08
# Absolute position zones: "left" means cx < 0.4, "right" cx > 0.6 (same for top/bottom on cy);
# an object in neither zone on both axes is "in the middle".
ZONE_LOW, ZONE_HIGH = 0.4, 0.6

# Geometry, in units of the object's nominal size s (normalised image coordinates). The factors
# give every shape about the same area (circle: pi s^2) so that "small"/"large" mean the same for
# all shapes; BOUND is the circumradius, used for placement and bounding boxes.
_SIZE_RANGE = {"small": (0.085, 0.105), "large": (0.14, 0.17)}
_SQUARE_HALF = 0.886  # half side: (2 * 0.886)^2 = pi
_DIAMOND_HALF = 1.253  # half diagonal: 2 * 1.253^2 = pi
_TRIANGLE_R = 1.4  # circumradius (area 2.55 s^2: the equal-area 1.55 made placement too tight)
_CROSS_LONG, _CROSS_HALF_WIDTH = 1.1, 0.4  # arm half length, arm half width (area 2.9 s^2)
_BOUND = {
    "circle": 1.0,
    "square": _SQUARE_HALF * math.sqrt(2.0),
    "diamond": _DIAMOND_HALF,
    "triangle": _TRIANGLE_R,
    "cross": math.hypot(_CROSS_LONG, _CROSS_HALF_WIDTH),
}
# Rotation jitter (degrees): small enough that a square never looks like a diamond (45 apart).
_MAX_ROTATION = {"circle": 0.0, "square": 10.0, "diamond": 10.0, "triangle": 15.0, "cross": 10.0}
_EDGE_MARGIN = 0.02  # objects stay fully inside the image, this far from the border
# Centres at least this fraction of the summed circumradii apart: shapes may touch at corners
# but never cover another object's centre, so every object stays clearly visible.
_MIN_SEPARATION = 0.9
_PLACEMENT_CANDIDATES = 32
_MAX_SCENE_TRIES = 200
_COLOR_JITTER = 10.0  # per channel, +-, so a colour class is a small cloud, not one RGB value
_BACKGROUNDS = ("gradient", "stripes", "mottled")
_BACKGROUND_WORDS = {
    "gradient": ("gradient", "shaded", "smoothly shaded"),
    "stripes": ("striped", "stripy", "lined"),
    "mottled": ("mottled", "cloudy", "blotchy"),
}
_MOTTLE_GRID = 5  # control points per axis of the smooth noise


@dataclass(frozen=True)
class _Object:
    shape: str
    color: str
    size: str  # "small" | "large"
    s: float  # nominal size (normalised): the circle radius; other shapes scale with it
    cx: float  # centre, normalised [0, 1], x to the right
    cy: float  # centre, normalised [0, 1], y downwards (row order)
    angle: float  # radians
    rgb: tuple[float, float, float]  # jittered colour, 0..255

    def as_meta(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "cx": self.cx, "cy": self.cy}


@dataclass(frozen=True)
class _Background:
    kind: str  # one of _BACKGROUNDS
    c1: np.ndarray  # (3,) float32 0..255, the colour at t = 0
    c2: np.ndarray  # (3,) float32, the colour at t = 1 (a low-contrast neighbour of c1)
    angle: float  # direction of the gradient / stripes
    freq: float  # stripes: cycles across the image
    phase: float
    grid: np.ndarray  # (_MOTTLE_GRID, _MOTTLE_GRID) control values of the mottled texture


# ---------------------------------------------------------------------------------------------
# Public helpers on names and meta


def pair_index(shape: str, color: str) -> int:
    """Index of the (shape, colour) pair in attribute vectors: shape_idx * len(COLOR_NAMES) + color_idx."""
    if shape not in SHAPE_NAMES:
        raise ValueError(f"shape: unknown shape {shape!r}; known: {', '.join(SHAPE_NAMES)}")
    if color not in COLOR_NAMES:
        raise ValueError(f"color: unknown colour {color!r}; known: {', '.join(COLOR_NAMES)}")
    return SHAPE_NAMES.index(shape) * len(COLOR_NAMES) + COLOR_NAMES.index(color)


def attribute_vector(meta: dict[str, Any]) -> np.ndarray:
    """(NUM_ATTRIBUTES,) float32 multi-hot of the (shape, colour) pairs present in `meta`."""
    out = np.zeros(NUM_ATTRIBUTES, dtype=np.float32)
    for obj in meta["objects"]:
        out[pair_index(obj["shape"], obj["color"])] = 1.0
    return out


def relations_between(a: dict[str, Any] | _Object, b: dict[str, Any] | _Object) -> list[str]:
    """The relations R for which "a R b" is stated: subset of left/right/above/below.

    a and b are meta object dicts (or internal objects). y grows downwards, so "above" = smaller cy.
    """
    ax, ay = (a["cx"], a["cy"]) if isinstance(a, dict) else (a.cx, a.cy)
    bx, by = (b["cx"], b["cy"]) if isinstance(b, dict) else (b.cx, b.cy)
    dx, dy = ax - bx, ay - by
    out = []
    if abs(dx) >= RELATION_MARGIN and abs(dx) >= 0.5 * abs(dy):
        out.append("left" if dx < 0 else "right")
    if abs(dy) >= RELATION_MARGIN and abs(dy) >= 0.5 * abs(dx):
        out.append("above" if dy < 0 else "below")
    return out


def zone(cx: float, cy: float) -> tuple[str | None, str | None]:
    """(vertical, horizontal) zone words of a centre: ("top"|"bottom"|None, "left"|"right"|None)."""
    vertical = "top" if cy < ZONE_LOW else "bottom" if cy > ZONE_HIGH else None
    horizontal = "left" if cx < ZONE_LOW else "right" if cx > ZONE_HIGH else None
    return vertical, horizontal


# ---------------------------------------------------------------------------------------------
# Scene sampling (no rendering): objects, background


def _muted_color(h: float, s: float, v: float) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return np.array(rgb, dtype=np.float32) * 255.0


def _sample_background(rng: np.random.Generator) -> _Background:
    u = rng.random(11 + _MOTTLE_GRID**2).tolist()  # one Generator call: they cost ~1 us each
    # Desaturated, mid-dark base (objects are saturated, so they stand out in hue/saturation);
    # the second colour is a near neighbour so the texture is visible but low-contrast.
    h, s, v = u[0], 0.05 + 0.25 * u[1], 0.3 + 0.32 * u[2]
    dv = (0.1 + 0.1 * u[3]) * (1.0 if u[4] < 0.5 else -1.0)
    return _Background(
        kind=_BACKGROUNDS[int(u[7] * len(_BACKGROUNDS))],
        c1=_muted_color(h, s, v),
        c2=_muted_color(h + 0.12 * (u[5] - 0.5), s * (0.7 + 0.6 * u[6]), v + dv),
        angle=2.0 * math.pi * u[8], freq=2.5 + 3.5 * u[9], phase=2.0 * math.pi * u[10],
        grid=np.array(u[11:], dtype=np.float32).reshape(_MOTTLE_GRID, _MOTTLE_GRID),
    )


def _place(bound: float, cand: list[float],
           placed: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """First candidate centre (pairs of uniforms in `cand`) far enough from every placed object.

    Plain Python: with at most 2 placed objects and usually the first candidate accepted, this is
    much cheaper than numpy's per-call overhead.
    """
    edge = bound + _EDGE_MARGIN
    span = 1.0 - 2.0 * edge
    for k in range(0, len(cand), 2):
        cx, cy = edge + span * cand[k], edge + span * cand[k + 1]
        if all(math.hypot(cx - px, cy - py) >= _MIN_SEPARATION * (bound + pb) for px, py, pb in placed):
            return cx, cy
    return None


def _sample_objects(rng: np.random.Generator, max_objects: int = MAX_OBJECTS,
                    large_only: bool = False) -> list[_Object]:
    """1..max_objects objects placed by rejection sampling so that no object covers another's centre.
    `large_only`: every object large (the same draws, so only the sizes differ from the mixed scene)."""
    per_object = 8 + 2 * _PLACEMENT_CANDIDATES  # shape, colour, size, s, angle, 3 x jitter, centres
    n = int(rng.integers(1, max_objects + 1))  # drawn once: a retry must not bias the count towards 1
    for _ in range(_MAX_SCENE_TRIES):
        u = rng.random(n * per_object).tolist()
        objects: list[_Object] = []
        placed: list[tuple[float, float, float]] = []  # (cx, cy, circumradius)
        for k in range(n):
            a = u[k * per_object:(k + 1) * per_object]
            shape = SHAPE_NAMES[int(a[0] * len(SHAPE_NAMES))]
            color = COLOR_NAMES[int(a[1] * len(COLOR_NAMES))]
            size = "large" if large_only else SIZE_NAMES[int(a[2] * len(SIZE_NAMES))]
            lo, hi = _SIZE_RANGE[size]
            s = lo + (hi - lo) * a[3]
            bound = _BOUND[shape] * s
            centre = _place(bound, a[8:], placed)
            if centre is None:
                break
            base = COLOR_RGB[color]
            rgb = tuple(min(max(base[j] + _COLOR_JITTER * (2.0 * a[5 + j] - 1.0), 0.0), 255.0)
                        for j in range(3))
            objects.append(_Object(
                shape=shape, color=color, size=size, s=s, cx=centre[0], cy=centre[1],
                angle=math.radians(_MAX_ROTATION[shape] * (2.0 * a[4] - 1.0)), rgb=rgb,
            ))
            placed.append((centre[0], centre[1], bound))
        else:
            return objects
    raise RuntimeError("shapes: could not place the objects; the size/separation constants are inconsistent")


# ---------------------------------------------------------------------------------------------
# Captions


class _Chooser:
    """Random choices from uniforms drawn in blocks from the item's rng.

    One Generator call costs about a microsecond; captions make a few hundred choices per image,
    which one call per choice would make the bottleneck at 32x32.
    """

    def __init__(self, rng: np.random.Generator):
        self._rng = rng
        self._next = iter(()).__next__

    def u(self) -> float:
        try:
            return self._next()
        except StopIteration:
            self._next = iter(self._rng.random(256).tolist()).__next__
            return self._next()

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[int(self.u() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.u() < p

    def weighted(self, options: Sequence[tuple[Any, float]]) -> Any:
        r = self.u() * sum(w for _, w in options)
        for value, w in options:
            r -= w
            if r < 0:
                return value
        return options[-1][0]

    def shuffled(self, seq: Sequence[Any]) -> list[Any]:
        out = list(seq)
        for i in range(len(out) - 1, 0, -1):  # Fisher-Yates
            j = int(self.u() * (i + 1))
            out[i], out[j] = out[j], out[i]
        return out


_NUMBERS = {1: ("one", "1"), 2: ("two", "2"), 3: ("three", "3")}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _number(n: int, c: _Chooser) -> str:
    return _NUMBERS[n][1] if c.chance(0.15) else _NUMBERS[n][0]


def _shape_word(shape: str, c: _Chooser, plural: bool = False) -> str:
    """The canonical name half of the time, otherwise a synonym."""
    pairs = SHAPE_SYNONYMS[shape]
    pair = pairs[0] if c.chance(0.5) else c.pick(pairs[1:])
    return pair[1] if plural else pair[0]


def _noun_phrase(o: _Object, c: _Chooser, form: str, with_size: bool, article: bool = True) -> str:
    """"a big red circle" (adj), "a big circle in red" (in), "a big circle colored red" (colored)."""
    shape = _shape_word(o.shape, c)
    size = f"{c.pick(SIZE_WORDS[o.size])} " if with_size else ""
    if form == "adj":
        core = f"{size}{o.color} {shape}"
    elif form == "in":
        core = f"{size}{shape} in {o.color}"
    else:
        core = f"{size}{shape} colored {o.color}"
    return _with_article(core) if article else core


def _join(parts: list[str], c: _Chooser) -> str:
    if len(parts) == 1:
        return parts[0]
    # Never "plus" as a conjunction: it is also a shape word (the cross), which would mislead
    # any caption parser.
    if len(parts) > 2:
        last = c.pick((" and ", ", and ", " as well as "))
    else:
        last = c.pick((" and ", " with ", " along with "))
    if len(parts) == 2 and last == " and " and c.chance(0.2):
        last = " together with "
    return ", ".join(parts[:-1]) + last + parts[-1]


def _background_phrase(bg: _Background, c: _Chooser) -> str:
    word = c.pick(_BACKGROUND_WORDS[bg.kind])
    return f"{c.pick(('on', 'against'))} {_with_article(word)} {c.pick(('background', 'backdrop'))}"


def _maybe_background(text: str, bg: _Background, c: _Chooser, p: float = 0.25) -> str:
    return f"{text} {_background_phrase(bg, c)}" if c.chance(p) else text


def _position_phrase(o: _Object, c: _Chooser) -> str:
    vertical, horizontal = zone(o.cx, o.cy)
    if vertical and horizontal:
        v = c.pick({"top": ("top", "upper"), "bottom": ("bottom", "lower")}[vertical])
        near_corner = max(abs(o.cx - 0.5), abs(o.cy - 0.5)) > 0.2 and min(abs(o.cx - 0.5), abs(o.cy - 0.5)) > 0.15
        suffix = c.pick(("", " corner", " part")) if near_corner else c.pick(("", " part"))
        return f"{c.pick(('in the', 'at the'))} {v} {horizontal}{suffix}"
    if horizontal:
        return f"{c.pick(('on the', 'at the'))} {horizontal}{c.pick(('', ' side'))}"
    if vertical:
        return f"{c.pick(('at the', 'near the'))} {vertical}"
    return c.pick(("in the middle", "in the center", "near the center"))


def _caption_list(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    form, with_size = c.pick(("adj", "adj", "in", "colored")), c.chance(0.35)
    body = _join([_noun_phrase(o, c, form, with_size) for o in c.shuffled(objs)], c)
    prefixes = ("", "", "there is", "an image of", "a picture of", "a drawing of", "this image shows",
                "we can see", "the picture shows", "here we have")
    prefix = c.pick(prefixes)
    return _maybe_background(f"{prefix} {body}" if prefix else body, bg, c)


def _caption_count(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    n = len(objs)
    if n == 1:
        o = objs[0]
        np_ = _noun_phrase(o, c, "adj", c.chance(0.4), article=False)
        text = c.pick((f"a single {np_}", f"just one {np_}", f"only one shape, {_with_article(np_)}",
                       f"exactly one object: {_with_article(np_)}"))
        return _maybe_background(text, bg, c)
    body = _join([_noun_phrase(o, c, c.pick(("adj", "in")), c.chance(0.3)) for o in c.shuffled(objs)], c)
    num, noun = _number(n, c), c.pick(("shapes", "objects", "figures"))
    text = c.pick((f"{num} {noun}: {body}", f"there are {num} {noun}: {body}",
                   f"{body}, {num} {noun} in total", f"{num} {noun} in the image: {body}"))
    return _maybe_background(text, bg, c, p=0.15)


def _caption_terse(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    inverted = c.chance(0.3)
    tags = [f"{_shape_word(o.shape, c)} {o.color}" if inverted else f"{o.color} {_shape_word(o.shape, c)}"
            for o in c.shuffled(objs)]
    text = c.pick((", ", " / ", " + ", "; ")).join(tags)
    return f"{c.pick(('shapes', 'objects'))}: {text}" if c.chance(0.3) else text


def _caption_attribute(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    """Copula sentences: "the circle is red ...", "the red shape is a circle ..."."""
    if len(objs) == 1:
        o = objs[0]
        np_ = _noun_phrase(o, c, "adj", c.chance(0.4))
        shape = _shape_word(o.shape, c)
        text = c.pick((f"the shape is {np_}", f"it is {np_}", f"the only object is {np_}",
                       f"the {shape} is {o.color}", f"a {shape} that is {o.color}"))
        return _maybe_background(text, bg, c)
    shapes_distinct = len({o.shape for o in objs}) == len(objs)
    colors_distinct = len({o.color for o in objs}) == len(objs)
    by_color = colors_distinct and (not shapes_distinct or c.chance(0.5))
    clauses = []
    for o in c.shuffled(objs):
        if by_color:
            noun = c.pick(('shape', 'one', 'object'))
            clauses.append(f"the {o.color} {noun} is {_with_article(_shape_word(o.shape, c))}")
        else:
            clauses.append(f"the {_shape_word(o.shape, c)} is {o.color}")
    return ", ".join(clauses[:-1]) + c.pick((" and ", ", and ", ", while ")) + clauses[-1]


def _caption_position(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    form, with_size = c.pick(("adj", "in")), c.chance(0.25)
    leading = c.chance(0.3)  # "in the top left there is a red circle" word order
    parts = []
    for o in c.shuffled(objs):
        np_, pos = _noun_phrase(o, c, form, with_size), _position_phrase(o, c)
        parts.append(f"{pos} {c.pick(('there is ', ''))}{np_}" if leading else f"{np_} {pos}")
    text = "; ".join(parts) if leading else _join(parts, c)
    return _maybe_background(text, bg, c, p=0.15)


def _caption_relation(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    """"A <rel> B" for a random ordered pair and one of its true relations (+ the third object)."""
    order = c.shuffled(objs)
    a, b = order[0], order[1]
    rel = c.pick(relations_between(a, b))  # non-empty: placement keeps centres far enough apart
    form, with_size = c.pick(("adj", "adj", "in")), c.chance(0.3)
    verb = c.pick(("", "", "is ", "sits ", "lies ", "appears ", "is placed "))
    text = (f"{_noun_phrase(a, c, form, with_size)} {verb}{c.pick(RELATION_PHRASES[rel])} "
            f"{_noun_phrase(b, c, form, with_size)}")
    if not verb and c.chance(0.3):
        text = f"there is {text}"
    if len(order) == 3:
        third = order[2]
        if c.chance(0.5):
            anchor = c.pick((a, b))
            rel3 = c.pick(relations_between(third, anchor))
            ref = f"the {anchor.color} {_shape_word(anchor.shape, c)}"
            text += f", and {_noun_phrase(third, c, form, False)} {c.pick(RELATION_PHRASES[rel3])} {ref}"
        else:
            # Not "A left of B and C": that would claim A is left of C as well.
            link = c.pick((", and there is also ", "; there is also ", "; also "))
            text += f"{link}{_noun_phrase(third, c, form, with_size)}"
    return _maybe_background(text, bg, c, p=0.15)


def _caption_grouped(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    """Counts over a shared attribute: "two circles, one red and one blue", "two red squares"."""
    shared_shape = len({o.shape for o in objs}) < len(objs)
    shared_color = len({o.color for o in objs}) < len(objs)
    by_shape = c.chance(0.5) if shared_shape and shared_color else shared_shape
    groups: dict[str, list[_Object]] = {}
    for o in c.shuffled(objs):
        groups.setdefault(o.shape if by_shape else o.color, []).append(o)
    parts = []
    for members in groups.values():
        o, count = members[0], _number(len(members), c)
        if len(members) == 1:
            parts.append(_noun_phrase(o, c, "adj", False))
        elif by_shape:
            colors = [m.color for m in members]
            if len(set(colors)) == 1:
                parts.append(f"{count} {o.color} {_shape_word(o.shape, c, plural=True)}")
            elif c.chance(0.5):
                parts.append(f"{count} {_shape_word(o.shape, c, plural=True)}, "
                             + " and ".join(f"one {x}" for x in colors))
            else:  # "a red and a blue circle"
                parts.append(" and ".join(_with_article(x) for x in colors) + f" {_shape_word(o.shape, c)}")
        else:
            shapes = ", ".join(_with_article(_shape_word(m.shape, c)) for m in members[:-1])
            shapes += " and " + _with_article(_shape_word(members[-1].shape, c))
            if c.chance(0.5):
                parts.append(f"{count} {o.color} {c.pick(('shapes', 'objects'))}, {shapes}")
            else:
                parts.append(f"{shapes}, {'both' if len(members) == 2 else 'all'} {o.color}")
    return _maybe_background("; ".join(parts), bg, c, p=0.15)


def _caption(objs: list[_Object], bg: _Background, c: _Chooser) -> str:
    n = len(objs)
    distinct_shapes = len({o.shape for o in objs}) == n
    distinct_colors = len({o.color for o in objs}) == n
    styles = [(_caption_list, 2.0), (_caption_count, 1.5), (_caption_position, 1.5), (_caption_terse, 1.0)]
    if distinct_shapes or distinct_colors:  # else "the circle is red, the circle is blue" is ambiguous
        styles.append((_caption_attribute, 1.0))
    if n >= 2:
        styles.append((_caption_relation, 3.0))
        if not (distinct_shapes and distinct_colors):
            styles.append((_caption_grouped, 1.5))
    return " ".join(c.weighted(styles)(objs, bg, c).split())


def _captions(objs: list[_Object], bg: _Background, rng: np.random.Generator) -> list[str]:
    """NUM_CAPTIONS captions of at most MAX_CAPTION_WORDS words, distinct as token sequences
    (texts differing only in punctuation would be the same caption to every model)."""
    c = _Chooser(rng)
    out: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(50 * NUM_CAPTIONS):
        text = _caption(objs, bg, c)
        tokens = tuple(tokenize(text))
        if tokens not in seen and len(tokens) <= MAX_CAPTION_WORDS:
            seen.add(tokens)
            out.append(text)
            if len(out) == NUM_CAPTIONS:
                return out
    raise RuntimeError("shapes: could not generate enough distinct captions")  # never seen in practice


# ---------------------------------------------------------------------------------------------
# Rendering


@lru_cache(maxsize=16)
def _pixel_centres(resolution: int) -> np.ndarray:
    """(R,) float32 pixel-centre coordinates in [0, 1]."""
    return ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution).astype(np.float32)


@lru_cache(maxsize=16)
def _smooth_interp(resolution: int) -> np.ndarray:
    """(R, G) row-normalised Gaussian weights: grid values -> smooth noise, t = A @ grid @ A.T.

    Normalised weights keep t inside the grid's value range, and a Gaussian (unlike bilinear)
    has no visible creases at the control points at 256x256.
    """
    x = _pixel_centres(resolution).astype(np.float64)[:, None]
    knots = np.linspace(0.0, 1.0, _MOTTLE_GRID)[None, :]
    w = np.exp(-0.5 * ((x - knots) / 0.18) ** 2)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def _background_field(bg: _Background, resolution: int) -> np.ndarray:
    """(R, R) float32 mixing weight t in [0, 1] between the two background colours."""
    x = _pixel_centres(resolution) - 0.5  # (R,)
    ca, sa = math.cos(bg.angle), math.sin(bg.angle)
    if bg.kind == "gradient":
        return 0.5 + (np.add.outer(sa * x, ca * x)) / (abs(ca) + abs(sa))  # rows = y, cols = x
    if bg.kind == "stripes":
        w = 2.0 * math.pi * bg.freq
        ax, ay = w * ca * x, w * sa * x + bg.phase  # phase per column / per row
        # sin(ay + ax) as two outer products: far cheaper than np.sin on R*R values at 256.
        return 0.5 + 0.5 * (np.outer(np.sin(ay), np.cos(ax)) + np.outer(np.cos(ay), np.sin(ax)))
    a = _smooth_interp(resolution)
    t = a @ bg.grid @ a.T  # (R, R)
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-6)


def _sdf(o: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (normalised units, < 0 inside) of object `o` at offsets u (1, w), v (h, 1).

    Each formula has unit gradient near the edges (exact for circle/edges; corners are
    approximations), which is all the 1-pixel anti-aliasing ramp needs.
    """
    s = o.s
    if o.shape == "circle":
        return np.sqrt(u * u + v * v) - s
    ca, sa = math.cos(o.angle), math.sin(o.angle)
    ru = np.abs(ca * u + sa * v)  # (h, w) rotated coordinates, folded by the shape's symmetry
    rv = -sa * u + ca * v
    if o.shape == "square":
        return np.maximum(ru, np.abs(rv)) - _SQUARE_HALF * s
    if o.shape == "diamond":
        return (ru + np.abs(rv) - _DIAMOND_HALF * s) * (1.0 / math.sqrt(2.0))
    if o.shape == "triangle":
        # Equilateral, apex up (y down), centred on its centroid: the three edges lie at the
        # inradius R/2 along normals (0, 1) and (+-sin 60, -cos 60).
        return np.maximum(rv, (math.sqrt(3.0) / 2.0) * ru - 0.5 * rv) - 0.5 * _TRIANGLE_R * s
    # cross: union of a horizontal and a vertical bar
    rv = np.abs(rv)
    long, half = _CROSS_LONG * s, _CROSS_HALF_WIDTH * s
    return np.minimum(np.maximum(ru - long, rv - half), np.maximum(ru - half, rv - long))


def _render(objs: list[_Object], bg: _Background, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Image (R, R, 3) uint8 and layout (R, R) uint8 of a scene."""
    r = resolution
    t = _background_field(bg, r)  # (R, R)
    img = bg.c1 + t[:, :, None] * (bg.c2 - bg.c1)  # (R, R, 3) float32, 0..255
    layout = np.zeros((r, r), dtype=np.uint8)
    xs = _pixel_centres(r)
    for o in objs:  # drawing order = occlusion order, for the image and the layout alike
        ext = _BOUND[o.shape] * o.s + 1.5 / r  # bounding box + the anti-aliasing ramp
        c0, c1 = max(0, int((o.cx - ext) * r)), min(r, int(math.ceil((o.cx + ext) * r)))
        r0, r1 = max(0, int((o.cy - ext) * r)), min(r, int(math.ceil((o.cy + ext) * r)))
        sdf = _sdf(o, (xs[c0:c1] - o.cx)[None, :], (xs[r0:r1] - o.cy)[:, None])  # (h, w)
        # Coverage: 1 pixel wide linear ramp centred on the edge (0.5 where the edge crosses the
        # pixel centre), so layout (centre inside <=> sdf <= 0) and alpha >= 0.5 agree.
        alpha = np.clip(0.5 - sdf * r, 0.0, 1.0)[:, :, None]  # (h, w, 1)
        patch = img[r0:r1, c0:c1]
        patch += (np.asarray(o.rgb, dtype=np.float32) - patch) * alpha
        layout[r0:r1, c0:c1][sdf <= 0] = 1 + SHAPE_NAMES.index(o.shape)
    return (img + 0.5).astype(np.uint8), layout


# ---------------------------------------------------------------------------------------------
# Source


class ShapesSource:
    """n procedural samples at `resolution`; item i is a pure function of (seed, i, resolution)."""

    def __init__(self, n: int, resolution: int, seed: int, max_objects: int = MAX_OBJECTS,
                 object_size: str = "mixed"):
        if not isinstance(max_objects, int) or not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects: must be an integer in 1..{MAX_OBJECTS}, got {max_objects!r}")
        if object_size not in OBJECT_SIZES:
            raise ValueError(f"object_size: must be one of {', '.join(OBJECT_SIZES)}, got {object_size!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a positive integer, got {n!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution: must be an integer >= 8, got {resolution!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
        self.n, self.resolution, self.seed, self.max_objects = n, resolution, seed, max_objects
        self.object_size = object_size

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        extra = "" if self.max_objects == MAX_OBJECTS else f", max_objects={self.max_objects}"
        extra += "" if self.object_size == "mixed" else f", object_size={self.object_size!r}"
        return f"ShapesSource(n={self.n}, resolution={self.resolution}, seed={self.seed}{extra})"

    def _check(self, i: int) -> int:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"index: must be an integer, got {type(i).__name__}")
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        return i

    def _scene(self, i: int) -> tuple[list[_Object], _Background, np.random.Generator]:
        # The rng is returned so the captions continue the same stream: scene draws come first,
        # so rendering never depends on how many draws the captions took.
        rng = np.random.default_rng([self.seed, i])
        bg = _sample_background(rng)
        return _sample_objects(rng, self.max_objects, self.object_size == "large"), bg, rng

    def __getitem__(self, i: int) -> Sample:
        i = self._check(i)
        objs, bg, rng = self._scene(i)
        captions = _captions(objs, bg, rng)
        image, layout = _render(objs, bg, self.resolution)
        return Sample(image=image, captions=captions, layout=layout, meta=self._meta(i, objs))

    @staticmethod
    def _meta(i: int, objs: list[_Object]) -> dict[str, Any]:
        return {"index": i, "objects": [o.as_meta() for o in objs]}

    def captions(self, i: int) -> list[str]:
        """The 10 captions of item i, without rendering."""
        i = self._check(i)
        objs, bg, rng = self._scene(i)
        return _captions(objs, bg, rng)

    def meta(self, i: int) -> dict[str, Any]:
        """The ground-truth objects of item i, without rendering or captions."""
        i = self._check(i)
        return self._meta(i, self._scene(i)[0])

    def image(self, i: int) -> np.ndarray:
        """(R, R, 3) uint8 image of item i, without captions (identical to self[i].image)."""
        i = self._check(i)
        objs, bg, _ = self._scene(i)
        return _render(objs, bg, self.resolution)[0]

    def images(self) -> np.ndarray:
        """(n, R, R, 3) uint8: every image, rendered now."""
        out = np.empty((self.n, self.resolution, self.resolution, 3), dtype=np.uint8)
        for i in range(self.n):
            out[i] = self.image(i)
        return out

    def layout(self, i: int) -> np.ndarray:
        """(R, R) uint8 layout of item i: 0 background, 1 + shape index (identical to self[i].layout)."""
        i = self._check(i)
        objs, bg, _ = self._scene(i)
        return _render(objs, bg, self.resolution)[1]

    def layouts(self) -> np.ndarray:
        """(n, R, R) uint8: every layout, rendered now."""
        out = np.empty((self.n, self.resolution, self.resolution), dtype=np.uint8)
        for i in range(self.n):
            out[i] = self.layout(i)
        return out

    def all_captions(self) -> list[str]:
        """n * 10 captions, item-major (captions of item 0, then item 1, ...)."""
        return [cap for i in range(self.n) for cap in self.captions(i)]


def split_seed(data_seed: int, split: str) -> int:
    """The source seed of a split: train and test never share a per-item rng stream."""
    if split not in ("train", "test"):
        raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
    return 2 * data_seed + (0 if split == "train" else 1)


def _require_shapes(data_cfg: DataConfig, what: str) -> None:
    if data_cfg.dataset != "shapes":
        raise ValueError(f"t2i_ray.data.shapes.{what} builds only the procedural 'shapes' dataset, not "
                         f"data.dataset={data_cfg.dataset!r}; read datasets by config through "
                         f"t2i_ray.data.registry.{what} (or registry.source(cfg, split)), which knows every "
                         f"dataset and its cache")


def build_source(data_cfg: DataConfig, split: Literal["train", "test"]) -> ShapesSource:
    """A split of the procedural dataset (data.dataset must be 'shapes'; others: the registry)."""
    _require_shapes(data_cfg, "build_source")
    n = data_cfg.num_train if split == "train" else data_cfg.num_test
    return source_like(data_cfg, n, split_seed(data_cfg.data_seed, split))


def source_like(data_cfg: DataConfig, n: int, seed: int) -> ShapesSource:
    """n items from `seed` at the data config's resolution and difficulty (the splits, and the
    evaluator's and segmenter's own pools of freshly drawn images)."""
    return ShapesSource(n, data_cfg.resolution, seed, data_cfg.max_objects, data_cfg.object_size)


def difficulty_key(data_cfg: DataConfig) -> dict[str, Any]:
    """The dataset's difficulty settings for a cache key (the evaluator's, the segmenter's), only
    where lowered: the caches of the full dataset keep the keys they had before the setting existed."""
    key: dict[str, Any] = {"max_objects": data_cfg.max_objects} if data_cfg.max_objects != MAX_OBJECTS else {}
    if data_cfg.object_size != "mixed":
        key["object_size"] = data_cfg.object_size
    return key


def build_vocabulary(data_cfg: DataConfig) -> Vocabulary:
    """The vocabulary of the train + test captions (sorted, so it depends only on the word set)."""
    _require_shapes(data_cfg, "build_vocabulary")
    train, test = build_source(data_cfg, "train"), build_source(data_cfg, "test")
    return Vocabulary.build([*train.all_captions(), *test.all_captions()])
