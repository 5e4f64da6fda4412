"""ssl_models.load on MoCo v1/v2/v3, SwAV, DINO, VICReg and converted SimCLR/BYOL files written by upstream-layout
reference classes (tests/modern_ssl_fixtures.py): features equal to the reference forward in float64."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch.testing import assert_close

import ssl_models
from modern_ssl_fixtures import (dino_pair, moco_v2, small_resnet, without_fc, write_backbone_only, write_converted,
                                 write_dino_full, write_moco, write_moco_v3, write_simclr_v2, write_swav, write_vicreg)
from ssl_fixtures import images, save
from ssl_models import CheckpointError

TIGHT = dict(atol=1e-6, rtol=1e-6)


def _x() -> torch.Tensor:
    return images(48, batch=2, seed=1)


def _loaded(path, **kwargs) -> ssl_models.SSLModel:
    return ssl_models.load(path, **kwargs).double()


@pytest.mark.parametrize("mlp", [True, False], ids=["v2", "v1"])
def test_moco_v1_v2_features_and_projector(tmp_path, mlp):
    ref = moco_v2(mlp=mlp)
    m = _loaded(write_moco(ref, tmp_path / "moco.pth.tar"))
    assert (m.info["kind"], m.info["variant"]) == ("moco", "resnet14-v2" if mlp else "resnet14-v1")
    assert m.head is None and not m.has_head and m.info["K"] is None
    x = _x()
    features = m.features(x)
    assert_close(features, without_fc(ref.encoder_q)(x), **TIGHT)
    assert_close(m(x), features)  # head-less: forward gives the features
    q = copy.deepcopy(ref.encoder_q).double()
    assert_close(m.projector(features), q(x), **TIGHT)
    assert any("queue" in note for note in m.info["notes"])


def test_moco_v2_real_resnet50(tmp_path):
    ref = moco_v2(base_encoder=torchvision.models.resnet50)
    m = _loaded(write_moco(ref, tmp_path / "moco_v2_800ep_pretrain.pth.tar"))
    x = images(32, batch=1, seed=2)
    assert m.info["depths"] == (3, 4, 6, 3)
    assert_close(m.features(x), without_fc(ref.encoder_q)(x), **TIGHT)


def test_moco_v3(tmp_path):
    ref, path = write_moco_v3(tmp_path / "r-50-100ep.pth.tar")
    m = _loaded(path)
    assert m.info["variant"] == "resnet14-v3"
    x = _x()
    assert_close(m.features(x), without_fc(ref.base_encoder)(x), **TIGHT)
    assert_close(m.projector(m.features(x)), copy.deepcopy(ref.base_encoder).double()(x), **TIGHT)


@pytest.mark.parametrize("wrapped", [False, True], ids=["released", "training"])
def test_swav_prototypes_are_the_head(tmp_path, wrapped):
    ref, path = write_swav(tmp_path / "swav.pth.tar", wrapped=wrapped)
    m = _loaded(path)
    assert m.info["kind"] == "swav" and m.info["K"] == 30
    ref = ref.double()
    x = _x()
    embedding, logits = ref.forward_head(ref.forward_backbone(x))
    assert_close(m.features(x), embedding, **TIGHT)
    assert_close(m(x), logits, **TIGHT)
    trunk = m.truncate("layer4")
    assert trunk(x).shape == (2, 2048, 2, 2)


def test_dino_full_checkpoint_uses_teacher(tmp_path):
    teacher, path = write_dino_full(tmp_path / "dino_resnet50_pretrain_full_checkpoint.pth")
    m = _loaded(path)
    assert m.info["kind"] == "dino" and m.info["K"] == 40
    teacher = teacher.double()  # weight_norm modules cannot be deep-copied
    x = _x()
    assert_close(m(x), teacher(x), **TIGHT)
    assert_close(m.features(x), torch.nn.functional.normalize(teacher.head.mlp(teacher.backbone(x)), dim=1), **TIGHT)
    assert any("teacher" in note for note in m.info["notes"])


def test_dino_and_vicreg_backbone_only(tmp_path):
    student, _ = dino_pair()
    path = write_backbone_only(student.backbone, tmp_path / "dino_resnet50_pretrain.pth")
    x = _x()
    expected = copy.deepcopy(student.backbone).double()(x)
    for kind in ("dino", "vicreg"):
        m = _loaded(path, kind=kind)
        assert m.info["kind"] == kind and m.head is None
        assert_close(m.features(x), expected, **TIGHT)
    generic = _loaded(path)
    assert generic.info["kind"] == "torchvision"
    assert any("kind='dino'" in note for note in generic.info["notes"])
    with pytest.raises(CheckpointError, match="contradicts"):
        ssl_models.load(path, kind="scan")


def test_vicreg_training_checkpoint(tmp_path):
    ref, path = write_vicreg(tmp_path / "vicreg.pth")
    m = _loaded(path)
    assert m.info["kind"] == "vicreg"
    ref = ref.double()
    x = _x()
    assert_close(m.features(x), ref.backbone(x), **TIGHT)
    assert_close(m.projector(m.features(x)), ref.projector(ref.backbone(x)), **TIGHT)


@pytest.mark.parametrize("kind", ["simclr", "byol"])
def test_converted_v1_and_byol(tmp_path, kind):
    ref, path = write_converted(tmp_path / f"{kind}.pth")
    with pytest.raises(CheckpointError, match="kind='simclr' / 'byol'"):
        ssl_models.load(path)
    m = _loaded(path, kind=kind)
    ref = ref.double()
    x = _x()
    assert_close(m(x), ref(x), **TIGHT)
    assert_close(m.features(x), without_fc(ref)(x), **TIGHT)
    pixels = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    if kind == "simclr":  # SimCLR takes [0,1] pixels unnormalised
        assert_close(m.preprocess(pixels), pixels)
    else:
        assert m.preprocess.mean == (0.485, 0.456, 0.406)


def test_simclr_v2_converter_layout(tmp_path):
    resnet, head, path = write_simclr_v2(tmp_path / "r50_1x_sk0.pth")
    m = _loaded(path)
    assert m.info["kind"] == "simclr" and m.info["depths"] == (1, 2, 1, 1)
    resnet, head = resnet.double(), head.double()
    x = _x()
    assert_close(m.features(x), resnet(x), **TIGHT)
    assert_close(m(x), resnet(x, apply_fc=True), **TIGHT)
    assert_close(m.projector(m.features(x)), head(resnet(x)), **TIGHT)


# ---------------------------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def moco_file(tmp_path_factory):
    return write_moco(moco_v2(), tmp_path_factory.mktemp("moco") / "moco.pth.tar")


def test_truncated_modern_file(tmp_path, moco_file):
    data = moco_file.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ssl_models.load(bad)


def test_pickled_model_is_refused(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save({"state_dict": small_resnet(num_classes=4)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        ssl_models.load(path)


def test_foreign_dict_names_what_was_found(tmp_path):
    path = save({"generator": {"w": torch.zeros(2)}, "epoch": 3}, tmp_path / "gan.pth")
    with pytest.raises(CheckpointError, match="no weights found.*'generator'"):
        ssl_models.load(path)
    path = save({"encoder_q.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="no ResNet trunk under 'encoder_q.'"):
        ssl_models.load(path)


def test_corrupt_weight_norm_and_nan(tmp_path):
    teacher, _ = dino_pair()
    state = {f"backbone.{k}": v for k, v in teacher.backbone.state_dict().items()}
    state.update({f"head.{k}": v for k, v in teacher.head.state_dict().items()})
    del state["head.last_layer.weight_g"]
    path = save({"student": state, "teacher": state}, tmp_path / "bad_dino.pth")
    with pytest.raises(CheckpointError, match="needs both head.last_layer.weight_g"):
        ssl_models.load(path)
    ref = moco_v2()
    sd = ref.state_dict()
    sd["encoder_q.layer1.0.conv1.weight"] = torch.full_like(sd["encoder_q.layer1.0.conv1.weight"], float("nan"))
    path = save({"state_dict": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        ssl_models.load(path)


def test_simclr_v2_selective_kernel_is_refused(tmp_path):
    resnet, head, path = write_simclr_v2(tmp_path / "r50.pth")
    obj = torch.load(path, weights_only=True)
    obj["resnet"]["net.1.blocks.0.net.2.mixing_conv.0.weight"] = torch.zeros(32, 64, 1, 1)
    save(obj, path)
    with pytest.raises(CheckpointError, match="selective-kernel"):
        ssl_models.load(path)
