"""Correlation congruence (Peng et al., ICCV 2019), as RepDistiller's ``Correlation`` (its
``--distill correlation``): the penultimate embeddings of student and teacher (the last stage,
globally average-pooled: RepDistiller's ``feat[-1]``) each go through a linear embedding of
their own to 128 dimensions (its ``LinearEmbed``, ``--feat_dim 128``; no normalization, both
trained with the student); with d_i = |e_s(x_i) - e_t(x_i)| for the i-th sample of the batch,
the loss is the mean over neighbouring samples of sum_k d_i[k] d_(i+1)[k]. Weight 0.02
(RepDistiller's -b). A batch of one sample has no neighbour: its loss is 0."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from softlabel.distill.base import Distiller, Features

FEAT_DIM = 128


class CorrelationCongruence(Distiller):
    name, weight, source = "cc", 0.02, "Peng et al. 2019; RepDistiller correlation, -b 0.02, feat_dim 128"

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        self.embed_s = nn.Linear(student.embedding.shape[1], FEAT_DIM)
        self.embed_t = nn.Linear(teacher.embedding.shape[1], FEAT_DIM)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        delta = (self.embed_s(student.embedding) - self.embed_t(teacher.embedding)).abs()
        if len(delta) < 2:
            return delta.sum() * 0
        return (delta[:-1] * delta[1:]).sum(1).mean()
