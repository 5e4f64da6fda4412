"""Pieces of the tiny DINO trainer (experiments/train_dino_vit.py) on hand-computed cases: Sinkhorn–Knopp
centring, the KoLeo regulariser and the local crops' source rows."""
from __future__ import annotations

import math

import pytest
import torch

from tests.test_dino_vit_load import _dino_training_module


@pytest.fixture(scope="module")
def trainer():
    return _dino_training_module()


def test_sinkhorn_one_iteration_by_hand(trainer):
    # exp(logits) = [[3, 1], [1, 1]]; /6 → prototype columns to 1/2 each → image rows to 1/2 each → ×2
    q = trainer.sinkhorn_knopp(torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]]), temp=1.0, iters=1)
    assert torch.allclose(q, torch.tensor([[0.6, 0.4], [1 / 3, 2 / 3]]), atol=1e-6)


def test_sinkhorn_spreads_a_batch_that_prefers_one_prototype(trainer):
    # every image prefers prototype 0; equipartition over the batch turns that into uniform targets
    q = trainer.sinkhorn_knopp(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), temp=1.0, iters=3)
    assert torch.allclose(q, torch.full((2, 2), 0.5), atol=1e-6)
    # a batch that already splits evenly keeps its per-image softmax
    q = trainer.sinkhorn_knopp(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), temp=1.0, iters=3)
    p = math.exp(2) / (1 + math.exp(2))
    assert torch.allclose(q, torch.tensor([[p, 1 - p], [1 - p, p]]), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_prototypes_share_the_batch(trainer):
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    q = trainer.sinkhorn_knopp(logits, temp=0.1, iters=3)
    assert torch.allclose(q.sum(1), torch.ones(6), atol=1e-5)
    q = trainer.sinkhorn_knopp(logits, temp=0.1, iters=200)
    assert torch.allclose(q.sum(0), torch.full((4,), 6 / 4), atol=1e-3)  # B / K per prototype


@pytest.mark.parametrize("args", [(torch.zeros(3), 0.1, 3), (torch.zeros(2, 3), 0.0, 3), (torch.zeros(2, 3), 0.1, 0)])
def test_sinkhorn_refuses_bad_input(trainer, args):
    with pytest.raises(ValueError):
        trainer.sinkhorn_knopp(*args)


def test_koleo_on_three_hand_placed_points(trainer):
    # directions 0°, 60°, 180° (norms differ: KoLeo normalises); nearest chords 1, 1 and √3
    x = torch.tensor([[2.0, 0.0], [0.25, 0.25 * math.sqrt(3)], [-3.0, 0.0]])
    assert float(trainer.koleo_loss(x)) == pytest.approx(-math.log(3) / 6, abs=1e-6)


def test_koleo_gradient_pushes_the_closest_points_apart(trainer):
    angles = torch.tensor([0.0, 0.1, 2.0], requires_grad=True)
    trainer.koleo_loss(torch.stack([angles.cos(), angles.sin()], 1)).backward()
    assert angles.grad[0] > 0 > angles.grad[1]  # descending the loss moves 0 down and 1 up: apart


def test_koleo_refuses_a_single_feature(trainer):
    with pytest.raises(ValueError):
        trainer.koleo_loss(torch.zeros(1, 4))


def test_local_crops_line_up_with_the_teachers_scenes(trainer):
    assert trainer.local_sources(3, 4).tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    assert trainer.local_sources(3, 0).numel() == 0
    with pytest.raises(ValueError):
        trainer.local_sources(0, 2)
