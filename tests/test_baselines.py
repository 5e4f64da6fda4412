"""Attribution baselines on tiny models: rules against literal formulas, hand-computed cases, batching,
zennit's canonical LRP, captum-backed methods' closed forms, and every error path."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import sslx
from sslx.attribution.graph import CONV, LINEAR, NORM, Step, UnsupportedOperationError
from sslx.attribution.gradient import FullGrad, GradCAM, GradientShap, IntegratedGradients, SmoothGrad
from sslx.attribution.lrp import CLRP, LRP, SGLRP, alpha_beta_rule, norm_rule, zb_rule
from sslx.attribution.rap import RAP, absolute_rule, positive_negative_rule, shift_to_total
from sslx.attribution.rap import norm_rule as rap_norm_rule
from sslx.explain_api import METHODS

D = torch.float64


# -- tiny models ----------------------------------------------------------------------------------
class TinyVGG(nn.Module):
    """features ▸ adaptive avg-pool ▸ classifier, like torchvision's VGG (optionally with BatchNorm)."""

    def __init__(self, batch_norm: bool = False, bias: bool = True):
        super().__init__()

        def block(cin, cout):
            conv = [nn.Conv2d(cin, cout, 3, padding=1, bias=bias)]
            return conv + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(3, 4), *block(4, 6))
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(24, 32, bias=bias), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(32, 5, bias=bias))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def randomize_norms(model: nn.Module, seed: int, negative: bool = True) -> nn.Module:
    """Random BatchNorm statistics; with `negative`, some scales γ are negative (BN folding then matters)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            low = -0.7 if negative else 0.5
            m.weight.data = torch.rand(m.weight.shape, generator=g) * 1.5 + low
            m.bias.data = torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1
            m.running_mean.data = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval().to(D)


def tiny_vgg(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(TinyVGG(**kwargs), seed)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout at toy width: stem, a Bottleneck, a strided BasicBlock and a strided
    Bottleneck (both with 1×1-conv + BN downsample paths), global average pool, fc."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock, Bottleneck

        def down(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout))

        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(Bottleneck(8, 2))
        self.layer2 = nn.Sequential(BasicBlock(8, 12, stride=2, downsample=down(8, 12)))
        self.layer3 = nn.Sequential(Bottleneck(12, 4, stride=2, downsample=down(12, 16)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 7)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_norms(TinyResNet(), seed)


def images(b: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


@pytest.fixture(scope="module")
def vgg():
    return tiny_vgg()


@pytest.fixture(scope="module")
def resnet():
    return tiny_resnet()


# -- literal transcriptions of the README formulas on dense matrices --------------------------------
def sd(a, b):
    """The reference's safe_divide, numpy."""
    return np.where(b != 0, a / np.where(b + 1e-9 == 0, 1e-9, b + 1e-9), 0.0)


def dense(layer: nn.Module, in_shape) -> np.ndarray:
    """The matrix M (outputs × inputs) of a bias-free linear layer, from its responses to unit inputs."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=D).reshape((n,) + tuple(in_shape))
    with torch.no_grad():
        out = nn.functional.conv2d(basis, layer.weight, None, layer.stride, layer.padding) \
            if isinstance(layer, nn.Conv2d) else basis @ layer.weight.T
    return out.reshape(n, -1).T.numpy()


def literal_alpha_beta(M, x, r, alpha):
    beta = alpha - 1
    Mp, Mn, xp, xn = np.maximum(M, 0), np.minimum(M, 0), np.maximum(x, 0), np.minimum(x, 0)

    def f(w1, w2):
        return xp * (w1.T @ sd(r, w1 @ xp)) + xn * (w2.T @ sd(r, w2 @ xn))

    return alpha * f(Mp, Mn) - beta * f(Mn, Mp)


def literal_zb(M, x, r, stabilized):
    low, high = x.min(), x.max()
    Mp, Mn = np.maximum(M, 0), np.minimum(M, 0)
    z = M @ x - Mp @ np.full_like(x, low) - Mn @ np.full_like(x, high)
    s = r / (z + 1e-9) if stabilized else sd(r, z)
    return x * (M.T @ s) - low * (Mp.T @ s) - high * (Mn.T @ s)


def literal_rap(M, x, r, is_conv):
    Mp, Mn = np.maximum(M, 0), np.minimum(M, 0)
    m = (r != 0).astype(float)
    rp, rn = np.maximum(r, 0), np.minimum(r, 0)
    total = np.zeros_like(x)
    for x1, w1, w2 in ((np.maximum(x, 0), Mp, -Mn), (np.minimum(x, 0), -Mp, Mn)):
        z1, z2 = (w1 @ x1) * m, (w2 @ x1) * m
        q = sd(z1 + z2, z1 + z2)
        back = lambda w, s: x1 * ((w * m[:, None]).T @ s)  # noqa: E731  (∂Z/∂x)ᵀ S, mask included
        c1 = back(w1, sd(rp * q, z1))
        c1n = back(w2, sd(rn * q, z2)) if is_conv else back(w1, sd(rn * q, z1))
        c2 = back(w2, sd(rp * sd(z2, z1 + z2), z2))
        c2n = back(w2, sd(rn * sd(z2, z1 + z2), z2))
        c = c1 + c2 + c2n + c1n
        nonzero = (c != 0).astype(float)
        total += c - sd(c.sum() - r.sum(), nonzero.sum()) * nonzero
    return total


def _signed_relevance(shape, seed):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=g, dtype=D)
    return r * (torch.rand(shape, generator=g, dtype=D) > 0.3)  # some exact zeros


# -- rules ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("kind", [LINEAR, CONV])
def test_alpha_beta_rule_matches_literal_formula(kind, alpha):
    torch.manual_seed(2)
    layer = (nn.Linear(7, 5) if kind == LINEAR else nn.Conv2d(2, 3, 3, stride=2, padding=1)).to(D).requires_grad_(False)
    in_shape = (7,) if kind == LINEAR else (2, 5, 5)
    x = torch.randn((1,) + in_shape, dtype=D)  # mixed signs: the x⁻ terms count
    y = layer(x).detach()
    r = _signed_relevance(y.shape, 3)
    ours = alpha_beta_rule(Step(None, kind, layer), x, layer.weight.detach(), r, alpha, alpha - 1)
    ref = literal_alpha_beta(dense(layer, in_shape), x.flatten().numpy(), r.flatten().numpy(), alpha)
    np.testing.assert_allclose(ours.flatten().numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("stabilized", [True, False])
def test_zb_rule_matches_literal_formula(stabilized):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).to(D).requires_grad_(False)
    x = torch.randn(1, 3, 5, 5, dtype=D)
    r = _signed_relevance(conv(x).shape, 5)
    ours = zb_rule(Step(None, CONV, conv), x, r, stabilized=stabilized)
    ref = literal_zb(dense(conv, (3, 5, 5)), x.flatten().numpy(), r.flatten().numpy(), stabilized)
    np.testing.assert_allclose(ours.flatten().numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", [LINEAR, CONV])
def test_rap_rule_matches_literal_formula(kind):
    torch.manual_seed(6)
    layer = (nn.Linear(7, 5) if kind == LINEAR else nn.Conv2d(2, 3, 3, stride=2, padding=1)).to(D).requires_grad_(False)
    in_shape = (7,) if kind == LINEAR else (2, 5, 5)
    x = torch.randn((1,) + in_shape, dtype=D)
    r = _signed_relevance(layer(x).shape, 7)
    ours = positive_negative_rule(Step(None, kind, layer), x, r)
    ref = literal_rap(dense(layer, in_shape), x.flatten().numpy(), r.flatten().numpy(), kind == CONV)
    np.testing.assert_allclose(ours.flatten().numpy(), ref, rtol=1e-9, atol=1e-12)
    # Each sign part is shifted back to ΣR, so with mixed-sign inputs the total is 2·ΣR.
    assert np.isclose(ours.sum().item(), 2 * r.sum().item(), rtol=1e-8)


def test_rap_absolute_rule_for_1x1_convolutions():
    torch.manual_seed(8)
    conv = nn.Conv2d(3, 2, 1, bias=False).to(D).requires_grad_(False)
    x = torch.randn(1, 3, 2, 2, dtype=D)
    r = _signed_relevance((1, 2, 2, 2), 9)
    M = np.abs(dense(conv, (3, 2, 2)))
    xa, rn = np.abs(x.flatten().numpy()), r.flatten().numpy()
    ref = xa * (M.T @ sd(rn, (M @ xa) * (rn != 0)))
    np.testing.assert_allclose(absolute_rule(Step(None, CONV, conv), x, r).flatten().numpy(), ref, rtol=1e-12)


def test_shift_to_total_hand_computed():
    c = torch.tensor([[1.0, 0.0, 3.0]], dtype=D)
    shifted = shift_to_total(c, torch.tensor([[2.0]], dtype=D))
    # ΣC = 4, two non-zero entries: each loses (4 − 2)/(2 + 1e-9); the zero stays zero.
    np.testing.assert_allclose(shifted.numpy(), [[1 - 2 / (2 + 1e-9), 0.0, 3 - 2 / (2 + 1e-9)]], rtol=1e-15)


def test_batchnorm_rules_are_near_identity_with_the_squared_variance():
    bn = nn.BatchNorm2d(2).to(D).eval().requires_grad_(False)
    bn.weight.data = torch.tensor([2.0, -1.0], dtype=D)
    bn.bias.data = torch.tensor([0.5, 0.25], dtype=D)
    bn.running_var.data = torch.tensor([3.0, 4.0], dtype=D)
    bn.eps = 0.0
    step = Step(None, NORM, bn)
    x = torch.tensor([[[[1.0, -2.0]], [[0.5, 3.0]]]], dtype=D)
    r = torch.tensor([[[[0.3, 0.0]], [[-1.0, 2.0]]]], dtype=D)
    w = torch.tensor([2 / 3, -1 / 4], dtype=D).reshape(1, 2, 1, 1)  # γ / sqrt(var²), the reference's quirk
    np.testing.assert_allclose(norm_rule(step, x, r).numpy(), (x * (r / (x * w + 1e-9) * w)).numpy(), rtol=1e-15)
    out = rap_norm_rule(step, x, r)
    np.testing.assert_allclose(out.numpy(), r.numpy(), rtol=1e-7)
    assert out[0, 0, 0, 1] == 0


# -- LRP family and RAP on whole models ------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1, 2])
def test_lrp_conserves_the_target_logit_without_biases(alpha):
    model = tiny_vgg(bias=False)
    x = images(2, 8)
    t = torch.tensor([1, 4])
    heat = LRP(model, alpha=alpha).attribute(x, t)
    logits = model(x).detach()
    np.testing.assert_allclose(heat.sum(dim=(1, 2, 3)).numpy(), logits[torch.arange(2), t].numpy(), rtol=1e-6)


def test_lrp_top1_target_and_int_target(vgg):
    x = images(2, 8)
    top = vgg(x).argmax(1)
    lrp = LRP(vgg)
    assert torch.equal(lrp.attribute(x), lrp.attribute(x, top))
    assert torch.equal(lrp.attribute(x, 3), lrp.attribute(x, torch.tensor([3, 3])))


def test_clrp_map_sums_to_zero_and_sglrp_batches(vgg):
    x = images(3, 8)
    t = torch.tensor([0, 2, 4])
    heat = CLRP(vgg).attribute(x, t)
    lrp_scale = LRP(vgg).attribute(x, t).abs().sum(dim=(1, 2, 3))
    assert (heat.sum(dim=(1, 2, 3)).abs() <= 1e-9 * lrp_scale).all()
    sg = SGLRP(vgg).attribute(x, t)  # the reference fails here (batch with given classes)
    assert sg.shape == (3, 1, 8, 8) and torch.isfinite(sg).all() and (sg != 0).any()


DETERMINISTIC = ["lrp", "lrp_ab", "clrp", "sglrp", "rap", "gradcam", "fullgrad", "integrated_gradients"]
ALL_METHODS = DETERMINISTIC + ["smoothgrad", "gradient_shap"]


def _make(method, model):
    options = {"steps": 8} if method == "integrated_gradients" else {}
    return METHODS[method](model, **options)


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
@pytest.mark.parametrize("method", DETERMINISTIC)
def test_batch_equals_one_by_one(method, arch, vgg, resnet):
    model, size = (vgg, 8) if arch == "vgg" else (resnet, 16)
    x = images(3, size, seed=11)
    t = torch.tensor([2, 0, 4])
    explainer = _make(method, model)
    batch = explainer.attribute(x, t)
    single = torch.cat([explainer.attribute(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert batch.shape == (3, 1, size, size) and batch.dtype == D
    assert (single.abs().amax(dim=(1, 2, 3)) > 0).all()  # no degenerate all-zero map
    torch.testing.assert_close(batch, single, rtol=1e-9, atol=1e-12 * float(single.abs().max()))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_float32_in_float32_out(method):
    model = tiny_vgg().float()
    x = images(2, 8).float()
    options = {"steps": 4} if method == "integrated_gradients" else {"n_samples": 3} if method == "smoothgrad" else {}
    heat = sslx.explain(model, x, torch.tensor([1, 2]), method=method, **options)
    assert heat.shape == (2, 1, 8, 8) and heat.dtype == torch.float32 and torch.isfinite(heat).all()
    if method == "smoothgrad":
        return  # float32 and float64 noise draws differ
    ref = METHODS[method](model.double(), **options).attribute(x.double(), torch.tensor([1, 2]))
    scale = ref.abs().amax(dim=(1, 2, 3), keepdim=True)
    assert ((heat.double() - ref).abs() <= 1e-4 * scale + 1e-6).all()


def test_rap_on_resnet_is_finite_and_signed(resnet):
    heat = RAP(resnet).attribute(images(2, 16), torch.tensor([1, 3]))
    assert torch.isfinite(heat).all() and (heat > 0).any() and (heat < 0).any()


# -- canonical LRP: BatchNorm folded, checked against zennit ----------------------------------------
def _zennit_lrp(model, x, target, canonizer):
    """zennit's α1β0 + z^B: ZPlus (no bias) on every Conv2d/Linear, ZBox with per-image bounds on the
    first convolution, zennit's base map (ReLU/BN: pass, residual sum and avg-pool: z-rule), BatchNorm
    merged into the preceding layer by the canonizer; stabiliser +1e-9 as in the reference."""
    from zennit.attribution import Gradient
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.rules import ZBox, ZPlus
    from zennit.types import Convolution

    def stabilize(d):
        return d + 1e-9

    low, high = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    composite = SpecialFirstLayerMapComposite(
        layer_map=layer_map_base(stabilize) + [((Convolution, nn.Linear), ZPlus(stabilize, zero_params="bias"))],
        first_map=[(Convolution, ZBox(low, high, stabilize, zero_params="bias"))],
        canonizers=[canonizer])
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, lambda y: torch.zeros_like(y).scatter_(1, target[:, None], 1.0) * y)
    return relevance.sum(dim=1, keepdim=True)


def _unit_rel_l2(a, b):
    a = a / a.abs().amax(dim=(1, 2, 3), keepdim=True)
    b = b / b.abs().amax(dim=(1, 2, 3), keepdim=True)
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max().item()


@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_folded_batchnorm_lrp_equals_zennit(arch):
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    model, size, canonizer = ((tiny_vgg(3, batch_norm=True), 16, VGGCanonizer()) if arch == "vgg"
                              else (tiny_resnet(3), 16, ResNetCanonizer()))
    x = images(2, size, seed=12)
    t = torch.tensor([3, 1])
    folded = LRP(model, fold_batchnorm=True).attribute(x, t)
    reference_style = LRP(model).attribute(x, t)
    theirs = _zennit_lrp(model, x, t, canonizer)
    # Agreement up to max-pooling's stabiliser (ours: z-rule with +1e-9, zennit: the plain gradient).
    assert _unit_rel_l2(folded, theirs) <= 1e-5
    # With some negative BatchNorm scales, the reference's near-identity BN rule is a different method.
    assert _unit_rel_l2(reference_style, theirs) >= 1e-2
    assert torch.equal(LRP(model, fold_batchnorm=True).attribute(x, t), folded)  # zennit restored the model


def test_folding_changes_nothing_when_all_batchnorm_scales_are_positive():
    torch.manual_seed(5)
    model = randomize_norms(TinyVGG(batch_norm=True), 5, negative=False)
    x = images(2, 8)
    a, b = LRP(model, fold_batchnorm=True).attribute(x, 1), LRP(model).attribute(x, 1)
    assert (b.abs().amax(dim=(1, 2, 3)) > 0).all()
    assert _unit_rel_l2(a, b) <= 1e-7


# -- Grad-CAM ---------------------------------------------------------------------------------------
def _hand_cam_model(head_rows):
    conv = nn.Conv2d(1, 2, 1, bias=False)
    conv.weight.data = torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1)
    head = nn.Linear(2, len(head_rows), bias=False)
    head.weight.data = torch.tensor(head_rows)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).to(D).eval()


def test_gradcam_hand_computed():
    model = _hand_cam_model([[1.0, 2.0], [3.0, -1.0], [-1.0, -1.0]])
    x = torch.tensor([[[[1.0, 2.0], [-1.0, 3.0]]]], dtype=D).expand(3, 1, 2, 2)
    cam = GradCAM(model)
    assert cam.layer == "1"  # the ReLU feeding the head's pooling
    out = cam.attribute(x, torch.tensor([0, 1, 2]))
    # A = [relu(x), relu(-x)]; α = head row / 4; class 0: 0.25·A0 + 0.5·A1 = [[.25,.5],[.5,.75]] / .75
    np.testing.assert_allclose(out[0, 0].numpy(), [[1 / 3, 2 / 3], [2 / 3, 1.0]], rtol=1e-12)
    # class 1: relu(0.75·A0 − 0.25·A1) = [[.75, 1.5], [0, 2.25]] / 2.25
    np.testing.assert_allclose(out[1, 0].numpy(), [[1 / 3, 2 / 3], [0.0, 1.0]], rtol=1e-12)
    # class 2: every weight negative, the map is all zero (the reference would divide 0 by 0)
    assert torch.equal(out[2], torch.zeros_like(out[2]))


def test_gradcam_upsamples_bilinearly_to_the_input():
    model = nn.Sequential(nn.Conv2d(1, 1, 2, stride=2, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(1, 2, bias=False)).to(D).eval()
    model[0].weight.data = torch.full((1, 1, 2, 2), 0.25, dtype=D)
    model[4].weight.data = torch.tensor([[1.0], [2.0]], dtype=D)
    x = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=D).reshape(1, 1, 4, 4)
    out = GradCAM(model).attribute(x, 0)[0, 0].numpy()
    a, b, c, d = 0.25, 0.5, 0.75, 1.0  # the 2×2 map [[1,2],[3,4]]/4
    row = lambda p, q: [p, 0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q, q]  # noqa: E731
    top, bottom = np.array(row(a, b)), np.array(row(c, d))
    np.testing.assert_allclose(out, [top, 0.75 * top + 0.25 * bottom, 0.25 * top + 0.75 * bottom, bottom],
                               rtol=1e-12)


def test_gradcam_layers(vgg):
    assert GradCAM(vgg).layer == "features.5"  # VGG: the last max-pool, as the reference's layer 36 of VGG-19
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    default = GradCAM(resnet)
    assert default.layer_node.name == GradCAM(resnet, layer="layer4").layer_node.name == "layer4_1_relu_1"
    # RotNet/SeLa-style classifier: Linear → BatchNorm1d → ReLU before the head; the walk crosses the 1-d norm
    bn_head = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    assert GradCAM(bn_head).layer == "1"  # the last feature map before the pooling that feeds the classifier
    assert GradCAM(bn_head).attribute(images(2, 8), 0).shape == (2, 1, 8, 8)
    a = GradCAM(vgg, layer="features.4").attribute(images(1, 8), 1)
    b = GradCAM(vgg).attribute(images(1, 8), 1)
    assert a.shape == b.shape == (1, 1, 8, 8) and not torch.equal(a, b)


# -- FullGrad ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vgg", "resnet"])
def test_fullgrad_decomposition_is_complete(arch, vgg, resnet):
    model, size = (vgg, 8) if arch == "vgg" else (resnet, 16)
    x = images(2, size, seed=13)
    t = torch.tensor([1, 2])
    input_grad, bias_grads = FullGrad(model).decompose(x, t)
    total = (input_grad * x).sum(dim=(1, 2, 3)) + sum(g.flatten(1).sum(1) for g in bias_grads)
    logits = model(x).detach()[torch.arange(2), t]
    np.testing.assert_allclose(total.numpy(), logits.numpy(), rtol=1e-10)
    assert len(bias_grads) == (4 if arch == "vgg" else 1 + 3 + 2 + 3 + 2 + 1)  # stem, blocks' BNs, downsamples, fc


def test_fullgrad_map_is_non_negative_and_bounded(vgg):
    heat = FullGrad(vgg).attribute(images(2, 8), torch.tensor([0, 1]))
    # input term: 3 channels in [0, 1]; each conv's term: its channels (4, 6) in [0, 1], resized convexly
    assert (heat >= 0).all() and heat.amax() <= 3 + 4 + 6


# -- integrated gradients, SmoothGrad, GradientSHAP: closed forms and the reference's loops ------------
def _linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).to(D).eval()


def test_integrated_gradients_closed_form_on_a_linear_model():
    model = _linear_model()
    x = torch.randn(2, 2, 3, 3, dtype=D)
    w = model[1].weight.detach().reshape(4, 2, 3, 3)
    t = torch.tensor([1, 3])
    heat = IntegratedGradients(model).attribute(x, t)
    # 101 points, each gradient = w_t, divided by 100: 1.01·w_t, then Σ_c |·|
    np.testing.assert_allclose(heat.numpy(), (1.01 * w[t]).abs().sum(1, keepdim=True).numpy(), rtol=1e-7)
    signed = IntegratedGradients(model, multiply_by_inputs=True, absolute=False).attribute(x, t)
    np.testing.assert_allclose(signed.numpy(), (1.01 * w[t] * x).sum(1, keepdim=True).numpy(), rtol=1e-7)


def test_integrated_gradients_excludes_nothing_but_the_relu_kink():
    # f = v·relu(a·x): the gradient is v·a on every point k/100·x with k ≥ 1 and 0 at k = 0 (relu'(0) = 0),
    # so the reference's sum is exactly 100·v·a/100 = v·a.
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 1, bias=False), nn.ReLU(), nn.Linear(1, 2, bias=False))
    model = model.to(D).eval()
    x = torch.randn(1, 2, 3, 3, dtype=D)
    a, v = model[1].weight.detach().reshape(2, 3, 3), model[3].weight.detach()[1, 0]
    if float((a * x[0]).sum()) < 0:
        x = -x
    heat = IntegratedGradients(model, absolute=False).attribute(x, 1)
    np.testing.assert_allclose(heat[0, 0].numpy(), (v * a).sum(0).numpy(), rtol=1e-7)


def test_integrated_gradients_matches_the_reference_loop(vgg):
    x = images(1, 8, seed=14)
    steps = 20
    grads = []
    for k in range(steps + 1):
        xk = (x * (k / steps)).requires_grad_(True)
        (g,) = torch.autograd.grad(vgg(xk)[0, 3], xk)
        grads.append(g / steps)
    ref = sum(grads).abs().sum(1, keepdim=True)
    ours = IntegratedGradients(vgg, steps=steps).attribute(x, 3)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


def test_smoothgrad_matches_the_reference_loop(vgg):
    x = images(1, 8, seed=15)
    n, level = 6, 4.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        sigma = level / (x.max() - x.min()).item()
        total = torch.zeros_like(x)
        for _ in range(n):
            noisy = (x + x.new(x.size()).normal_(0, sigma ** 2)).requires_grad_(True)
            (g,) = torch.autograd.grad(vgg(noisy)[0, 2], noisy)
            total = total + g
        ref = (total / n).abs().sum(1, keepdim=True)
    ours = SmoothGrad(vgg, n_samples=n, noise_level=level, seed=7, batch_size=4).attribute(x, 2)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max()))


def test_smoothgrad_of_a_linear_model_is_the_absolute_weight():
    model = _linear_model(2)
    x = torch.randn(2, 2, 3, 3, dtype=D)
    w = model[1].weight.detach().reshape(4, 2, 3, 3)
    heat = SmoothGrad(model, n_samples=5).attribute(x, torch.tensor([0, 2]))
    np.testing.assert_allclose(heat.numpy(), w[[0, 2]].abs().sum(1, keepdim=True).numpy(), rtol=1e-12)


def test_gradient_shap_of_a_linear_model_and_restored_generators():
    model = _linear_model(3)
    x = torch.randn(2, 2, 3, 3, dtype=D)
    w = model[1].weight.detach().reshape(4, 2, 3, 3)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    heat = GradientShap(model, n_samples=4).attribute(x, torch.tensor([3, 1]))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    # zero baseline and a constant gradient: E[∇] ⊙ (x − 0) = w_t ⊙ x, summed over channels (signed)
    np.testing.assert_allclose(heat.numpy(), (w[[3, 1]] * x).sum(1, keepdim=True).numpy(), rtol=1e-10)


def test_gradient_shap_is_seeded(vgg):
    x = images(1, 8)
    a = GradientShap(vgg, stdevs=0.1, seed=3).attribute(x, 1)
    b = GradientShap(vgg, stdevs=0.1, seed=3).attribute(x, 1)
    c = GradientShap(vgg, stdevs=0.1, seed=4).attribute(x, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ALL_METHODS)
def test_bad_inputs_are_rejected(method, vgg):
    explainer = METHODS[method](vgg)
    x = images(2, 8)
    with pytest.raises(ValueError, match="4-D"):
        explainer.attribute(x[0])
    with pytest.raises(TypeError, match="floating-point"):
        explainer.attribute(x.long())
    with pytest.raises(ValueError, match="NaN"):
        explainer.attribute(torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="out of range"):
        explainer.attribute(x, 5)
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        explainer.attribute(x, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="float32 but the model's parameters are torch.float64"):
        explainer.attribute(x.float())


def test_bad_options_are_rejected(vgg):
    with pytest.raises(ValueError, match="alpha must be >= 1"):
        LRP(vgg, alpha=0.5)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        LRP(vgg, alpha="2")
    with pytest.raises(TypeError, match="fold_batchnorm must be a bool"):
        LRP(vgg, fold_batchnorm="yes")
    with pytest.raises(ValueError, match="no module named 'nope'"):
        GradCAM(vgg, layer="nope")
    with pytest.raises(ValueError, match="needs a B×C×h×w feature map.*classifier.0"):
        GradCAM(vgg, layer="classifier.0").attribute(images(1, 8))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        IntegratedGradients(vgg, steps=0)
    with pytest.raises(TypeError, match="internal_batch_size must be an int"):
        IntegratedGradients(vgg, internal_batch_size=True)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        SmoothGrad(vgg, n_samples=0)
    with pytest.raises(ValueError, match="noise_level must be >= 0"):
        SmoothGrad(vgg, noise_level=-1.0)
    with pytest.raises(ValueError, match="baselines have shape"):
        GradientShap(vgg, baselines=torch.zeros(2, 3, 4, 4, dtype=D)).attribute(images(1, 8))
    with pytest.raises(ValueError, match="unknown method 'lrp0'"):
        sslx.explain(vgg, images(1, 8), method="lrp0")


def test_unfoldable_batchnorm_is_rejected():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    with pytest.raises(UnsupportedOperationError, match="cannot fold BatchNorm '0'"):
        LRP(model.eval(), fold_batchnorm=True)


def test_clrp_warns_when_the_dual_relevance_vanishes():
    model = _linear_model(4)
    x = torch.zeros(1, 2, 3, 3, dtype=D)  # every input relevance is zero, for both maps
    with pytest.warns(RuntimeWarning, match="sums to zero"):
        heat = CLRP(model).attribute(x, 0)
    assert torch.equal(heat, torch.zeros_like(heat))


def test_explain_dispatches_every_baseline(vgg):
    x = images(1, 8)
    assert {"lrp", "lrp_ab", "clrp", "sglrp", "rap", "gradcam", "fullgrad", "integrated_gradients",
            "smoothgrad", "gradient_shap"} <= set(METHODS)
    torch.testing.assert_close(sslx.explain(vgg, x, 2, method="lrp_ab"), LRP(vgg, alpha=2).attribute(x, 2),
                               rtol=0, atol=0)
