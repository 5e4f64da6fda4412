"""The golden cases vendored in tests/golden_data (reference outputs of the authors' code) and their weights.

The weights follow the recipe "agf-golden-v1" (../shared/golden/README.md) and are regenerated here, then
checked tensor by tensor against the vendored SHA-256 digests. A missing file fails the test (no skip).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

GOLDEN = Path(__file__).resolve().parent / "golden_data"
_LAST_RESIDUAL_BN = re.compile(r"^layer\d+\.\d+\.bn3\.weight$")  # Bottleneck: the branch's last BatchNorm


def _file(name: str) -> Path:
    path = GOLDEN / name
    if not path.is_file():
        pytest.fail(f"golden file {path} is missing (regenerate with tests/golden_data/vendor.py)")
    return path


def _draw(name: str, module: nn.Module, t: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One tensor of the recipe, drawn in float64 from its own generator."""
    leaf = name.rpartition(".")[2]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=g, dtype=torch.float64) * (high - low) + low

    def normal(std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64) * std

    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return normal(math.sqrt(2.0 / t[0].numel())) if leaf == "weight" else uniform(-0.1, 0.1)
    if isinstance(module, nn.BatchNorm2d):
        if leaf == "weight":
            return uniform(0.1, 0.3) if _LAST_RESIDUAL_BN.match(name) else uniform(0.5, 1.5)
        return {"bias": lambda: uniform(-0.1, 0.1), "running_mean": lambda: normal(0.1),
                "running_var": lambda: uniform(0.5, 1.5)}[leaf]()
    raise ValueError(f"agf-golden-v1 has no rule for {name} ({type(module).__name__})")


def recipe_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """agf-golden-v1: entry k of the state_dict drawn with seed 1000 + k in float64, rounded to float32."""
    modules = dict(model.named_modules())
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, (name, t) in enumerate(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            out[name] = t.clone()
            continue
        g = torch.Generator().manual_seed(1000 + k)
        out[name] = _draw(name, modules[name.rpartition(".")[0]], t, g).to(torch.float32)
    return out


def _sha256(t: torch.Tensor) -> str:
    a = np.ascontiguousarray(t.detach().cpu().numpy())
    return hashlib.sha256(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()).hexdigest()


def verify_state_dict(sd: dict, arch: str) -> None:
    """Fail naming the first tensor whose bytes differ from the vendored digests."""
    ref = json.loads(_file(f"weights_{arch}.json").read_text())
    assert list(sd) == list(ref["sha256"]), f"{arch}: state_dict keys or order differ from the manifest"
    for name, t in sd.items():
        assert _sha256(t) == ref["sha256"][name], f"{arch}: tensor {name} differs from the manifest"


@lru_cache(maxsize=2)
def golden_state_dict(arch: str):
    """The agf-golden-v1 weights for a torchvision architecture, checked against the manifest."""
    sd = recipe_state_dict(getattr(torchvision.models, arch)(weights=None))
    verify_state_dict(sd, arch)
    return sd


def golden_model(arch: str, dtype: torch.dtype) -> torch.nn.Module:
    """A fresh torchvision model with the golden weights, in eval mode and the given dtype."""
    model = getattr(torchvision.models, arch)(weights=None)
    model.load_state_dict(golden_state_dict(arch), strict=True)
    return model.eval().to(dtype)


@lru_cache(maxsize=None)
def _index() -> dict:
    return json.loads(_file("cases.json").read_text())


def load_case(name: str, baseline: bool = False) -> tuple[dict, dict]:
    """(arrays, meta) of a case; AGF cases also carry `input` (the shared `shapes` image)."""
    key = f"{'baselines' if baseline else 'agf'}/{name}"
    if key not in _index():
        pytest.fail(f"golden case {key} is not in {GOLDEN / 'cases.json'}")
    case = dict(np.load(_file(f"{key}.npz")))
    if not baseline:
        case["input"] = shapes_input()
    return case, _index()[key]


def shapes_input() -> np.ndarray:
    """The normalised 1×3×224×224 float64 `shapes` input of every case."""
    return np.load(_file("input_shapes.npz"))["input"]


def unit(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, np.float64)
    return h / np.abs(h).reshape(len(h), -1).max(1)[:, None, None, None]


def rel_l2(ours, ref) -> np.ndarray:
    """Per-image relative L2 error after dividing each map by its max |value| (the README's rule)."""
    a, b = unit(ours), unit(ref)
    return np.linalg.norm((a - b).reshape(len(b), -1), axis=1) / np.linalg.norm(b.reshape(len(b), -1), axis=1)
