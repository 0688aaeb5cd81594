"""RepDistiller's CIFAR ResNet18/34/50 (models/resnetv2.py of HobbitLong/RepDistiller).

torchvision's stage widths (64..512) and blocks, on 32x32 inputs: a 3x3 stride-1 stem with no
max pool, four stages (stride 2 at the start of stages 2..4), ``shortcut`` (1x1 conv + BN) where
a block changes the shape, and a ``linear`` classifier. The capitalized names are RepDistiller's;
``resnet18``/``resnet50`` stay torchvision's ImageNet networks.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()  # the identity, with no parameters
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(cin, planes, stride)
        self.relu = nn.ReLU()  # a module, so hooks can see the block's pre-activation (AB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _projection(cin, planes * 4, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNetV2(nn.Module):
    feature_stages = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, block: type, counts: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for k in range(n):
                blocks.append(block(cin, planes, 2 if stage > 0 and k == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # RepDistiller's initialization
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


LAYOUTS = {"ResNet18": (Basic, (2, 2, 2, 2)), "ResNet34": (Basic, (3, 4, 6, 3)), "ResNet50": (Bottleneck, (3, 4, 6, 3))}


def build(name: str, num_classes: int) -> ResNetV2:
    block, counts = LAYOUTS[name]
    return ResNetV2(block, counts, num_classes)
