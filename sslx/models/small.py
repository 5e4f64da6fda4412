"""Small supervised classifiers for the scenes benchmark: a VGG-style and a ResNet(Bottleneck)-style network."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

ARCHS = ("vgg", "resnet")
# conv1 has stride 2 so that no layer runs at the full 128×128 (CPU training budget); 8×8 after conv5 at 128².
VGG_DEFAULTS: dict[str, Any] = {"widths": (16, 32, 64, 128, 128), "first_stride": 2, "pool_after": (0, 1, 2),
                                "batch_norm": True, "pooled_side": 2, "hidden": 256, "dropout": 0.5,
                                "num_classes": 12}
RESNET_DEFAULTS: dict[str, Any] = {"widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "stem_width": 16,
                                   "num_classes": 12}


def _positive_ints(value: object, name: str, length: int | None = None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(value).__name__}")
    items = tuple(value)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"{name} must hold positive ints, got {list(items)}")
    if length is not None and len(items) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(items)}")
    return items


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SmallVGG(nn.Module):
    """VGG-style classifier: `features` (3×3 Conv(-BN)-ReLU, MaxPool) ▸ `avgpool` ▸ `classifier` (Linear-ReLU-Dropout-Linear)."""

    def __init__(self, widths: Sequence[int] = VGG_DEFAULTS["widths"],
                 first_stride: int = 2, pool_after: Sequence[int] = VGG_DEFAULTS["pool_after"],
                 batch_norm: bool = True, pooled_side: int = 2,
                 hidden: int = 256, dropout: float = 0.5, num_classes: int = 12) -> None:
        super().__init__()
        widths = _positive_ints(widths, "widths")
        pools = set(pool_after)
        if not pools <= set(range(len(widths))):
            raise ValueError(f"pool_after must index the {len(widths)} convolutions, got {sorted(pools)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        cin = 3
        for i, width in enumerate(widths):
            stride = _positive_int(first_stride, "first_stride") if i == 0 else 1
            layers.append(nn.Conv2d(cin, width, 3, stride=stride, padding=1))
            layers += [nn.BatchNorm2d(width), nn.ReLU()] if batch_norm else [nn.ReLU()]
            if i in pools:
                layers.append(nn.MaxPool2d(2, stride=2))
            cin = width
        side = _positive_int(pooled_side, "pooled_side")
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(side)
        self.classifier = nn.Sequential(
            nn.Linear(cin * side * side, _positive_int(hidden, "hidden")), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, _positive_int(num_classes, "num_classes")),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits B×num_classes."""
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class SmallResNet(ResNet):
    """torchvision's ResNet with Bottleneck blocks at narrower widths (stem and per-stage widths chosen freely)."""

    def __init__(self, widths: Sequence[int] = RESNET_DEFAULTS["widths"],
                 depths: Sequence[int] = RESNET_DEFAULTS["depths"], stem_width: int = 16,
                 num_classes: int = 12) -> None:
        widths = _positive_ints(widths, "widths", 4)
        depths = _positive_ints(depths, "depths", 4)
        # torchvision hard-codes widths 64..512; build its skeleton with width_per_group small, then resize.
        super().__init__(Bottleneck, [1, 1, 1, 1], num_classes=_positive_int(num_classes, "num_classes"),
                         width_per_group=4)
        self.base_width = 64  # Bottleneck width = planes exactly
        self.inplanes = _positive_int(stem_width, "stem_width")
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.layer1 = self._make_layer(Bottleneck, widths[0], depths[0])
        self.layer2 = self._make_layer(Bottleneck, widths[1], depths[1], stride=2)
        self.layer3 = self._make_layer(Bottleneck, widths[2], depths[2], stride=2)
        self.layer4 = self._make_layer(Bottleneck, widths[3], depths[3], stride=2)
        self.feature_dim = widths[3] * Bottleneck.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # residual branches start near identity, as torchvision's zero_init_residual
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)


def small_vgg(**config: Any) -> SmallVGG:
    """The benchmark's VGG-style classifier (defaults: widths 16-32-64-128-128, conv1 stride 2, 3 pools, fc 256)."""
    return SmallVGG(**{**VGG_DEFAULTS, **config})


def small_resnet(**config: Any) -> SmallResNet:
    """The benchmark's ResNet(Bottleneck)-style classifier (defaults: stem 16, widths 16-32-64-128, 1 block each)."""
    return SmallResNet(**{**RESNET_DEFAULTS, **config})


def build_classifier(arch: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh small classifier of `arch` ("vgg" or "resnet") with `config` overriding the defaults."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {ARCHS}")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping of builder arguments, got {type(config).__name__}")
    defaults = VGG_DEFAULTS if arch == "vgg" else RESNET_DEFAULTS
    unknown = set(config or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {arch} config keys {sorted(unknown)}; valid: {sorted(defaults)}")
    return small_vgg(**dict(config or {})) if arch == "vgg" else small_resnet(**dict(config or {}))
