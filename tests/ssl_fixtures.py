"""Reference networks in the upstream module layouts (SCAN, SeLa, RotNet) and writers of their checkpoints.

The reference classes are written independently of ssl_models, in the module structure of the
published code, so that `state_dict()` yields exactly the published keys and `forward` is the
published computation.
"""
from __future__ import annotations

import operator
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# helpers


def randomize_(model: nn.Module, seed: int) -> nn.Module:
    """Give every parameter and BN statistic non-trivial random values (default init leaves BN at 1/0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.1)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = module.num_features
                if module.affine:
                    module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                    module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                module.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model.eval()


def random_model(factory, seed: int) -> nn.Module:
    """`factory()` built without default initialisation (meta device), then filled by `randomize_`."""
    with torch.device("meta"):
        model = factory()
    model.to_empty(device="cpu")
    return randomize_(model, seed)


def images(size: int, batch: int = 2, seed: int = 0) -> Tensor:
    """A float64 batch of random normalised-looking images."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys with `prefix` prepended (e.g. 'module.' for DataParallel)."""
    return OrderedDict((prefix + key, value) for key, value in state.items())


def legacy_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A PyTorch 0.2-style state_dict: no num_batches_tracked entries and no _metadata attribute."""
    return {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    """torch.save, optionally in the legacy (pre-1.6, non-zip) serialization."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


# Module types and functions the AGF engine handles (item 2 of the ssl_models brief).
AGF_MODULES = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Flatten)
AGF_FUNCTIONS = (operator.add, torch.flatten)


# ---------------------------------------------------------------------------------------------
# SCAN (wvangansbeke/Unsupervised-Classification)


class ScanBasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ScanResNet18(nn.Module):
    """models/resnet_cifar.py (stl=False) and models/resnet_stl.py (stl=True)."""

    def __init__(self, stl: bool = False, widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stl = stl
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        if stl:
            self.maxpool = nn.MaxPool2d(2, 2, 1)
        cin = widths[0]
        for i, (w, s) in enumerate(zip(widths, (1, 2, 2, 2))):
            setattr(self, f"layer{i + 1}", nn.Sequential(ScanBasicBlock(cin, w, s), ScanBasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AvgPool2d(7, stride=1) if stl else nn.AdaptiveAvgPool2d((1, 1))

    def stages(self, x: Tensor) -> list[Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        if self.stl:
            out = self.maxpool(out)
        outs = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            out = getattr(self, name)(out)
            outs.append(out)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.stages(x)[-1]), 1)


def scan_imagenet_backbone() -> nn.Module:
    """torchvision resnet50 with fc replaced by Identity (SCAN's ImageNet backbone)."""
    net = torchvision.models.resnet50()
    net.fc = nn.Identity()
    return net


class ScanClusteringModel(nn.Module):
    """models/models.py ClusteringModel: backbone + independent cluster heads."""

    def __init__(self, backbone: nn.Module, dim: int, nclusters: int, nheads: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.cluster_head = nn.ModuleList([nn.Linear(dim, nclusters) for _ in range(nheads)])

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.backbone(x)
        return [head(features) for head in self.cluster_head]


# ---------------------------------------------------------------------------------------------
# SeLa (yukimasano/self-label)


class SelaAlexNet(nn.Module):
    """models/alexnet.py with bn=True; `widths` conv1..5, `fc` the classifier width, one Linear per head."""

    def __init__(self, widths: Sequence[int], fc: int, heads: Sequence[int], input_size: int) -> None:
        super().__init__()
        cfg = [(widths[0], 11, 4, 2), "M", (widths[1], 5, 1, 2), "M", (widths[2], 3, 1, 1),
               (widths[3], 3, 1, 1), (widths[4], 3, 1, 1), "M"]
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(3, 2))
            else:
                layers += [nn.Conv2d(cin, v[0], v[1], v[2], v[3]), nn.BatchNorm2d(v[0]), nn.ReLU(inplace=True)]
                cin = v[0]
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            self.flatten = self.features.eval()(torch.zeros(1, 3, input_size, input_size)).numel()
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(self.flatten, fc), nn.ReLU(inplace=True),
                                        nn.Dropout(0.5), nn.Linear(fc, fc), nn.ReLU(inplace=True))
        self.headcount = len(heads)
        if len(heads) == 1:
            self.top_layer = nn.Linear(fc, heads[0])
        else:
            for a, k in enumerate(heads):
                setattr(self, f"top_layer{a}", nn.Linear(fc, k))
            self.top_layer = None

    def penultimate(self, x: Tensor) -> Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), self.flatten))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.penultimate(x)
        if self.headcount == 1:
            return [self.top_layer(x)]
        return [getattr(self, f"top_layer{i}")(x) for i in range(self.headcount)]


class SelaPreActBottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + shortcut


class SelaResNetV2(nn.Module):
    """models/resnetv2.py PreActResNet: `features` = conv, maxpool, 4 stages, avgpool; top_layer heads."""

    def __init__(self, heads: Sequence[int], depths: Sequence[int] = (3, 4, 6, 3), base: int = 64) -> None:
        super().__init__()
        cin = base
        stages = []
        for i, n in enumerate(depths):
            planes = base * 2 ** i
            blocks = []
            for b in range(n):
                blocks.append(SelaPreActBottleneck(cin, planes, 2 if (b == 0 and i > 0) else 1))
                cin = 4 * planes
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.MaxPool2d(3, 2, 1), *stages,
                                      nn.AdaptiveAvgPool2d((1, 1)))
        self.dim = cin
        self.headcount = len(heads)
        if len(heads) == 1:
            self.top_layer = nn.Sequential(nn.Linear(cin, heads[0]))
        else:
            for a, k in enumerate(heads):
                setattr(self, f"top_layer{a}", nn.Linear(cin, k))
            self.top_layer = None

    def penultimate(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return out.view(out.size(0), -1)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.penultimate(x)
        if self.headcount == 1:
            return [self.top_layer(out)]
        return [getattr(self, f"top_layer{i}")(out) for i in range(self.headcount)]


# ---------------------------------------------------------------------------------------------
# RotNet (gidariss/FeatureLearningRotNet)


class RotFlatten(nn.Module):
    def forward(self, feat: Tensor) -> Tensor:
        return feat.view(feat.size(0), -1)


class RotNetAlexNet(nn.Module):
    """architectures/AlexNet.py: `_feature_blocks` conv1, pool1, conv2, pool2, conv3-5, pool5, fc_block, classifier."""

    def __init__(self, widths: Sequence[int] = (64, 192, 384, 256, 256), fc: int = 4096, input_size: int = 224,
                 num_classes: int = 4) -> None:
        super().__init__()
        w = widths

        def conv(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        blocks = [conv(3, w[0], 11, 4, 2), nn.MaxPool2d(3, 2), conv(w[0], w[1], 5, 1, 2), nn.MaxPool2d(3, 2),
                  conv(w[1], w[2], 3, 1, 1), conv(w[2], w[3], 3, 1, 1), conv(w[3], w[4], 3, 1, 1), nn.MaxPool2d(3, 2)]
        with torch.no_grad():
            flat = nn.Sequential(*blocks).eval()(torch.zeros(1, 3, input_size, input_size)).numel()
        fc_block = nn.Sequential(RotFlatten(),
                                 nn.Linear(flat, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
                                 nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True))
        self._feature_blocks = nn.ModuleList(blocks + [fc_block, nn.Sequential(nn.Linear(fc, num_classes))])

    def upto(self, x: Tensor, last: int) -> Tensor:
        for block in self._feature_blocks[: last + 1]:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.upto(x, 9)


# ---------------------------------------------------------------------------------------------
# checkpoint writers (each returns the reference model, in eval mode, and the file path)


def write_scan_imagenet(path: Path, nheads: int = 10, clusters: int = 5, head: object = None,
                        resume: bool = False, seed: int = 1) -> ScanClusteringModel:
    """SCAN ResNet-50 clustering model: {'model','head'} or, with resume=True, the module.-prefixed resume file."""
    ref = random_model(lambda: ScanClusteringModel(scan_imagenet_backbone(), 2048, clusters, nheads), seed)
    if resume:
        state = prefixed(ref.state_dict(), "module.")
        optimizer = torch.optim.Adam(ref.cluster_head.parameters()).state_dict()
        obj = {"optimizer": optimizer, "model": state, "epoch": 12, "best_loss": np.float64(-3.25),
               "best_loss_head": head}
    else:
        obj = {"model": ref.state_dict(), "head": head}
    save(obj, path)
    return ref



SMALL_WIDTHS = (32, 64, 96, 64, 64)  # the embedded benchmark's AlexNet widths at 128×128 input


def small_rotnet(seed: int = 3, fc: int = 64) -> RotNetAlexNet:
    """A RotNet AlexNet with small widths at 128×128 input."""
    return random_model(lambda: RotNetAlexNet(SMALL_WIDTHS, fc=fc, input_size=128), seed)


def small_sela_alexnet(heads: Sequence[int] = (5, 5), seed: int = 4, fc: int = 64) -> SelaAlexNet:
    """A SeLa AlexNet with small widths at 128×128 input."""
    return random_model(lambda: SelaAlexNet(SMALL_WIDTHS, fc, heads, 128), seed)


def small_scan_cifar(nheads: int = 3, clusters: int = 4, seed: int = 5) -> ScanClusteringModel:
    """A SCAN CIFAR ResNet-18 with narrow widths."""
    return random_model(lambda: ScanClusteringModel(ScanResNet18(widths=(8, 16, 32, 64)), 64, clusters, nheads), seed)
