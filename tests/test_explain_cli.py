"""`python -m sslx.explain`: image files in, overlay PNG and predicted class out; clear errors for bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_models
import sslx
from sslx import cli_explain
from sslx.assets import asset_path, load_supervised
from sslx.data.scenes import SCENE_CLASSES, ScenesDataset
from sslx.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sslx.models import build_classifier
from ssl_fixtures import small_rotnet

ROOT = Path(__file__).resolve().parents[1]
TINY_VGG = {"widths": [4, 4, 8, 8, 8], "hidden": 8}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sslx.explain", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def reference_input(path: Path) -> torch.Tensor:
    """1×3×128×128 model input of a 128×128 PNG, computed directly: (pixels / 255 − mean) / std."""
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1) / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((pixels - mean) / std)[None]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny supervised VGG checkpoint with confident, image-dependent outputs and two 128×128 scene PNGs."""
    folder = tmp_path_factory.mktemp("explain_cli")
    torch.manual_seed(0)
    net = build_classifier("vgg", TINY_VGG)
    with torch.no_grad():
        net.classifier[-1].weight.mul_(300.0)  # default init is tiny: make the prediction depend on the image
    ssl_models.save_checkpoint({"arch": "vgg", "config": TINY_VGG, "state_dict": net.state_dict(),
                                "classes": list(SCENE_CLASSES), "metrics": {}}, folder / "tiny.pth")
    scenes = ScenesDataset("test", size=4)
    paths = {"model": folder / "tiny.pth"}
    for i, index in enumerate((0, 3)):  # two scenes the tiny model assigns to different classes
        paths[f"scene{i}"] = folder / f"scene{i}.png"
        Image.fromarray(scenes.render(index).image.transpose(1, 2, 0)).save(paths[f"scene{i}"])
    return paths


def test_cli_writes_overlay_png_and_prints_each_prediction(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli(str(files["scene0"]), str(files["scene1"]), "--model", str(files["model"]),
                     "--method", "agf,gradcam", "--out", "out.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model = load_supervised(files["model"])
    with torch.no_grad():
        probs = model(torch.cat([reference_input(files["scene0"]), reference_input(files["scene1"])])).softmax(1)
    expected = [f"{files[f'scene{i}']}: predicted {SCENE_CLASSES[int(probs[i].argmax())]} "
                f"(class {int(probs[i].argmax())}, p={float(probs[i].max()):.3f})" for i in range(2)]
    assert result.stdout.splitlines() == [*expected, "wrote out.png"]
    assert int(probs[0].argmax()) != int(probs[1].argmax())  # the two lines really come from two predictions
    with Image.open(tmp_path / "out.png") as im:
        im.load()
        assert im.format == "PNG"
        width, height = im.size
    assert width > height > 200  # 2 rows × (image, agf, gradcam) panels plus colour bars
    assert not list(tmp_path.glob(".out.png.*"))  # atomic write left no temp file


def test_heatmaps_equal_sslx_explain_on_the_decoded_image(files: dict[str, Path]) -> None:
    model = cli_explain.load_model(str(files["model"]))
    result = cli_explain.explain_files(model, [str(files["scene0"])], ["agf"], target="3")
    x = reference_input(files["scene0"])
    torch.testing.assert_close(result.inputs, x, rtol=0, atol=1e-6)
    assert result.explained.tolist() == [3]
    torch.testing.assert_close(result.heatmaps["agf"], sslx.explain(model.network, x, 3, method="agf"))


def test_non_square_image_is_resized_and_centre_cropped_to_the_input_size(files: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    colour = np.array([200, 40, 90], dtype=np.uint8)
    Image.fromarray(np.broadcast_to(colour, (150, 260, 3)).copy()).save(tmp_path / "wide.jpg", quality=100)
    model = cli_explain.load_model(str(files["model"]))
    x = cli_explain.read_images([str(tmp_path / "wide.jpg")], model)
    assert x.shape == (1, 3, 128, 128)
    decoded = np.asarray(Image.open(tmp_path / "wide.jpg").convert("RGB"))[75, 130].astype(np.float32)  # JPEG-rounded
    expected = (decoded / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    torch.testing.assert_close(x[0], torch.tensor(expected, dtype=torch.float32).view(3, 1, 1).expand(3, 128, 128),
                               rtol=0, atol=2e-2)


@pytest.mark.parametrize(("target", "explained"), [("top", None), ("4", 4), ("heart", SCENE_CLASSES.index("heart"))])
def test_target_top_id_or_class_name(files: dict[str, Path], target: str, explained: int | None) -> None:
    model = cli_explain.load_model(str(files["model"]))
    result = cli_explain.explain_files(model, [str(files["scene1"])], ["gradcam"], target=target)
    assert result.explained.tolist() == [int(result.predicted) if explained is None else explained]
    lines = cli_explain.report_lines(model, ["x.png"], result)
    assert ("explained" in lines[0]) == (explained is not None and explained != int(result.predicted))


def test_ssl_checkpoint_uses_its_preprocessing_and_rotation_names(tmp_path: Path) -> None:
    ref = small_rotnet()
    ssl_models.save_checkpoint({"epoch": 30, "network": ref.state_dict()}, tmp_path / "rot.pth")
    model = cli_explain.load_model(str(tmp_path / "rot.pth"))
    assert model.input_size == 128 and model.class_names == ("0°", "90°", "180°", "270°")
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    result = cli_explain.explain_files(model, [str(tmp_path / "grey.png")], ["agf"])
    with torch.no_grad():
        torch.testing.assert_close(result.probabilities, ref(result.inputs).softmax(1))


def test_torchvision_arch_state_dict_checkpoint(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v3_small(num_classes=3).eval()
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # DataParallel prefix is stripped
    torch.save({"arch": "mobilenet_v3_small", "state_dict": state, "epoch": 3}, tmp_path / "tv.pth")
    model = cli_explain.load_model(str(tmp_path / "tv.pth"))
    assert model.input_size == 224 and model.class_names == ("class 0", "class 1", "class 2")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.network(x), ref(x))


def test_default_model_is_the_embedded_supervised_vgg() -> None:
    assert cli_explain.build_parser().parse_args(["a.png"]).model == "vgg"


@pytest.mark.skipif(not asset_path("vgg").is_file(), reason="embedded supervised VGG asset not trained yet")
def test_cli_on_the_embedded_vgg_names_the_scene_class(tmp_path: Path) -> None:
    scenes = ScenesDataset("test", size=12)
    Image.fromarray(scenes.render(0).image.transpose(1, 2, 0)).save(tmp_path / "drop.png")
    result = run_cli("drop.png", "--out", "vgg.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"drop.png: predicted {SCENE_CLASSES[scenes[0]['label']]} (class 0, p=")
    assert (tmp_path / "vgg.png").is_file()


@pytest.mark.parametrize("name", ["resnet", "rotnet", "sela", "scan"])
def test_embedded_models_take_the_128px_scenes(files: dict[str, Path], name: str) -> None:
    if not asset_path(name).is_file():
        pytest.skip(f"embedded {name} asset not trained yet")
    model = cli_explain.load_model(name)
    assert model.input_size == 128  # SCAN's loader assumes 224 px for its family; the asset saw 128 px scenes
    result = cli_explain.explain_files(model, [str(files["scene0"])], ["agf"])
    x = reference_input(files["scene0"])
    torch.testing.assert_close(result.inputs, x, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(result.probabilities, model.network(x).softmax(1))
    assert result.heatmaps["agf"].shape == (1, 1, 128, 128)


# ------------------------------------------------------------------------------------------ errors
def test_missing_image_fails_with_exit_2_and_no_traceback(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("nope.png", "--model", str(files["model"]), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "python -m sslx.explain: error: image not found: nope.png"
    assert not (tmp_path / "explanation.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "alexnet9"], "unknown model 'alexnet9': neither an embedded model (vgg, resnet, rotnet, sela, scan)"),
    (["--target", "12"], "--target 12 is out of range: the model has 12 classes (0..11)"),
    (["--target", "-1"], "--target -1 is out of range"),
    (["--target", "banana"], "--target must be 'top', a class id or a class name, got 'banana'; class names are drop"),
    (["--method", "agf,magic"], "unknown method magic; available: "),
    (["--out", "out.jpg"], "--out must be a .png file, got 'out.jpg'"),
    (["--out", "no/such/dir/out.png"], "--out folder 'no/such/dir' does not exist"),
    (["--alpha", "0"], "--alpha must be in (0, 1], got 0.0"),
])
def test_bad_arguments_are_named(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture,
                                 monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    defaults = {"--model": str(files["model"])}
    argv = [str(files["scene0"]), *args, *[x for k, v in defaults.items() if k not in args for x in (k, v)]]
    assert cli_explain.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m sslx.explain: error: {message}"), err
    assert not list(tmp_path.glob("*.png"))


def test_unreadable_image_and_corrupt_checkpoint_are_named(files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "fake.png").write_text("not an image")
    out = str(tmp_path / "o.png")
    assert cli_explain.main([str(tmp_path / "fake.png"), "--model", str(files["model"]), "--out", out]) == 2
    assert f"cannot read image {tmp_path / 'fake.png'}" in capsys.readouterr().err
    (tmp_path / "broken.pth").write_bytes(b"\x00garbage" * 10)
    assert cli_explain.main([str(files["scene0"]), "--model", str(tmp_path / "broken.pth"), "--out", out]) == 2
    assert f"error: cannot load model '{tmp_path / 'broken.pth'}'" in capsys.readouterr().err
    assert cli_explain.main([str(files["scene0"]), "--model", str(tmp_path), "--out", out]) == 2
    assert "is not a file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ naming
def test_sslx_explain_is_the_function_whatever_the_import_route() -> None:
    code = (
        "import importlib, sslx.explain_api as api\n"
        "from sslx import explain as first\n"
        "import sslx.explain\n"
        "from sslx import explain as second\n"
        "import sslx\n"
        "assert first is second is sslx.explain is importlib.import_module('sslx.explain') is api.explain\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "ok", out.stderr
