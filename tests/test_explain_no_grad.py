"""Every registered method works for callers inside torch.no_grad() and gives the same maps."""
import pytest
import torch
import torchvision

from sslx import explain
from sslx.explain_api import METHODS
from sslx.models.vit import VisionTransformer

VIT_METHODS = ("attention_rollout", "generic_attention", "transformer_attribution")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_under_no_grad(method):
    torch.manual_seed(0)
    model = (VisionTransformer(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=2, num_heads=2).eval()
             if method in VIT_METHODS else torchvision.models.resnet18(num_classes=5).eval())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    free = explain(model, x, torch.tensor([1, 3]), method=method)
    with torch.no_grad():
        inside = explain(model, x, torch.tensor([1, 3]), method=method)
    assert inside.shape == (2, 1, 32, 32) and torch.isfinite(inside).all()
    assert torch.allclose(free, inside)
