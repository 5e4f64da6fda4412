"""Attribution methods on one propagation engine: AGF, the LRP family, RAP, and gradient baselines."""
from .agf import AGF
from .gradient import FullGrad, GradCAM, GradientShap, IntegratedGradients, SmoothGrad
from .lrp import CLRP, LRP, SGLRP
from .rap import RAP

__all__ = ["AGF", "CLRP", "FullGrad", "GradCAM", "GradientShap", "IntegratedGradients", "LRP", "RAP", "SGLRP",
           "SmoothGrad"]
