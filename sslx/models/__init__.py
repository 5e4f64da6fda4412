"""sslx.models: small benchmark classifiers (VGG-style and ResNet(Bottleneck)-style) as plain nn.Modules."""
from __future__ import annotations

from sslx.models.small import ARCHS, SmallResNet, SmallVGG, build_classifier, small_resnet, small_vgg

__all__ = ["ARCHS", "SmallResNet", "SmallVGG", "build_classifier", "small_resnet", "small_vgg"]
