"""Cross-checks against Quantus on the same inputs, and every sslx.explain method as a Quantus explain_func."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import quantus
from sslx.explain_api import METHODS
from sslx.metrics import pointing_game, relevance_mass, relevance_rank_accuracy
from sslx.metrics.quantus_adapter import quantus_explain_func
from sslx.models.vit import VisionTransformer


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


VIT_METHODS = ("attention_rollout", "generic_attention", "transformer_attribution")


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=4, num_classes=3, embed_dim=16, depth=2, num_heads=2).eval()


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((4, 3, 8, 8), dtype=np.float32)
    a = rng.random((4, 1, 8, 8)).astype(np.float32)  # continuous: no ties in the rank order
    s = np.zeros((4, 1, 8, 8), dtype=np.float32)
    s[:, :, 2:6, 1:5] = 1
    s[1, :, 0, 0] = 1
    a[2, 0, 3, 3] = 5.0  # a maximum inside the mask
    return x, np.zeros(4, dtype=np.int64), a, s


@pytest.mark.parametrize(("ours", "theirs"), [
    (pointing_game, quantus.PointingGame), (relevance_mass, quantus.RelevanceMassAccuracy),
    (relevance_rank_accuracy, quantus.RelevanceRankAccuracy)])
def test_localisation_matches_quantus(ours, theirs):
    x, y, a, s = inputs()
    metric = theirs(abs=False, normalise=False, disable_warnings=True)
    expected = np.asarray(metric(model=tiny_cnn(), x_batch=x, y_batch=y, a_batch=a, s_batch=s, device="cpu"),
                          dtype=np.float64)
    got = ours(torch.from_numpy(a), torch.from_numpy(s).bool()).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_a_quantus_explain_func(method):
    model = tiny_vit() if method in VIT_METHODS else tiny_cnn()
    x, y, _, _ = inputs()
    options = {"layer": "2"} if method == "gradcam" else {}
    func = quantus_explain_func(method, **options)
    maps = func(model=model, inputs=x, targets=y, device="cpu")
    assert isinstance(maps, np.ndarray) and maps.shape == (4, 1, 8, 8) and np.isfinite(maps).all()
    direct = METHODS[method](model, **options).attribute(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    if method not in ("smoothgrad", "gradient_shap"):  # random draws differ between two calls
        np.testing.assert_allclose(maps, direct, atol=1e-6)


def test_quantus_runs_a_metric_through_the_adapter():
    x, y, _, s = inputs()
    metric = quantus.PointingGame(disable_warnings=True)
    scores = metric(model=tiny_cnn(), x_batch=x, y_batch=y, a_batch=None, s_batch=s, device="cpu",
                    explain_func=quantus_explain_func("agf"))
    ours = pointing_game(torch.from_numpy(quantus_explain_func("agf")(tiny_cnn(), x, y)), torch.from_numpy(s).bool())
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float64), ours.double().numpy())


def test_adapter_errors():
    with pytest.raises(ValueError, match="unknown method"):
        quantus_explain_func("nope")
    func = quantus_explain_func("agf")
    x, y, _, _ = inputs()
    with pytest.raises(TypeError, match="nn.Module"):
        func(model=None, inputs=x, targets=y)
    with pytest.raises(ValueError, match="integer class ids"):
        func(model=tiny_cnn(), inputs=x, targets=np.array([0.5, 0, 0, 0]))
