"""Variational information distillation (Ahn et al., CVPR 2019): at every stage a regressor
(three 1x1 convolutions, mid width = the teacher's channels) predicts the teacher's activations
as the mean of a Gaussian with a trained per-channel variance (softplus, initialized to 5); the
loss is its negative log-likelihood, averaged; weight 1 (RepDistiller)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features, pool_to_match

INIT_VAR, EPS = 5.0, 1e-5


class _Stage(nn.Module):
    def __init__(self, s_c: int, t_c: int):
        super().__init__()
        conv = lambda a, b: nn.Conv2d(a, b, kernel_size=1, bias=False)  # noqa: E731
        self.regressor = nn.Sequential(conv(s_c, t_c), nn.ReLU(), conv(t_c, t_c), nn.ReLU(), conv(t_c, t_c))
        self.log_scale = nn.Parameter(torch.full((t_c,), math.log(math.expm1(INIT_VAR - EPS))))

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        fs, ft = pool_to_match(fs, ft)
        var = (F.softplus(self.log_scale) + EPS).view(1, -1, 1, 1)
        return (0.5 * ((self.regressor(fs) - ft) ** 2 / var + torch.log(var))).mean()


class VID(Distiller):
    name, weight, source = "vid", 1.0, "Ahn et al. 2019; RepDistiller -b 1"
    maps = "every"

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        self.stages = nn.ModuleList(_Stage(fs.shape[1], ft.shape[1]) for fs, ft in zip(student.stages, teacher.stages))

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return sum(m(fs, ft) for m, fs, ft in zip(self.stages, student.stages, teacher.stages))
