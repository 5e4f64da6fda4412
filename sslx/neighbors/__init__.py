"""Nearest neighbours over penultimate features (AGF paper, Algorithm 2, lines 1-3)."""
from __future__ import annotations

from importlib import import_module
from typing import Any

from sslx.neighbors.batches import IndexedDataset
from sslx.neighbors.extract import extract_features
from sslx.neighbors.fingerprint import model_fingerprint
from sslx.neighbors.index import FeatureIndex

# The Lightning pieces resolve lazily: importing pytorch_lightning costs seconds.
_LAZY = {"FeatureExtractor": "sslx.neighbors.shards", "ShardWriter": "sslx.neighbors.shards"}

__all__ = [
    "FeatureExtractor",
    "FeatureIndex",
    "IndexedDataset",
    "ShardWriter",
    "extract_features",
    "model_fingerprint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslx.neighbors' has no attribute {name!r}")
