"""RepDistiller's CIFAR ResNets (models/resnet.py of HobbitLong/RepDistiller): resnet8..110,
resnet8x4 and resnet32x4.

He et al.'s CIFAR layout (a 3x3 stem, three stages of basic blocks, stride 2 at the start of
stages 2 and 3, depth 6n + 2) with "option B" shortcuts: a 1x1 convolution + batch norm
(``downsample``) wherever a block changes the shape, the identity elsewhere. Here they are
``resnet8_b`` .. ``resnet110_b``: ``resnet20`` .. ``resnet110`` are the option-A networks of
``softlabel/cifar_resnet.py``. The x4 networks are 4x as wide (stem 32, stages 64/128/256), so
their first stage has a shortcut convolution too.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from softlabel.cifar_resnet import BasicBlock

DEPTHS_B = {"resnet8_b": 8, "resnet14_b": 14, "resnet20_b": 20, "resnet32_b": 32, "resnet44_b": 44,
            "resnet56_b": 56, "resnet110_b": 110}
WIDE = {"resnet8x4": 8, "resnet32x4": 32}


class ProjectionBlock(BasicBlock):
    """A basic block whose shortcut is ``downsample`` (1x1 conv + BN) where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, stride)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class CifarResNetB(nn.Module):
    """Stem, layer1..3 and ``fc``, with RepDistiller's parameter names and its fixed 8x8 average
    pool (a 32x32 input)."""

    feature_stages = ("layer1", "layer2", "layer3")

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        cin = widths[0]
        for stage, cout in enumerate(widths[1:]):
            stride = 1 if stage == 0 else 2
            blocks = [ProjectionBlock(cin if k == 0 else cout, cout, stride if k == 0 else 1) for k in range(n)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # RepDistiller's initialization, so students train as there
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.fc(self.avgpool(x).flatten(1))


def build(name: str, num_classes: int) -> CifarResNetB:
    if name in WIDE:
        return CifarResNetB(WIDE[name], (32, 64, 128, 256), num_classes)
    return CifarResNetB(DEPTHS_B[name], (16, 16, 32, 64), num_classes)
