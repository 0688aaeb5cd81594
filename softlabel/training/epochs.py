"""The batches of each epoch: replayed from a store (each rank its slice of every step; per-image
stores with train_FKD.py's optional online mix), or drawn online for hard labels and online
distillation (--train-crop, flip, mix; a distiller's several views of each image)."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from softlabel import replay, streams
from softlabel.data import FolderIndex, IndexedImageFolder
from softlabel.distill import DISTILLERS
from softlabel.distill.base import Crop
from softlabel.distributed import DistInfo
from softlabel.loader import batch_loader, cache_bytes
from softlabel.stores import StepPlan, Store
from softlabel.stores import batch as batch_store
from softlabel.streams import Stream
from softlabel.training.config import TrainConfig, pass_batch
from softlabel.transforms import drawn_train_crop, train_crop_transform


def epoch_seed(seed: int, epoch: int, stream: Stream = Stream.TRAIN_EPOCH) -> int:
    """Every epoch's randomness restarts from (seed, epoch): a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew."""
    return int(streams.rng(seed, stream, epoch).integers(2 ** 62))


def store_epochs(cfg: TrainConfig, store: Store, index: FolderIndex, first_epoch: int, info: DistInfo,
                 pin: bool) -> Iterator[tuple[int, Iterator[dict]]]:
    """(epoch, batches) from a store through one loader for the whole run, so workers start once
    rather than once per epoch. Each rank gets its slice of every step. Per-image stores draw each
    step's images and stored crops from (--seed, epoch)."""
    passes = cfg.passes
    if cfg.per_image:
        steps = [replay.batches_per_epoch(len(index), pass_batch(cfg, crops)[0]) for _, crops in passes]
        options = {"plan": StepPlan(cfg.seed, cfg.batch_size, cfg.num_crops, passes if cfg.recipe == "fkd" else None)}
    else:
        steps, options = [store.settings.batches_per_epoch] * len(passes), {}
    jobs = [(p, b) for p in range(first_epoch, len(passes)) for b in range(steps[p])]
    dataset = store.dataset(index, jobs, cache_bytes(cfg.cache_images, cfg.workers), info.rank, info.world_size,
                            **options)
    batches = iter(batch_loader(dataset, cfg.workers, pin, background=pin, yield_cpu=not pin))
    for epoch in range(first_epoch, len(passes)):
        epoch_batches = (next(batches) for _ in range(steps[epoch]))
        if cfg.mixup_cutmix:
            epoch_batches = (mix_per_image(cfg, item, info.rank) for item in epoch_batches)
        yield epoch, (epoch_batches if cfg.per_image else each_sample_once(epoch_batches, store, epoch))


def mix_per_image(cfg: TrainConfig, item: dict, rank: int) -> dict:
    """train_FKD.py's --mixup_cutmix (utils_FKD.py's mixup_cutmix): with --mixup_cutmix_prob the
    step is mixed, by mixup with --mixup_switch_prob else cutmix, each crop with a partner of the
    same batch; the labels mix as probabilities, lambda p + (1 - lambda) p_partner."""
    rng = streams.rng(cfg.seed, Stream.PER_IMAGE_MIX, item["epoch"], item["batch"], rank)
    if not rng.random() < cfg.mixup_cutmix_prob:
        return item
    kind = "mixup" if rng.random() < cfg.mixup_switch_prob else "cutmix"
    index, lam, bbox = replay.sample_mix(rng, kind, len(item["target"]), cfg.input_size, cfg.mixup, cfg.cutmix)
    probs = item["soft_label"].exp()
    mixed = (lam * probs + (1.0 - lam) * probs[index]).log()
    return {**item, "soft_label": mixed, "partners": item["pixels"][index], "mix_lam": lam, "mix_bbox": bbox}


def each_sample_once(batches: Iterator[dict], store: Store, epoch: int) -> Iterator[dict]:
    """A stored epoch's batches, refused at the first one that repeats a sample of an earlier batch.
    A pruned store's steps cycle across epochs (a student epoch may show a sample twice): not checked."""
    if store.settings.label_keep < 1.0:
        yield from batches
        return
    shown, reader = batch_store.EpochSamples(store.settings.num_samples, epoch), store.reader()
    for item in batches:
        shown.add(item["index"], reader.where(item["epoch"], item["batch"]))
        yield item


def hard_label_epochs(cfg: TrainConfig, index: FolderIndex, epochs: range, info: DistInfo, pin: bool,
                      stream: Stream = Stream.TRAIN_EPOCH) -> Iterator[tuple[int, Iterator[dict]]]:
    """Online crops (--train-crop) + flip as uint8 pixels (normalized later, per model); each
    rank draws its share of every epoch (DistributedSampler), mixes within its own batch.
    ``stream``: a distiller's init stage draws its epochs from its own, and mixes nothing. A
    distiller of several views (KDSS) gets every image as its ``image_views``, drawn from
    (--seed, ``stream``, epoch, image) whatever the workers, ranks or resumption."""
    method = DISTILLERS[cfg.distiller] if cfg.distiller else None
    views = method is not None and method.views > 1
    scale = (cfg.min_scale_crops, cfg.max_scale_crops)
    one_view = IndexedImageFolder(index, train_crop_transform(cfg.train_crop, cfg.input_size, scale),
                                  with_index=True)
    crop = drawn_train_crop(cfg.train_crop, cfg.input_size, scale)
    local_batch = max(1, cfg.batch_size // info.world_size)
    for epoch in epochs:
        seed = epoch_seed(cfg.seed, epoch, stream)
        dataset = (ImageViews(index, method.image_views, crop, (cfg.seed, stream, epoch)) if views
                   else one_view)
        if info.distributed:
            sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(seed), drop_last=cfg.drop_last)
        yield epoch, _hard_label_batches(loader, epoch, cfg, info, stream == Stream.TRAIN_EPOCH)


class ImageViews(torch.utils.data.Dataset):
    """Every image as a distiller's views: uint8 (views, C, H, W), its class, its index; the draws
    of image i from the stream at ``key`` + (i,)."""

    def __init__(self, index: FolderIndex, views: Callable, crop: Crop, key: tuple[int, Stream, int]):
        self.index, self.views, self.crop, self.key = index, views, crop, key

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, target = self.index.samples[i]
        seed, stream, epoch = self.key
        images = self.views(self.index.load(path), self.crop, streams.rng(seed, stream, epoch, i))
        return torch.stack([T.functional.pil_to_tensor(image) for image in images]), target, i


def view_major(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, views, C, H, W) -> (views x B, C, H, W): each view's batch in turn."""
    return None if x is None else x.transpose(0, 1).flatten(0, 1)


def _hard_label_batches(loader: DataLoader, epoch: int, cfg: TrainConfig, info: DistInfo,
                        mix: bool) -> Iterator[dict]:
    """``pixels`` (and ``partners``): the batch, or with a distiller's views every view of it, view-major;
    each view mixed with its partner's same view."""
    for step, (pixels, target, sample_index) in enumerate(loader):
        rng = streams.rng(cfg.seed, Stream.HARD_LABEL_MIX, epoch, step, info.rank)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, cfg.mix_type if mix else "none", len(target),
                                                         cfg.input_size, cfg.mixup, cfg.cutmix)
        partners = replay.partners_of(pixels, mix_index)
        if pixels.dim() == 5:
            pixels, partners = view_major(pixels), view_major(partners)
        yield {"pixels": pixels, "partners": partners,
               "mix_lam": mix_lam, "mix_bbox": mix_bbox, "target": target, "index": sample_index,
               "partner_target": replay.partners_of(target, mix_index),
               "batch_size": len(target) * info.world_size}
