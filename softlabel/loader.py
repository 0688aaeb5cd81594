"""Batch-level loading for both sides of a store.

``RelabelBatches`` samples a batch's augmentation and renders it (relabel side);
``StoreBatches`` (``stores/batch.py``) reads a stored batch and renders the same pixels again
(student side).
Both render through ``replay.render_batch``; one item is one whole batch, so DataLoader
workers never need to know which batch they are in (no patched PyTorch internals), and
the result is the same for any number of workers.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
from prefetch_generator import BackgroundGenerator
from torch.utils.data import DataLoader, Dataset

from softlabel import replay
from softlabel.classmap import folder_targets
from softlabel.data import FolderIndex, ImageCache


class RelabelBatches(Dataset):
    """One item per (epoch, batch) to label: its images with freshly sampled crops, flips
    and mix. The sample derives from (seed, epoch, batch) only, whichever worker draws it."""

    def __init__(self, index: FolderIndex, jobs: list[tuple[int, int]], seed: int, batch_size: int,
                 input_size: int, scale: tuple[float, float], mix_type: str,
                 mixup: float = 0.8, cutmix: float = 1.0, class_index: Optional[list[int]] = None,
                 cache_bytes: int = 0):
        self.index, self.jobs, self.seed, self.batch_size = index, jobs, seed, batch_size
        self.cache = ImageCache(cache_bytes, index)
        self.input_size, self.scale = input_size, scale
        self.mix_type, self.mixup, self.cutmix = mix_type, mixup, cutmix
        self.targets = folder_targets(index, class_index)
        self._order: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.jobs)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:  # one permutation per epoch, not one per batch
            self._order = (epoch, replay.epoch_order(self.seed, epoch, len(self.index)))
        return self._order[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, batch = self.jobs[i]
        idx = self._epoch_order(epoch)[replay.batch_slice(self.batch_size, batch)]
        images = [self.cache.load(self.index.samples[k][0]) for k in idx]
        rng = replay.batch_rng(self.seed, epoch, batch)
        coords, flips = replay.sample_crops_and_flips(rng, [im.size for im in images], self.scale)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, self.mix_type, len(idx), self.input_size,
                                                         self.mixup, self.cutmix)
        return {"epoch": epoch, "batch": batch, "index": torch.from_numpy(idx.astype(np.int64)),
                "target": self.targets[torch.from_numpy(idx.astype(np.int64))], "coords": coords, "flip": flips, "mix_index": mix_index, "mix_lam": mix_lam,
                "mix_bbox": mix_bbox, "pixels": replay.render_batch(images, coords, flips, self.input_size)}


def _as_is(item: Any) -> Any:
    return item


def loader_workers(requested: Optional[int], on_gpu: bool) -> int:
    """-j default: 4 worker processes to feed a GPU; none on a CPU, where the model's threads
    fill every core and loading between steps in the main process is fastest (bench_relabel)."""
    return requested if requested is not None else (4 if on_gpu else 0)


def cache_bytes(megabytes: int, workers: int) -> int:
    """Per-process share of a decoded-image budget: each loader process keeps its own."""
    return (megabytes << 20) // max(1, workers)


def batch_loader(dataset: Dataset, workers: int, pin_memory: bool, background: bool = True,
                 yield_cpu: bool = False) -> Iterable[dict[str, Any]]:
    """Iterate whole batches in order.

    With workers, DataLoader processes prefetch. Without, ``background`` loads in a thread
    that overlaps decoding with the model's work (right when the model runs on a GPU); on a
    CPU, whose cores the model's threads already fill, loading in the main thread between
    steps is faster (no GIL or core contention), so callers pass ``background=False`` there.
    ``yield_cpu`` runs the worker processes at idle priority, so that on a CPU they take only
    cores the model leaves idle.
    """
    if workers > 0:
        loader = DataLoader(_SmallByValue(dataset), batch_size=None, shuffle=False, num_workers=workers,
                            collate_fn=_as_is, pin_memory=pin_memory, prefetch_factor=2,
                            worker_init_fn=_lowest_priority if yield_cpu else None)
        return _Unpacked(loader)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0, collate_fn=_as_is)
    return _Background(loader) if background else loader


def _lowest_priority(worker_id: int = 0) -> None:
    # SCHED_IDLE: run only on a core nothing else wants (Linux; allowed without privileges).
    # A merely "nice" worker still gets time slices on a busy core, and every slice it takes
    # stalls a whole multi-threaded operation of the model.
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:  # not allowed here: loading just keeps its priority
            pass


class _SmallByValue(Dataset):
    """Worker side: small tensors travel as numpy arrays, pickled by value; a tensor would
    travel through its own shared-memory segment, costing the main process a file
    descriptor exchange and a mapping for a few bytes."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v.numpy() if isinstance(v, torch.Tensor) and v.numel() <= 65536 else v
                for k, v in self.dataset[i].items()}


class _Unpacked:
    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.loader:
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}


class _Background:
    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(BackgroundGenerator(iter(self.loader), max_prefetch=2))
