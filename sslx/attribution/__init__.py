"""Attribution methods on one propagation engine (AGF and its ablations)."""
from .agf import AGF

__all__ = ["AGF"]
