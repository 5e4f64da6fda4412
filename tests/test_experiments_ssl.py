"""The self-supervised experiment scripts (Table 4, Fig. 4a, Fig. 4b) run end to end on tiny sizes.

Each script's `main` writes its results into tmp_path; the tests recompute what the numbers claim:
the AUC is the trapezoid of the curve, fraction 0 keeps every chosen class, Δ/Σ/w-o pick
arg-max head(L_I ∓ L_N)/head(L_I) with L_N the brute-force nearest reference scene, and the
segmentation scores equal sslx.metrics on freshly computed maps.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

import sslx
from sslx import ssl
from sslx.assets import asset_path, load_embedded
from sslx.data import ScenesDataset
from sslx.data.scenes import collate_scenes
from sslx.data.transforms import denormalize, normalize
from sslx.metrics import perturbation_curve, segmentation_scores
from sslx.neighbors import FeatureIndex

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES, N_REFERENCE = 4, 16
needs = pytest.mark.skipif(not all(asset_path(n).is_file() for n in ("vgg", "rotnet")),
                           reason="embedded vgg/rotnet assets missing")


def _script(name: str):
    """experiments/<name>.py imported by path."""
    key = f"experiments_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "experiments" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def _batch(split: str, size: int) -> dict:
    ds = ScenesDataset(split, size, 0, 128, "single")
    return collate_scenes([ds[i] for i in range(size)])


def _common(out: Path) -> list[str]:
    return ["--n-images", str(N_IMAGES), "--n-reference", str(N_REFERENCE), "--batch-size", "4", "--out-dir", str(out)]


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    out = tmp_path_factory.mktemp("table4")
    _script("table4_ssl_perturbation").main(["--models", "vgg,rotnet", "--methods", "agf", "--fractions", "0,0.5,0.9",
                                             *_common(out)])
    return out, json.loads((out / "table4.json").read_text())


@needs
def test_table4_curves_auc_and_fraction_zero(table4) -> None:
    out, data = table4
    for name in ("vgg", "rotnet"):
        for mode in ("delta", "sum", "none"):
            curve = data["models"][name]["curves"]["agf"][mode]
            assert curve["fractions"] == [0.0, 0.5, 0.9]
            assert curve["accuracy"][0] == 100.0  # nothing removed: the chosen class is kept by construction
            expected = float(torch.trapezoid(torch.tensor(curve["accuracy"], dtype=torch.float64),
                                             torch.tensor(curve["fractions"], dtype=torch.float64)))
            assert curve["auc"] == pytest.approx(expected, abs=1e-9)
            assert curve["n_images"] == N_IMAGES
            assert all(0.0 <= a <= 100.0 for a in curve["accuracy"])
    text = (out / "table4.md").read_text()
    assert "42.4" in text and "RotNet" in text and f"first {N_REFERENCE} single-object" in text
    assert (out / "table4_curves.png").stat().st_size > 1000


@needs
@pytest.mark.parametrize("name", ["vgg", "rotnet"])
def test_table4_modes_choose_head_of_combined_features(table4, name: str) -> None:
    _, data = table4
    entry = data["models"][name]
    assert entry["image_ids"] == list(range(N_IMAGES))
    model = _script("ssl_eval").load_model(name)
    with torch.no_grad():
        queries = model.backbone(_batch("test", N_IMAGES)["image"])
        reference = model.backbone(_batch("train", N_REFERENCE)["image"])
        nearest = torch.cdist(queries.double(), reference.double()).argmin(dim=1)
        assert entry["neighbor_ids"] == nearest.tolist()
        neighbour = reference[nearest]
        expected = {"delta": model.head(queries - neighbour), "sum": model.head(queries + neighbour),
                    "none": model.head(queries)}
    for mode, logits in expected.items():
        assert entry["ssl_class"][mode] == logits.argmax(dim=1).tolist(), mode
    assert entry["head_classes"] == (12 if name == "vgg" else 4)


@needs
def test_table4_without_neighbour_is_the_plain_predicted_test(table4) -> None:
    """w/o on the supervised VGG = Table 2's predicted-class test: top-1 explained, plain model perturbed."""
    _, data = table4
    vgg = load_embedded("vgg")
    x = _batch("test", N_IMAGES)["image"]
    with torch.no_grad():
        top1 = vgg(x).argmax(dim=1)
    assert data["models"]["vgg"]["ssl_class"]["none"] == top1.tolist()
    maps = sslx.explain(vgg, x, top1, method="agf")
    pixels = denormalize(x).clamp(0.0, 1.0)
    curve = perturbation_curve(vgg, pixels, maps, top1, "negative", (0.0, 0.5, 0.9), normalize)
    assert data["models"]["vgg"]["curves"]["agf"]["none"]["accuracy"] == pytest.approx(curve.tolist(), abs=1e-9)


@needs
def test_classifier_split_keeps_the_logits() -> None:
    vgg = load_embedded("vgg")
    split = _script("ssl_eval").split_classifier(vgg)
    x = _batch("test", 2)["image"]
    with torch.no_grad():
        assert torch.equal(split(x), vgg(x))
    assert split.head is vgg.classifier[-1] and split.backbone(x).shape == (2, 256)


@needs
def test_fig4a_scores_match_sslx_metrics(tmp_path) -> None:
    _script("fig4a_ssl_segmentation").main(["--models", "rotnet", "--methods", "agf,gradcam", *_common(tmp_path)])
    data = json.loads((tmp_path / "fig4a.json").read_text())
    entry = data["models"]["rotnet"]
    model = load_embedded("rotnet")
    train = ScenesDataset("train", N_REFERENCE, 0, 128, "single")
    index = FeatureIndex.build(model, torch.utils.data.DataLoader(train, batch_size=8, collate_fn=collate_scenes),
                               progress=False)
    batch = _batch("test", N_IMAGES)
    for method, threshold in (("agf", 0.0), ("gradcam", "mean")):
        options = {"layer": "backbone.conv5"} if method == "gradcam" else {}
        explanation = ssl.explain(model, batch["image"], index, "delta", method, **options)
        assert entry["ssl_class"] == explanation.ssl_class.tolist()
        expected = segmentation_scores(explanation.heatmaps.double(), batch["mask"], threshold)
        for key in ("pixel_accuracy", "mAP", "mIoU"):
            assert entry["scores"][method][key] == pytest.approx(float(expected[key]), abs=1e-6), (method, key)
    assert data["settings"]["thresholds"] == {"agf": 0.0, "gradcam": "mean"}
    assert (tmp_path / "fig4a_scatter.png").stat().st_size > 1000


@needs
def test_fig4b_runs_the_probe_job_per_layer(tmp_path) -> None:
    _script("fig4b_layer_probes").main(["--layers", "conv5", "--train-images", "24", "--val-images", "12",
                                        "--n-images", "4", "--epochs", "1",
                                        "--batch-size", "4", "--out-dir", str(tmp_path)])
    data = json.loads((tmp_path / "fig4b.json").read_text())
    assert list(data["layers"]) == ["conv5"]
    for entry in data["layers"].values():
        agf = entry["methods"]["agf"]
        assert entry["n_eval_images"] == 4 and entry["n_train_images"] == 24
        assert 0.0 <= agf["pixel_accuracy"] <= 100.0 and 0.0 <= agf["mAP"] <= 100.0
        accuracy = entry["probe"]["test_accuracy"]  # four images: a multiple of 25 %
        assert accuracy == pytest.approx(25.0 * round(accuracy / 25.0), abs=1e-3)
    text = (tmp_path / "fig4b.md").read_text()
    assert text.count("| conv") == 1
    assert (tmp_path / "fig4b_layers.png").stat().st_size > 1000
