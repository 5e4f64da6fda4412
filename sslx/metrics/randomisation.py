"""Model-parameter randomisation sanity check (Adebayo et al. 2018), cascading or independent, top-down.

Layers are randomised from the output towards the input. "cascading": step k randomises the k top-most
layers together; "independent": step k randomises only the k-th layer from the top. A randomised
parameter tensor is redrawn from a Gaussian with the original tensor's mean and standard deviation (a
local generator seeded with `seed`; BatchNorm running statistics are buffers and stay). The target class
is held fixed at the original model's (the explained class does not follow the randomised model), and at
every step the new maps are compared with the original ones by Spearman rank correlation and SSIM
(sslx.metrics.similarity). A method whose maps stay similar after the top layers are randomised does
not depend on what the model learned there: it fails the check.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from sslx._validate import check_image_batch, resolve_targets
from sslx.metrics.similarity import spearman, ssim

__all__ = ["MODES", "parameter_randomisation", "randomisable_layers", "randomise"]

MODES = ("cascading", "independent")
Explain = Callable[[nn.Module, Tensor, Tensor], Tensor]


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters, top-down (reverse registration order)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def randomise(model: nn.Module, layers: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of `model` whose `layers` (module names) have all their parameters redrawn."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the model's parameterised layers are {randomisable_layers(model)}")
    out = copy.deepcopy(model)
    new_modules = dict(out.named_modules())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layers:
            for p in new_modules[name].parameters():
                old = p.detach().double().cpu()
                std = float(old.std()) if old.numel() > 1 else abs(float(old.mean()))
                fresh = torch.randn(p.shape, generator=generator, dtype=torch.float64) * std + float(old.mean())
                p.copy_(fresh.to(dtype=p.dtype, device=p.device))
    return out


def parameter_randomisation(model: nn.Module, explain: Explain, x: Tensor, target: object = None,
                            mode: str = "cascading", layers: Sequence[str | Sequence[str]] | None = None,
                            seed: int = 0) -> list[dict[str, object]]:
    """Per step (top-down): {"layer", "spearman", "spearman_abs", "ssim"} (each B) original vs randomised maps.

    `explain(model, x, target) -> B×1×H×W`; `target` None = the original model's top-1 classes; `layers`
    default = every parameterised module (randomisable_layers), one per step; a step may also be a group of
    module names randomised together. "spearman_abs" compares |maps| (a sign flip does not count as a
    change). Step k is randomised with seed `seed + k`, so cascading and independent step k draw the same
    values.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not callable(explain):
        raise TypeError(f"explain must be a callable (model, x, target) -> maps, got {type(explain).__name__}")
    check_image_batch(x, "x", channels=None)
    if model.training:
        raise ValueError("model is in training mode; call model.eval() before the randomisation check")
    names = list(randomisable_layers(model) if layers is None else layers)
    if not names:
        raise ValueError("no layers to randomise (the model has no parameters, or layers is empty)")
    with torch.no_grad():
        targets = resolve_targets(target, model(x))
    original = explain(model, x, targets).detach()
    steps: list[dict[str, object]] = []
    current = model
    for step, group in enumerate(names):
        group_names = [group] if isinstance(group, str) else list(group)
        base = current if mode == "cascading" else model
        current = randomise(base, group_names, seed + step).eval()
        maps = explain(current, x, targets).detach()
        steps.append({"layer": group, "spearman": spearman(original, maps),
                      "spearman_abs": spearman(original.abs(), maps.abs()), "ssim": ssim(original, maps)})
    return steps
