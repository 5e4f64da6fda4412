"""Penultimate-layer (or named-layer) features of an image model."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from sslx._validate import check_image_batch

PENULTIMATE = "penultimate"


class _Captured(Exception):
    """Raised by a capture hook to skip the rest of the forward pass once the activation is known."""


def extract_features(model: nn.Module, x: Tensor, layer: str = PENULTIMATE) -> Tensor:
    """Return the B×D features of images `x` at `layer` of `model` ("penultimate" or a module name).

    "penultimate" is `model.features(x)` for models with a `features` callable and an nn.Linear `head`
    (the ssl_models convention), else the input of the model's last nn.Linear. Any other value names a
    module (as in `model.named_modules()`) whose output is flattened to B×D. Grad mode and train/eval
    mode are the caller's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_image_batch(x, "x", channels=None)
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be 'penultimate' or a module name, got {layer!r}")
    if layer == PENULTIMATE:
        head = ssl_head(model)
        if head is not None:
            return _ssl_features(model, head, x)
        name, linear = last_linear(model)
        return _capture(model, x, linear, name, of_input=True)
    module = named_module(model, layer)
    return _capture(model, x, module, layer, of_input=False).flatten(1)


def static_feature_dim(model: nn.Module, layer: str = PENULTIMATE) -> int | None:
    """Return the feature dimension `extract_features` gives, when it is known without a forward pass."""
    if layer != PENULTIMATE:
        return None
    head = ssl_head(model)
    if head is not None:
        return head.in_features
    return last_linear(model)[1].in_features


def ssl_head(model: nn.Module) -> nn.Linear | None:
    """Return `model.head` when the model follows the features ▸ head convention, else None."""
    head = getattr(model, "head", None)
    if callable(getattr(model, "features", None)) and isinstance(head, nn.Linear):
        return head
    return None


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Return (name, module) of the last registered nn.Linear of `model`."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear module, so its penultimate layer is undefined; "
            "pass layer=<module name> instead"
        )
    return found[-1]


def named_module(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule called `name`, or raise naming a few valid choices."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        choices = [n for n in modules if n][:8]
        raise ValueError(f"{type(model).__name__} has no module named {name!r}; some valid names: {choices}")
    return modules[name]


def model_device(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` (and every submodule) in eval mode, restoring each module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _ssl_features(model: nn.Module, head: nn.Linear, x: Tensor) -> Tensor:
    feats = model.features(x)
    if not isinstance(feats, Tensor) or feats.dim() != 2:
        shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"model.features(x) must return a B×D tensor, got {shape}")
    if feats.shape != (x.shape[0], head.in_features):
        raise ValueError(
            f"model.features(x) returned shape {tuple(feats.shape)}, expected ({x.shape[0]}, {head.in_features}) "
            "to match model.head.in_features"
        )
    return feats


def _capture(model: nn.Module, x: Tensor, module: nn.Module, name: str, *, of_input: bool) -> Tensor:
    captured: list[Tensor] = []
    what = f"input of module {name!r}" if of_input else f"output of module {name!r}"

    def grab(value: object) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"the {what} is a {type(value).__name__}, not a tensor; choose another layer")
        captured.append(value)
        raise _Captured

    if of_input:
        handle = module.register_forward_pre_hook(lambda _m, args: grab(args[0] if args else None))
    else:
        handle = module.register_forward_hook(lambda _m, _args, out: grab(out))
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass of {type(model).__name__} never called module {name!r}")
    feats = captured[0]
    if feats.dim() < 2 or feats.shape[0] != x.shape[0]:
        raise ValueError(f"the {what} has shape {tuple(feats.shape)}, expected a batch of {x.shape[0]} rows")
    return feats
