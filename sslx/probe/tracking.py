"""Weights & Biases for probe runs: offline by default, never prompts, files kept inside the run's folder."""
from __future__ import annotations

import netrc
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sslx._env import scoped_environ

import numpy as np
from torch import Tensor

WANDB_MODES = ("offline", "online", "disabled")
NO_CREDENTIALS = ("--wandb online needs W&B credentials (run `wandb login` or set WANDB_API_KEY); use --wandb "
                  "offline to log without an account and `wandb sync` the run later")


@contextmanager
def wandb_environment(mode: str, out: Path) -> Iterator[None]:
    """Set WANDB_MODE and keep W&B's run, cache and data folders under `out` for the duration."""
    if mode not in WANDB_MODES:
        raise ValueError(f"--wandb must be one of {WANDB_MODES}, got {mode!r}")
    wandb_dir = out / "wandb"
    settings = {"WANDB_MODE": mode, "WANDB_DIR": str(out), "WANDB_CACHE_DIR": str(wandb_dir / ".cache"),
                "WANDB_DATA_DIR": str(wandb_dir / ".data"), "WANDB_SILENT": "true", "WANDB_CONSOLE": "off"}
    with scoped_environ(settings):
        yield


def has_online_credentials() -> bool:
    """True when W&B can log in without asking: WANDB_API_KEY is set or ~/.netrc has the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def start_run(mode: str, out: Path, project: str, config: Mapping[str, Any]) -> Any:
    """A W&B run in `mode` (call inside `wandb_environment`); None for "disabled"."""
    if mode == "disabled":
        return None
    if mode == "online" and not has_online_credentials():
        raise ValueError(NO_CREDENTIALS)
    import wandb

    (out / "wandb").mkdir(parents=True, exist_ok=True)
    return wandb.init(project=project, dir=str(out), mode=mode, config=dict(config), reinit="create_new",
                      settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                              x_disable_stats=True))


def finish_run(run: Any) -> None:
    """Finish the run and wait until W&B has written everything (offline files are complete on return)."""
    import wandb

    run.finish()
    wandb.teardown()  # finish() returns before the W&B service has flushed an offline run's file


def _uint8_image(image: Tensor) -> np.ndarray:
    """3×H×W [0,1] tensor → H×W×3 uint8 array."""
    return (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def overlay_table(layer: str, indices: Sequence[int], pixels: Tensor, masks: Tensor | None, labels: Sequence[str],
                  predictions: Sequence[str], maps: Mapping[str, Tensor]) -> Any:
    """wandb.Table with one row per scene: image, mask and each method's coloured heatmap."""
    import wandb

    from sslx.viz import heatmap_to_rgb

    columns = ["layer", "index", "label", "prediction", "image", "mask", *maps]
    coloured = {method: heatmap_to_rgb(m) for method, m in maps.items()}
    rows = []
    for row, index in enumerate(indices):
        mask = None
        if masks is not None:
            mask = wandb.Image(((masks[row] > 0).cpu().numpy() * 255).astype(np.uint8))
        rows.append([layer, int(index), labels[row], predictions[row], wandb.Image(_uint8_image(pixels[row])), mask,
                     *(wandb.Image(coloured[method][row]) for method in maps)])
    return wandb.Table(columns=columns, data=rows)


def log_layer(run: Any, layer: str, metrics: Mapping[str, float], table: Any | None) -> None:
    """Log one layer's final metrics (and its overlay table) to the run; no-op without a run."""
    if run is None:
        return
    payload: dict[str, Any] = dict(metrics)
    if table is not None:
        payload[f"{layer}/overlays"] = table
    run.log(payload)
    run.summary.update(dict(metrics))


def log_images(run: Any, paths: Mapping[str, Path]) -> None:
    """Log PNG files (e.g. the per-layer plots) as W&B images; no-op without a run."""
    if run is None or not paths:
        return
    import wandb

    run.log({f"plots/{name}": wandb.Image(str(path)) for name, path in paths.items()})
