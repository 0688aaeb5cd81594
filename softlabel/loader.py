"""Batch-level loading for both sides of a store.

``RelabelBatches`` samples a batch's augmentation and renders it (relabel side);
``StoreBatches`` reads a stored batch and renders the same pixels again (student side).
Both render through ``replay.render_batch``; one item is one whole batch, so DataLoader
workers never need to know which batch they are in (no patched PyTorch internals), and
the result is the same for any number of workers.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from prefetch_generator import BackgroundGenerator
from torch.utils.data import DataLoader, Dataset

from softlabel import replay, store
from softlabel.data import FolderIndex, load_rgb


class RelabelBatches(Dataset):
    """One item per (epoch, batch) to label: its images with freshly sampled crops, flips
    and mix. The sample derives from (seed, epoch, batch) only, whichever worker draws it."""

    def __init__(self, index: FolderIndex, jobs: list[tuple[int, int]], seed: int, batch_size: int,
                 input_size: int, scale: tuple[float, float], mix_type: str,
                 mixup: float = 0.8, cutmix: float = 1.0):
        self.index, self.jobs, self.seed, self.batch_size = index, jobs, seed, batch_size
        self.input_size, self.scale = input_size, scale
        self.mix_type, self.mixup, self.cutmix = mix_type, mixup, cutmix
        self._order: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.jobs)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:  # one permutation per epoch, not one per batch
            self._order = (epoch, replay.epoch_order(self.seed, epoch, len(self.index)))
        return self._order[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, batch = self.jobs[i]
        idx = self._epoch_order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        images = [load_rgb(self.index.samples[k][0]) for k in idx]
        rng = replay.batch_rng(self.seed, epoch, batch)
        coords, flips = replay.sample_crops_and_flips(rng, [im.size for im in images], self.scale)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, self.mix_type, len(idx), self.input_size,
                                                         self.mixup, self.cutmix)
        return {"epoch": epoch, "batch": batch, "index": torch.from_numpy(idx.astype(np.int64)),
                "target": torch.tensor([self.index.samples[k][1] for k in idx], dtype=torch.int64),
                "coords": coords, "flip": flips, "mix_index": mix_index, "mix_lam": mix_lam,
                "mix_bbox": mix_bbox, "pixels": replay.render_batch(images, coords, flips, self.input_size)}


class StoreBatches(Dataset):
    """One item per stored (epoch, batch): the stored record plus its pixels, re-rendered
    from the raw images at the stored crops and flips."""

    def __init__(self, root: str, index: FolderIndex, manifest: dict, jobs: list[tuple[int, int]]):
        self.root, self.index, self.jobs = root, index, jobs
        self.input_size = int(manifest["input_size"])
        self.num_classes = int(manifest["num_classes"])

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, batch = self.jobs[i]
        rec = store.read_batch(self.root, epoch, batch, len(self.index), self.num_classes)
        idx = rec.index.tolist()
        images = [load_rgb(self.index.samples[k][0]) for k in idx]
        return {"epoch": epoch, "batch": batch, "index": rec.index,
                "target": torch.tensor([self.index.samples[k][1] for k in idx], dtype=torch.int64),
                "soft_label": rec.soft_label, "mix_index": rec.mix_index, "mix_lam": rec.mix_lam,
                "mix_bbox": rec.mix_bbox, "pixels": replay.render_batch(images, rec.coords, rec.flip,
                                                                        self.input_size)}


def _as_is(item: Any) -> Any:
    return item


def batch_loader(dataset: Dataset, workers: int, pin_memory: bool) -> Iterable[dict[str, Any]]:
    """Iterate whole batches in order. With workers, DataLoader processes prefetch; without,
    a background thread overlaps decoding with the model's work."""
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_as_is, pin_memory=pin_memory,
                        prefetch_factor=2 if workers > 0 else None)
    if workers > 0:
        return loader
    return _Background(loader)


class _Background:
    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(BackgroundGenerator(iter(self.loader), max_prefetch=2))
