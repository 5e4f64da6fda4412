"""SSLModel: a traceable backbone ▸ linear head network with probe-able layers and its preprocessing."""
from __future__ import annotations

from collections import OrderedDict
from numbers import Integral
from typing import Any, Sequence

from torch import Tensor, nn

from sslx._validate import check_image_batch
from ssl_models.preprocess import Preprocess


def check_head_index(index: object, num_heads: int) -> int:
    """Return `index` as an int, or raise TypeError/ValueError if it is not a valid head index."""
    if isinstance(index, bool) or not isinstance(index, Integral):
        raise TypeError(f"head must be an int, got {type(index).__name__}")
    index = int(index)
    if not 0 <= index < num_heads:
        raise ValueError(
            f"head={index} is out of range: the model has {num_heads} head(s), valid indices 0..{num_heads - 1}"
        )
    return index


def _validate_input(model: "SSLModel", args: tuple[Any, ...]) -> None:
    # A forward pre-hook, so the traced forward graph stays free of checks.
    model.check_input(args[0] if args else None)


class SSLModel(nn.Module):
    """A self-supervised network: `backbone` (images -> B×D features) followed by one selected linear head."""

    def __init__(
        self,
        backbone: nn.Sequential,
        heads: Sequence[nn.Linear],
        *,
        projector: nn.Module | None = None,
        layers: Sequence[str],
        preprocess: Preprocess,
        info: dict[str, Any] | None = None,
        head_index: int = 0,
        fixed_input_size: int | None = None,
    ) -> None:
        super().__init__()
        names = [name for name, _ in backbone.named_children()]
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ValueError(f"layers {unknown} are not children of the backbone ({names})")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.projector = projector  # the SSL training projection MLP, kept for reference; not part of forward
        self.layers: tuple[str, ...] = tuple(layers)
        self.preprocess = preprocess
        self.fixed_input_size = fixed_input_size
        self.info: dict[str, Any] = dict(info or {})
        self._head_index = check_head_index(head_index, len(self.heads)) if self.heads else 0
        self._sync_head_info()
        self.register_forward_pre_hook(_validate_input)

    @property
    def head(self) -> nn.Linear | None:
        """The selected SSL head (an nn.Linear on the penultimate features), None for a head-less model."""
        return self.heads[self._head_index] if len(self.heads) else None

    @property
    def has_head(self) -> bool:
        """Whether the checkpoint carries an SSL classifier (cluster heads, prototypes, DINO head)."""
        return len(self.heads) > 0

    @property
    def head_index(self) -> int:
        """Index of the selected head in `heads`."""
        return self._head_index

    def select_head(self, index: int) -> "SSLModel":
        """Make `heads[index]` the head used by forward; returns self."""
        if not self.heads:
            raise ValueError(f"this {self.info.get('kind', 'SSL')} model has no SSL head to select; fit one with "
                             "sslx.cluster_head.ClusterHead")
        self._head_index = check_head_index(index, len(self.heads))
        self._sync_head_info()
        return self

    def _sync_head_info(self) -> None:
        self.info["head"] = self._head_index
        self.info["num_heads"] = len(self.heads)
        self.info["K"] = self.head.out_features if self.heads else None

    def check_input(self, x: object) -> Tensor:
        """Raise TypeError/ValueError unless `x` is an image batch this model can take."""
        x = check_image_batch(x, "x", channels=3)
        weight = next(self.parameters())
        if x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model weights are {weight.dtype}; convert one of them")
        if x.device != weight.device:
            raise ValueError(f"x is on {x.device} but the model is on {weight.device}; move one of them")
        size = self.fixed_input_size
        if size is not None and tuple(x.shape[2:]) != (size, size):
            raise ValueError(
                f"this {self.info.get('variant', 'model')} expects {size}×{size} inputs "
                f"(its flatten/pooling size is fixed), got {x.shape[2]}×{x.shape[3]}"
            )
        return x

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features (the input of the SSL head), B×D."""
        return self.backbone(self.check_input(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the selected head, B×K (the B×D features for a head-less model)."""
        features = self.backbone(x)
        return features if not self.heads else self.heads[self._head_index](features)

    def truncate(self, name: str) -> nn.Sequential:
        """A module mapping images to the B×C×H×W output of layer `name`, sharing this model's weights."""
        if name not in self.layers:
            raise ValueError(f"unknown layer {name!r}; probe-able layers are {self.layers}")
        children: list[tuple[str, nn.Module]] = []
        for child_name, child in self.backbone.named_children():
            children.append((child_name, child))
            if child_name == name:
                break
        return nn.Sequential(OrderedDict(children))
