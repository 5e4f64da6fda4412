"""State-dict key helpers: readable summaries, required keys, block indices, prefix renaming."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from torch import Tensor

from ssl_models.errors import CheckpointError


def summarize_keys(keys: Iterable[str], limit: int = 10) -> str:
    """The keys themselves when few, else top-level groups with counts, e.g. "backbone.* (318), cluster_head.* (20)"."""
    keys = list(keys)
    if not keys:
        return "(none)"
    if len(keys) <= limit:
        return ", ".join(keys)
    groups = Counter(_group(key) for key in keys)
    first_of = {}
    for key in keys:
        first_of.setdefault(_group(key), key)
    parts = [f"{group} ({count})" if count > 1 else first_of[group] for group, count in groups.items()]
    text = ", ".join(parts[:limit])
    return text + (f", ... ({len(keys)} keys in all)" if len(parts) > limit else "")


def _group(key: str) -> str:
    first, dot, _ = key.partition(".")
    return first + ".*" if dot else key


def require(state: Mapping[str, Tensor], key: str, ndim: int, what: str) -> Tensor:
    """Return `state[key]`, checking it exists and has `ndim` dimensions."""
    if key not in state:
        raise CheckpointError(f"missing key {key!r} ({what}); found {summarize_keys(state)}")
    value = state[key]
    if value.dim() != ndim:
        raise CheckpointError(f"{key!r} ({what}) should be {ndim}-D, found shape {list(value.shape)}")
    return value


def child_indices(state: Iterable[str], prefix: str) -> list[int]:
    """Sorted integer indices N of keys that start with `prefix` + "N."."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return sorted(found)


def require_contiguous(indices: Sequence[int], what: str) -> int:
    """Return len(indices) after checking they are exactly 0..n-1 (and n > 0)."""
    if not indices:
        raise CheckpointError(f"no {what} found")
    if list(indices) != list(range(len(indices))):
        raise CheckpointError(f"{what} are numbered {list(indices)}, expected 0..{len(indices) - 1} without gaps")
    return len(indices)


class KeyMap:
    """Bidirectional renaming between file keys and model keys by (file prefix, model prefix) rules."""

    def __init__(self, rules: Iterable[tuple[str, str]]) -> None:
        self.rules = list(rules)
        self._by_file = sorted(self.rules, key=lambda rule: len(rule[0]), reverse=True)
        self._by_model = sorted(self.rules, key=lambda rule: len(rule[1]), reverse=True)

    def to_model(self, file_key: str) -> str | None:
        """Model key for `file_key`, or None when no rule covers it."""
        return _apply(self._by_file, file_key, 0)

    def to_file(self, model_key: str) -> str:
        """File key that `model_key` is read from (the model key itself when no rule covers it)."""
        return _apply(self._by_model, model_key, 1) or model_key


def _apply(rules: Sequence[tuple[str, str]], key: str, side: int) -> str | None:
    for rule in rules:
        src, dst = rule[side], rule[1 - side]
        if key.startswith(src):
            return dst + key[len(src):]
    return None
