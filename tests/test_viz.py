"""Tests for sslx.viz: colour mapping, overlays, figure builders, atomic PNG export."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from sslx.viz import (
    explanation_grid,
    heatmap_to_rgb,
    layer_strip,
    metric_vs_layer_plot,
    neighbour_figure,
    overlay,
    save_figure,
    two_class_figure,
)

BLUE, WHITE, RED = (0, 0, 255), (255, 255, 255), (255, 0, 0)  # ends and centre of the default "bwr" map
REDS_LOW, REDS_HIGH = (255, 245, 240), (103, 0, 12)  # ends of the default sequential "Reds" map
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.load()
        return img.size


# ---------------------------------------------------------------- heatmap_to_rgb


def test_signed_map_uses_symmetric_diverging_colours():
    rgb = heatmap_to_rgb(torch.tensor([[-2.0, -1.0, 0.0, 1.0, 2.0]]))
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 5, 3)
    # −max → blue end, half of −max → (2·0.25·255 truncated = 127), 0 → exact white, +max → red end
    assert rgb[0].tolist() == [list(BLUE), [127, 127, 255], list(WHITE), [255, 127, 127], list(RED)]


def test_signed_limits_are_plus_minus_max_abs_not_min_max():
    # limits ±4: −1 sits at 0.375 of the bar → r = g = 2·0.375·255 = 191 (not the blue end)
    rgb = heatmap_to_rgb(np.array([[-1.0, 0.0, 4.0]]))
    assert rgb[0].tolist() == [[191, 191, 255], list(WHITE), list(RED)]


def test_non_negative_map_uses_sequential_colours():
    rgb = heatmap_to_rgb(torch.tensor([[0.0, 1.0, 2.0]]))
    middle = tuple(int(v) for v in colormaps["Reds"](0.5, bytes=True)[:3])
    assert [tuple(p) for p in rgb[0]] == [REDS_LOW, middle, REDS_HIGH]


def test_signed_true_on_non_negative_data_centres_zero():
    rgb = heatmap_to_rgb(torch.tensor([[0.0, 3.0]]), signed=True)
    assert [tuple(p) for p in rgb[0]] == [WHITE, RED]


def test_custom_colormap_by_name():
    rgb = heatmap_to_rgb(torch.tensor([[0.0, 5.0]]), signed=False, cmap="gray")
    assert rgb[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_batch_shapes_and_per_map_scaling():
    maps = torch.zeros(2, 1, 3, 4)
    maps[0, 0, 0, 0], maps[0, 0, 1, 1] = 10.0, -10.0
    maps[1, 0, 2, 3], maps[1, 0, 0, 0] = 0.01, -0.005
    rgb = heatmap_to_rgb(maps)
    assert rgb.shape == (2, 3, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0, 0]) == RED and tuple(rgb[0, 1, 1]) == BLUE and tuple(rgb[0, 2, 2]) == WHITE
    assert tuple(rgb[1, 2, 3]) == RED  # each map scaled to its own peak
    np.testing.assert_array_equal(heatmap_to_rgb(maps[:, 0]), rgb)  # B×H×W == B×1×H×W
    np.testing.assert_array_equal(heatmap_to_rgb(maps[1, 0].numpy().astype(np.float32)), rgb[1])  # numpy H×W


def test_zero_map_is_centre_colour_without_nan():
    assert (heatmap_to_rgb(torch.zeros(4, 4), signed=True) == 255).all()
    assert [tuple(p) for p in heatmap_to_rgb(torch.zeros(1, 2))[0]] == [REDS_LOW, REDS_LOW]


def test_heatmap_requires_grad_and_double_are_fine():
    h = torch.tensor([[-1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    assert [tuple(p) for p in heatmap_to_rgb(h)[0]] == [BLUE, RED]


@pytest.mark.parametrize(
    ("heatmap", "kwargs", "error", "message"),
    [
        (torch.tensor([[-1.0, 1.0]]), {"signed": False}, ValueError, "negative"),
        (torch.tensor([[float("nan"), 1.0]]), {}, ValueError, "NaN"),
        (torch.zeros(1, 1, 1, 2, 2), {}, ValueError, "shape"),
        (torch.zeros(2, 3, 4, 4), {}, ValueError, "B×1×H×W"),
        ([[0.0, 1.0]], {}, TypeError, "torch.Tensor or numpy.ndarray"),
        (torch.ones(2, 2, dtype=torch.bool), {}, TypeError, "dtype"),
        (torch.zeros(0, 4), {}, ValueError, "empty"),
        (torch.ones(2, 2), {"cmap": "not_a_map"}, ValueError, "not_a_map"),
        (torch.ones(2, 2), {"signed": 1}, TypeError, "signed"),
    ],
)
def test_heatmap_to_rgb_rejects_bad_input(heatmap, kwargs, error, message):
    with pytest.raises(error, match=message):
        heatmap_to_rgb(heatmap, **kwargs)


# ---------------------------------------------------------------- overlay


def test_overlay_blends_hand_case():
    image = torch.full((3, 2, 2), 0.5)
    out = overlay(image, torch.tensor([[2.0, -2.0], [0.0, 1.0]]), alpha=0.25)
    # 255·(0.75·0.5 + 0.25·c): c = 1 → 159.375 → 159, c = 0 → 95.625 → 96, c = 127/255 → 127.375 → 127
    expected = [[[159, 96, 96], [96, 96, 159]], [[159, 159, 159], [159, 127, 127]]]
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == expected


def test_overlay_alpha_extremes():
    torch.manual_seed(0)
    image, heat = torch.rand(3, 5, 6), torch.randn(5, 6)
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), np.rint(image.permute(1, 2, 0).numpy() * 255))
    np.testing.assert_array_equal(overlay(image, heat, alpha=1.0), heatmap_to_rgb(heat))


def test_overlay_denormalises_with_mean_std():
    torch.manual_seed(1)
    image, heat = torch.rand(3, 4, 4), torch.randn(1, 1, 4, 4)
    np.testing.assert_array_equal(
        overlay(normalise(image), heat, alpha=0.4, mean=MEAN, std=STD), overlay(image, heat, alpha=0.4)
    )


def test_overlay_resizes_heatmap_bilinearly():
    image = torch.zeros(3, 4, 4)
    coarse = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # bilinear 2 → 4 (half-pixel centres): columns sample 0, 0.25, 0.75, 1
    fine = torch.tensor([[0.0, 0.25, 0.75, 1.0]]).expand(4, 4)
    np.testing.assert_array_equal(overlay(image, coarse, alpha=1.0), heatmap_to_rgb(fine))


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "message"),
    [
        (torch.rand(3, 4, 4), {"mean": MEAN}, ValueError, "both mean and std"),
        (torch.rand(3, 4, 4) * 255, {}, ValueError, r"expected \[0, 1\]"),
        (torch.rand(3, 4, 4), {"alpha": 1.5}, ValueError, "alpha"),
        (torch.rand(4, 4, 4), {}, ValueError, "3 channels"),
        (torch.rand(2, 3, 4, 4), {}, ValueError, "single image"),
        (torch.randint(0, 255, (3, 4, 4), dtype=torch.uint8), {}, TypeError, "floating-point"),
        (torch.rand(3, 4, 4), {"mean": MEAN, "std": [0.2, 0.0, 0.2]}, ValueError, "std must be positive"),
        (torch.rand(3, 4, 4), {"mean": [0.5, 0.5], "std": STD}, ValueError, "3 finite"),
    ],
)
def test_overlay_rejects_bad_input(image, kwargs, error, message):
    with pytest.raises(error, match=message):
        overlay(image, torch.rand(4, 4), **kwargs)


# ---------------------------------------------------------------- figures


@pytest.fixture
def batch():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8)
    maps = {"AGF": torch.randn(2, 1, 8, 8), "Grad-CAM": torch.rand(2, 1, 4, 4)}
    return images, maps


def colourbar_labels(fig: Figure) -> list[str]:
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_explanation_grid_layout_and_png(batch, tmp_path):
    images, maps = batch
    masks = (torch.rand(2, 1, 8, 8) > 0.5).float()
    fig = explanation_grid(normalise(images), maps, masks=masks, titles=["cat", "dog"], mean=MEAN, std=STD,
                           cell_size=1.0)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * 4 + 2  # rows × (image, mask, 2 methods) + signed and unsigned bars
    assert colourbar_labels(fig) == ["evidence for (+) / against (−)", "relevance"]
    panels = fig.axes[:8]
    assert [ax.get_title() for ax in panels[:4]] == ["image", "mask", "AGF", "Grad-CAM"]
    assert [panels[0].get_ylabel(), panels[4].get_ylabel()] == ["cat", "dog"]
    np.testing.assert_allclose(panels[4].images[0].get_array(), images[1].permute(1, 2, 0).numpy(), atol=1e-6)
    np.testing.assert_array_equal(panels[6].images[0].get_array(), heatmap_to_rgb(maps["AGF"][1, 0]))
    path = save_figure(fig, tmp_path / "grid.png", dpi=50)
    assert png_size(path) == (290, 120)  # (4 cells + 2 bars·0.9) in × 50 dpi, (2 cells + 0.4) in × 50 dpi


def test_explanation_grid_signed_only_has_one_bar_and_overlay_panels(batch):
    images, maps = batch
    fig = explanation_grid(images, {"AGF": maps["AGF"]}, overlay_alpha=0.5, cell_size=1.0)
    assert len(fig.axes) == 2 * 2 + 1
    assert colourbar_labels(fig) == ["evidence for (+) / against (−)"]
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), overlay(images[1], maps["AGF"][1], alpha=0.5))


def test_explanation_grid_signedness_is_per_method_over_the_batch():
    images = torch.rand(2, 3, 4, 4)
    heat = torch.ones(2, 1, 4, 4)
    heat[1, 0, 0, 0] = -1.0  # only image 1 has a negative value: image 0 must still be drawn diverging
    fig = explanation_grid(images, {"m": heat}, cell_size=1.0)
    assert (fig.axes[1].images[0].get_array() == np.array(RED, dtype=np.uint8)).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"heatmaps": {}}, ValueError, "heatmaps is empty"),
        ({"heatmaps": {"m": torch.rand(3, 1, 8, 8)}}, ValueError, "3 maps but there are 2 images"),
        ({"heatmaps": {"m": torch.rand(2, 2, 8, 8)}}, ValueError, "B×1×H×W"),
        ({"heatmaps": {1: torch.rand(2, 1, 8, 8)}}, TypeError, "keys must be str"),
        ({"heatmaps": [torch.rand(2, 1, 8, 8)]}, TypeError, "dict"),
        ({"masks": torch.rand(1, 1, 8, 8)}, ValueError, "1 masks but there are 2 images"),
        ({"titles": ["a"]}, ValueError, "1 titles for 2 images"),
        ({"images": torch.rand(3, 8, 8)}, ValueError, "4-D"),
        ({"cell_size": 0}, ValueError, "cell_size"),
        ({"overlay_alpha": -0.1}, ValueError, "alpha"),
    ],
)
def test_explanation_grid_rejects_bad_input(batch, kwargs, error, message):
    images, maps = batch
    args = {"images": images, "heatmaps": maps} | kwargs
    with pytest.raises(error, match=message):
        explanation_grid(**args)


def test_two_class_figure(tmp_path):
    torch.manual_seed(2)
    image = torch.rand(3, 8, 8)
    maps_a = {"AGF": torch.randn(1, 1, 8, 8), "LRP": torch.rand(8, 8)}
    maps_b = {"LRP": torch.rand(8, 8), "AGF": torch.randn(8, 8)}  # other order: matched by name
    fig = two_class_figure(image, maps_a, maps_b, "dog", "cat", cell_size=1.0)
    assert len(fig.axes) == 1 + 2 * 2 + 2
    image_ax, agf_a, agf_b, lrp_a, lrp_b = fig.axes[:5]
    assert [agf_a.get_title(), lrp_a.get_title()] == ["AGF", "LRP"]
    assert [agf_a.get_ylabel(), agf_b.get_ylabel()] == ["dog", "cat"]
    np.testing.assert_array_equal(agf_b.images[0].get_array(), heatmap_to_rgb(maps_b["AGF"]))
    np.testing.assert_array_equal(lrp_b.images[0].get_array(), heatmap_to_rgb(maps_b["LRP"]))
    assert png_size(save_figure(fig, tmp_path / "two.png", dpi=40)) == (192, 96)  # (3 + 1.8)·40, (2 + 0.4)·40


def test_two_class_figure_rejects_mismatched_methods():
    image = torch.rand(3, 8, 8)
    with pytest.raises(ValueError, match=r"only in maps_a \['LRP'\]"):
        two_class_figure(image, {"AGF": torch.rand(8, 8), "LRP": torch.rand(8, 8)}, {"AGF": torch.rand(8, 8)}, 1, 2)
    with pytest.raises(ValueError, match="one map for the single image"):
        two_class_figure(image, {"AGF": torch.rand(2, 1, 8, 8)}, {"AGF": torch.rand(8, 8)}, 1, 2)
    with pytest.raises(ValueError, match="maps_b is empty"):
        two_class_figure(image, {"AGF": torch.rand(8, 8)}, {}, 1, 2)


def test_layer_strip(tmp_path):
    torch.manual_seed(3)
    image = torch.rand(1, 3, 8, 8)
    layers = {f"conv{i}": torch.randn(1, 1, 2 ** i, 2 ** i) for i in range(1, 4)}
    fig = layer_strip(image, layers, mask=torch.ones(8, 8), cell_size=1.0)
    assert len(fig.axes) == 1 + 1 + 3 + 1
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "mask", "conv1", "conv2", "conv3"]
    np.testing.assert_array_equal(fig.axes[4].images[0].get_array(), heatmap_to_rgb(layers["conv3"][0, 0]))
    assert png_size(save_figure(fig, tmp_path / "layers.png", dpi=40)) == (236, 56)  # (5 + 0.9)·40, 1.4·40
    with pytest.raises(ValueError, match="masks must be non-negative"):
        layer_strip(image, layers, mask=-torch.ones(8, 8))
    with pytest.raises(ValueError, match="maps_by_layer is empty"):
        layer_strip(image, {})


def test_neighbour_figure(tmp_path):
    torch.manual_seed(4)
    image, neighbour = torch.rand(3, 8, 8), torch.rand(3, 6, 6)
    maps = {"Δ": torch.randn(8, 8), "Σ": torch.rand(8, 8), "w/o": torch.randn(8, 8)}
    fig = neighbour_figure(normalise(image), normalise(neighbour), maps, MEAN, STD, cell_size=1.0)
    assert len(fig.axes) == 2 + 3 + 2
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "nearest neighbour", "Δ", "Σ", "w/o"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), neighbour.permute(1, 2, 0).numpy(), atol=1e-6)
    assert png_size(save_figure(fig, tmp_path / "nb.png", dpi=40)) == (272, 56)  # (5 + 1.8)·40, 1.4·40
    with pytest.raises(ValueError, match="neighbour must have 3 channels"):
        neighbour_figure(image, torch.rand(1, 8, 8), maps)


def test_metric_vs_layer_plot(tmp_path):
    results = {
        "AGF": {"conv1": 0.3, "conv2": 0.4, "conv3": 0.5},
        "LRP": {"conv1": {"mAP": 0.2, "acc": 0.9}, "conv3": {"mAP": 0.25, "acc": 0.8}},
    }
    fig = metric_vs_layer_plot(results, "mAP")
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_ylabel() == "mAP" and [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2", "conv3"]
    agf, lrp = ax.get_lines()
    assert agf.get_label() == "AGF" and agf.get_ydata().tolist() == [0.3, 0.4, 0.5]
    np.testing.assert_array_equal(lrp.get_ydata(), [0.2, np.nan, 0.25])  # missing layer leaves a gap
    assert png_size(save_figure(fig, tmp_path / "metric.png", dpi=20)) == (100, 70)


@pytest.mark.parametrize(
    ("results", "error", "message"),
    [
        ({}, ValueError, "results is empty"),
        ({"AGF": {}}, ValueError, "non-empty dict"),
        ({"AGF": {"conv1": {"acc": 0.5}}}, KeyError, "no metric 'mAP'"),
        ({"AGF": {"conv1": float("nan")}}, ValueError, "not finite"),
        ({"AGF": {"conv1": "0.5"}}, TypeError, "must be a number"),
    ],
)
def test_metric_vs_layer_plot_rejects_bad_results(results, error, message):
    with pytest.raises(error, match=message):
        metric_vs_layer_plot(results, "mAP")


# ---------------------------------------------------------------- saving and global state


def test_save_figure_is_atomic_and_overwrites(tmp_path):
    fig = metric_vs_layer_plot({"m": {"l1": 1.0}}, "acc", figsize=(2.0, 1.0))
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    assert save_figure(fig, str(target), dpi=30) == target
    assert os.listdir(tmp_path) == ["out.png"]
    assert png_size(target) == (60, 30)


def test_save_figure_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    fig = metric_vs_layer_plot({"m": {"l1": 1.0}}, "acc")
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert os.listdir(tmp_path) == ["out.png"] and target.read_bytes() == b"old"


def test_save_figure_rejects_bad_paths(tmp_path):
    fig = metric_vs_layer_plot({"m": {"l1": 1.0}}, "acc")
    with pytest.raises(ValueError, match="must end in .png"):
        save_figure(fig, tmp_path / "out.jpg")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "out.png")
    with pytest.raises(TypeError, match="matplotlib Figure"):
        save_figure("not a figure", tmp_path / "out.png")


def test_figures_never_touch_pyplot():
    code = (
        "import sys, torch\n"
        "from sslx.viz import explanation_grid\n"
        "explanation_grid(torch.rand(1, 3, 4, 4), {'m': torch.randn(1, 1, 4, 4)})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
