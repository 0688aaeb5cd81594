"""RepDistiller's wide ResNets wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 (models/wrn.py of
HobbitLong/RepDistiller; Zagoruyko & Komodakis 2016): pre-activation blocks, depth 6n + 4, widths
16k/32k/64k, a 1x1 ``convShortcut`` where a block changes the shape, no dropout.

The stages ``block1``..``block3`` end on a residual sum, with no ReLU after it: their outputs are
the features RepDistiller's ``is_feat`` returns, but they have no pre-activation a hook can take
(RepDistiller's ``preact`` passes them through the next block's batch norm instead), so AB
distillation refuses them.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        # where the shape changes, the shortcut starts from the activated input, as the original
        return (x if self.convShortcut is None else self.convShortcut(act)) + out


class NetworkBlock(nn.Module):
    """A stage; its blocks sit in ``layer``, as RepDistiller's parameter names have them."""

    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[WideBlock(cin if k == 0 else cout, cout, stride if k == 0 else 1)
                                     for k in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    feature_stages = ("block1", "block2", "block3")

    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"wide ResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # RepDistiller's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.avg_pool2d(self.relu(self.bn1(x)), 8)
        return self.fc(x.flatten(1))


DEPTH_WIDTH = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}


def build(name: str, num_classes: int) -> WideResNet:
    depth, widen = DEPTH_WIDTH[name]
    return WideResNet(depth, widen, num_classes)
