"""Perturbation curve, AUC and the accumulating metric on hand-computed 4×4 cases."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sslx.metrics import (
    DEFAULT_FRACTIONS,
    PerturbationAccuracy,
    perturbation_auc,
    perturbation_correct,
    perturbation_curve,
)
from sslx.metrics.perturbation import removal_counts, removal_ranks

WATCHED = 6  # flat row-major index of pixel (row 1, col 2) in a 4×4 image


def pixel_reader(channel: int = 0, class0_logit: float = 0.5) -> nn.Module:
    """A Linear that outputs [class0_logit, value of pixel (1, 2) in `channel`] for a 3×4×4 image."""
    linear = nn.Linear(3 * 16, 2)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1, channel * 16 + WATCHED] = 1.0
        linear.bias.copy_(torch.tensor([class0_logit, 0.0]))
    return nn.Sequential(nn.Flatten(), linear).eval()


def heatmap_with_rank(rank: int) -> torch.Tensor:
    """A 1×1×4×4 heatmap of distinct values in which the watched pixel is the `rank`-th smallest."""
    values = [float(v) for v in range(16) if v != rank]
    values.insert(WATCHED, float(rank))
    return torch.tensor(values).view(1, 1, 4, 4)


def two_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Bright images (0.8 everywhere) with the watched pixel ranked 5th and 10th lowest."""
    images = torch.full((2, 3, 4, 4), 0.8)
    heatmaps = torch.cat([heatmap_with_rank(5), heatmap_with_rank(10)])
    return images, heatmaps


def test_removal_counts_follow_int_of_pixels_times_fraction() -> None:
    # 16·p = 1.6, 3.2, 4.8, 6.4, 8, 9.6, 11.2, 12.8, 14.4 truncated; 224² as in the paper.
    assert removal_counts(16, DEFAULT_FRACTIONS) == [1, 3, 4, 6, 8, 9, 11, 12, 14]
    assert removal_counts(224 * 224, (0.0, 0.1, 0.5)) == [0, 5017, 25088]


def test_removal_ranks_break_ties_in_row_major_order() -> None:
    heat = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).view(1, 1, 2, 2)  # flat [1, 0, 1, 0]
    assert removal_ranks(heat, "negative").tolist() == [[2, 0, 3, 1]]
    assert removal_ranks(heat, "positive").tolist() == [[0, 2, 1, 3]]


def test_negative_curve_matches_hand_computation() -> None:
    images, heatmaps = two_images()
    # Watched pixel rank 5 survives counts 1, 3, 4; rank 10 survives 1, 3, 4, 6, 8, 9.
    correct = perturbation_correct(pixel_reader(), images, heatmaps, torch.tensor([1, 1]))
    assert correct.dtype == torch.bool and correct.shape == (2, 9)
    assert correct[0].tolist() == [True] * 3 + [False] * 6
    assert correct[1].tolist() == [True] * 6 + [False] * 3
    curve = perturbation_curve(pixel_reader(), images, heatmaps, torch.tensor([1, 1]))
    assert curve.dtype == images.dtype
    assert curve.tolist() == [100.0, 100.0, 100.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0]


def test_positive_order_removes_highest_values_first() -> None:
    images, heatmaps = two_images()
    # Descending ranks of the watched pixel: 15 - 5 = 10 and 15 - 10 = 5.
    correct = perturbation_correct(pixel_reader(), images, heatmaps, [1, 1], order="positive")
    assert correct[0].tolist() == [True] * 6 + [False] * 3
    assert correct[1].tolist() == [True] * 3 + [False] * 6


def test_ties_remove_top_left_pixels_first() -> None:
    images = torch.full((1, 3, 4, 4), 0.8)
    flat = torch.zeros(1, 1, 4, 4)  # all tied: removal follows row-major order, watched pixel 7th
    for order in ("negative", "positive"):
        curve = perturbation_curve(pixel_reader(), images, flat, 1, order=order)
        assert curve.tolist() == [100.0] * 4 + [0.0] * 5  # counts 1, 3, 4, 6 keep index 6


def test_all_channels_are_zeroed() -> None:
    images, heatmaps = two_images()
    for channel in (0, 1, 2):
        correct = perturbation_correct(pixel_reader(channel), images, heatmaps, [1, 1])
        assert correct[0].tolist() == [True] * 3 + [False] * 6


def test_normalize_is_applied_after_zeroing() -> None:
    images, heatmaps = two_images()
    model = pixel_reader(class0_logit=-0.2)  # a zeroed pixel (0 > -0.2) still reads as class 1 ...
    assert perturbation_curve(model, images, heatmaps, [1, 1]).tolist() == [100.0] * 9
    # ... but after x - 0.5 it reads -0.5 < -0.2: the same curve as the hand-computed one.
    curve = perturbation_curve(model, images, heatmaps, [1, 1], normalize=lambda x: x - 0.5)
    assert curve.tolist() == [100.0, 100.0, 100.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0]


def test_fraction_zero_gives_clean_accuracy_and_predicted_targets() -> None:
    images, heatmaps = two_images()
    images[1, 0, 1, 2] = 0.3  # clean prediction of image 1 is class 0 (0.3 < 0.5)
    model = pixel_reader()
    target = perturbation_correct(model, images, heatmaps, [1, 1], fractions=(0.0, 0.1, 0.5))
    assert target.tolist() == [[True, True, False], [False, False, False]]
    # "predicted" test: targets=None uses the clean top-1, so image 1's target is class 0, which a
    # removed (zero) pixel keeps predicting.
    predicted = perturbation_correct(model, images, heatmaps, None, fractions=(0.0, 0.1, 0.5))
    assert predicted.tolist() == [[True, True, False], [True, True, True]]
    assert torch.equal(predicted, perturbation_correct(model, images, heatmaps, [1, 0], fractions=(0.0, 0.1, 0.5)))


def test_chunking_does_not_change_results() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)).eval()
    images, heatmaps = torch.rand(5, 3, 4, 4), torch.randn(5, 1, 4, 4)
    reference = perturbation_correct(model, images, heatmaps, None)
    for batch_size in (1, 4, 7, 45, 1000):
        assert torch.equal(perturbation_correct(model, images, heatmaps, None, batch_size=batch_size), reference)
    # Each image perturbed alone gives the same row as in the batch.
    rows = [perturbation_correct(model, images[i : i + 1], heatmaps[i : i + 1], None) for i in range(5)]
    assert torch.equal(torch.cat(rows), reference)


def test_auc_trapezoid_conventions() -> None:
    curve = [100.0, 100.0, 100.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0]
    # 0.1·(100 + 100 + 75 + 50 + 50 + 25 + 0 + 0) = 40
    assert perturbation_auc(DEFAULT_FRACTIONS, curve).item() == pytest.approx(40.0)
    assert perturbation_auc(DEFAULT_FRACTIONS, torch.tensor(curve)).item() == pytest.approx(40.0)
    # p = 0 prepended with clean accuracy 100 adds 0.1·100.
    with_zero = perturbation_auc(DEFAULT_FRACTIONS, curve, include_zero=True, clean_accuracy=100.0)
    assert with_zero.item() == pytest.approx(50.0)
    assert perturbation_auc(DEFAULT_FRACTIONS, [100.0] * 9).item() == pytest.approx(80.0)
    assert perturbation_auc((0.0, 0.5, 1.0), [100.0, 50.0, 0.0]).item() == pytest.approx(50.0)


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="9 fractions"):
        perturbation_auc(DEFAULT_FRACTIONS, [1.0, 2.0])
    with pytest.raises(ValueError, match="clean_accuracy"):
        perturbation_auc(DEFAULT_FRACTIONS, [50.0] * 9, include_zero=True)
    with pytest.raises(ValueError, match="already start"):
        perturbation_auc((0.0, 0.5), [50.0, 50.0], include_zero=True, clean_accuracy=90.0)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        perturbation_auc((0.1, 0.2), [50.0, 150.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        perturbation_auc((0.2, 0.1), [50.0, 50.0])
    with pytest.raises(ValueError, match="two points"):
        perturbation_auc((0.5,), [50.0])


def test_metric_accumulates_two_batches_like_one() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).eval()
    images, heatmaps, labels = torch.rand(6, 3, 4, 4), torch.randn(6, 1, 4, 4), torch.randint(0, 3, (6,))
    correct = perturbation_correct(model, images, heatmaps, labels)
    whole, split = PerturbationAccuracy(), PerturbationAccuracy()
    whole.update(correct)
    split.update(correct[:4])
    split.update(correct[4:])
    a, b = whole.compute(), split.compute()
    assert torch.equal(a["accuracy"], b["accuracy"]) and a["n_images"].item() == b["n_images"].item() == 6
    expected_curve = perturbation_curve(model, images, heatmaps, labels).double()
    torch.testing.assert_close(a["accuracy"], expected_curve)
    torch.testing.assert_close(a["auc"], perturbation_auc(DEFAULT_FRACTIONS, expected_curve))


def test_metric_hand_computed_curve() -> None:
    images, heatmaps = two_images()
    metric = PerturbationAccuracy(fractions=(0.0,) + DEFAULT_FRACTIONS)
    metric.update(perturbation_correct(pixel_reader(), images, heatmaps, [1, 1], fractions=metric.fractions))
    out = metric.compute()
    assert out["accuracy"].tolist() == [100.0, 100.0, 100.0, 100.0, 50.0, 50.0, 50.0, 0.0, 0.0, 0.0]
    assert out["fractions"][0].item() == 0.0
    assert out["auc"].item() == pytest.approx(50.0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_rejects_bad_updates() -> None:
    metric = PerturbationAccuracy()
    with pytest.raises(ValueError, match="no images"):
        metric.compute()
    with pytest.raises(ValueError, match="B×9"):
        metric.update(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        metric.update(torch.ones(2, 9))


def test_bad_inputs_raise_clear_errors() -> None:
    images, heatmaps = two_images()
    model = pixel_reader()
    with pytest.raises(ValueError, match="does not match images"):
        perturbation_curve(model, images, heatmaps[:, :, :3], [1, 1])
    with pytest.raises(ValueError, match="does not match images"):
        perturbation_curve(model, images, heatmaps[:1], [1, 1])
    with pytest.raises(ValueError, match="1 channels|must have 1 channels"):
        perturbation_curve(model, images, heatmaps.expand(2, 3, 4, 4), [1, 1])
    with pytest.raises(TypeError, match="floating-point"):
        perturbation_curve(model, images, heatmaps.long(), [1, 1])
    with pytest.raises(ValueError, match="empty batch"):
        perturbation_curve(model, images[:0], heatmaps[:0], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        perturbation_curve(model, images - 1.0, heatmaps, [1, 1])
    with pytest.raises(ValueError, match="order"):
        perturbation_curve(model, images, heatmaps, [1, 1], order="lowest")
    with pytest.raises(ValueError, match="out of range"):
        perturbation_curve(model, images, heatmaps, [1, 2])
    with pytest.raises(ValueError, match="2 targets|got 3 targets"):
        perturbation_curve(model, images, heatmaps, [1, 1, 1])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        perturbation_curve(model, images, heatmaps, [1, 1], fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match="empty"):
        perturbation_curve(model, images, heatmaps, [1, 1], fractions=())
    with pytest.raises(ValueError, match="batch_size"):
        perturbation_curve(model, images, heatmaps, [1, 1], batch_size=0)
    with pytest.raises(ValueError, match="training mode"):
        perturbation_curve(model.train(), images, heatmaps, [1, 1])
    with pytest.raises(ValueError, match="logits of shape"):
        perturbation_curve(nn.Identity().eval(), images, heatmaps, [1, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    images, heatmaps = two_images()
    cpu = perturbation_correct(pixel_reader(), images, heatmaps, [1, 1])
    cuda = perturbation_correct(pixel_reader().cuda(), images.cuda(), heatmaps.cuda(), [1, 1])
    assert cuda.device.type == "cuda" and torch.equal(cuda.cpu(), cpu)
