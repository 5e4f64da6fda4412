"""AGF (Algorithm 1): attribution guided factorization on unmodified models, batched."""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torch import Tensor

from .agf_conv import conv_rule
from .agf_rules import RESIDUALS, AGFOptions, first_conv_zb, head_attribution, linear_rule
from .buffers import KernelBuffers
from .forward import run_model
from .graph import ADD, CONV, LINEAR, META, NORM, POOL, RELU, SMOOTH, ModelGraph, Step, norm_scale
from .numerics import divide_by_positive_part, per_image_max
from .propagation import Grad, propagate, structural_rule, z_rule


CPU_WALK_BYTES = 32 << 20  # glibc serves blocks below its largest mmap threshold (32 MiB) from the heap


class AGF:
    """Explain a classifier's logits with AGF; `attribute` returns signed B×1×H×W heatmaps.

    An instance keeps kernel-sized work buffers (|W|, flipped kernels) between calls, per thread, device and dtype:
    10.6 MiB for ResNet-50 and 18 MiB for VGG-19 at batch 1; they go with the instance.
    """

    def __init__(self, model: nn.Module, *, use_a: bool = True, use_fx: bool = True, use_fgrad: bool = True,
                 use_m: bool = True, use_gate: bool = True, residual: str = "agf",
                 flat_convs: Iterable[str] = (), full_convs: Iterable[str] = (), walk_bytes: int | None = None):
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        for name, flag in dict(use_a=use_a, use_fx=use_fx, use_fgrad=use_fgrad, use_m=use_m,
                               use_gate=use_gate).items():
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if walk_bytes is not None and (isinstance(walk_bytes, bool) or not isinstance(walk_bytes, int)
                                       or walk_bytes < 0):
            raise ValueError("walk_bytes must be None (automatic) or a byte count >= 0 (0: never split), "
                             f"got {walk_bytes!r}")
        self.model = model
        self.walk_bytes = walk_bytes
        self.options = AGFOptions(use_a, use_fx, use_fgrad, use_m, use_gate, residual)
        self.graph = ModelGraph(model)
        self._needed = _values_read_backwards(self.graph)
        self._norm_after = _norms_after_convs(self.graph)
        self._folded_norms = {s.node for s in self._norm_after.values()}
        self._adds_into_relu = _adds_read_only_by_a_relu(self.graph)
        # the forward pass may fold these norms into their convs: no rule reads the conv's own output
        self._forward_folds = {n for n in self._folded_norms if self.graph.steps[n].inputs[0] not in self._needed}
        self._override_conv_roles(set(flat_convs), "flat")
        self._override_conv_roles(set(full_convs), "full")
        self._kernels = KernelBuffers()  # |W| and flipped kernels, kept between layers and calls

    def _override_conv_roles(self, names: set[str], role: str) -> None:
        convs = {s.node.target: s for s in self.graph.layers(CONV)}
        unknown = names - convs.keys()
        if unknown:
            raise ValueError(f"no Conv2d named {sorted(unknown)} in the model; convolutions: {sorted(convs)}")
        for name in names:
            convs[name].role = role

    @property
    def conv_roles(self) -> dict[str, str]:
        """How each convolution is treated: "first" (z^B), "flat" (C-rule only) or "full" (full AGF)."""
        return {s.node.target: s.role for s in self.graph.layers(CONV)}

    def attribute(self, x: Tensor, target: Any = None, *, normalize: bool = True) -> Tensor:
        """Heatmaps B×1×H×W for `target` (None = top-1, int, or LongTensor[B]); dtype/device follow x."""
        indices: dict[fx.Node, Tensor] = {}  # max-pool arg-max indices, recorded by the forward pass
        # a residual add's ReLU runs in place on the sum: the add's rule reads only the sum's positive part
        env, logits, t = run_model(self.graph, x, target, keep=self._needed.__contains__,
                                   fold_norms=self._forward_folds, pool_indices=indices,
                                   relu_over=self._adds_into_relu)
        del logits
        with torch.no_grad():
            head = self.graph.head.module
            head_input = self.graph.head.inputs[0]
            phi, grad = head_attribution(head.weight, head.bias, env[head_input], t)
            _warn_if_saturated(phi)
            step = self._images_per_walk(env)
            parts = []
            for start in range(0, x.shape[0], step):
                part = self._batch_slice(env, start, step) if step < x.shape[0] else env
                part_indices = {n: i[start:start + step] for n, i in indices.items()}
                shapes = {s.boundary_source: part[s.boundary_source].shape for s in self.graph.layers(LINEAR)
                          if s.boundary_source is not None}
                parts.append(propagate(self.graph, part, head_input, phi[start:start + step],
                                       grad[start:start + step],
                                       lambda *a: self._rule(shapes, part_indices, *a), release=True))
                del part, part_indices
            del env, indices
        relevance = parts[0] if len(parts) == 1 else torch.cat(parts)
        if relevance.shape != x.shape:
            raise RuntimeError(f"input relevance has shape {tuple(relevance.shape)}, expected {tuple(x.shape)}")
        if not normalize:
            return relevance.sum(dim=1, keepdim=True)
        top = per_image_max(relevance)  # the reference divides by the plain signed maximum (no guard)
        return (relevance / torch.where(top != 0, top, torch.inf)).sum(dim=1, keepdim=True)

    def _images_per_walk(self, env: dict[fx.Node, Any]) -> int:
        """Images per backward walk: all on GPU; on CPU as many as keep each layer's tensors under
        `walk_bytes`, since larger buffers come fresh from the OS and their page faults cost more than the
        arithmetic (every image is explained independently, so the split changes no number)."""
        x = env[self.graph.input_node]
        limit = self.walk_bytes if self.walk_bytes is not None else (CPU_WALK_BYTES if x.device.type == "cpu" else 0)
        if not limit:
            return x.shape[0]
        largest = max(v.numel() // v.shape[0] * v.element_size() for n, v in env.items()
                      if isinstance(v, Tensor) and v.dim() > 0 and self.graph.steps[n].kind != META)
        return max(1, min(x.shape[0], limit // max(1, largest)))

    def _batch_slice(self, env: dict[fx.Node, Any], start: int, size: int) -> dict[fx.Node, Any]:
        """Views of the images [start, start + size) of every per-image value (shape-only stand-ins too)."""
        return {n: v[start:start + size] if isinstance(v, Tensor) and v.dim() > 0 and self.graph.steps[n].kind != META
                else v for n, v in env.items()}

    def _rule(self, shapes: dict[fx.Node, torch.Size], indices: dict[fx.Node, Tensor], step: Step, inputs: list,
              y: Tensor, r: Tensor, g: Grad) -> tuple[list, list]:
        if step.node in self._folded_norms:  # its gradient factor is applied by the conv before it
            return [r], [g]
        if step.node in indices:  # a max-pool whose arg-max the forward pass recorded
            return z_rule(step, inputs[0], y, r, g, indices.pop(step.node))
        if step.node in self._adds_into_relu:
            a, b = inputs
            # = safe_divide(r, a + b): r is 0 wherever the ReLU output is; y may already be that output
            s = divide_by_positive_part(r, y)
            return [a * s, s.mul_(b)], [g, g]
        generic = structural_rule(step, inputs, y, r, g)
        if generic is not None:
            return generic
        x = inputs[0]
        if step.kind == CONV:
            if step.role == "first":
                return [first_conv_zb(step, x, r)], [None]
            norm = self._norm_after.get(step.node)
            rel, g_in = conv_rule(step, x, r, g, self.options, None if norm is None else norm_scale(norm.module),
                                  self._kernels)
            return [rel], [g_in]
        if step.kind == LINEAR:
            shape = shapes.get(step.boundary_source)
            rel, g_in = linear_rule(step, x, r, g, shape if shape is not None and len(shape) == 4 else None)
            return [rel], [g_in]
        raise NotImplementedError(f"AGF has no rule for {step.kind} step '{step.node.name}'")


def _values_read_backwards(graph: ModelGraph) -> set[fx.Node]:
    """Nodes whose values AGF's rules read (the rest need only their shapes once the forward pass is done)."""
    needed = {graph.head.node}
    consumers = graph.consumers()
    for node, step in graph.steps.items():
        if len(consumers.get(node, ())) > 1:  # a fork merges its parts with its value
            needed.add(node)
        if step.kind in (CONV, LINEAR):
            needed.add(step.inputs[0])
        elif step.kind == RELU:  # the ReLU rule needs its output only
            needed.add(node)
        elif step.kind in (POOL, ADD, SMOOTH):
            needed.add(node)
            needed.update(step.inputs)
    return needed


def _adds_read_only_by_a_relu(graph: ModelGraph) -> set[fx.Node]:
    """Residual adds whose output only a ReLU reads: the relevance reaching them is 0 wherever the sum is <= 0."""
    consumers = graph.consumers()
    return {node for node, step in graph.steps.items() if step.kind == ADD and len(consumers.get(node, ())) == 1
            and graph.steps[consumers[node][0]].kind == RELU}


def _norms_after_convs(graph: ModelGraph) -> dict[fx.Node, Step]:
    """conv node -> the BatchNorm that is the only reader of its output (its gradient factor can be folded)."""
    consumers = graph.consumers()
    out = {}
    for node, step in graph.steps.items():
        if step.kind == NORM and graph.steps[step.inputs[0]].kind == CONV and consumers[step.inputs[0]] == [node]:
            out[step.inputs[0]] = step
    return out


def _warn_if_saturated(phi: Tensor) -> None:
    dead = (phi.reshape(phi.shape[0], -1) == 0).all(dim=1)
    if bool(dead.any()):
        warnings.warn(
            f"the head's Gaussian-softmax is saturated for images {dead.nonzero().flatten().tolist()}: "
            "the initial attribution is exactly zero, so their heatmaps are all zero "
            "(typical of untrained models with very large logits)", RuntimeWarning, stacklevel=3)
