"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): at every stage, the squared distance
between the L2-normalized spatial attention maps mean_c(f^2) of student and teacher, summed over
stages; weight 1000 (RepDistiller)."""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features, summed_over_stages


def attention(f: torch.Tensor, p: int = 2) -> torch.Tensor:
    return F.normalize(f.pow(p).mean(1).view(f.size(0), -1))


class Attention(Distiller):
    name, weight, source = "at", 1000.0, "Zagoruyko & Komodakis 2017; RepDistiller -b 1000, p = 2"
    maps = "every"

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return summed_over_stages(student, teacher, lambda fs, ft: (attention(fs) - attention(ft)).pow(2).mean())
