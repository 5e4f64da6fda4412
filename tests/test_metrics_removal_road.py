"""Removal orders, ROAD's noisy linear imputation, ROAD and insertion/deletion on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from sslx.metrics import curve_area, insertion_deletion_curve, noisy_linear_impute, removal_masks, road_scores

W_DIRECT, W_DIAG = 1 / 6, 1 / 12


def dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Literal reference: one equation per removed pixel, Σ_j w_ij (v_i − v_j) = 0, dense solve."""
    h, w = image.shape
    unknown = [(i, j) for i in range(h) for j in range(w) if removed[i, j]]
    index = {p: k for k, p in enumerate(unknown)}
    a = np.zeros((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    for k, (i, j) in enumerate(unknown):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) == (0, 0) or not (0 <= i + di < h and 0 <= j + dj < w):
                    continue
                weight = W_DIRECT if di == 0 or dj == 0 else W_DIAG
                a[k, k] += weight
                if removed[i + di, j + dj]:
                    a[k, index[(i + di, j + dj)]] -= weight
                else:
                    b[k] += weight * image[i + di, j + dj]
    out = image.copy()
    for (i, j), v in zip(unknown, np.linalg.solve(a, b)):
        out[i, j] = v
    return out


def test_removal_masks_hand_case_morf_and_lerf_with_ties():
    maps = torch.tensor([[[[3.0, 1.0], [2.0, 2.0]]]])
    morf = removal_masks(maps, "morf", (0.25, 0.5, 0.75))[:, 0, 0]
    lerf = removal_masks(maps, "lerf", (0.25, 0.5, 0.75))[:, 0, 0]
    assert morf.tolist() == [[[True, False], [False, False]], [[True, False], [True, False]],
                             [[True, False], [True, True]]]
    assert lerf.tolist() == [[[False, True], [False, False]], [[False, True], [True, False]],
                             [[False, True], [True, True]]]
    with pytest.raises(ValueError, match="order must be one of"):
        removal_masks(maps, "positive", (0.5,))


def test_imputation_single_pixels_by_hand():
    image = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    image[0, 0, 0, 1], image[0, 0, 1, 0], image[0, 0, 1, 1] = 0.3, 0.6, 0.9
    centre = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    centre[..., 1, 1] = True
    # centre: weighted mean of 8 neighbours, total weight 4/6 + 4/12 = 1 → 0.3/6 + 0.6/6
    for solver in ("direct", "cg"):
        out = noisy_linear_impute(image, centre, noise=0.0, solver=solver)
        assert out[0, 0, 1, 1].item() == pytest.approx(0.15, abs=1e-9)
    corner = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    corner[..., 0, 0] = True
    # corner: in-image neighbours (0,1), (1,0) with 1/6 and (1,1) with 1/12; degree 5/12
    expected = (0.3 / 6 + 0.6 / 6 + 0.9 / 12) / (5 / 12)
    out = noisy_linear_impute(image, corner, noise=0.0)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-9)
    assert torch.equal(out[~corner.expand_as(out)], image[~corner.expand_as(image)])


def test_imputation_matches_dense_literal_solve_on_random_holes():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 9, 7, generator=gen, dtype=torch.float64)
    removed = torch.rand(2, 1, 9, 7, generator=gen) < 0.6
    direct = noisy_linear_impute(image, removed, noise=0.0)
    cg = noisy_linear_impute(image, removed, noise=0.0, tol=1e-12, solver="cg")
    for b in range(2):
        for c in range(3):
            ref = dense_imputation(image[b, c].numpy(), removed[b, 0].numpy())
            np.testing.assert_allclose(direct[b, c].numpy(), ref, atol=1e-12)
            np.testing.assert_allclose(cg[b, c].numpy(), ref, atol=1e-8)


def test_imputation_noise_only_on_removed_pixels_and_seeded():
    image = torch.full((1, 1, 6, 6), 0.5, dtype=torch.float64)
    removed = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    removed[..., 2:4, 2:4] = True
    a = noisy_linear_impute(image, removed, 0.1, torch.Generator().manual_seed(1))
    b = noisy_linear_impute(image, removed, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    noise = torch.randn((1, 1, 6, 6), generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    assert torch.allclose(a[removed], 0.5 + noise[removed], atol=1e-9)
    assert torch.equal(a[~removed], image[~removed])


def test_imputation_errors():
    image = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="every pixel removed"):
        noisy_linear_impute(image, torch.ones(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor"):
        noisy_linear_impute(image, torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="must have shape"):
        noisy_linear_impute(image, torch.ones(1, 1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="noise"):
        noisy_linear_impute(image, torch.zeros(1, 1, 4, 4, dtype=torch.bool), noise=-1.0)


class WeightedSum(nn.Module):
    """Logits [Σ w·x, 0] of a 1-channel image: the target-0 probability is sigmoid(Σ w·x)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weights).flatten(1).sum(dim=1)
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_road_on_a_constant_image_keeps_the_clean_probability():
    # Linear imputation of a constant image is the constant: every ROAD step scores like the clean image.
    weights = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64).view(1, 1, 2, 2).repeat(1, 1, 4, 4)
    model = WeightedSum(weights).eval()
    image = torch.full((1, 1, 8, 8), 0.25, dtype=torch.float64)
    maps = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    clean = sigmoid(0.25 * float(weights.sum()))
    for order in ("morf", "lerf"):
        out = road_scores(model, image, maps, 0, order, (0.25, 0.5, 0.75), noise=0.0)
        assert torch.allclose(out.probability, torch.full((1, 3), clean, dtype=torch.float64), atol=1e-9)
        assert out.correct.tolist() == [[clean > 0.5] * 3]


def test_road_equals_model_on_imputed_image():
    gen = torch.Generator().manual_seed(5)
    weights = torch.randn(1, 1, 6, 6, generator=gen, dtype=torch.float64)
    model = WeightedSum(weights).eval()
    image = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    maps = weights.expand(2, 1, 6, 6).clone()
    out = road_scores(model, image, maps, [0, 1], "morf", (0.5,), noise=0.0)
    removed = removal_masks(maps, "morf", (0.5,))[0]
    logits = model(noisy_linear_impute(image, removed, 0.0).clamp(0, 1))
    expected = logits.softmax(dim=1)[[0, 1], [0, 1]]
    assert torch.allclose(out.probability[:, 0], expected, atol=1e-9)


def test_deletion_and_insertion_hand_case():
    # 2×2 image of ones, logit Σ w·x with w = [[4, 2], [1, 0]]; map = w; zero baseline; steps of one pixel.
    weights = torch.tensor([[[[4.0, 2.0], [1.0, 0.0]]]], dtype=torch.float64)
    model = WeightedSum(weights).eval()
    image = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    fractions, deletion = insertion_deletion_curve(model, image, weights, 0, "deletion", 4, "zero")
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert deletion[0].tolist() == pytest.approx([sigmoid(7), sigmoid(3), sigmoid(1), sigmoid(0), sigmoid(0)])
    _, insertion = insertion_deletion_curve(model, image, weights, 0, "insertion", 4, "zero")
    assert insertion[0].tolist() == pytest.approx([sigmoid(0), sigmoid(4), sigmoid(6), sigmoid(7), sigmoid(7)])
    area = curve_area(fractions, deletion)
    hand = 0.25 * (sigmoid(7) / 2 + sigmoid(3) + sigmoid(1) + sigmoid(0) + sigmoid(0) / 2)
    assert area.item() == pytest.approx(hand)


def test_removal_metric_errors():
    model = WeightedSum(torch.ones(1, 1, 4, 4)).eval()
    image, maps = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        road_scores(model, image * 3, maps)
    with pytest.raises(ValueError, match="does not match"):
        road_scores(model, image, torch.rand(1, 1, 3, 4))
    with pytest.raises(ValueError, match="training mode"):
        road_scores(WeightedSum(torch.ones(1, 1, 4, 4)).train(), image, maps)
    with pytest.raises(ValueError, match="kind must be"):
        insertion_deletion_curve(model, image, maps, kind="both")
    with pytest.raises(ValueError, match="out of range"):
        road_scores(model, image, maps, targets=5)
