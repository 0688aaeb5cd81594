"""Knowledge distillation with singular value decomposition (Lee, Kim & Song, ECCV 2018), as
RepDistiller's ``KDSVD`` (k = 1): at every stage (RepDistiller's ``feat[1:-1]``: the stages'
outputs), each sample's map is a (positions x channels) matrix; its right singular vectors
(channel space, unit norm) are taken, the teacher's first and the student's first four. Of the
student's four, the one with the largest |cosine| to the teacher's, its sign turned to make that
cosine positive, stands for the student. Both are scaled by the teacher's normalized singular
value (with k = 1: 1 where it is non-zero). Between consecutive stages i - 1 and i, every pair of
channel entries (v_i[c], v_(i-1)[c']) gives the RBF exp(-(v_i[c] - v_(i-1)[c'])^2 / 8); the loss is
the squared difference of the student's and the teacher's RBFs, non-finite terms dropped, summed
over pairs and over the batch, divided by the batch size, summed over stage pairs. It needs the
same channels on both sides at every stage; the teacher's singular vectors keep the sign the
decomposition gives them (as RepDistiller).

RepDistiller gives no weight for it (its run_cifar_distill.sh has no ``kdsvd`` line and -b has no
default): 1, the loss as it is."""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features
from softlabel.distill.fsp import channel_problem

TEACHER_VECTORS, STUDENT_VECTORS, RBF_WIDTH = 1, 4, 8.0


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def singular(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` singular values (B, n), L2-normalized over the n, and right singular vectors
    (B, C, n) of each sample's (positions x channels) matrix."""
    x = f.float().flatten(2).transpose(1, 2)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    return F.normalize(_finite(s[:, :n]), dim=1), F.normalize(_finite(vh.transpose(1, 2)[:, :, :n]), dim=1)


def aligned(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """Of the student's vectors (B, C, n), the one closest to the teacher's (B, C, 1) by |cosine|,
    signed to agree with it: (B, C, 1)."""
    cosine = v_s.transpose(1, 2) @ v_t
    best = cosine.abs() == cosine.abs().max(dim=1, keepdim=True).values
    return v_s @ torch.where(best, torch.sign(cosine), torch.zeros_like(cosine))


def rbf(v: torch.Tensor, v_before: torch.Tensor) -> torch.Tensor:
    """(B, C_i, C_(i-1), 1): the RBF of every pair of channel entries of two stages' vectors."""
    return torch.exp(-(v.unsqueeze(2) - v_before.unsqueeze(1)).pow(2) / RBF_WIDTH)


class SingularVectors(Distiller):
    name, weight, source = "kdsvd", 1.0, "Lee et al. 2018; RepDistiller kdsvd, k 1 (no -b given: 1)"
    maps, min_stages = "every", 2

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        return channel_problem(s_shape, t_shape)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        total = torch.zeros((), device=student.stages[0].device)
        before = None
        for fs, ft in zip(student.stages, teacher.stages):
            s_t, v_t = singular(ft.detach(), TEACHER_VECTORS)
            _, v_s = singular(fs, STUDENT_VECTORS)
            scale = s_t.unsqueeze(1)
            v_s, v_t = aligned(v_s, v_t) * scale, v_t * scale
            if before is not None:
                gap = (rbf(v_s, before[0]) - rbf(v_t, before[1]).detach()).pow(2)
                total = total + _finite(gap).sum() / fs.shape[0]
            before = v_s, v_t
        return total
