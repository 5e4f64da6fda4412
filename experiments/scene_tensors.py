"""Render a split of the scenes benchmark once into uint8 tensors (cached on disk) for fast CPU training.

`pose="upright"` re-renders every scene with its objects turned upright (angle squeezed into
±`UPRIGHT_TILT`); everything else (shape, texture, colours, layout, clutter) is the generator's own
scene. It exists for the RotNet pretext: the generator rotates objects uniformly over 360° and its
background is isotropic, so rotation is not identifiable on its scenes (see docs/benchmark.md).
`pose="upright_lit"` adds light from above to the upright scenes: every object casts a soft drop
shadow straight below it onto the background, as in natural photographs. That makes the rotation
identifiable for every shape, symmetric ones included, but only next to an object.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from sslx.data.scenes import GENERATOR_VERSION, SceneSpec, ScenesDataset, render_scene
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD

POSES = ("generator", "upright", "upright_lit")
UPRIGHT_TILT = math.radians(15.0)
SHADOW_OFFSET = 0.03    # how far below its object a shadow falls, fraction of the image side
SHADOW_SOFTNESS = 0.02  # half-width of the shadow's box blur, fraction of the image side
SHADOW_DARKNESS = 0.4   # fraction of the background's brightness a full shadow takes away
DEFAULT_CACHE = Path(os.environ.get("SSLX_SCENE_CACHE", Path(tempfile.gettempdir()) / "sslx_scene_tensors"))


@dataclass(frozen=True)
class SceneTensors:
    """One rendered split: images uint8 N×3×H×W, label int64 N (class of object 1), object_labels N×2 (−1 = none)."""

    images: Tensor
    labels: Tensor
    object_labels: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def upright(spec: SceneSpec, tilt: float = UPRIGHT_TILT) -> SceneSpec:
    """The same scene with every object's angle mapped from [0, 2π) onto [−tilt, tilt] (deterministic)."""
    objects = tuple(dataclasses.replace(o, angle=(o.angle / (2 * math.pi) - 0.5) * 2 * tilt) for o in spec.objects)
    return dataclasses.replace(spec, objects=objects)


def drop_shadow(images: Tensor, instance: Tensor, offset: float = SHADOW_OFFSET, softness: float = SHADOW_SOFTNESS,
                darkness: float = SHADOW_DARKNESS) -> Tensor:
    """uint8 B×3×H×W scenes with light from above: the background below every object is darkened by the
    object's instance mask (B×H×W, 0 = background) moved down by `offset` and box-blurred by `softness`."""
    if images.dtype != torch.uint8 or images.dim() != 4 or instance.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"need uint8 B×3×H×W images and a B×H×W instance map, got {images.dtype} "
                         f"{tuple(images.shape)} and {tuple(instance.shape)}")
    side = images.shape[-1]
    shift, blur = max(1, round(offset * side)), max(1, round(softness * side))
    occupied = (instance > 0).float().unsqueeze(1)
    below = F.pad(occupied, (0, 0, shift, 0))[:, :, :-shift]                  # row y holds the mask of row y − shift
    shadow = F.avg_pool2d(below, 2 * blur + 1, stride=1, padding=blur, count_include_pad=True)
    shadow = shadow * (1 - occupied)                                          # cast on the background only
    return (images.float() * (1 - darkness * shadow)).round().clamp(0, 255).to(torch.uint8)


def render_split(split: str, size: int, objects: str = "single", pose: str = "generator", seed: int = 0,
                 resolution: int = 128) -> SceneTensors:
    """Render scenes 0..size-1 of a split (the same scenes ScenesDataset gives) into uint8 tensors."""
    if pose not in POSES:
        raise ValueError(f"pose must be one of {POSES}, got {pose!r}")
    ds = ScenesDataset(split, size=size, seed=seed, resolution=resolution, objects=objects)
    images = torch.empty((size, 3, resolution, resolution), dtype=torch.uint8)
    instance = torch.empty((size, resolution, resolution), dtype=torch.uint8)
    object_labels = torch.full((size, 2), -1, dtype=torch.long)
    for i in range(size):  # one-off data preparation, not a training hot path
        spec = ds.scene(i)
        if pose != "generator":
            spec = upright(spec)
        rendered = render_scene(spec, resolution)
        images[i], instance[i] = torch.from_numpy(rendered.image), torch.from_numpy(rendered.instance)
        ids = ds.class_ids(i)
        object_labels[i, : len(ids)] = torch.tensor(ids)
    if pose == "upright_lit":
        for s in range(0, size, 500):
            images[s:s + 500] = drop_shadow(images[s:s + 500], instance[s:s + 500])
    return SceneTensors(images, object_labels[:, 0].clone(), object_labels)


def cache_name(split: str, size: int, objects: str, pose: str, seed: int, resolution: int) -> str:
    """File name that identifies a rendered split (includes the generator version)."""
    return f"scenes-v{GENERATOR_VERSION}-{split}-n{size}-{objects}-{pose}-seed{seed}-r{resolution}.pt"


def load_split(split: str, size: int, objects: str = "single", pose: str = "generator", seed: int = 0,
               resolution: int = 128, cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> SceneTensors:
    """`render_split`, read from / written to `cache_dir` (atomic write; None disables the cache)."""
    if cache_dir is None:
        return render_split(split, size, objects, pose, seed, resolution)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_name(split, size, objects, pose, seed, resolution)
    if path.is_file():
        return _read_cached(path, size, resolution)
    larger = _larger_cached(folder, split, size, objects, pose, seed, resolution)
    if larger is not None:  # scene i does not depend on the split size, so a prefix is the same data
        data = _read_cached(larger[1], larger[0], resolution)
        return SceneTensors(data.images[:size].clone(), data.labels[:size].clone(), data.object_labels[:size].clone())
    data = render_split(split, size, objects, pose, seed, resolution)
    _atomic_save({"images": data.images, "labels": data.labels, "object_labels": data.object_labels}, path)
    return data


@dataclass(frozen=True)
class SceneLayers:
    """Per scene: its instance map (uint8 N×H×W, 0 = background) and its background without objects (uint8 N×3×H×W)."""

    instance: Tensor
    background: Tensor


def render_layers(split: str, size: int, objects: str = "single", seed: int = 0, resolution: int = 128) -> SceneLayers:
    """Instance maps and object-free backgrounds of scenes 0..size-1 of a split (generator pose)."""
    ds = ScenesDataset(split, size=size, seed=seed, resolution=resolution, objects=objects)
    instance = torch.empty((size, resolution, resolution), dtype=torch.uint8)
    background = torch.empty((size, 3, resolution, resolution), dtype=torch.uint8)
    for i in range(size):  # one-off data preparation, not a training hot path
        spec = ds.scene(i)
        instance[i] = torch.from_numpy(render_scene(spec, resolution).instance)
        background[i] = torch.from_numpy(render_scene(spec, resolution, drop=range(1, len(spec.objects) + 1)).image)
    return SceneLayers(instance, background)


def load_layers(split: str, size: int, objects: str = "single", seed: int = 0, resolution: int = 128,
                cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> SceneLayers:
    """`render_layers`, read from / written to `cache_dir` (atomic write; None disables the cache)."""
    if cache_dir is None:
        return render_layers(split, size, objects, seed, resolution)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_name(split, size, objects, "layers", seed, resolution)
    if not path.is_file():
        layers = render_layers(split, size, objects, seed, resolution)
        _atomic_save({"instance": layers.instance, "background": layers.background}, path)
        return layers
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        layers = SceneLayers(stored["instance"], stored["background"])
    except Exception as exc:  # torch reports damaged files with many exception types
        raise ValueError(f"scene layer cache {str(path)!r} is corrupt or foreign ({type(exc).__name__}: {exc}); "
                         "delete it") from exc
    if (tuple(layers.instance.shape) != (size, resolution, resolution)
            or tuple(layers.background.shape) != (size, 3, resolution, resolution)):
        raise ValueError(f"scene layer cache {str(path)!r} holds {tuple(layers.background.shape)} backgrounds, "
                         f"expected {(size, 3, resolution, resolution)}; delete it")
    return layers


def _atomic_save(obj: dict[str, Tensor], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _larger_cached(folder: Path, split: str, size: int, objects: str, pose: str, seed: int,
                   resolution: int) -> tuple[int, Path] | None:
    """(n, path) of the smallest cached render of the same split with n > size scenes, if any."""
    prefix, suffix = cache_name(split, 0, objects, pose, seed, resolution).split("-n0-")
    found = []
    for path in folder.glob(f"{prefix}-n*-{suffix}"):
        count = path.name[len(prefix) + 2: -len(suffix) - 1]
        if count.isdigit() and int(count) > size:
            found.append((int(count), path))
    return min(found) if found else None


def _read_cached(path: Path, size: int, resolution: int) -> SceneTensors:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        data = SceneTensors(stored["images"], stored["labels"], stored["object_labels"])
    except Exception as exc:  # torch reports damaged files with many exception types
        raise ValueError(f"scene tensor cache {str(path)!r} is corrupt or foreign ({type(exc).__name__}: {exc}); "
                         "delete it") from exc
    expected = (size, 3, resolution, resolution)
    if (tuple(data.images.shape) != expected or data.images.dtype != torch.uint8
            or tuple(data.labels.shape) != (size,) or tuple(data.object_labels.shape) != (size, 2)):
        raise ValueError(f"scene tensor cache {str(path)!r} holds images {tuple(data.images.shape)} "
                         f"{data.images.dtype}, expected {expected} uint8; delete it")
    return data


def to_input(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 B×3×H×W scenes → ImageNet-normalised float inputs (the normalisation ScenesDataset applies)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 B×3×H×W, got {images.dtype} {tuple(images.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) / 255 - mean) / std
