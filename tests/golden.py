"""Access to the golden cases in ../shared/golden (reference outputs of the authors' AGF code)."""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


def require_golden() -> Path:
    if not GOLDEN.is_dir():
        pytest.skip(f"golden cases not found at {GOLDEN}")
    return GOLDEN


@lru_cache(maxsize=None)
def _golden_data_module():
    spec = importlib.util.spec_from_file_location("agf_golden_data", require_golden() / "agf_golden_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=2)
def golden_state_dict(arch: str):
    """The agf-golden-v1 weights for a torchvision architecture, checked against the manifest."""
    gd = _golden_data_module()
    model = getattr(torchvision.models, arch)(weights=None)
    sd = gd.make_state_dict(model)
    gd.verify_state_dict(sd, str(require_golden() / f"weights_{arch}.sha256.json"))
    return sd


def golden_model(arch: str, dtype: torch.dtype) -> torch.nn.Module:
    """A fresh torchvision model with the golden weights, in eval mode and the given dtype."""
    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(golden_state_dict(arch), strict=True)
    return model.eval().to(dtype)


def load_case(name: str, baseline: bool = False) -> tuple[dict, dict]:
    folder = require_golden() / ("baselines" if baseline else "") / name
    case = dict(np.load(folder / "case.npz"))
    meta = json.loads((folder / "meta.json").read_text())
    return case, meta


def shapes_input() -> np.ndarray:
    return np.load(require_golden() / "vgg19_top" / "case.npz")["input"]


def unit(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    return h / np.abs(h).reshape(len(h), -1).max(1)[:, None, None, None]


def rel_l2(ours, ref) -> np.ndarray:
    """Per-image relative L2 error after dividing each map by its max |value| (the README's rule)."""
    a, b = unit(ours), unit(ref)
    return np.linalg.norm((a - b).reshape(len(b), -1), axis=1) / np.linalg.norm(b.reshape(len(b), -1), axis=1)
