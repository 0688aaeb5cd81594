"""Features taken with forward hooks at a model's stage boundaries, never by editing model code."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from softlabel.distill.base import Features
from softlabel.errors import UserError

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


def stage_modules(model: nn.Module, names: Optional[list[str]], flag: str = "--feat-layers") -> list[nn.Module]:
    """The modules whose outputs are the stages: ``names`` (module paths, e.g. ``layer1``), else
    the model's own ``feature_stages`` (the zoo's models name theirs), else a ResNet's ``layer1``...
    (CIFAR ResNets have three, torchvision/timm ResNets four)."""
    model = getattr(model, "module", model)
    named = dict(model.named_modules())
    names = names or list(getattr(model, "feature_stages", ()))
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


def stage_names(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    """Each stage module's path in ``model`` (for messages)."""
    paths = {id(m): n for n, m in getattr(model, "module", model).named_modules()}
    return [paths.get(id(m), f"stage {i + 1}") for i, m in enumerate(modules)]


class FeatureTap:
    """Records the outputs of ``modules`` at every forward of their model. ``preact``: their
    pre-activations instead, the input of the last ReLU module to run inside each stage's last
    block (AB distills which side of zero a neuron is on, which a ReLU's output no longer says);
    ``check_preact`` verifies, on a probe forward, that the stage's output is that ReLU's output."""

    def __init__(self, modules: list[nn.Module], preact: bool = False, names: Optional[list[str]] = None):
        self.outputs: list = [None] * len(modules)
        self.names = names or [f"stage {i + 1}" for i in range(len(modules))]
        self.preact = preact
        self._last_act: list = [None] * len(modules)
        self._stage_out: list = [None] * len(modules)
        self._probing = preact  # keep stage outputs for check_preact, until it has run
        self.handles = []
        for i, m in enumerate(modules):
            if preact:
                blocks = list(m.children())
                acts = [a for a in (blocks[-1] if blocks else m).modules() if isinstance(a, nn.ReLU)]
                if not acts:
                    raise UserError(f"{self.names[i]} ({type(m).__name__}): no ReLU module in its last block, so its "
                                    f"pre-activation cannot be taken by a hook; name other stages with --feat-layers")
                self.handles += [a.register_forward_pre_hook(self._pre_hook(i, a.inplace)) for a in acts]
            self.handles.append(m.register_forward_hook(self._hook(i)))

    def _pre_hook(self, i: int, inplace: bool):
        def hook(_module, inputs):
            self._last_act[i] = inputs[0].clone() if inplace else inputs[0]  # an in-place ReLU overwrites it
        return hook

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            if self.preact:
                self.outputs[i], self._last_act[i] = self._last_act[i], None
                if self._probing:
                    self._stage_out[i] = output
            else:
                self.outputs[i] = output
        return hook

    def check_preact(self, features: Features) -> None:
        """After a probe forward: each stage's output must be ReLU of the pre-activation taken."""
        for i, (pre, out) in enumerate(zip(features.stages, self._stage_out)):
            if not (isinstance(pre, torch.Tensor) and isinstance(out, torch.Tensor)) or pre.shape != out.shape \
                    or not torch.equal(torch.relu(pre), out):
                raise UserError(f"{self.names[i]}: its output is not the ReLU of the last ReLU module's input in its "
                                f"last block, so no pre-activation can be taken by hooks; name other stages with "
                                f"--feat-layers")
        self._probing, self._stage_out = False, [None] * len(self._stage_out)

    def take(self) -> Features:
        if any(o is None for o in self.outputs):
            silent = next(n for n, o in zip(self.names, self.outputs) if o is None)
            raise RuntimeError(f"{silent} did not run in the last forward")
        features, self.outputs = Features(list(self.outputs)), [None] * len(self.outputs)
        return features

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
