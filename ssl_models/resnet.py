"""ResNet building blocks (basic, bottleneck, pre-activation) and backbones sized from a state_dict."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Sequence

from torch import Tensor, nn

from ssl_models.errors import CheckpointError
from ssl_models.keys import child_indices, require, require_contiguous

BlockKind = Literal["basic", "bottleneck", "preact"]
StemKind = Literal["imagenet", "cifar", "stl", "preact"]
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; projection `downsample` (1×1 conv + BN) when the shape changes."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _conv(cin, planes, 3, stride), _bn(planes), nn.ReLU()
        self.conv2, self.bn2 = _conv(planes, cout, 3), _bn(cout)
        self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout)) if projection else None
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck (stride on the 3×3 conv); projection `downsample` when the shape changes."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = _conv(cin, planes, 1), _bn(planes), nn.ReLU()
        self.conv2, self.bn2, self.relu2 = _conv(planes, planes, 3, stride), _bn(planes), nn.ReLU()
        self.conv3, self.bn3 = _conv(planes, cout, 1), _bn(cout)
        self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout)) if projection else None
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (BN-ReLU before each conv); the projection `shortcut` sees the activated input."""

    def __init__(self, cin: int, planes: int, cout: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.bn1, self.relu1, self.conv1 = _bn(cin), nn.ReLU(), _conv(cin, planes, 1)
        self.bn2, self.relu2, self.conv2 = _bn(planes), nn.ReLU(), _conv(planes, planes, 3, stride)
        self.bn3, self.relu3, self.conv3 = _bn(planes), nn.ReLU(), _conv(planes, cout, 1)
        self.shortcut = nn.Sequential(_conv(cin, cout, 1, stride)) if projection else None

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv1(activated)
        out = self.conv2(self.relu2(self.bn2(out)))
        out = self.conv3(self.relu3(self.bn3(out)))
        return out + identity


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "preact": PreActBottleneck}
_PROJECTION = {"basic": "downsample", "bottleneck": "downsample", "preact": "shortcut"}


@dataclass(frozen=True)
class ResNetShape:
    """Hyper-parameters of a ResNet read off its weights."""

    block: BlockKind
    stem_width: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    feature_dim: int

    @property
    def depth(self) -> int:
        """Conventional depth (18, 50, ...): weighted layers on the main path."""
        per_block = 2 if self.block == "basic" else 3
        return per_block * sum(self.depths) + 2


def infer_block_kind(state: Mapping[str, Tensor], first_block_prefix: str) -> BlockKind:
    """'bottleneck' when the first block has a conv3, else 'basic' (pre-activation is chosen by the caller)."""
    return "bottleneck" if f"{first_block_prefix}conv3.weight" in state else "basic"


def build_resnet(
    state: Mapping[str, Tensor],
    stem_key: str,
    stage_prefixes: Sequence[str],
    projection: str,
    block: BlockKind,
    stem: StemKind,
    fixed_pool: int | None = None,
) -> tuple[nn.Sequential, ResNetShape]:
    """A ResNet backbone (images -> B×D) whose widths and depths are read from the file's keys.

    `stem_key` names the stem conv weight, `stage_prefixes` the four stages (blocks `<prefix>N.` with
    conv1/bn1/conv2/... and the projection `<prefix>N.<projection>.0`). `fixed_pool` replaces the
    global average pool by AvgPool2d(fixed_pool, stride 1). Children are named like torchvision's.
    """
    if len(stage_prefixes) != len(STAGES):
        raise ValueError(f"expected {len(STAGES)} stage prefixes, got {len(stage_prefixes)}")
    stem_width = int(require(state, stem_key, 4, "stem convolution").shape[0])
    modules: list[tuple[str, nn.Module]] = []
    if stem == "imagenet":
        modules += [("conv1", _stem_conv(stem_width, 7, 2)), ("bn1", _bn(stem_width)), ("relu", nn.ReLU()),
                    ("maxpool", nn.MaxPool2d(3, stride=2, padding=1))]
    elif stem in ("cifar", "stl"):
        modules += [("conv1", _stem_conv(stem_width, 3, 1)), ("bn1", _bn(stem_width)), ("relu", nn.ReLU())]
        if stem == "stl":
            modules.append(("maxpool", nn.MaxPool2d(2, stride=2, padding=1)))
    else:
        modules += [("conv1", _stem_conv(stem_width, 7, 2)), ("maxpool", nn.MaxPool2d(3, stride=2, padding=1))]

    channels, depths, widths = stem_width, [], []
    for stage_index, (stage, stage_prefix) in enumerate(zip(STAGES, stage_prefixes)):
        count = require_contiguous(child_indices(state, stage_prefix), f"residual blocks {stage_prefix}N.*")
        blocks = []
        for b in range(count):
            planes, cout = _block_widths(state, f"{stage_prefix}{b}.", block)
            stride = 2 if (b == 0 and stage_index > 0) else 1
            has_projection = f"{stage_prefix}{b}.{projection}.0.weight" in state
            if not has_projection and (stride != 1 or cout != channels):
                raise CheckpointError(
                    f"block {stage_prefix}{b} changes the shape ({channels}->{cout} channels, stride {stride}) "
                    f"but has no projection weights {stage_prefix}{b}.{projection}.0.weight"
                )
            blocks.append(_BLOCKS[block](channels, planes, cout, stride, has_projection))
            channels = cout
        modules.append((stage, nn.Sequential(*blocks)))
        depths.append(count)
        widths.append(blocks[0].conv1.out_channels)
    pool = nn.AdaptiveAvgPool2d(1) if fixed_pool is None else nn.AvgPool2d(fixed_pool, stride=1)
    modules += [("avgpool", pool), ("flatten", nn.Flatten(1))]
    shape = ResNetShape(block, stem_width, tuple(depths), tuple(widths), channels)
    return nn.Sequential(OrderedDict(modules)), shape


def projection_name(block: BlockKind) -> str:
    """Attribute name of the projection inside our blocks ('downsample', or 'shortcut' for pre-activation)."""
    return _PROJECTION[block]


def _stem_conv(width: int, kernel: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(3, width, kernel, stride=stride, padding=kernel // 2, bias=False)


def _block_widths(state: Mapping[str, Tensor], prefix: str, block: BlockKind) -> tuple[int, int]:
    planes = int(require(state, f"{prefix}conv1.weight", 4, "block input convolution").shape[0])
    last = "conv2" if block == "basic" else "conv3"
    cout = int(require(state, f"{prefix}{last}.weight", 4, "block output convolution").shape[0])
    return planes, cout
