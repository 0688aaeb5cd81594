"""The CIFAR ResNets of He et al. 2016 (section 4.2): resnet20/32/44/56/110 for 32x32 inputs.

A 3x3 stem of 16 channels, three stages of n basic blocks (16, 32, 64 channels; stride 2 at
the start of stages 2 and 3), global average pooling and one linear layer, with depth 6n + 2.
Shortcuts are "option A": identity, subsampled and zero-padded where the shape changes, so
they add no parameters (0.27M / 0.46M / 0.66M / 0.85M / 1.7M parameters at 10 classes).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # a module, as torchvision's blocks have, so hooks can see the block's pre-activation (AB distillation)
        self.relu = nn.ReLU()
        self.stride, self.pad = stride, cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        # layer1..3, as He et al.'s CIFAR ResNets are usually published (Idelbayev's code, the
        # label-optimization study's models/small_resnet.py): their checkpoints load as they are.
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            blocks = [BasicBlock(cin if k == 0 else cout, cout, 2 if stage > 0 and k == 0 else 1) for k in range(n)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(name: str, num_classes: int) -> CifarResNet:
    return CifarResNet(DEPTHS[name], num_classes)
