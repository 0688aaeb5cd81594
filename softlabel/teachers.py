"""Teacher loading and ensembling, shared by relabelling and online distillation.

A teacher comes from one of three sources (as FKD's ``--teacher_source``):
- ``torchvision``: torchvision's architecture with its published weights, from the torch hub
  cache;
- ``timm``: timm's architecture with its published weights, from the Hugging Face cache;
- ``private``: a checkpoint file (``--teacher-path``): a plain state_dict, a dict with
  ``model`` (ours, which also names its architecture and normalization; RepDistiller's, named by
  its folder) or ``state_dict``.
Nothing is ever downloaded. Each teacher keeps its own input normalization.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from softlabel import ensemble, models, replay
from softlabel.errors import UserError
from softlabel.files import file_sha256

SOURCES = ("torchvision", "timm", "private")


@dataclass
class Teacher:
    arch: str
    model: nn.Module
    mean: list[float]
    std: list[float]
    num_classes: int
    source: str                 # where the weights come from: torchvision, timm or private
    builder: str                # which library builds the architecture: local, torchvision, timm
    weights_sha256: str
    meta: dict[str, Any] = field(default_factory=dict)  # what a checkpoint says about itself
    weights: Optional[str] = None  # published weights' name (torchvision IMAGENET1K_V1, a timm tag); None: a file

    def describe(self) -> dict[str, Any]:
        """The teacher's identity for a store manifest (no paths: a moved file is the same
        teacher, a changed file is not). Manifests written before ``weights`` was recorded
        lack it: readers use .get."""
        return {"arch": self.arch, "source": self.source, "builder": self.builder, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "num_classes": self.num_classes,
                "mean": self.mean, "std": self.std}


def load_teacher(arch: Optional[str], path: Optional[str], num_classes: Optional[int] = None,
                 source: Optional[str] = None, flag: str = "--teacher-path",
                 weights: Optional[str] = None) -> Teacher:
    """A frozen teacher in eval mode.

    With ``path``: the file's weights; a checkpoint written by our trainer also names its
    architecture, class count and normalization, used unless flags say otherwise (a
    contradiction is an error); one RepDistiller's train_teacher.py wrote is named by its folder,
    as RepDistiller's train_student.py names it (``zoo.arch_from_folder``), unless ``arch`` is
    given. ``source`` 'torchvision'/'timm' then picks the library that
    builds ``arch``. Without ``path``: the published weights of ``source`` (default: the
    library that knows ``arch``, torchvision first), from the local cache only: ``weights``
    names them (see ``models.torchvision_weights``; for timm, a pretrained tag).
    """
    if source not in (None,) + SOURCES:
        raise UserError(f"--teacher-source {source}: expected one of {', '.join(SOURCES)}")
    if path and weights:
        raise UserError(f"--teacher-weights {weights} names published weights, but teacher '{arch or path}' "
                        f"has {flag} {path}; leave its --teacher-weights item empty")
    published = None
    if path:
        arch, model, mean, std, num_classes, builder, meta = _from_file(arch, path, num_classes, source, flag)
        weights_from, digest = "private", file_sha256(path)
    else:
        arch = arch or "resnet18"
        if source == "private":
            raise UserError(f"--teacher-source private needs {flag} FILE for teacher '{arch}'")
        builder = source or models.model_source(arch)
        if builder == "local":
            raise UserError(f"teacher '{arch}' has no published weights: pass {flag} FILE")
        if builder == "torchvision":
            wpath, mean, std, published = models.torchvision_cached_weights(arch, weights)
        else:
            arch = models.timm_name(arch, weights)
            wpath, mean, std = models.timm_cached_weights(arch), None, None
            published = models.timm_tag(arch)
        state, _ = models.read_weights_file(wpath, "cached weights")
        if builder == "torchvision":
            model = models.create_model(arch, models.classes_in_state(state, wpath), builder)
            models.load_weights(model, state, wpath, "cached weights", arch)
        else:
            import timm
            # timm adapts its own published checkpoints (filters, classifier) on load
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
            mean, std = models.default_normalization(arch, model, "timm")
        num_classes = _model_outputs(model, wpath)
        weights_from, digest, meta = builder, file_sha256(wpath), {}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(arch, model, [float(v) for v in mean], [float(v) for v in std], int(num_classes),
                   weights_from, builder, digest, meta, published)


def _from_file(arch: Optional[str], path: str, num_classes: Optional[int], source: Optional[str], flag: str
               ) -> tuple[str, nn.Module, list[float], list[float], int, str, dict[str, Any]]:
    """``load_teacher``'s model from a weights file: (arch, model, mean, std, classes, builder, meta)."""
    state, meta = models.read_weights_file(path, flag)
    guessed = meta.get("arch_from") == "folder"  # RepDistiller's layout: its folder's name, which -a overrides
    if arch and meta.get("arch") and arch != meta["arch"] and not guessed:
        raise UserError(f"teacher '{arch}' (-a/--arch, --teachers) contradicts {flag} {path}, "
                        f"which holds a '{meta['arch']}'")
    guessed = guessed and not arch
    arch = arch or meta.get("arch")
    if not arch:
        raise UserError(f"-a/--arch or --teachers is required: {flag} {path} does not say which "
                        f"model it holds")
    builder = source if source in ("torchvision", "timm") else models.model_source(arch)
    if num_classes is None:
        num_classes = meta.get("num_classes") or models.classes_in_state(state, path)
    model = models.create_model(arch, num_classes, builder)
    try:
        models.load_weights(model, state, path, flag, arch)
    except UserError as exc:
        if not guessed:
            raise
        raise UserError(f"{exc} (the model its folder's name gives, as RepDistiller's train_student.py reads "
                        f"it; name the right one with -a/--arch or --teachers)") from None
    if "mean" in meta and "std" in meta:
        mean, std = list(meta["mean"]), list(meta["std"])
    else:
        mean, std = models.default_normalization(arch, model, builder)
    return arch, model, mean, std, num_classes, builder, meta


def split_list(value: Optional[str]) -> list[str]:
    """A comma-separated flag value as its items ("a, b" -> ["a", "b"])."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def weight_paths(paths: Optional[str], archs: Sequence[Optional[str]], flag: str = "--teacher-path"
                 ) -> list[Optional[str]]:
    """One weight file per teacher from a comma-separated flag, or None each (published weights)."""
    if not paths:
        return [None] * len(archs)
    given = [q.strip() for q in paths.split(",")]
    if len(given) != len(archs):
        raise UserError(f"{flag} gives {len(given)} files for {len(archs)} teachers "
                        f"({', '.join(str(a) for a in archs)}); give one per teacher, or none for "
                        f"published weights")
    return list(given)


def weight_names(value: Optional[str], archs: Sequence[Optional[str]], paths: Sequence[Optional[str]],
                 flag: str = "--teacher-weights") -> list[Optional[str]]:
    """One published-weights name per teacher from a flag: one value for every teacher that has
    no weight file, or a comma list with one item per teacher (an empty item: the default)."""
    if not value:
        return [None] * len(archs)
    given = [v.strip() or None for v in value.split(",")]
    files = [v for v in given if v and (os.sep in v or v.endswith((".pth", ".pt", ".tar", ".bin", ".safetensors")))]
    if files:
        raise UserError(f"{flag} {files[0]}: takes weight names (IMAGENET1K_V1, DEFAULT, a timm tag); pass a "
                        f"file with --teacher-path")
    if len(given) == 1:
        if all(paths):  # a name no teacher can take is an error, never dropped
            raise UserError(f"{flag} {given[0]} names published weights, but every teacher has a weight file "
                            f"(--teacher-path); leave {flag} out")
        return [None if p else given[0] for p in paths]
    if len(given) != len(archs):
        raise UserError(f"{flag} gives {len(given)} names for {len(archs)} teachers "
                        f"({', '.join(str(a) for a in archs)}); give one for all, or one per teacher")
    return given


def load_teachers(archs: Sequence[Optional[str]], paths: Sequence[Optional[str]],
                  num_classes: Optional[int] = None, source: Optional[str] = None,
                  weights: Optional[Sequence[Optional[str]]] = None) -> list[Teacher]:
    weights = weights or [None] * len(archs)
    teachers = [load_teacher(a, p, num_classes, source, weights=w) for a, p, w in zip(archs, paths, weights)]
    widths = {t.num_classes for t in teachers}
    if len(widths) > 1:
        raise UserError("teachers disagree on the number of classes: " +
                        ", ".join(f"{t.arch} {t.num_classes}" for t in teachers))
    return teachers


class Ensemble:
    """Teachers on one device, each fed the batch in its own normalization, combined by an
    ensemble rule. ``__call__`` takes uint8 pixels and the batch's mix and returns the
    combined logits and each teacher's (float32, on the device)."""

    def __init__(self, teachers: list[Teacher], rule: str, primary_weight: float,
                 device: torch.device, amp: Optional[torch.dtype] = None):
        self.teachers, self.rule, self.primary_weight = teachers, rule, primary_weight
        self.device, self.amp = device, amp
        self.channels_last = device.type == "cuda"
        for t in teachers:
            t.model.to(device)
            if self.channels_last:
                t.model.to(memory_format=torch.channels_last)

    def set_mode(self, mode: str) -> None:
        """"eval" (default): batch norm on the running statistics the teacher was trained with.
        "train", as train_with_distillation.py of bellymonster/Weighted-Soft-Label-Distillation
        (WSLD) labels: the whole teacher in train mode, so batch norm normalizes by each batch's
        statistics and updates its running ones (dropout, where a teacher has it, is on too). The
        weights stay frozen either way."""
        for t in self.teachers:
            t.model.train(mode == "train")

    def buffers(self) -> list[dict[str, torch.Tensor]]:
        """Each teacher's buffers (batch norm's running statistics), for a checkpoint: in train
        mode they change as the run goes."""
        return [{k: v.detach().cpu().clone() for k, v in t.model.named_buffers()} for t in self.teachers]

    def load_buffers(self, saved: list[dict[str, torch.Tensor]]) -> None:
        """Buffers saved by ``buffers``; a KeyError or ValueError when they do not fit."""
        if not isinstance(saved, list) or len(saved) != len(self.teachers):
            raise ValueError("teacher_buffers: not one entry per teacher")
        for t, state in zip(self.teachers, saved):
            own = dict(t.model.named_buffers())
            if set(own) != set(state):
                raise KeyError("teacher_buffers: other buffer names than this teacher's")
            with torch.no_grad():
                for name, buf in own.items():
                    buf.copy_(state[name])

    @torch.inference_mode()
    def __call__(self, pixels: torch.Tensor, partners: Optional[torch.Tensor], mix_lam,
                 mix_bbox, views: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """uint8 pixels (and their mix partners' pixels, or None) -> the combined logits and
        each teacher's, float32 on the device; each teacher sees its own normalization.
        ``views``: a distiller's expansion of the normalized, mixed batch (KDSS: rotated copies)."""
        outputs = []
        for t in self.teachers:
            x = replay.slice_inputs(pixels, partners, t.mean, t.std, mix_lam, mix_bbox)
            if views is not None:
                x = views(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                outputs.append(t.model(x).float())
        return ensemble.combine(outputs, self.rule, self.primary_weight), outputs


def _model_outputs(model: nn.Module, path: str) -> int:
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise UserError(f"{path}: cannot tell the number of classes of this model; pass --num-classes")
    return int(last[-1].out_features)
