"""Factor transfer (Kim et al., NeurIPS 2018): a paraphraser, an autoencoder on the teacher's last
stage (three 3x3 convolutions down to half the channels, three transposed ones back, LeakyReLU
0.1, no batch norm), is first trained to reconstruct it (MSE, 30 init epochs; SGD lr 0.01, as
RepDistiller for its CIFAR ResNet and WRN students, capped at 0.02 / the mean square of the teacher's
features on the first init batch: lr 0.01 diverges on features of mean square 8 or more, e.g. those of
a teacher trained briefly on a few images; the cap leaves 0.01 where the mean square is at most 2,
and --distill-init-lr sets the rate exactly). Then a translator (the encoder's shape, with
batch norm) on the student's last stage is trained so that its factor matches the frozen
paraphraser's factor of the teacher: mean |phi(f_s) - phi(f_t)| with phi(f) = the L2-normalized
map mean_c(f^2), as RepDistiller's FactorTransfer (p1 = 2, p2 = 1); weight 200 (its -b)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from softlabel.distill.at import attention
from softlabel.distill.base import Distiller, Features, pool_to_match

RATE = 0.5  # factor channels per teacher channel (RepDistiller's k)
LR_TIMES_SCALE = 0.02  # the init lr is capped at this / the teacher features' mean square (init_lr_limit)
# RepDistiller's init stage uses lr 0.01 for these students (helper/pretrain.py), --learning_rate for others
# (its names; here its option-B ResNets are resnet8_b .. resnet110_b, and the study's option-A ones keep the rule)
SMALL_LR_STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
                     "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
                     "resnet8_b", "resnet14_b", "resnet20_b", "resnet32_b", "resnet44_b", "resnet56_b", "resnet110_b")


def _encoder(c_in: int, c_out: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((c_in, c_in), (c_in, c_out), (c_out, c_out)):
        layers += [nn.Conv2d(a, b, 3, 1, 1), *([nn.BatchNorm2d(b)] if batch_norm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        factor = int(channels * RATE)
        self.encoder = _encoder(channels, factor, batch_norm=False)
        layers: list[nn.Module] = []
        for a, b in ((factor, factor), (factor, channels), (channels, channels)):
            layers += [nn.ConvTranspose2d(a, b, 3, 1, 1), nn.LeakyReLU(0.1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(f))


class FactorTransfer(Distiller):
    name, weight, source = "ft", 200.0, "Kim et al. 2018; RepDistiller factor, --init_epochs 30, -b 200"
    init_epochs, maps = 30, "last"

    @classmethod
    def stage_problem(cls, i: int, s_shape: torch.Size, t_shape: torch.Size) -> Optional[str]:
        if int(t_shape[1] * RATE) < 1:
            return f"the teacher's {t_shape[1]} channel(s) leave its paraphraser no factor (half of them)"
        return None

    def __init__(self, student: Features, teacher: Features, **context):
        super().__init__(student, teacher, **context)
        t_c = teacher.stages[-1].shape[1]
        self.paraphraser = Paraphraser(t_c)
        self.translator = _encoder(student.stages[-1].shape[1], int(t_c * RATE), batch_norm=True)

    def init_parts(self) -> list[nn.Module]:
        return [self.paraphraser]

    def init_lr(self, student_arch: str, lr: float) -> float:
        return 0.01 if student_arch in SMALL_LR_STUDENTS else lr

    def init_lr_limit(self, teacher: Features) -> float:
        # The paraphraser is positively homogeneous (LeakyReLU, convolutions), so the MSE's
        # gradients grow with the square of the features' scale: SGD at lr on features of mean
        # square m steps like lr x m on unit ones. Measured (SGD, momentum 0.9): lr 0.01 stays
        # stable up to m = 4 and blows up from m = 8; the cap keeps lr x m at most LR_TIMES_SCALE.
        return LR_TIMES_SCALE / max(float(teacher.stages[-1].float().pow(2).mean()), 1e-12)

    def init_loss(self, student: Optional[Features], teacher: Features) -> torch.Tensor:
        ft = teacher.stages[-1]
        return F.mse_loss(self.paraphraser(ft), ft)

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        fs, ft = pool_to_match(self.translator(student.stages[-1]), self.paraphraser.encoder(teacher.stages[-1]))
        return (attention(fs) - attention(ft)).abs().mean()
