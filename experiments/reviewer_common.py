"""Shared setup of the reviewer experiments (sanity_checks.py, faithfulness.py): models, methods, data, summaries.

Every method of `sslx.explain` runs on the embedded supervised classifiers (VGG, ResNet, split backbone ▸ head)
and the embedded SSL models (SeLa, SCAN, RotNet). A map explains the model's own top-1 class on the clean
image (for an SSL model: its SSL class, Algorithm 2 without a neighbour, i.e. the "w/o" setting).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import ssl_eval  # noqa: E402
import supervised_eval as se  # noqa: E402
from sslx.explain_api import METHODS as AVAILABLE  # noqa: E402
from sslx.metrics import mean_interval, randomisable_layers  # noqa: E402

MODELS = ("vgg", "resnet", "sela", "scan", "rotnet")
METHODS = ("agf", "rap", "lrp", "lrp_ab", "clrp", "sglrp", "gradcam", "fullgrad", "integrated_gradients",
           "smoothgrad", "gradient_shap")
LABELS = {**se.LABELS, "agf": "AGF"}
SUPERVISED = ssl_eval.SUPERVISED_NAMES

__all__ = ["LABELS", "METHODS", "MODELS", "Explainer", "add_options", "data_loader", "head_name", "load_model",
           "rank_table", "run_models", "summary", "unnormalised"]


def add_options(parser: Any, default_n: int) -> None:
    """--models and --methods (comma-separated); the default image count goes in the help text."""
    parser.add_argument("--models", default=",".join(MODELS), help=f"embedded models (default: {','.join(MODELS)})")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"methods (default: {','.join(METHODS)})")
    parser.set_defaults(n_images=default_n)


def load_model(name: str) -> nn.Module:
    """The embedded model `name` in eval mode, with `backbone` and `head` (supervised ones split at the last Linear)."""
    return ssl_eval.load_model(name).eval()


class Explainer:
    """`method`'s maps of a model (the one given at each call: randomised copies too) for per-image targets."""

    def __init__(self, method: str) -> None:
        if method not in AVAILABLE:
            raise ValueError(f"unknown method {method!r}; available: {sorted(AVAILABLE)}")
        self.method = method

    def __call__(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        """B×1×H×W maps (detached, x's dtype)."""
        with torch.enable_grad():
            out = AVAILABLE[self.method](model, **ssl_eval.method_options(model, self.method)).attribute(x, target)
        return out.detach().to(x.dtype)


def head_name(model: nn.Module) -> str:
    """Module name of the model's (selected) head."""
    for name, module in model.named_modules():
        if module is model.head:
            return name
    raise ValueError("the model's head is not one of its modules")


def data_loader(model: nn.Module, n_images: int, batch_size: int, seed: int) -> Any:
    """In-order batches of the first `n_images` single-object test scenes, normalised for `model`."""
    return ssl_eval.loader(ssl_eval.scenes(model, "test", n_images, seed=seed), batch_size)


def unnormalised(model: nn.Module, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(the [0, 1] images, the model's normalisation as a callable)."""
    from sslx.data.transforms import denormalize, normalize

    mean, std = ssl_eval.normalisation(model)
    return denormalize(x, mean, std).clamp(0.0, 1.0), lambda t: normalize(t, mean, std)


def backbone_layers(model: nn.Module) -> list[str]:
    """Parameterised modules of the backbone, top-down, as names in `model`."""
    return [f"backbone.{n}" for n in randomisable_layers(model.backbone)]


def summary(values: Tensor) -> dict[str, Any]:
    """{"mean", "ci95": [lo, hi], "n"} over images, NaN entries (undefined scores) left out."""
    v = values.double().flatten()
    v = v[~torch.isnan(v)]
    if v.numel() == 0:
        return {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
    return {"mean": float(v.mean()), "ci95": list(mean_interval(v)), "n": int(v.numel())}


def rank_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]], metrics: Mapping[str, bool],
               methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """{metric: {method: mean rank over models}} (1 = best; `metrics` maps name → higher is better; ties share)."""
    out: dict[str, dict[str, float]] = {}
    for metric, higher in metrics.items():
        ranks: dict[str, list[float]] = {m: [] for m in methods}
        for per_model in scores.values():
            values = torch.tensor([per_model[m][metric] for m in methods], dtype=torch.float64)
            if bool(torch.isnan(values).any()):
                continue
            key = -values if higher else values
            for i, m in enumerate(methods):
                ranks[m].append(float((key < key[i]).sum() + ((key == key[i]).sum() + 1) / 2))
        out[metric] = {m: (sum(r) / len(r) if r else math.nan) for m, r in ranks.items()}
    return out


def parse_lists(args: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The --models and --methods lists, checked."""
    return (ssl_eval.name_list(args.models, MODELS + ("resnet",), "models"),
            ssl_eval.name_list(args.methods, tuple(AVAILABLE), "methods"))


def run_models(doc: str | None, default_n: int, argv: Sequence[str] | None,
               evaluate: Callable[[str, Sequence[str], Any], dict[str, Any]]
               ) -> tuple[Any, tuple[str, ...], dict[str, dict[str, Any]]]:
    """Parse the common options, then (args, methods, {model: evaluate(model, methods, args)})."""
    p = harness.experiment_parser(doc)
    add_options(p, default_n)
    args = p.parse_args(argv)
    harness.setup(args)
    models, methods = parse_lists(args)
    return args, methods, {name: evaluate(name, methods, args) for name in models}


Stopwatch = ssl_eval.Stopwatch
