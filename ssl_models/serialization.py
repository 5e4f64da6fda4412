"""Safe checkpoint reading (weights_only, numpy scalars allow-listed) and atomic checkpoint writing."""
from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sslx._io import atomic_write
from ssl_models.errors import CheckpointError

# SCAN stores its best head as a numpy.int64 (and its best loss as a numpy.float64). A numpy scalar
# unpickles through `multiarray.scalar(dtype, bytes)`; files written under numpy 1.x name it
# `numpy.core.multiarray.scalar`, under numpy 2.x `numpy._core.multiarray.scalar`.
_NUMPY_SCALAR = type(np.int64(0)).__reduce__(np.int64(0))[0]
_SAFE_NUMPY_GLOBALS: list[Any] = [
    _NUMPY_SCALAR,
    (_NUMPY_SCALAR, "numpy.core.multiarray.scalar"),
    (_NUMPY_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    argparse.Namespace,  # DINO stores its command-line arguments next to the weights (plain data, no code)
    # under numpy 2 a dtype unpickles as an instance of its DType class, which then needs BUILD
    *(type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64, np.float16, np.float32, np.float64)),
    # DINO's full checkpoints store the run's options as an argparse.Namespace (plain attributes, no code)
    argparse.Namespace,
]

_UNSUPPORTED_GLOBAL = re.compile(r"unsupported GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)")
# What torch's weights-only unpickler says when it refuses (rather than fails to parse) an object.
_REFUSALS = ("Unsupported global", "unsupported GLOBAL", "Can only build", "Can only create new object",
             "Trying to call reduce")


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint with torch.load(weights_only=True) onto the CPU; clear errors for bad files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path is not a regular file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if any(refusal in message for refusal in _REFUSALS):
            found = _UNSUPPORTED_GLOBAL.search(message)
            what = (found.group(1) or found.group(2)) if found else _refusal_line(message)
            raise CheckpointError(
                f"{path} contains pickled Python objects ({what}) that weights-only loading refuses, e.g. a "
                "whole model saved with torch.save(model); ssl_models never unpickles code "
                "(torch.load(weights_only=True)). Re-save it as model.state_dict() with the project that wrote it."
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt and cannot be unpickled: {_first_line(exc)}") from None
    except Exception as exc:  # torch reports damaged files as RuntimeError/EOFError/KeyError/IndexError/...
        raise CheckpointError(
            f"{path} is truncated or corrupt (not a readable torch checkpoint): "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write `obj` with torch.save atomically (temp file in the same folder, then os.replace); return the path."""
    if not isinstance(obj, dict):
        raise TypeError(f"checkpoint must be a dict (a state_dict or a wrapper dict), got {type(obj).__name__}")
    modules = [key for key, value in obj.items() if isinstance(value, nn.Module)]
    if modules:
        raise TypeError(
            f"checkpoint entries {modules} are nn.Module objects; save module.state_dict() instead "
            "(whole pickled modules cannot be loaded with weights_only=True)"
        )
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder for the checkpoint does not exist: {path.parent}")
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _refusal_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if any(r in line for r in _REFUSALS)]
    return lines[0][:300] if lines else "an object weights-only loading refuses"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
