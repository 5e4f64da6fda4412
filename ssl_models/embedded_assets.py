"""The small benchmark models shipped under ssl_models/assets/, loaded through `load`."""
from __future__ import annotations

from pathlib import Path

from ssl_models.base import SSLModel
from ssl_models.load import load

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
EMBEDDED_NAMES = ("rotnet", "sela", "scan", "moco", "dino_vit")  # moco: head-less (fit a sslx.cluster_head.ClusterHead)


def embedded_path(name: str) -> Path:
    """Path of the embedded asset `name` (which may not exist yet)."""
    if name not in EMBEDDED_NAMES:
        raise ValueError(f"unknown embedded model {name!r}; valid names are {EMBEDDED_NAMES}")
    return ASSETS_DIR / f"{name}.pth"


def embedded(name: str, head: int | None = None) -> SSLModel:
    """Load the embedded benchmark model `name` ("rotnet", "sela", "scan", the head-less "moco" or "dino_vit")."""
    path = embedded_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"embedded model asset {path} is missing; it is produced by `python experiments/train_{name}.py` "
            "(which writes it there with ssl_models.save_checkpoint)"
        )
    return load(path, kind=name, head=head)
