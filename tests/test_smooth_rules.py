"""GELU and L2 normalisation in the graph walk (DINO / SwAV heads): hand-computed LRP-0 and gradient, and
Algorithm 2 through SwAV's prototypes and DINO's head."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sslx
import sslx.ssl as ssl
import ssl_models
from modern_ssl_fixtures import write_dino_full, write_swav
from ssl_models.mlp import L2Normalize
from sslx.attribution.graph import SMOOTH, ModelGraph
from sslx.attribution.propagation import structural_rule
from sslx.neighbors import FeatureIndex


class _Smooth(nn.Module):
    def __init__(self, last: nn.Module) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(3, 4), last, nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def _smooth_step(model: nn.Module):
    graph = ModelGraph(model)
    steps = [s for s in graph.steps.values() if s.kind == SMOOTH]
    assert len(steps) == 1
    return steps[0]


def test_gelu_rule_is_lrp0_with_the_exact_derivative():
    step = _smooth_step(_Smooth(nn.GELU()).double())
    x = torch.tensor([[-1.5, -0.2, 0.3, 2.0]], dtype=torch.float64)
    y = F.gelu(x)
    r = torch.tensor([[0.5, -1.0, 2.0, 0.25]], dtype=torch.float64)
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    (r_in,), (g_in,) = structural_rule(step, [x], y, r, g)
    phi = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    derivative = cdf + x * phi  # d/dx x·Φ(x)
    torch.testing.assert_close(g_in, g * derivative, atol=1e-12, rtol=0)
    # safe_divide adds its 1e-9 stabiliser to Y, hence the relative tolerance
    torch.testing.assert_close(r_in, x * derivative * r / y, atol=0, rtol=1e-6)


def test_l2_normalisation_rule_uses_its_jacobian():
    step = _smooth_step(_Smooth(L2Normalize()).double())
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]], dtype=torch.float64)
    y = x / 5
    g = torch.tensor([[1.0, 0.0, 2.0, 0.0]], dtype=torch.float64)
    (_,), (g_in,) = structural_rule(step, [x], y, torch.ones_like(x), g)
    # Jᵀg = (g − y (y·g)) / ‖x‖ = ([1,0,2,0] − [0.6,0.8,0,0]·0.6) / 5
    torch.testing.assert_close(g_in, torch.tensor([[0.128, -0.096, 0.4, 0.0]], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("family", ["swav", "dino"])
def test_algorithm2_through_prototypes_and_dino_head(tmp_path: Path, family):
    path = (write_swav if family == "swav" else write_dino_full)(tmp_path / f"{family}.pth")[1]
    model = ssl_models.load(path).double()
    ref = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        feats = model.features(ref)
    index = FeatureIndex.from_features(feats.float())
    out = ssl.explain(model, ref[:2], index, mode="delta", exclude_ids=torch.arange(2))
    with torch.no_grad():
        d = torch.cdist(feats[:2], feats)
        d[torch.arange(2), torch.arange(2)] = float("inf")
        expected = model.head(feats[:2] - feats[d.argmin(1)])
    assert torch.equal(out.ssl_class, expected.argmax(1))
    assert out.heatmaps.shape == (2, 1, 32, 32) and bool(torch.isfinite(out.heatmaps).all())
    assert bool((out.heatmaps.flatten(1).abs().amax(1) > 0).all())
    cam = sslx.explain(model, ref[:1], method="gradcam")
    assert cam.shape == (1, 1, 32, 32)
