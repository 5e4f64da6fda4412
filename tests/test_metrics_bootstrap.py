"""Percentile bootstrap intervals over images: hand-checkable cases, reproducibility, coverage on a normal sample."""
from __future__ import annotations

import math

import pytest
import torch

from sslx.metrics import bootstrap_interval, mean_interval, mean_ratio_interval, ratio_interval
from sslx.metrics.bootstrap import resample_counts


def test_constant_sample_has_a_zero_width_interval() -> None:
    assert mean_interval(torch.full((40,), 37.5)) == (37.5, 37.5)
    assert ratio_interval(torch.full((10,), 3.0), torch.full((10,), 4.0)) == (0.75, 0.75)
    assert mean_interval(torch.tensor([12.25])) == (12.25, 12.25)  # one image: every resample is that image


def test_resamples_are_multiplicities_of_n_images() -> None:
    chunks = list(resample_counts(7, resamples=50, seed=3))
    counts = torch.cat(chunks)
    assert counts.shape == (50, 7) and counts.dtype == torch.float64
    assert torch.equal(counts.sum(dim=1), torch.full((50,), 7.0))
    assert torch.equal(counts, counts.round()) and bool((counts >= 0).all())


def test_known_seed_reproduces_and_another_seed_differs() -> None:
    values = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert mean_interval(values, seed=5) == mean_interval(values, seed=5)
    assert mean_interval(values, seed=5) != mean_interval(values, seed=6)
    assert mean_interval(values) == mean_interval(values, resamples=1000, level=0.95, seed=0)  # the defaults


def test_two_point_sample_by_hand() -> None:
    """Values 0 and 1: a resample's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4, so the 95 % interval is [0, 1]."""
    lo, hi = mean_interval(torch.tensor([0.0, 1.0]))
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = mean_interval(torch.tensor([0.0, 1.0]), level=0.4)  # the middle 40 % are all 1/2
    assert (lo, hi) == (0.5, 0.5)


def test_statistics_agree_with_each_other_and_a_loop() -> None:
    gen = torch.Generator().manual_seed(2)
    values = torch.rand(25, generator=gen, dtype=torch.float64)
    assert ratio_interval(values, torch.ones(25)) == pytest.approx(mean_interval(values), abs=1e-12)
    one_class = mean_ratio_interval(values[:, None], torch.ones(25, 1))
    assert one_class == pytest.approx(mean_interval(values), abs=1e-12)
    # the vectorised statistic equals resampling image indices one resample at a time
    means = []
    for weights in resample_counts(25, 200, seed=4):
        for row in weights:
            means.append(float(torch.repeat_interleave(values, row.long()).mean()))
    expected = torch.quantile(torch.tensor(means, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert mean_interval(values, resamples=200, seed=4) == pytest.approx(expected.tolist(), abs=1e-12)


def test_mean_ratio_leaves_out_absent_classes() -> None:
    inter = torch.tensor([[2.0, 0.0], [4.0, 0.0]])
    union = torch.tensor([[4.0, 0.0], [8.0, 0.0]])  # class 1 never present: mIoU = class 0's IoU = 1/2
    assert mean_ratio_interval(inter, union) == (0.5, 0.5)


def test_nan_values_are_dropped_and_all_nan_is_an_error() -> None:
    values = torch.tensor([1.0, math.nan, 1.0])
    assert mean_interval(values) == (1.0, 1.0)
    with pytest.raises(ValueError, match="only NaN"):
        mean_interval(torch.tensor([math.nan, math.nan]))


def test_coverage_on_normal_samples() -> None:
    """About 95 % of the intervals for the mean of n = 60 standard normal values contain 0 (percentile bootstrap
    undercovers slightly at small n); their width is close to 2 · 1.96 / √n."""
    gen = torch.Generator().manual_seed(7)
    hits, widths = 0, []
    trials = 300
    for trial in range(trials):
        lo, hi = mean_interval(torch.randn(60, generator=gen, dtype=torch.float64), resamples=500, seed=trial)
        hits += lo <= 0.0 <= hi
        widths.append(hi - lo)
    assert 0.89 <= hits / trials <= 0.99
    assert sum(widths) / trials == pytest.approx(2 * 1.96 / math.sqrt(60), rel=0.1)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="empty"):
        mean_interval(torch.tensor([]))
    with pytest.raises(ValueError, match="vector of n"):
        mean_interval(torch.ones(3, 2))
    with pytest.raises(TypeError, match="real numbers"):
        mean_interval(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        ratio_interval(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="n×C"):
        mean_ratio_interval(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="level"):
        mean_interval(torch.ones(3), level=95)
    with pytest.raises(ValueError, match="resamples must be >= 1"):
        mean_interval(torch.ones(3), resamples=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        mean_interval(torch.ones(3), seed=1.5)
    with pytest.raises(ValueError, match="one value per resample"):
        bootstrap_interval(lambda w: w.sum(), 4)
    with pytest.raises(TypeError, match="callable"):
        bootstrap_interval("mean", 4)
