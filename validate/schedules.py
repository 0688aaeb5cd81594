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


SCHEDULES: dict[str, Callable[..., float]] = {"linear": linear, "prism-cos": prism_cos, "cosine": cosine,
                                              "step": step, "multistep": multistep}
