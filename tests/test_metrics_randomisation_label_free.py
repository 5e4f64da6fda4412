"""Parameter randomisation (cascading / independent) and label-free faithfulness on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sslx.metrics import (embedding_cosine_drop, knn_agreement, knn_labels, parameter_randomisation,
                          randomisable_layers, randomise)


def toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()


def gradient_map(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, target.view(-1, 1)).sum()
    return torch.autograd.grad(out, x)[0].abs().sum(dim=1, keepdim=True)


def test_randomisable_layers_top_down_and_randomise_draws_from_matched_gaussian():
    model = toy()
    assert randomisable_layers(model) == ["3", "1"]
    fresh = randomise(model, ["3"], seed=4)
    assert torch.equal(fresh[1].weight, model[1].weight)  # untouched layer
    assert not torch.equal(fresh[3].weight, model[3].weight)
    again = randomise(model, ["3"], seed=4)
    assert torch.equal(again[3].weight, fresh[3].weight)  # seeded, no global RNG
    g = torch.Generator().manual_seed(4)
    old = model[3].weight.detach()
    expected = torch.randn(old.shape, generator=g, dtype=torch.float64) * old.std() + old.mean()
    assert torch.allclose(fresh[3].weight, expected)
    with pytest.raises(ValueError, match="unknown layers"):
        randomise(model, ["9"])


def test_cascading_and_independent_steps():
    model = toy()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    seen: list[nn.Module] = []

    def record(m: nn.Module, xb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(m)
        return gradient_map(m, xb, t)

    cascading = parameter_randomisation(model, record, x, mode="cascading", seed=10)
    assert [s["layer"] for s in cascading] == ["3", "1"]
    # step 2 of cascading has both layers random; its layer-3 weights are step 1's draw (seed 10)
    assert torch.equal(seen[2][3].weight, seen[1][3].weight) and not torch.equal(seen[2][1].weight, model[1].weight)
    seen.clear()
    independent = parameter_randomisation(model, record, x, mode="independent", seed=10)
    assert torch.equal(seen[2][3].weight, model[3].weight) and not torch.equal(seen[2][1].weight, model[1].weight)
    for steps in (cascading, independent):
        assert all(s["spearman"].shape == (4,) and s["ssim"].shape == (4,) for s in steps)
        assert all(float(s["spearman"].max()) < 1.0 for s in steps)  # gradients follow the weights


def test_model_independent_map_survives_randomisation():
    model = toy()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    steps = parameter_randomisation(model, lambda m, xb, t: xb.clone(), x, mode="cascading")
    for s in steps:
        assert torch.allclose(s["spearman"], torch.ones(3, dtype=torch.float64))
        assert torch.allclose(s["ssim"], torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode must be"):
        parameter_randomisation(model, gradient_map, x, mode="both")
    with pytest.raises(ValueError, match="training mode"):
        parameter_randomisation(toy().train(), gradient_map, x)


def test_embedding_cosine_drop_by_hand():
    backbone = nn.Flatten().eval()
    image = torch.tensor([[[[1.0, 1.0]]]], dtype=torch.float64)
    maps = torch.tensor([[[[2.0, 1.0]]]], dtype=torch.float64)
    out = embedding_cosine_drop(backbone, image, maps, "morf", (0.5, 1.0))
    # 0.5: the first pixel is zeroed → [0, 1] vs [1, 1]: cos = 1/√2; 1.0: all zero → cos 0 → drop 1
    assert out.tolist() == [[pytest.approx(1 - 1 / math.sqrt(2)), pytest.approx(1.0)]]
    lerf = embedding_cosine_drop(backbone, image, maps, "lerf", (0.5,))
    assert lerf.item() == pytest.approx(1 - 1 / math.sqrt(2))


def test_knn_labels_and_agreement_by_hand():
    reference = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.8]])
    assert knn_labels(queries, reference, labels, k=1).tolist() == [0, 1, 2]
    assert knn_labels(queries, reference, labels, k=2).tolist() == [0, 1, 0]  # query 3: neighbours labelled 2 and 0, a tie → 0
    backbone = nn.Flatten().eval()
    image = torch.tensor([[[[1.0, 0.05]]]])
    maps = torch.tensor([[[[5.0, 0.0]]]])
    # removing the first pixel leaves [0, 0.05]: nearest label 1, clean label 0
    out = knn_agreement(backbone, reference, labels, image, maps, "morf", (0.5,), k=1)
    assert out.tolist() == [[False]]
    out = knn_agreement(backbone, reference, labels, image, maps, "lerf", (0.5,), k=1)
    assert out.tolist() == [[True]]
    with pytest.raises(ValueError, match="k must be"):
        knn_labels(queries, reference, labels, k=6)
    with pytest.raises(ValueError, match="integer labels"):
        knn_labels(queries, reference, labels.float())
