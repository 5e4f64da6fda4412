"""ssl_models: load SCAN, SeLa and RotNet checkpoints as traceable backbone ▸ linear-head networks."""
from __future__ import annotations

from ssl_models.base import SSLModel
from ssl_models.embedded_assets import embedded
from ssl_models.errors import CheckpointError
from ssl_models.load import KINDS, load
from ssl_models.preprocess import Preprocess
from ssl_models.serialization import save_checkpoint

__all__ = ["CheckpointError", "KINDS", "Preprocess", "SSLModel", "embedded", "load", "save_checkpoint"]
