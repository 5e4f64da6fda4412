"""Reference networks in the module layouts of MoCo v1/v2/v3, SwAV, DINO, VICReg and the SimCLR/BYOL converters,
and writers of their published checkpoint layouts.

Each class is written independently of ssl_models, following the upstream module structure
(facebookresearch/moco, moco-v3, swav, dino, vicreg; tonylins/simclr-converter; Separius/SimCLRv2-Pytorch),
so that `state_dict()` yields the published keys and `forward` is the published computation. Small
ResNets (one bottleneck per stage) keep the tests fast; the key layout is torchvision's.
"""
from __future__ import annotations

import argparse
import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

from ssl_fixtures import prefixed, random_model, randomize_, save


def small_resnet(num_classes: int = 1000, blocks: tuple[int, ...] = (1, 1, 1, 1)) -> torchvision.models.ResNet:
    """torchvision ResNet with bottleneck blocks (ResNet-50 layout, fewer blocks)."""
    return torchvision.models.resnet.ResNet(Bottleneck, list(blocks), num_classes=num_classes)


def _sgd_state(model: nn.Module) -> dict:
    return torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9).state_dict()


# ---------------------------------------------------------------------------------------------
# MoCo v1/v2 (facebookresearch/moco, moco/builder.py)


class MoCo(nn.Module):
    """Query/key encoders (resnet with fc = dim, or MLP head when mlp=True) and the negative queue."""

    def __init__(self, base_encoder, dim: int = 128, queue: int = 64, mlp: bool = True) -> None:
        super().__init__()
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            dim_mlp = self.encoder_q.fc.weight.shape[1]
            self.encoder_q.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_q.fc)
            self.encoder_k.fc = nn.Sequential(nn.Linear(dim_mlp, dim_mlp), nn.ReLU(), self.encoder_k.fc)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))


def moco_v2(seed: int = 11, base_encoder=small_resnet, mlp: bool = True) -> MoCo:
    """A MoCo model with random weights."""
    return random_model(lambda: MoCo(base_encoder, mlp=mlp), seed)


def write_moco(model: MoCo, path: Path) -> Path:
    """main_moco.py save_checkpoint: {'epoch','arch','state_dict','optimizer'} of the DDP-wrapped model."""
    return save({"epoch": 200, "arch": "resnet50", "state_dict": prefixed(model.state_dict(), "module."),
                 "optimizer": _sgd_state(model)}, path)


# ---------------------------------------------------------------------------------------------
# MoCo v3 ResNet (facebookresearch/moco-v3, moco/builder.py)


def _build_mlp(num_layers: int, input_dim: int, mlp_dim: int, output_dim: int, last_bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(num_layers):
        dim1 = input_dim if index == 0 else mlp_dim
        dim2 = output_dim if index == num_layers - 1 else mlp_dim
        layers.append(nn.Linear(dim1, dim2, bias=False))
        if index < num_layers - 1:
            layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(dim2, affine=False))
    return nn.Sequential(*layers)


class MoCoV3ResNet(nn.Module):
    """MoCo_ResNet: base/momentum encoders whose fc is a 2-layer projector, plus a predictor."""

    def __init__(self, base_encoder, dim: int = 32, mlp_dim: int = 64) -> None:
        super().__init__()
        self.base_encoder = base_encoder(num_classes=mlp_dim)
        self.momentum_encoder = base_encoder(num_classes=mlp_dim)
        hidden_dim = self.base_encoder.fc.weight.shape[1]
        del self.base_encoder.fc, self.momentum_encoder.fc
        self.base_encoder.fc = _build_mlp(2, hidden_dim, mlp_dim, dim)
        self.momentum_encoder.fc = _build_mlp(2, hidden_dim, mlp_dim, dim)
        self.predictor = _build_mlp(2, dim, mlp_dim, dim, False)


def write_moco_v3(path: Path, seed: int = 12) -> tuple[MoCoV3ResNet, Path]:
    """main_moco.py (v3): {'epoch','arch','state_dict','optimizer','scaler'}, DDP prefix."""
    model = random_model(lambda: MoCoV3ResNet(small_resnet), seed)
    return model, save({"epoch": 100, "arch": "resnet50", "state_dict": prefixed(model.state_dict(), "module."),
                        "optimizer": _sgd_state(model), "scaler": {"scale": 1024.0}}, path)


# ---------------------------------------------------------------------------------------------
# SwAV (facebookresearch/swav, src/resnet50.py)


class SwAVResNet(nn.Module):
    """ResNet with zero padding before a padding-2 stem conv, projection_head MLP, L2 norm and prototypes."""

    def __init__(self, hidden_mlp: int = 64, output_dim: int = 16, nmb_prototypes: int = 30) -> None:
        super().__init__()
        trunk = small_resnet()
        self.padding = nn.ConstantPad2d(1, 0.0)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=2, bias=False)
        self.bn1, self.relu, self.maxpool = trunk.bn1, nn.ReLU(inplace=True), trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.projection_head = nn.Sequential(nn.Linear(2048, hidden_mlp), nn.BatchNorm1d(hidden_mlp),
                                             nn.ReLU(inplace=True), nn.Linear(hidden_mlp, output_dim))
        self.prototypes = nn.Linear(output_dim, nmb_prototypes, bias=False)

    def forward_backbone(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.padding(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.normalize(self.projection_head(x), dim=1, p=2)
        return x, self.prototypes(x)


def write_swav(path: Path, seed: int = 13, wrapped: bool = False) -> tuple[SwAVResNet, Path]:
    """Released swav_800ep_pretrain.pth.tar: the DDP state_dict itself; wrapped=True: main_swav's checkpoint."""
    model = random_model(SwAVResNet, seed)
    state = prefixed(model.state_dict(), "module.")
    obj = {"epoch": 800, "state_dict": state, "optimizer": _sgd_state(model)} if wrapped else state
    return model, save(obj, path)


# ---------------------------------------------------------------------------------------------
# DINO (facebookresearch/dino, vision_transformer.DINOHead and utils.MultiCropWrapper)


class DINOHead(nn.Module):
    """MLP (Linear-GELU-Linear-GELU-Linear), L2 normalisation, weight-normed bias-free last layer."""

    def __init__(self, in_dim: int, out_dim: int = 40, hidden_dim: int = 64, bottleneck_dim: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated, DINO still uses it
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """backbone (torchvision resnet, fc = Identity) followed by the head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        backbone.fc = nn.Identity()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def dino_pair(seed: int = 14) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student and teacher with different random weights (weight_g random too: norm_last_layer=False)."""
    def make(s: int) -> MultiCropWrapper:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = MultiCropWrapper(small_resnet(), DINOHead(2048))
        randomize_(net, s)
        with torch.no_grad():
            net.head.last_layer.weight_g.copy_(torch.rand(40, 1, generator=torch.Generator().manual_seed(s)) + 0.5)
        return net.eval()
    return make(seed), make(seed + 100)


def write_dino_full(path: Path, seed: int = 14) -> tuple[MultiCropWrapper, Path]:
    """main_dino.py save_dict: student/teacher (both DDP for a ResNet), optimizer, epoch, args, dino_loss."""
    student, teacher = dino_pair(seed)
    args = argparse.Namespace(arch="resnet50", out_dim=40, norm_last_layer=False, use_bn_in_head=False)
    obj = {"student": prefixed(student.state_dict(), "module."), "teacher": prefixed(teacher.state_dict(), "module."),
           "optimizer": _sgd_state(student), "epoch": 800, "args": args,
           "dino_loss": {"center": torch.zeros(1, 40)}}
    return teacher, save(obj, path)


def write_backbone_only(net: nn.Module, path: Path) -> Path:
    """dino_resnet50_pretrain.pth / VICReg resnet50.pth: the trunk's state_dict without fc."""
    state = {key: value for key, value in net.state_dict().items() if not key.startswith("fc.")}
    return save(state, path)


# ---------------------------------------------------------------------------------------------
# VICReg (facebookresearch/vicreg, main_vicreg.py)


class VICReg(nn.Module):
    """backbone (resnet without fc, 2048-d) and the expander Projector built from an mlp spec '64-64-32'."""

    def __init__(self, mlp: str = "64-64-32") -> None:
        super().__init__()
        self.backbone = small_resnet()
        self.backbone.fc = nn.Identity()
        spec = [2048] + [int(n) for n in mlp.split("-")]
        layers: list[nn.Module] = []
        for i in range(len(spec) - 2):
            layers += [nn.Linear(spec[i], spec[i + 1]), nn.BatchNorm1d(spec[i + 1]), nn.ReLU(True)]
        layers.append(nn.Linear(spec[-2], spec[-1], bias=False))
        self.projector = nn.Sequential(*layers)


def write_vicreg(path: Path, seed: int = 15) -> tuple[VICReg, Path]:
    """main_vicreg.py: {'epoch','model','optimizer'} of the DDP-wrapped model."""
    model = random_model(VICReg, seed)
    return model, save({"epoch": 100, "model": prefixed(model.state_dict(), "module."),
                        "optimizer": _sgd_state(model)}, path)


# ---------------------------------------------------------------------------------------------
# converted SimCLR v1 (tonylins/simclr-converter) and BYOL: torchvision ResNet with its supervised fc


def write_converted(path: Path, seed: int = 16) -> tuple[torchvision.models.ResNet, Path]:
    """convert.py: torch.save({'state_dict': model.state_dict()}) of a torchvision-layout ResNet with fc."""
    model = random_model(lambda: small_resnet(num_classes=10), seed)
    return model, save({"state_dict": model.state_dict()}, path)


# ---------------------------------------------------------------------------------------------
# SimCLRv2 converter (Separius/SimCLRv2-Pytorch, resnet.py, sk_ratio = 0)


class BatchNormRelu(nn.Sequential):
    def __init__(self, channels: int, relu: bool = True) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU() if relu else nn.Identity())


def _conv(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False)


class V2Projection(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut = _conv(cin, cout, 1, stride)
        self.bn = BatchNormRelu(cout, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.shortcut(x))


class V2Bottleneck(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.projection = V2Projection(cin, planes * 4, stride) if projection else nn.Identity()
        self.net = nn.Sequential(_conv(cin, planes, 1), BatchNormRelu(planes), _conv(planes, planes, 3, stride),
                                 BatchNormRelu(planes), _conv(planes, planes * 4, 1), BatchNormRelu(planes * 4, False))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.projection(x) + self.net(x))


class V2Blocks(nn.Module):
    def __init__(self, count: int, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([V2Bottleneck(cin, planes, stride, True)])
        self.blocks.extend(V2Bottleneck(planes * 4, planes, 1, False) for _ in range(count - 1))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SimCLRv2ResNet(nn.Module):
    """net = [stem (7×7 conv, BN-ReLU, maxpool), 4 × Blocks]; features = spatial mean; fc = supervised head."""

    def __init__(self, layers: tuple[int, ...] = (1, 2, 1, 1), width: int = 1) -> None:
        super().__init__()
        stem = nn.Sequential(_conv(3, 64 * width, 7, 2), BatchNormRelu(64 * width), nn.MaxPool2d(3, 2, 1))
        ops: list[nn.Module] = [stem]
        cin = 64 * width
        for count, planes, stride in zip(layers, (64, 128, 256, 512), (1, 2, 2, 2)):
            ops.append(V2Blocks(count, cin, planes * width, stride))
            cin = planes * width * 4
        self.net = nn.Sequential(*ops)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: Tensor, apply_fc: bool = False) -> Tensor:
        h = self.net(x).mean(dim=[2, 3])
        return self.fc(h) if apply_fc else h


class ContrastiveHead(nn.Module):
    """layers = 3 × (bias-free Linear, BatchNorm1d[, ReLU]) as a ModuleList."""

    def __init__(self, channels: int = 2048, out_dim: int = 16) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(3):
            dim = out_dim if i == 2 else channels
            self.layers.append(nn.Linear(channels, dim, bias=False))
            self.layers.append(nn.BatchNorm1d(dim))
            if i != 2:
                self.layers.append(nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def write_simclr_v2(path: Path, seed: int = 17) -> tuple[SimCLRv2ResNet, ContrastiveHead, Path]:
    """convert.py: torch.save({'resnet': model.state_dict(), 'head': head.state_dict()})."""
    resnet = random_model(SimCLRv2ResNet, seed)
    head = random_model(lambda: ContrastiveHead(2048), seed + 1)
    return resnet, head, save({"resnet": resnet.state_dict(), "head": head.state_dict()}, path)


def without_fc(net: nn.Module) -> nn.Module:
    """A float64 copy of a torchvision ResNet whose fc is Identity (its forward gives pooled features)."""
    ref = copy.deepcopy(net).double()
    ref.fc = nn.Identity()
    return ref.eval()
