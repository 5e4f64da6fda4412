"""ssl_models error paths: every bad file, argument or input gets an error that names the problem."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import ssl_models
import ssl_models.embedded_assets as embedded_module
import ssl_models.serialization as serialization
from ssl_fixtures import images, save, small_rotnet, small_scan_cifar, small_sela_alexnet
from ssl_models import CheckpointError
from ssl_models.alexnet import build_alexnet
from ssl_models.keys import KeyMap
from ssl_models.strict_load import load_strict


@pytest.fixture(scope="module")
def rotnet_state():
    return small_rotnet().state_dict()


@pytest.fixture(scope="module")
def sela_state():
    return small_sela_alexnet().state_dict()


@pytest.fixture(scope="module")
def scan_state():
    return small_scan_cifar(nheads=3).state_dict()


def _load_error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        ssl_models.load(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path))  # every checkpoint error names the file
    return message


# ---------------------------------------------------------------------------------------------- files


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file not found: .*nothing.pth"):
        ssl_models.load(tmp_path / "nothing.pth")


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a regular file"):
        ssl_models.load(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty (0 bytes)" in _load_error(tmp_path / "empty.pth")


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_truncated_file_is_reported_as_corrupt(tmp_path, rotnet_state, legacy, keep):
    path = save({"epoch": 50, "network": rotnet_state, "head": np.int64(0)}, tmp_path / "r.pth", legacy=legacy)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert "truncated or corrupt" in _load_error(path)


def test_random_bytes_are_reported_as_corrupt(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "truncated or corrupt" in _load_error(path)


def test_whole_pickled_module_is_refused(tmp_path):
    path = save(small_rotnet(), tmp_path / "model_final.pth.tar")  # torch.save(model), as SeLa's final file
    message = _load_error(path)
    assert "pickled Python objects" in message and "RotNetAlexNet" in message and "state_dict" in message


class _Custom:
    pass


def test_pickled_custom_object_and_numpy_array_are_refused(tmp_path):
    path = save({"state_dict": {"w": torch.ones(1)}, "extra": _Custom()}, tmp_path / "custom.pth")
    message = _load_error(path)
    assert "pickled Python objects" in message and "_Custom" in message
    path = save({"state_dict": {"w": torch.ones(1)}, "L": np.zeros(3)}, tmp_path / "array.pth")
    assert "pickled Python objects (numpy." in _load_error(path)


def test_top_level_tensor_empty_dict_and_wrapper_without_weights(tmp_path):
    assert "holds a Tensor" in _load_error(save(torch.ones(3), tmp_path / "t.pth"))
    assert "empty dict" in _load_error(save({}, tmp_path / "e.pth"))
    message = _load_error(save({"epoch": 3, "arch": "alexnet"}, tmp_path / "w.pth"))
    assert "no weights found" in message and "'epoch'" in message and "'state_dict'" in message


def test_non_tensor_entries_inside_state_dict(tmp_path):
    state = {"features.0.weight": torch.ones(1), "oops": 3}
    path = save({"state_dict": state, "L": torch.zeros(1)}, tmp_path / "n.pth")
    assert "non-tensor entries: oops" in _load_error(path)


def test_module_prefix_collision(tmp_path, rotnet_state):
    state = OrderedDict(rotnet_state)
    state["module._feature_blocks.0.0.bias"] = state["_feature_blocks.0.0.bias"]
    message = _load_error(save({"network": state}, tmp_path / "c.pth"))
    assert "collide" in message and "_feature_blocks.0.0.bias" in message


# ---------------------------------------------------------------------------------------------- layouts


def test_unknown_layout_lists_expected_and_found_keys(tmp_path):
    state = {f"encoder.block{i}.weight": torch.ones(2) for i in range(20)} | {"proj.weight": torch.ones(2, 2)}
    message = _load_error(save(state, tmp_path / "u.pth"))
    assert "unknown checkpoint layout" in message
    assert "_feature_blocks" in message and "cluster_head" in message and "top_layer" in message  # expected
    assert "encoder.* (20)" in message and "proj.weight" in message  # found, abbreviated


def test_plain_torchvision_state_dict_needs_kind_sela(tmp_path):
    ref = torchvision.models.resnet18(num_classes=7).eval()
    path = save(ref.state_dict(), tmp_path / "tv.pth")
    assert "plain torchvision ResNet" in _load_error(path)
    m = ssl_models.load(path, kind="sela")
    assert m.info["variant"] == "torchvision-resnet18"
    x = images(32).float()
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), atol=1e-5, rtol=1e-5)


def test_kind_contradicting_the_file(tmp_path, rotnet_state):
    path = save({"epoch": 1, "network": rotnet_state}, tmp_path / "r.pth")
    message = _load_error(path, kind="sela")
    assert "kind='sela' contradicts the file, which is a 'rotnet' checkpoint" in message
    with pytest.raises(ValueError, match="unknown kind 'barlow'.*'scan', 'sela', 'rotnet'"):
        ssl_models.load(path, kind="barlow")


def test_scan_pretext_rotnet_nin_and_deepcluster_are_rejected_by_name(tmp_path):
    state = {"backbone.conv1.weight": torch.ones(64, 3, 3, 3), "contrastive_head.weight": torch.ones(128, 512)}
    assert "pretext" in _load_error(save(state, tmp_path / "simclr.pth"))
    nin = {"_feature_blocks.0.Block1_ConvB1.layers.Conv.weight": torch.ones(192, 3, 5, 5)}
    assert "NetworkInNetwork" in _load_error(save({"epoch": 1, "network": nin}, tmp_path / "nin"))
    deepcluster = {"sobel.0.weight": torch.ones(1, 3, 1, 1), "features.module.0.weight": torch.ones(96, 2, 11, 11),
                   "top_layer.weight": torch.ones(10, 4096)}
    message = _load_error(save({"epoch": 1, "arch": "alexnet", "state_dict": deepcluster}, tmp_path / "dc.pth"))
    assert "DeepCluster" in message


# ---------------------------------------------------------------------------------------------- contents


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, sela_state):
    state = OrderedDict(sela_state)
    state["features.5.running_var"] = torch.ones(10)
    message = _load_error(save(state, tmp_path / "s.pth"))
    assert "shape mismatch for 'features.5.running_var'" in message and "[10]" in message and "[64]" in message


def test_inconsistent_block_shapes_name_the_key(tmp_path, scan_state):
    state = OrderedDict(scan_state)
    state["backbone.layer1.0.conv2.weight"] = torch.ones(8, 5, 3, 3)
    message = _load_error(save({"model": state, "head": 0}, tmp_path / "b.pth"))
    assert "'backbone.layer1.0.conv2.weight'" in message and "[8, 5, 3, 3]" in message and "[8, 8, 3, 3]" in message


def test_missing_and_unexpected_keys(tmp_path, sela_state, rotnet_state):
    state = OrderedDict(sela_state)
    del state["classifier.4.bias"]
    message = _load_error(save(state, tmp_path / "m.pth"))
    assert "missing keys for the inferred architecture: classifier.4.bias" in message
    state = OrderedDict(rotnet_state)
    del state["_feature_blocks.8.2.running_mean"]
    assert "_feature_blocks.8.2.running_mean" in _load_error(save({"network": state}, tmp_path / "m2.pth"))
    state = OrderedDict(sela_state)
    state["features.18.weight"] = torch.ones(3)
    assert "unexpected keys for the inferred architecture: features.18.weight" in _load_error(
        save(state, tmp_path / "u.pth"))


def test_missing_defining_key_is_named(tmp_path, sela_state):
    state = OrderedDict(sela_state)
    del state["classifier.1.weight"]
    assert "missing key 'classifier.1.weight' (AlexNet fc6)" in _load_error(save(state, tmp_path / "d.pth"))


def test_flatten_size_inconsistent_with_conv5(tmp_path, sela_state):
    state = OrderedDict(sela_state)
    state["classifier.1.weight"] = torch.ones(64, 1000)
    message = _load_error(save(state, tmp_path / "f.pth"))
    assert "'classifier.1.weight' takes 1000 inputs" in message and "conv5 width 64" in message


def test_non_finite_and_integer_weights(tmp_path, rotnet_state):
    state = OrderedDict(rotnet_state)
    state["_feature_blocks.4.0.weight"] = state["_feature_blocks.4.0.weight"].clone()
    state["_feature_blocks.4.0.weight"][0, 0, 0, 0] = float("nan")
    assert "'_feature_blocks.4.0.weight' contains NaN or Inf" in _load_error(save({"network": state}, tmp_path / "n"))
    state = OrderedDict(rotnet_state)
    state["_feature_blocks.9.0.bias"] = torch.zeros(4, dtype=torch.int64)
    message = _load_error(save({"network": state}, tmp_path / "i"))
    assert "'_feature_blocks.9.0.bias' should hold floating-point" in message


def test_cluster_heads_with_gap(tmp_path, scan_state):
    state = OrderedDict((k, v) for k, v in scan_state.items() if not k.startswith("cluster_head.1."))
    assert "numbered [0, 2]" in _load_error(save({"model": state, "head": 0}, tmp_path / "g.pth"))


def test_missing_projection_is_reported(tmp_path, scan_state):
    state = OrderedDict((k, v) for k, v in scan_state.items() if ".layer2.0.shortcut." not in k)
    assert "no projection weights" in _load_error(save({"model": state, "head": 0}, tmp_path / "p.pth"))


def test_no_partial_load_when_a_late_key_is_wrong():
    model = build_alexnet((4, 4, 4, 4, 4), 4 * 3 * 3, (8, 8), "batchnorm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in before.items()}
    state["fc7.1.running_var"] = torch.ones(5)  # the last tensor in order
    with pytest.raises(CheckpointError, match="fc7.1.running_var"):
        load_strict(model, state, KeyMap([("", "")]), [])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------- arguments


def test_head_argument_range_and_type(tmp_path, scan_state):
    path = save({"model": scan_state, "head": np.int64(1)}, tmp_path / "h.pth")
    with pytest.raises(ValueError, match=r"head=3 is out of range: the model has 3 head\(s\), valid indices 0..2"):
        ssl_models.load(path, head=3)
    with pytest.raises(ValueError, match="head=-1 is out of range"):
        ssl_models.load(path, head=-1)
    for bad in (True, "1", 1.0):
        with pytest.raises(TypeError, match="head must be an int"):
            ssl_models.load(path, head=bad)
    m = ssl_models.load(path)
    with pytest.raises(ValueError, match="head=7 is out of range"):
        m.select_head(7)
    assert m.head_index == 1  # unchanged after the failed selection


def test_stored_head_out_of_range_or_not_an_int(tmp_path, scan_state):
    assert "stored 'head' = 5 is out of range for 3 cluster head(s)" in _load_error(
        save({"model": scan_state, "head": np.int64(5)}, tmp_path / "a.pth"))
    assert "stored 'best_loss_head' should be an integer" in _load_error(
        save({"model": scan_state, "best_loss_head": 1.5, "epoch": 3}, tmp_path / "b.pth"))


def test_variant_errors(tmp_path, scan_state, rotnet_state):
    path = save({"model": scan_state, "head": 0}, tmp_path / "cifar.pth")
    assert "variant='imagenet' contradicts the file" in _load_error(path, variant="imagenet")
    with pytest.raises(ValueError, match="unknown SCAN variant 'svhn'"):
        ssl_models.load(path, variant="svhn")
    imagenet = {"backbone.conv1.weight": torch.ones(64, 3, 7, 7), "cluster_head.0.weight": torch.ones(5, 2048)}
    assert "variant='stl' contradicts the file" in _load_error(save(imagenet, tmp_path / "r50.pth"), variant="stl")
    with pytest.raises(ValueError, match="RotNet checkpoints take no variant"):
        ssl_models.load(save({"network": rotnet_state}, tmp_path / "r"), variant="stl")


# ---------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def rotnet_model(tmp_path_factory, rotnet_state):
    path = save({"network": rotnet_state}, tmp_path_factory.mktemp("rot") / "r.pth")
    return ssl_models.load(path)


def test_forward_and_features_reject_bad_inputs(rotnet_model):
    m = rotnet_model
    for call in (m, m.features):
        with pytest.raises(ValueError, match="expects 128×128 inputs.*got 224×224"):
            call(torch.rand(1, 3, 224, 224))
        with pytest.raises(TypeError, match="dtype torch.float64 but the model weights are torch.float32"):
            call(torch.rand(1, 3, 128, 128, dtype=torch.float64))
        with pytest.raises(ValueError, match="4-D"):
            call(torch.rand(3, 128, 128))
        with pytest.raises(ValueError, match="NaN or Inf"):
            call(torch.full((1, 3, 128, 128), float("nan")))
        with pytest.raises(ValueError, match="3 channels"):
            call(torch.rand(1, 1, 128, 128))


def test_truncate_unknown_layer(rotnet_model):
    with pytest.raises(ValueError, match=r"unknown layer 'fc6'; probe-able layers are \('conv1', .*'conv5'\)"):
        rotnet_model.truncate("fc6")


def test_preprocess_rejects_out_of_range_and_wrong_channels(rotnet_model):
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\], got min 0 and max 255"):
        rotnet_model.preprocess(torch.tensor([0.0, 255.0]).repeat(6).view(1, 3, 2, 2))
    with pytest.raises(ValueError, match="3 channels"):
        rotnet_model.preprocess(torch.rand(1, 4, 2, 2))
    with pytest.raises(ValueError, match="std must be positive"):
        ssl_models.Preprocess((0.0,), (0.0,), 8)


# ---------------------------------------------------------------------------------------------- helpers


def test_embedded_unknown_name_and_missing_asset(tmp_path, monkeypatch):
    valid = r"unknown embedded model 'dino'; valid names are \('rotnet', 'sela', 'scan', 'moco', 'dino_vit'\)"
    with pytest.raises(ValueError, match=valid):
        ssl_models.embedded("dino")
    monkeypatch.setattr(embedded_module, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sela.pth is missing; .*experiments/train_sela.py"):
        ssl_models.embedded("sela")


def test_save_checkpoint_rejects_bad_objects_and_folders(tmp_path):
    with pytest.raises(TypeError, match="must be a dict"):
        ssl_models.save_checkpoint([torch.ones(1)], tmp_path / "a.pth")
    with pytest.raises(TypeError, match=r"\['network'\] are nn.Module objects; save module.state_dict\(\)"):
        ssl_models.save_checkpoint({"network": nn.Linear(2, 2)}, tmp_path / "a.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ssl_models.save_checkpoint({"w": torch.ones(1)}, tmp_path / "no" / "a.pth")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    ssl_models.save_checkpoint({"w": torch.ones(2)}, path)
    original = path.read_bytes()

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(serialization.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ssl_models.save_checkpoint({"w": torch.zeros(2)}, path)
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["ckpt.pth"]
