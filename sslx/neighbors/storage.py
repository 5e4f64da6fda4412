"""Checksummed single-file storage of JSON metadata plus tensors, written atomically."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from sslx._io import atomic_write as _atomic_write


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through `write(fileobj)` atomically, creating its folder if needed."""
    return _atomic_write(path, write, make_parents=True)


def write_payload(path: str | os.PathLike, kind: str, version: int, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    """Save `meta` and CPU `tensors` to `path` with a sha256 over all of them, atomically."""
    meta_json = json.dumps(meta, sort_keys=True)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    record = {
        "format": kind,
        "format_version": version,
        "meta_json": meta_json,
        "tensors": tensors,
        "sha256": _checksum(meta_json, tensors),
    }
    return atomic_write(path, lambda f: torch.save(record, f))


def read_payload(path: str | os.PathLike, kind: str, version: int) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Load what `write_payload` wrote, refusing missing, foreign, newer, corrupt or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read {kind} file {path}: it is corrupt, truncated or not a {kind} file ({err})") from err
    if not isinstance(record, dict) or record.get("format") != kind:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{path} is not a {kind} file (format {found!r})")
    found_version = record.get("format_version")
    if not isinstance(found_version, int) or found_version > version:
        raise ValueError(f"{path} has format version {found_version!r}; this sslx reads versions up to {version}")
    meta_json, tensors = record.get("meta_json"), record.get("tensors")
    if not isinstance(meta_json, str) or not isinstance(tensors, dict) or not all(
        isinstance(t, Tensor) for t in tensors.values()
    ):
        raise ValueError(f"{kind} file {path} is corrupt: missing metadata or tensors")
    if record.get("sha256") != _checksum(meta_json, tensors):
        raise ValueError(f"{kind} file {path} is corrupt: its checksum does not match its contents")
    return json.loads(meta_json), tensors


def _checksum(meta_json: str, tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()

