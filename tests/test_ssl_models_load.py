"""ssl_models.load on checkpoints written at test time in every published SCAN / SeLa / RotNet layout.

Each loaded model must reproduce, in float64, the reference network of the upstream layout holding
the same weights (tests/ssl_fixtures.py), trace with torch.fx into AGF-supported operations only,
and satisfy m(x) == m.head(m.features(x)).
"""
from __future__ import annotations

import logging
import operator
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from torch.testing import assert_close

import ssl_models
from ssl_fixtures import (AGF_FUNCTIONS, AGF_MODULES, RotNetAlexNet, ScanClusteringModel, ScanResNet18, SelaAlexNet,
                          SelaResNetV2, images, legacy_state, prefixed, random_model, save, small_rotnet,
                          small_scan_cifar, write_scan_imagenet)

EXACT = dict(atol=1e-12, rtol=0.0)


def assert_traceable(m: ssl_models.SSLModel, x: torch.Tensor) -> None:
    """torch.fx traces m into AGF-supported nodes only, ending in the selected head, with equal output."""
    gm = torch.fx.symbolic_trace(m)
    nodes = list(gm.graph.nodes)
    modules = dict(gm.named_modules())
    for node in nodes:
        assert node.op in ("placeholder", "call_module", "call_function", "output"), node.format_node()
        if node.op == "call_module":
            assert isinstance(modules[node.target], AGF_MODULES), node.format_node()
        if node.op == "call_function":
            assert node.target in AGF_FUNCTIONS, node.format_node()
    head_nodes = [n for n in nodes if n.op == "call_module" and n.target.startswith("heads.")]
    assert [n.target for n in head_nodes] == [f"heads.{m.head_index}"]
    assert nodes[-1].args[0] is head_nodes[0]  # the head's output is the model output
    with torch.no_grad():
        assert torch.equal(gm(x), m(x))


def assert_equivalent(m: ssl_models.SSLModel, x: torch.Tensor, ref_logits: torch.Tensor,
                      ref_features: torch.Tensor) -> None:
    """Loaded model == reference (float64), forward == head(features), traceable."""
    m.double()
    with torch.no_grad():
        features, logits = m.features(x), m(x)
        assert_close(features, ref_features, **EXACT)
        assert_close(logits, ref_logits, **EXACT)
        assert torch.equal(logits, m.head(features))
    assert isinstance(m.head, nn.Linear) and m.head is m.heads[m.head_index]
    assert logits.shape == (x.shape[0], m.info["K"])
    assert not m.training
    assert_traceable(m, x)


# ---------------------------------------------------------------------------------------------- SCAN


@pytest.fixture(scope="module")
def scan_r50(tmp_path_factory):
    """Full-size SCAN ResNet-50 with 10 heads, in the {'model','head'}, int-head, resume and self-label layouts."""
    folder = tmp_path_factory.mktemp("scan_r50")
    ref = write_scan_imagenet(folder / "model.pth.tar", nheads=10, clusters=5, head=np.int64(3))
    save({"model": ref.state_dict(), "head": 7}, folder / "int_head.pth.tar")
    write_resume = {"optimizer": torch.optim.SGD(ref.cluster_head.parameters(), lr=0.1, momentum=0.9).state_dict(),
                    "model": prefixed(ref.state_dict(), "module."), "epoch": 12, "best_loss": np.float64(-3.5),
                    "best_loss_head": np.int64(2)}
    save(write_resume, folder / "checkpoint.pth.tar")
    selflabel = OrderedDict((k, v) for k, v in ref.state_dict().items() if not k.startswith("cluster_head."))
    selflabel["cluster_head.0.weight"] = ref.cluster_head[8].weight.detach().clone()
    selflabel["cluster_head.0.bias"] = ref.cluster_head[8].bias.detach().clone()
    save(selflabel, folder / "selflabel.pth.tar")
    ref.double()
    x = images(32)
    with torch.no_grad():
        outputs = ref(x)
        features = ref.backbone(x)
    return folder, ref, x, outputs, features


def test_scan_model_file_with_numpy_head_selects_stored_head(scan_r50, caplog):
    folder, ref, x, outputs, features = scan_r50
    with caplog.at_level(logging.INFO, logger="ssl_models"):
        m = ssl_models.load(folder / "model.pth.tar")
    assert m.info["kind"] == "scan" and m.info["variant"] == "resnet50"
    assert (m.info["head"], m.info["num_heads"], m.info["K"]) == (3, 10, 5)
    assert m.info["head_source"] == "stored 'head'"
    assert m.info["depths"] == (3, 4, 6, 3) and m.info["feature_dim"] == 2048
    assert m.info["layout"] == "{'model', 'head'}" and m.info["source"].endswith("model.pth.tar")
    assert "head 3 of 10" in caplog.text
    assert m.layers == ("layer1", "layer2", "layer3", "layer4")
    assert m.preprocess.input_size == 224 and m.preprocess.mean == (0.485, 0.456, 0.406)
    assert_equivalent(m, x, outputs[3], features)
    # another head through select_head, and the other heads are kept
    m.select_head(9)
    with torch.no_grad():
        assert_close(m(x), outputs[9], **EXACT)
    assert m.info["head"] == 9
    # truncation at layer2 equals torchvision's stem + layer1 + layer2, sharing weights
    bb = ref.backbone
    with torch.no_grad():
        expected = bb.layer2(bb.layer1(bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))))
        part = m.truncate("layer2")
        assert_close(part(x), expected, **EXACT)
    assert part.layer2[0].conv1.weight is m.backbone.layer2[0].conv1.weight


def test_scan_model_file_with_int_head_and_head_override(scan_r50):
    folder, _, x, outputs, features = scan_r50
    m = ssl_models.load(folder / "int_head.pth.tar", kind="scan")
    assert m.info["head"] == 7
    assert_equivalent(m, x, outputs[7], features)
    m = ssl_models.load(folder / "int_head.pth.tar", head=1)
    assert m.info["head"] == 1 and m.info["head_source"] == "head= argument"
    m.double()
    with torch.no_grad():
        assert_close(m(x), outputs[1], **EXACT)


def test_scan_resume_file_with_module_prefix_uses_best_loss_head(scan_r50):
    folder, _, x, outputs, features = scan_r50
    m = ssl_models.load(folder / "checkpoint.pth.tar")
    assert m.info["head"] == 2 and m.info["head_source"] == "stored 'best_loss_head'"
    assert "'optimizer'" in m.info["layout"]
    assert_equivalent(m, x, outputs[2], features)


def test_scan_selflabel_plain_state_dict_has_one_head(scan_r50):
    folder, _, x, outputs, features = scan_r50
    m = ssl_models.load(folder / "selflabel.pth.tar")
    assert (m.info["head"], m.info["num_heads"], m.info["layout"]) == (0, 1, "plain state_dict")
    assert_equivalent(m, x, outputs[8], features)


@pytest.fixture(scope="module")
def scan_cifar(tmp_path_factory):
    """SCAN CIFAR ResNet-18 layout (shortcut naming; narrow widths), 20 clusters, one head."""
    folder = tmp_path_factory.mktemp("scan_cifar")
    widths = (16, 32, 64, 128)
    ref = random_model(lambda: ScanClusteringModel(ScanResNet18(widths=widths), 128, 20, 1), seed=11)
    save({"model": ref.state_dict(), "head": np.int64(0)}, folder / "model.pth.tar")
    assert any(".shortcut.0.weight" in key for key in ref.state_dict())
    return folder / "model.pth.tar", ref.double()


def test_scan_cifar_resnet18_with_shortcut_naming(scan_cifar):
    path, ref = scan_cifar
    m = ssl_models.load(path)
    assert m.info["variant"] == "resnet18-cifar" and m.info["K"] == 20
    assert m.preprocess.input_size == 32 and m.preprocess.mean == (0.5071, 0.4867, 0.4408)  # CIFAR-100-20
    x = images(32)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x)[0], ref.backbone(x))
        stages = ref.backbone.stages(x)
        for name, expected in zip(m.layers, stages):
            assert_close(m.truncate(name)(x), expected, **EXACT)


def test_scan_stl_variant_adds_maxpool_and_fixed_pool(scan_cifar):
    path, ref = scan_cifar
    stl = ScanResNet18(stl=True, widths=(16, 32, 64, 128)).double().eval()
    stl.load_state_dict(ref.backbone.state_dict())
    m = ssl_models.load(path, variant="stl")
    assert m.info["variant"] == "resnet18-stl" and m.preprocess.input_size == 96
    x = images(96)
    with torch.no_grad():
        assert_equivalent(m, x, ref.cluster_head[0](stl(x)), stl(x))
    with pytest.raises(ValueError, match="expects 96×96"):
        m(images(64))


def test_scan_numpy1_pickled_head_loads(tmp_path):
    """Files from numpy 1.x name the scalar constructor numpy.core.multiarray.scalar (legacy serialization)."""
    ref = small_scan_cifar(nheads=3)
    path = save({"model": ref.state_dict(), "head": np.int64(2)}, tmp_path / "np1.pth", legacy=True)
    data = path.read_bytes()
    assert data.count(b"numpy._core.multiarray") == 1
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    m = ssl_models.load(path)
    assert m.info["head"] == 2 and m.info["K"] == 4
    x = images(32)
    ref.double()
    with torch.no_grad():
        assert_equivalent(m, x, ref(x)[2], ref.backbone(x))


# ---------------------------------------------------------------------------------------------- SeLa


def _alexnet_relu_outputs(ref: SelaAlexNet, x: torch.Tensor) -> list[torch.Tensor]:
    """Post-ReLU outputs of conv1..conv5 in SeLa's `features` (ReLUs at indices 2, 6, 10, 13, 16)."""
    return [ref.features[: i + 1](x) for i in (2, 6, 10, 13, 16)]


def test_sela_alexnet_full_size_plain_dict_with_rotation_head(tmp_path):
    heads = [6] * 10 + [4]  # ten clustering heads plus the 4-way head of a '-wRot' model
    ref = random_model(lambda: SelaAlexNet((96, 256, 384, 384, 256), 64, heads, 224), seed=21)
    assert ref.flatten == 9216
    save(ref.state_dict(), tmp_path / "alexnet-10x3k-wRot.pth")
    m = ssl_models.load(tmp_path / "alexnet-10x3k-wRot.pth")
    assert m.info["variant"] == "alexnet-big" and m.info["flatten"] == 9216
    assert m.info["heads_K"] == heads and m.info["head"] == 0 and m.info["num_heads"] == 11
    assert any("RotNet head" in note for note in m.info["notes"])
    assert m.preprocess.input_size == 224 and m.layers == ("conv1", "conv2", "conv3", "conv4", "conv5")
    ref.double()
    x = images(224, batch=1)
    with torch.no_grad():
        outputs = ref(x)
        assert_equivalent(m, x, outputs[0], ref.penultimate(x))
        for name, expected in zip(m.layers, _alexnet_relu_outputs(ref, x)):
            assert_close(m.truncate(name)(x), expected, **EXACT)
        assert_close(m.select_head(10)(x), outputs[10], **EXACT)
    assert m.info["K"] == 4
    assert_traceable(m, x)


def test_sela_alexnet_training_checkpoint_with_dataparallel_features(tmp_path):
    ref = random_model(lambda: SelaAlexNet((32, 64, 96, 64, 64), 256, [8, 8, 8], 128), seed=22)
    state = OrderedDict((k.replace("features.", "features.module.", 1), v) for k, v in ref.state_dict().items())
    assert "features.module.0.weight" in state
    labels = torch.randint(0, 8, (3, 50))
    save({"epoch": 4, "arch": "alexnet", "state_dict": state,
          "optimizer": torch.optim.SGD(ref.parameters(), lr=0.05).state_dict(), "L": labels},
         tmp_path / "checkpoint003.pth")
    m = ssl_models.load(tmp_path / "checkpoint003.pth", kind="sela", head=2)
    assert m.info["variant"] == "alexnet" and m.info["widths"] == (32, 64, 96, 64, 64)
    assert m.preprocess.input_size == 128 and m.fixed_input_size == 128 and m.info["flatten"] == 576
    assert any("'L' [3, 50]" in note for note in m.info["notes"])
    ref.double()
    x = images(128)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x)[2], ref.penultimate(x))


@pytest.fixture(scope="module")
def resnetv2_full(tmp_path_factory):
    """Full-size SeLa resnetv2 (pre-activation ResNet-50) with 3 heads."""
    folder = tmp_path_factory.mktemp("resnetv2")
    ref = random_model(lambda: SelaResNetV2([5, 5, 7]), seed=31)
    save(ref.state_dict(), folder / "resnet-10x3k.pth")
    return folder / "resnet-10x3k.pth", ref.double()


def test_sela_resnetv2_multi_head(resnetv2_full):
    path, ref = resnetv2_full
    m = ssl_models.load(path)
    assert m.info["variant"] == "resnetv2-50" and m.info["heads_K"] == [5, 5, 7] and m.info["feature_dim"] == 2048
    x = images(32)
    with torch.no_grad():
        outputs = ref(x)
        assert_equivalent(m, x, outputs[0], ref.penultimate(x))
        assert_close(m.truncate("layer4")(x), ref.features[:6](x), **EXACT)
        assert_close(m.truncate("layer1")(x), ref.features[:3](x), **EXACT)
    m = ssl_models.load(path, head=2).double()
    with torch.no_grad():
        assert_close(m(x), outputs[2], **EXACT)


def test_sela_resnetv2_single_head_training_checkpoint(tmp_path):
    ref = random_model(lambda: SelaResNetV2([9], depths=(1, 2, 1, 1), base=8), seed=32)
    assert "top_layer.0.weight" in ref.state_dict()
    state = OrderedDict((k.replace("features.", "features.module.", 1), v) for k, v in ref.state_dict().items())
    save({"epoch": 2, "arch": "resnetv2", "state_dict": state, "optimizer": {"state": {}, "param_groups": []},
          "L": torch.zeros(1, 10, dtype=torch.long)}, tmp_path / "lowest_001.pth")
    m = ssl_models.load(tmp_path / "lowest_001.pth")
    assert m.info["kind"] == "sela" and m.info["num_heads"] == 1 and m.info["K"] == 9
    assert m.info["depths"] == (1, 2, 1, 1) and m.info["feature_dim"] == 256
    ref.double()
    x = images(48)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x)[0], ref.penultimate(x))


def _torchvision_features(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def test_sela_pp_file_torchvision_resnet50(tmp_path):
    ref = random_model(lambda: torchvision.models.resnet50(num_classes=30), seed=41)
    save({"state_dict": ref.state_dict(), "labels": torch.randint(0, 30, (100,))}, tmp_path / "resnet50-10x3k_pp.pth")
    m = ssl_models.load(tmp_path / "resnet50-10x3k_pp.pth")
    assert m.info["kind"] == "sela" and m.info["variant"] == "torchvision-resnet50" and m.info["K"] == 30
    ref.double()
    x = images(32)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x), _torchvision_features(ref, x))


def test_sela_pp_file_resnet18_with_L_key(tmp_path):
    ref = random_model(lambda: torchvision.models.resnet18(num_classes=12), seed=42)
    save({"state_dict": ref.state_dict(), "L": torch.randint(0, 12, (1, 40))}, tmp_path / "resnet18-1k_pp.pth")
    m = ssl_models.load(tmp_path / "resnet18-1k_pp.pth")
    assert m.info["variant"] == "torchvision-resnet18" and m.info["feature_dim"] == 512
    ref.double()
    x = images(48)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x), _torchvision_features(ref, x))


class _SelaResNetV1(nn.Module):
    """self-label models/resnetv1.py (narrow BasicBlock version): `features` = conv1, bn1, relu, maxpool,
    layer1..4, AvgPool2d(7); top_layerN heads."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        super().__init__()
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != w:
                down = nn.Sequential(nn.Conv2d(cin, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            stages.append(nn.Sequential(BasicBlock(cin, w, stride, down), BasicBlock(w, w)))
            cin = w
        self.features = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1), *stages, nn.AvgPool2d(7, stride=1))
        self.top_layer0 = nn.Linear(cin, 3)
        self.top_layer1 = nn.Linear(cin, 6)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        return out.view(out.size(0), -1)


def test_sela_resnetv1(tmp_path):
    ref = random_model(_SelaResNetV1, seed=43)
    save(ref.state_dict(), tmp_path / "resnetv1.pth")
    m = ssl_models.load(tmp_path / "resnetv1.pth", head=1)
    assert m.info["variant"] == "resnetv1-18" and m.fixed_input_size == 224
    ref.double()
    x = images(224, batch=1)
    with torch.no_grad():
        z = ref.penultimate(x)
        assert_equivalent(m, x, ref.top_layer1(z), z)


# ---------------------------------------------------------------------------------------------- RotNet


def test_rotnet_full_size_legacy_file_without_num_batches_tracked(tmp_path):
    ref = random_model(RotNetAlexNet, seed=51)
    state = legacy_state(ref.state_dict())
    assert len(state) == 42 and not hasattr(state, "_metadata")
    save({"epoch": 50, "network": state}, tmp_path / "model_net_epoch50", legacy=True)
    del state
    ref.double()
    x = images(224, batch=1)
    with torch.no_grad():  # reference outputs first, so that only one 55M-parameter model is alive at a time
        logits, features = ref(x), ref.upto(x, 8)
        maps = [ref.upto(x, last) for last in (0, 2, 4, 5, 6)]
    del ref
    m = ssl_models.load(tmp_path / "model_net_epoch50")
    assert m.info["kind"] == "rotnet" and m.info["variant"] == "rotnet-alexnet"
    assert m.info["widths"] == (64, 192, 384, 256, 256) and m.info["flatten"] == 9216 and m.info["K"] == 4
    assert m.preprocess.input_size == 224 and m.info["feature_dim"] == 4096
    assert any("num_batches_tracked absent" in note for note in m.info["notes"])
    assert all(int(b.num_batches_tracked) == 0 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    with torch.no_grad():
        assert_equivalent(m, x, logits, features)
        for name, expected in zip(m.layers, maps):
            assert_close(m.truncate(name)(x), expected, **EXACT)


def test_rotnet_small_embedded_shape_infers_128_input(tmp_path):
    ref = small_rotnet(fc=256)
    save({"epoch": 30, "network": ref.state_dict()}, tmp_path / "rotnet.pth")
    m = ssl_models.load(tmp_path / "rotnet.pth", kind="rotnet")
    assert m.info["widths"] == (32, 64, 96, 64, 64) and m.info["flatten"] == 576 and m.preprocess.input_size == 128
    ref.double()
    x = images(128)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x), ref.upto(x, 8))
        assert m.truncate("conv5")(x).shape == (2, 64, 7, 7)


# ---------------------------------------------------------------------------------------------- helpers


def test_embedded_loads_asset_through_load(tmp_path, monkeypatch):
    import ssl_models.embedded_assets as embedded_module

    ref = small_rotnet()
    ssl_models.save_checkpoint({"epoch": 30, "network": ref.state_dict()}, tmp_path / "rotnet.pth")
    monkeypatch.setattr(embedded_module, "ASSETS_DIR", tmp_path)
    m = ssl_models.embedded("rotnet")
    assert m.info["kind"] == "rotnet" and m.info["source"] == str(tmp_path / "rotnet.pth")
    ref.double()
    x = images(128)
    with torch.no_grad():
        assert_equivalent(m, x, ref(x), ref.upto(x, 8))


def test_save_checkpoint_round_trip_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pth"
    path.write_bytes(b"old")
    obj = {"epoch": 3, "network": OrderedDict(w=torch.arange(6.0).view(2, 3)), "head": np.int64(1)}
    assert ssl_models.save_checkpoint(obj, path) == path
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # temp file replaced the target
    from ssl_models.serialization import read_checkpoint

    back = read_checkpoint(path)
    assert back["epoch"] == 3 and int(back["head"]) == 1
    assert torch.equal(back["network"]["w"], torch.arange(6.0).view(2, 3))


def test_preprocess_normalises_hand_computed_values():
    p = ssl_models.Preprocess((0.5, 0.25, 0.0), (0.5, 0.25, 2.0), 8)
    x = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    y = p(x)
    assert y.dtype == torch.float64 and y.shape == (2, 3, 2, 2)
    assert y[0, :, 0, 0].tolist() == [-1.0, 1.0, 0.5]  # (0-.5)/.5, (.5-.25)/.25, (1-0)/2


def test_loaded_model_preprocess_matches_imagenet_statistics(tmp_path):
    ref = small_rotnet()
    save({"epoch": 1, "network": ref.state_dict()}, tmp_path / "r.pth")
    m = ssl_models.load(tmp_path / "r.pth")
    x = torch.full((1, 3, 4, 4), 0.5)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert_close(m.preprocess(x)[0, :, 0, 0], expected)


def test_forward_does_not_run_other_heads(scan_r50):
    folder, *_ = scan_r50
    m = ssl_models.load(folder / "model.pth.tar")
    called = []
    for i, head in enumerate(m.heads):
        head.register_forward_hook(lambda mod, args, out, i=i: called.append(i))
    with torch.no_grad():
        m(torch.zeros(1, 3, 32, 32))
    assert called == [3]
    assert operator.index(m.head_index) == 3
