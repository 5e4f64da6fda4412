"""The backward walk: carry relevance (and optionally the gradient) from the head to the input."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .convops import int_pair
from .graph import (ADD, ADD_CONST, INPUT, NORM, PASS, POOL, RELU, RESHAPE, SMOOTH, ModelGraph, Step, max_pool_args,
                    max_pool_with_indices, norm_scale)
from .numerics import STABILIZER, safe_divide, scale_by_quotient, scale_by_quotient_

Grad = Optional[Tensor]
# A rule maps (step, input values, output value, relevance at the output, gradient at the output)
# to per-input relevances and gradients.
Rule = Callable[[Step, list, Tensor, Tensor, Grad], tuple[list, list]]


def propagate(graph: ModelGraph, env: dict[fx.Node, Any], start: fx.Node, relevance: Tensor,
              grad: Grad, rule: Rule, merge: Callable[[Tensor, list[Tensor]], Tensor] | None = None,
              release: bool = False) -> Tensor:
    """Walk the graph backwards from `start` and return the input's relevance.

    A tensor read by several layers merges their relevance with `merge(value, parts)`; the default is
    AGF's X ⊙ safe_divide(ΣR_i, X) (the reference's Clone), `plain_sum` is what its LRP code does.
    With `release`, each node's value is dropped from `env` once its step is done (no later step reads it).
    """
    rel: dict[fx.Node, list[Tensor]] = {start: [relevance]}
    grads: dict[fx.Node, list[Tensor]] = {start: [grad]} if grad is not None else {}
    for node in reversed(list(graph.steps)):
        if node not in rel:
            continue
        step = graph.steps[node]
        parts = rel.pop(node)
        value = env[node]
        if len(parts) == 1:
            r = parts[0]
        else:
            r = fork_relevance(value, parts, step.kind == RELU) if merge is None else merge(value, parts)
        g_parts = grads.pop(node, None)
        g = None if g_parts is None else _total(g_parts)
        if step.kind == INPUT:
            return r
        inputs = [env[i] for i in step.inputs]
        r_in, g_in = rule(step, inputs, value, r, g)
        del r, g, parts, g_parts, value, inputs
        if release:
            env.pop(node, None)
        for i, ri, gi in zip(step.inputs, r_in, g_in):
            rel.setdefault(i, []).append(ri)
            if gi is not None:
                grads.setdefault(i, []).append(gi)
    raise RuntimeError("relevance never reached the model's input: the head is not connected to the image")


def fork_relevance(value: Tensor, parts: list[Tensor], nonnegative: bool = False) -> Tensor:
    """Merge the relevance of a tensor used by several layers: X ⊙ safe_divide(ΣR_i, X) (`nonnegative`: X >= 0)."""
    total = _total(parts) if len(parts) > 1 else parts[0].clone()  # a buffer of our own, overwritten below
    return scale_by_quotient_(value, total, nonnegative)


def plain_sum(value: Tensor, parts: list[Tensor]) -> Tensor:
    """Merge the relevance of a tensor used by several layers as the plain sum ΣR_i."""
    return _total(parts)


def _total(parts: list[Tensor]) -> Tensor:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def vjp(step: Step, x: Tensor, cotangents: list[Tensor], indices: Tensor | None = None) -> list[Tensor]:
    """Vector-Jacobian products of a single-input step's own function at x (`indices`: a max-pool's arg-max
    indices from the forward pass, when recorded)."""
    if step.kind == RELU:
        positive = torch.gt(x, 0, out=torch.empty_like(x))
        return [c * positive for c in cotangents]
    if isinstance(step.module, nn.MaxPool2d) and x.dim() == 4:
        return _max_pool_vjp(step.module, x, cotangents, indices)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = step.op(xg)
        return [torch.autograd.grad(y, xg, c, retain_graph=True)[0] for c in cotangents]


def _max_pool_vjp(m: nn.MaxPool2d, x: Tensor, cotangents: list[Tensor], indices: Tensor | None = None) -> list[Tensor]:
    """MaxPool2d's vector-Jacobian products from its arg-max indices (found here by one indices pass unless
    given; no autograd graph): each cotangent goes back to its window's arg-max, summed where windows overlap."""
    args = max_pool_args(m)
    if indices is None:
        _, indices = max_pool_with_indices(m, x)
    return [torch.ops.aten.max_pool2d_with_indices_backward(c, x, *args, indices) for c in cotangents]


def z_rule(step: Step, x: Tensor, y: Tensor, r: Tensor, g: Grad, indices: Tensor | None = None) -> tuple[list, list]:
    """LRP-0 through the step's own gradient: R_in = X ⊙ J^T safe_divide(R, Y ⊙ 1[R≠0]).

    The mask 1[R≠0] is implied: where R is 0 the quotient is 0 anyway. `indices`: see `vjp`.
    """
    # Disjoint max-pool windows: each input pixel feeds at most one window and is that window's output where it
    # is the arg-max, so X ⊙ Jᵀ(R/Y) = Jᵀ(Y ⊙ R/Y) bit for bit, the product taken on the pooled map.
    disjoint = _windows_disjoint(step.module)
    s = scale_by_quotient(y, r) if disjoint else safe_divide(r, y)
    back = vjp(step, x, [s] if g is None else [s, g], indices)
    return [back[0] if disjoint else x * back[0]], [None if g is None else back[1]]


def _windows_disjoint(m: Any) -> bool:
    """A MaxPool2d whose windows neither overlap nor dilate (every input pixel is read by at most one)."""
    if not isinstance(m, nn.MaxPool2d):
        return False
    kernel, stride = int_pair(m.kernel_size), int_pair(m.stride if m.stride is not None else m.kernel_size)
    return int_pair(m.dilation) == (1, 1) and all(s >= k for k, s in zip(kernel, stride))


def relu_rule(y: Tensor, r: Tensor, g: Grad) -> tuple[list, list]:
    """`z_rule` for ReLU from its output alone: R_in = Y ⊙ R / (Y + 1e-9) (0 where Y = 0), g_in = g ⊙ 1[Y>0]."""
    rel = torch.add(y, STABILIZER)  # Y >= 0: no zero denominators, and Y = 0 zeroes the product
    rel = torch.div(r, rel, out=rel).mul_(y)
    return [rel], [None if g is None else torch.ops.aten.threshold_backward(g, y, 0)]  # g ⊙ 1[Y>0], one pass


def norm_grad(step: Step, g: Grad) -> Grad:
    """Gradient through an inference-mode BatchNorm: g ⊙ γ / sqrt(var + eps)."""
    if g is None:
        return None
    return g * norm_scale(step.module).reshape((1, -1) + (1,) * (g.dim() - 2)).to(g.dtype)


def structural_rule(step: Step, inputs: list, y: Tensor, r: Tensor, g: Grad) -> tuple[list, list] | None:
    """Rules for the layers every method treats alike; None for the layers a method must define."""
    kind = step.kind
    if kind == PASS or kind == ADD_CONST:
        return [r], [g]
    if kind == NORM:
        return [r], [norm_grad(step, g)]
    if kind == RESHAPE:
        shape = inputs[0].shape
        return [r.reshape(shape)], [None if g is None else g.reshape(shape)]
    if kind == RELU:
        return relu_rule(y, r, g)
    if kind == POOL or kind == SMOOTH:
        return z_rule(step, inputs[0], y, r, g)
    if kind == ADD:
        a, b = inputs
        s = safe_divide(r, y)  # 1[R≠0] implied, as in z_rule
        return [a * s, b * s], [g, g]
    return None


def unsupported(step: Step) -> Any:
    """Raise for a step kind a method does not handle."""
    raise NotImplementedError(f"no rule for {step.kind} step '{step.node.name}'")


__all__ = ["propagate", "fork_relevance", "plain_sum", "z_rule", "relu_rule", "norm_grad", "structural_rule", "vjp"]
