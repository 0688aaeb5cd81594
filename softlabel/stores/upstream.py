"""Stores made by the upstream repositories (read only): SRe2L / G-VBSM lists of 6 and PRISM
lists of 7, in our batch layout (``epoch_{e}/batch_{b}.tar``) but without a manifest.

SRe2L / G-VBSM store no sample indices: the order is the upstream one, a RandomSampler over the
ImageFolder driven by one torch.Generator seeded with --fkd_seed and continued across epochs
(``LegacyOrder``). PRISM stores the index. Their cutmix boxes are numpy scalars, which
``weights_only`` refuses by default; exactly those numpy types are admitted, nothing else.
Such a store records neither its crop size nor its seed: the user's flags say them, and its
manifest is built here from its files and those flags.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from typing import Optional

import torch

from softlabel import files, replay, streams
from softlabel.data import FolderIndex
from softlabel.errors import UserError
from softlabel.stores.base import UPSTREAM, Request
from softlabel.stores.batch import BatchStore, Reader, batch_path, manifest_path
from softlabel.stores.legacy_order import LegacyOrder

LEGACY_SEED = streams.DEFAULT_SEED  # upstream --fkd_seed default (42)
# Which upstream store it is, as its manifest's ``legacy_kind`` (and a store converted from it,
# ``converted_from.kind``) records it.
SRE2L = "sre2l"   # SRe2L / G-VBSM: lists of 6, no sample indices
PRISM = "prism"   # lists of 7, with the indices


def is_legacy(root: str) -> bool:
    return not os.path.exists(manifest_path(root)) and os.path.isfile(batch_path(root, 0, 0))


def layout(root: str) -> tuple[int, int, int]:
    """(epochs, batches per epoch, batch files) of a store from its files alone: the highest
    epoch_{e} folder holding a batch file and the highest batch_{b}.tar, plus one."""
    epochs = batches = count = 0
    for name in os.listdir(root):
        m = re.fullmatch(r"epoch_(\d+)", name)
        if not m or not os.path.isdir(os.path.join(root, name)):
            continue
        found = [int(b.group(1)) for b in (re.fullmatch(r"batch_(\d+)\.tar", f)
                                           for f in os.listdir(os.path.join(root, name))) if b]
        if found:
            epochs, batches, count = max(epochs, int(m.group(1)) + 1), max(batches, max(found) + 1), count + len(found)
    return epochs, batches, count


def load_upstream(path: str) -> list:
    data = files.safe_torch_load(path, "store batch file", allow_numpy=True)
    if not isinstance(data, (list, tuple)) or len(data) not in (6, 7):
        n = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise UserError(f"store batch file {path}: {n} entries; an upstream store has 6 (SRe2L, G-VBSM) "
                        f"or 7 (PRISM)")
    if not (hasattr(data[0], "__len__") and isinstance(data[5], torch.Tensor) and data[5].dim() == 2):
        raise UserError(f"store batch file {path}: entry 6 is not a (B, C) tensor of soft labels")
    return list(data)


def samples_from_batches(root: str, batches: int, batch_size: int) -> Optional[int]:
    """An upstream store's image count, from its batches: all full but the last of an epoch."""
    last = batch_path(root, 0, batches - 1)
    if not os.path.isfile(last):
        return None
    return (batches - 1) * batch_size + len(load_upstream(last)[0])


class UpstreamReader(Reader):
    """Reads an upstream store's batch files as our reader's lists of 7: numpy scalars admitted;
    SRe2L / G-VBSM batches given the indices their sampler drew."""

    def __init__(self, root: str, manifest: dict):
        super().__init__(root, manifest)
        self.indexless = manifest["legacy_kind"] == SRE2L
        self._order = LegacyOrder(manifest["fkd_seed"], self.num_samples) if self.indexless else None
        self._drawn: Optional[tuple[int, torch.Tensor]] = None  # the last epoch's order drawn

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_drawn": None}

    def load(self, path: str, epoch: int, batch: int) -> list:
        data = files.safe_torch_load(path, "store batch file", allow_numpy=True)
        if not self.indexless:
            return data
        if not isinstance(data, (list, tuple)) or len(data) != 6:
            raise UserError(f"store batch file {path}: expected the 6 entries of an SRe2L/G-VBSM store")
        size = len(data[0]) if hasattr(data[0], "__len__") else 0
        index = self.epoch_order(epoch)[replay.batch_slice(int(self.manifest["batch_size"]), batch)][:size]
        return list(data) + [index.clone()]

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """An SRe2L / G-VBSM epoch's sample order, drawn once for all its steps (drawing it runs the
        sampler over the whole dataset)."""
        if self._drawn is None or self._drawn[0] != epoch:
            self._drawn = (epoch, self._order.epoch(epoch))
        return self._drawn[1]


class UpstreamStore(BatchStore):
    """An SRe2L / G-VBSM / PRISM store, its manifest built from its files and the flags."""

    kind = UPSTREAM
    needs_images = True
    needs_images_hint = "is an upstream store (no manifest): pass --data DIR, the image folder it was made from, " \
                        "and --input-size"

    @classmethod
    def open(cls, path: str, flag: str, index: Optional[FolderIndex] = None,
             request: Request = Request()) -> "UpstreamStore":
        """With ``index`` (the images it was made from) the sample count and class names are
        theirs; without (an inspection), counted from the batches and numbered."""
        if request.need_pixels and request.input_size is None:
            raise UserError(f"{flag} {path}: an upstream store does not record its crop size; pass --input-size "
                            f"(the relabel command's --input-size, 224 for ImageNet)")
        epochs, batches, _ = layout(path)
        first_path = batch_path(path, 0, 0)
        first = load_upstream(first_path)
        batch_size, num_classes = len(first[0]), int(first[5].shape[1])
        if index is not None:
            num_samples, class_names = len(index), list(index.classes)
            expected = math.ceil(num_samples / batch_size)
            if batches != expected:
                raise UserError(f"{flag} {path}: the store has {batches} batches of {batch_size} per epoch, but "
                                f"the images ({index.root}) are {num_samples} ({expected} batches); not the images "
                                f"it was made from")
        else:
            num_samples = samples_from_batches(path, batches, batch_size) or batches * batch_size
            class_names = [str(c) for c in range(num_classes)]
        if len(class_names) > num_classes:
            raise UserError(f"{flag} {path}: the images have {len(class_names)} class folders, more than the "
                            f"store's {num_classes} classes")
        manifest = legacy_manifest(first, class_names, num_samples, request.fkd_seed, request.input_size)
        manifest["epochs"], manifest["batches_per_epoch"] = epochs, batches
        if index is not None:
            # recorded so that a conversion into our format keeps checking the images
            manifest["args"], manifest["dataset_fingerprint"] = {"data": index.root}, index.fingerprint()
        store = cls(path, manifest, flag)
        store.format = manifest["legacy_kind"]
        store.request = request
        return store

    def reader(self, index: Optional[FolderIndex] = None) -> UpstreamReader:
        return UpstreamReader(self.path, dict(self.manifest))

    def source_name(self) -> str:
        return self.manifest["legacy_kind"]  # SRE2L or PRISM

    def content(self) -> dict:
        return {k: v for k, v in self.manifest.items() if k != "legacy_kind"}

    def summary(self, index: Optional[FolderIndex] = None) -> list[tuple[str, str]]:
        """From the files alone and the flags (a sample count the images contradict is said, not refused)."""
        root, request = self.path, self.request
        epochs, batches, files_found = layout(root)
        first = load_upstream(batch_path(root, 0, 0))
        kind = SRE2L if len(first) == 6 else PRISM
        batch_size, soft = len(first[0]), first[5]
        samples = samples_from_batches(root, batches, batch_size)
        said = ("from the last batch of epoch 0" if samples is not None
                else "unknown: epoch 0's last batch is missing")
        if index is not None:
            contradicted = samples not in (None, len(index))
            said = f"--data has {len(index)} images" + (
                f"; the batches say {samples}: not the images it was made from" if contradicted else "")
        mix = "none" if first[2] is None else ("cutmix" if first[4] is not None else "mixup")
        return [
            ("format", f"legacy {kind} (no manifest; lists of {len(first)} "
                       f"{'without' if kind == SRE2L else 'with'} sample indices)"),
            ("epochs", str(epochs)),
            ("batches per epoch", str(batches)),
            ("batch files", f"{files_found} of {epochs * batches} present"),
            ("batch size", str(batch_size)),
            ("samples", f"{samples if samples is not None else '?'} ({said})"),
            ("classes", str(int(soft.shape[1]))),
            ("label format", f"full ({str(soft.dtype).replace('torch.', '')})"),
            ("mix type", mix),
            ("crops", (f"{request.input_size}px (--input-size)" if request.input_size
                       else "size not recorded (--input-size)")
                      + (f", fkd seed {request.fkd_seed} (--fkd_seed)" if request.fkd_seed is not None else
                         f", fkd seed not recorded (upstream default {LEGACY_SEED})")),
            ("teacher", "not recorded (an upstream store has no manifest)"),
        ]

    def check(self, index: Optional[FolderIndex] = None, sample: int = 0) -> str:
        """Every batch file there, then each validated (with ``index``: as those images say)."""
        epochs, batches, _ = layout(self.path)
        missing = [batch_path(self.path, e, b) for e in range(epochs) for b in range(batches)
                   if not os.path.isfile(batch_path(self.path, e, b))]
        if missing:
            raise UserError(f"{self.flag} {self.path}: {len(missing)} of {epochs * batches} batch files missing "
                            f"(first: {missing[0]})")
        return BatchStore.check(type(self).open(self.path, self.flag, index, replace(self.request, need_pixels=False)),
                                sample=sample)

    def with_images(self, index: FolderIndex, data_arg: str) -> tuple[BatchStore, None]:
        """Reopened with the images: their count and class names are the store's."""
        return type(self).open(self.path, self.flag, index, self.request), None


def legacy_manifest(first: list, class_names: list[str], num_samples: int, fkd_seed: Optional[int],
                    input_size: Optional[int]) -> dict:
    """A manifest for an upstream store from its first batch and the user's flags."""
    kind = SRE2L if len(first) == 6 else PRISM
    soft = first[5]
    mix_type = "none" if first[2] is None else ("cutmix" if first[4] is not None else "mixup")
    return {
        "format_version": 1, "legacy_kind": kind, "label_format": "full", "topk": None, "topk_fill": None,
        "fkd_seed": LEGACY_SEED if fkd_seed is None else int(fkd_seed), "batch_size": len(first[0]),
        "num_samples": num_samples, "num_classes": int(soft.shape[1]), "class_names": class_names,
        "class_to_index": {c: i for i, c in enumerate(class_names)},
        "input_size": None if input_size is None else int(input_size),
        "min_scale_crops": None, "max_scale_crops": None, "mix_type": mix_type, "mixup": None, "cutmix": None,
        "use_fp16": soft.dtype == torch.float16, "temperature": None, "teachers": [], "ensemble": None,
        "primary_weight": None, "dataset_fingerprint": None, "args": {},
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],  # upstream normalization
    }
