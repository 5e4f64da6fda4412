"""`sslx.explain`: one call for every explanation method."""
from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn
from torch import Tensor

from .attribution.agf import AGF
from .attribution.gradient import FullGrad, GradCAM, GradientShap, IntegratedGradients, SmoothGrad
from .attribution.lrp import CLRP, LRP, SGLRP
from .attribution.rap import RAP
from .attribution.transformer import AttentionRollout, GenericAttention, TransformerAttribution

# name -> factory(model, **options) returning an object with .attribute(x, target)
METHODS: dict[str, Callable[..., Any]] = {
    "agf": AGF,
    "lrp": LRP,
    "lrp_ab": lambda model, **options: LRP(model, alpha=2, **options),
    "clrp": CLRP,
    "sglrp": SGLRP,
    "rap": RAP,
    "gradcam": GradCAM,
    "fullgrad": FullGrad,
    "integrated_gradients": IntegratedGradients,
    "smoothgrad": SmoothGrad,
    "gradient_shap": GradientShap,
    "transformer_attribution": TransformerAttribution,
    "attention_rollout": AttentionRollout,
    "generic_attention": GenericAttention,
}


def explain(model: nn.Module, x: Tensor, target: Any = None, method: str = "agf", **options: Any) -> Tensor:
    """Explain `model`'s prediction for `target` on `x` with `method`; returns B×1×H×W heatmaps."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {sorted(METHODS)}")
    return METHODS[method](model, **options).attribute(x, target)
