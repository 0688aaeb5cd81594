"""The CIFAR ResNets (He et al. 2016) by name, as students and as teachers."""
from __future__ import annotations

import pytest
import torch

from softlabel.models import create_model


@pytest.mark.parametrize("name, millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                            ("resnet56", 0.85), ("resnet110", 1.7)])
def test_parameter_counts_match_the_paper(name, millions):
    model = create_model(name, 10)
    count = sum(p.numel() for p in model.parameters())
    # the paper's table rounds to 2 digits (0.27M) or 1 decimal (1.7M): half a unit of the last
    assert abs(count / 1e6 - millions) <= (0.005 if millions < 1 else 0.05)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcuts_have_no_parameters_and_names_keep_working():
    model = create_model("resnet20", 100)
    assert all("shortcut" not in n for n, _ in model.named_parameters())
    assert model.fc.out_features == 100
    assert type(create_model("resnet18", 10)).__module__.startswith("torchvision")  # ImageNet ResNets unchanged
