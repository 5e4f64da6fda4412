"""Unwrap a loaded checkpoint object into its state_dict (module. prefixes removed) and metadata."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ssl_models.errors import CheckpointError
from ssl_models.keys import summarize_keys

# Where the published layouts keep the weights: SCAN 'model', SeLa/DeepCluster 'state_dict', RotNet 'network'.
WRAPPER_KEYS = ("model", "state_dict", "network")


@dataclass
class RawCheckpoint:
    """A checkpoint's weights (normalised key names) plus everything else stored next to them."""

    layout: str
    wrapper_key: str | None
    state: dict[str, Tensor]
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)


DINO_NETWORKS = ("teacher", "student")  # the two networks of a full DINO training checkpoint

def unwrap_checkpoint(obj: object) -> RawCheckpoint:
    """Find the state_dict in a loaded checkpoint (plain, or under 'model'/'state_dict'/'network')."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"the file holds a {type(obj).__name__}, expected a state_dict or a dict wrapping one under "
            f"{' / '.join(repr(k) for k in WRAPPER_KEYS)}"
        )
    if not obj:
        raise CheckpointError("the file holds an empty dict (no weights)")
    if all(isinstance(value, Tensor) for value in obj.values()):
        return RawCheckpoint("plain state_dict", None, _strip_module(obj), {}, [])
    special = _two_part_checkpoint(obj)
    if special is not None:
        return special
    wrappers = [key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)]
    if not wrappers:
        raise CheckpointError(
            f"no weights found: top-level keys are {_top_keys(obj)}; expected tensors or a "
            f"{' / '.join(repr(k) for k in WRAPPER_KEYS)} entry holding the state_dict"
        )
    if len(wrappers) > 1:
        raise CheckpointError(f"ambiguous checkpoint: several state_dict candidates {wrappers} at top level")
    key = wrappers[0]
    state = obj[key]
    if not state:
        raise CheckpointError(f"the state_dict under {key!r} is empty")
    bad = [name for name, value in state.items() if not isinstance(value, Tensor)]
    if bad:
        raise CheckpointError(f"the state_dict under {key!r} has non-tensor entries: {summarize_keys(map(str, bad))}")
    meta = {name: value for name, value in obj.items() if name != key}
    layout = "{" + ", ".join(repr(name) for name in obj) + "}"
    return RawCheckpoint(layout, key, _strip_module(state), meta, [])


def unwrap_dino_training(obj: object, network: str | None) -> RawCheckpoint | None:
    """The teacher's (or student's) weights of a full DINO checkpoint; None when `obj` is not one."""
    if not isinstance(obj, Mapping) or not any(isinstance(obj.get(n), Mapping) for n in DINO_NETWORKS):
        if network is not None:
            raise CheckpointError(f"variant={network!r} selects a network of a full DINO checkpoint, but this file "
                                  "has no 'teacher'/'student' entries")
        return None
    if network is not None and network not in DINO_NETWORKS:
        raise CheckpointError(f"variant for a full DINO checkpoint must be one of {DINO_NETWORKS}, got {network!r}")
    chosen = network or ("teacher" if isinstance(obj.get("teacher"), Mapping) else "student")
    state = obj.get(chosen)
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"the checkpoint has no {chosen!r} weights (top-level keys {sorted(map(str, obj))})")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"the {chosen!r} state_dict has non-tensor entries: {summarize_keys(map(str, bad))}")
    meta = {k: v for k, v in obj.items() if k not in DINO_NETWORKS}
    layout = "{" + ", ".join(repr(k) for k in obj) + "}"
    return RawCheckpoint(layout, chosen, _strip_module(state), meta, [f"DINO full checkpoint: the {chosen}'s weights are used"])


def _two_part_checkpoint(obj: Mapping[str, Any]) -> RawCheckpoint | None:
    """DINO {'student','teacher',...} (the teacher is used) and the SimCLRv2 converter's {'resnet','head'}."""
    layout = "{" + ", ".join(repr(name) for name in obj) + "}"
    dino = unwrap_dino_training(obj, None)
    if dino is not None:
        return dino
    if isinstance(obj.get("resnet"), Mapping) and isinstance(obj.get("head"), Mapping):
        merged = {f"resnet.{key}": value for key, value in _tensor_dict(obj["resnet"], "resnet").items()}
        merged.update({f"head.{key}": value for key, value in _tensor_dict(obj["head"], "head").items()})
        meta = {name: value for name, value in obj.items() if name not in ("resnet", "head")}
        return RawCheckpoint(layout, "resnet+head", _strip_module(merged), meta, [])
    return None


def _tensor_dict(state: Mapping[Any, Any], key: str) -> Mapping[Any, Tensor]:
    if not state:
        raise CheckpointError(f"the state_dict under {key!r} is empty")
    bad = [str(name) for name, value in state.items() if not isinstance(value, Tensor)]
    if bad:
        raise CheckpointError(f"the state_dict under {key!r} has non-tensor entries: {summarize_keys(bad)}")
    return state


def _strip_module(state: Mapping[Any, Tensor]) -> dict[str, Tensor]:
    """Remove every `module` component (DataParallel), wherever it sits in the key."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state_dict key {key!r} is not a string")
        clean = ".".join(part for part in key.split(".") if part != "module")
        if clean in out:
            raise CheckpointError(
                f"keys collide after removing 'module.': {key!r} and another key both map to {clean!r}"
            )
        out[clean] = value
    return out


def _top_keys(obj: Mapping[Any, Any]) -> str:
    names = [repr(key) for key in list(obj)[:12]]
    return "[" + ", ".join(names) + (", ..." if len(obj) > 12 else "") + "]"
