"""The flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller's ``FSP``: for each
pair of consecutive stages (the larger map average-pooled to the smaller's size) the FSP matrix
G[j, i] = mean over positions of top[j] x bottom[i] (channels of the later stage by channels of
the earlier), and the loss is the mean squared difference of the student's and the teacher's
matrices, summed over pairs. It needs the same channels on both sides at every stage.

RepDistiller pairs its ``feat[:-1]``: the stem's output and its ResNets' stages. Our hooks take
the stages (layer1, layer2, ...), so by default the pairs are the stages' (two of RepDistiller's
three on a CIFAR ResNet); name a stem module first in --feat-layers to pair it too (a module
whose output is the stem's: torchvision ResNets' ``maxpool``; our CIFAR ResNets apply the stem's
ReLU as a function, so only ``bn1``, before it, can be tapped).

As RepDistiller, the student alone trains on this loss (unweighted) in an init stage (30 epochs,
at the run's learning rate); distilling then adds nothing to the cross-entropy (its
``loss_kd = 0``; ``-a 0 -b 50``)."""
from __future__ import annotations

from typing import Optional

import torch

from softlabel.distill.base import Distiller, Features, pool_to_match


def fsp_matrices(stages: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, C_(k+1), C_k) for every pair of consecutive stages k, k + 1."""
    out = []
    for bottom, top in zip(stages[:-1], stages[1:]):
        bottom, top = pool_to_match(bottom, top)
        out.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / (top.shape[2] * top.shape[3]))
    return out


def channel_problem(s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
    """Why a method comparing channel by channel cannot take these maps, if it cannot."""
    if s_shape[1] == t_shape[1]:
        return None
    return f"{s_shape[1]} channels against {t_shape[1]}: the method compares them channel by channel"


class FlowOfSolution(Distiller):
    name, weight = "fsp", 50.0
    source = "Yim et al. 2017; RepDistiller fsp, --init_epochs 30, -b 50 (no loss after init)"
    init_epochs, init_trains_student, distills = 30, True, False
    maps, min_stages = "every", 2

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        return channel_problem(s_shape, t_shape)

    def init_loss(self, student: Optional[Features], teacher: Features) -> torch.Tensor:
        total = torch.zeros((), device=teacher.stages[0].device)
        for gs, gt in zip(fsp_matrices(student.stages), fsp_matrices(teacher.stages)):
            total = total + (gs - gt).pow(2).mean()
        return total

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.zeros((), device=student.stages[0].device)
