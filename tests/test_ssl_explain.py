"""Algorithm 2: Δ/Σ/w-o feed head(L_I − L_N), head(L_I + L_N), head(L_I) to the explanation."""
import pytest
import torch
import torch.nn as nn

import sslx.ssl as ssl
from sslx import AGF
from sslx.neighbors import FeatureIndex


class TinySSL(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.backbone(x))


@pytest.fixture(scope="module")
def setup():
    model = TinySSL().double().eval()
    ref = torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        feats = model.backbone(ref)
    index = FeatureIndex.from_features(feats.float(), ids=torch.arange(100, 120))
    return model, ref, feats, index


@pytest.mark.parametrize("mode, sign", [("delta", -1.0), ("sum", 1.0), ("none", 0.0)])
def test_modes_combine_features_as_the_paper_says(setup, mode, sign):
    model, ref, feats, index = setup
    x = ref[:3]
    out = ssl.explain(model, x, index, mode=mode, exclude_ids=torch.arange(100, 103))
    own = feats[:3]
    # brute-force neighbour among the other reference images
    d = torch.cdist(own, feats)
    d[torch.arange(3), torch.arange(3)] = float("inf")
    nn_idx = d.argmin(1)
    assert torch.equal(out.neighbor_ids[:, 0].cpu(), nn_idx + 100)
    neighbour = index.features_of(nn_idx + 100).double()
    expected_logits = model.head(own + sign * neighbour)
    assert torch.allclose(out.logits, expected_logits, atol=1e-5)
    assert torch.equal(out.ssl_class, expected_logits.argmax(1))
    wrapped = ssl.CombinedFeaturesModel(model.backbone, model.head, (sign * neighbour).to(torch.float64))
    assert torch.allclose(out.heatmaps, AGF(wrapped).attribute(x, out.ssl_class), atol=1e-6)
    assert out.heatmaps.shape == (3, 1, 16, 16)


def test_delta_and_sum_give_different_explanations(setup):
    model, ref, _, index = setup
    a = ssl.explain(model, ref[:2], index, mode="delta", exclude_ids=torch.tensor([100, 101])).heatmaps
    b = ssl.explain(model, ref[:2], index, mode="sum", exclude_ids=torch.tensor([100, 101])).heatmaps
    assert not torch.allclose(a, b)


def test_errors(setup):
    model, ref, _, index = setup
    with pytest.raises(ValueError, match="mode must be one of"):
        ssl.explain(model, ref[:1], index, mode="minus")
    with pytest.raises(ValueError, match="unknown method"):
        ssl.explain(model, ref[:1], index, method="nope")
    with pytest.raises(TypeError, match="backbone"):
        ssl.explain(nn.Sequential(nn.Flatten(), nn.Linear(768, 2)), ref[:1], index)
    small = FeatureIndex.from_features(torch.randn(10, 7))
    with pytest.raises(ValueError, match="7-d features"):
        ssl.explain(model, ref[:1], small)
