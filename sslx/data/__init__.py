"""sslx.data: the procedural scenes benchmark, readers for ImageNet val, ImageNet-Seg, VOC 2012 and image folders."""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved lazily so that `import sslx.data` does not import Lightning.
_LAZY = {
    "ScenesDataset": "sslx.data.scenes",
    "SceneSpec": "sslx.data.scenes",
    "RenderedScene": "sslx.data.scenes",
    "SCENE_CLASSES": "sslx.data.scenes",
    "sample_scene": "sslx.data.scenes",
    "render_scene": "sslx.data.scenes",
    "collate_scenes": "sslx.data.scenes",
    "ScenesDataModule": "sslx.data.datamodule",
    "ImageFolderDataModule": "sslx.data.datamodule",
    "ImageFolderDataset": "sslx.data.datamodule",
    "ImageNetVal": "sslx.data.imagenet",
    "read_label_file": "sslx.data.imagenet",
    "read_devkit_meta": "sslx.data.imagenet",
    "ImageNetSegmentation": "sslx.data.imagenet_seg",
    "VOCSegmentation2012": "sslx.data.voc",
    "VOC_CLASSES": "sslx.data.voc",
    "VOC_IGNORE": "sslx.data.voc",
    "IMAGENET_MEAN": "sslx.data.transforms",
    "IMAGENET_STD": "sslx.data.transforms",
    "normalize": "sslx.data.transforms",
    "denormalize": "sslx.data.transforms",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslx.data' has no attribute {name!r}")
