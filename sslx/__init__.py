"""sslx: explain supervised and self-supervised image networks (AGF, SSL neighbours, probes)."""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names resolve lazily so that `import sslx` stays cheap (no faiss/lightning at import time).
_LAZY = {
    "AGF": "sslx.attribution.agf",
    "explain": "sslx.explain_api",
}

__all__ = ["AGF", "explain", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslx' has no attribute {name!r}")
