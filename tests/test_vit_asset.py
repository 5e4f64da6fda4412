"""The embedded supervised tiny ViT: file layout, reload, the ViT explanations on it, probe layers."""
from __future__ import annotations

import torch

import sslx
from sslx.assets import asset_path, load_embedded, read_supervised
from sslx.models.vit import VisionTransformer


def test_vit_asset_layout_and_explanations() -> None:
    path = asset_path("vit")
    assert path.is_file() and path.stat().st_size <= 5e6
    obj = read_supervised(path)
    assert obj["arch"] == "vit" and len(obj["classes"]) == 12 and obj["config"]["pool"] == "mean"
    model = load_embedded("vit")
    assert isinstance(model, VisionTransformer) and not model.training
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    for method in ("transformer_attribution", "attention_rollout", "generic_attention"):
        maps = sslx.explain(model, x, method=method)
        assert maps.shape == (2, 1, 128, 128) and torch.isfinite(maps).all()
        assert bool((maps.flatten(1).amax(1) > 0).all())


def test_embedded_vit_as_probe_layers() -> None:
    from sslx.probe.run import load_model, resolve_layers

    layers = load_model("vit", vit_token="mean")
    assert resolve_layers(layers, "4") == ["block4"] and layers.preprocess.input_size == 128
    vit = load_embedded("vit")
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = vit.tokens(x, 4)[:, 1:].mean(dim=1)
        assert torch.allclose(layers.truncate("block4")(x)[:, :, 0, 0], expected, atol=1e-6)


def test_vit_asset_classifies_held_out_scenes() -> None:
    """The committed run scored 90.5 % on 1200 test scenes (92.3 % on the first 300); chance is 8.3 %."""
    from embedded_eval import scene_tensors

    st = scene_tensors()
    scenes = st.load_split("test", 300, "single")
    model = load_embedded("vit")
    with torch.no_grad():
        accuracy = float((model(st.to_input(scenes.images)).argmax(1) == scenes.labels).float().mean())
    assert accuracy >= 0.85, accuracy
