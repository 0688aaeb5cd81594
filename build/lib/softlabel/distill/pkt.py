"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the cosine-similarity kernels
of the penultimate embeddings, mapped to [0, 1] and normalized per row into conditional
probabilities; KL(teacher || student) averaged over the batch's pairs; weight 30000 (RepDistiller)."""
from __future__ import annotations

from typing import Optional

import torch

from softlabel.distill.base import Distiller, Features

EPS = 1e-7


def conditional(e: torch.Tensor) -> torch.Tensor:
    e = e / (e.pow(2).sum(1, keepdim=True).sqrt() + EPS)
    e = torch.nan_to_num(e, nan=0.0)
    k = (e @ e.t() + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


class PKT(Distiller):
    name, weight, source = "pkt", 30000.0, "Passalis & Tefas 2018; RepDistiller -b 30000"

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        p_s, p_t = conditional(student.embedding), conditional(teacher.embedding)
        return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()
