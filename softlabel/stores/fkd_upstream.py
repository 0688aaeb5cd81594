"""Soft labels made by FKD itself (szq0214/FKD, ``FKD_SLG/generate_soft_label.py``), read only.

FKD writes one file per image, ``SAVE/<dataset>/<split>/<class>/<stem>.tar``, and its trainer
(``train_FKD.py --softlabel_path DIR``) reads ``DIR/<split>/<class>/<stem>.tar`` for the image
``<train dir>/<class>/<stem>.<ext>`` (``<split>`` is the train folder's name, ``<stem>`` the file
name up to its first dot). Each file is a ``torch.save``d list of three numpy arrays::

    [coords (K, 4) float32 | float16,  flip (K,) bool,  labels]

with the labels of ``--label_type``: ``hard`` (K,) class indices; ``smoothing`` (K, 2) [class,
probability]; ``marginal_smoothing_k5`` and ``marginal_renorm_k5`` (K, 2, 5) and
``marginal_smoothing_k10`` (K, 2, 10): row 0 the classes (as floats), row 1 their probabilities.
With ``--use_fp16`` (and more crops than ``--num_seg``) coords and labels are float16, the class
indices too (exact below 2048). The files record neither the class count nor the crop size, and
the two marginal top-5 types share a shape: ``--num-classes`` (default 1000, as FKD), ``--input-size``
(default 224, as FKD's trainer) and ``--soft_label_type`` say them. The arrays are read with
``weights_only`` plus exactly numpy's array reconstructors: a file that would run code is refused.

FKD labelled bicubic crops and trains on bilinear crops of the same fractional boxes; the trainer
reproduces ``train_FKD.py`` (bilinear) unless ``--crop-interpolation bicubic`` asks for the pixels
the teacher saw.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import torch

from softlabel import files
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD, FolderIndex
from softlabel.errors import UserError
from softlabel.stores import per_image
from softlabel.stores.base import FKD_UPSTREAM, Conversion, Converted, Request
from softlabel.stores.per_image import TOP_K, PerImageStore, normalize_label_type
from softlabel.stores.topk import smallest_int_dtype

FORMAT = "fkd-upstream"
DEFAULT_CLASSES, DEFAULT_SIZE = 1000, 224  # FKD's train_FKD.py: --num_classes 1000, 224 px crops
SHAPES = {(): "hard", (2,): "smoothing", (2, 5): "marginal_smoothing_k5", (2, 10): "marginal_smoothing_k10"}


def label_relpath(index: FolderIndex, i: int) -> str:
    """``<split>/<class>/<stem>.tar`` of image i, as train_FKD.py builds it."""
    rel = os.path.relpath(index.samples[i][0], os.path.dirname(index.root))
    return rel.split(".")[0] + ".tar"


def looks_like(path: str) -> bool:
    """A folder of FKD's files: no manifest of ours, a .tar file two or three levels down."""
    for depth in (2, 3):
        for root, dirs, names in os.walk(path):
            level = os.path.relpath(root, path).count(os.sep) + (root != path)
            if level == depth and any(n.endswith(".tar") for n in names):
                return True
            if level >= depth:
                dirs.clear()
    return False


def load(path: str) -> list:
    data = files.safe_torch_load(path, "FKD label file", allow_numpy=True)
    if not isinstance(data, (list, tuple)) or len(data) != 3 or not all(isinstance(a, np.ndarray) for a in data):
        n = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise UserError(f"FKD label file {path}: expected FKD's list of 3 numpy arrays [coords, flip, labels], "
                        f"found {n}")
    return list(data)


def label_type_of(labels: np.ndarray, path: str) -> str:
    kind = SHAPES.get(tuple(labels.shape[1:]))
    if kind is None:
        raise UserError(f"FKD label file {path}: labels of shape {tuple(labels.shape)} are none of FKD's label "
                        f"types (K,), (K, 2), (K, 2, 5), (K, 2, 10)")
    return kind


def to_tensors(coords: np.ndarray, flips: np.ndarray, labels: np.ndarray, label_type: str
               ) -> tuple[torch.Tensor, torch.Tensor, Any, Optional[torch.Tensor]]:
    """FKD's arrays as (coords, flips, classes (K, k), values (K, k) | None) for check_labels."""
    coords_t = torch.from_numpy(np.asarray(coords, dtype=np.float32))
    flips_t = torch.from_numpy(np.asarray(flips)).bool() if flips.dtype == np.bool_ else torch.from_numpy(flips)
    lab = np.asarray(labels, dtype=np.float64)
    if not np.isfinite(lab).all():
        return coords_t, flips_t, torch.from_numpy(lab), None  # refused by check_labels (float classes)
    if label_type == "hard":
        return coords_t, flips_t, _indices(lab.reshape(-1, 1)), None
    if label_type == "smoothing":
        lab = lab[:, :, None]
    return coords_t, flips_t, _indices(lab[:, 0]), torch.from_numpy(lab[:, 1].astype(np.float32))


def _indices(values: np.ndarray) -> Any:
    """Class indices stored as floats: integers, or left as floats for check_labels to refuse."""
    if np.all(values == np.round(values)):
        return torch.from_numpy(values.astype(np.int64))
    return torch.from_numpy(values)


class FkdUpstreamStore(PerImageStore):
    """A folder of FKD's own per-image files, its manifest built from the first file and the flags."""

    kind = FKD_UPSTREAM
    needs_images = True
    needs_images_hint = "holds FKD's own per-image files, found through the images they label: pass --data DIR " \
                        "(FKD's train folder)"
    not_converted = ""
    labelled_resample = "bicubic"  # FKD_SLG labelled bicubic crops
    format = FORMAT

    @classmethod
    def open(cls, path: str, flag: str, index: Optional[FolderIndex] = None,
             request: Request = Request()) -> "FkdUpstreamStore":
        if index is None:
            raise UserError(f"{flag} {path}: FKD's label files are found through the images they label; "
                            f"pass the image folder (--train-dir / --data)")
        first = os.path.join(path, label_relpath(index, 0))
        if not os.path.isfile(first):
            raise UserError(f"{flag} {path}: no {label_relpath(index, 0)} for the first image {index.samples[0][0]}; "
                            f"point it at the folder holding <split>/<class>/<image>.tar (FKD's SAVE/<dataset>)")
        coords, _, labels = load(first)
        found = label_type_of(labels, first)
        wanted = normalize_label_type(request.label_type) if request.label_type else None
        if wanted and wanted != found and {wanted, found} != {"marginal_renorm", "marginal_smoothing_k5"}:
            raise UserError(f"--soft_label_type {request.label_type}: {flag} {path} holds {found} labels "
                            f"(shape {tuple(labels.shape)} in {first})")
        manifest = {
            "format": FORMAT, "num_crops": int(len(coords)), "label_type": wanted or found,
            "top_k": TOP_K[wanted or found], "input_size": request.input_size or DEFAULT_SIZE,
            "num_classes": request.num_classes or DEFAULT_CLASSES, "num_samples": len(index),
            "class_names": list(index.classes), "class_to_index": {c: i for i, c in enumerate(index.classes)},
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),  # FKD's trainer normalizes so
            "fkd_seed": None, "min_scale_crops": None, "max_scale_crops": None, "mix_type": "none",
            "interpolation": request.interpolation, "use_fp16": coords.dtype == np.float16, "dataset_fingerprint": None,
            "args": {"data": index.root},
        }
        if len(index.classes) > manifest["num_classes"]:
            raise UserError(f"{flag} {path}: the images have {len(index.classes)} class folders, more than "
                            f"--num-classes {manifest['num_classes']}")
        return cls(path, manifest, flag)

    @property
    def where(self) -> str:
        return f"FKD's labels {self.flag} {self.path}"

    def path_of(self, index: FolderIndex, i: int) -> str:
        return os.path.join(self.path, label_relpath(index, i))

    def unchecked(self, index: FolderIndex, i: int) -> tuple[str, list]:
        path = self.path_of(index, i)
        coords, flips, labels = load(path)
        kind = label_type_of(labels, path)
        if TOP_K[kind] != self.manifest["top_k"]:
            raise UserError(f"FKD label file {path}: {kind} labels, the rest of the folder holds "
                            f"{self.manifest['label_type']}")
        return path, list(to_tensors(coords, flips, labels, kind))

    def source_name(self) -> str:
        return FKD_UPSTREAM

    def conversion(self, options: Conversion, index: Optional[FolderIndex]) -> Converted:
        """Into our per-image store: the same crops and quantized labels, with a manifest that
        records what FKD's files do not (classes, crop size, the images)."""
        m = self.manifest
        manifest = {k: m.get(k) for k in per_image.CONTENT_KEYS}
        manifest.update({"format": per_image.FORMAT, "format_version": per_image.FORMAT_VERSION,
                         "created_by": "scripts/convert_labels.py", "class_names": m["class_names"],
                         "mean": m["mean"], "std": m["std"], "top_k": m["top_k"], "interpolation": m["interpolation"],
                         "dataset_fingerprint": index.fingerprint(), "temperature": options.temperature,
                         "converted_from": {"kind": self.source_name(), "label_type": m["label_type"]}})
        class_type, fp16 = smallest_int_dtype(m["num_classes"]), m["use_fp16"]

        def labels(i: int) -> tuple:
            coords, flips, classes, values = self.read_labels(index, i)
            return coords, flips, classes.to(class_type), None if values is None else (
                values.half() if fp16 else values.float())
        return Converted(manifest, [(i,) for i in range(len(index))], labels, "per-image files")

    def summary(self, index: Optional[FolderIndex] = None) -> list[tuple[str, str]]:
        m = self.manifest
        return [
            ("format", "FKD's own files (FKD_SLG: <split>/<class>/<image>.tar, numpy arrays)"),
            ("images", str(m["num_samples"])),
            ("classes", f"{m['num_classes']} ({len(m['class_names'])} class folders) (--num-classes)"),
            ("crops per image", str(m["num_crops"])),
            ("label type", f"{m['label_type']} (top {m.get('top_k')}, {'float16' if m.get('use_fp16') else 'float32'}"
                           f", inferred from the arrays)"),
            ("crops", f"{m['input_size']}px (--input-size), scale and seed not recorded"),
            ("teacher", "not recorded"),
            ("made from", str(m["args"]["data"])),
        ]

    def missing(self, epochs: int, index: Optional[FolderIndex] = None) -> list[str]:
        return [self.path_of(index, i) for i in range(len(index)) if not os.path.isfile(self.path_of(index, i))]

    def check_complete(self, epochs: int, index: Optional[FolderIndex] = None) -> None:
        missing = self.missing(epochs, index)
        if missing:
            raise UserError(f"{self.flag} {self.path}: {len(missing)} of FKD's label files missing (first: "
                            f"{missing[0]}); finish FKD's generation, or train on the images it labelled")
