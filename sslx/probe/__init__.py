"""sslx.probe: per-layer linear probes on frozen SSL networks and the scores of their explanations.

`python -m sslx.probe --layer 4` is the command-line job; the pieces are importable too.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Resolved lazily so that `import sslx.probe` does not import Lightning.
_LAZY = {
    "LinearProbe": "sslx.probe.module",
    "probe_pool_size": "sslx.probe.module",
    "explainable_probe": "sslx.probe.module",
    "ProbeDataModule": "sslx.probe.data",
    "ProbeDatasets": "sslx.probe.data",
    "probe_datasets": "sslx.probe.data",
    "ExplanationEvaluation": "sslx.probe.evaluate",
    "load_probe": "sslx.probe.outputs",
    "ProbeConfig": "sslx.probe.run",
    "ProbeJob": "sslx.probe.run",
    "run": "sslx.probe.run",
    "main": "sslx.probe.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslx.probe' has no attribute {name!r}")
