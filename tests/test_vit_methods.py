"""The three ViT explanations against the literal reference (tests/vit_reference.py) in float64."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import sslx
from sslx.attribution.transformer import AttentionRollout, GenericAttention, TransformerAttribution, lrp_relevances
from sslx.attribution.vit_walk import attention_gradients, record_vit
from sslx.models.vit import VisionTransformer
from tests.vit_reference import params_timm, params_torchvision, reference

METHODS = {"transformer_attribution": TransformerAttribution, "attention_rollout": AttentionRollout,
           "generic_attention": GenericAttention}


def _tiny_timm(pool: str = "cls") -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=16, patch_size=8, num_classes=4, embed_dim=12, depth=3, num_heads=3,
                              pool=pool).double()
    with torch.no_grad():  # larger weights than the ViT init so that every rule sees mixed signs
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


def _tiny_torchvision() -> torchvision.models.VisionTransformer:
    torch.manual_seed(1)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16, num_classes=3).double()
    with torch.no_grad():  # torchvision zero-initialises the head, which would make every gradient zero
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model.eval()


CASES = {"timm": (_tiny_timm, params_timm), "torchvision": (_tiny_torchvision, params_torchvision),
         "mean_pool": (lambda: _tiny_timm("mean"), params_timm)}


@pytest.mark.parametrize("style", sorted(CASES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_batched_matches_literal_reference(style: str, method: str) -> None:
    build, params = CASES[style]
    model = build()
    torch.manual_seed(2)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    joint, run = METHODS[method](model).token_relevance(x, target)
    p = params(model)
    for b in range(3):
        ref = reference(p, x[b], int(target[b]))
        assert torch.allclose(run.output[b].detach(), ref["output"], atol=1e-10)
        assert torch.allclose(joint[b], ref[method], atol=1e-6, rtol=0), (b, (joint[b] - ref[method]).abs().max())
    heat = sslx.explain(model, x, target, method=method)
    assert heat.shape == (3, 1, 16, 16) and heat.dtype == torch.float64
    grid = joint[:, 0, 1:].reshape(3, 1, 2, 2)
    assert torch.allclose(heat, F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False))


def test_lrp_cams_and_gradients_match_reference_per_head() -> None:
    model, x, target = _tiny_timm(), torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([3, 1])
    run = record_vit(model, x)
    attention_gradients(run, target)
    cams, tokens = lrp_relevances(run, target)
    for b in range(2):
        ref = reference(params_timm(model), x[b], int(target[b]))
        for blk in range(3):
            for h in range(3):
                assert torch.allclose(cams[blk][b, h], ref["cams"][blk][h], atol=1e-9)
                assert torch.allclose(run.blocks[blk].grad[b, h], ref["grads"][blk][h], atol=1e-9)
        assert torch.allclose(tokens[b], ref["input_relevance"], atol=1e-9)


def test_lrp_conserves_the_target_relevance() -> None:
    """α1β0 Linear, rescaled additions and halved matmuls all conserve Σ R: the tokens get exactly 1."""
    model = _tiny_timm()
    with torch.no_grad():  # conservation needs positive pre-activations: all-positive weights on positive x
        for p in model.parameters():
            p.abs_()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    run = record_vit(model, x)
    _, tokens = lrp_relevances(run, torch.tensor([0, 3]))
    assert torch.allclose(tokens.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64), atol=1e-9)


def test_rollout_rows_stay_stochastic_and_hand_case() -> None:
    model, x = _tiny_timm(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    joint, _ = AttentionRollout(model).token_relevance(x)
    assert torch.allclose(joint.sum(dim=-1), torch.ones(2, 5, dtype=torch.float64), atol=1e-12)
    from sslx.attribution.transformer import rollout_attention
    a = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]], dtype=torch.float64)  # one block, one head
    # 0.5·A + 0.5·I = [[0.75, 0.25], [0, 1]]; two blocks: its square = [[0.5625, 0.4375], [0, 1]]
    expected = torch.tensor([[[0.5625, 0.4375], [0.0, 1.0]]], dtype=torch.float64)
    assert torch.allclose(rollout_attention([a, a]), expected)


def test_generic_attention_hand_case() -> None:
    from sslx.attribution.transformer import rollout_generic
    a = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]], dtype=torch.float64)
    g = torch.tensor([[[[2.0, -1.0], [0.0, 4.0]]]], dtype=torch.float64)
    # Ā = (g⊙a)⁺ = [[1, 0], [0, 3]]; R = I + Ā·I = [[2, 0], [0, 4]]
    assert torch.allclose(rollout_generic([a], [g]), torch.tensor([[[2.0, 0.0], [0.0, 4.0]]], dtype=torch.float64))


def test_model_is_restored_and_batch_independent() -> None:
    model = _tiny_timm().train()
    attn = model.blocks[0].attn
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    before = model(x)
    whole = sslx.explain(model, x, torch.tensor([0, 1, 2]), method="transformer_attribution")
    assert model.training and "forward" not in attn.__dict__
    assert not model.blocks[0]._forward_hooks and not model.blocks[0]._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(x), before)
    one = sslx.explain(model, x[1:2], torch.tensor([1]), method="transformer_attribution")
    assert torch.allclose(whole[1:2], one, atol=1e-12)


def test_float32_follows_input() -> None:
    model = _tiny_timm().float()
    heat = sslx.explain(model, torch.randn(2, 3, 16, 16), None, method="generic_attention")
    assert heat.dtype == torch.float32 and heat.shape == (2, 1, 16, 16)


def test_bad_inputs() -> None:
    model = _tiny_timm()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(TypeError, match="Vision Transformer"):
        sslx.explain(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten()).double(), x,
                     method="attention_rollout")
    with pytest.raises(TypeError, match="float32"):
        sslx.explain(model, x.float(), method="generic_attention")
    with pytest.raises(ValueError, match="out of range"):
        sslx.explain(model, x, 9, method="transformer_attribution")
    with pytest.raises(ValueError, match="4-D"):
        sslx.explain(model, x[0], method="transformer_attribution")
    with pytest.raises(ValueError, match="start_layer"):
        sslx.explain(model, x, method="transformer_attribution", start_layer=7)
    with pytest.raises(ValueError, match="expected 16"):
        sslx.explain(model, torch.randn(1, 3, 24, 24, dtype=torch.float64), method="generic_attention")


@pytest.mark.parametrize("token", ["cls", "mean"])
def test_probe_trunk_after_block_matches_reference(token: str) -> None:
    """A probe on block 2 of 3 (ViTTrunk + pool/BN/Linear head) explained = the reference on a 2-block ViT."""
    from sslx.models.vit_layers import ViTLayers
    from sslx.probe.module import explainable_probe

    model = _tiny_timm()
    trunk = ViTLayers(model, None, token).truncate("block2")
    torch.manual_seed(3)
    probe = explainable_probe(trunk, 12, 1, 5).double()
    with torch.no_grad():
        probe.linear.weight.normal_()
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([4, 0])
    joint, _ = TransformerAttribution(probe).token_relevance(x, target)
    gen, _ = GenericAttention(probe).token_relevance(x, target)
    # the same two blocks as a ViT whose head is the probe's Linear with the (fresh: mean 0, var 1, so identity up
    # to eps) BatchNorm folded in: the reference is a 2-block copy with an identity final norm
    short = _tiny_timm(token)
    short.blocks = torch.nn.ModuleList(list(short.blocks)[:2])
    bn = probe.norm
    scale = 1 / torch.sqrt(bn.running_var + bn.eps)
    with torch.no_grad():
        short.norm.weight.fill_(1.0); short.norm.bias.zero_()
        short.head = torch.nn.Linear(12, 5).double()
        short.head.weight.copy_(probe.linear.weight * scale)
        short.head.bias.copy_(probe.linear.bias - (probe.linear.weight * scale) @ bn.running_mean)
    p = params_timm(short)
    p["norm"] = (None, None, 0.0)
    for b in range(2):
        ref = _reference_without_norm(p, x[b], int(target[b]))
        assert torch.allclose(gen[b], ref["generic_attention"], atol=1e-6, rtol=0)
        assert torch.allclose(joint[b], ref["transformer_attribution"], atol=1e-6, rtol=0)


def _reference_without_norm(p: dict, image: torch.Tensor, target: int) -> dict:
    import tests.vit_reference as vr

    original = vr.F.layer_norm
    vr.F.layer_norm = lambda t, shape, w=None, b=None, eps=0.0: t if w is None else original(t, shape, w, b, eps)
    try:
        return reference(p, image, target)
    finally:
        vr.F.layer_norm = original


def test_unsupported_block_variant_is_refused() -> None:
    """A block with layer scale on its attention branch is not x + attn + mlp: refused, not explained wrongly."""
    model = _tiny_timm()
    block = model.blocks[1]
    attn = block.attn

    class Scaled(torch.nn.Module):
        def forward(self, x):
            x = x + 0.5 * attn(block.norm1(x))
            return x + block.mlp(block.norm2(x))

    block.forward = Scaled().forward
    with pytest.raises(TypeError, match="block 1 is not the pre-norm residual block"):
        sslx.explain(model, torch.randn(1, 3, 16, 16, dtype=torch.float64), method="generic_attention")


def test_timm_vision_transformer_matches_reference() -> None:
    """timm's own VisionTransformer (fused attention by default) explained = the literal reference."""
    timm = pytest.importorskip("timm")  # in the dev extra; CI installs it
    torch.manual_seed(4)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=16, patch_size=8, embed_dim=12, depth=2, num_heads=3, num_classes=4, mlp_ratio=2.0).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x, target = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 3])
    before = model(x)
    for name, method in METHODS.items():
        joint, _ = method(model).token_relevance(x, target)
        for b in range(2):
            ref = reference(params_timm(model), x[b], int(target[b]))
            assert torch.allclose(joint[b], ref[name], atol=1e-6, rtol=0), name
    assert torch.equal(model(x), before) and "forward" not in model.blocks[0].attn.__dict__
