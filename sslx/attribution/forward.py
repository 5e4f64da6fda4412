"""The checked forward pass every method starts with: validate the input, run the graph, resolve targets."""
from __future__ import annotations

from typing import Any, Callable, Collection

import torch
import torch.fx as fx
from torch import Tensor

from .._validate import check_image_batch, check_input_channels, check_model_matches, resolve_targets
from .graph import ModelGraph


def run_model(graph: ModelGraph, x: Tensor, target: Any, *, with_grad: bool = False,
              keep: Callable[[fx.Node], bool] | None = None,
              fold_norms: Collection[fx.Node] = (),
              pool_indices: dict[fx.Node, Tensor] | None = None,
              relu_over: Collection[fx.Node] = ()) -> tuple[dict[fx.Node, Any], Tensor, Tensor]:
    """Validate x, run the graph in inference mode; return (env, logits B×K, targets LongTensor[B]).

    With `with_grad`, autograd records the run from a fresh leaf copy of x (`env[graph.input_node]`);
    `keep`, `fold_norms`, `pool_indices` and `relu_over` are passed to `ModelGraph.run`.
    """
    check_image_batch(x, "x", channels=None)
    check_model_matches(graph.model, x)
    check_input_channels(x, graph.input_layers())
    if with_grad:
        x = x.detach().requires_grad_(True)
    with torch.set_grad_enabled(with_grad):
        env = graph.run(x, keep=keep, fold_norms=fold_norms, pool_indices=pool_indices, relu_over=relu_over)
    logits = env[graph.head.node]
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ValueError(f"the model must return B×K logits, got shape {tuple(getattr(logits, 'shape', ()))}")
    return env, logits, resolve_targets(target, logits)
