"""RepDistiller's CIFAR VGGs with batch norm (models/vgg.py of HobbitLong/RepDistiller, the
``vggN_bn`` builders its ``model_dict`` maps vgg8..vgg19 to): five blocks of 3x3 conv (with
bias) + BN + ReLU, max pools between blocks 0..3 (the one after block 3 only for 64x64 inputs),
global average pooling and one linear ``classifier`` (no FC layers).

Here they are ``vgg8_cifar`` .. ``vgg19_cifar``: ``vgg11`` .. ``vgg19`` are torchvision's
ImageNet VGGs. RepDistiller's blocks leave out their last ReLU and apply it in ``forward``;
ours keep it as the block's last module (it has no parameters, so the state dict is the same),
so a block's output is the stage feature RepDistiller's ``is_feat`` returns and AB's hook finds
its pre-activation as RepDistiller's ``preact`` gives it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

CONFIGS = {
    "vgg8_cifar": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11_cifar": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13_cifar": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16_cifar": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19_cifar": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _block(widths: tuple[int, ...], cin: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cout in widths:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    feature_stages = ("block1", "block2", "block3", "block4")

    def __init__(self, config: tuple[tuple[int, ...], ...], num_classes: int = 100):
        super().__init__()
        cin = 3
        for i, widths in enumerate(config):
            setattr(self, f"block{i}", _block(widths, cin))
            cin = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():  # RepDistiller's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2]
        x = self.pool2(self.block2(self.pool1(self.block1(self.pool0(self.block0(x))))))
        x = self.block3(x)
        if size == 64:  # as the original: a fourth max pool only for 64x64 inputs
            x = self.pool3(x)
        x = self.pool4(self.block4(x))
        return self.classifier(x.flatten(1))


def build(name: str, num_classes: int) -> CifarVGG:
    return CifarVGG(CONFIGS[name], num_classes)
