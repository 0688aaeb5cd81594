"""Teacher loading, shared by relabelling and (later) online distillation."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.nn as nn

from softlabel import models
from softlabel.errors import UserError


@dataclass
class Teacher:
    arch: str
    model: nn.Module
    mean: list[float]
    std: list[float]
    num_classes: int
    source: str                 # 'private' (a checkpoint file) or 'torchvision'
    weights_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)  # what the checkpoint says about itself

    def describe(self) -> dict[str, Any]:
        """The teacher's identity as recorded in a store manifest (no paths: a moved file is
        the same teacher; a changed file is not)."""
        return {"arch": self.arch, "source": self.source, "weights_sha256": self.weights_sha256,
                "num_classes": self.num_classes, "mean": self.mean, "std": self.std}


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_teacher(arch: Optional[str], path: Optional[str], num_classes: Optional[int],
                 flag: str = "--teacher-path") -> Teacher:
    """A frozen teacher in eval mode.

    With ``path``: a private checkpoint (plain state_dict or a dict with ``model``); when it
    was written by our trainer it also names its architecture, class count and normalization,
    and those are used unless the flags say otherwise (a contradiction is an error).
    Without ``path``: torchvision's published weights, from the local cache only.
    """
    if path:
        state, meta = models.read_checkpoint(path, flag)
        if arch and meta.get("arch") and arch != meta["arch"]:
            raise UserError(f"-a/--arch {arch} contradicts {flag} {path}, which holds a "
                            f"'{meta['arch']}'")
        arch = arch or meta.get("arch")
        if not arch:
            raise UserError(f"-a/--arch is required: {flag} {path} does not say which model it holds")
        if num_classes is None:
            num_classes = meta.get("num_classes") or _classes_in_state(state)
        model = models.create_model(arch, num_classes)
        models.load_weights(model, state, path, flag, arch)
        if "mean" in meta and "std" in meta:
            mean, std = list(meta["mean"]), list(meta["std"])
        else:
            mean, std = models.default_normalization(arch, model)
        source, digest = "private", file_sha256(path)
    else:
        arch = arch or "resnet18"
        if models.model_source(arch) != "torchvision":
            raise UserError(f"teacher '{arch}' needs weights: pass {flag} FILE")
        wpath, mean, std = models.torchvision_cached_weights(arch)
        state, meta = models.read_checkpoint(wpath, "cached weights")
        num_classes = _classes_in_state(state)
        model = models.create_model(arch, num_classes)
        models.load_weights(model, state, wpath, "cached weights", arch)
        source, digest = "torchvision", file_sha256(wpath)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(arch, model, mean, std, int(num_classes), source, digest, meta)


def _classes_in_state(state: dict) -> int:
    """Output size of a classifier state_dict: the rows of its last 2-D weight."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise UserError("cannot tell the number of classes from the weights; pass --num-classes")
    return int(weights[-1].shape[0])
