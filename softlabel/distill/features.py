"""Features taken with forward hooks at a model's stage boundaries, never by editing model code."""
from __future__ import annotations

from typing import Optional

from torch import nn

from softlabel.distill.base import Features
from softlabel.errors import UserError

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_modules(model: nn.Module, names: Optional[list[str]], flag: str = "--feat-layers") -> list[nn.Module]:
    """The modules whose outputs are the stages: ``names`` (module paths, e.g. ``layer1``), or a
    ResNet's ``layer1``... (CIFAR ResNets have three, torchvision/timm ResNets four)."""
    model = getattr(model, "module", model)
    named = dict(model.named_modules())
    if names:
        unknown = [n for n in names if n not in named]
        if unknown:
            raise UserError(f"{flag}: {type(model).__name__} has no module {unknown[0]} (its top-level modules: "
                            f"{', '.join(n for n, _ in model.named_children())})")
        return [named[n] for n in names]
    found = [named[n] for n in RESNET_STAGES if n in named]
    if len(found) < 2:
        raise UserError(f"{type(model).__name__} has no layer1, layer2, ... stages: name the modules whose outputs "
                        f"are its stages with {flag} NAME,NAME,...")
    return found


class FeatureTap:
    """Records the outputs of ``modules`` at every forward of their model."""

    def __init__(self, modules: list[nn.Module]):
        self.outputs: list = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            self.outputs[i] = output
        return hook

    def take(self) -> Features:
        if any(o is None for o in self.outputs):
            raise RuntimeError("a stage did not run in the last forward")
        features, self.outputs = Features(list(self.outputs)), [None] * len(self.outputs)
        return features

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
