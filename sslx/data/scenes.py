"""Procedural scenes benchmark: shapes on textured clutter with exact class and instance masks.

A scene is first *sampled* into a resolution-free `SceneSpec` (all random choices, in unit image
coordinates) and then *rendered* at any resolution.  Rendering can leave objects out, which is how
the tests prove that the masks are exactly the pixels where an object was drawn.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from sslx._io import atomic_write
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD, check_mean_std, denormalize, normalize

# Bump when the generator changes what a (seed, split, index) renders; it is part of the cache key.
GENERATOR_VERSION = 2

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES: dict[str, int] = {"train": 12000, "val": 1200, "test": 1200}
OBJECT_MODES = ("single", "pair", "mixed")
TEXTURES = ("solid", "stripes", "dots", "gradient", "checker")

_LUMA = np.array([0.299, 0.587, 0.114])
_COLOR_LO, _COLOR_HI = 0.03, 0.97
_CONTRAST_MARGIN = 0.12  # luminance gap between any object pixel and the background band
_SENSOR_NOISE = 0.02
MAX_TILT = math.radians(10.0)  # objects stand upright, tilted uniformly within ±MAX_TILT
MAX_ASPECT = 1.15              # per-object stretch: width × a, height ÷ a, a in [1/MAX_ASPECT, MAX_ASPECT]
ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# Shapes: inside-tests in object-local coordinates; every shape lies inside the unit disc.
# --------------------------------------------------------------------------------------------
def _polygon(vertices: Sequence[tuple[float, float]]) -> ShapeFn:
    vx = np.array([p[0] for p in vertices], dtype=np.float32)
    vy = np.array([p[1] for p in vertices], dtype=np.float32)
    wx, wy = np.roll(vx, -1), np.roll(vy, -1)

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        odd = np.zeros(u.shape, dtype=bool)
        for x1, y1, x2, y2 in zip(vx, vy, wx, wy):  # even-odd rule, one pass per edge
            if y1 == y2:
                continue
            crosses = (y1 > v) != (y2 > v)
            odd ^= crosses & (u < x1 + (v - y1) * ((x2 - x1) / (y2 - y1)))
        return odd

    return inside


def _regular(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    return [((outer if k % 2 == 0 else inner) * math.cos(-math.pi / 2 + math.pi * k / points),
             (outer if k % 2 == 0 else inner) * math.sin(-math.pi / 2 + math.pi * k / points))
            for k in range(2 * points)]


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u / 0.72, 0.2 - v / 0.72
    q = x * x + y * y - 1.0
    return q * q * q - x * x * y * y * y <= 0


_DROP_TIP = _polygon([(0.0, -0.92), (0.5, 0.12), (-0.5, 0.12)])


def _drop(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + (v - 0.3) ** 2 <= 0.55 ** 2) | _DROP_TIP(u, v)


# Object-local coordinates: u to the right, v downwards. Every shape is upright (a canonical pose,
# tilted by at most MAX_TILT in a scene) and none maps onto itself under a 90°, 180° or 270° turn,
# so the rotation of a scene is identifiable (the RotNet pretext) and "up" means something.
SHAPES: dict[str, ShapeFn] = {
    "drop": _drop,
    "house": _polygon([(-0.6, 0.7), (0.6, 0.7), (0.6, -0.1), (0.0, -0.8), (-0.6, -0.1)]),
    "triangle": _polygon([(0.0, -0.9), (0.55, 0.7), (-0.55, 0.7)]),
    "star": _polygon(_star(5, 0.95, 0.4)),
    "latin_cross": lambda u, v: (((np.abs(u) <= 0.2) & (v >= -0.85) & (v <= 0.9))
                                 | ((np.abs(v + 0.35) <= 0.2) & (np.abs(u) <= 0.65))),
    "horseshoe": lambda u, v: (((u * u + v * v) <= 0.88 ** 2) & ((u * u + v * v) >= 0.5 ** 2)
                               & ~((np.abs(u) < 0.3) & (v > 0))),
    "crescent": lambda u, v: (u * u + v * v <= 0.85 ** 2) & ((u - 0.42) ** 2 + v * v > 0.68 ** 2),
    "heart": _heart,
    "trapezoid": _polygon([(-0.8, 0.5), (0.8, 0.5), (0.35, -0.55), (-0.35, -0.55)]),
    "arrow": _polygon([(-0.9, -0.2), (0.15, -0.2), (0.15, -0.55), (0.9, 0.0),
                       (0.15, 0.55), (0.15, 0.2), (-0.9, 0.2)]),
    "dome": lambda u, v: (u * u + (v - 0.35) ** 2 <= 0.85 ** 2) & (v <= 0.35),
    "l_shape": _polygon([(-0.65, -0.7), (-0.2, -0.7), (-0.2, 0.25), (0.65, 0.25), (0.65, 0.7), (-0.65, 0.7)]),
}
SCENE_CLASSES: tuple[str, ...] = tuple(SHAPES)


# --------------------------------------------------------------------------------------------
# Scene description (resolution-free; all lengths are fractions of the image side)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectSpec:
    """One object: class, pose and texture."""

    class_id: int
    center: tuple[float, float]   # (x, y) in [0, 1]
    radius: float                 # radius of the shape's enclosing disc (before the stretch)
    angle: float                  # tilt in radians (clockwise on screen), |angle| <= MAX_TILT
    texture: str
    colors: tuple[tuple[float, float, float], tuple[float, float, float]]
    texture_period: float         # in units of the object radius
    texture_angle: float
    texture_phase: tuple[float, float]
    aspect: float = 1.0           # width × aspect, height ÷ aspect (area-preserving)


@dataclass(frozen=True, eq=False)
class BackgroundSpec:
    """Low-contrast clutter: every background pixel stays within base ± amplitude per channel."""

    base: tuple[float, float, float]
    amplitude: float
    field: np.ndarray             # 3×g×g coarse colour field in [-1, 1], upsampled bilinearly
    blobs: np.ndarray             # n×9: cx, cy, rx, ry, angle, weight, r, g, b
    lines: np.ndarray             # m×6 straight bands (see `_sample_bars`)


@dataclass(frozen=True, eq=False)
class SceneSpec:
    """Everything random about one scene; `render_scene` turns it into pixels."""

    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]   # instance order: objects[0] is instance 1 and defines the label
    draw_order: tuple[int, ...]       # indices into `objects`, bottom to top
    occluders: np.ndarray             # k×6 bands drawn over the objects (same layout as lines)
    noise_seed: int


@dataclass(frozen=True, eq=False)
class RenderedScene:
    """Pixels of one scene: uint8 image 3×H×W, class map and instance map (H×W uint8)."""

    image: np.ndarray
    mask: np.ndarray
    instance: np.ndarray


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def _sample_color(rng: np.random.Generator, lum_lo: float, lum_hi: float) -> tuple[float, float, float]:
    """A random hue/saturation with luminance drawn from [lum_lo, lum_hi], inside the colour box."""
    lum = rng.uniform(lum_lo, lum_hi)
    chroma = rng.random(3)
    chroma -= chroma @ _LUMA
    with np.errstate(divide="ignore", invalid="ignore"):
        limits = np.where(chroma > 0, (_COLOR_HI - lum) / chroma, (_COLOR_LO - lum) / chroma)
    valid = limits[np.abs(chroma) > 1e-9]
    s_max = float(valid.min()) if valid.size else 0.0
    color = lum + rng.uniform(0.25, 1.0) * s_max * chroma  # keeps the luminance exactly
    return tuple(float(c) for c in np.clip(color, _COLOR_LO, _COLOR_HI))  # type: ignore[return-value]


def _object_luminance_range(rng: np.random.Generator, bg: BackgroundSpec) -> tuple[float, float]:
    """Pick brighter- or darker-than-background luminance so every object pixel contrasts."""
    lum0 = float(np.dot(bg.base, _LUMA))
    gap = bg.amplitude + _CONTRAST_MARGIN
    sides = []
    if lum0 + gap + 0.08 <= _COLOR_HI:
        sides.append((lum0 + gap, _COLOR_HI))
    if lum0 - gap - 0.08 >= _COLOR_LO:
        sides.append((_COLOR_LO, lum0 - gap))
    return sides[int(rng.integers(len(sides)))]


def _sample_background(rng: np.random.Generator) -> BackgroundSpec:
    base = rng.uniform(0.2, 0.8, size=3)
    n_blobs, n_lines = int(rng.integers(3, 8)), int(rng.integers(2, 7))
    blobs = np.column_stack([
        rng.uniform(0, 1, (n_blobs, 2)), rng.uniform(0.04, 0.22, (n_blobs, 2)),
        rng.uniform(0, math.pi, n_blobs), rng.uniform(0.3, 0.8, n_blobs), rng.uniform(-1, 1, (n_blobs, 3)),
    ])
    return BackgroundSpec(
        base=tuple(float(b) for b in base),  # type: ignore[arg-type]
        amplitude=float(rng.uniform(0.06, 0.12)),
        field=rng.uniform(-1, 1, (3, 5, 5)).astype(np.float32) * rng.uniform(0.3, 0.8),
        blobs=blobs.astype(np.float32),
        lines=_sample_bars(rng, n_lines, 0.003, 0.012),
    )


def _sample_bars(rng: np.random.Generator, n: int, min_half_width: float, max_half_width: float) -> np.ndarray:
    """n×6 straight bands: normal angle, offset from the centre, half width, colour (r, g, b in [-1, 1])."""
    return np.column_stack([
        rng.uniform(0, math.pi, n), rng.uniform(-0.45, 0.45, n), rng.uniform(min_half_width, max_half_width, n),
        rng.uniform(-1, 1, (n, 3)),
    ]).astype(np.float32)


def _sample_object(rng: np.random.Generator, class_id: int, center: tuple[float, float], radius: float,
                   lum_range: tuple[float, float]) -> ObjectSpec:
    angle = float(rng.uniform(-MAX_TILT, MAX_TILT))
    aspect = float(math.exp(rng.uniform(-math.log(MAX_ASPECT), math.log(MAX_ASPECT))))
    return _with_appearance(rng, class_id, center, radius, angle, aspect, lum_range)


def _with_appearance(rng: np.random.Generator, class_id: int, center: tuple[float, float], radius: float,
                     angle: float, aspect: float, lum_range: tuple[float, float]) -> ObjectSpec:
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    return ObjectSpec(
        class_id=class_id, center=center, radius=radius, angle=angle,
        texture=texture, colors=(_sample_color(rng, *lum_range), _sample_color(rng, *lum_range)),
        texture_period=float(rng.uniform(0.25, 0.6)), texture_angle=float(rng.uniform(0, math.pi)),
        texture_phase=(float(rng.random()), float(rng.random())), aspect=aspect,
    )


def _pair_layout(rng: np.random.Generator, r1: float, r2: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Two centres 0.45–1.4×(r1+r2) apart (overlap, if any, leaves both mostly visible), both inside the frame."""
    lo1, lo2 = 0.85 * r1, 0.85 * r2
    d_min = 0.45 * (r1 + r2)
    for attempt in range(21):
        phi = rng.uniform(0, 2 * math.pi) if attempt < 20 else math.pi / 4
        d = rng.uniform(d_min, 1.4 * (r1 + r2))
        dx, dy = math.cos(phi), math.sin(phi)
        room = 0.999 * (1.0 - lo1 - lo2)  # margin keeps the sampling intervals non-empty
        d = min(d, room / max(abs(dx), 1e-9), room / max(abs(dy), 1e-9))
        if d < d_min and attempt < 20:
            continue
        dx, dy = d * dx, d * dy
        x1 = rng.uniform(max(lo1, lo2 - dx), min(1 - lo1, 1 - lo2 - dx))
        y1 = rng.uniform(max(lo1, lo2 - dy), min(1 - lo1, 1 - lo2 - dy))
        return (float(x1), float(y1)), (float(x1 + dx), float(y1 + dy))
    raise AssertionError("unreachable: the diagonal layout always fits")


def pair_class(index: int, num_classes: int) -> int:
    """Class of the second object: cycles through all other classes so ordered pairs stay balanced."""
    first = index % num_classes
    return (first + 1 + (index // num_classes) % (num_classes - 1)) % num_classes


def _single_center(rng: np.random.Generator, r: float) -> tuple[float, float]:
    return (float(rng.uniform(0.85 * r, 1 - 0.85 * r)), float(rng.uniform(0.85 * r, 1 - 0.85 * r)))


def _finish_scene(rng: np.random.Generator, bg: BackgroundSpec, objects: tuple[ObjectSpec, ...]) -> SceneSpec:
    order = (0,) if len(objects) == 1 else ((0, 1) if rng.random() < 0.5 else (1, 0))
    n_occluders = int(rng.integers(1, 3)) if rng.random() < 0.3 else 0
    return SceneSpec(background=bg, objects=objects, draw_order=order,
                     occluders=_sample_bars(rng, n_occluders, 0.006, 0.015),
                     noise_seed=int(rng.integers(2 ** 63)))


def sample_scene(rng: np.random.Generator, class_ids: Sequence[int]) -> SceneSpec:
    """Draw one scene holding objects of `class_ids` (one class, or two different classes)."""
    if len(class_ids) not in (1, 2) or len(set(class_ids)) != len(class_ids):
        raise ValueError(f"class_ids must be one class or two different classes, got {list(class_ids)}")
    bg = _sample_background(rng)
    lum_range = _object_luminance_range(rng, bg)
    if len(class_ids) == 1:
        r = float(rng.uniform(0.26, 0.42))
        objects: tuple[ObjectSpec, ...] = (_sample_object(rng, class_ids[0], _single_center(rng, r), r, lum_range),)
    else:
        r1, r2 = (float(x) for x in rng.uniform(0.17, 0.27, 2))
        c1, c2 = _pair_layout(rng, r1, r2)
        objects = (_sample_object(rng, class_ids[0], c1, r1, lum_range),
                   _sample_object(rng, class_ids[1], c2, r2, lum_range))
    return _finish_scene(rng, bg, objects)


def redraw_scene(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Another view of the same objects: their geometry (class, size, tilt, stretch) kept, and
    everything else — background clutter, position, colours, texture, occluders, noise — drawn anew.

    The self-supervised models use such views as positive pairs (docs/benchmark.md): two views share
    nothing but the objects' shapes, so no background or colour shortcut can match them.
    """
    if not isinstance(spec, SceneSpec):
        raise TypeError(f"spec must be a SceneSpec (see sample_scene), got {type(spec).__name__}")
    bg = _sample_background(rng)
    lum_range = _object_luminance_range(rng, bg)
    if len(spec.objects) == 1:
        centers = [_single_center(rng, spec.objects[0].radius)]
    else:
        centers = list(_pair_layout(rng, spec.objects[0].radius, spec.objects[1].radius))
    objects = tuple(_with_appearance(rng, o.class_id, c, o.radius, o.angle, o.aspect, lum_range)
                    for o, c in zip(spec.objects, centers))
    return _finish_scene(rng, bg, objects)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _pixel_centers(resolution: int) -> np.ndarray:
    return (np.arange(resolution, dtype=np.float32) + 0.5) / resolution


def _bilinear_matrix(resolution: int, grid: int) -> np.ndarray:
    t = _pixel_centers(resolution) * (grid - 1)
    i0 = np.minimum(t.astype(np.int64), grid - 2)
    w = (t - i0).astype(np.float32)
    a = np.zeros((resolution, grid), dtype=np.float32)
    a[np.arange(resolution), i0] = 1 - w
    a[np.arange(resolution), i0 + 1] = w
    return a


def _bars_inside(bars: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """k×H×W: pixels within half_width of each bar (a straight band across the image)."""
    nx, ny = np.cos(bars[:, 0:1, None]), np.sin(bars[:, 0:1, None])
    offset = bars[:, 1:2, None] + 0.5 * (nx + ny)   # the band passes near the image centre
    return np.abs(nx * px + ny * py - offset) <= bars[:, 2:3, None]


def _render_background(bg: BackgroundSpec, resolution: int) -> np.ndarray:
    a = _bilinear_matrix(resolution, bg.field.shape[-1])
    clutter = a @ bg.field @ a.T                                   # 3×H×W smooth colour field
    p = _pixel_centers(resolution)
    px, py = p[None, None, :], p[None, :, None]
    b = bg.blobs
    if len(b):
        du, dv = px - b[:, 0, None, None], py - b[:, 1, None, None]
        c, s = np.cos(b[:, 4, None, None]), np.sin(b[:, 4, None, None])
        irx2, iry2 = 1 / b[:, 2, None, None] ** 2, 1 / b[:, 3, None, None] ** 2
        # rotated ellipse as a quadratic form: A du² + B du dv + C dv² <= 1
        qa, qb, qc = c * c * irx2 + s * s * iry2, 2 * c * s * (irx2 - iry2), s * s * irx2 + c * c * iry2
        inside = (qa * du * du + qc * dv * dv + qb * (du * dv)) <= 1
        # einsum, not tensordot: multi-threaded BLAS is much slower for this shape on a busy machine
        clutter += np.einsum("kc,khw->chw", b[:, 5:6] * b[:, 6:9], inside.astype(np.float32))
    if len(bg.lines):
        clutter += np.einsum("kc,khw->chw", bg.lines[:, 3:6], _bars_inside(bg.lines, px, py).astype(np.float32))
    base = np.asarray(bg.base, dtype=np.float32)[:, None, None]
    return base + np.float32(bg.amplitude) * np.clip(clutter, -1, 1)


def _texture(obj: ObjectSpec, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blend weight in [0,1] between the object's two colours, in object-local coordinates."""
    if obj.texture == "solid":
        return np.zeros_like(u)
    c, s = math.cos(obj.texture_angle), math.sin(obj.texture_angle)
    a, b = c * u + s * v, -s * u + c * v
    p, (ph0, ph1) = obj.texture_period, obj.texture_phase
    if obj.texture == "stripes":
        return (np.floor(a / p + ph0) % 2).astype(np.float32)
    if obj.texture == "checker":
        return ((np.floor(a / p + ph0) + np.floor(b / p + ph1)) % 2).astype(np.float32)
    if obj.texture == "dots":
        fa, fb = a / p + ph0, b / p + ph1
        fa, fb = fa - np.floor(fa) - 0.5, fb - np.floor(fb) - 0.5
        return (fa * fa + fb * fb <= 0.3 ** 2).astype(np.float32)
    if obj.texture == "gradient":
        return np.clip(0.5 + 0.5 * a, 0, 1).astype(np.float32)
    raise ValueError(f"unknown texture {obj.texture!r}; expected one of {TEXTURES}")


def _paint_object(image: np.ndarray, instance: np.ndarray, obj: ObjectSpec, instance_id: int, resolution: int) -> None:
    stretch = max(obj.aspect, 1.0 / obj.aspect)
    cx, cy, r = obj.center[0] * resolution, obj.center[1] * resolution, obj.radius * stretch * resolution
    x0, x1 = max(0, math.floor(cx - r)), min(resolution, math.ceil(cx + r) + 1)
    y0, y1 = max(0, math.floor(cy - r)), min(resolution, math.ceil(cy + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dx = ((np.arange(x0, x1, dtype=np.float32) + 0.5) / resolution - obj.center[0])[None, :]
    dy = ((np.arange(y0, y1, dtype=np.float32) + 0.5) / resolution - obj.center[1])[:, None]
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    u = (c * dx + s * dy) / (obj.radius * obj.aspect)
    v = (-s * dx + c * dy) * obj.aspect / obj.radius
    inside = SHAPES[SCENE_CLASSES[obj.class_id]](u, v)
    col0, col1 = (np.asarray(col, dtype=np.float32)[:, None] for col in obj.colors)
    t = _texture(obj, u[inside], v[inside])
    image[:, y0:y1, x0:x1][:, inside] = col0 + t[None, :] * (col1 - col0)
    instance[y0:y1, x0:x1][inside] = instance_id


def render_scene(spec: SceneSpec, resolution: int = 128, drop: Iterable[int] = ()) -> RenderedScene:
    """Rasterise a scene; instance ids in `drop` (1-based) are left out, all else is identical."""
    if not isinstance(spec, SceneSpec):
        raise TypeError(f"spec must be a SceneSpec (see sample_scene), got {type(spec).__name__}")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 16:
        raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
    dropped = set(drop)
    valid = set(range(1, len(spec.objects) + 1))
    if not dropped <= valid:
        raise ValueError(f"drop must hold instance ids among {sorted(valid)}, got {sorted(dropped, key=repr)}")
    image = _render_background(spec.background, resolution)
    instance = np.zeros((resolution, resolution), dtype=np.uint8)
    for k in spec.draw_order:
        if k + 1 not in dropped:
            _paint_object(image, instance, spec.objects[k], k + 1, resolution)
    if len(spec.occluders):
        p = _pixel_centers(resolution)
        covered = _bars_inside(spec.occluders, p[None, None, :], p[None, :, None])
        base = np.asarray(spec.background.base, dtype=np.float32)
        for bar, where in zip(spec.occluders, covered):
            image[:, where] = (base + spec.background.amplitude * bar[3:6])[:, None]
            instance[where] = 0
    noise = np.random.default_rng(spec.noise_seed).random((resolution, resolution), dtype=np.float32)
    image += (2 * _SENSOR_NOISE) * noise - _SENSOR_NOISE
    pixels = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    lut = np.zeros(len(spec.objects) + 1, dtype=np.uint8)
    lut[1:] = [o.class_id + 1 for o in spec.objects]
    return RenderedScene(image=pixels, mask=lut[instance], instance=instance)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class ScenesDataset(Dataset):
    """Procedural shapes-on-clutter scenes with exact masks, reproducible per (seed, split, index)."""

    classes: tuple[str, ...] = SCENE_CLASSES
    num_classes: int = len(SCENE_CLASSES)

    def __init__(self, split: str = "train", size: int | None = None, seed: int = 0, resolution: int = 128,
                 objects: str = "single", *, pair_fraction: float = 0.5,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 cache: str | os.PathLike | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        if objects not in OBJECT_MODES:
            raise ValueError(f"objects must be one of {OBJECT_MODES}, got {objects!r}")
        if not isinstance(pair_fraction, (int, float)) or not 0.0 <= pair_fraction <= 1.0:
            raise ValueError(f"pair_fraction must be a number in [0, 1], got {pair_fraction!r}")
        self.split, self.objects, self.pair_fraction = split, objects, float(pair_fraction)
        self.size = DEFAULT_SIZES[split] if size is None else _check_int(size, "size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.resolution = _check_int(resolution, "resolution", 32)
        self.mean, self.std = check_mean_std(mean, std)
        self._memory: dict[int, RenderedScene] | None = None
        self._cache_dir: Path | None = None
        if cache == "memory":
            self._memory = {}
        elif cache is not None:
            self._cache_dir = self._prepare_cache_dir(cache)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return (f"ScenesDataset(split={self.split!r}, size={self.size}, seed={self.seed}, "
                f"resolution={self.resolution}, objects={self.objects!r})")

    # ---- scene access ------------------------------------------------------------------------
    def _index(self, index: object) -> int:
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index.item())
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index) + (self.size if index < 0 else 0)
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} out of range for the {self.split} split of size {self.size}")
        return i

    def class_ids(self, index: int) -> tuple[int, ...]:
        """Classes of the objects in scene `index` (first = label, round-robin over the classes)."""
        i = self._index(index)
        first = i % self.num_classes
        if self.objects == "single" or (self.objects == "mixed" and self._rng(i, 1).random() >= self.pair_fraction):
            return (first,)
        return (first, pair_class(i, self.num_classes))

    def _rng(self, index: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[self.split], index, stream, GENERATOR_VERSION])

    def scene(self, index: int) -> SceneSpec:
        """The random description of scene `index` (independent of every other index)."""
        i = self._index(index)
        return sample_scene(self._rng(i), self.class_ids(i))

    def render(self, index: int, drop: Iterable[int] = ()) -> RenderedScene:
        """Pixels of scene `index` at this dataset's resolution, optionally without some instances."""
        return render_scene(self.scene(index), self.resolution, drop)

    # ---- items -------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        i = self._index(index)
        rendered = self._cached_render(i)
        class_ids = self.class_ids(i)
        scale = (1.0 / (255.0 * np.asarray(self.std, dtype=np.float32)))[:, None, None]
        shift = (np.asarray(self.mean, dtype=np.float32) / np.asarray(self.std, dtype=np.float32))[:, None, None]
        image = torch.from_numpy(rendered.image * scale - shift)  # == normalize(image / 255)
        labels = torch.zeros(self.num_classes, dtype=torch.float32)
        labels[list(class_ids)] = 1.0
        object_labels = torch.full((2,), -1, dtype=torch.long)
        object_labels[: len(class_ids)] = torch.tensor(class_ids)
        return {
            "image": image,
            "label": class_ids[0],
            "labels": labels,
            "object_labels": object_labels,
            "mask": torch.from_numpy(rendered.mask).long(),
            "instance": torch.from_numpy(rendered.instance).long(),
            "index": i,
        }

    def normalize(self, batch: Tensor) -> Tensor:
        """[0,1] images → this dataset's normalised inputs."""
        return normalize(batch, self.mean, self.std)

    def denormalize(self, batch: Tensor) -> Tensor:
        """This dataset's normalised inputs → [0,1] images."""
        return denormalize(batch, self.mean, self.std)

    # ---- caching -----------------------------------------------------------------------------
    def _cache_key(self) -> str:
        return (f"scenes-v{GENERATOR_VERSION}-seed{self.seed}-{self.split}-{self.objects}"
                f"-p{self.pair_fraction:g}-r{self.resolution}")

    def _prepare_cache_dir(self, cache: object) -> Path:
        if not isinstance(cache, (str, os.PathLike)):
            raise TypeError(f"cache must be None, 'memory' or a directory path, got {type(cache).__name__}")
        root = Path(cache)
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(f"cache path {str(root)!r} exists and is not a directory")
        path = root / self._cache_key()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _cached_render(self, i: int) -> RenderedScene:
        if self._memory is not None:
            if i not in self._memory:
                self._memory[i] = self.render(i)
            return self._memory[i]
        if self._cache_dir is None:
            return self.render(i)
        path = self._cache_dir / f"{i:07d}.npz"
        if path.exists():
            return self._load_cached(path, i)
        rendered = self.render(i)
        atomic_write(path, lambda f: np.savez(f, image=rendered.image, mask=rendered.mask,
                                              instance=rendered.instance))
        return rendered

    def _load_cached(self, path: Path, i: int) -> RenderedScene:
        r = self.resolution
        expected = {"image": (3, r, r), "mask": (r, r), "instance": (r, r)}
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in expected}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"scene cache file {str(path)!r} is corrupt or foreign ({err}); delete it") from err
        for key, shape in expected.items():
            if arrays[key].shape != shape or arrays[key].dtype != np.uint8:
                raise ValueError(f"scene cache file {str(path)!r} holds {key} of shape {arrays[key].shape} "
                                 f"and dtype {arrays[key].dtype}, expected {shape} uint8; delete it")
        return RenderedScene(**arrays)


def collate_scenes(items: Sequence[dict]) -> dict[str, Tensor | list]:
    """Stack a list of dataset items into a batch (tensors stacked, ints → LongTensor[B])."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    keys = list(items[0])
    for n, item in enumerate(items):
        if list(item) != keys:
            raise ValueError(f"item {n} has keys {sorted(item)}, expected {sorted(keys)}")
    batch: dict[str, Tensor | list] = {}
    for key in keys:
        values = [item[key] for item in items]
        if isinstance(values[0], Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (int, np.integer)) and not isinstance(values[0], bool):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
