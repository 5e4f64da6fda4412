"""AGF engine: batching, architectures, ablation switches, hygiene and bad input."""
import pytest
import torch
import torch.nn as nn
import torchvision

from sslx import AGF, explain
from sslx.explain_api import METHODS
from sslx.models.vit import VisionTransformer
from sslx.attribution.agf_conv import factorization
from sslx.attribution.graph import ModelGraph, UnsupportedOperationError
from sslx.attribution.propagation import vjp
from sslx.attribution.numerics import delta_shift, safe_divide


def _model(name: str, num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes).eval().double()


def _x(b: int = 3, size: int = 64) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# -- numerics on hand-computed cases -----------------------------------------------------------
def test_safe_divide_matches_reference_guard():
    a = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    b = torch.tensor([2.0, -2.0, 0.0, -1e-9], dtype=torch.float64)
    out = safe_divide(a, b)
    assert out[0] == 1.0 / (2.0 + 1e-9) and out[1] == 1.0 / (-2.0 + 1e-9)
    assert out[2] == 0.0
    assert out[3] == 2.0 / 1e-9  # b + 1e-9 == 0 -> denominator becomes 1e-9


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_safe_divide_is_safe_divide_bit_for_bit(dtype):
    """safe_divide_ (overwrites b) equals safe_divide on the guard's cases: b = 0 and b + 1e-9 = 0."""
    from sslx.attribution.numerics import safe_divide_

    a = torch.tensor([1.0, 1.0, 1.0, 2.0, -3.0, 0.0], dtype=dtype)
    b = torch.tensor([2.0, -2.0, 0.0, -1e-9, 1e-30, 0.0], dtype=dtype)
    expected = safe_divide(a, b)
    got = safe_divide_(a, b.clone())
    assert torch.equal(got, expected)
    assert got[2] == 0 and got[3] == torch.tensor(2.0, dtype=dtype) / torch.tensor(1e-9, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 5, 7, generator=gen, dtype=dtype), torch.randn(2, 5, 7, generator=gen, dtype=dtype)
    b[0, 1] = 0
    assert torch.equal(safe_divide_(a, b.clone()), safe_divide(a, b))


def test_divide_by_positive_part_is_safe_divide_for_relevance_behind_a_relu():
    from sslx.attribution.numerics import divide_by_positive_part, safe_divide

    b = torch.tensor([2.0, 1e-12, 0.0, -1e-9, -3.0, 5e-10], dtype=torch.float64)
    a = torch.tensor([3.0, -7.0, 0.0, 0.0, 0.0, 4.0], dtype=torch.float64)  # 0 wherever b <= 0
    got = divide_by_positive_part(a, b)
    assert torch.equal(got, safe_divide(a, b))  # bit for bit, the guard's cases (b = 0, b = -1e-9) included
    assert got[0] == 3.0 / (2.0 + 1e-9) and got[3] == 0
    # relevance where b < 0 would be divided by 1e-9, not by b: the rule is only for adds read by a ReLU alone
    assert not torch.equal(divide_by_positive_part(torch.ones(1), -torch.ones(1)), safe_divide(torch.ones(1), -torch.ones(1)))


def test_delta_shift_keeps_total_on_nonzero_support():
    c = torch.tensor([[1.0, 0.0, 3.0, -1.0]], dtype=torch.float64)
    r = torch.tensor([[0.5, 0.0, 1.5, 1.0]], dtype=torch.float64)
    out = delta_shift(c, r)
    # Σr = 3 over 3 nonzero entries of C: shift 1 each.
    assert torch.equal(out, torch.tensor([[0.5, 0.0, 3.5, -1.0]], dtype=torch.float64))
    assert out.sum() == c.sum()


def test_factorization_equals_literal_ridge_regression():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 4, 3, generator=g, dtype=torch.float64)
    phi = torch.randn(2, 1, 4, 3, generator=g, dtype=torch.float64)
    ours = factorization(y, phi)
    for b in range(2):
        h = torch.sigmoid(10 * y[b] / (y[b].max() + 1e-9)).reshape(5, -1)
        pos, neg = (phi[b, 0] > 0).flatten(), (phi[b, 0] < 0).flatten()
        reps = torch.stack([h[:, neg].sum(1) / (neg.sum() + 1e-9), h[:, pos].sum(1) / (pos.sum() + 1e-9)], 1)
        w = torch.linalg.inv(reps.T @ reps + torch.eye(2, dtype=torch.float64)) @ reps.T @ h
        w = w.clamp(min=0)
        assert torch.allclose(ours[b, 0], (w[1] - w[0]).reshape(4, 3), atol=1e-12)


# -- batching ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_batch_with_per_image_targets_equals_one_by_one(name):
    model, x = _model(name), _x(3)
    targets = torch.tensor([2, 7, 2])
    batched = AGF(model).attribute(x, targets)
    single = torch.cat([AGF(model).attribute(x[i:i + 1], targets[i:i + 1]) for i in range(3)])
    assert (batched - single).abs().max() <= 1e-6 * single.abs().max()


def test_int_target_and_top1_default():
    model, x = _model("resnet18"), _x(2)
    top = model(x).argmax(1)
    agf = AGF(model)
    assert torch.equal(agf.attribute(x), agf.attribute(x, top))
    assert torch.equal(agf.attribute(x, 4), agf.attribute(x, torch.tensor([4, 4])))
    assert not torch.allclose(agf.attribute(x, 4), agf.attribute(x, 5))


# -- architectures -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alexnet", "vgg11", "vgg13_bn", "vgg16", "resnet18", "resnet34", "resnet101",
                                  "resnet152"])
def test_torchvision_architectures(name):
    model = _model(name).float()
    size = 32 if name != "alexnet" else 64
    x = _x(2, size).float()
    # random deep nets give huge logits that saturate the Gaussian-softmax: rescale the head to ~±10
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        scale = model(x).abs().max() / 10
        last.weight /= scale
        last.bias /= scale
    heat = AGF(model).attribute(x)
    assert heat.shape == (2, 1, size, size) and heat.dtype == torch.float32
    assert torch.isfinite(heat).all()
    # each map is divided by its signed max of the 3-channel relevance, then summed over RGB
    assert (heat.amax(dim=(1, 2, 3)) > 0).all()


def test_saturated_head_warns_instead_of_silent_zeros():
    model = _model("resnet18")
    model.fc.weight.data *= 1e6
    with pytest.warns(RuntimeWarning, match="saturated"):
        heat = AGF(model).attribute(_x(1))
    assert (heat == 0).all()


def test_conv_roles_follow_the_reference():
    roles = AGF(_model("resnet50")).conv_roles
    assert roles["conv1"] == "first"
    assert roles["layer1.0.conv1"] == "flat" and roles["layer1.0.conv2"] == "full"
    assert roles["layer1.0.conv3"] == "flat" and roles["layer1.0.downsample.0"] == "flat"
    basic = AGF(_model("resnet18")).conv_roles  # BasicBlock: conv1 full, conv2 (feeds the add) flat
    assert basic["layer2.0.conv1"] == "full" and basic["layer2.0.conv2"] == "flat"
    assert basic["layer2.0.downsample.0"] == "flat"
    vgg = AGF(_model("vgg11")).conv_roles
    assert vgg["features.0"] == "first" and all(r == "full" for k, r in vgg.items() if k != "features.0")


def test_role_overrides_and_unknown_names():
    model = _model("resnet18")
    assert AGF(model, full_convs=["layer1.0.conv2"]).conv_roles["layer1.0.conv2"] == "full"
    with pytest.raises(ValueError, match="no Conv2d named"):
        AGF(model, flat_convs=["layer9.conv"])


# -- ablations (Table 5) -----------------------------------------------------------------------
def test_residual_none_equals_all_switches_off():
    model, x = _model("vgg11"), _x(2)
    only_c = AGF(model, residual="none").attribute(x)
    all_off = AGF(model, use_a=False, use_fx=False, use_fgrad=False, use_m=False).attribute(x)
    assert torch.allclose(only_c, all_off, rtol=0, atol=1e-12)


@pytest.mark.parametrize("option", [dict(use_a=False), dict(use_fx=False), dict(use_fgrad=False),
                                    dict(use_m=False), dict(use_gate=False), dict(residual="gradcam")])
def test_each_switch_changes_the_map(option):
    model, x = _model("vgg11"), _x(1)
    assert not torch.allclose(AGF(model).attribute(x), AGF(model, **option).attribute(x))


# -- hygiene -----------------------------------------------------------------------------------
def test_model_left_untouched_even_on_error():
    model = _model("resnet18").float().train()
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    agf = AGF(model)
    heat = agf.attribute(_x(2).float())
    with torch.no_grad():  # callers under no_grad work too
        assert torch.equal(agf.attribute(_x(2).float()), heat)
    with pytest.raises(ValueError):
        agf.attribute(_x(2).float(), torch.tensor([1, 99]))
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_inference_semantics_match_eval_forward():
    model = _model("vgg11_bn")
    x = _x(2)
    agf = AGF(model)
    env = agf.graph.run(x)
    assert torch.allclose(env[agf.graph.head.node], model(x), rtol=0, atol=1e-12)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("x, err, match", [
    (torch.zeros(3, 64, 64, dtype=torch.float64), ValueError, "4-D"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "floating-point"),
    (torch.full((1, 3, 64, 64), float("nan"), dtype=torch.float64), ValueError, "NaN or Inf"),
    (torch.zeros(0, 3, 64, 64, dtype=torch.float64), ValueError, "empty batch"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_images(x, err, match):
    with pytest.raises(err, match=match):
        AGF(_model("resnet18")).attribute(x)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_wrong_channel_count_names_the_expected_count(method):
    gray = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    if method in ("attention_rollout", "generic_attention", "transformer_attribution"):
        model, first = VisionTransformer(img_size=64, patch_size=16, num_classes=3).double().eval(), "patch_embed.proj"
    else:
        model, first = _model("resnet18"), "conv1"
    with pytest.raises(ValueError, match=rf"first layer '{first}' expects 3.*expand\(-1, 3, -1, -1\)"):
        METHODS[method](model).attribute(gray, 0)


@pytest.mark.parametrize("target, err, match", [
    (10, ValueError, "out of range"),
    (-1, ValueError, "out of range"),
    (torch.tensor([1, 2, 3]), ValueError, "3 targets for a batch of 2"),
    (torch.tensor([1.0, 2.0]), TypeError, "integer class ids"),
    ("cat", TypeError, "target must be"),
])
def test_bad_targets(target, err, match):
    with pytest.raises(err, match=match):
        AGF(_model("resnet18")).attribute(_x(2), target)


def test_dtype_mismatch_between_model_and_input():
    with pytest.raises(TypeError, match="model's parameters are torch.float64"):
        AGF(_model("resnet18")).attribute(_x(1).float())


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.sigmoid(self.conv(x)).mean(dim=(2, 3)))


class _NoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).flatten(1)


def test_unsupported_op_is_named_with_its_place():
    with pytest.raises(UnsupportedOperationError, match="sigmoid"):
        AGF(_Sigmoid())


def test_model_without_linear_head_is_refused():
    with pytest.raises(UnsupportedOperationError, match="final nn.Linear"):
        AGF(_NoHead())


def test_bad_options():
    with pytest.raises(ValueError, match="residual must be one of"):
        AGF(_model("resnet18"), residual="lrp")
    with pytest.raises(TypeError, match="use_a must be a bool"):
        AGF(_model("resnet18"), use_a=1)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        AGF(lambda x: x)


def test_explain_entry_point():
    model, x = _model("resnet18"), _x(1)
    assert torch.equal(explain(model, x, 3), AGF(model).attribute(x, 3))
    assert torch.equal(explain(model, x, 3, method="agf", use_a=False), AGF(model, use_a=False).attribute(x, 3))
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        explain(model, x, method="foo")


def test_hooks_left_by_other_tools_are_not_traced():
    """pytorch-grad-cam leaves hooks like this on `layer4[-1]`; their results are not the model's function."""
    model, x = _model("resnet18"), _x(1)
    expected = AGF(model).attribute(x)
    calls = []

    def grad_cam_style_hook(module, inputs, output):
        calls.append(output.cpu().detach())
        if not hasattr(output, "requires_grad") or not output.requires_grad:  # branches on a traced value
            return
        output.register_hook(lambda grad: None)

    handle = model.layer4[-1].register_forward_hook(grad_cam_style_hook)
    try:
        assert torch.equal(AGF(model).attribute(x), expected)
        assert calls == [] and len(model.layer4[-1]._forward_hooks) == 1
    finally:
        handle.remove()


def test_walk_split_into_single_images_changes_no_number():
    model, x = _model("resnet18"), _x(3)
    whole = AGF(model, walk_bytes=0).attribute(x, torch.tensor([2, 7, 2]))
    split = AGF(model, walk_bytes=1).attribute(x, torch.tensor([2, 7, 2]))  # one image per walk
    assert (whole - split).abs().max() <= 1e-12 * whole.abs().max()
    with pytest.raises(ValueError, match="walk_bytes"):
        AGF(model, walk_bytes=-1)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.MaxPool2d((2, 3), (1, 2), (1, 1), dilation=(1, 2))])
def test_max_pool_vjp_equals_autograd_with_overlapping_windows(pool):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 11, dtype=torch.float64)
    x[0, 0, :4, :4] = 0.0  # ties: autograd and the indices pass must pick the same arg-max
    cotangents = [torch.randn_like(pool(x)) for _ in range(2)]
    step = ModelGraph(nn.Sequential(nn.Conv2d(3, 3, 1), pool, nn.Flatten(), nn.LazyLinear(2))).steps
    pool_step = next(s for s in step.values() if s.module is pool)
    fast = vjp(pool_step, x, cotangents)
    xg = x.clone().requires_grad_(True)
    y = pool(xg)
    for got, c in zip(fast, cotangents):
        expected = torch.autograd.grad(y, xg, c, retain_graph=True)[0]
        assert torch.equal(got, expected)
    assert fast[0].abs().sum() > 0


@pytest.mark.parametrize("pool,disjoint", [(nn.MaxPool2d(2), True), (nn.MaxPool2d(3, 3, 1, ceil_mode=True), True),
                                           (nn.MaxPool2d(3, 2), False)])
def test_z_rule_through_max_pool_equals_the_input_side_product(pool, disjoint):
    """Disjoint windows take R_in = Jᵀ(Y ⊙ R/Y); that must equal X ⊙ Jᵀ(R/Y) bit for bit, ties and R = 0 included."""
    from sslx.attribution.propagation import _windows_disjoint, z_rule
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    x[0, 0, :4, :4] = 0.0
    x[1, 2, 4:8, 4:8] = 1.5
    y = pool(x)
    r, g = torch.randn_like(y), torch.randn_like(y)
    r[0, 1] = 0.0
    steps = ModelGraph(nn.Sequential(nn.Conv2d(3, 3, 1), pool, nn.Flatten(), nn.LazyLinear(2))).steps
    pool_step = next(s for s in steps.values() if s.module is pool)
    (rel,), (g_in,) = z_rule(pool_step, x, y, r, g)
    back = vjp(pool_step, x, [safe_divide(r, y), g])
    assert _windows_disjoint(pool) == disjoint
    assert torch.equal(rel, x * back[0]) and torch.equal(g_in, back[1])
    assert rel.abs().sum() > 0


@pytest.mark.parametrize("kernel,stride,padding", [(11, 4, 2), (7, 2, 3), (3, (2, 3), 1), ((1, 2), (3, 1), 0),
                                                   (5, 3, 4), (2, 2, 0)])
@pytest.mark.parametrize("size", [16, 33])
def test_strided_adjoint_by_phases_equals_conv_backward(kernel, stride, padding, size):
    from torch.nn.grad import conv2d_input

    from sslx.attribution.convops import _phases_pay, conv_transpose

    torch.manual_seed(0)
    m = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=False).double()
    x = torch.randn(2, 6, size, size + 3, dtype=torch.float64)
    g = torch.randn_like(m(x))
    assert _phases_pay(m, m.weight)  # the sub-pixel path is the one under test
    expected = conv2d_input(x.shape, m.weight, g, m.stride, m.padding)
    got = conv_transpose(m, g, m.weight.detach(), x.shape)
    assert got.shape == x.shape and got.is_contiguous()
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert not _phases_pay(nn.Conv2d(10, 5, 3, stride=2), nn.Conv2d(10, 5, 3, stride=2).weight)  # 10 channels
    assert not _phases_pay(nn.Conv2d(3, 5, 3, stride=1), nn.Conv2d(3, 5, 3).weight)  # stride 1: other paths


@pytest.mark.parametrize("stride", [2, 3, (2, 1)])
@pytest.mark.parametrize("size", [14, 17])
@pytest.mark.parametrize("channels", [(8, 5), (80, 96)])  # few channels: the product path; more: the deconvolution
def test_strided_1x1_adjoint_and_forward_equal_conv_and_its_backward(stride, size, channels):
    """A strided 1×1 conv's adjoint (the stride-1 adjoint at the output's resolution, spread onto every s-th
    pixel) and its forward on the subsampled input equal torch's conv and conv backward."""
    from torch.nn.grad import conv2d_input

    from sslx.attribution.convops import _strided_pointwise, conv_forward, conv_transpose, flip_pays, flipped_kernel

    torch.manual_seed(0)
    m = nn.Conv2d(*channels, 1, stride=stride, bias=False).double()
    w = m.weight.detach()
    x = torch.randn(2, channels[0], size, size + 3, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, w, None, m.stride)
    g = torch.randn_like(y)
    assert _strided_pointwise(m)
    torch.testing.assert_close(conv_forward(m, x, w), y, rtol=1e-13, atol=1e-13)
    expected = conv2d_input(x.shape, w, g, m.stride, m.padding)
    got = conv_transpose(m, g, w, x.shape)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    assert not flip_pays(m, g, w) and flipped_kernel(m, g, w) is None  # strided: no flipped kernel is made
    assert not _strided_pointwise(nn.Conv2d(8, 5, 1, stride=2, padding=1))
    assert not _strided_pointwise(nn.Conv2d(8, 6, 1, stride=2, groups=2))
    assert not _strided_pointwise(nn.Conv2d(8, 5, 3, stride=2))


def test_masked_gradient_skips_the_extra_adjoint_only_when_masking_changes_nothing():
    from torch.nn.grad import conv2d_input

    from sslx.attribution.agf_conv import _masked_gradient

    torch.manual_seed(0)
    m = nn.Conv2d(3, 4, 3, padding=1).double()
    w = m.weight.detach()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    g, r = torch.randn(1, 4, 8, 8, dtype=torch.float64), torch.randn(1, 4, 8, 8, dtype=torch.float64)
    g_in = conv2d_input(x.shape, w, g, 1, 1)
    assert _masked_gradient(m, x, r, g, w, g_in) is g_in  # Φ nowhere 0
    r[0, 0, 3, 3] = 0.0  # Φ = 0 where g is not: the masked gradient differs
    got = _masked_gradient(m, x, r, g, w, g_in)
    assert got is not g_in and torch.allclose(got, conv2d_input(x.shape, w, g * (r != 0), 1, 1), rtol=0, atol=1e-12)
    g[0, 0, 3, 3] = 0.0  # ... and where g is 0 too: nothing to mask
    assert _masked_gradient(m, x, r, g, w, g_in) is g_in
    r[0, 0, 3, 3], r[0, 1, 0, 0], g[0, 1, 0, 0] = 1.0, 1e-200, 1e-200  # g·Φ would underflow: still nothing to mask
    g_in = conv2d_input(x.shape, w, g, 1, 1)
    assert _masked_gradient(m, x, r, g, w, g_in) is g_in
    g[0, 2, 5, 5], r[0, 2, 5, 5] = float("nan"), 0.0  # a NaN where Φ = 0 takes the exact path
    got = _masked_gradient(m, x, r, g, w, g_in)
    assert got is not g_in and torch.equal(got.isnan(), conv2d_input(x.shape, w, g * (r != 0), 1, 1).isnan())


def test_agf_uses_the_max_pool_indices_the_forward_recorded(monkeypatch):
    """The forward pass records each max-pool's arg-max; the walk uses them instead of a second indices pass,
    with the same result as finding them again."""
    import sslx.attribution.propagation as propagation
    from sslx import AGF

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    agf = AGF(model)
    recorded = agf.attribute(x, normalize=False)
    given = []
    original = propagation._max_pool_vjp
    monkeypatch.setattr(propagation, "_max_pool_vjp",
                        lambda m, x, c, indices=None: given.append(indices is not None) or original(m, x, c, indices))
    agf.attribute(x, normalize=False)
    assert given == [True]  # resnet18's one max-pool, with the forward's indices: no second search
    monkeypatch.undo()
    run = agf.graph.run
    monkeypatch.setattr(agf.graph, "run", lambda x, keep=None, fold_norms=(), pool_indices=None, relu_over=():
                        run(x, keep=keep, fold_norms=fold_norms))  # nothing recorded: the walk finds them
    again = agf.attribute(x, normalize=False)
    assert recorded.abs().max() > 0
    assert torch.equal(recorded, again)


def test_agf_residual_adds_before_a_relu_equal_the_general_add_rule():
    """The shortcut for adds read only by a ReLU (divide by the positive part) changes no bit of AGF."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    agf = AGF(model)
    assert len(agf._adds_into_relu) == 8  # resnet18's eight residual adds, each followed by its block's ReLU
    fast = agf.attribute(x, normalize=False)
    agf._adds_into_relu = set()
    general = agf.attribute(x, normalize=False)
    assert fast.abs().max() > 0
    assert torch.equal(fast, general)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_agf_stacked_c_and_a_adjoints_equal_separate_ones(arch, monkeypatch):
    """Stacking the C and A quotients into one transposed conv (small maps) changes no bit of AGF."""
    import sslx.attribution.agf_conv as agf_conv

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().double()
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    agf = AGF(model)
    calls = []
    original = agf_conv.stacking_pays
    monkeypatch.setattr(agf_conv, "stacking_pays", lambda r, w: calls.append(original(r, w)) or calls[-1])
    stacked = agf.attribute(x, normalize=False)
    assert any(calls) and not all(calls)  # both paths ran: small deep maps stacked, large early ones not
    monkeypatch.setattr(agf_conv, "stacking_pays", lambda r, w: False)
    separate = agf.attribute(x, normalize=False)
    assert stacked.abs().max() > 0
    assert torch.equal(stacked, separate)


@pytest.mark.parametrize("conv, size, separable", [
    (nn.Conv2d(3, 64, 7, 2, 3), 224, True), (nn.Conv2d(3, 64, 11, 4, 2), 224, False),
    (nn.Conv2d(64, 8, 3, 1, 1), 224, True), (nn.Conv2d(8, 16, (3, 5), (1, 2), (2, 1), dilation=(1, 3), groups=4), 230, True),
    (nn.Conv2d(8, 16, 3, 2, 0, dilation=2), 215, True), (nn.Conv2d(16, 16, 3, 1, 1, groups=16), 17, False),
    (nn.Conv2d(16, 4, 3, 1, "same"), 120, False)])
def test_conv_of_ones_equals_convolving_an_all_ones_image(conv, size, separable):
    """conv(1, W) as R·K·Cᵀ (large maps) or a one-channel conv (small maps, string padding) equals the
    literal convolution of an all-ones image with W (no bias)."""
    from sslx.attribution.convops import SEPARABLE_MIN_PIXELS, conv_of_ones

    w = conv.weight.detach().double().abs()
    shape = (1, conv.in_channels, size, size + 3)
    literal = torch.nn.functional.conv2d(torch.ones(shape, dtype=torch.float64), w, None, conv.stride, conv.padding,
                                         conv.dilation, conv.groups)
    got = conv_of_ones(conv, w, shape)
    assert got.shape == literal.shape
    torch.testing.assert_close(got, literal, rtol=1e-14, atol=0)
    assert separable == (not isinstance(conv.padding, str)
                         and got.shape[2] * got.shape[3] >= SEPARABLE_MIN_PIXELS)  # both paths are tested


@pytest.mark.parametrize("conv, size", [(nn.Conv2d(3, 64, 7, 2, 3), 224), (nn.Conv2d(3, 64, 3, 1, 1), 112),
                                        (nn.Conv2d(3, 8, 3, 1, 1), 20), (nn.Conv2d(4, 8, 3, 1, "same"), 120)])
def test_conv_of_bounds_equals_the_bound_images_convolved(conv, size):
    """low·conv(1, W⁺) + high·conv(1, W⁻) with per-image bounds equals convolving the constant bound images
    (the reference's z^B terms), on the separable path (large maps) and the convolution path."""
    from sslx.attribution.convops import conv_of_bounds

    w = conv.weight.detach().double()
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low = torch.tensor([-2.0, 0.5, -0.25], dtype=torch.float64).reshape(3, 1, 1, 1)
    high = torch.tensor([3.0, 0.75, 1.5], dtype=torch.float64).reshape(3, 1, 1, 1)
    shape = (3, conv.in_channels, size, size + 1)
    ones = torch.ones(shape, dtype=torch.float64)
    f = torch.nn.functional.conv2d
    literal = (f(low * ones, wp, None, conv.stride, conv.padding, conv.dilation, conv.groups)
               + f(high * ones, wn, None, conv.stride, conv.padding, conv.dilation, conv.groups))
    got = conv_of_bounds(conv, wp, wn, low, high, shape)
    assert got.shape == literal.shape
    torch.testing.assert_close(got, literal, rtol=1e-13, atol=1e-13)


def test_linear_rule_restores_the_thread_count_and_keeps_its_numbers():
    """The Linear C-rule's block loop runs on one CPU thread; the caller's count is restored, even after an error,
    and the result equals the unblocked formula."""
    from sslx.attribution.agf_rules import _one_cpu_thread, linear_c_rule

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 5000, dtype=torch.float64, generator=gen)  # 40 kB rows: ten blocks of 32 rows
    x, r, g = (torch.randn(3, n, dtype=torch.float64, generator=gen) for n in (5000, 300, 300))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        c, g_in = linear_c_rule(x, w, r, g)
        assert torch.get_num_threads() == 2
        z = x.abs() @ w.abs().t()
        expected = x.abs() * ((r * (z != 0) / (z + 1e-9)) @ w.abs())
        torch.testing.assert_close(c, expected, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g_in, g @ w, rtol=1e-12, atol=1e-14)
        with pytest.raises(RuntimeError):
            with _one_cpu_thread(w):
                assert torch.get_num_threads() == 1
                raise RuntimeError("inside the block")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_kernel_buffers_reuse_grow_and_separate_dtypes_and_threads():
    """A name gets the same memory on every call (grown when a larger kernel asks), per dtype and per thread."""
    import threading

    from sslx.attribution.buffers import KernelBuffers

    buffers = KernelBuffers()
    like32, like64 = torch.zeros(1), torch.zeros(1, dtype=torch.float64)
    a = buffers.get("abs", (4, 3, 3, 3), like32)
    assert a.shape == (4, 3, 3, 3) and a.is_contiguous() and a.dtype == torch.float32
    assert buffers.get("abs", (2, 3, 3, 3), like32).data_ptr() == a.data_ptr()  # smaller: same memory
    assert buffers.get("flipped", (4, 3, 3, 3), like32).data_ptr() != a.data_ptr()
    assert buffers.get("abs", (4, 3, 3, 3), like64).dtype == torch.float64
    big = buffers.get("abs", (8, 3, 3, 3), like32)  # larger: grown once, then kept
    assert buffers.get("abs", (8, 3, 3, 3), like32).data_ptr() == big.data_ptr()
    assert buffers.nbytes() == 8 * 27 * 4 + 4 * 27 * 4 + 4 * 27 * 8
    other = []
    thread = threading.Thread(target=lambda: other.append(buffers.get("abs", (8, 3, 3, 3), like32).data_ptr()))
    thread.start()
    thread.join()
    assert other[0] != big.data_ptr()  # another thread never writes into this thread's buffers
    buffers.clear()
    assert buffers.nbytes() == 0


def test_flipped_kernel_into_a_buffer_equals_the_transposed_flip():
    from sslx.attribution.buffers import KernelBuffers
    from sslx.attribution.convops import flip_pays, flipped_kernel

    conv = nn.Conv2d(5, 7, (3, 2), padding=(1, 1))
    w = conv.weight.detach()
    out = torch.zeros(1, 7, 40, 41)
    assert flip_pays(conv, out, w, uses=1)
    buffers = KernelBuffers()
    got = flipped_kernel(conv, out, w, buffers=buffers)
    assert got.data_ptr() == buffers.get("flipped", (5, 7, 3, 2), w).data_ptr()
    assert torch.equal(got, w.transpose(0, 1).contiguous().flip(2, 3))
    assert torch.equal(flipped_kernel(conv, out, w), got)
    small = torch.zeros(1, 7, 2, 2)
    fresh = KernelBuffers()
    assert flipped_kernel(conv, small, w, buffers=fresh) is None and not flip_pays(conv, small, w)
    assert fresh.nbytes() == 0  # no buffer is made where the flip does not pay


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_agf_kernel_buffers_change_no_bit_and_are_kept_between_calls(arch):
    """|W| and flipped kernels written into the instance's kept buffers give the same maps as fresh kernels per
    layer, and a second call makes no new buffer."""
    from sslx.attribution.buffers import KernelBuffers

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval().double()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    agf = AGF(model)
    kept = agf.attribute(x, normalize=False)
    store = dict(agf._kernels._local.store)
    assert {"abs", "flipped", "flipped_abs"} <= {name for name, _, _ in store}  # the flip path ran
    again = agf.attribute(x, normalize=False)
    assert all(agf._kernels._local.store[k] is v for k, v in store.items())  # the same buffers, none new

    class Fresh:  # a new buffer for every request: what the rule allocated per layer before
        def get(self, name, shape, like):
            return KernelBuffers().get(name, shape, like)

    agf._kernels = Fresh()
    fresh = agf.attribute(x, normalize=False)
    assert kept.abs().max() > 0
    assert torch.equal(kept, again) and torch.equal(kept, fresh)
