"""`python -m sslx.probe` end to end on a tiny random RotNet: outputs, W&B offline files, --resume, DDP, errors."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from probe_fixtures import one_thread, write_tiny_rotnet  # noqa: F401  (one_thread: autouse fixture)
from sslx.probe.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--max-images", "24", "--val-images", "8", "--eval-images", "8", "--batch-size", "8", "--epochs", "1",
        "--eval-batch-size", "4", "--accelerator", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random RotNet-layout checkpoint (gidariss layout, 64-px input, narrow widths)."""
    return write_tiny_rotnet(tmp_path_factory.mktemp("model") / "model_net_epoch1", seed=21)


@pytest.fixture(scope="module")
def base(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`--layer all` with two methods and W&B offline, shared by several tests."""
    out = tmp_path_factory.mktemp("base")
    results = main(["--layer", "all", "--model", str(checkpoint), "--out", str(out), "--methods", "agf,gradcam",
                    "--overlays", "2", "--wandb", "offline", *TINY])
    return out, results


def _numbers(tree: object) -> list[float]:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _numbers(v)]
    return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_metrics_json_has_the_expected_keys_and_finite_values(base: tuple[Path, dict]) -> None:
    out, returned = base
    results = json.loads((out / "metrics.json").read_text())
    assert results == json.loads(json.dumps(returned))
    assert list(results["layers"]) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert results["config"]["methods"] == ["agf", "gradcam"] and results["config"]["epochs"] == 1
    assert {"segmentation", "perturbation", "probe_accuracy", "heatmaps", "probe", "ci95"} <= set(results["conventions"])
    assert {k: v["count"] for k, v in results["splits"].items()} == {"train": 24, "val": 8, "test": 8}
    # 64 px: maps 15, 7, 3, 3, 3; conv3 is 16×3×3 and sqrt(9216/16) = 24 is capped at the map's side
    assert [e["probe"]["feature_shape"][1] for e in results["layers"].values()] == [15, 7, 3, 3, 3]
    assert results["layers"]["conv3"]["probe"]["pool"] == 3 and results["layers"]["conv3"]["probe"]["num_features"] == 144
    for layer, entry in results["layers"].items():
        probe = entry["probe"]
        assert probe["layer"] == layer and probe["num_classes"] == 12 and probe["epochs"] == 1
        assert probe["num_features"] == probe["feature_shape"][0] * probe["pool"] ** 2
        for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
            assert 0.0 <= probe[key] <= 100.0
        assert entry["n_eval_images"] == 8 and set(entry["methods"]) == {"agf", "gradcam"}
        for scores in entry["methods"].values():
            assert {"pixel_accuracy", "mAP", "mIoU", "iou_background", "iou_foreground", "n_ap_images",
                    "perturbation_predicted", "perturbation_target"} <= set(scores)
            assert scores["n_ap_images"] == 8  # every scene has an object
            for key in ("pixel_accuracy", "mAP", "mIoU"):
                assert 0.0 < scores[key] <= 100.0
                low, high = scores["ci95"][key]  # a 95 % bootstrap interval over the 8 held-out images
                assert low - 1e-3 <= scores[key] <= high + 1e-3
            assert scores["mAP"] >= 50.0  # the authors' two-channel AP of a binarised map
            for variant in ("perturbation_predicted", "perturbation_target"):
                curve = scores[variant]
                assert curve["fractions"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
                # accuracies over 8 images are multiples of 12.5 %
                assert len(curve["accuracy"]) == 9 and all(a / 12.5 == round(a / 12.5) for a in curve["accuracy"])
                assert 0.0 <= curve["auc"] <= 80.0
                assert curve["ci95"]["auc"][0] - 1e-3 <= curve["auc"] <= curve["ci95"]["auc"][1] + 1e-3
        assert all(math.isfinite(x) for x in _numbers(entry))
        assert (out / layer / "probe.pt").stat().st_size > 0
        assert (out / layer / "checkpoints" / "last.ckpt").is_file()
        assert (out / layer / "overlays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("layers_mAP.png", "layers_pixel_accuracy.png", "layers_mIoU.png",
                 "layers_perturbation_predicted_auc.png", "layer_strip.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert not list(out.rglob(".*.tmp"))


def test_wandb_offline_run_holds_the_logged_metrics(base: tuple[Path, dict]) -> None:
    out, _ = base
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("conv3/agf/mAP", "conv3/gradcam/pixel_accuracy", "conv1/agf/perturbation_predicted_auc",
                "conv5/probe/test_accuracy", "conv3/train/loss_step", "conv3/val/accuracy", "conv3/overlays",
                "plots/mAP", "plots/layer_strip"):
        assert key.encode() in record, key
    tables = sorted(runs[0].rglob("*.table.json"))
    assert len(tables) == 5
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["layer", "index", "label", "prediction", "image", "mask", "agf", "gradcam"]
    assert len(table["data"]) == 2


def test_resume_skips_finished_layers_and_continues_from_the_checkpoint(
        base: tuple[Path, dict], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, results = base
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("wandb"))
    args = ["--layer", "3", "--model", str(checkpoint), "--out", str(out), "--methods", "agf,gradcam",
            "--overlays", "0", "--wandb", "disabled", *TINY, "--resume"]
    first = results["layers"]["conv3"]
    capsys.readouterr()
    assert main(args)["layers"]["conv3"] == first
    assert "conv3: finished earlier, skipped" in capsys.readouterr().out
    # an interrupted run: the Lightning checkpoint exists but the probe was never evaluated
    (out / "conv3" / "probe.pt").unlink()
    resumed = main(args)["layers"]["conv3"]
    assert "resuming training from" in capsys.readouterr().out
    assert _numbers(resumed["methods"]) == pytest.approx(_numbers(first["methods"]), abs=1e-3)
    assert resumed["probe"]["test_accuracy"] == first["probe"]["test_accuracy"]
    assert resumed["probe"]["val_accuracy"] == pytest.approx(first["probe"]["val_accuracy"])
    with pytest.raises(SystemExit):
        main([*args[:-1], "--resume", "--epochs", "2"])
    assert "different settings (epochs: 1 → 2)" in capsys.readouterr().err


def test_two_ddp_processes_give_the_single_process_metrics(base: tuple[Path, dict], checkpoint: Path,
                                                           tmp_path: Path) -> None:
    single = base[1]["layers"]["conv3"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sslx.probe", "--layer", "3", "--model", str(checkpoint),
                           "--methods", "agf,gradcam", "--overlays", "0", "--wandb", "disabled", *TINY,
                           "--out", str(tmp_path), "--devices", "2", "--strategy", "ddp"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "metrics.json").read_text())
    assert ddp["config"]["devices"] == "2" and ddp["config"]["strategy"] == "ddp"
    ddp = ddp["layers"]["conv3"]
    assert ddp["n_eval_images"] == single["n_eval_images"] == 8
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert ddp["probe"][key] == pytest.approx(single["probe"][key], abs=1e-3), key
    assert _numbers(ddp["methods"]) == pytest.approx(_numbers(single["methods"]), abs=1e-3)


@pytest.mark.parametrize(("extra", "message"), [
    (["--layer", "7"], "layer '7' does not exist in this model; valid layers: 1=conv1, 2=conv2, 3=conv3, "
                       "4=conv4, 5=conv5, or 'all'"),
    (["--layer", "fc6"], "valid layers: 1=conv1"),
    ([], "choose a layer with --layer: 1=conv1"),
    (["--layer", "1", "--methods", "agf,lime"], "unknown explanation method(s) ['lime']"),
    (["--layer", "1", "--epochs", "0"], "--epochs must be a positive integer"),
])
def test_bad_options_are_named(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               extra: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(checkpoint), "--out", str(tmp_path), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_wandb_online_without_credentials_fails_before_training(
        checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc there
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    with pytest.raises(SystemExit):
        main(["--layer", "1", "--model", str(checkpoint), "--out", str(tmp_path / "out"), "--wandb", "online"])
    assert "--wandb online needs W&B credentials" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unloadable_models_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--layer", "1", "--model", str(tmp_path / "nope.pth"), "--out", str(tmp_path)])
    assert "neither an embedded model (rotnet, sela, scan, moco, dino_vit, vit) nor an existing checkpoint file" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(SystemExit):
        main(["--layer", "1", "--model", str(corrupt), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "cannot load --model" in err and "truncated or corrupt" in err  # ssl_models.load's reason


def test_bad_data_directories_are_named(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--layer", "1", "--model", str(checkpoint), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit):
        main([*base, "--data", str(tmp_path / "missing")])
    assert f"image folder {str(tmp_path / 'missing')!r} does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        main([*base, "--data", str(empty)])
    assert "has no class subfolders" in capsys.readouterr().err
    (empty / "cats").mkdir()
    (empty / "dogs").mkdir()
    with pytest.raises(SystemExit):
        main([*base, "--data", str(empty)])
    assert "contains no images" in capsys.readouterr().err
    for name in ("cats", "dogs"):
        for i in range(5):
            (empty / name / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        main([*base, "--data", str(empty)])
    assert "cannot read image" in capsys.readouterr().err


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for action in parser._actions:
        assert action.help, action.dest
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ("--layer", "--model", "--data", "--epochs", "--batch-size", "--max-images", "--eval-images",
                   "--methods", "--out", "--wandb", "--devices", "--strategy", "--seed", "--resume"):
        assert option in text


def test_image_folder_run_records_disjoint_validation_and_test_images(checkpoint: Path, tmp_path: Path) -> None:
    from test_probe import write_folder

    root = write_folder(tmp_path / "data", per_class=20, size=70)  # 4 + 4 held-out images
    out = tmp_path / "out"
    results = main(["--layer", "1", "--model", str(checkpoint), "--data", str(root), "--out", str(out),
                    "--methods", "gradcam", "--overlays", "0", "--wandb", "disabled", *TINY,
                    "--val-images", "4", "--eval-images", "4"])  # the later options win
    saved = json.loads((out / "metrics.json").read_text())
    splits = saved["splits"]
    assert saved["data"] == f"image folder {root.resolve()}" and splits == results["splits"]
    assert {name: splits[name]["count"] for name in ("train", "val", "test")} == {"train": 24, "val": 4, "test": 4}
    val, test = set(splits["val"]["paths"]), set(splits["test"]["paths"])
    assert len(val) == 4 and len(test) == 4 and not val & test
    assert not (val | test) & set(splits["train"]["paths"])
    assert all((root / path).is_file() for path in val | test)
    assert saved["layers"]["conv1"]["n_eval_images"] == 4  # the evaluation ran on exactly the recorded test images
