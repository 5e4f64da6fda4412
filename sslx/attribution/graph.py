"""Trace an unmodified model into a graph of typed steps and run it with inference semantics."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .convops import int_pair, is_pointwise, pointwise_conv

# Kinds of step the propagation rules know.
CONV, LINEAR, NORM, RELU, POOL, PASS, RESHAPE, ADD, ADD_CONST, INPUT, META = (
    "conv", "linear", "norm", "relu", "pool", "pass", "reshape", "add", "add_const", "input", "meta",
)
# A smooth single-input function (GELU, L2 normalisation: DINO's and SwAV's heads), propagated like a pool
# through its own Jacobian (LRP-0: R_in = X ⊙ Jᵀ(R / Y)).
SMOOTH = "smooth"

_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub}
_RELU_FUNCTIONS = {F.relu, torch.relu}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_META_FUNCTIONS = {getattr, operator.getitem}
_SMOOTH_FUNCTIONS = {F.gelu, F.normalize}
_META_METHODS = {"size", "dim"}


class UnsupportedOperationError(TypeError):
    """Raised for a graph node that no propagation rule covers."""


@dataclass
class Step:
    """One node of the traced model, typed for the propagation rules."""

    node: fx.Node
    kind: str
    module: nn.Module | None = None
    op: Callable[[Tensor], Tensor] | None = None  # the node's function of its single tensor input
    role: str = ""  # conv: "first" | "flat" | "full"; linear: "head" | "boundary" | "plain"
    boundary_source: fx.Node | None = None  # linear "boundary": the feature map its input was flattened from
    nonnegative_input: bool = False  # conv/linear: the input is a ReLU output (through pools and reshapes)
    inputs: list[fx.Node] = field(default_factory=list)  # tensor-valued inputs that carry relevance


def _describe(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    where = f" in module '{list(stack.keys())[-1]}'" if stack else ""
    return f"node '{node.name}' ({node.op} {getattr(node.target, '__name__', node.target)!s}){where}"


def _module_op(module: nn.Module) -> Callable[[Tensor], Tensor]:
    """A side-effect-free functional equivalent of a supported module in inference mode."""
    if isinstance(module, nn.ReLU):
        return F.relu
    if isinstance(module, nn.MaxPool2d):
        return lambda x: F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                      module.dilation, module.ceil_mode)
    if isinstance(module, nn.AvgPool2d):
        return lambda x: F.avg_pool2d(x, module.kernel_size, module.stride, module.padding,
                                      module.ceil_mode, module.count_include_pad, module.divisor_override)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return lambda x: F.adaptive_avg_pool2d(x, module.output_size)
    if isinstance(module, nn.AdaptiveMaxPool2d):
        return lambda x: F.adaptive_max_pool2d(x, module.output_size)
    if isinstance(module, nn.Flatten):
        return lambda x: torch.flatten(x, module.start_dim, module.end_dim)
    raise AssertionError(f"no functional form for {type(module).__name__}")


def _classify_module(node: fx.Node, module: nn.Module) -> Step:
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise UnsupportedOperationError(
                f"Conv2d with padding_mode={module.padding_mode!r} is not supported at {_describe(node)}")
        return Step(node, CONV, module)
    if isinstance(module, nn.Linear):
        return Step(node, LINEAR, module)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.running_mean is None or module.running_var is None:
            raise UnsupportedOperationError(
                f"BatchNorm without running statistics (track_running_stats=False) at {_describe(node)}: "
                "its output depends on the batch, so per-image explanations are undefined")
        return Step(node, NORM, module)
    if isinstance(module, nn.ReLU):
        return Step(node, RELU, module, op=_module_op(module))
    if isinstance(module, nn.GELU):
        return Step(node, SMOOTH, module, op=lambda x, a=module.approximate: F.gelu(x, approximate=a))
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return Step(node, POOL, module, op=_module_op(module))
    if isinstance(module, _PASS_MODULES):
        return Step(node, PASS, module)
    if isinstance(module, nn.Flatten):
        return Step(node, RESHAPE, module, op=_module_op(module))
    raise UnsupportedOperationError(
        f"unsupported layer {type(module).__name__} at {_describe(node)}; supported: Conv2d, Linear, "
        "ReLU, GELU, F.normalize, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, BatchNorm1d/2d, Dropout, Identity, Flatten, add")


def _classify_call(node: fx.Node) -> Step:
    target = node.target
    if node.op == "call_method":
        if target in _RESHAPE_METHODS:
            return Step(node, RESHAPE)
        if target in ("add", "sub"):
            return Step(node, ADD)
        if target == "relu":
            return Step(node, RELU, op=F.relu)
        if target in _META_METHODS:
            return Step(node, META)
    else:
        if target in _RESHAPE_FUNCTIONS:
            return Step(node, RESHAPE)
        if target in _ADD_FUNCTIONS:
            return Step(node, ADD)
        if target in _RELU_FUNCTIONS:
            return Step(node, RELU, op=F.relu)
        if target in _POOL_FUNCTIONS:
            args, kwargs = node.args[1:], dict(node.kwargs)
            return Step(node, POOL, op=lambda x, f=target, a=args, k=kwargs: f(x, *a, **k))
        if target in _SMOOTH_FUNCTIONS:
            args, kwargs = node.args[1:], dict(node.kwargs)
            return Step(node, SMOOTH, op=lambda x, f=target, a=args, k=kwargs: f(x, *a, **k))
        if target is F.dropout:
            return Step(node, PASS)
        if target in _META_FUNCTIONS:
            return Step(node, META)
    raise UnsupportedOperationError(f"unsupported operation at {_describe(node)}")


class _HookFreeTracer(fx.Tracer):
    """torch.fx tracer that calls submodules' `forward` directly, so hooks other tools left on the model
    (e.g. Grad-CAM's activation and gradient hooks) are not run on the tracer's proxies; the graph
    is the model's own function, and `ModelGraph.run` never runs module hooks either."""

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        return super().call_module(m, m.forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a subclass that keeps nn.Linear's forward (sslx.cluster_head.ClusterHead) is a Linear step too
        if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            return True
        return super().is_leaf_module(m, module_qualified_name)


class ModelGraph:
    """A traced model: typed steps in topological order, runnable without touching the model's state."""

    def __init__(self, model: nn.Module, tracer_leaf_modules: tuple[type, ...] = ()):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        try:
            tracer = _HookFreeTracer()
            graph = tracer.trace(model)
            self.graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
        except Exception as exc:  # fx raises many types for untraceable code
            raise UnsupportedOperationError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                "the model's forward must not branch on tensor values") from exc
        self.steps: dict[fx.Node, Step] = {}
        self.input_node: fx.Node | None = None
        self.output_node: fx.Node | None = None
        for node in self.graph_module.graph.nodes:
            self._add_node(node)
        self._mark_roles()

    # -- construction -------------------------------------------------------------------------
    def _add_node(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            if self.input_node is not None:
                raise UnsupportedOperationError(
                    f"the model's forward takes several inputs ({self.input_node.name}, {node.name}); "
                    "explanations need a forward(x) with one image batch")
            self.input_node = node
            self.steps[node] = Step(node, INPUT)
        elif node.op == "get_attr":
            self.steps[node] = Step(node, META)
        elif node.op == "call_module":
            self.steps[node] = _classify_module(node, self.graph_module.get_submodule(node.target))
        elif node.op in ("call_function", "call_method"):
            self.steps[node] = _classify_call(node)
        elif node.op == "output":
            self.output_node = node
        else:  # pragma: no cover - fx has no other ops today
            raise UnsupportedOperationError(f"unsupported graph node {_describe(node)}")

    def _tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """Inputs of `node` that are computed from the image (relevance flows through them)."""
        return [a for a in node.all_input_nodes if self.steps.get(a) is not None
                and self.steps[a].kind not in (META,) and self._depends_on_input(a)]

    def _depends_on_input(self, node: fx.Node) -> bool:
        cache = self.__dict__.setdefault("_dep_cache", {})
        if node not in cache:
            step = self.steps.get(node)
            if step is None or step.kind == META:
                cache[node] = False
            elif step.kind == INPUT:
                cache[node] = True
            else:
                cache[node] = any(self._depends_on_input(a) for a in node.all_input_nodes)
        return cache[node]

    def _mark_roles(self) -> None:
        if self.input_node is None or self.output_node is None:
            raise UnsupportedOperationError("the traced model has no input or no output")
        for node, step in self.steps.items():
            if step.kind in (INPUT, META):
                continue
            step.inputs = self._tensor_inputs(node)
            if step.kind == ADD and len(step.inputs) == 1:
                step.kind = ADD_CONST
            elif step.kind == ADD and len(step.inputs) == 2 and node.target in (operator.sub, torch.sub, "sub"):
                raise UnsupportedOperationError(f"subtraction of two computed tensors at {_describe(node)}")
            elif step.kind == ADD and len(step.inputs) != 2:
                step.kind = META  # a computation on constants only
        out = self.output_node.args[0]
        if not isinstance(out, fx.Node) or self.steps[out].kind != LINEAR:
            raise UnsupportedOperationError(
                "the model must return logits from a final nn.Linear (the head); its output comes from "
                f"{_describe(out) if isinstance(out, fx.Node) else repr(out)}")
        self.head = self.steps[out]
        self.head.role = "head"
        consumers = self.consumers()
        for node, step in self.steps.items():
            if step.kind in (CONV, LINEAR):
                source = self._skip_back(step.inputs[0], (PASS, RESHAPE, POOL))
                step.nonnegative_input = self.steps[source].kind == RELU
            if step.kind == CONV:
                step.role = self._conv_role(step, consumers)
            elif step.kind == LINEAR and step is not self.head:
                step.role = "plain"
                src = self._skip_back(step.inputs[0], (PASS,))
                if self.steps[src].kind == RESHAPE and self.steps[src].inputs:
                    step.role = "boundary"
                    step.boundary_source = self.steps[src].inputs[0]

    def _skip_back(self, node: fx.Node, kinds: tuple[str, ...]) -> fx.Node:
        while self.steps[node].kind in kinds and self.steps[node].inputs:
            node = self.steps[node].inputs[0]
        return node

    def _conv_role(self, step: Step, consumers: dict[fx.Node, list[fx.Node]]) -> str:
        if self.steps[self._skip_back(step.inputs[0], (PASS, RESHAPE))].kind == INPUT:
            return "first"
        if tuple(step.module.kernel_size) == (1, 1):
            return "flat"
        # The last conv of a residual branch (feeding an add through norms only) stays flat.
        frontier = [step.node]
        while frontier:
            node = frontier.pop()
            for user in consumers.get(node, []):
                kind = self.steps[user].kind
                if kind == ADD:
                    return "flat"
                if kind in (NORM, PASS):
                    frontier.append(user)
        return "full"

    def consumers(self) -> dict[fx.Node, list[fx.Node]]:
        """Map each node to the steps that take it as a relevance-carrying input."""
        users: dict[fx.Node, list[fx.Node]] = {}
        for node, step in self.steps.items():
            for a in step.inputs:
                users.setdefault(a, []).append(node)
        return users

    def input_layers(self) -> dict[str, int]:
        """Module path -> expected channels of the Conv2d/BatchNorm layers that read the image directly."""
        layers = {}
        for step in self.steps.values():
            if step.kind in (CONV, NORM) and step.node.op == "call_module" and step.inputs:
                if self.steps[self._skip_back(step.inputs[0], (PASS, RESHAPE, ADD_CONST))].kind == INPUT:
                    m = step.module
                    layers[step.node.target] = m.in_channels if step.kind == CONV else m.num_features
        return layers

    def layers(self, kind: str) -> list[Step]:
        """Steps of one kind in topological order."""
        return [s for s in self.steps.values() if s.kind == kind]

    # -- execution -----------------------------------------------------------------------------
    def run(self, x: Tensor, keep: Callable[[fx.Node], bool] | None = None,
            fold_norms: Collection[fx.Node] = (),
            pool_indices: dict[fx.Node, Tensor] | None = None,
            relu_over: Collection[fx.Node] = ()) -> dict[fx.Node, Any]:
        """Evaluate every node in inference mode (BatchNorm uses running stats, Dropout is identity).

        With `keep`, a tensor for which keep(node) is false is replaced by a shape-only stand-in (a meta
        tensor) as soon as the forward pass has used it for the last time, and a ReLU that is the only
        reader of such a tensor overwrites it. `fold_norms` names BatchNorm nodes that are the only reader
        of a convolution and whose input no caller reads: where the activation outweighs the kernel, the
        norm is folded into the convolution (the conv and norm nodes then hold the same, normalised tensor).
        With `pool_indices` (a dict), each 2-D max-pool also records its arg-max indices there (the same kernel
        call as the pool itself), so that a backward walk need not find them again. `relu_over` names kept values
        that a ReLU, their only reader, may still overwrite: the caller reads only their positive part.
        """
        env: dict[fx.Node, Any] = {self.input_node: x}
        dies_at = self._last_readers() if keep is not None else {}
        fold_at = {self.steps[n].inputs[0]: n for n in fold_norms}
        folded: set[fx.Node] = set()  # norms whose value is their convolution's (folded) output
        readers = self.consumers() if keep is not None else {}
        for node, step in self.steps.items():
            if step.kind == INPUT:
                continue
            norm = fold_at.get(node)
            if norm is not None and self._fold_pays(step, env):
                env[node] = self._folded_conv(step, self.steps[norm].module, env)
                folded.add(norm)
            elif node in folded:
                env[node] = env[step.inputs[0]]
            elif (step.kind == RELU and keep is not None and readers.get(step.inputs[0]) == [node]
                  and (step.inputs[0] in relu_over or self._overwritable(step.inputs[0], keep, folded))):
                env[node] = F.relu_(env[step.inputs[0]])  # nothing else reads its input
            elif pool_indices is not None and _is_max_pool_2d(step, env):
                env[node], pool_indices[node] = max_pool_with_indices(step.module, env[step.inputs[0]])
            else:
                env[node] = self._eval(node, step, env)
            for dead in dies_at.get(node, ()):
                value = env[dead]
                if isinstance(value, Tensor) and not keep(dead):
                    env[dead] = torch.empty(value.shape, dtype=value.dtype, device="meta")
        return env

    @staticmethod
    def _fold_pays(conv: Step, env: dict[fx.Node, Any]) -> bool:
        """Whether folding a norm into this convolution costs less than the norm's own pass (a kernel-sized
        pass against an activation-sized one)."""
        x = env.get(conv.inputs[0])
        if conv.kind != CONV or not isinstance(x, Tensor) or not isinstance(conv.module, nn.Conv2d):
            return False
        out_channels, h, w = conv.module.out_channels, *x.shape[2:]
        return x.shape[0] * out_channels * h * w >= conv.module.weight.numel()

    @staticmethod
    def _folded_conv(conv: Step, norm: nn.Module, env: dict[fx.Node, Any]) -> Tensor:
        """norm(conv(x)) as one convolution with the norm's scale and shift folded into kernel and bias."""
        m = conv.module
        scale = norm_scale(norm)
        shift = -norm.running_mean if m.bias is None else m.bias - norm.running_mean
        bias = shift * scale if norm.bias is None else torch.addcmul(norm.bias, shift, scale)
        weight = m.weight * scale.reshape((-1,) + (1,) * (m.weight.dim() - 1))
        x = env[conv.inputs[0]]
        if is_pointwise(m, x):
            return pointwise_conv(x, weight, bias, tuple(m.stride))
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)

    def _overwritable(self, node: fx.Node, keep: Callable[[fx.Node], bool], folded: set[fx.Node]) -> bool:
        """Whether no caller reads this value (nor, for a folded norm, its convolution's) after the forward."""
        if keep(node) or self.steps[node].kind not in (CONV, NORM, LINEAR):  # others may alias their input
            return False
        return node not in folded or not keep(self.steps[node].inputs[0])

    def _last_readers(self) -> dict[fx.Node, list[fx.Node]]:
        """Map a node to the values it is the last forward reader of."""
        if "_dies_at" not in self.__dict__:
            position = {node: i for i, node in enumerate(self.steps)}
            dies_at: dict[fx.Node, list[fx.Node]] = {}
            for node in self.steps:
                readers = [u for u in node.users if u in position]
                if readers and len(readers) == len(node.users):  # values the output reads stay
                    dies_at.setdefault(max(readers, key=position.__getitem__), []).append(node)
            self._dies_at = dies_at
        return self._dies_at

    def _eval(self, node: fx.Node, step: Step, env: dict[fx.Node, Any]) -> Any:
        if node.op == "get_attr":
            return _fetch_attr(self.graph_module, node.target)
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        m = step.module
        if step.kind == CONV:
            if is_pointwise(m, args[0]):
                return pointwise_conv(args[0], m.weight, m.bias, tuple(m.stride))
            return F.conv2d(args[0], m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
        if step.kind == LINEAR:
            return F.linear(args[0], m.weight, m.bias)
        if step.kind == NORM:
            return F.batch_norm(args[0], m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
        if step.kind == PASS:
            return args[0]
        if node.op == "call_module":
            return step.op(args[0])
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)
        if step.kind == RELU:
            return F.relu(args[0])
        return node.target(*args, **kwargs)


def _is_max_pool_2d(step: Step, env: dict[fx.Node, Any]) -> bool:
    x = env.get(step.inputs[0]) if step.inputs else None
    return isinstance(step.module, nn.MaxPool2d) and isinstance(x, Tensor) and x.dim() == 4


def max_pool_with_indices(m: nn.MaxPool2d, x: Tensor) -> tuple[Tensor, Tensor]:
    """A MaxPool2d's output and its arg-max indices (per image and channel, into the flattened H×W plane)."""
    return torch.ops.aten.max_pool2d_with_indices(x, *max_pool_args(m))


def max_pool_args(m: nn.MaxPool2d) -> tuple:
    """(kernel, stride, padding, dilation, ceil_mode) of a MaxPool2d as aten's max-pool kernels take them."""
    args = (m.kernel_size, m.stride if m.stride is not None else m.kernel_size, m.padding, m.dilation)
    return tuple(list(int_pair(a)) for a in args) + (bool(m.ceil_mode),)


def norm_scale(m: nn.Module) -> Tensor:
    """An inference-mode BatchNorm's per-channel factor γ / sqrt(var + eps) (its gradient, and its scale)."""
    scale = torch.rsqrt(m.running_var + m.eps)
    return scale if m.weight is None else scale * m.weight


def _fetch_attr(module: nn.Module, target: str) -> Any:
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
