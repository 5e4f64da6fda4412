"""DINO ViT checkpoints through ssl_models.load: layouts, feature parity with the upstream-class model, bad files."""
from __future__ import annotations

import pytest
import torch

import ssl_models
import sslx
from sslx.ssl import explain as ssl_explain
from sslx.neighbors import FeatureIndex
from ssl_models.errors import CheckpointError
from tests.dino_fixtures import save_backbone_only, save_full, tiny_dino


@pytest.fixture(scope="module")
def nets():
    return tiny_dino(seed=0).eval(), tiny_dino(seed=1).eval()  # student, teacher


def _x(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def test_backbone_only_layout(tmp_path, nets) -> None:
    teacher = nets[1]
    model = ssl_models.load(save_backbone_only(teacher, tmp_path / "dino_deitsmall16_pretrain.pth")).double()
    assert model.info["kind"] == "dino_vit" and model.info["config"]["num_heads"] == 2
    assert model.info["config"]["img_size"] == 32 and model.info["config"]["depth"] == 2
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model.features(x), teacher.backbone(x), atol=1e-6, rtol=0)
        assert torch.allclose(model(x), teacher.backbone(x), atol=1e-6, rtol=0)  # identity head on CLS
    assert "identity" in model.info["head_source"]


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_full_checkpoint_teacher_and_student(tmp_path, nets, network) -> None:
    student, teacher = nets
    path = save_full(student, teacher, tmp_path / "checkpoint.pth")
    model = ssl_models.load(path, variant=None if network == "teacher" else network).double()
    ref = teacher if network == "teacher" else student
    x = _x()
    with torch.no_grad():
        expected = ref(x)  # DINOHead logits: last_layer(normalize(mlp(backbone(x))))
        assert torch.allclose(model(x), expected, atol=1e-6, rtol=0)
        bottleneck = torch.nn.functional.normalize(ref.head.mlp(ref.backbone(x)), dim=-1)
        assert torch.allclose(model.features(x), bottleneck, atol=1e-6, rtol=0)
    assert model.info["K"] == 10 and model.info["notes"][0] == f"DINO full checkpoint: the {network}'s weights are used"


def test_algorithm2_runs_on_dino_with_transformer_methods(tmp_path, nets) -> None:
    model = ssl_models.load(save_full(*nets, tmp_path / "checkpoint.pth")).double()
    refs = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    with torch.no_grad():
        index = FeatureIndex.from_features(model.features(refs).float())
    x = _x(2)
    for method in ("transformer_attribution", "generic_attention"):
        out = ssl_explain(model, x, index, mode="delta", method=method)
        assert out.heatmaps.shape == (2, 1, 32, 32) and torch.isfinite(out.heatmaps).all()
        direct = sslx.explain(model, x, out.ssl_class, method=method)
        assert torch.allclose(out.heatmaps, direct)
        assert bool((out.heatmaps.flatten(1).abs().amax(1) > 0).all())


def test_bad_files(tmp_path, nets) -> None:
    with pytest.raises(FileNotFoundError):
        ssl_models.load(tmp_path / "missing.pth")
    state = nets[1].backbone.state_dict()
    broken = dict(state)
    del broken["blocks.1.mlp.fc2.weight"]
    torch.save(broken, tmp_path / "missing_key.pth")
    with pytest.raises(CheckpointError, match="missing keys.*blocks.1.mlp.fc2.weight"):
        ssl_models.load(tmp_path / "missing_key.pth")
    odd = dict(state)
    odd["cls_token"] = torch.zeros(1, 1, 100)
    torch.save(odd, tmp_path / "odd_width.pth")
    with pytest.raises(CheckpointError, match="multiple of DINO's 64-d heads"):
        ssl_models.load(tmp_path / "odd_width.pth")
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "missing_key.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ssl_models.load(tmp_path / "trunc.pth")
    torch.save(nets[1], tmp_path / "whole_model.pth")
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        ssl_models.load(tmp_path / "whole_model.pth")
    with pytest.raises(CheckpointError, match="no 'teacher'/'student'"):
        ssl_models.load(tmp_path / "missing_key.pth", variant="student")
    with pytest.raises(CheckpointError, match="contradicts"):
        ssl_models.load(save_backbone_only(nets[1], tmp_path / "b.pth"), kind="rotnet")


@pytest.mark.parametrize("token", ["cls", "mean"])
def test_probe_sees_dino_blocks_as_layers(tmp_path, nets, token) -> None:
    from sslx.probe.run import load_model

    teacher = nets[1]
    layers = load_model(str(save_full(*nets, tmp_path / "checkpoint.pth")), vit_token=token)
    assert layers.layers == ("block1", "block2") and layers.preprocess.input_size == 32
    trunk = layers.truncate("block1").double()
    x = _x(2)
    with torch.no_grad():
        t = teacher.backbone.blocks[0](teacher.backbone.prepare_tokens(x))
        expected = t[:, 0] if token == "cls" else t[:, 1:].mean(dim=1)
        assert torch.allclose(trunk(x)[:, :, 0, 0], expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown layer 'block3'"):
        layers.truncate("block3")


def test_parametrized_weight_norm_keys(tmp_path) -> None:
    """A head saved with torch.nn.utils.parametrizations.weight_norm (original0 = g, original1 = v) loads too."""
    net = tiny_dino(seed=2, parametrized=True).eval()
    torch.save(net.state_dict(), tmp_path / "teacher_only.pth")
    model = ssl_models.load(tmp_path / "teacher_only.pth").double()
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-6, rtol=0)


def _dino_training_module():
    """experiments/train_dino_vit.py (the tiny DINO trainer) imported by path."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location("train_dino_vit", folder / "train_dino_vit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sslx_dino_checkpoint(path, num_heads=4, token_pooling="mean", stem_channels=()):
    """A full checkpoint in train_dino_vit's layout (64-d mean-pooled tiny ViT, 4 heads) and its teacher."""
    import argparse

    from sslx.models.vit import VisionTransformer

    mod = _dino_training_module()
    torch.manual_seed(3)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, pool="mean",
                            stem_channels=stem_channels)
    teacher = mod.DINONet(vit, mod.DINOHead(64, 12, 32, 16)).double().eval()
    with torch.no_grad():
        teacher.head.last_layer.parametrizations.weight.original0.mul_(1.5)  # g ≠ 1 checks g·v/‖v‖
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = argparse.Namespace(arch="sslx_tiny_vit", num_heads=num_heads, token_pooling=token_pooling)
    ssl_models.save_checkpoint({"teacher": state, "student": {f"module.{k}": v for k, v in state.items()},
                                "epoch": 1, "args": args, "dino_loss": {"center": torch.zeros(1, 12)}}, path)
    return teacher


def test_stored_args_select_heads_and_mean_pooling(tmp_path) -> None:
    """train_dino_vit's checkpoints name num_heads and token_pooling in `args`; the loaded teacher matches to 1e-6."""
    teacher = _sslx_dino_checkpoint(tmp_path / "tiny.pth")
    model = ssl_models.load(tmp_path / "tiny.pth").double()
    assert model.info["config"]["num_heads"] == 4 and model.backbone.vit.token_pooling == "mean"
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-6, rtol=0)
        assert torch.allclose(model.backbone.vit(x), teacher.features(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("heads, pool, message", [
    (3, "mean", r"args.num_heads=3 does not divide the embedding width 64"),
    (0, "mean", r"args.num_heads=0 does not divide"),
    (4, "max", r"args.token_pooling='max', expected 'cls' or 'mean'"),
])
def test_stored_args_that_contradict_the_weights_are_refused(tmp_path, heads, pool, message) -> None:
    _sslx_dino_checkpoint(tmp_path / "bad.pth", num_heads=heads, token_pooling=pool)
    with pytest.raises(CheckpointError, match=message):
        ssl_models.load(tmp_path / "bad.pth")


def test_convolutional_stem_is_read_from_the_keys(tmp_path) -> None:
    """A tiny ViT with a 2-conv stem (8-px patches = two 3×3/2 convs and a 2×2 projection) loads to 1e-6."""
    teacher = _sslx_dino_checkpoint(tmp_path / "stem.pth", stem_channels=(8, 16))
    model = ssl_models.load(tmp_path / "stem.pth").double()
    config = model.info["config"]
    assert config["stem_channels"] == [8, 16] and config["patch_size"] == 8 and config["img_size"] == 32
    assert model.backbone.vit.patch_embed.proj.kernel_size == (2, 2)
    x = _x()
    with torch.no_grad():
        assert torch.allclose(model(x), teacher(x), atol=1e-6, rtol=0)
    maps = sslx.explain(model, x, method="transformer_attribution")
    assert maps.shape == (3, 1, 32, 32) and bool(torch.isfinite(maps).all())


def test_broken_stem_is_refused(tmp_path) -> None:
    _sslx_dino_checkpoint(tmp_path / "stem.pth", stem_channels=(8, 16))
    raw = torch.load(tmp_path / "stem.pth", weights_only=False)  # our own file: its args are a Namespace
    for network, prefix in (("teacher", ""), ("student", "module.")):
        for suffix in ("weight", "bias"):
            del raw[network][f"{prefix}backbone.patch_embed.stem.0.{suffix}"]
    torch.save(raw, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"patch_embed.stem holds convolutions at \[2\], expected 0, 2"):
        ssl_models.load(tmp_path / "broken.pth")


def test_patch_embed_stem_must_divide_the_patch() -> None:
    from sslx.models.vit import PatchEmbed

    assert PatchEmbed(16, 3, 32, (4, 8)).proj.kernel_size == (4, 4)
    with pytest.raises(ValueError, match="patch_size 12 is not 2\\^3"):
        PatchEmbed(12, 3, 32, (4, 8, 8))
