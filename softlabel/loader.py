"""Batch-level loading for both sides of a store.

``RelabelBatches`` samples a batch's augmentation and renders it (relabel side);
``StoreBatches`` reads a stored batch (through its store's reader) and renders the same pixels
again (student side).
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
from softlabel.distributed import slice_bounds


class RelabelBatches(Dataset):
    """One item per (epoch, batch) to label: its images with freshly sampled crops, flips
    and mix. The sample derives from (seed, epoch, batch) only, whichever worker draws it."""

    def __init__(self, index: FolderIndex, jobs: list[tuple[int, int]], augment: replay.Augment,
                 class_index: Optional[list[int]] = None, cache_bytes: int = 0):
        self.index, self.jobs, self.augment = index, jobs, augment
        self.cache = ImageCache(cache_bytes, index)
        self.targets = folder_targets(index, class_index)
        self._order: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.jobs)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order[0] != epoch:  # one permutation per epoch, not one per batch
            self._order = (epoch, replay.epoch_order(self.augment.seed, epoch, len(self.index)))
        return self._order[1]

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, batch = self.jobs[i]
        a = self.augment
        idx = self._epoch_order(epoch)[replay.batch_slice(a.batch_size, batch)]
        images = [self.cache.load(self.index.samples[k][0]) for k in idx]
        rng = replay.batch_rng(a.seed, epoch, batch)
        coords, flips = replay.sample_crops_and_flips(rng, [im.size for im in images], a.scale)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, a.mix_type, len(idx), a.input_size, a.mixup, a.cutmix)
        index = torch.from_numpy(idx.astype(np.int64))
        return {"epoch": epoch, "batch": batch, "index": index, "target": self.targets[index], "coords": coords,
                "flip": flips, "mix_index": mix_index, "mix_lam": mix_lam, "mix_bbox": mix_bbox,
                "pixels": replay.render_batch(images, coords, flips, a.input_size)}


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


class StoreBatches(Dataset):
    """One item per stored (epoch, batch): the stored record plus its pixels, re-rendered
    from the raw images at the stored crops and flips. ``reader``: a store's ``reader()``, whose
    ``read(epoch, batch)`` is a validated ``BatchRecord`` (any batch-layout format).

    With ``world`` > 1 an item holds rank ``rank``'s contiguous slice of the batch, and only
    the images that slice needs are decoded: its own and its mix partners' (``partners``,
    uint8 like ``pixels``; None without mixing). ``batch_size`` is the whole batch's size."""

    def __init__(self, reader: Any, index: FolderIndex, jobs: list[tuple[int, int]], cache_bytes: int = 0,
                 rank: int = 0, world: int = 1, with_stored: bool = False):
        self.reader, self.index, self.jobs = reader, index, jobs
        self.with_stored = with_stored
        self.rank, self.world = rank, world
        self.cache = ImageCache(cache_bytes, index)
        self.input_size = int(reader.input_size)
        self.targets = folder_targets(index, reader.class_index(index.classes))

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        epoch, batch = self.jobs[i]
        rec = self.reader.read(epoch, batch)
        lo, hi = slice_bounds(len(rec), self.rank, self.world)
        mine = list(range(lo, hi))
        partners = None if rec.mix_index is None else rec.mix_index[lo:hi].tolist()
        needed = sorted(set(mine) | set(partners or []))
        at = {k: n for n, k in enumerate(needed)}
        images = [self.cache.load(self.index.samples[k][0]) for k in rec.index[needed].tolist()]
        rendered = replay.render_batch(images, rec.coords[needed], rec.flip[needed], self.input_size)
        item = {"epoch": epoch, "batch": batch, "batch_size": len(rec), "index": rec.index[lo:hi],
                "target": self.targets[rec.index[lo:hi]], "soft_label": rec.soft_label[lo:hi],
                "mix_index": rec.mix_index, "mix_lam": rec.mix_lam, "mix_bbox": rec.mix_bbox,
                # rendered in the slice's order already unless partners came along: no copy of the batch then
                "pixels": rendered if needed == mine else rendered[[at[k] for k in mine]],
                "partners": None if partners is None else rendered[[at[k] for k in partners]]}
        if self.with_stored:  # which logits a top-k store holds (None: all); the trainer needs none
            item["stored"] = None if rec.stored is None else rec.stored[lo:hi]
        return item
