"""Train a student network: from a soft-label store, from hard labels, or distilled online.

Store mode (``--fkd-path``): every step reads one stored batch, re-renders exactly the crops,
flips and mix the teacher labelled (softlabel/replay.py) and fits the stored logits.

    python validate/train_FKD_parallel.py --train-dir DISTILLED --val-dir VAL \
        --fkd-path STORE --model resnet18 --loss-type kl -T 4 --cos --output-dir save/r18
    torchrun --standalone --nproc_per_node 8 validate/train_FKD_parallel.py ...   # DDP

Per-image FKD mode (``--fkd-layout per-image``): ``--fkd-path`` is a store of
relabel/generate_soft_label_fkd.py (one file per image, many labelled crops each); every step
takes -b images and ``--num-crops`` of each image's stored crops, re-rendered exactly, with
the recovered FKD labels as log-probabilities (softlabel/stores/per_image.py).

Hard-label mode (no ``--fkd-path``): online RandomResizedCrop, flip, optional mix and label
smoothing; it trains teachers and baselines. With ``--teacher`` the teacher runs every step on
the same augmented batch (classic online KD), for comparison with stored labels.

Writes ``metrics.jsonl`` (one line per evaluation), ``checkpoint.pth`` and ``results.json`` in
``--output-dir``; ``--resume auto`` continues a killed run to exactly the same weights.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from softlabel import distributed, files, models, provenance, replay, tracking
from softlabel.cli import add_replaced_flags, note_replaced_flags
from softlabel.data import FolderIndex, IndexedImageFolder, drop_unreadable, eval_transform, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.loader import StoreBatches, batch_loader, cache_bytes, class_index_of, loader_workers, slice_bounds
from softlabel.stores import batch as store
from softlabel.stores import per_image
from softlabel.teachers import SOURCES, Ensemble, load_teachers
from softlabel.tracking import Tracker
from validate.losses import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, LOSSES, PROBABILITY_LOSSES, keep_topk
from validate.metrics import classification_metrics

TRAINER_REPLACED = ("multiprocessing_distributed", "dist_url", "dist_backend", "world_size", "gpu_id")
SECRETS = ("wandb_api_key",)
# Settings a resumed run must share with its checkpoint, or it could not continue exactly.
RESUME_MUST_MATCH = ("model", "num_classes", "batch_size", "gradient_accumulation_steps", "loss_type",
                     "temperature", "ce_weight", "alpha", "kd_t2", "keep_topk", "label_smoothing", "sgd",
                     "learning_rate", "momentum", "weight_decay", "adamw_lr", "adamw_weight_decay", "cos",
                     "warmup_epochs", "amp", "seed", "mix_type", "input_size", "min_scale_crops",
                     "max_scale_crops", "teacher", "fkd_layout", "num_crops")
FKD_CROPS_PER_IMAGE = 4  # --num-crops default: FKD's train_FKD.py --num_crops


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FKD-style student training from stored soft labels "
                                            "(or hard labels, or online distillation)")
    g = p.add_argument_group("data")
    g.add_argument("--train-dir", type=str, default=None, help="training images (ImageFolder)")
    g.add_argument("--val-dir", type=str, default=None, help="validation images (ImageFolder)")
    g.add_argument("--fkd-path", type=str, default=None,
                   help="soft-label store made by relabel/ (omit for hard labels or --teacher)")
    g.add_argument("--fkd-layout", choices=["batch", "per-image"], default=None,
                   help="batch: a store of relabel/generate_soft_label.py, one file per step (default); "
                        "per-image: an FKD store of relabel/generate_soft_label_fkd.py, one file per image")
    g.add_argument("--softlabel_path", default=None, metavar="DIR",
                   help="FKD's spelling: --fkd-path DIR --fkd-layout per-image")
    g.add_argument("--soft_label_type", default=None, metavar="TYPE",
                   help="FKD's flag: the label type the per-image store must hold (the store's manifest says "
                        "which it holds; a different one is refused, not reinterpreted)")
    g.add_argument("--num-crops", "--num_crops", dest="num_crops", type=int, default=None, metavar="N",
                   help=f"per-image: stored crops of every image per epoch, all in the image's step (a step "
                        f"holds -b images x N crops); crops repeat only once all were used "
                        f"(default: {FKD_CROPS_PER_IMAGE}, as FKD)")
    g.add_argument("-j", "--workers", default=None, type=int,
                   help="data loading worker processes (default: 4 on GPU, 0 on CPU); results do not depend on it")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave out (and list) training images that cannot be read, as relabel did with this flag")
    g.add_argument("--cache-images", type=int, default=1024, metavar="MB",
                   help="store mode: keep decoded images in memory up to MB in all (default: 1024)")
    g.add_argument("--input-size", type=int, default=None,
                   help="crop size (default: the store's; hard labels: 224)")
    g.add_argument("--min-scale-crops", type=float, default=None,
                   help="RandomResizedCrop min scale (default: the store's; hard labels: 0.08)")
    g.add_argument("--max-scale-crops", type=float, default=None,
                   help="RandomResizedCrop max scale (default: the store's; hard labels: 1.0)")
    g.add_argument("--crop-pct", type=float, default=0.875,
                   help="validation: resize to input-size/crop-pct, center-crop (default: 0.875)")
    g.add_argument("--mix-type", default=None, type=str, choices=["mixup", "cutmix", "none", "None"],
                   help="default: the store's; hard labels: none (online mix)")
    g.add_argument("--mixup", type=float, default=0.8, help="hard labels: mixup alpha (default: 0.8)")
    g.add_argument("--cutmix", type=float, default=1.0, help="hard labels: cutmix alpha (default: 1.0)")
    g.add_argument("--fkd-seed", "--fkd_seed", dest="fkd_seed", type=int, default=None,
                   help="seed the store was made with (default: the store's; a different value is refused)")

    g = p.add_argument_group("model")
    g.add_argument("--model", type=str, default="resnet18",
                   help="student: ours (democnn, ...), torchvision or timm name (default: resnet18)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="default: the store's; hard labels: the number of class folders")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")

    g = p.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", type=int, default=None,
                   help="global batch (all ranks together); default: the store's batch size; hard labels: "
                        "1024; per-image: images per step (default: 1024 / --num-crops)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="split each batch into this many micro-batches, one optimizer step (default: 1)")
    g.add_argument("--epochs", type=int, default=None,
                   help="default: the epochs the store holds; hard labels: 300")
    g.add_argument("--start-epoch", type=int, default=0, help="begin at this epoch (schedule and store)")
    g.add_argument("--cos", action="store_true", help="cosine learning-rate decay (default: linear)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs (default: 0)")
    g.add_argument("--sgd", action="store_true", help="SGD instead of AdamW")
    g.add_argument("-lr", "--learning-rate", type=float, default=1.024, help="SGD learning rate")
    g.add_argument("--momentum", type=float, default=0.875, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=3e-5, help="SGD weight decay")
    g.add_argument("--adamw-lr", type=float, default=0.001, help="AdamW learning rate")
    g.add_argument("--adamw-weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (never on norms and biases)")
    g.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="autocast; fp16 adds a gradient scaler (default: off)")

    g = p.add_argument_group("loss")
    g.add_argument("--loss-type", type=str, default="kl", choices=sorted(LOSSES),
                   help="loss against the teacher's logits (default: kl)")
    g.add_argument("-T", "--temperature", "--temp", dest="temperature", type=float, default=None,
                   help="distillation temperature (default: 3; wsld: 2; kd: 4)")
    g.add_argument("--ce-weight", type=float, default=0.1, help="cross-entropy weight of mse_gt / mae_gt")
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the soft term: wsld (default: 2.5), kd (default: 0.9, CE gets 1 - alpha)")
    g.add_argument("--kd-t2", action="store_true", help="kl only: multiply by T^2 (kd, wsld and dist include it)")
    g.add_argument("--keep-topk", type=int, default=None, metavar="K",
                   help="keep only each sample's top-K teacher logits (the rest masked) before the loss")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="hard labels: label smoothing")

    g = p.add_argument_group("online distillation (no --fkd-path)")
    g.add_argument("--teacher", type=str, default=None, metavar="ARCH[,ARCH]",
                   help="run this teacher on every augmented batch; the loss is --loss-type")
    g.add_argument("--teacher-path", type=str, default=None, metavar="P[,P]", help="its weights")
    g.add_argument("--teacher-source", choices=SOURCES, default=None, help="as in relabel")

    g = p.add_argument_group("run")
    g.add_argument("--output-dir", type=str, default="./save", help="checkpoint and metrics directory")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation and of hard-label augmentation")
    g.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs and at the end")
    g.add_argument("--save-interval", type=int, default=1,
                   help="write checkpoint.pth every N epochs and at the end (default: 1)")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a checkpoint; auto: --output-dir/checkpoint.pth if there is one")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--wandb-mode", default="disabled", choices=["online", "offline", "disabled"],
                   help="wandb logging (default: disabled); online reads the key from WANDB_API_KEY")
    g.add_argument("--wandb-project", default="softlabel", help="wandb project")
    g.add_argument("--wandb-api-key", default=None,
                   help="accepted for old scripts: sets WANDB_API_KEY for this process only; never written anywhere")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_replaced_flags(p, TRAINER_REPLACED)
    return p


# ----------------------------------------------------------------------------- settings

RECORDED_SETTINGS = {"--input-size": "input_size", "--min-scale-crops": "min_scale_crops",
                     "--max-scale-crops": "max_scale_crops", "--fkd-seed": "fkd_seed", "--num-classes": "num_classes"}


def check_recorded_settings(args: argparse.Namespace, manifest: dict, where: str) -> None:
    """A flag given for a setting the store records must agree with it (None: not recorded)."""
    for flag, attr in RECORDED_SETTINGS.items():
        given = getattr(args, attr)
        if given is not None and manifest[attr] is not None and given != manifest[attr]:
            raise UserError(f"{flag} {given} does not match {where}, which was made with "
                            f"{manifest[attr]}; omit {flag} to use the store's")


def settle_with_store(args: argparse.Namespace, manifest: dict) -> None:
    """Take unset flags from the store; refuse flags that contradict it."""
    where = f"the store --fkd-path {args.fkd_path}"
    if args.batch_size is not None and args.batch_size != manifest["batch_size"]:
        raise UserError(f"-b/--batch-size {args.batch_size} does not match {where}, which holds "
                        f"batches of {manifest['batch_size']}; omit -b or relabel with -b {args.batch_size}")
    if args.epochs is not None and args.epochs > manifest["epochs"]:
        raise UserError(f"--epochs {args.epochs} is more than the {manifest['epochs']} epochs {where} "
                        f"holds; train at most {manifest['epochs']} epochs or relabel with --epochs {args.epochs}")
    check_recorded_settings(args, manifest, where)
    if args.mix_type is not None and replay.normalize_mix_type(args.mix_type) != manifest["mix_type"]:
        raise UserError(f"--mix-type {args.mix_type} does not match {where}, which was made with "
                        f"{manifest['mix_type']}; the mix is replayed from the store")
    args.batch_size = manifest["batch_size"]
    args.epochs = args.epochs or manifest["epochs"]
    for attr in ("input_size", "min_scale_crops", "max_scale_crops", "fkd_seed", "num_classes", "mix_type"):
        setattr(args, attr, manifest[attr])


def settle_with_fkd(args: argparse.Namespace, manifest: dict) -> None:
    """Per-image FKD store: take unset flags from its manifest; refuse contradicting ones."""
    where = f"the FKD store --fkd-path {args.fkd_path}"
    if args.soft_label_type:
        wanted = per_image.LABEL_ALIASES.get(args.soft_label_type, args.soft_label_type)
        if wanted != manifest["label_type"]:
            raise UserError(f"--soft_label_type {args.soft_label_type}: {where} holds {manifest['label_type']} "
                            f"labels (choose the store made with that type, or leave the flag out)")
    if args.epochs is None:
        raise UserError(f"--epochs is required with --fkd-layout per-image (every epoch uses --num-crops of "
                        f"the {manifest['num_crops']} crops {where} holds per image)")
    args.num_crops = args.num_crops or FKD_CROPS_PER_IMAGE
    if args.num_crops > manifest["num_crops"]:
        raise UserError(f"--num-crops {args.num_crops} is more than the {manifest['num_crops']} crops per image "
                        f"{where} holds")
    check_recorded_settings(args, manifest, where)
    for attr in RECORDED_SETTINGS.values():
        setattr(args, attr, manifest[attr])
    if args.mix_type is not None and replay.normalize_mix_type(args.mix_type) != "none":
        raise UserError(f"--mix-type {args.mix_type}: {where} holds labels of unmixed crops; omit --mix-type")
    args.mix_type = "none"
    args.batch_size = args.batch_size or math.ceil(1024 / args.num_crops)


def settle_hard_labels(args: argparse.Namespace, num_folders: int) -> None:
    args.batch_size = args.batch_size or 1024
    args.epochs = args.epochs or 300
    args.input_size = args.input_size or 224
    args.min_scale_crops = 0.08 if args.min_scale_crops is None else args.min_scale_crops
    args.max_scale_crops = 1.0 if args.max_scale_crops is None else args.max_scale_crops
    args.mix_type = replay.normalize_mix_type(args.mix_type)
    args.num_classes = args.num_classes or num_folders


def check_args(args: argparse.Namespace) -> None:
    if not args.train_dir:
        raise UserError("--train-dir DIR is required")
    for flag, value in (("-b/--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--input-size", args.input_size), ("--eval-interval", args.eval_interval),
                        ("--save-interval", args.save_interval), ("--num-classes", args.num_classes),
                        ("--gradient-accumulation-steps", args.gradient_accumulation_steps),
                        ("--keep-topk", args.keep_topk), ("--num-crops", args.num_crops)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in (("-j/--workers", args.workers), ("--cache-images", args.cache_images),
                        ("--warmup-epochs", args.warmup_epochs), ("--start-epoch", args.start_epoch)):
        if value is not None and value < 0:
            raise UserError(f"{flag} must be >= 0, got {value}")
    if args.temperature is not None and args.temperature <= 0:
        raise UserError(f"-T/--temperature must be positive, got {args.temperature}")
    if not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.softlabel_path:
        if args.fkd_path and os.path.abspath(args.fkd_path) != os.path.abspath(args.softlabel_path):
            raise UserError(f"--softlabel_path {args.softlabel_path} and --fkd-path {args.fkd_path} name two "
                            f"stores; give one")
        if args.fkd_layout == "batch":
            raise UserError("--softlabel_path is FKD's per-image store; with --fkd-layout batch use --fkd-path")
        args.fkd_path, args.fkd_layout = args.softlabel_path, "per-image"
    args.fkd_layout = args.fkd_layout or "batch"
    if args.fkd_path and args.teacher:
        raise UserError("--teacher runs a teacher online; --fkd-path reads stored labels: choose one")
    if args.soft_label_type and args.fkd_layout != "per-image":
        raise UserError("--soft_label_type applies to FKD per-image stores (--softlabel_path or "
                        "--fkd-layout per-image)")
    if args.fkd_layout == "per-image" and not args.fkd_path:
        raise UserError("--fkd-layout per-image needs --fkd-path (an FKD store)")
    if args.num_crops is not None and args.fkd_layout != "per-image":
        raise UserError("--num-crops applies to --fkd-layout per-image (a batch store fixes one crop per image "
                        "and step)")
    if args.kd_t2 and args.loss_type != "kl":
        raise UserError(f"--kd-t2 applies to --loss-type kl (kd, wsld and dist already scale by T^2), "
                        f"not {args.loss_type}")
    if args.keep_topk and args.loss_type not in PROBABILITY_LOSSES:
        raise UserError(f"--keep-topk applies to losses on probabilities ({', '.join(PROBABILITY_LOSSES)}), "
                        f"not --loss-type {args.loss_type}")
    if args.epochs is not None and args.start_epoch >= args.epochs:
        raise UserError(f"--start-epoch {args.start_epoch} leaves nothing to train in --epochs {args.epochs}")
    if args.epochs is not None and args.warmup_epochs >= args.epochs:
        raise UserError(f"--warmup-epochs {args.warmup_epochs} must be fewer than --epochs {args.epochs}")


# ----------------------------------------------------------------------------- batches

def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch's randomness restarts from (seed, epoch): a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew."""
    return int(replay.rng_for(seed, 3, epoch).integers(2 ** 62))


def store_epochs(args, index: FolderIndex, manifest: dict, info, pin: bool) -> Iterator[tuple[int, Iterator[dict]]]:
    """(epoch, batches) read from the store through one loader for the whole run, so workers
    start once rather than once per epoch. Each rank gets its slice of every stored batch."""
    jobs = [(e, b) for e in range(args.start_epoch, args.epochs) for b in range(manifest["batches_per_epoch"])]
    dataset = StoreBatches(args.fkd_path, index, manifest, jobs, cache_bytes(args.cache_images, args.workers),
                           info.rank, info.world_size)
    batches = iter(batch_loader(dataset, args.workers, pin, background=pin, yield_cpu=not pin))
    per_epoch = manifest["batches_per_epoch"]
    for epoch in range(args.start_epoch, args.epochs):
        yield epoch, (next(batches) for _ in range(per_epoch))


def per_image_epochs(args, index: FolderIndex, manifest: dict, info, pin: bool) -> Iterator[tuple[int, Iterator[dict]]]:
    """(epoch, steps) from an FKD per-image store, one loader for the whole run; every step
    draws from (--seed, epoch) which images and which of their stored crops it takes
    (softlabel/stores/per_image.py: PerImageSteps), and each rank gets its slice of the step's crops."""
    per_epoch = per_image.steps_per_epoch(len(index), args.batch_size)
    jobs = [(e, s) for e in range(args.start_epoch, args.epochs) for s in range(per_epoch)]
    targets = torch.tensor(class_index_of(manifest, index.classes))[torch.tensor(index.targets)]
    dataset = per_image.PerImageSteps(args.fkd_path, index, manifest, jobs, args.seed, args.batch_size, args.num_crops,
                                targets, cache_bytes(args.cache_images, args.workers), info.rank, info.world_size)
    steps = iter(batch_loader(dataset, args.workers, pin, background=pin, yield_cpu=not pin))
    for epoch in range(args.start_epoch, args.epochs):
        yield epoch, (next(steps) for _ in range(per_epoch))


def hard_label_epochs(args, index: FolderIndex, info, pin: bool) -> Iterator[tuple[int, Iterator[dict]]]:
    """Online RandomResizedCrop + flip as uint8 pixels (normalized later, per model); each
    rank draws its share of every epoch (DistributedSampler), mixes within its own batch."""
    transform = T.Compose([
        T.RandomResizedCrop(args.input_size, scale=(args.min_scale_crops, args.max_scale_crops),
                            interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(), T.PILToTensor()])
    dataset = IndexedImageFolder(index, transform)
    local_batch = max(1, args.batch_size // info.world_size)
    for epoch in range(args.start_epoch, args.epochs):
        seed = epoch_seed(args.seed, epoch)
        if info.distributed:
            sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=args.workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(seed))
        yield epoch, _hard_label_batches(loader, epoch, args, info)


def _hard_label_batches(loader: DataLoader, epoch: int, args, info) -> Iterator[dict]:
    for step, (pixels, target) in enumerate(loader):
        rng = replay.rng_for(args.seed, 2, epoch, step, info.rank)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, args.mix_type, len(target), args.input_size,
                                                         args.mixup, args.cutmix)
        yield {"pixels": pixels, "partners": None if mix_index is None else pixels[mix_index],
               "mix_lam": mix_lam, "mix_bbox": mix_bbox, "target": target,
               "partner_target": None if mix_index is None else target[mix_index],
               "batch_size": len(target) * info.world_size}


# ----------------------------------------------------------------------------- model, optimizer

def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers, none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(epoch: int, epochs: int, warmup: int, cos: bool) -> float:
    """Per-epoch learning-rate factor: linear warm-up, then cosine or linear decay to 0 (as
    upstream: 0.5 (1 + cos(pi e / E)) or 1 - e / E when there is no warm-up)."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if cos else 1.0 - progress


def build_optimizer(model: nn.Module, args) -> tuple[torch.optim.Optimizer, LambdaLR]:
    if args.sgd:
        optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=args.learning_rate,
                                    momentum=args.momentum)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, args.adamw_weight_decay), lr=args.adamw_lr)
    epochs, warmup, cos = args.epochs, args.warmup_epochs, args.cos
    return optimizer, LambdaLR(optimizer, lambda e: lr_factor(e, epochs, warmup, cos))  # stepped per epoch


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)       # DistributedDataParallel
    return getattr(model, "_orig_mod", model)      # torch.compile


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool,
             amp: Optional[torch.dtype]) -> dict[str, float]:
    model.eval()
    logits, targets = [], []
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits.append(model(images).float().cpu())
        targets.append(target)
    model.train()
    return classification_metrics(torch.cat(logits), torch.cat(targets))


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def save_checkpoint(path: str, model, optimizer, scheduler, scaler, epoch: int, args, mean, std,
                    class_names: list[str]) -> None:
    files.atomic_torch_save({
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch, "args": provenance.args_dict(args, SECRETS), "rng": rng_states(),
        # What a later reader needs to use this model as a teacher without guessing.
        "arch": args.model, "num_classes": args.num_classes, "mean": list(mean), "std": list(std),
        "input_size": args.input_size, "class_names": class_names,
    }, path)


def resume_path(args) -> Optional[str]:
    if args.resume is None:
        return None
    if args.resume == "auto":
        path = os.path.join(args.output_dir, "checkpoint.pth")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(args.resume):
        raise UserError(f"--resume {args.resume}: no such file")
    return args.resume


def check_resumable(ckpt: dict, args, path: str) -> None:
    saved = ckpt.get("args", {})
    for key in RESUME_MUST_MATCH:
        if key in saved and saved[key] != provenance.args_dict(args).get(key):
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume {path}: the checkpoint was trained with {flag} {saved[key]}, this run "
                            f"has {getattr(args, key)}; it could not continue exactly")
    if ckpt.get("epoch", 0) >= args.epochs:
        raise UserError(f"--resume {path}: the checkpoint already finished epoch {ckpt['epoch']} of --epochs "
                        f"{args.epochs}")


# ----------------------------------------------------------------------------- main

def main() -> None:
    args = get_parser().parse_args()
    note_replaced_flags(args, TRAINER_REPLACED)
    if args.wandb_api_key:  # this process only; never logged or saved (SECRETS)
        os.environ["WANDB_API_KEY"] = args.wandb_api_key
        sys.argv = [a if a != args.wandb_api_key else "***" for a in sys.argv]
    check_args(args)
    info = distributed.setup(args.device)
    args.workers = loader_workers(args.workers, info.device.type == "cuda")
    train_index = scan_image_folder(args.train_dir, "--train-dir")
    if args.skip_bad_images:  # the same images relabel left out, so the same fingerprint
        train_index, skipped = drop_unreadable(train_index)
        if skipped and info.is_main:
            print(f"train: --skip-bad-images: left out {len(skipped)} unreadable images: "
                  + ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""), file=sys.stderr, flush=True)

    manifest: Optional[dict] = None
    by_image = args.fkd_layout == "per-image"
    if by_image:
        manifest = per_image.read_manifest(args.fkd_path)
        settle_with_fkd(args, manifest)
        if train_index.fingerprint() != manifest["dataset_fingerprint"]:
            raise UserError(f"--train-dir {args.train_dir}: not the images the FKD store --fkd-path "
                            f"{args.fkd_path} was made from (file names or sizes differ)")
        missing = per_image.missing_files(args.fkd_path, train_index)
        if missing:
            raise UserError(f"--fkd-path {args.fkd_path}: {len(missing)} label files missing (first: "
                            f"{missing[0]}); rerun the generate_soft_label_fkd.py command to finish the store")
        mean, std = manifest["mean"], manifest["std"]
        used = (args.epochs - args.start_epoch) * args.num_crops
        if used > manifest["num_crops"] and info.is_main:
            print(f"note: {args.epochs - args.start_epoch} epochs x --num-crops {args.num_crops} use {used} crops "
                  f"per image; the store holds {manifest['num_crops']}, so crops repeat", flush=True)
    elif args.fkd_path:
        if per_image.is_store(args.fkd_path):
            raise UserError(f"--fkd-path {args.fkd_path} holds FKD per-image labels; pass --fkd-layout per-image "
                            f"--epochs N")
        if store.is_legacy(args.fkd_path):  # an upstream store: the flags say what it does not record
            manifest = store.legacy_manifest(args.fkd_path, train_index.classes, len(train_index), args.fkd_seed,
                                             args.input_size)
        else:
            manifest = store.read_manifest(args.fkd_path)
        settle_with_store(args, manifest)
        if manifest.get("skipped_images") and not args.skip_bad_images:
            raise UserError(f"--fkd-path {args.fkd_path} was made with --skip-bad-images (it left out "
                            f"{len(manifest['skipped_images'])} unreadable images, first "
                            f"{manifest['skipped_images'][0]}); pass --skip-bad-images here too")
        if manifest["dataset_fingerprint"] and train_index.fingerprint() != manifest["dataset_fingerprint"]:
            raise UserError(f"--train-dir {args.train_dir}: not the images the store --fkd-path "
                            f"{args.fkd_path} was made from (file names or sizes differ; it was made "
                            f"from {manifest['args'].get('data')})")
        missing = store.missing_batches(args.fkd_path, args.epochs, manifest["batches_per_epoch"])
        if missing:
            raise UserError(f"--fkd-path {args.fkd_path}: {len(missing)} batch files missing for "
                            f"{args.epochs} epochs (first: {missing[0]}); rerun the relabel command "
                            f"to finish the store")
        mean, std = manifest["mean"], manifest["std"]
    else:
        settle_hard_labels(args, len(train_index.classes))
        if len(train_index.classes) > args.num_classes:
            raise UserError(f"--train-dir {args.train_dir} has {len(train_index.classes)} classes, more "
                            f"than the model's {args.num_classes} outputs")
    args.temperature = args.temperature or DEFAULT_TEMPERATURE.get(args.loss_type, 3.0)
    args.alpha = args.alpha if args.alpha is not None else DEFAULT_ALPHA.get(args.loss_type, 1.0)
    check_args(args)
    if by_image:  # the last step's images x crops
        last = len(train_index) - (per_image.steps_per_epoch(len(train_index), args.batch_size) - 1) * args.batch_size
        smallest = min(args.batch_size, last) * args.num_crops
    else:
        smallest = args.batch_size if manifest is None else min(
            args.batch_size, manifest["num_samples"] - (manifest["batches_per_epoch"] - 1) * args.batch_size)
    if smallest < info.world_size:
        raise UserError(f"{'the store' if manifest else '-b/--batch-size'} holds batches of {smallest} "
                        f"{'crops' if by_image else 'images'}, "
                        f"fewer than the {info.world_size} ranks; every rank needs a share of every batch")

    torch.manual_seed(args.seed)
    student = models.create_model(args.model, args.num_classes).to(info.device)
    if manifest is None:
        mean, std = models.default_normalization(args.model, student)
    teachers = None
    if args.teacher:
        archs = [a.strip() for a in args.teacher.split(",")]
        paths = [p.strip() for p in args.teacher_path.split(",")] if args.teacher_path else [None] * len(archs)
        if len(paths) != len(archs):
            raise UserError(f"--teacher-path gives {len(paths)} files for {len(archs)} teachers")
        teachers = Ensemble(load_teachers(archs, paths, args.num_classes, args.teacher_source), "mean", 0.5,
                            info.device)
    if args.channels_last:
        student = student.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(student, args)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    scaler = torch.amp.GradScaler(info.device.type) if amp == torch.float16 else None

    files.ensure_dir(args.output_dir, "--output-dir")
    if info.is_main:
        files.remove_stale_tmp(args.output_dir)  # a checkpoint write cut short by a kill
    ckpt_path = os.path.join(args.output_dir, "checkpoint.pth")
    resumed = resume_path(args)
    if resumed:
        ckpt = files.safe_torch_load(resumed, "--resume")
        if not isinstance(ckpt, dict) or "model" not in ckpt or "optimizer" not in ckpt:
            raise UserError(f"--resume {resumed}: not a checkpoint of this trainer")
        check_resumable(ckpt, args, resumed)
        student.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        args.start_epoch = ckpt["epoch"]
    elif args.resume and info.is_main:
        print(f"train: --resume {args.resume}: no checkpoint in {args.output_dir}, starting afresh", flush=True)
    elif args.start_epoch:
        for _ in range(args.start_epoch):  # the schedule starts where the run starts
            scheduler.step()

    model: nn.Module = student
    if info.distributed:
        model = DistributedDataParallel(student, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)
    loss_fn = LOSSES[args.loss_type]
    pin = info.device.type == "cuda"

    val_loader = None
    if args.val_dir and info.is_main:
        val_index = scan_image_folder(args.val_dir, "--val-dir")
        if val_index.classes != train_index.classes:
            raise UserError(f"--val-dir {args.val_dir}: class folders differ from --train-dir "
                            f"{args.train_dir} ({len(val_index.classes)} vs {len(train_index.classes)} classes "
                            f"or other names); accuracy would be meaningless")
        val_classes = None if manifest is None else class_index_of(manifest, val_index.classes)
        val_loader = DataLoader(IndexedImageFolder(val_index, eval_transform(args.input_size, args.crop_pct, mean, std),
                                                   val_classes),
                                batch_size=256, shuffle=False, num_workers=min(args.workers, 2), pin_memory=pin)

    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    if info.is_main and not resumed:
        open(metrics_path, "w").close()
    tracker = Tracker(args.wandb_mode if info.is_main else "disabled", args.wandb_project,
                      os.path.basename(os.path.abspath(args.output_dir)), args.output_dir,
                      provenance.args_dict(args, SECRETS))

    batch_desc = f"{args.batch_size}"
    if by_image:
        epochs = per_image_epochs(args, train_index, manifest, info, pin)
        images_per_epoch = len(train_index) * args.num_crops  # crops: every count below is of crops
        labels = f"soft ({args.loss_type}, FKD {manifest['label_type']})"
        batch_desc = f"{args.batch_size} images x {args.num_crops} crops"
    elif manifest is not None:
        epochs = store_epochs(args, train_index, manifest, info, pin)
        images_per_epoch = manifest["num_samples"]
        labels = f"soft ({args.loss_type})"
    else:
        epochs = hard_label_epochs(args, train_index, info, pin)
        images_per_epoch = len(train_index)
        labels = (f"online KD from {args.teacher} ({args.loss_type})" if teachers else
                  "hard" + (f" (ls {args.label_smoothing})" if args.label_smoothing else ""))
    if info.is_main:
        print(f"train: {args.model} on {len(train_index)} images, {labels} labels, epochs {args.start_epoch}.."
              f"{args.epochs}, batch {batch_desc}" + (f" on {info.world_size} ranks" if info.distributed else "")
              + f", input {args.input_size}px, device {info.device}", flush=True)

    def train_step(batch: dict) -> torch.Tensor:
        """One optimizer step on this rank's slice; the loss is a mean over the *global* batch,
        so ranks and micro-batches recombine exactly to the one-process, one-step result."""
        pixels = batch["pixels"].to(info.device, non_blocking=True)
        partners = None if batch["partners"] is None else batch["partners"].to(info.device, non_blocking=True)
        target = batch["target"].to(info.device, non_blocking=True)
        inputs = replay.slice_inputs(pixels, partners, mean, std, batch["mix_lam"], batch["mix_bbox"])
        if teachers is not None:
            soft, _ = teachers(pixels, partners, batch["mix_lam"], batch["mix_bbox"])
        else:
            soft = batch["soft_label"].to(info.device, non_blocking=True) if "soft_label" in batch else None
        if soft is not None and args.keep_topk:
            soft = keep_topk(soft.float(), args.keep_topk)
        if args.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=info.device)
        share = info.world_size / batch["batch_size"]    # each sample's weight in the global mean
        steps = args.gradient_accumulation_steps
        parts = [slice(*slice_bounds(len(target), k, steps)) for k in range(steps)]  # views, no copies
        parts = [p for p in parts if p.stop > p.start]
        for n, part in enumerate(parts):
            sync = contextlib.nullcontext() if n + 1 == len(parts) or not info.distributed else model.no_sync()
            with sync, torch.autocast(info.device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(inputs[part])
                if soft is not None:
                    loss = loss_fn(logits.float(), soft[part], target[part], temperature=args.temperature,
                                   ce_weight=args.ce_weight, alpha=args.alpha)
                    if args.kd_t2:
                        loss = loss * args.temperature ** 2
                else:
                    partner = batch["partner_target"]
                    loss = mixed_cross_entropy(logits.float(), target[part],
                                               None if partner is None else partner.to(info.device)[part],
                                               batch["mix_lam"], args.label_smoothing)
                loss = loss * ((part.stop - part.start) * share)
                (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return total / info.world_size  # this rank's share of the global mean loss

    bar = tracking.progress(images_per_epoch * (args.epochs - args.start_epoch), "train",
                           disable=args.no_progress or not info.is_main)
    student.train()
    step, start, result = 0, time.time(), {}
    first_step_done: Optional[float] = None
    last_step_done = start
    trained_images = 0
    for epoch, batches in epochs:
        torch.manual_seed(epoch_seed(args.seed, epoch))  # dropout & co. restart per epoch too
        loss_sum = torch.zeros((), device=info.device)
        seen = 0
        for batch in batches:
            loss_sum += train_step(batch) * batch["batch_size"]
            seen += batch["batch_size"]
            step += 1
            last_step_done = time.time()
            if first_step_done is None:
                first_step_done = last_step_done
            else:
                trained_images += batch["batch_size"]
            bar.update(batch["batch_size"])
        scheduler.step()
        if info.distributed:
            dist.all_reduce(loss_sum)
        train_loss = float(loss_sum) / max(seen, 1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.4f}", refresh=False)
        last = epoch + 1 == args.epochs
        if info.is_main and ((epoch + 1) % args.eval_interval == 0 or last):
            row = {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
                   "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - start, 2)}
            if val_loader is not None:
                row.update(evaluate(student, val_loader, info.device, args.channels_last, amp))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            tracker.log(row, step)
            bar.write(f"epoch {epoch + 1}: train loss {train_loss:.4f}"
                      + (" | val top-1 {top1:.2f}% top-5 {top5:.2f}% nll {nll:.3f} ece {ece:.2f}%".format(**row)
                         if "top1" in row else ""))
            result = row
        if info.is_main and ((epoch + 1) % args.save_interval == 0 or last):
            save_checkpoint(ckpt_path, model, optimizer, scheduler, scaler, epoch + 1, args, mean, std,
                            train_index.classes)
    bar.close()
    end = time.time()
    if info.is_main:
        # Steady state: from the first step's end to the last step's end (start-up, evaluation
        # and checkpoints of the last epoch excluded; those of earlier epochs are included).
        window = (last_step_done - first_step_done) if first_step_done else 0.0
        steady = trained_images / window if window > 0 else 0.0
        result.update({"model": args.model, "labels": labels, "fkd_path": args.fkd_path,
                       "train_dir": args.train_dir, "epochs": args.epochs, "steps": step,
                       "train_time_s": round(end - start, 2), "steady_images_per_s": round(steady, 2)})
        files.atomic_write_json(os.path.join(args.output_dir, "results.json"), result)
        print(f"train: done in {end - start:.1f}s (start-up to the first step {(first_step_done or end) - start:.2f}s, "
              f"then {steady:.1f} img/s)" + (f"; val top-1 {result['top1']:.2f}%" if "top1" in result else ""),
              flush=True)
    tracker.finish()
    distributed.cleanup(info)


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, partner: Optional[torch.Tensor],
                        lam: Optional[float], label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with mixed targets: lambda x own class + (1 - lambda) x partner's."""
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if partner is None:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)


if __name__ == "__main__":
    run_main(main)
