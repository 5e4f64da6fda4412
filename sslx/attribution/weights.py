"""Cache of tensors derived from layer weights (|W|, sign splits, conv-of-ones maps) across calls."""
from __future__ import annotations

from typing import Callable, Hashable

from torch import Tensor


class DerivedWeights:
    """Derived tensors per weight, recomputed when the weight is modified in place or replaced."""

    def __init__(self) -> None:
        self._store: dict[tuple[int, Hashable], tuple[tuple, Tensor]] = {}

    def get(self, weight: Tensor, name: Hashable, make: Callable[[Tensor], Tensor]) -> Tensor:
        """make(weight), cached under (weight, name) while the weight's storage and version are unchanged."""
        key = (id(weight), name)
        stamp = (weight._version, weight.data_ptr(), weight.dtype, weight.device, tuple(weight.shape))
        hit = self._store.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, make(weight.detach()))
            self._store[key] = hit
        return hit[1]

    def clear(self) -> None:
        """Drop every cached tensor."""
        self._store.clear()
