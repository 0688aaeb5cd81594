"""Activation-boundary distillation (Heo et al., AAAI 2019): before training, the student learns
where the teacher's neurons switch on. For every stage, a connector (identity where the shapes
agree, else RepDistiller's ConvReg without ReLU) maps the student's pre-activation s onto the
teacher's t, and a margin loss (margin 1) pushes s above +1 where t > 0 and below -1 where t <= 0:
sum((s + 1)^2 [s > -1, t <= 0] + (s - 1)^2 [s <= 1, t > 0]) / batch, stage i of n weighted
2^(i - n + 1), the sum scaled by 3 / 1000. The connectors and the student train on it alone in an
init stage (30 epochs); distilling then adds nothing to the cross-entropy, as RepDistiller's
``abound`` (its ``loss_kd = 0``; ``-a 0 -b 1``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from softlabel.distill.base import Distiller, Features
from softlabel.distill.fitnet import regressor, regressor_problem

MARGIN = 1.0


def boundary_loss(s: torch.Tensor, t: torch.Tensor, margin: float = MARGIN) -> torch.Tensor:
    """The summed alternative-L2 margin loss of one stage."""
    off = (s + margin) ** 2 * ((s > -margin) & (t <= 0)).to(s.dtype)
    on = (s - margin) ** 2 * ((s <= margin) & (t > 0)).to(s.dtype)
    return (off + on).sum()


class ActivationBoundaries(Distiller):
    name, weight, source = "ab", 1.0, "Heo et al. 2019; RepDistiller abound, --init_epochs 30, -b 1 (no loss after init)"
    preact, init_epochs, init_trains_student, distills = True, 30, True, False
    maps = "every"

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        return None if s_shape[1:3] == t_shape[1:3] else regressor_problem(s_shape, t_shape)

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        self.connectors = nn.ModuleList(
            nn.Identity() if fs.shape[1:3] == ft.shape[1:3] else regressor(fs.shape, ft.shape, relu=False)
            for fs, ft in zip(student.stages, teacher.stages))

    def init_parts(self) -> list[nn.Module]:
        return [self.connectors]

    def init_loss(self, student: Optional[Features], teacher: Features) -> torch.Tensor:
        n, batch = len(teacher.stages), teacher.stages[0].shape[0]
        total = torch.zeros((), device=teacher.stages[0].device)
        for i, (connect, fs, ft) in enumerate(zip(self.connectors, student.stages, teacher.stages)):
            total = total + 2.0 ** (i - n + 1) * boundary_loss(connect(fs), ft)
        return total / batch * 3 / 1000

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return torch.zeros((), device=student.stages[0].device)
