"""Learning-rate schedules: the factor of the base rate at epoch ``e`` of ``E`` (stepped per epoch).

- ``linear``: 1 - e/E, the default of PRISM's and SRe2L's ImageNet trainers;
- ``prism-cos``: PRISM's ``--cos`` (validate/train_FKD_parallel.py of PRISM): 0.5 (1 + cos(pi e / 2.5E))
  while e <= 5E/6, then 0.5 (1 + cos(pi 5 / 15)) (1 - e/E), i.e. a quarter of a slow cosine and a
  straight line to 0 from 0.75 (1 - e/E);
- ``cosine``: SRe2L's ``--cos`` (its train_FKD.py): 0.5 (1 + cos(pi e / E));
- ``step``: gamma ** (e // size), WSLD's ImageNet schedule (0.1 every 30 epochs, its
  train_with_distillation.py ``adjust_learning_rate``);
- ``multistep``: gamma ** (milestones passed), torch's ``MultiStepLR`` stepped once per epoch, the
  label-optimization study's schedule (main.py: milestones 60,120,160,200 with gamma 0.1 on CIFAR,
  0.2 on STL-10).

``fkd_passes`` is train_FKD.py's epoch loop (szq0214/FKD, FKD/train_FKD.py): one pass over the
images with N crops of each counts as N epochs, and the last epochs are single-crop passes.
"""
from __future__ import annotations

import math
from typing import Callable


def linear(epoch: int, epochs: int) -> float:
    return 1.0 - epoch / epochs if epoch <= epochs else 0.0


def prism_cos(epoch: int, epochs: int) -> float:
    if epoch <= epochs * 5 / 6:
        return 0.5 * (1.0 + math.cos(math.pi * epoch / (2.5 * epochs)))
    return 0.5 * (1.0 + math.cos(math.pi * 5 / (6 * 2.5))) * (6 * epochs - 6 * epoch) / (6 * epochs)


def cosine(epoch: int, epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))


def step(epoch: int, epochs: int, size: int = 30, gamma: float = 0.1) -> float:
    return gamma ** (epoch // size)


def multistep(epoch: int, epochs: int, milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    return gamma ** sum(epoch >= m for m in milestones)


def fkd_passes(epochs: int, num_crops: int) -> list[tuple[int, int]]:
    """(first epoch, crops per image) of every pass of train_FKD.py's loop
    ``for epoch in range(start, epochs, num_crops)``: a pass shows each image ``num_crops``
    times and counts as that many epochs; the pass that reaches ``epochs - num_crops`` is
    replaced by one single-crop pass per remaining epoch ("fine-grained evaluation at last a
    few epochs"). Its learning rate is that of its first epoch."""
    passes: list[tuple[int, int]] = []
    for first in range(0, epochs, num_crops):
        if first >= epochs - num_crops:
            return passes + [(e, 1) for e in range(first, epochs)]
        passes.append((first, num_crops))
    return passes


SCHEDULES: dict[str, Callable[..., float]] = {"linear": linear, "prism-cos": prism_cos, "cosine": cosine,
                                              "step": step, "multistep": multistep}
