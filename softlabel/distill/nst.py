"""Neuron selectivity transfer (Huang & Wang 2017), as RepDistiller's ``NSTLoss``: at every
stage (RepDistiller's ``feat[1:-1]``: the stages' outputs, the stem and the pooled embedding
left out), the larger map is average-pooled to the smaller's size, each channel's map is
flattened and L2-normalized, and the squared maximum mean discrepancy between the two sets of
channels under the polynomial kernel k(a, b) = (a . b)^2 is taken:
mean k(t, t') + mean k(s, s') - 2 mean k(s, t), each mean over the sample's channel pairs and
the batch; summed over stages. Weight 50 (RepDistiller's -b)."""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from softlabel.distill.base import Distiller, Features, summed_over_stages


def channel_maps(f: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, HW): each channel's map as a unit vector."""
    return F.normalize(f.flatten(2), dim=2)


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mean over the batch and every channel pair of (a_i . b_j)^2."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def mmd(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    s, t = channel_maps(fs), channel_maps(ft)
    return poly_kernel_mean(t, t).detach() + poly_kernel_mean(s, s) - 2 * poly_kernel_mean(s, t)


class NeuronSelectivity(Distiller):
    name, weight, source = "nst", 50.0, "Huang & Wang 2017; RepDistiller nst, -b 50, polynomial kernel (a . b)^2"
    maps = "every"

    def forward(self, student: Features, teacher: Features, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return summed_over_stages(student, teacher, mmd)
