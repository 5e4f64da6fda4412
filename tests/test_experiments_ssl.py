"""The self-supervised experiment scripts (Table 4, Fig. 4a, Fig. 4b) run end to end on tiny sizes.

Each script's `main` writes its results into tmp_path; the tests recompute what the numbers claim:
the AUC is the trapezoid of the curve, Δ/Σ/w-o pick arg-max head(L_I ∓ L_N)/head(L_I) with L_N the
brute-force nearest reference scene, the maps explain the unmodified model M for that class, the
default curve is M's accuracy on the perturbed images (the fixed-neighbour variant head(L_I' ∓ L_N)),
and the segmentation scores equal sslx.metrics on freshly computed maps.
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
from sslx.metrics import perturbation_correct, perturbation_curve, segmentation_scores
from sslx.metrics.bootstrap import mean_interval
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
        entry = data["models"][name]
        for mode in ("delta", "sum", "none"):
            paper, variant = entry["curves"]["agf"][mode], entry["curves_fixed_neighbour"]["agf"][mode]
            # nothing removed: M predicts t as often as on the clean images; the fixed-neighbour head always does
            assert paper["accuracy"][0] == pytest.approx(entry["m_predicts_t"][mode])
            assert variant["accuracy"][0] == 100.0
            for curve in (paper, variant):
                assert curve["fractions"] == [0.0, 0.5, 0.9]
                expected = float(torch.trapezoid(torch.tensor(curve["accuracy"], dtype=torch.float64),
                                                 torch.tensor(curve["fractions"], dtype=torch.float64)))
                assert curve["auc"] == pytest.approx(expected, abs=1e-9)
                assert curve["n_images"] == N_IMAGES and curve["n"] == {"auc": N_IMAGES}
                assert curve["ci95"]["auc"][0] <= curve["auc"] + 1e-9 <= curve["ci95"]["auc"][1] + 2e-9
                assert all(0.0 <= a <= 100.0 for a in curve["accuracy"])
        assert entry["m_predicts_t"]["none"] == 100.0
        assert entry["curves"]["agf"]["none"] == entry["curves_fixed_neighbour"]["agf"]["none"]  # w/o: the same test
    text = (out / "table4.md").read_text()
    assert "42.4" in text and "RotNet" in text and f"first {N_REFERENCE} single-object" in text
    assert "Which protocol the paper's text supports" in text and "input tuple M, I, t" in text
    assert "Variant, not the paper's protocol" in text
    vgg = data["models"]["vgg"]["curves"]["agf"]["delta"]
    assert f"{vgg['auc']:.1f} [{vgg['ci95']['auc'][0]:.1f}, {vgg['ci95']['auc'][1]:.1f}]" in text
    assert data["settings"]["explain_model"] == "unmodified"
    assert (out / "table4_curves.png").stat().st_size > 1000


@needs
def test_table4_scores_the_unmodified_model_on_maps_of_the_unmodified_model(table4) -> None:
    """Default: maps = AGF(M) for t, curve = M's accuracy on the perturbed images; variant: head(L_I' − L_N)."""
    _, data = table4
    entry = data["models"]["rotnet"]
    model = _script("ssl_eval").load_model("rotnet")
    batch = _batch("test", N_IMAGES)
    x = batch["image"]
    reference = FeatureIndex.from_features(model.backbone(_batch("train", N_REFERENCE)["image"]).detach())
    t = torch.tensor(entry["ssl_class"]["delta"])
    maps = sslx.explain(model, x, t, method="agf")
    pixels = denormalize(x).clamp(0.0, 1.0)
    fractions = (0.0, 0.5, 0.9)
    curve = perturbation_curve(model, pixels, maps, t, "negative", fractions, normalize)
    assert entry["curves"]["agf"]["delta"]["accuracy"] == pytest.approx(curve.tolist(), abs=1e-9)
    neighbour = reference.features_of(torch.tensor(entry["neighbor_ids"]))
    fixed = ssl.CombinedFeaturesModel(model.backbone, model.head, -neighbour.repeat(len(fractions), 1)).eval()
    curve = perturbation_curve(fixed, pixels, maps, t, "negative", fractions, normalize, batch_size=3 * N_IMAGES)
    assert entry["curves_fixed_neighbour"]["agf"]["delta"]["accuracy"] == pytest.approx(curve.tolist(), abs=1e-9)
    correct = perturbation_correct(model, pixels, maps, t, "negative", fractions, normalize).double() * 100
    per_image = torch.trapezoid(correct, torch.tensor(fractions, dtype=torch.float64), dim=1)
    assert entry["curves"]["agf"]["delta"]["ci95"]["auc"] == pytest.approx(list(mean_interval(per_image)), abs=1e-9)


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
        expected = segmentation_scores(explanation.heatmaps.double(), batch["mask"], threshold)  # authors' mAP
        scores = entry["scores"][method]
        for key in ("pixel_accuracy", "mAP", "mIoU"):
            assert scores[key] == pytest.approx(float(expected[key]), abs=1e-6), (method, key)
            assert scores["ci95"][key][0] - 1e-9 <= scores[key] <= scores["ci95"][key][1] + 1e-9
        assert scores["n"] == {"pixel_accuracy": N_IMAGES, "mAP": N_IMAGES, "mIoU": N_IMAGES}
    assert data["settings"]["thresholds"] == {"agf": 0.0, "gradcam": "mean"}
    assert data["settings"]["map_protocol"] == "authors"
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


# ---------------------------------------------------------------------------- real data (issue #8)
def _tiny_checkpoint(tmp_path: Path) -> Path:
    """A random 64-px RotNet checkpoint in the published (gidariss) layout."""
    from probe_fixtures import write_tiny_rotnet

    return write_tiny_rotnet(tmp_path / "rotnet_tiny.pth", seed=7)


def _real_common(out: Path) -> list[str]:
    return ["--n-images", "2", "--n-reference", "8", "--batch-size", "2", "--threads", "1", "--out-dir", str(out)]


def test_table4_on_imagenet_val_fixture_with_a_checkpoint(tmp_path) -> None:
    import ssl_models
    from fixtures_readers import write_image_folder

    write_image_folder(tmp_path / "val")  # 3 images: the first 2 are the queries, the third is S
    ckpt = _tiny_checkpoint(tmp_path)
    out = tmp_path / "out"
    _script("table4_ssl_perturbation").main(["--ssl-model", f"tiny={ckpt}", "--imagenet-val", str(tmp_path / "val"),
                                             "--methods", "agf", "--fractions", "0,0.5,0.9", *_real_common(out)])
    data = json.loads((out / "table4.json").read_text())
    entry = data["models"]["tiny"]
    assert entry["image_ids"] == [0, 1] and entry["n_reference"] == 1
    assert entry["neighbor_ids"] == [2, 2]  # the only image after the queries
    for mode in ("delta", "sum", "none"):
        curve = entry["curves"]["agf"][mode]
        assert curve["accuracy"][0] == pytest.approx(entry["m_predicts_t"][mode]) and curve["n_images"] == 2
        assert entry["curves_fixed_neighbour"]["agf"][mode]["accuracy"][0] == 100.0
        assert set(curve["accuracy"]) <= {0.0, 50.0, 100.0}
        expected = float(torch.trapezoid(torch.tensor(curve["accuracy"], dtype=torch.float64),
                                         torch.tensor(curve["fractions"], dtype=torch.float64)))
        assert curve["auc"] == pytest.approx(expected, abs=1e-9)
    # Δ/Σ/w-o classes = arg-max head(L_I ∓ L_N) on the same 64-px ImageNet-normalised images
    model = ssl_models.load(ckpt)
    images = _script("ssl_eval").image_folder(tmp_path / "val", model, None)
    with torch.no_grad():
        feats = model.backbone(torch.stack([images[i]["image"] for i in range(3)]))
        queries, neighbour = feats[:2], feats[2:].expand(2, -1)
        expected_classes = {"delta": model.head(queries - neighbour), "sum": model.head(queries + neighbour),
                            "none": model.head(queries)}
    for mode, logits in expected_classes.items():
        assert entry["ssl_class"][mode] == logits.argmax(dim=1).tolist(), mode
    assert images[0]["image"].shape == (3, 64, 64)  # the checkpoint's own input size
    text = (out / "table4.md").read_text()
    assert "checkpoints tiny" in text and "after the queries" in text and "| tiny |" in text
    assert data["settings"]["ssl_models"] == [f"tiny={ckpt}"]


def test_fig4a_on_imagenet_seg_fixture_with_reference_folder(tmp_path) -> None:
    from fixtures_readers import seg_entry, write_gtsegs_v73, write_image_folder

    entries = [seg_entry(40, 50, (8, 10, 30, 40), (20, 120, 20), (230, 40, 40)),
               seg_entry(36, 36, (4, 4, 20, 24), (60, 60, 160), (240, 240, 30))]
    mat = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs_v73(mat, [e[0] for e in entries], [e[1] for e in entries])
    write_image_folder(tmp_path / "ref")  # 3 reference images
    out = tmp_path / "out"
    data = _script("fig4a_ssl_segmentation").main(["--ssl-model", f"tiny={_tiny_checkpoint(tmp_path)}",
                                                   "--imagenet-seg", str(mat), "--reference", str(tmp_path / "ref"),
                                                   "--methods", "agf,gradcam", *_real_common(out)])
    entry = data["models"]["tiny"]
    assert entry["image_ids"] == [0, 1] and entry["n_reference"] == 3
    assert all(0 <= n < 3 for n in entry["neighbor_ids"])
    # object pixels at 64 px (nearest-neighbour resized masks): 22·30/2000 and 16·20/1296 of the image, ±resizing
    assert entry["foreground_fraction"] == pytest.approx(100 * (660 / 2000 + 320 / 1296) / 2, abs=1.0)
    for method in ("agf", "gradcam"):
        scores = entry["scores"][method]
        assert scores["n_images"] == 2
        assert all(0.0 <= scores[k] <= 100.0 for k in ("pixel_accuracy", "mAP", "mIoU"))
    assert (out / "fig4a.md").is_file() and (out / "fig4a_scatter.png").stat().st_size > 1000
    assert "the first 2 entries of" in (out / "fig4a.md").read_text()


def test_real_data_errors_name_the_problem(tmp_path) -> None:
    table4, fig4a = _script("table4_ssl_perturbation"), _script("fig4a_ssl_segmentation")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nope.pth"):
        table4.main(["--ssl-model", f"x={missing}", *_real_common(tmp_path)])
    with pytest.raises(ValueError, match="NAME=PATH"):
        fig4a.main(["--ssl-model", str(missing), *_real_common(tmp_path)])
    ckpt = _tiny_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="either --models"):
        table4.main(["--models", "rotnet", "--ssl-model", f"x={ckpt}", *_real_common(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--imagenet-val: image folder not found: .*no_val"):
        table4.main(["--ssl-model", f"x={ckpt}", "--imagenet-val", str(tmp_path / "no_val"), *_real_common(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--imagenet-seg: file not found: .*no.mat"):
        fig4a.main(["--ssl-model", f"x={ckpt}", "--imagenet-seg", str(tmp_path / "no.mat"), *_real_common(tmp_path)])
    with pytest.raises(ValueError, match="--imagenet-val-labels needs --imagenet-val"):
        table4.main(["--ssl-model", f"x={ckpt}", "--imagenet-val-labels", str(ckpt), *_real_common(tmp_path)])


@needs
def test_embedded_model_on_real_images_warns_and_runs_at_its_own_size(tmp_path) -> None:
    from fixtures_readers import write_image_folder

    write_image_folder(tmp_path / "val")
    with pytest.warns(UserWarning, match="trained on 128-px procedural scenes"):
        data = _script("table4_ssl_perturbation").main(["--models", "rotnet", "--imagenet-val", str(tmp_path / "val"),
                                                        "--methods", "agf", "--fractions", "0,0.5",
                                                        *_real_common(tmp_path / "out")])
    assert data["models"]["rotnet"]["n_reference"] == 1  # 128-px inputs (the embedded RotNet's fixed size) worked
    with pytest.raises(ValueError, match="--image-size applies to real images only"):
        _script("table4_ssl_perturbation").main(["--models", "rotnet", "--image-size", "64", *_real_common(tmp_path)])
