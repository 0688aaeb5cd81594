"""RepDistiller's ``MobileNetV2`` (models/mobilenetv2.py of HobbitLong/RepDistiller, its
``mobile_half``): MobileNetV2 at width 0.5 and expansion 6 for 32x32 inputs (a stride-2 stem,
every block with its 1x1 expansion, even at expansion 1), a 1280-channel 1x1 conv, a 2x2
average pool and ``classifier.0``.

Its stage features are the outputs of ``blocks.1``, ``blocks.2``, ``blocks.4`` and ``blocks.6``
(what its ``is_feat`` returns). They end on a linear batch norm, with no ReLU: RepDistiller's
``preact`` returns the same tensors, while AB's hook, which needs a ReLU ending each stage,
refuses them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion, channels at width 1, blocks, stride of the first block)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class CifarMobileNetV2(nn.Module):
    feature_stages = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")

    def __init__(self, num_classes: int = 100, width: float = 0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = _conv_bn_relu(3, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for expand, channels, n, stride in SETTINGS:
            cout = int(channels * width)
            self.blocks.append(nn.Sequential(*[InvertedResidual(cin if k == 0 else cout, cout, stride if k == 0 else 1,
                                                                expand) for k in range(n)]))
            cin = cout
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(cin, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.avgpool = nn.AvgPool2d(2, ceil_mode=True)  # 32 // 16: the 2x2 map a 32x32 input leaves
        for m in self.modules():  # RepDistiller's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.classifier(self.avgpool(self.conv2(x)).flatten(1))


def build(name: str, num_classes: int) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes)
