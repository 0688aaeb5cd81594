"""Soft-label store, format v1: the one reader/writer, used by relabel and by the trainer.

A store is a directory::

    manifest.json                 format version, settings, teachers, classes, fingerprint
    epoch_{e}/batch_{b}.tar       one training step each

Each batch file is a ``torch.save``d list in the upstream SRe2L/PRISM order, loadable with
``torch.load(..., weights_only=True)``::

    [coords (B,4) float32, flip (B,) bool, mix_index (B,) int64 | None, mix_lam float | None,
     mix_bbox [x1, y1, x2, y2] | None, soft_label (B,C) float16/32, index (B,) int64]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from softlabel import io
from softlabel.errors import UserError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Manifest settings that change the content of batch files: a rerun on an existing store
# must agree on all of them (``epochs`` may grow: rerunning with more epochs extends a store).
CONTENT_KEYS = ("format_version", "fkd_seed", "batch_size", "num_samples", "num_classes",
                "input_size", "min_scale_crops", "max_scale_crops", "mix_type", "mixup",
                "cutmix", "use_fp16", "temperature", "teachers", "ensemble", "primary_weight",
                "class_to_index", "dataset_fingerprint")


@dataclass
class BatchRecord:
    coords: torch.Tensor
    flip: torch.Tensor
    mix_index: Optional[torch.Tensor]
    mix_lam: Optional[float]
    mix_bbox: Optional[list[int]]
    soft_label: torch.Tensor
    index: torch.Tensor

    def to_list(self) -> list:
        return [self.coords, self.flip, self.mix_index, self.mix_lam, self.mix_bbox,
                self.soft_label, self.index]

    @property
    def mix_type(self) -> str:
        if self.mix_index is None:
            return "none"
        return "cutmix" if self.mix_bbox is not None else "mixup"

    def __len__(self) -> int:
        return int(self.index.numel())


def epoch_dir(root: str, epoch: int) -> str:
    return os.path.join(root, f"epoch_{epoch}")


def batch_path(root: str, epoch: int, batch: int) -> str:
    return os.path.join(epoch_dir(root, epoch), f"batch_{batch}.tar")


def write_batch(root: str, epoch: int, batch: int, record: BatchRecord) -> None:
    io.atomic_torch_save(record.to_list(), batch_path(root, epoch, batch))


def read_batch(root: str, epoch: int, batch: int, num_samples: int, num_classes: int) -> BatchRecord:
    """Load and validate one batch file; any problem is one line naming the file."""
    path = batch_path(root, epoch, batch)
    data = io.safe_torch_load(path, "store batch file")
    return parse_record(data, path, num_samples, num_classes)


def parse_record(data: Any, path: str, num_samples: int, num_classes: int) -> BatchRecord:
    def bad(why: str) -> UserError:
        return UserError(f"store batch file {path}: {why}")

    if not isinstance(data, (list, tuple)) or len(data) != 7:
        n = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise bad(f"expected a list of 7 entries (format v1), found {n}")
    coords, flip, mix_index, mix_lam, mix_bbox, soft_label, index = data
    if not (isinstance(coords, torch.Tensor) and coords.dim() == 2 and coords.shape[1] == 4
            and coords.is_floating_point()):
        raise bad("coords must be a float (B, 4) tensor")
    b = coords.shape[0]
    if not (isinstance(flip, torch.Tensor) and flip.shape == (b,)):
        raise bad(f"flip must be a ({b},) tensor")
    if not (isinstance(index, torch.Tensor) and index.shape == (b,) and not index.is_floating_point()):
        raise bad(f"index must be an integer ({b},) tensor")
    if not (isinstance(soft_label, torch.Tensor) and soft_label.shape == (b, num_classes)
            and soft_label.is_floating_point()):
        shape = tuple(soft_label.shape) if isinstance(soft_label, torch.Tensor) else type(soft_label).__name__
        raise bad(f"soft_label must be a float ({b}, {num_classes}) tensor, found {shape}")
    if b and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise bad(f"index out of range for a dataset of {num_samples} images")
    if b and (float(coords.min()) < 0.0 or float(coords.max()) > 1.0):
        raise bad("coords outside [0, 1]")
    if not bool(torch.isfinite(soft_label).all()):
        raise bad("soft_label holds NaN or infinite values")
    if mix_index is not None:
        if not (isinstance(mix_index, torch.Tensor) and mix_index.shape == (b,)):
            raise bad(f"mix_index must be a ({b},) tensor or None")
        if b and (int(mix_index.min()) < 0 or int(mix_index.max()) >= b):
            raise bad("mix_index out of range for the batch")
        if mix_lam is None:
            raise bad("mix_lam is missing while mix_index is set")
    if mix_bbox is not None and (mix_index is None or len(mix_bbox) != 4):
        raise bad("mix_bbox must be 4 integers, set together with mix_index")
    return BatchRecord(coords.float(), flip.bool(), None if mix_index is None else mix_index.long(),
                       None if mix_lam is None else float(mix_lam),
                       None if mix_bbox is None else [int(v) for v in mix_bbox],
                       soft_label, index.long())


# ----------------------------------------------------------------------------- manifest

def manifest_path(root: str) -> str:
    return os.path.join(root, MANIFEST)


def read_manifest(root: str) -> dict:
    if not os.path.isdir(root):
        raise UserError(f"--fkd-path {root}: no such directory")
    path = manifest_path(root)
    if not os.path.isfile(path):
        raise UserError(f"--fkd-path {root}: no {MANIFEST}; not a soft-label store (or relabel "
                        f"has not started writing it)")
    manifest = io.read_json(path, "store manifest")
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise UserError(f"store manifest {path}: format version {found!r} is not supported "
                        f"(this toolkit reads version {FORMAT_VERSION})")
    missing = [k for k in CONTENT_KEYS + ("epochs", "batches_per_epoch", "class_names") if k not in manifest]
    if missing:
        raise UserError(f"store manifest {path}: missing entries {', '.join(missing)}")
    return manifest


def first_clash(old: dict, new: dict) -> Optional[str]:
    """The first content setting on which two manifests disagree, as a readable phrase."""
    for key in CONTENT_KEYS:
        if old.get(key) != new.get(key):
            return f"{key}: store has {_short(old.get(key))}, this run has {_short(new.get(key))}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_compatible(root: str, manifest: dict) -> dict:
    """Read-only check before writing into ``root``: a store already there must have been made
    with the same content settings. Returns the manifest to write (``epochs`` may only grow)."""
    if not os.path.exists(manifest_path(root)):
        return manifest
    old = read_manifest(root)
    clash = first_clash(old, manifest)
    if clash:
        raise UserError(f"--fkd-path {root}: the store was made with other settings ({clash}); "
                        f"use a new --fkd-path or the original settings")
    return manifest if manifest["epochs"] > old["epochs"] else old


_locks: list = []  # open lock files, held until the process exits


def lock(root: str) -> None:
    """Take the store's lock for the rest of this process's life; a second run on the same
    store is refused instead of mixing its files in. The OS drops the lock when the holder
    dies, even by SIGKILL, so a killed run never blocks its own rerun."""
    import fcntl
    io.ensure_dir(root, "--fkd-path")
    f = open(os.path.join(root, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"--fkd-path {root}: another relabel run is writing this store; wait for it "
                        f"to finish or use another --fkd-path") from None
    _locks.append(f)


def write_manifest(root: str, manifest: dict) -> None:
    io.ensure_dir(root, "--fkd-path")
    io.atomic_write_json(manifest_path(root), manifest)


def missing_batches(root: str, epochs: int, batches: int) -> list[str]:
    return [batch_path(root, e, b) for e in range(epochs) for b in range(batches)
            if not os.path.isfile(batch_path(root, e, b))]
