"""Gradient baselines: Grad-CAM, FullGrad, integrated gradients, SmoothGrad and GradientSHAP.

Defaults follow the authors' baseline code (github.com/shirgur/AGFVisualization, `baselines/`), see
../shared/golden/README.md, "Baselines". Every method runs the model through its traced graph
(`ModelGraph.run`: BatchNorm with running statistics, Dropout off) whatever the model's train/eval
mode, and never changes the model.
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .graph import ADD_CONST, CONV, INPUT, LINEAR, META, NORM, PASS, POOL, RELU, RESHAPE, SMOOTH, ModelGraph
from .lrp import run_model
from .numerics import per_image_max, per_image_min


# -- shared helpers -------------------------------------------------------------------------------
def target_score(logits: Tensor, target: Tensor) -> Tensor:
    """Σ_b logits[b, t_b]: its gradient is each image's own target gradient (images are independent)."""
    return logits.gather(1, target[:, None]).sum()


def channel_map(attribution: Tensor, absolute: bool) -> Tensor:
    """B×C×H×W attribution → B×1×H×W: Σ_c |a| (absolute) or Σ_c a."""
    return (attribution.abs() if absolute else attribution).sum(dim=1, keepdim=True).detach()


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def _positive_int(name: str, value: object) -> int:
    if _int(name, value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _finite_float(name: str, value: object, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _divide_by_max(t: Tensor) -> Tensor:
    """Each image divided by its maximum; an image whose maximum is not positive becomes all zero."""
    top = per_image_max(t)
    return torch.where(top > 0, t / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(t))


def _module_paths(node: fx.Node) -> set[str]:
    paths = set()
    for key, value in node.meta.get("nn_module_stack", {}).items():
        paths.add(value[0] if isinstance(value, tuple) else key.split("@")[0])
    return paths


def find_layer(graph: ModelGraph, name: str) -> fx.Node:
    """The graph node giving the output of the module called `name` (its last call if called several times)."""
    if not isinstance(name, str):
        raise TypeError(f"layer must be a module name (str), got {type(name).__name__}")
    nodes = [n for n, s in graph.steps.items() if s.kind not in (INPUT, META)]
    calls = [n for n in nodes if n.op == "call_module" and n.target == name]
    inside = calls or [n for n in nodes if name in _module_paths(n)]
    if not inside:
        names = [n for n, _ in graph.model.named_modules() if n]
        shown = ", ".join(names[-12:])
        raise ValueError(f"no module named {name!r} in the model's traced graph; the last modules are: {shown}")
    return inside[-1]


def default_cam_layer(graph: ModelGraph) -> fx.Node:
    """The last feature map before the head's pooling: walk back from the head over the classifier
    (Linear, BatchNorm1d, ReLU, Dropout, flatten) and the pooling that feeds it (VGG: its last max-pool)."""
    def in_classifier(step: Any) -> bool:
        vector_norm = step.kind == NORM and isinstance(step.module, nn.BatchNorm1d)
        return (step.kind in (LINEAR, RELU, PASS, RESHAPE, ADD_CONST, SMOOTH) or vector_norm) and bool(step.inputs)

    node = graph.head.inputs[0]
    while in_classifier(graph.steps[node]):
        node = graph.steps[node].inputs[0]
    if graph.steps[node].kind == POOL:
        node = graph.steps[node].inputs[0]
    return node


# -- Grad-CAM ---------------------------------------------------------------------------------------
class GradCAM:
    """Grad-CAM: ReLU(Σ_k mean_hw(∂y_t/∂A_k)·A_k), divided by its per-image max, bilinearly resized to x.

    The default layer is the last feature map before the head's pooling (VGG: the last max-pool,
    `features.36` of VGG-19, as the reference's `target_layer=36`; ResNet: the output of `layer4`);
    `layer` takes any module name instead. An image whose map is all zero gets zeros, where the
    reference divides 0 by 0.
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.model = model
        self.graph = ModelGraph(model)
        self.layer_node = default_cam_layer(self.graph) if layer is None else find_layer(self.graph, layer)

    @property
    def layer(self) -> str:
        """The graph node whose output is explained."""
        return str(self.layer_node.target if self.layer_node.op == "call_module" else self.layer_node.name)

    @torch.enable_grad()
    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Maps B×1×H×W in [0, 1] for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        env, logits, t = run_model(self.graph, x, target, with_grad=True)
        a = env[self.layer_node]
        if not isinstance(a, Tensor) or a.dim() != 4:
            raise ValueError(f"Grad-CAM needs a B×C×h×w feature map, but layer '{self.layer}' gives "
                             f"shape {tuple(getattr(a, 'shape', ()))}")
        (g,) = torch.autograd.grad(target_score(logits, t), a)
        cam = torch.relu((a * g.mean(dim=(2, 3), keepdim=True)).sum(dim=1, keepdim=True)).detach()
        return F.interpolate(_divide_by_max(cam), size=x.shape[2:], mode="bilinear", align_corners=False)


# -- FullGrad ---------------------------------------------------------------------------------------
def bias_terms(graph: ModelGraph) -> list[tuple[fx.Node, fx.Node | None]]:
    """(feature node, affine layer it folds) for every explicit bias: a Conv2d/Linear output (its bias),
    or a BatchNorm output (its effective bias on a zero input, the preceding layer's bias included)."""
    consumers = graph.consumers()
    terms: list[tuple[fx.Node, fx.Node | None]] = []
    folded: set[fx.Node] = set()
    for node, step in graph.steps.items():
        if step.kind in (CONV, LINEAR):
            users = consumers.get(node, [])
            if len(users) == 1 and graph.steps[users[0]].kind == NORM:
                terms.append((users[0], node))
                folded.add(users[0])
            elif step.module.bias is not None:
                terms.append((node, None))
        elif step.kind == NORM and node not in folded:
            terms.append((node, None))
    return terms


def effective_bias(graph: ModelGraph, feature: fx.Node, affine: fx.Node | None, ndim: int) -> Tensor:
    """The feature's value on a zero input to its block, 1×C×1×1 (or 1×C), in the parameters' dtype."""
    step = graph.steps[feature]
    m = step.module
    if step.kind != NORM:
        return m.bias.detach().reshape((1, -1) + (1,) * (ndim - 2))
    channels = m.running_mean.shape[0]
    pre_bias = graph.steps[affine].module.bias if affine is not None else None
    pre = (pre_bias.detach() if pre_bias is not None else torch.zeros_like(m.running_mean)).reshape(1, channels)
    out = F.batch_norm(pre, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
    return out.detach().reshape((1, channels) + (1,) * (ndim - 2))


def _rescale(t: Tensor) -> Tensor:
    """FullGrad's post-processing per image: |t| minus its minimum, divided by its maximum."""
    a = t.abs()
    return _divide_by_max(a - per_image_min(a))


class FullGrad:
    """FullGrad saliency: rescaled |∇x ⊙ x| plus the rescaled, resized |∇b ⊙ b| of every 4-D bias term.

    Bias terms: each convolution's bias (VGG) or each BatchNorm's effective bias on a zero input
    (ResNet: stem, bottleneck branches, downsample paths); Linear biases enter `decompose` but not the
    map, as in the reference. Unlike the reference, every image uses its own input gradient (the reference
    uses the first image's for the whole batch) and is rescaled on its own (the reference rescales over
    the whole batch), so a batch gives the same maps as its images one by one. A term that is constant
    over an image is 0 there (the reference divides 0 by 0).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.graph = ModelGraph(model)
        self.terms = bias_terms(self.graph)

    @torch.enable_grad()
    def decompose(self, x: Tensor, target: Any = None) -> tuple[Tensor, list[Tensor]]:
        """(∇x y_t, [∇f y_t ⊙ b_f per bias term]): y_t = Σ x⊙∇x + Σ of all bias terms for ReLU networks."""
        env, logits, t = run_model(self.graph, x, target, with_grad=True)
        features = [env[node] for node, _ in self.terms]
        grads = torch.autograd.grad(target_score(logits, t), [env[self.graph.input_node], *features],
                                    allow_unused=True)
        bias_grads = []
        for (node, affine), f, g in zip(self.terms, features, grads[1:]):
            bias = effective_bias(self.graph, node, affine, f.dim())
            bias_grads.append(torch.zeros_like(f) if g is None else (g * bias).detach())
        return grads[0].detach(), bias_grads

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Non-negative maps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        input_grad, bias_grads = self.decompose(x, target)
        cam = _rescale(input_grad * x).sum(dim=1, keepdim=True)
        for bias_grad in bias_grads:
            if bias_grad.dim() == 4:  # summing channels before the (linear) resize is the same map, cheaper
                term = _rescale(bias_grad).sum(dim=1, keepdim=True)
                cam = cam + F.interpolate(term, size=x.shape[2:], mode="bilinear", align_corners=False)
        return cam


# -- integrated gradients, SmoothGrad, GradientSHAP -------------------------------------------------
def _graph_forward(graph: ModelGraph):
    head = graph.head.node
    return lambda inputs: graph.run(inputs)[head]


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's and numpy's global generators (captum draws from them), restoring both afterwards."""
    state = np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(state)


class IntegratedGradients:
    """Integrated gradients through captum, by default with the reference's semantics.

    Reference (`baselines/integrated_gradients.py`, steps=100): Σ_{k=0..steps} ∂y_t/∂x at
    b + (k/steps)(x − b), each divided by `steps` (steps + 1 points, both ends included, divided by steps,
    not steps + 1), zero baseline b, not multiplied by the input, then Σ_c |·|. captum's left Riemann
    sum with steps + 1 points on the path to b + (x − b)(steps + 1)/steps visits exactly these points, and
    its average times (steps + 1)/steps is the reference's sum. captum builds the step fractions in float32,
    so in float64 the points are exact to ~1e-8 relative.
    """

    def __init__(self, model: nn.Module, steps: int = 100, baseline: float = 0.0, *,
                 multiply_by_inputs: bool = False, absolute: bool = True, internal_batch_size: int = 16):
        self.model = model
        self.graph = ModelGraph(model)
        self.steps = _positive_int("steps", steps)
        self.baseline = _finite_float("baseline", baseline)
        self.multiply_by_inputs = _check_bool("multiply_by_inputs", multiply_by_inputs)
        self.absolute = _check_bool("absolute", absolute)
        self.internal_batch_size = _positive_int("internal_batch_size", internal_batch_size)

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Maps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        from captum.attr import IntegratedGradients as CaptumIG

        _, _, t = run_model(self.graph, x, target)
        base = torch.full_like(x, self.baseline)
        points = self.steps + 1
        stretched = base + (x - base) * (points / self.steps)
        ig = CaptumIG(_graph_forward(self.graph), multiply_by_inputs=False)
        mean_grad = ig.attribute(stretched, baselines=base, target=t, n_steps=points, method="riemann_left",
                                 internal_batch_size=max(self.internal_batch_size, x.shape[0]))
        total = mean_grad * (points / self.steps)
        if self.multiply_by_inputs:
            total = total * (x - base)
        return channel_map(total, self.absolute)


class SmoothGrad:
    """SmoothGrad with the reference's semantics (`baselines/smooth_grad.py`, 50 samples, multiplier 4).

    σ = noise_level / (max x − min x) per image, noise N(0, σ²) (the reference passes σ² as the standard
    deviation), mean of ∂y_t/∂(x + noise) over the samples, then Σ_c |·|. Draws come from a private
    generator seeded with `seed`, one x-shaped draw per sample in order, so for one image they equal the
    reference's after `torch.manual_seed(seed)`; the reference takes σ over the whole batch, here per
    image (a constant image gets no noise). (captum's NoiseTunnel cannot reproduce this: it draws float32 noise for all samples at once
    from the global generator, with one σ for the batch.)
    """

    def __init__(self, model: nn.Module, n_samples: int = 50, noise_level: float = 4.0, *, absolute: bool = True,
                 seed: int = 0, batch_size: int = 8):
        self.model = model
        self.graph = ModelGraph(model)
        self.n_samples = _positive_int("n_samples", n_samples)
        self.noise_level = _finite_float("noise_level", noise_level, minimum=0.0)
        self.absolute = _check_bool("absolute", absolute)
        self.seed = _int("seed", seed)
        self.batch_size = _positive_int("batch_size", batch_size)  # noisy images per forward pass

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Maps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        _, _, t = run_model(self.graph, x, target)
        spread = per_image_max(x) - per_image_min(x)
        sigma = torch.where(spread > 0, self.noise_level / torch.where(spread > 0, spread, 1.0), 0.0)
        std = sigma * sigma
        generator = torch.Generator(device=x.device)
        generator.manual_seed(self.seed)
        total = torch.zeros_like(x)
        head = self.graph.head.node
        per_pass = max(1, self.batch_size // x.shape[0])  # noisy copies of the batch per forward pass
        for start in range(0, self.n_samples, per_pass):
            k = min(per_pass, self.n_samples - start)
            noise = torch.stack([torch.empty_like(x).normal_(0.0, 1.0, generator=generator) for _ in range(k)])
            noisy = (x + noise * std).reshape((k * x.shape[0],) + x.shape[1:]).requires_grad_(True)
            with torch.enable_grad():
                logits = self.graph.run(noisy)[head]
                (g,) = torch.autograd.grad(target_score(logits, t.repeat(k)), noisy)
            total = total + g.reshape((k,) + x.shape).sum(dim=0)
        return channel_map(total / self.n_samples, self.absolute)


class GradientShap:
    """GradientSHAP through captum: E[∇y_t at b + α(x + ε − b)] ⊙ (x − b) over baselines b, α ~ U(0, 1).

    No reference exists; defaults are captum's (5 samples, no noise) with a zero baseline, and the map is
    the signed channel sum (its total approximates y_t(x) − E_b y_t(b)). `baselines` is a float (a
    constant image) or a K×C×H×W tensor to draw from. captum draws from torch's and numpy's global
    generators: they are seeded with `seed` for the call and restored afterwards.
    """

    def __init__(self, model: nn.Module, baselines: float | Tensor = 0.0, n_samples: int = 5, stdevs: float = 0.0,
                 *, absolute: bool = False, seed: int = 0):
        self.model = model
        self.graph = ModelGraph(model)
        if isinstance(baselines, Tensor):
            if baselines.dim() != 4 or baselines.shape[0] == 0 or not baselines.is_floating_point():
                raise ValueError(f"baselines must be a float or a non-empty floating K×C×H×W tensor, got "
                                 f"shape {tuple(baselines.shape)} dtype {baselines.dtype}")
            self.baselines: float | Tensor = baselines
        else:
            self.baselines = _finite_float("baselines", baselines)
        self.n_samples = _positive_int("n_samples", n_samples)
        self.stdevs = _finite_float("stdevs", stdevs, minimum=0.0)
        self.absolute = _check_bool("absolute", absolute)
        self.seed = _int("seed", seed)

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Maps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        from captum.attr import GradientShap as CaptumGradientShap

        _, _, t = run_model(self.graph, x, target)
        if isinstance(self.baselines, Tensor):
            if self.baselines.shape[1:] != x.shape[1:]:
                raise ValueError(f"baselines have shape {tuple(self.baselines.shape)}, expected K×"
                                 f"{'×'.join(map(str, x.shape[1:]))} to match x")
            base = self.baselines.to(dtype=x.dtype, device=x.device)
        else:
            base = torch.full_like(x[:1], self.baselines)
        with _seeded(self.seed, x.device):
            attr = CaptumGradientShap(_graph_forward(self.graph)).attribute(
                x, baselines=base, n_samples=self.n_samples, stdevs=self.stdevs, target=t)
        return channel_map(attr, self.absolute)


__all__ = ["GradCAM", "FullGrad", "IntegratedGradients", "SmoothGrad", "GradientShap", "find_layer",
           "default_cam_layer", "bias_terms"]
