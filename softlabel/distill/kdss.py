"""KDSS, the label-optimization study's eleventh baseline, in the one form that runs on CIFAR:
self-supervised knowledge distillation as SSKD defines it (Xu et al., *Knowledge Distillation Meets
Self-Supervision*, ECCV 2020; xuguodong03/SSKD, its student.py and wrapper.py). The study's
citation, *Self-Supervised Knowledge Distillation for Cross Domain Adaptive Person
Re-Identification* (Yin et al. 2020), clusters unlabeled target-domain images into pseudo
identities and learns from a slowly evolving peer network: it has no teacher to compress and no
CIFAR form, whereas SSKD reports CIFAR-100 resnet56 -> resnet20 (docs/validate.md).

Every image comes as SSKD's cifar.py makes it (``image_views``, in the loader): flipped or not,
then rotated by 0, 90, 180 and 270 degrees, each rotation cropped on its own; the trainer feeds
the student and the teacher all four, view-major. Each network has a self-supervision head on
its penultimate embedding (Linear-ReLU-Linear, the embedding's width); for each rotated copy the
cosine similarities of its head output with the batch's originals form a row. The teacher's head
is trained first, in the init stage, to find each copy's original (cross-entropy over its row, 60
epochs at lr 0.05, x0.1 at epochs 30 and 45: SSKD's --t-epoch, --t-lr, --t-milestones) with the
teacher frozen. Distilling then adds to the run's loss (by default --loss-type kd: SSKD's 0.1 CE +
0.9 KD at T 4 on the originals):
- 10 x the KL divergence between the student's and the teacher's rows at T 0.5 (x T^2), over the
  rows whose original the teacher's similarities rank first plus the best-ranked 75% of the others
  (SSKD's --ss-weight 10, --ss-T 0.5, --ratio-ss 0.75);
- 2.7 x KD at T 4 (x T^2) on the rotated copies' logits, over the copies whose class the teacher
  ranks first plus the best-ranked 100% of the others, i.e. all (--tf-weight 2.7, --tf-T 4,
  --ratio-tf 1.0).
Both are means over the rows kept (SSKD's ``batchmean``); weight 1 (--distill-weight scales both).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from softlabel.distill.base import Crop, Distiller, Features

VIEWS = 4  # rotations by 0, 90, 180, 270 degrees
# counter-clockwise, as SSKD's np.rot90 of its (height, width, channel) arrays
ROTATIONS = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
SS_T, SS_WEIGHT, SS_RATIO = 0.5, 10.0, 0.75
TF_T, TF_WEIGHT, TF_RATIO = 4.0, 2.7, 1.0
INIT_EPOCHS, INIT_LR, INIT_MILESTONES = 60, 0.05, (30, 45)


def ss_head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def similarity(rep: torch.Tensor) -> torch.Tensor:
    """(4n, d) head outputs, view-major -> (3n, n): cosine of every rotated copy with every original."""
    n = rep.shape[0] // VIEWS
    rep = F.normalize(rep.float(), dim=1)
    return rep[n:] @ rep[:n].T


def target_rank(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many entries of each row score above the row's target (0: the target ranks first)."""
    return (scores > scores.gather(1, target[:, None])).sum(1)


def kept(rank: torch.Tensor, ratio: float) -> torch.Tensor:
    """SSKD's error-level filter: the rows ranked right, and the ``ratio`` of the others whose
    target ranks best; in row order."""
    wrong = int((rank > 0).sum())
    order = torch.argsort(rank, stable=True)
    return torch.sort(order[:len(rank) - wrong + int(wrong * ratio)]).values


def kd_rows(student: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, t: float) -> torch.Tensor:
    """KL(teacher || student) at temperature t over the given rows, their mean, x t^2."""
    if len(rows) == 0:
        return student.sum() * 0
    return F.kl_div(F.log_softmax(student[rows] / t, dim=1), F.softmax(teacher[rows] / t, dim=1),
                    reduction="batchmean") * t * t


class KDSS(Distiller):
    name, weight = "kdss", 1.0
    source = ("SSKD, Xu et al. 2020 (xuguodong03/SSKD): rotations, --ss-weight 10, --tf-weight 2.7, T 0.5/4, "
              "ratios 0.75/1.0, teacher head 60 init epochs at lr 0.05, x0.1 at 30 and 45")
    init_epochs, init_required, views, loss_type = INIT_EPOCHS, True, VIEWS, "kd"
    init_milestones = INIT_MILESTONES

    def __init__(self, student: Features, teacher: Features, num_samples: int = 0,
                 targets: Optional[torch.Tensor] = None, **context):
        super().__init__(student, teacher, **context)
        if targets is None:
            raise ValueError("KDSS needs the class of every training sample (its filter of the rotated copies)")
        self.student_head = ss_head(student.embedding.shape[1])
        self.teacher_head = ss_head(teacher.embedding.shape[1])
        self.register_buffer("targets", targets.long().clone())

    @classmethod
    def image_views(cls, image: Image.Image, crop: Crop, rng: np.random.Generator) -> list[Image.Image]:
        """SSKD's (cifar.py): one flip (p 0.5) of the image, then its four rotations, each cropped
        by its own draw; the first is the flipped image itself."""
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return [crop(image if turn is None else image.transpose(turn), rng) for turn in ROTATIONS]

    def init_parts(self) -> list[nn.Module]:
        return [self.teacher_head]

    def init_lr(self, student_arch: str, lr: float) -> float:
        return INIT_LR

    def init_loss(self, student: Optional[Features], teacher: Features) -> torch.Tensor:
        sim = similarity(self.teacher_head(teacher.embedding.float()))
        n = sim.shape[1]
        return F.cross_entropy(sim, torch.arange(n, device=sim.device).repeat(VIEWS - 1))

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        if index is None or student.logits is None or teacher.logits is None:
            raise ValueError("KDSS needs the dataset index of every sample and both networks' logits")
        n = student.stages[-1].shape[0] // VIEWS
        s_sim = similarity(self.student_head(student.embedding.float()))
        with torch.no_grad():
            t_sim = similarity(self.teacher_head(teacher.embedding.float()))
        device = s_sim.device
        originals = torch.arange(n, device=device).repeat(VIEWS - 1)
        ss = kd_rows(s_sim, t_sim, kept(target_rank(t_sim, originals), SS_RATIO), SS_T)
        classes = self.targets[index.to(self.targets.device).long()].to(device).repeat(VIEWS - 1)
        t_aug, s_aug = teacher.logits[n:].float(), student.logits[n:].float()
        tf = kd_rows(s_aug, t_aug, kept(target_rank(t_aug, classes), TF_RATIO), TF_T)
        return SS_WEIGHT * ss + TF_WEIGHT * tf
