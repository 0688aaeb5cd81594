"""RepDistiller's CIFAR model zoo (``model_dict`` of models/__init__.py of HobbitLong/RepDistiller,
the CRD paper's code), with its exact parameter names and forward: its teacher files load as
they are and label as its models do.

Each model returns logits only; its ``feature_stages`` names the modules whose outputs are the
stage features RepDistiller's ``is_feat`` returns (taken by forward hooks, softlabel/distill).
Names are RepDistiller's, except where the name already means another model here: its option-B
CIFAR ResNets are ``resnet8_b`` .. ``resnet110_b`` (``resnet20`` .. ``resnet110`` are the option-A
ones of softlabel/cifar_resnet.py) and its VGGs are ``vgg8_cifar`` .. ``vgg19_cifar`` (``vgg11`` ..
``vgg19`` are torchvision's). ``RENAMED`` maps RepDistiller's name to ours.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Callable, Optional

import torch.nn as nn

from softlabel.cifar_resnet import DEPTHS as OPTION_A
from softlabel.zoo import mobilenetv2, resnet, resnetv2, shufflenet, vgg, wrn

# dataset/cifar100.py of RepDistiller: the normalization its teachers were trained with
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

MODELS: dict[str, Callable[[int], nn.Module]] = {}
for _module, _names in ((resnet, (*resnet.DEPTHS_B, *resnet.WIDE)), (resnetv2, resnetv2.LAYOUTS), (wrn, wrn.DEPTH_WIDTH),
                        (vgg, vgg.CONFIGS), (mobilenetv2, ("MobileNetV2",)), (shufflenet, ("ShuffleV1", "ShuffleV2"))):
    MODELS.update({name: partial(_module.build, name) for name in _names})

RENAMED = {**{name.removesuffix("_b"): name for name in resnet.DEPTHS_B},
           **{name.removesuffix("_cifar"): name for name in vgg.CONFIGS}}

# A name that means another model here, whose weights a zoo model's file is easily taken for
# (and the reverse for the option-A/B ResNets): such a file is refused naming the right one.
TWINS = {**{a: a + "_b" for a in OPTION_A}, **{a + "_b": a for a in OPTION_A},
         **{tv: name for name in vgg.CONFIGS if name != "vgg8_cifar"
            for tv in (name.removesuffix("_cifar"), name.replace("_cifar", "_bn"))},
         **{name.lower(): name for name in resnetv2.LAYOUTS}}


def from_repdistiller(name: str) -> Optional[str]:
    """Our name of RepDistiller's model ``name`` (None: not in its ``model_dict``)."""
    ours = RENAMED.get(name, name)
    return ours if ours in MODELS else None


def repdistiller_name(ours: str) -> str:
    """RepDistiller's name of our zoo model ``ours`` (the inverse of ``from_repdistiller``)."""
    return next((rd for rd, name in RENAMED.items() if name == ours), ours)


def arch_from_folder(path: str) -> Optional[str]:
    """The model a RepDistiller teacher file holds, read from its folder's name as RepDistiller's
    ``get_teacher_name`` (train_student.py) reads it: the part before the first '_'
    (``resnet8x4_vanilla``, ``resnet56_cifar100_lr_0.05_decay_0.0005_trial_0``), the first three
    parts for wide ResNets (``wrn_40_2_vanilla``). Our name of it; None when it names no zoo model."""
    parts = os.path.basename(os.path.dirname(os.path.abspath(path))).split("_")
    return from_repdistiller("_".join(parts[:3]) if parts[0] == "wrn" else parts[0])


def describe(name: str) -> str:
    """What ``name`` is, in a few words: the line that tells two twins apart."""
    if name in resnet.DEPTHS_B:
        return f"RepDistiller's {name[:-2]}: option-B shortcuts, 1x1 conv + BN where the shape changes"
    if name in OPTION_A:
        return "He et al.'s CIFAR ResNet: option-A shortcuts, parameter-free"
    if name in MODELS:
        return f"RepDistiller's CIFAR {repdistiller_name(name)}"
    return f"torchvision's ImageNet {name}"
