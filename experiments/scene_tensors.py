"""Render a split of the scenes benchmark once into uint8 tensors (cached on disk) for fast CPU training.

`load_views` also renders, per scene, extra *views* of its objects (`sslx.data.scenes.redraw_scene`):
the objects' geometry (class, size, tilt, stretch) kept, background, position, colours and texture
drawn anew. The self-supervised models (SCAN's SimCLR pretext, SeLa) train on these views.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sslx.data.scenes import GENERATOR_VERSION, SPLITS, ScenesDataset, redraw_scene, render_scene
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_CACHE = Path(os.environ.get("SSLX_SCENE_CACHE", Path(tempfile.gettempdir()) / "sslx_scene_tensors"))
_VIEW_STREAM = 1000  # RNG stream offset of the views (the dataset itself uses streams 0 and 1)


@dataclass(frozen=True)
class SceneTensors:
    """One rendered split: images uint8 N×3×H×W, label int64 N (class of object 1), object_labels N×2 (−1 = none)."""

    images: Tensor
    labels: Tensor
    object_labels: Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


def render_split(split: str, size: int, objects: str = "single", seed: int = 0,
                 resolution: int = 128) -> SceneTensors:
    """Render scenes 0..size-1 of a split (the same scenes ScenesDataset gives) into uint8 tensors."""
    ds = ScenesDataset(split, size=size, seed=seed, resolution=resolution, objects=objects)
    images = torch.empty((size, 3, resolution, resolution), dtype=torch.uint8)
    object_labels = torch.full((size, 2), -1, dtype=torch.long)
    for i in range(size):  # one-off data preparation, not a training hot path
        images[i] = torch.from_numpy(ds.render(i).image)
        ids = ds.class_ids(i)
        object_labels[i, : len(ids)] = torch.tensor(ids)
    return SceneTensors(images, object_labels[:, 0].clone(), object_labels)


def render_views(split: str, size: int, views: int, objects: str = "single", seed: int = 0,
                 resolution: int = 128) -> Tensor:
    """uint8 N×V×3×H×W: `views` redraws of each of scenes 0..size-1 (view v of scene i is fixed by (seed, split, i, v))."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    ds = ScenesDataset(split, size=size, seed=seed, resolution=resolution, objects=objects)
    out = torch.empty((size, views, 3, resolution, resolution), dtype=torch.uint8)
    for i in range(size):  # one-off data preparation, not a training hot path
        spec = ds.scene(i)
        for v in range(views):
            rng = np.random.default_rng([seed, SPLITS[split], i, _VIEW_STREAM + v, GENERATOR_VERSION])
            out[i, v] = torch.from_numpy(render_scene(redraw_scene(spec, rng), resolution).image)
    return out


def cache_name(split: str, size: int, objects: str, kind: str, seed: int, resolution: int) -> str:
    """File name that identifies a rendered split (includes the generator version)."""
    return f"scenes-v{GENERATOR_VERSION}-{split}-n{size}-{objects}-{kind}-seed{seed}-r{resolution}.pt"


def load_split(split: str, size: int, objects: str = "single", seed: int = 0,
               resolution: int = 128, cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> SceneTensors:
    """`render_split`, read from / written to `cache_dir` (atomic write; None disables the cache)."""
    if cache_dir is None:
        return render_split(split, size, objects, seed, resolution)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_name(split, size, objects, "scenes", seed, resolution)
    if path.is_file():
        return _read_cached(path, size, resolution)
    larger = _larger_cached(folder, split, size, objects, "scenes", seed, resolution)
    if larger is not None:  # scene i does not depend on the split size, so a prefix is the same data
        data = _read_cached(larger[1], larger[0], resolution)
        return SceneTensors(data.images[:size].clone(), data.labels[:size].clone(), data.object_labels[:size].clone())
    data = render_split(split, size, objects, seed, resolution)
    _atomic_save({"images": data.images, "labels": data.labels, "object_labels": data.object_labels}, path)
    return data


def load_views(split: str, size: int, views: int, objects: str = "single", seed: int = 0, resolution: int = 128,
               cache_dir: str | os.PathLike | None = DEFAULT_CACHE) -> Tensor:
    """`render_views`, read from / written to `cache_dir` (atomic write; None disables the cache)."""
    if cache_dir is None:
        return render_views(split, size, views, objects, seed, resolution)
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cache_name(split, size, objects, f"views{views}", seed, resolution)
    if not path.is_file():
        out = render_views(split, size, views, objects, seed, resolution)
        _atomic_save({"views": out}, path)
        return out
    try:
        out = torch.load(path, map_location="cpu", weights_only=True)["views"]
    except Exception as exc:  # torch reports damaged files with many exception types
        raise ValueError(f"scene view cache {str(path)!r} is corrupt or foreign ({type(exc).__name__}: {exc}); "
                         "delete it") from exc
    if tuple(out.shape) != (size, views, 3, resolution, resolution) or out.dtype != torch.uint8:
        raise ValueError(f"scene view cache {str(path)!r} holds {tuple(out.shape)} {out.dtype}, expected "
                         f"{(size, views, 3, resolution, resolution)} uint8; delete it")
    return out


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
