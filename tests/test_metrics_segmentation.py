"""Segmentation scores, average precision and class specificity on hand-drawn 4×4 cases; the authors' mAP protocol
against an independent restatement of their `get_ap_scores` (AGFVisualization, utils/metrices.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_average_precision

from sslx.metrics import SegmentationScores, average_precision, class_specificity, segmentation_counts, segmentation_scores
from sslx.metrics.segmentation import foreground_prediction

RAW = "per_image_raw"

# Signed map: positive part = the 2×2 top-left block and (2, 3).
HEAT = torch.tensor(
    [[1.0, 2.0, -1.0, -1.0],
     [3.0, 4.0, -1.0, -1.0],
     [-1.0, -1.0, -1.0, 5.0],
     [-1.0, -1.0, -1.0, -1.0]]
).view(1, 1, 4, 4)
# Object: the 2×2 top-left block and (0, 2).
MASK = torch.tensor(
    [[1, 1, 1, 0],
     [1, 1, 0, 0],
     [0, 0, 0, 0],
     [0, 0, 0, 0]]
).view(1, 4, 4)

# Hand computation for HEAT vs MASK:
#   fg: predicted 5, true 5, intersection 4, union 6 → 4/6;  bg: intersection 10, union 12 → 10/12
#   pixel accuracy 14/16; mIoU (2/3 + 5/6) / 2 = 3/4
#   raw AP: descending scores 5(−) 4(+) 3(+) 2(+) 1(+) then the −1 tie group (1+, 10−):
#       (1/5)·(1/2 + 2/3 + 3/4 + 4/5 + 5/16) = 727/1200
#   authors' AP: 32 entries [1 − pred, pred] vs one-hot truth; score 1 on the 16 entries of the predicted
#       channel, 14 of them right (P = R = 14/16), then score 0: R = 1, P = 16/32 →
#       (14/16)·(14/16) + (2/16)·(1/2) = 53/64
EXPECTED = {"pixel_accuracy": 87.5, "mIoU": 75.0, "iou_foreground": 400 / 6, "iou_background": 1000 / 12,
            "mAP": 72700 / 1200}
AUTHORS_MAP = 100 * 53 / 64


def assert_scores(scores: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        assert scores[key].item() == pytest.approx(value, abs=1e-4), key


def test_hand_drawn_case() -> None:
    scores = segmentation_scores(HEAT, MASK, protocol=RAW)
    assert_scores(scores, EXPECTED)
    assert scores["n_excluded"].item() == 0 and scores["n_ap_images"].item() == 1
    assert scores["mIoU"].dtype == HEAT.dtype
    authors = segmentation_scores(HEAT, MASK)  # the default protocol
    assert_scores(authors, {**EXPECTED, "mAP": AUTHORS_MAP})


def test_masks_with_channel_dim_and_bool_and_label_values() -> None:
    assert_scores(segmentation_scores(HEAT, MASK.unsqueeze(1), protocol=RAW), EXPECTED)
    assert_scores(segmentation_scores(HEAT, MASK.bool(), protocol=RAW), EXPECTED)
    assert_scores(segmentation_scores(HEAT, (MASK * 7).to(torch.uint8), protocol=RAW), EXPECTED)  # any label > 0 is fg
    assert_scores(segmentation_scores(HEAT, (MASK * 7).to(torch.uint8)), {"mAP": AUTHORS_MAP})


def test_average_precision_sklearn_example_and_ties() -> None:
    # sklearn's docstring example: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333
    ap = average_precision(torch.tensor([[0.1, 0.4, 0.35, 0.8]]), torch.tensor([[False, False, True, True]]))
    assert ap.item() == pytest.approx(5 / 6)
    # All scores tied: one threshold, AP = precision = positives / all.
    ap = average_precision(torch.zeros(1, 4), torch.tensor([[True, False, False, False]]))
    assert ap.item() == pytest.approx(0.25)
    # A tie between a positive and a negative at the top: P = 1/2 there, then 2/3 → (1/2 + 2/3)/2.
    ap = average_precision(torch.tensor([[0.9, 0.9, 0.5, 0.1]]), torch.tensor([[True, False, True, False]]))
    assert ap.item() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_average_precision_equals_torchmetrics_per_row() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (8, 40), generator=gen).float()  # many ties
    labels = torch.rand(8, 40, generator=gen) > 0.6
    valid = torch.rand(8, 40, generator=gen) > 0.2
    ours = average_precision(scores, labels, valid)
    for i in range(8):
        reference = binary_average_precision(scores[i][valid[i]], labels[i][valid[i]].long())
        assert ours[i].item() == pytest.approx(reference.item(), abs=1e-6)
    assert torch.isnan(average_precision(scores[:1], torch.zeros(1, 40, dtype=torch.bool))).all()


def test_scale_invariance_of_signed_map() -> None:
    assert_scores(segmentation_scores(HEAT * 7.0, MASK, protocol=RAW), EXPECTED)
    assert_scores(segmentation_scores(HEAT * 7.0, MASK), {"mAP": AUTHORS_MAP})


def test_threshold_auto_uses_mean_for_non_negative_maps() -> None:
    shifted = HEAT + 2.0  # non-negative, mean 2.25: the same pixels are above it as HEAT above 0
    assert_scores(segmentation_scores(shifted, MASK, protocol=RAW), EXPECTED)
    # A fixed threshold of 0 marks all 16 pixels as foreground: 5/16 correct; authors' AP (5/16)² + (11/16)/2
    fixed = segmentation_scores(shifted, MASK, threshold=0.0)
    assert fixed["pixel_accuracy"].item() == pytest.approx(31.25)
    assert fixed["mAP"].item() == pytest.approx(100 * ((5 / 16) ** 2 + 11 / 32))
    # One map signed, one not, in the same batch: each gets its own rule.
    both = segmentation_scores(torch.cat([HEAT, shifted]), torch.cat([MASK, MASK]), protocol=RAW)
    assert_scores(both, EXPECTED)


def test_pixels_at_the_threshold_are_background() -> None:
    signed = torch.tensor([-1.0, 0.0, 0.0, 2.0]).view(1, 1, 2, 2)  # threshold 0: the zeros are bg
    assert foreground_prediction(signed)[0].flatten().tolist() == [False, False, False, True]
    flat = torch.full((1, 1, 2, 2), 3.0)  # non-negative, every pixel equals the mean
    assert not foreground_prediction(flat).any()


def test_threshold_mean_on_signed_map() -> None:
    heat = HEAT.clone()
    heat[0, 0, 2, 3] = 50.0  # mean = (10 + 50 - 11) / 16 = 49/16 ≈ 3.06
    assert foreground_prediction(heat, "auto")[0].sum().item() == 5  # signed: > 0
    above_mean = foreground_prediction(heat, "mean")[0]
    assert above_mean.nonzero().tolist() == [[1, 1], [2, 3]]  # only 4 and 50 exceed 3.06


def test_ignore_index_excludes_pixels_everywhere() -> None:
    mask = MASK.clone()
    mask[0, 2, 3] = 255  # the false-positive pixel (score 5)
    # valid 15; fg I/U = 4/5; bg I/U = 10/11; correct 14/15; AP = (1/5)(1 + 1 + 1 + 1 + 5/15) = 13/15
    scores = segmentation_scores(HEAT, mask, protocol=RAW)
    assert_scores(scores, {"pixel_accuracy": 1400 / 15, "mIoU": 50 * (0.8 + 10 / 11), "mAP": 1300 / 15})
    # authors' AP over the 30 valid entries: (14/15)² + (1/15)/2 = 407/450
    assert_scores(segmentation_scores(HEAT, mask), {"mAP": 100 * 407 / 450})
    # Without ignore_index the 255 is foreground: that pixel becomes a true positive.
    assert segmentation_scores(HEAT, mask, ignore_index=None)["pixel_accuracy"].item() == pytest.approx(100 * 15 / 16)
    with pytest.raises(ValueError, match="no valid pixels"):
        segmentation_scores(HEAT, torch.full_like(MASK, 255))


def test_image_without_foreground_is_excluded_from_raw_map_only() -> None:
    empty = torch.zeros_like(MASK)
    scores = segmentation_scores(torch.cat([HEAT, HEAT]), torch.cat([MASK, empty]), protocol=RAW)
    assert scores["n_excluded"].item() == 1 and scores["n_ap_images"].item() == 1
    assert scores["mAP"].item() == pytest.approx(EXPECTED["mAP"])
    # Second image: 5 false positives, 11 correct → (14 + 11) / 32
    assert scores["pixel_accuracy"].item() == pytest.approx(100 * 25 / 32)
    assert torch.isnan(segmentation_scores(HEAT, empty, protocol=RAW)["mAP"])
    # The authors' protocol scores the background channel too: the second image has AP (11/16)² + (5/16)/2.
    authors = segmentation_scores(torch.cat([HEAT, HEAT]), torch.cat([MASK, empty]))
    assert authors["n_excluded"].item() == 0 and authors["n_ap_images"].item() == 2
    assert authors["mAP"].item() == pytest.approx(50 * (53 / 64 + (11 / 16) ** 2 + 5 / 32))


def test_metric_two_batches_equal_one_batch() -> None:
    gen = torch.Generator().manual_seed(3)
    heat = torch.randn(5, 1, 6, 6, generator=gen)
    heat[1] = heat[1].abs()  # a non-negative map in the mix
    masks = torch.randint(0, 2, (5, 6, 6), generator=gen)
    masks[2] = 0  # excluded from mAP
    masks[3, :2] = 255
    for protocol, excluded in ((RAW, 1), ("authors", 0)):
        whole, split = SegmentationScores(protocol=protocol), SegmentationScores(protocol=protocol)
        whole.update(heat, masks)
        split.update(heat[:2], masks[:2])
        split.update(heat[2:], masks[2:])
        a, b = whole.compute(), split.compute()
        direct = segmentation_scores(heat.double(), masks, protocol=protocol)
        for key in a:
            torch.testing.assert_close(a[key], b[key])
            torch.testing.assert_close(a[key], direct[key])
        assert a["n_excluded"].item() == excluded
    # Dataset-level pixel accuracy is not the mean of per-batch accuracies when batches differ in size.
    first = segmentation_scores(heat[:2], masks[:2])["pixel_accuracy"]
    second = segmentation_scores(heat[2:], masks[2:])["pixel_accuracy"]
    valid = [int((masks[:2] != 255).sum()), int((masks[2:] != 255).sum())]
    pooled = (first.double() * valid[0] + second.double() * valid[1]) / sum(valid)
    assert a["pixel_accuracy"].item() == pytest.approx(pooled.item(), abs=1e-4)


def test_class_specificity_hand_case() -> None:
    mask_a = torch.zeros(1, 4, 4, dtype=torch.long)
    mask_a[..., :2] = 1
    mask_b = 1 - mask_a
    heat_a = torch.where(mask_a.bool(), 1.0, -1.0).view(1, 1, 4, 4)  # exactly object a
    heat_b = -torch.ones(1, 1, 4, 4)
    heat_b[..., 1:3] = 1.0  # columns 1–2: half on each object → I/U = 4/12 with both
    out = class_specificity(heat_a, heat_b, mask_a, mask_b)
    expected = {"iou_own_a": 100.0, "iou_other_a": 0.0, "iou_own_b": 100 / 3, "iou_other_b": 100 / 3,
                "iou_own": 200 / 3, "iou_other": 50 / 3}
    for key, value in expected.items():
        assert out[key].shape == (1,) and out[key].item() == pytest.approx(value), key
    with pytest.raises(ValueError, match="mask_b has no object pixels"):
        class_specificity(heat_a, heat_b, mask_a, torch.zeros_like(mask_b))


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="does not match heatmaps"):
        segmentation_scores(HEAT, MASK[:, :3])
    with pytest.raises(ValueError, match="does not match heatmaps"):
        segmentation_scores(torch.cat([HEAT, HEAT]), MASK)
    with pytest.raises(TypeError, match="integer or bool"):
        segmentation_scores(HEAT, MASK.float())
    with pytest.raises(TypeError, match="floating-point"):
        segmentation_scores(HEAT.long(), MASK)
    with pytest.raises(ValueError, match="empty batch"):
        segmentation_scores(HEAT[:0], MASK[:0])
    with pytest.raises(ValueError, match="1 channels"):
        segmentation_scores(HEAT.expand(1, 3, 4, 4), MASK)
    with pytest.raises(ValueError, match="negative labels"):
        segmentation_scores(HEAT, MASK - 1)
    with pytest.raises(ValueError, match="threshold"):
        segmentation_scores(HEAT, MASK, threshold="median")
    with pytest.raises(ValueError, match="NaN"):
        segmentation_scores(HEAT * float("nan"), MASK)
    with pytest.raises(ValueError, match="threshold"):
        SegmentationScores(threshold="otsu")
    with pytest.raises(ValueError, match="protocol must be one of"):
        segmentation_scores(HEAT, MASK, protocol="voc")
    with pytest.raises(ValueError, match="protocol must be one of"):
        SegmentationScores(protocol=None)
    with pytest.raises(ValueError, match="does not match heat_b"):
        class_specificity(HEAT, HEAT[..., :3], MASK, MASK)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(5)
    heat, masks = torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 2, (4, 8, 8), generator=gen)
    cpu, cuda = segmentation_scores(heat, masks), segmentation_scores(heat.cuda(), masks.cuda())
    for key in cpu:
        assert cuda[key].device.type == "cuda"
        torch.testing.assert_close(cuda[key].cpu(), cpu[key])


# ------------------------------------------------------------------------ the authors' mAP protocol
def sklearn_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """sklearn's average_precision_score for binary labels, restated from its definition.

    Scores sorted descending (stable); one threshold per distinct score; at each threshold TP and FP are
    the cumulative counts up to its last entry; AP = Σ_n (R_n − R_{n−1}) P_n with R_0 = 0. No positives:
    NaN (the authors wrap the call in np.nan_to_num, which makes that 0).
    """
    order = np.argsort(y_score, kind="mergesort")[::-1]
    score, truth = y_score[order], y_true[order].astype(np.float64)
    last_of_threshold = np.r_[np.where(np.diff(score))[0], truth.size - 1]
    tps = np.cumsum(truth)[last_of_threshold]
    fps = 1 + last_of_threshold - tps
    if tps[-1] == 0:
        return float("nan")
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def authors_image_aps(res: np.ndarray, labels: np.ndarray, thr: float = 0.0, ignore_index: int = -1) -> list[float]:
    """The AGF authors' ImageNet-Segmentation AP per image (imagenet_seg_eval.py `eval_batch` + `get_ap_scores`).

    res: B×1×H×W maps (for non-negative methods the authors subtract the map's mean first); labels B×H×W in
    {0, 1, ignore_index}. Output = [Res ≤ thr, Res > thr] as floats (2 channels); per image, the label is
    one-hot encoded over the 2 channels (negative labels clamped to 0 for the encoding), both are flattened
    channel-major, entries whose label is ignore_index are dropped, and sklearn's AP is taken (NaN → 0).
    """
    above = (res > thr).astype(np.float64)
    output = np.concatenate([1.0 - above, above], axis=1)  # B×2×H×W
    total = []
    for pred, tgt in zip(output, labels):
        expanded = np.broadcast_to(tgt[None], pred.shape).reshape(-1)
        one_hot = np.zeros(pred.shape)
        np.put_along_axis(one_hot, np.clip(tgt, 0, None)[None].astype(np.int64), 1.0, axis=0)
        keep = expanded != ignore_index
        total.append(np.nan_to_num(sklearn_average_precision(one_hot.reshape(-1)[keep], pred.reshape(-1)[keep])))
    return total


def test_sklearn_restatement_on_its_documented_example() -> None:
    assert sklearn_average_precision(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)


def test_authors_protocol_equals_their_evaluation_on_fixed_arrays() -> None:
    gen = torch.Generator().manual_seed(11)
    heat = torch.randn(6, 1, 9, 7, generator=gen, dtype=torch.float64)
    heat[2] = heat[2].abs()  # non-negative maps: the authors threshold Res − mean(Res) at 0
    heat[4] = torch.rand(1, 9, 7, generator=gen, dtype=torch.float64)
    masks = (torch.rand(6, 9, 7, generator=gen) > 0.6).long()
    masks[1] = 0  # no foreground: still scored (background channel)
    masks[3] = 1  # all foreground
    res = heat.numpy().copy()
    for i in (2, 4):
        res[i] -= res[i].mean()
    expected = authors_image_aps(res, masks.numpy())
    counts = segmentation_counts(heat, masks, protocol="authors", ignore_index=None)
    np.testing.assert_allclose(counts["ap"].numpy(), expected, rtol=0, atol=1e-12)
    assert segmentation_scores(heat, masks, ignore_index=None)["mAP"].item() == pytest.approx(100 * np.mean(expected))


def test_authors_protocol_with_ignored_pixels_equals_their_ignore_index() -> None:
    gen = torch.Generator().manual_seed(12)
    heat = torch.randn(4, 1, 6, 6, generator=gen, dtype=torch.float64)
    masks = (torch.rand(4, 6, 6, generator=gen) > 0.5).long()
    masks[:, 0, :3] = 255
    theirs = torch.where(masks == 255, -1, masks)  # the authors mark ignored pixels −1 (their default ignore_index)
    expected = authors_image_aps(heat.numpy(), theirs.numpy())
    np.testing.assert_allclose(segmentation_counts(heat, masks)["ap"].numpy(), expected, rtol=0, atol=1e-12)


def test_authors_ap_is_a_function_of_the_pixel_accuracy() -> None:
    """With binary scores the two-channel AP is a² + (1 − a)/2 for the image's pixel accuracy a."""
    gen = torch.Generator().manual_seed(13)
    heat = torch.randn(8, 1, 5, 5, generator=gen)
    masks = (torch.rand(8, 5, 5, generator=gen) > 0.5).long()
    counts = segmentation_counts(heat, masks)
    a = counts["correct"].double() / counts["total"]
    torch.testing.assert_close(counts["ap"], a ** 2 + (1 - a) / 2)
    perfect = segmentation_counts(torch.where(masks > 0, 1.0, -1.0)[:, None], masks)["ap"]
    assert perfect.tolist() == [1.0] * 8  # a = 1
    wrong = segmentation_counts(torch.where(masks > 0, -1.0, 1.0)[:, None], masks)["ap"]
    assert wrong.tolist() == [0.5] * 8  # a = 0: only the all-entries threshold, precision 1/2


def test_counts_are_per_image_and_sum_to_the_scores() -> None:
    counts = segmentation_counts(torch.cat([HEAT, -HEAT]), torch.cat([MASK, MASK]), protocol=RAW)
    assert counts["correct"].tolist() == [14, 2] and counts["total"].tolist() == [16, 16]
    assert counts["intersections"][0].tolist() == [10, 4] and counts["unions"][0].tolist() == [12, 6]
    assert counts["ap"][0].item() == pytest.approx(727 / 1200)
