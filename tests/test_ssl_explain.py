"""Algorithm 2: t = arg-max head(L_I − L_N) / head(L_I + L_N) / head(L_I); the paper explains M itself for t."""
import pytest
import torch
import torch.nn as nn

import sslx.ssl as ssl
from sslx import AGF
from sslx.assets import asset_path, load_embedded
from sslx.data import ScenesDataset
from sslx.data.scenes import collate_scenes
from sslx.explain_api import METHODS
from sslx.neighbors import FeatureIndex

SIGNS = {"delta": -1.0, "sum": 1.0, "none": 0.0}


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


def _brute_force_class(model, x, reference_features, mode, exclude_rows=None):
    """(t, neighbour rows): arg-max head(L_I + sign·L_N), L_N the nearest reference row by Euclidean distance."""
    with torch.no_grad():
        own = model.backbone(x)
        d = torch.cdist(own, reference_features)
        if exclude_rows is not None:
            d[torch.arange(len(x)), exclude_rows] = float("inf")
        rows = d.argmin(1)
        logits = model.head(own + SIGNS[mode] * reference_features[rows])
    return logits.argmax(1), rows, logits


@pytest.mark.parametrize("mode", ["delta", "sum", "none"])
def test_default_explains_the_unmodified_model_for_the_combined_class(setup, mode):
    model, ref, feats, index = setup
    x = ref[:3]
    out = ssl.explain(model, x, index, mode=mode, exclude_ids=torch.arange(100, 103))
    t, rows, logits = _brute_force_class(model, x, feats, mode, exclude_rows=torch.arange(3))
    assert torch.equal(out.neighbor_ids[:, 0].cpu(), rows + 100)
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert torch.equal(out.ssl_class, t)
    # Algorithm 2, line 7: Alg. 1 with the tuple (M, I, t) — the SSL network itself, not head(L_I ± L_N)
    assert torch.allclose(out.heatmaps, AGF(model).attribute(x, t), atol=1e-6)
    assert out.heatmaps.shape == (3, 1, 16, 16)


@pytest.mark.parametrize("mode", ["delta", "sum"])
def test_combined_option_explains_head_of_combined_features(setup, mode):
    model, ref, feats, index = setup
    x = ref[:3]
    out = ssl.explain(model, x, index, mode=mode, exclude_ids=torch.arange(100, 103), explain_model="combined")
    t, rows, _ = _brute_force_class(model, x, feats, mode, exclude_rows=torch.arange(3))
    assert torch.equal(out.ssl_class, t)
    offset = SIGNS[mode] * index.features_of(rows + 100).double()
    wrapped = ssl.CombinedFeaturesModel(model.backbone, model.head, offset)
    assert torch.allclose(out.heatmaps, AGF(wrapped).attribute(x, t), atol=1e-6)
    default = ssl.explain(model, x, index, mode=mode, exclude_ids=torch.arange(100, 103))
    assert not torch.allclose(out.heatmaps, default.heatmaps)


def test_any_method_of_sslx_explain_and_its_options(setup):
    model, ref, feats, index = setup
    x = ref[:2]
    for method, options in (("rap", {}), ("gradcam", {"layer": "backbone.2"}), ("lrp", {})):
        out = ssl.explain(model, x, index, method=method, **options)
        expected = METHODS[method](model, **options).attribute(x, out.ssl_class)
        assert torch.allclose(out.heatmaps, expected, atol=1e-6), method


@pytest.mark.parametrize("name", ["scan", "sela", "rotnet"])
def test_loaded_ssl_models_default_equals_agf_of_the_model(name):
    if not asset_path(name).is_file():
        pytest.skip(f"embedded {name} asset missing")
    model = load_embedded(name).double()
    data = ScenesDataset("train", 14, 0, 128, "single")
    batch = collate_scenes([data[i] for i in range(14)])
    reference, x = batch["image"][2:].double(), batch["image"][:2].double()
    with torch.no_grad():
        reference_features = model.backbone(reference)
    index = FeatureIndex.from_features(reference_features.float())
    for mode in ("delta", "sum", "none"):
        out = ssl.explain(model, x, index, mode=mode)
        t, rows, _ = _brute_force_class(model, x, reference_features, mode)
        assert torch.equal(out.neighbor_ids[:, 0], rows), (name, mode)
        assert torch.equal(out.ssl_class, t), (name, mode)
        assert torch.allclose(out.heatmaps, AGF(model).attribute(x, t), atol=1e-6, rtol=0), (name, mode)


def test_delta_and_sum_choose_classes_from_different_features(setup):
    model, ref, _, index = setup
    a = ssl.explain(model, ref[:6], index, mode="delta", exclude_ids=torch.arange(100, 106))
    b = ssl.explain(model, ref[:6], index, mode="sum", exclude_ids=torch.arange(100, 106))
    assert not torch.allclose(a.logits, b.logits)


def test_errors(setup):
    model, ref, _, index = setup
    with pytest.raises(ValueError, match="mode must be one of"):
        ssl.explain(model, ref[:1], index, mode="minus")
    with pytest.raises(ValueError, match="explain_model must be one of"):
        ssl.explain(model, ref[:1], index, explain_model="head")
    with pytest.raises(ValueError, match="unknown method"):
        ssl.explain(model, ref[:1], index, method="nope")
    with pytest.raises(TypeError, match="backbone"):
        ssl.explain(nn.Sequential(nn.Flatten(), nn.Linear(768, 2)), ref[:1], index)
    with pytest.raises(TypeError, match="FeatureIndex"):
        ssl.explain(model, ref[:1], torch.zeros(4, 32))
    with pytest.raises(ValueError, match="k .* positive int"):
        ssl.explain(model, ref[:1], index, k=0)
    with pytest.raises(ValueError, match="holds only 20"):
        ssl.explain(model, ref[:1], index, k=21)
    with pytest.raises(TypeError, match="floating-point"):
        ssl.explain(model, (ref[:1] * 10).long(), index)
    with pytest.raises(ValueError, match="empty batch"):
        ssl.explain(model, ref[:0], index)
    small = FeatureIndex.from_features(torch.randn(10, 7))
    with pytest.raises(ValueError, match="7-d features"):
        ssl.explain(model, ref[:1], small)


def test_a_forward_that_is_not_head_of_backbone_is_refused(setup):
    model, ref, _, index = setup

    class Shifted(TinySSL):
        def forward(self, x):
            return super().forward(x) + 1.0

    shifted = Shifted().double().eval()
    with pytest.raises(ValueError, match="differs from model.head"):
        ssl.explain(shifted, ref[:1], index)
    ssl.explain(shifted, ref[:1], index, explain_model="combined")  # the combined model never calls forward
