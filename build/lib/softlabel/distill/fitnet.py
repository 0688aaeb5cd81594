"""FitNet (Romero et al., ICLR 2015): the student's middle stage, through a trained convolutional
regressor, regresses the teacher's (MSE). Hint stage and regressor as RepDistiller
(``--hint_layer 2``: the second stage; ``ConvReg``: conv, batch norm, ReLU); weight 100."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from softlabel.distill.base import Distiller, Features

HINT = 1  # the second stage (RepDistiller's feat[2]: its feat[0] is the stem)


def regressor(s_shape: torch.Size, t_shape: torch.Size, relu: bool = True) -> nn.Module:
    """RepDistiller's ConvReg: a convolution that maps the student's map onto the teacher's shape,
    batch norm, and (``relu``) a ReLU."""
    s_c, s_h, s_w = s_shape[1:]
    t_c, t_h, t_w = t_shape[1:]
    if s_h == 2 * t_h:
        conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif s_h * 2 == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ValueError(f"FitNet: student map {s_h}x{s_w} smaller than the teacher's {t_h}x{t_w} by more than 2x")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), *([nn.ReLU(inplace=True)] if relu else []))


class FitNet(Distiller):
    name, weight, source = "fitnet", 100.0, "Romero et al. 2015; RepDistiller -b 100"

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        self.regressor = regressor(student.stages[HINT].shape, teacher.stages[HINT].shape)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return nn.functional.mse_loss(self.regressor(student.stages[HINT]), teacher.stages[HINT])
