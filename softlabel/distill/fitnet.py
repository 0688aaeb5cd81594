"""FitNet (Romero et al., ICLR 2015): the student's middle stage, through a trained convolutional
regressor, regresses the teacher's (MSE). Hint stage and regressor as RepDistiller
(``--hint_layer 2``: the second stage; ``ConvReg``: conv, batch norm, ReLU); weight 100."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from softlabel.distill.base import Distiller, Features

HINT = 1  # the second stage (RepDistiller's feat[2]: its feat[0] is the stem)


def regressor_problem(s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
    """Why no ConvReg maps a student's map of ``s_shape`` onto the teacher's ``t_shape``, if none does."""
    (s_h, s_w), (t_h, t_w) = s_shape[2:], t_shape[2:]
    if s_h == 2 * t_h or 2 * s_h == t_h or (s_h >= t_h and s_w >= t_w):
        return None
    return (f"the student's {s_h}x{s_w} map is smaller than the teacher's {t_h}x{t_w} (the regressor maps a map "
            f"of twice, half or at least the teacher's size onto it)")


def regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Module:
    """RepDistiller's ConvReg: a convolution that maps the student's map onto the teacher's shape,
    batch norm, and (``relu``) a ReLU."""
    s_c, s_h, s_w = s_shape[1:]
    t_c, t_h, t_w = t_shape[1:]
    problem = regressor_problem(s_shape, t_shape)
    if problem:
        raise ValueError(problem)
    if s_h == 2 * t_h:
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif s_h * 2 == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    else:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU(inplace=True)] if relu else []))


class FitNet(Distiller):
    name, weight, source = "fitnet", 100.0, "Romero et al. 2015; RepDistiller -b 100"
    maps, min_stages = "second", HINT + 1  # a hint stage (the teacher's) and a guided one (the student's)

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        return regressor_problem(s_shape, t_shape) if i == HINT else None

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        self.regressor = regressor(student.stages[HINT].shape, teacher.stages[HINT].shape)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return nn.functional.mse_loss(self.regressor(student.stages[HINT]), teacher.stages[HINT])
