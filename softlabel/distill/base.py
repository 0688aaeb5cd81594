"""What every distiller gets and gives."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch import nn

# The run's crop (--train-crop) of one image, its random draws taken from the generator given
Crop = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclass
class Features:
    """A network's features on one batch: the output of each stage (CIFAR ResNets: layer1..3;
    ResNets: layer1..4) and the penultimate embedding (the last stage, globally average-pooled)."""
    stages: list[torch.Tensor]
    logits: Optional[torch.Tensor] = None  # the network's outputs, given to a method with ``views`` > 1

    @property
    def embedding(self) -> torch.Tensor:
        last = self.stages[-1]
        return last.mean(dim=(2, 3)) if last.dim() == 4 else last.flatten(1)

    def detached(self) -> "Features":
        # clone: a teacher run under inference_mode gives inference tensors, which autograd refuses
        return Features([f.detach().clone() for f in self.stages],
                        None if self.logits is None else self.logits.detach().clone())


class Distiller(nn.Module):
    """A feature loss between a student and a teacher. ``weight`` is the default factor of the
    loss (RepDistiller's ``-b`` for the method); trainable parts are submodules, so they are
    optimized, checkpointed and synchronized across ranks with the student. ``context`` gives
    what a method may need beyond the features' shapes (``num_samples``, ``targets``: the class of
    every dataset index); ``forward`` gets the batch's dataset indices."""

    name = ""
    weight = 1.0
    source = ""  # the paper, and where the defaults come from
    broadcast_buffers = True  # under DDP; False: the method keeps its buffers equal across ranks itself
    preact = False  # features before each stage's last ReLU (AB)
    # A stage of its own before distilling (RepDistiller's ``init``, --init_epochs 30): AB and FT.
    init_epochs = 0
    init_trains_student = False
    # False: the loss after the init stage is nil (AB), so distilling steps need no features
    distills = True
    init_required = False  # True: --distill-init-epochs 0 is refused (KDSS: its teacher head must learn)
    # Init epochs, of ``init_epochs``, at which the init stage's rate is multiplied by 0.1; another
    # --distill-init-epochs scales them (KDSS: SSKD's --t-milestones; the others keep one rate, as RepDistiller)
    init_milestones: tuple[int, ...] = ()
    # > 1: the loader gives every image as ``image_views`` (KDSS: the image and its rotated copies,
    # each cropped on its own); both networks see all of them, view-major; the run's loss takes the
    # first view, the method gets every view's features and logits
    views = 1
    loss_type = "ce"  # the trainer's --loss-type beside this method (RepDistiller's -a 0)
    # What the tapped stages must give, checked on the probe forward: at least ``min_stages``, and
    # 4-D feature maps (batch, channels, height, width) at ``maps``: "every", "last" or "second" stage
    # (the others only need a batch-first tensor: the embedding is a 2-D output's rows as they are)
    maps = ""
    min_stages = 1

    @classmethod
    def map_stages(cls, n: int) -> list[int]:
        """The indices of the stages that must be 4-D feature maps, of ``n`` stages."""
        return {"": [], "every": list(range(n)), "last": [n - 1], "second": [1]}[cls.maps]

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        """Why the student's and the teacher's 4-D maps of stage ``i`` cannot be distilled, if they cannot."""
        return None

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__()

    @classmethod
    def image_views(cls, image: Image.Image, crop: Crop, rng: np.random.Generator) -> list[Image.Image]:
        """The ``views`` images one training image gives (only with ``views`` > 1), the first the
        run's own; ``crop`` and every other random choice draw from ``rng``."""
        raise NotImplementedError(f"{cls.name} has one view")

    def warnings(self) -> list[str]:
        """What the user should know about this run of the method (printed once, on rank 0)."""
        return []

    def init_parts(self) -> list[nn.Module]:
        """The parts trained only in the init stage: frozen (not optimized) while distilling."""
        return []

    def init_lr(self, student_arch: str, lr: float) -> float:
        """The init stage's SGD learning rate (RepDistiller: its --learning_rate)."""
        return lr

    def init_lr_limit(self, teacher: Features) -> float:
        """The largest init learning rate stable on these (the first batch's) teacher features."""
        return math.inf

    def init_loss(self, student: Optional[Features], teacher: Features) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no init stage")

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError


def pool_to_match(fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The larger map average-pooled to the smaller's size (AT and VID, as RepDistiller)."""
    hs, ht = fs.shape[2], ft.shape[2]
    if hs > ht:
        fs = nn.functional.adaptive_avg_pool2d(fs, (ht, ht))
    elif hs < ht:
        ft = nn.functional.adaptive_avg_pool2d(ft, (hs, hs))
    return fs, ft


def summed_over_stages(student: Features, teacher: Features,
                       loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The sum over stages of ``loss`` of the student's and the teacher's maps, the larger of the two
    average-pooled to the smaller's size (``pool_to_match``)."""
    total = torch.zeros((), device=student.stages[0].device)
    for fs, ft in zip(student.stages, teacher.stages):
        total = total + loss(*pool_to_match(fs, ft))
    return total
