"""AlexNet backbones (BN after every conv) sized from their weights, and their input-size arithmetic."""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

from torch import nn

from ssl_models.errors import CheckpointError

FcStyle = Literal["dropout", "batchnorm"]
CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
# (kernel, stride, padding) of conv1..conv5, shared by SeLa/DeepCluster and RotNet AlexNets.
CONV_GEOMETRY = ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
POOL_AFTER = {"conv1": "pool1", "conv2": "pool2", "conv5": "pool5"}


def build_alexnet(widths: Sequence[int], flatten: int, fc_widths: Sequence[int], fc_style: FcStyle) -> nn.Sequential:
    """conv1..conv5 (Conv-BN-ReLU, pools after 1, 2, 5) -> flatten -> fc6, fc7 (-> B×fc_widths[-1]).

    fc_style "dropout": Dropout-Linear-ReLU blocks (SeLa/DeepCluster classifier);
    "batchnorm": Linear(no bias)-BatchNorm1d-ReLU blocks (RotNet fc_block).
    """
    modules: list[tuple[str, nn.Module]] = []
    cin = 3
    for name, width, (kernel, stride, pad) in zip(CONV_NAMES, widths, CONV_GEOMETRY):
        conv = nn.Conv2d(cin, width, kernel, stride=stride, padding=pad)
        modules.append((name, nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU())))
        if name in POOL_AFTER:
            modules.append((POOL_AFTER[name], nn.MaxPool2d(3, stride=2)))
        cin = width
    modules.append(("flatten", nn.Flatten(1)))
    fin = flatten
    for name, fout in zip(("fc6", "fc7"), fc_widths):
        if fc_style == "dropout":
            block = nn.Sequential(nn.Dropout(0.5), nn.Linear(fin, fout), nn.ReLU())
        else:
            block = nn.Sequential(nn.Linear(fin, fout, bias=False), nn.BatchNorm1d(fout), nn.ReLU())
        modules.append((name, block))
        fin = fout
    return nn.Sequential(OrderedDict(modules))


def pool5_side(input_size: int) -> int:
    """Side of the pool5 map for a square input (0 if the input is too small)."""
    side = input_size
    for name, (kernel, stride, pad) in zip(CONV_NAMES, CONV_GEOMETRY):
        side = (side + 2 * pad - kernel) // stride + 1
        if name in POOL_AFTER:
            side = (side - 3) // 2 + 1
        if side <= 0:
            return 0
    return side


def infer_input_size(flatten: int, conv5_width: int, key: str) -> int:
    """Smallest multiple of 32 whose pool5 map matches `flatten` = conv5_width × s × s (224 for 9216 = 256·6·6)."""
    side = round((flatten / conv5_width) ** 0.5) if flatten % conv5_width == 0 else 0
    if side < 1 or conv5_width * side * side != flatten:
        raise CheckpointError(
            f"{key!r} takes {flatten} inputs, which is not conv5 width {conv5_width} × s × s for any integer s"
        )
    for size in range(32, 2049, 32):
        if pool5_side(size) == side:
            return size
    raise CheckpointError(
        f"{key!r}: no input size up to 2048 gives the {side}×{side} pool5 map its flatten size implies"
    )
