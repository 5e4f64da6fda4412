"""The supervised experiment scripts (Tables 2, 3, 5, class specificity) at tiny sizes, and their scoring helpers."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_readers import seg_entry, voc_entry, write_gtsegs_v73, write_image_folder, write_voc_tree
from sslx.assets import asset_path, read_supervised
from sslx.metrics import segmentation_scores

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
TINY = ["--n-images", "2", "--batch-size", "2"]


def script(name: str):
    """experiments/<name>.py imported by path (the scripts import their siblings by name)."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    key = f"experiments_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, EXPERIMENTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


se = script("supervised_eval")


def read(out: Path, name: str) -> dict:
    for suffix in (".md", ".json"):
        assert (out / f"{name}{suffix}").is_file(), f"{name}{suffix} was not written"
    return json.loads((out / f"{name}.json").read_text())


# ------------------------------------------------------------------------------------------ scripts
def test_table2_and_table5_agree_and_auc_is_the_trapezoid_of_the_curve(tmp_path):
    data = script("table2_perturbation").main([*TINY, "--methods", "agf,gradcam", "--out-dir", str(tmp_path)])
    saved = read(tmp_path, "table2")
    assert (tmp_path / "table2_curves.png").stat().st_size > 1000
    assert saved["n_images"] == 2 and saved["methods"].keys() == {"agf", "gradcam"}
    for method in ("agf", "gradcam"):
        for variant in ("predicted", "target"):
            entry = saved["methods"][method][variant]
            assert entry["auc"] == pytest.approx(np.trapezoid(entry["accuracy"], entry["fractions"]), abs=1e-9)
            assert set(entry["accuracy"]) <= {0.0, 50.0, 100.0}  # 2 images: each point is 0, 50 or 100 %
            assert 0.0 <= entry["auc"] <= 80.0
            low, high = entry["ci95"]["auc"]
            assert low <= entry["auc"] <= high and entry["n"]["auc"] == 2
    assert data["paper"]["predicted"]["agf"] == 38.9
    text = (tmp_path / "table2.md").read_text()
    agf = saved["methods"]["agf"]["predicted"]
    assert "38.9" in text and "95 % percentile bootstrap" in text
    assert f"{agf['auc']:.1f} [{agf['ci95']['auc'][0]:.1f}, {agf['ci95']['auc'][1]:.1f}]" in text

    ablation = script("table5_ablation").main([*TINY, "--out-dir", str(tmp_path)])
    read(tmp_path, "table5")
    # the full AGF column is the same test as Table 2's AGF "predicted" row on the same images
    assert ablation["methods"]["full"]["predicted"]["accuracy"] == saved["methods"]["agf"]["predicted"]["accuracy"]
    assert set(ablation["methods"]) == {"full", "only_c", "no_a", "no_fx", "no_fgrad", "no_m", "no_gate",
                                        "gradcam_residual", "rap"}
    assert ablation["methods"]["full"]["predicted_minus_full"] == {"auc": 0.0, "ci95": {"auc": [0.0, 0.0]},
                                                                   "n": {"auc": 2}}


def test_table3_embedded_parts_and_placeholder_for_meaningful_perturbation(tmp_path):
    data = script("table3_segmentation").main([*TINY, "--methods", "agf,gradcam,meaningful_perturbation",
                                               "--multilabel-model", str(asset_path("vgg")), "--out-dir", str(tmp_path)])
    saved = read(tmp_path, "table3")
    assert set(saved["parts"]) == {"imagenet", "voc"}
    for part in saved["parts"].values():
        assert part["n_images"] == 2 and set(part["methods"]) == {"agf", "gradcam"}
        for scores in part["methods"].values():
            assert all(0.0 <= scores[k] <= 100.0 for k in ("pixel_accuracy", "mAP", "mIoU"))
            for k in ("pixel_accuracy", "mAP", "mIoU"):
                low, high = scores["ci95"][k]
                assert low - 1e-9 <= scores[k] <= high + 1e-9 and scores["n"][k] <= 2
    assert saved["map_protocol"] == "authors"
    for scores in saved["parts"]["imagenet"]["methods"].values():  # binarised two-channel AP lies in [50, 100]
        assert 50.0 <= scores["mAP"] <= 100.0
    text = (tmp_path / "table3.md").read_text()
    assert "Meaningful Perturbation" in text and "| – |" in text
    assert data["paper"]["voc"]["mAP"]["agf"] == 45.9


def test_table3_on_imagenet_segmentation_fixture(tmp_path):
    entries = [seg_entry(40, 50, (8, 10, 30, 40), (20, 120, 20), (230, 40, 40)),
               seg_entry(36, 36, (4, 4, 20, 24), (60, 60, 160), (240, 240, 30))]
    mat = tmp_path / "gtsegs_ijcv.mat"
    write_gtsegs_v73(mat, [e[0] for e in entries], [e[1] for e in entries])
    data = script("table3_segmentation").main(["--imagenet-seg", str(mat), "--image-size", "64", "--methods",
                                               "agf,lrp", *TINY, "--out-dir", str(tmp_path)])
    part = data["parts"]["imagenet"]
    assert set(data["parts"]) == {"imagenet"} and part["n_images"] == 2
    assert all(0 <= s["pixel_accuracy"] <= 100 and 0 <= s["mAP"] <= 100 for s in part["methods"].values())


def _voc_classifier(path: Path, chosen_classes: list[int]) -> None:
    """A 20-class SmallVGG checkpoint (sslx format) whose sigmoid is > 0.5 exactly for `chosen_classes`."""
    import ssl_models
    from sslx.models import build_classifier

    config = dict(read_supervised(asset_path("vgg"))["config"], num_classes=20)
    net = build_classifier("vgg", config)
    with torch.no_grad():
        head = net.classifier[-1]
        head.weight.mul_(0.01)
        head.bias.fill_(-5.0)
        head.bias[chosen_classes] = 5.0
    ssl_models.save_checkpoint({"arch": "vgg", "config": config, "state_dict": net.state_dict(),
                                "classes": [str(i) for i in range(20)], "metrics": {}}, path)


def test_table3_on_voc_fixture_and_model_mismatch(tmp_path):
    entries = {"2007_000032": voc_entry(40, 60, [(1, (5, 5, 20, 25)), (15, (22, 30, 38, 58))], bg=(90, 90, 90)),
               "2007_000039": voc_entry(48, 36, [(12, (10, 6, 40, 30))], bg=(120, 60, 0))}
    write_voc_tree(tmp_path, entries, {"val": list(entries)})
    model = tmp_path / "voc_multilabel.pth"
    _voc_classifier(model, [0, 14])  # aeroplane and person (mask values 1 and 15)
    data = script("table3_segmentation").main(["--voc", str(tmp_path), "--multilabel-model", str(model),
                                               "--image-size", "64", "--methods", "agf,gradcam", *TINY,
                                               "--out-dir", str(tmp_path / "out")])
    part = data["parts"]["voc"]
    assert set(data["parts"]) == {"voc"} and part["n_images"] == 2
    assert "mean 2.00" in part["note"] and "21 channels" in part["note"]
    assert all(0 <= s["pixel_accuracy"] <= 100 and 0 <= s["mAP"] <= 100 for s in part["methods"].values())
    with pytest.raises(ValueError, match="12 outputs but the data have 20 classes"):
        script("table3_segmentation").main(["--voc", str(tmp_path), "--multilabel-model", str(asset_path("vgg")),
                                            "--methods", "gradcam", *TINY, "--out-dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="--voc needs --multilabel-model"):
        script("table3_segmentation").main(["--voc", str(tmp_path), *TINY])


def test_table2_on_imagenet_val_fixture_and_bad_methods(tmp_path):
    write_image_folder(tmp_path / "val")
    data = script("table2_perturbation").main(["--imagenet-val", str(tmp_path / "val"), "--methods", "gradcam",
                                               *TINY, "--out-dir", str(tmp_path / "out")])
    assert data["n_images"] == 2 and data["data"].startswith("ImageNet val")
    with pytest.raises(ValueError, match="--methods must name"):
        script("table2_perturbation").main(["--methods", "agf,nonsense", *TINY])


def test_class_specificity_script(tmp_path):
    data = script("class_specificity").main([*TINY, "--methods", "agf,lrp", "--out-dir", str(tmp_path)])
    saved = read(tmp_path, "class_specificity")
    assert (tmp_path / "class_specificity_example.png").stat().st_size > 1000
    assert saved["n_images"] == 2 and 0 <= saved["n_both_in_top2"] <= 2
    for entry in data["methods"].values():
        assert entry["difference"] == pytest.approx(entry["iou_own"] - entry["iou_other"])
        assert 0 <= entry["iou_own"] <= 100 and 0 <= entry["iou_other"] <= 100
        assert entry["ci95"]["difference"][0] <= entry["difference"] <= entry["ci95"]["difference"][1]
        assert entry["n"] == {"iou_own": 2, "iou_other": 2, "difference": 2}


# ---------------------------------------------------------------------------------------- helpers
def test_multilabel_decision_rule_on_a_hand_built_case():
    # 1 image, K = 2 classes, 1×4 pixels; class 0 chosen, class 1 not chosen.
    evidence = torch.tensor([[[[0.0, 0.6, 1.0, 0.0]], [[0.0, 0.0, 0.0, 0.9]]]])
    chosen = torch.tensor([[True, False]])
    scores = se.label_scores(evidence, chosen)
    assert scores.shape == (1, 3, 1, 4)
    torch.testing.assert_close(scores[0, :, 0], torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.6, 1.0, 0.0],
                                                              [-0.1, -0.1, -0.1, -0.1]]))
    # pixel 0: tie at 0 → background; pixels 1, 2 → class 0 (label 1); pixel 3: unchosen class 1 never wins
    assert scores.argmax(dim=1).tolist() == [[[0, 1, 1, 0]]]
    masks = torch.tensor([[[0, 1, 255, 2]]])  # third pixel ignored
    rows = se.multilabel_rows(scores, masks)
    assert rows["correct"].tolist() == [2] and rows["total"].tolist() == [3]
    assert rows["inter"].tolist() == [[1, 1, 0]] and rows["union"].tolist() == [[2, 1, 1]]
    # micro AP over 3 labels × 3 valid pixels of softmax(scores): mean over positives of the precision at their score
    p = scores.softmax(dim=1)[0, :, 0, [0, 1, 3]].flatten()   # 3 labels × 3 pixels
    truth = torch.eye(3, dtype=torch.bool).flatten()        # pixel j has label j (0, 1, 2)
    expected = np.mean([float(truth[p >= s].double().mean()) for s in p[truth]])
    assert float(rows["ap"][0]) == pytest.approx(expected)

def test_class_evidence_thresholds():
    signed = torch.tensor([[[[-1.0, 0.5, 2.0, 0.0]]]])
    torch.testing.assert_close(se.class_evidence(signed, 0.0), torch.tensor([[[[0.0, 0.25, 1.0, 0.0]]]]))
    positive = torch.tensor([[[[1.0, 2.0, 3.0, 6.0]]]])  # mean 3 → (0, 0, 0, 3) / 3
    torch.testing.assert_close(se.class_evidence(positive, "mean"), torch.tensor([[[[0.0, 0.0, 0.0, 1.0]]]]))
    assert se.threshold_for("agf") == 0.0 and se.threshold_for("gradcam") == "mean"


@pytest.mark.parametrize("protocol", ["authors", "per_image_raw"])
@pytest.mark.parametrize("threshold", [0.0, "mean"])
def test_segmentation_rows_add_up_to_sslx_metrics(threshold, protocol):
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 1, 6, 7, generator=g)
    masks = (torch.rand(3, 6, 7, generator=g) > 0.6).long()
    masks[1, 0, :3] = 255
    rows = se.segmentation_rows(maps, masks, threshold, protocol)
    ours = se.segmentation_summary({f"m|{k}": v for k, v in rows.items()}, ["m"])["m"]
    ref = segmentation_scores(maps, masks, threshold=threshold, protocol=protocol)
    for key in ("pixel_accuracy", "mAP", "mIoU"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-5)
        assert ours["ci95"][key][0] <= ours[key] + 1e-9 and ours[key] <= ours["ci95"][key][1] + 1e-9
    assert ours["n"] == {"pixel_accuracy": 3, "mAP": 3, "mIoU": 3}


def test_perturbation_summary_auc_and_standard_error():
    correct = torch.tensor([[True] * 9, [True] * 4 + [False] * 5])
    summary = se.perturbation_summary({"m|predicted": correct}, ["m"], ["predicted"])["m"]["predicted"]
    per_image = [80.0, np.trapezoid([100] * 4 + [0] * 5, np.arange(1, 10) / 10)]  # 80 and 35
    assert summary["auc"] == pytest.approx(np.mean(per_image))
    assert summary["auc_se"] == pytest.approx(np.std(per_image, ddof=1) / np.sqrt(2))
    assert summary["accuracy"] == [100.0] * 4 + [50.0] * 5
    # two images: a resample's mean AUC is 35, 57.5 or 80 with probabilities 1/4, 1/2, 1/4 → the 95 % interval
    assert summary["ci95"]["auc"] == pytest.approx([35.0, 80.0]) and summary["n"] == {"auc": 2}
