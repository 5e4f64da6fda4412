"""The LRP family (LRP-αβ, CLRP, SGLRP) as rules on the propagation engine, with the reference's semantics.

The rules reproduce the authors' baseline code (github.com/shirgur/AGFVisualization,
`modules/layers_rap.py`), see ../shared/golden/README.md, section "Baselines":

* Conv2d (except the first) and Linear: LRP-αβ without bias, β = α − 1. Positive and negative inputs
  each form their own denominators, and the whole signed relevance goes through both the activator
  and the inhibitor term (R is not split by sign).
* The convolution touching the image: z^B with per-image bounds (min and max over channels and pixels).
* ReLU, Dropout: identity. Max/avg pooling and the residual add: z-rule through the op's own gradient.
* BatchNorm: the reference's near-identity rule R·xw/(xw + 1e-9) with w = γ/sqrt(running_var² + eps)
  (sic: the variance is squared), or, with `fold_batchnorm=True`, canonical LRP: BN folded into the
  preceding convolution/linear layer (w = γ/sqrt(running_var + eps)) and the αβ rule on the folded weights.
* A tensor used by several layers (ResNet forks) receives the plain sum of their relevances.
"""
from __future__ import annotations

import numbers
import warnings
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .convops import conv_forward, conv_transpose
from .forward import run_model
from .graph import CONV, LINEAR, NORM, PASS, RELU, ModelGraph, Step, UnsupportedOperationError
from .numerics import STABILIZER, per_image_max, per_image_min, per_image_sum, safe_divide
from .propagation import plain_sum, propagate, structural_rule

# A relevance rule: (step, input values, output value, relevance at the output) -> relevance per input.
RelevanceRule = Callable[[Step, list, Tensor, Tensor], list]


# -- the walk and the forward pass shared by the LRP family and RAP --------------------------------
def propagate_relevance(graph: ModelGraph, env: dict[fx.Node, Any], start: fx.Node, relevance: Tensor,
                        rule: RelevanceRule) -> Tensor:
    """Walk backwards from `start` (whose step the rule also handles) and return the input's relevance.

    A tensor read by several layers gets the plain sum of what they send back, as the reference's
    residual blocks do (`x1 + x`), not AGF's X ⊙ safe_divide(ΣR, X) merge.
    """
    def relevance_only(step, inputs, y, r, g):
        return rule(step, inputs, y, r), [None] * len(step.inputs)

    return propagate(graph, env, start, relevance, None, relevance_only, merge=plain_sum)


def one_hot(logits: Tensor, target: Tensor) -> Tensor:
    """B×K indicator of each image's target class, in the logits' dtype."""
    return torch.zeros_like(logits).scatter_(1, target[:, None], 1.0)


def target_relevance(logits: Tensor, target: Tensor) -> Tensor:
    """The reference's `clrp_target`: the target's logit at its index, 0 elsewhere."""
    return one_hot(logits, target) * logits


# -- rules ----------------------------------------------------------------------------------------
def _per_channel(v: Tensor, ndim: int) -> Tensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def affine_forward(step: Step, x: Tensor, weight: Tensor) -> Tensor:
    """The Conv2d/Linear step's map applied with another weight, without bias."""
    return conv_forward(step.module, x, weight) if step.kind == CONV else F.linear(x, weight)


def affine_adjoint(step: Step, s: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
    """The adjoint (transpose) of `affine_forward`, back to the input's shape."""
    return conv_transpose(step.module, s, weight, input_shape) if step.kind == CONV else s @ weight


def alpha_beta_rule(step: Step, x: Tensor, weight: Tensor, r: Tensor, alpha: float, beta: float) -> Tensor:
    """LRP-αβ without bias: α·f(W⁺, W⁻) − β·f(W⁻, W⁺); f sums the x⁺ and x⁻ parts, each with its own Z."""
    negative_inputs = bool((x < 0).any())  # the x⁻ part is exactly zero for non-negative inputs
    wp = weight.clamp(min=0)
    wn = weight.clamp(max=0) if beta != 0 or negative_inputs else None
    out = _alpha_beta_part(step, x.clamp(min=0), wp, wn, r, alpha, beta)
    if negative_inputs:
        out = out + _alpha_beta_part(step, x.clamp(max=0), wn, wp, r, alpha, beta)
    return out


def _alpha_beta_part(step: Step, x1: Tensor, w_act: Tensor, w_inh: Tensor | None, r: Tensor, alpha: float,
                     beta: float) -> Tensor:
    """x1 ⊙ (α·W_actᵀ sd(R, W_act·x1) − β·W_inhᵀ sd(R, W_inh·x1))."""
    s = safe_divide(r, affine_forward(step, x1, w_act))
    back = affine_adjoint(step, s if alpha == 1 else alpha * s, w_act, x1.shape)
    if beta != 0:
        s_inh = safe_divide(r, affine_forward(step, x1, w_inh))
        back = back - affine_adjoint(step, beta * s_inh, w_inh, x1.shape)
    return x1 * back


def zb_rule(step: Step, x: Tensor, r: Tensor, stabilized: bool, weight: Tensor | None = None) -> Tensor:
    """z^B with per-image bounds L, H (min/max over channels and pixels) for the image-facing conv.

    `stabilized=True` is the reference's LRP form (Z + 1e-9, plain division), False its RAP form
    (safe_divide, no +1e-9). `weight` replaces the conv's own weight (a folded BatchNorm).
    """
    m = step.module
    w = m.weight if weight is None else weight
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    low, high = per_image_min(x), per_image_max(x)
    ones = torch.ones_like(x[:1])
    z = conv_forward(m, x, w) - low * conv_forward(m, ones, wp) - high * conv_forward(m, ones, wn)
    s = r / (z + STABILIZER) if stabilized else safe_divide(r, z)
    if m.groups == 1:  # the three adjoints as one call
        back = conv_transpose(m, s, torch.cat([w, wp, wn], dim=1), (x.shape[0], 3 * x.shape[1]) + x.shape[2:])
        bw, bp, bn = back.split(x.shape[1], dim=1)
    else:
        bw, bp, bn = (conv_transpose(m, s, v, x.shape) for v in (w, wp, wn))
    return x * bw - low * bp - high * bn


def reference_norm_scale(module: nn.Module, ndim: int) -> Tensor:
    """The reference's BatchNorm weight γ / sqrt(running_var² + eps) (sic), broadcastable."""
    scale = (module.running_var.pow(2) + module.eps).pow(0.5)
    gamma = module.weight if module.weight is not None else torch.ones_like(scale)
    return _per_channel(gamma / scale, ndim)


def norm_rule(step: Step, x: Tensor, r: Tensor) -> Tensor:
    """The reference's BatchNorm rule: X ⊙ w ⊙ R / (X ⊙ w + 1e-9) (≈ identity)."""
    w = reference_norm_scale(step.module, x.dim())
    return x * (r / (x * w + STABILIZER) * w)


def fold_scales(graph: ModelGraph) -> dict[fx.Node, Tensor]:
    """Per-output-unit factors γ/sqrt(var + eps) of each BatchNorm, keyed by the layer it folds into."""
    consumers = graph.consumers()
    scales: dict[fx.Node, Tensor] = {}
    for node, step in graph.steps.items():
        if step.kind != NORM:
            continue
        src = step.inputs[0]
        if graph.steps[src].kind not in (CONV, LINEAR) or len(consumers.get(src, [])) != 1:
            raise UnsupportedOperationError(
                f"cannot fold BatchNorm '{node.target}' into a preceding Conv2d/Linear: its input comes from "
                f"'{src.name}' ({graph.steps[src].kind}); use fold_batchnorm=False")
        m = step.module
        scale = torch.rsqrt(m.running_var + m.eps)
        scales[src] = scale * m.weight if m.weight is not None else scale
    return scales


class LRPRules:
    """LRP-αβ / z^B / reference BatchNorm rules for one traced model (optionally with BatchNorm folded)."""

    def __init__(self, graph: ModelGraph, alpha: float, fold_batchnorm: bool):
        self.alpha, self.beta = float(alpha), float(alpha) - 1.0
        self.folded = fold_scales(graph) if fold_batchnorm else {}
        self.fold_batchnorm = fold_batchnorm

    def weight(self, step: Step) -> Tensor:
        """The layer's weight, scaled by the folded BatchNorm's factors where one follows it."""
        w = step.module.weight
        scale = self.folded.get(step.node)
        return w if scale is None else w * scale.reshape((-1,) + (1,) * (w.dim() - 1))

    def __call__(self, step: Step, inputs: list, y: Tensor, r: Tensor) -> list:
        kind = step.kind
        if kind in (RELU, PASS):
            return [r]
        if kind == NORM:
            return [r] if self.fold_batchnorm else [norm_rule(step, inputs[0], r)]
        if kind == CONV and step.role == "first":
            return [zb_rule(step, inputs[0], r, stabilized=True, weight=self.weight(step))]
        if kind in (CONV, LINEAR):
            return [alpha_beta_rule(step, inputs[0], self.weight(step), r, self.alpha, self.beta)]
        generic = structural_rule(step, inputs, y, r, None)
        if generic is None:
            raise NotImplementedError(f"LRP has no rule for {kind} step '{step.node.name}'")
        return generic[0]


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number >= 1, got {type(alpha).__name__}")
    if not alpha >= 1:  # also rejects NaN
        raise ValueError(f"alpha must be >= 1 (beta = alpha - 1 must be non-negative), got {alpha}")
    return float(alpha)


# -- methods --------------------------------------------------------------------------------------
class LRP:
    """LRP-αβ heatmaps (α=1: "lrp", α=2: "lrp_ab"); `attribute` returns the signed, unnormalised B×1×H×W map.

    The map is Σ_c of the input relevance for R = one_hot(t)·logits, in logit units.
    `fold_batchnorm=True` gives canonical LRP. For α=1 it equals zennit's
    `SpecialFirstLayerMapComposite(layer_map=layer_map_base(s) + [((Convolution, Linear), ZPlus(s,
    zero_params="bias"))], first_map=[(Convolution, ZBox(L, H, s, zero_params="bias"))],
    canonizers=[VGGCanonizer() or ResNetCanonizer()])` with the stabiliser s(z) = z + 1e-9, per-image
    L = min x and H = max x, and the same initial relevance. Max-pooling is the one difference: here it uses
    the z-rule, in zennit the plain gradient, so the two differ by O(1e-9 / pooled value) (checked to 1e-5
    in tests/test_baselines.py). zennit's own `EpsilonPlusFlat` differs: ε-rule on Linear layers, flat
    rule on the first one. When every BatchNorm scale γ is positive, folding leaves the map unchanged
    (αβ's ratios are invariant to positive per-unit scales), as with the golden weights.
    """

    def __init__(self, model: nn.Module, alpha: float = 1, *, fold_batchnorm: bool = False):
        if not isinstance(fold_batchnorm, bool):
            raise TypeError(f"fold_batchnorm must be a bool, got {type(fold_batchnorm).__name__}")
        self.model = model
        self.graph = ModelGraph(model)
        self.rules = LRPRules(self.graph, _check_alpha(alpha), fold_batchnorm)

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Heatmaps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        env, logits, t = run_model(self.graph, x, target)
        return self.input_relevance(env, target_relevance(logits, t)).sum(dim=1, keepdim=True)

    def input_relevance(self, env: dict[fx.Node, Any], relevance: Tensor) -> Tensor:
        """Relevance B×C×H×W at the image for a B×K relevance at the logits."""
        with torch.no_grad():
            return propagate_relevance(self.graph, env, self.graph.head.node, relevance, self.rules)


class _ContrastiveLRP(LRP):
    """Target map minus the total-matched map of a dual relevance (CLRP and SGLRP)."""

    def __init__(self, model: nn.Module, *, fold_batchnorm: bool = False):
        super().__init__(model, 1, fold_batchnorm=fold_batchnorm)

    def initial_relevances(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """(target relevance, dual relevance) at the logits, each B×K."""
        raise NotImplementedError

    def attribute(self, x: Tensor, target: Any = None) -> Tensor:
        """Heatmaps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        env, logits, t = run_model(self.graph, x, target)
        r_target, r_dual = self.initial_relevances(logits, t)
        phi_t = self.input_relevance(env, r_target)
        phi_o = self.input_relevance(env, r_dual)
        total_t, total_o = per_image_sum(phi_t), per_image_sum(phi_o)
        dead = (total_o == 0).flatten()
        if bool(dead.any()):
            warnings.warn(f"the dual relevance of images {dead.nonzero().flatten().tolist()} sums to zero, so "
                          "it cannot be matched to the target's total; their maps are the target map alone",
                          RuntimeWarning, stacklevel=2)
        rscale = torch.where(total_o != 0, total_t / torch.where(total_o != 0, total_o, 1.0), 0.0)
        return (phi_t - phi_o * rscale).sum(dim=1, keepdim=True)


class CLRP(_ContrastiveLRP):
    """Contrastive LRP: the target's LRP-α1β0 map minus that of the target logit spread over all other classes."""

    def initial_relevances(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Target: its logit at its index. Dual: logit_t / (K − 1) on every other class."""
        hot = one_hot(logits, target)
        dual = (1 - hot) / (logits.shape[1] - 1) * logits.gather(1, target[:, None])
        return hot * logits, dual


class SGLRP(_ContrastiveLRP):
    """Softmax-gradient LRP. Unlike the reference (which fails for batches with a given class), per image."""

    def initial_relevances(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Target: p_t(1 − p_t) + 1e-8 at its index. Dual: p_t·p_j on every other class j."""
        p = torch.softmax(logits, dim=1)
        hot = one_hot(logits, target)
        return hot * (p * (1 - p) + 1e-8), (1 - hot) * p.gather(1, target[:, None]) * p


__all__ = ["LRP", "CLRP", "SGLRP", "LRPRules", "propagate_relevance", "alpha_beta_rule", "zb_rule",
           "norm_rule", "run_model", "target_relevance"]
