"""RepDistiller's CIFAR ShuffleNets (models/ShuffleNetv1.py and ShuffleNetv2.py of
HobbitLong/RepDistiller): ``ShuffleV1`` (3 groups, stages of 240/480/960 channels) and
``ShuffleV2`` (net size 1: 116/232/464 channels, 1024 before the classifier), both with a 1x1
stem of 24 channels and no max pool, for 32x32 inputs.

Their stages are ``layer1``..``layer3``. ShuffleV1's blocks call one ReLU module, last on the
block's sum, so AB's hook takes the pre-activation RepDistiller's ``preact`` gives. ShuffleV2's
stage output is a channel shuffle of the concatenation, and RepDistiller's ``preact`` is that
concatenation before its ReLU and shuffle: no hook gives it, so AB refuses ShuffleV2.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet v1's bottleneck: grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; stride 2
    concatenates an average-pooled shortcut, stride 1 adds the input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not grouped
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu = nn.ReLU()  # a module, last called on the pre-activation (AB's hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    feature_stages = ("layer1", "layer2", "layer3")

    def __init__(self, num_classes: int = 100, widths: tuple[int, ...] = (240, 480, 960),
                 counts: tuple[int, ...] = (4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (cout, n) in enumerate(zip(widths, counts)):
            # the first unit concatenates its input, so it computes only the missing channels
            units = [ShuffleUnit(cin if k == 0 else cout, cout - cin if k == 0 else cout, 2 if k == 0 else 1, groups)
                     for k in range(n)]
            setattr(self, f"layer{stage + 1}", nn.Sequential(*units))
            cin = cout
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))


class SplitUnit(nn.Module):
    """ShuffleNet v2's basic unit: half the channels pass, the other half go through 1x1,
    depthwise 3x3, 1x1; concatenated and shuffled."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1] // 2
        kept, x = x[:, :c], x[:, c:]
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class DownUnit(nn.Module):
    """ShuffleNet v2's stride-2 unit: two branches on the whole input, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    feature_stages = ("layer1", "layer2", "layer3")

    def __init__(self, num_classes: int = 100, widths: tuple[int, ...] = (116, 232, 464, 1024),
                 counts: tuple[int, ...] = (3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        cin = 24
        for stage, (cout, n) in enumerate(zip(widths, counts)):
            setattr(self, f"layer{stage + 1}", nn.Sequential(DownUnit(cin, cout), *[SplitUnit(cout) for _ in range(n)]))
            cin = cout
        self.conv2 = nn.Conv2d(cin, widths[3], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))


def build(name: str, num_classes: int) -> nn.Module:
    return ShuffleNetV1(num_classes) if name == "ShuffleV1" else ShuffleNetV2(num_classes)
