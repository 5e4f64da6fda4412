"""Pointing game, relevance mass / rank accuracy, Spearman and SSIM on hand-computed cases and vs scikit-image/scipy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from sslx.metrics import average_ranks, pointing_game, relevance_mass, relevance_rank_accuracy, spearman, ssim


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    maps = torch.tensor([[[[0.1, 0.5, 0.0], [0.2, 0.5, 0.7], [0.0, 0.0, 0.0]]],
                         [[[0.9, 0.1, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]],
                         [[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    masks = torch.zeros(3, 1, 3, 3, dtype=torch.bool)
    masks[0, 0, 0, 1] = masks[0, 0, 1, 1] = True        # mask {(0,1), (1,1)}; max at (1,2) → miss
    masks[1, 0, 0, 0] = masks[1, 0, 0, 2] = True         # max at (0,0) → hit
    return maps, masks  # image 2: empty mask


def test_pointing_game_by_hand():
    maps, masks = batch()
    out = pointing_game(maps, masks)
    assert out[:2].tolist() == [0.0, 1.0] and torch.isnan(out[2])
    tie = torch.tensor([[[[1.0, 1.0]]]])
    assert pointing_game(tie, torch.tensor([[[[False, True]]]])).item() == 1.0  # any of tied maxima counts


def test_relevance_mass_by_hand():
    maps, masks = batch()
    out = relevance_mass(maps, masks)
    assert out[0].item() == pytest.approx(1.0 / 2.0)  # (0.5 + 0.5) / 2.0
    assert out[1].item() == pytest.approx(1.0 / 1.1)
    assert torch.isnan(out[2])
    assert torch.isnan(relevance_mass(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2, dtype=torch.bool))).all()


def test_relevance_rank_accuracy_by_hand():
    maps, masks = batch()
    out = relevance_rank_accuracy(maps, masks)
    # image 0: K = 2, top-2 = (1,2) 0.7 and (0,1) 0.5 (stable: before (1,1)) → 1 of 2 in the mask
    # image 1: K = 2, top-2 = (0,0) 0.9 and (0,1) 0.1 (stable) → 1 of 2
    assert out[:2].tolist() == [0.5, 0.5] and torch.isnan(out[2])


def test_localisation_errors():
    maps, masks = batch()
    with pytest.raises(TypeError, match="bool"):
        pointing_game(maps, masks.float())
    with pytest.raises(ValueError, match="does not match"):
        relevance_mass(maps, masks[:, :, :2])
    with pytest.raises(ValueError, match="channels"):
        relevance_rank_accuracy(maps.expand(3, 2, 3, 3), masks)


def test_average_ranks_and_spearman_by_hand():
    x = torch.tensor([[10.0, 20.0, 20.0, 5.0]])
    assert average_ranks(x).tolist() == [[2.0, 3.5, 3.5, 1.0]]
    a = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    b = torch.tensor([1.0, 2.0, 2.0, 4.0]).view(1, 1, 2, 2)
    # ranks (1,2,3,4) vs (1,2.5,2.5,4): centred (−1.5,−.5,.5,1.5)·(−1.5,0,0,1.5) = 4.5; norms √5, √4.5
    assert spearman(a, b).item() == pytest.approx(4.5 / np.sqrt(5 * 4.5))
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    assert torch.isnan(spearman(a, torch.ones_like(a))).all()


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 1, 6, 6), generator=gen).double()
    b = a + torch.randint(0, 3, (4, 1, 6, 6), generator=gen).double()
    ours = spearman(a, b)
    for i in range(4):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-12)


def test_ssim_single_window_literal_and_vs_skimage():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 1, 7, 7, generator=gen, dtype=torch.float64)
    b = torch.rand(1, 1, 7, 7, generator=gen, dtype=torch.float64)
    x = (a - a.min()) / (a.max() - a.min())
    y = (b - b.min()) / (b.max() - b.min())
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(unbiased=True), y.var(unbiased=True)
    cxy = ((x - mx) * (y - my)).sum() / 48
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    literal = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert ssim(a, b).item() == pytest.approx(literal.item(), abs=1e-12)
    assert ssim(a, a).item() == pytest.approx(1.0)
    big_a = torch.rand(2, 1, 20, 17, generator=gen, dtype=torch.float64)
    big_b = big_a + 0.3 * torch.rand(2, 1, 20, 17, generator=gen, dtype=torch.float64)
    ours = ssim(big_a, big_b)
    for i in range(2):
        ua = ((big_a[i, 0] - big_a[i].min()) / (big_a[i].max() - big_a[i].min())).numpy()
        ub = ((big_b[i, 0] - big_b[i].min()) / (big_b[i].max() - big_b[i].min())).numpy()
        assert ours[i].item() == pytest.approx(structural_similarity(ua, ub, data_range=1.0), abs=1e-9)
    with pytest.raises(ValueError, match="at least 7"):
        ssim(a[..., :5, :5], b[..., :5, :5])
