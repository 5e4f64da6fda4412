"""The error raised for checkpoints that cannot be loaded faithfully."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, unsafe, of an unknown layout or inconsistent with its architecture."""
