"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the row-normalized batch similarity matrices
of the last stage's activations, squared Frobenius distance / B^2; weight 3000 (RepDistiller)."""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features


def similarity(f: torch.Tensor) -> torch.Tensor:
    f = f.reshape(f.shape[0], -1)
    return F.normalize(f @ f.t())


class Similarity(Distiller):
    name, weight, source = "sp", 3000.0, "Tung & Mori 2019; RepDistiller -b 3000"

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        b = student.stages[-1].shape[0]
        return (similarity(teacher.stages[-1]) - similarity(student.stages[-1])).pow(2).sum() / (b * b)
