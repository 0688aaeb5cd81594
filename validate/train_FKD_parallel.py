"""Train a student network, from a soft-label store or from hard labels.

Store mode (``--fkd-path``): every step reads one stored batch, re-renders exactly the crops,
flips and mix the teacher labelled (softlabel/replay.py) and fits the stored logits.

    python validate/train_FKD_parallel.py --train-dir DISTILLED --val-dir VAL \
        --fkd-path STORE --model resnet18 --loss-type kl -T 4 --cos --output-dir save/r18

Hard-label mode (no ``--fkd-path``): ordinary training with online RandomResizedCrop, flip,
optional mix and label smoothing; it trains teachers and baselines.

    python validate/train_FKD_parallel.py --train-dir TRAIN --val-dir VAL --model democnn \
        --input-size 32 --min-scale-crops 0.5 -b 64 --epochs 30 --output-dir save/teacher

Writes ``metrics.jsonl`` (one line per evaluation), ``checkpoint.pth`` and ``results.json``
in ``--output-dir``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from softlabel import distributed, io, models, replay, runinfo, store  # noqa: E402
from softlabel.data import (IndexedImageFolder, eval_transform, hard_label_train_transform,  # noqa: E402
                            scan_image_folder)
from softlabel.errors import UserError, run_main  # noqa: E402
from softlabel.loader import StoreBatches, batch_loader, cache_bytes, class_index_of, loader_workers  # noqa: E402
from softlabel.tracking import Tracker  # noqa: E402
from validate.losses import LOSSES  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FKD-style student training from stored soft labels "
                                            "(or from hard labels)")
    g = p.add_argument_group("data")
    g.add_argument("--train-dir", type=str, default=None, help="training images (ImageFolder)")
    g.add_argument("--val-dir", type=str, default=None, help="validation images (ImageFolder)")
    g.add_argument("--fkd-path", type=str, default=None,
                   help="soft-label store made by relabel/ (omit for hard-label training)")
    g.add_argument("-j", "--workers", default=None, type=int,
                   help="data loading worker processes (default: 4 on GPU, 0 on CPU); results do not depend on it")
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

    g = p.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", type=int, default=None,
                   help="default: the store's batch size; hard labels: 1024")
    g.add_argument("--epochs", type=int, default=None,
                   help="default: the epochs the store holds; hard labels: 300")
    g.add_argument("--cos", action="store_true", help="cosine learning-rate decay (default: linear)")
    g.add_argument("--sgd", action="store_true", help="SGD instead of AdamW")
    g.add_argument("-lr", "--learning-rate", type=float, default=1.024, help="SGD learning rate")
    g.add_argument("--momentum", type=float, default=0.875, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=3e-5, help="SGD weight decay")
    g.add_argument("--adamw-lr", type=float, default=0.001, help="AdamW learning rate")
    g.add_argument("--adamw-weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (never on norms and biases)")

    g = p.add_argument_group("loss")
    g.add_argument("--loss-type", type=str, default="kl", choices=sorted(LOSSES),
                   help="loss against the stored logits (default: kl)")
    g.add_argument("-T", "--temperature", type=float, default=3.0, help="distillation temperature")
    g.add_argument("--ce-weight", type=float, default=0.1, help="cross-entropy weight of mse_gt")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="hard labels: label smoothing")

    g = p.add_argument_group("run")
    g.add_argument("--output-dir", type=str, default="./save", help="checkpoint and metrics directory")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation and hard-label augmentation")
    g.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs and at the end")
    g.add_argument("--save-interval", type=int, default=1, help="write checkpoint.pth every N epochs and at the end")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--wandb-mode", default="disabled", choices=["online", "offline", "disabled"],
                   help="wandb logging (default: disabled); online reads the key from WANDB_API_KEY")
    g.add_argument("--wandb-project", default="softlabel", help="wandb project")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# ----------------------------------------------------------------------------- settings

def settle_with_store(args: argparse.Namespace, manifest: dict) -> None:
    """Take unset flags from the store; refuse flags that contradict it."""
    where = f"the store --fkd-path {args.fkd_path}"
    if args.batch_size is not None and args.batch_size != manifest["batch_size"]:
        raise UserError(f"-b/--batch-size {args.batch_size} does not match {where}, which holds "
                        f"batches of {manifest['batch_size']}; omit -b or relabel with -b {args.batch_size}")
    if args.epochs is not None and args.epochs > manifest["epochs"]:
        raise UserError(f"--epochs {args.epochs} is more than the {manifest['epochs']} epochs {where} "
                        f"holds; train at most {manifest['epochs']} epochs or relabel with --epochs {args.epochs}")
    for flag, attr in (("--input-size", "input_size"), ("--min-scale-crops", "min_scale_crops"),
                       ("--max-scale-crops", "max_scale_crops"), ("--fkd-seed", "fkd_seed"),
                       ("--num-classes", "num_classes")):
        given = getattr(args, attr)
        if given is not None and given != manifest[attr]:
            raise UserError(f"{flag} {given} does not match {where}, which was made with "
                            f"{manifest[attr]}; omit {flag} to use the store's")
    if args.mix_type is not None and replay.normalize_mix_type(args.mix_type) != manifest["mix_type"]:
        raise UserError(f"--mix-type {args.mix_type} does not match {where}, which was made with "
                        f"{manifest['mix_type']}; the mix is replayed from the store")
    args.batch_size = manifest["batch_size"]
    args.epochs = args.epochs or manifest["epochs"]
    for attr in ("input_size", "min_scale_crops", "max_scale_crops", "fkd_seed", "num_classes", "mix_type"):
        setattr(args, attr, manifest[attr])


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
                        ("--save-interval", args.save_interval), ("--num-classes", args.num_classes)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.cache_images < 0:
        raise UserError(f"--cache-images must be >= 0 MB, got {args.cache_images}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"-j/--workers must be >= 0, got {args.workers}")
    if args.temperature <= 0:
        raise UserError(f"-T/--temperature must be positive, got {args.temperature}")
    if not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")


# ----------------------------------------------------------------------------- batches

def store_epochs(args: argparse.Namespace, train_index, manifest: dict, pin: bool
                 ) -> Iterator[tuple[int, Iterable[dict[str, Any]]]]:
    """(epoch, batches) pairs read from the store through one loader for the whole run, so
    workers start once rather than once per epoch."""
    jobs = [(e, b) for e in range(args.epochs) for b in range(manifest["batches_per_epoch"])]
    dataset = StoreBatches(args.fkd_path, train_index, manifest, jobs, cache_bytes(args.cache_images, args.workers))
    loader = batch_loader(dataset, args.workers, pin,
                          background=pin, yield_cpu=not pin)
    return itertools.groupby(loader, key=lambda item: item["epoch"])


def hard_label_epochs(args: argparse.Namespace, train_index, mean, std, pin: bool
                      ) -> Iterator[tuple[int, Iterable[dict[str, Any]]]]:
    dataset = IndexedImageFolder(train_index, hard_label_train_transform(
        args.input_size, (args.min_scale_crops, args.max_scale_crops), mean, std))
    generator = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=generator,
                        num_workers=args.workers, pin_memory=pin, persistent_workers=args.workers > 0)
    for epoch in range(args.epochs):
        yield epoch, _hard_label_batches(loader, epoch, args)


def _hard_label_batches(loader: DataLoader, epoch: int, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    for step, (images, target) in enumerate(loader):
        mix_index, mix_lam, mix_bbox = replay.sample_mix(
            replay.rng_for(args.seed, 2, epoch, step), args.mix_type, len(target), args.input_size,
            args.mixup, args.cutmix)
        yield {"inputs": images, "target": target, "mix_index": mix_index, "mix_lam": mix_lam,
               "mix_bbox": mix_bbox}


# ----------------------------------------------------------------------------- model, optimizer

def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers, none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> tuple[torch.optim.Optimizer, LambdaLR]:
    if args.sgd:
        optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=args.learning_rate,
                                    momentum=args.momentum)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, args.adamw_weight_decay), lr=args.adamw_lr)
    epochs = args.epochs
    if args.cos:
        def factor(epoch: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs)) if epoch <= epochs else 0.0
    else:
        def factor(epoch: int) -> float:
            return 1.0 - epoch / epochs if epoch <= epochs else 0.0
    return optimizer, LambdaLR(optimizer, factor)  # stepped once per epoch, as upstream


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mix_index, mix_lam,
                        label_smoothing: float) -> torch.Tensor:
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if mix_index is None:
        return loss
    partner = target[mix_index.to(target.device)]
    return mix_lam * loss + (1.0 - mix_lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int) -> dict[str, float]:
    model.eval()
    n, loss_sum, top1, top5 = 0, 0.0, 0, 0
    k = min(5, num_classes)
    for images, target in loader:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        top = logits.topk(k, dim=1).indices
        top1 += int((top[:, 0] == target).sum())
        top5 += int((top == target[:, None]).any(dim=1).sum())
        n += len(target)
    model.train()
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "val_loss": loss_sum / n}


def save_checkpoint(path: str, model: nn.Module, optimizer, scheduler, epoch: int,
                    args: argparse.Namespace, mean, std, class_names: list[str]) -> None:
    io.atomic_torch_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "epoch": epoch, "args": runinfo.args_dict(args),
        # What a later reader needs to use this model as a teacher without guessing.
        "arch": args.model, "num_classes": args.num_classes, "mean": list(mean), "std": list(std),
        "input_size": args.input_size, "class_names": class_names,
    }, path)


# ----------------------------------------------------------------------------- main

def main() -> None:
    args = get_parser().parse_args()
    check_args(args)
    info = distributed.setup(args.device)
    args.workers = loader_workers(args.workers, info.device.type == "cuda")
    if info.distributed:
        raise UserError("this trainer runs as one process for now; launch it without torchrun")
    torch.manual_seed(args.seed)
    train_index = scan_image_folder(args.train_dir, "--train-dir")

    manifest: Optional[dict] = None
    if args.fkd_path:
        manifest = store.read_manifest(args.fkd_path)
        settle_with_store(args, manifest)
        if train_index.fingerprint() != manifest["dataset_fingerprint"]:
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
    check_args(args)
    if manifest is None and len(train_index.classes) > args.num_classes:
        raise UserError(f"--train-dir {args.train_dir} has {len(train_index.classes)} classes, more "
                        f"than the model's {args.num_classes} outputs")

    model = models.create_model(args.model, args.num_classes).to(info.device)
    if manifest is None:
        mean, std = models.default_normalization(args.model, model)
    optimizer, scheduler = build_optimizer(model, args)
    loss_fn = LOSSES[args.loss_type]
    pin = info.device.type == "cuda"

    val_loader = None
    if args.val_dir:
        val_index = scan_image_folder(args.val_dir, "--val-dir")
        if val_index.classes != train_index.classes:
            raise UserError(f"--val-dir {args.val_dir}: class folders differ from --train-dir "
                            f"{args.train_dir} ({len(val_index.classes)} vs {len(train_index.classes)} classes "
                            f"or other names); accuracy would be meaningless")
        val_classes = None if manifest is None else class_index_of(manifest, val_index.classes)
        val_loader = DataLoader(IndexedImageFolder(val_index, eval_transform(args.input_size, args.crop_pct, mean, std),
                                                   val_classes),
                                batch_size=256, shuffle=False, num_workers=min(args.workers, 2), pin_memory=pin)

    io.ensure_dir(args.output_dir, "--output-dir")
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    open(metrics_path, "w").close()
    tracker = Tracker(args.wandb_mode, args.wandb_project, os.path.basename(os.path.abspath(args.output_dir)),
                      args.output_dir, runinfo.args_dict(args))

    if args.fkd_path:
        epochs = store_epochs(args, train_index, manifest, pin)
        images_per_epoch = manifest["num_samples"]
        labels = f"soft ({args.loss_type})"
    else:
        epochs = hard_label_epochs(args, train_index, mean, std, pin)
        images_per_epoch = len(train_index)
        labels = "hard" + (f" (ls {args.label_smoothing})" if args.label_smoothing else "")
    print(f"train: {args.model} on {len(train_index)} images, {labels} labels, {args.epochs} epochs, "
          f"batch {args.batch_size}, input {args.input_size}px, device {info.device}", flush=True)

    bar = runinfo.progress(images_per_epoch * args.epochs, "train", disable=args.no_progress)
    model.train()
    step, start, result = 0, time.time(), {}
    for epoch, batches in epochs:
        loss_sum, seen = torch.zeros((), device=info.device), 0
        for batch in batches:
            if "pixels" in batch:  # a stored batch: replay normalization and mix
                inputs = replay.model_inputs(batch["pixels"].to(info.device, non_blocking=True), mean, std,
                                             batch["mix_index"], batch["mix_lam"], batch["mix_bbox"])
            else:
                inputs = replay.apply_mix(batch["inputs"].to(info.device, non_blocking=True),
                                          batch["mix_index"], batch["mix_lam"], batch["mix_bbox"])
            target = batch["target"].to(info.device, non_blocking=True)
            logits = model(inputs)
            if "soft_label" in batch:
                loss = loss_fn(logits, batch["soft_label"].to(info.device, non_blocking=True), target,
                               temperature=args.temperature, ce_weight=args.ce_weight, alpha=1.0)
            else:
                loss = mixed_cross_entropy(logits, target, batch["mix_index"], batch["mix_lam"],
                                           args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach() * len(target)  # no device sync per step
            seen += len(target)
            bar.update(len(target))
        scheduler.step()
        train_loss = float(loss_sum) / max(seen, 1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{train_loss:.4f}", refresh=False)
        last = epoch + 1 == args.epochs
        if (epoch + 1) % args.eval_interval == 0 or last:
            row = {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
                   "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - start, 2)}
            if val_loader is not None:
                row.update(evaluate(model, val_loader, info.device, args.num_classes))
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            tracker.log(row, step)
            bar.write("epoch {epoch}: train loss {train_loss:.4f}".format(**row)
                      + (" | val top-1 {top1:.2f}% top-5 {top5:.2f}%".format(**row) if "top1" in row else ""))
            result = row
        if (epoch + 1) % args.save_interval == 0 or last:
            save_checkpoint(os.path.join(args.output_dir, "checkpoint.pth"), model, optimizer, scheduler,
                            epoch + 1, args, mean, std, train_index.classes)
    bar.close()
    if step == 0:
        raise UserError(f"--train-dir {args.train_dir}: nothing to train on")
    result.update({"model": args.model, "labels": labels, "fkd_path": args.fkd_path,
                   "train_dir": args.train_dir, "epochs": args.epochs, "steps": step,
                   "train_time_s": round(time.time() - start, 2)})
    io.atomic_write_json(os.path.join(args.output_dir, "results.json"), result)
    tracker.finish()
    print(f"train: done in {time.time() - start:.1f}s" +
          (f"; val top-1 {result['top1']:.2f}%" if "top1" in result else ""), flush=True)
    distributed.cleanup(info)


if __name__ == "__main__":
    run_main(main)
