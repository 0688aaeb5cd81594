"""Relabel a (distilled) image folder with a teacher: for every epoch and batch, sample the
crops, flips and mix, run the teacher on exactly those pixels, and store the parameters with
the teacher's logits (store format v1, see softlabel/store.py).

    python relabel/generate_soft_label.py --data DIR --teacher-path T.pth -a democnn \
        --fkd-path STORE --epochs 300 -b 1024 --input-size 224 --mix-type cutmix --use-fp16

Every random choice derives from (--fkd-seed, epoch, batch), so the store is the same for any
-j and any number of processes (torchrun: rank r writes the batches b with b % world == r).
Rerunning the same command skips finished batch files and writes the rest.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from softlabel import distributed, io, replay, runinfo, store  # noqa: E402
from softlabel.data import FolderIndex, scan_image_folder  # noqa: E402
from softlabel.loader import RelabelBatches, batch_loader  # noqa: E402
from softlabel.errors import UserError, run_main  # noqa: E402
from softlabel.teachers import load_teacher  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Soft-label generation (relabel) with crop/flip/mix replay")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="image folder to relabel (class sub-folders)")
    g.add_argument("-j", "--workers", default=4, type=int, metavar="N",
                   help="data loading worker processes (default: 4; 0 loads in the main process)")
    g.add_argument("-b", "--batch-size", default=1024, type=int, metavar="N",
                   help="images per stored batch = per student step (default: 1024)")
    g.add_argument("--epochs", default=300, type=int, help="epochs of labels to store (default: 300)")
    g.add_argument("--input-size", default=224, type=int, metavar="S", help="crop size (default: 224)")
    g.add_argument("--min-scale-crops", type=float, default=0.08, help="RandomResizedCrop min scale")
    g.add_argument("--max-scale-crops", type=float, default=1.0, help="RandomResizedCrop max scale")
    g.add_argument("--mix-type", default="none", type=str, choices=["mixup", "cutmix", "none", "None"],
                   help="batch mix applied after cropping (default: none)")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (default: 0.8)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (default: 1.0)")

    g = p.add_argument_group("teacher")
    g.add_argument("-a", "--arch", metavar="ARCH", default=None,
                   help="teacher architecture: ours, torchvision or timm name (default: what "
                        "--teacher-path says, else resnet18)")
    g.add_argument("--teacher-path", metavar="FILE", default=None,
                   help="teacher weights: a state_dict or a checkpoint dict with 'model' "
                        "(default: torchvision's published weights, from the local cache)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="teacher outputs (default: what the checkpoint says, else the number "
                        "of class folders)")
    g.add_argument("--temperature", type=float, default=1.0,
                   help="store teacher logits / T (default: 1, raw logits)")

    g = p.add_argument_group("store")
    g.add_argument("--fkd-path", default="./FKD_soft_label", type=str, help="store directory")
    g.add_argument("--use-fp16", dest="use_fp16", action="store_true", help="store logits as float16")
    g.add_argument("--mode", default="fkd_save", type=str, help="fkd_save (the only mode of this script)")
    g.add_argument("--fkd-seed", default=42, type=int, metavar="N",
                   help="seed of every random choice in the store (default: 42)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.mode != "fkd_save":
        raise UserError(f"--mode {args.mode}: this script only writes stores (fkd_save); "
                        f"train from a store with validate/train_FKD_parallel.py --fkd-path")
    if args.data is None:
        raise UserError("--data DIR is required")
    for flag, value in (("-b/--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--input-size", args.input_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.workers < 0:
        raise UserError(f"-j/--workers must be >= 0, got {args.workers}")
    if not 0 < args.min_scale_crops <= args.max_scale_crops <= 1:
        raise UserError(f"--min-scale-crops {args.min_scale_crops} / --max-scale-crops "
                        f"{args.max_scale_crops}: need 0 < min <= max <= 1")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    args.mix_type = replay.normalize_mix_type(args.mix_type)


def build_manifest(args: argparse.Namespace, index: FolderIndex, teacher, batches: int) -> dict:
    mixing = args.mix_type != "none"
    return {
        "format_version": store.FORMAT_VERSION,
        "created_by": "relabel/generate_soft_label.py",
        "args": runinfo.args_dict(args),
        "fkd_seed": args.fkd_seed,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "batches_per_epoch": batches,
        "num_samples": len(index),
        "num_classes": teacher.num_classes,
        "class_names": index.classes,
        "input_size": args.input_size,
        "min_scale_crops": args.min_scale_crops,
        "max_scale_crops": args.max_scale_crops,
        "mix_type": args.mix_type,
        "mixup": args.mixup if args.mix_type == "mixup" else None,
        "cutmix": args.cutmix if args.mix_type == "cutmix" else None,
        "use_fp16": bool(args.use_fp16),
        "label_dtype": "float16" if args.use_fp16 else "float32",
        "temperature": args.temperature,
        "teachers": [teacher.describe()],
        "mean": teacher.mean,
        "std": teacher.std,
        "dataset_fingerprint": index.fingerprint(),
        "versions": runinfo.library_versions(),
    }


def main() -> None:
    args = get_parser().parse_args()
    check_args(args)
    info = distributed.setup(args.device)
    index = scan_image_folder(args.data, "--data")
    num_classes = args.num_classes
    teacher = load_teacher(args.arch, args.teacher_path, num_classes)
    if teacher.num_classes < len(index.classes):
        raise UserError(f"teacher '{teacher.arch}' has {teacher.num_classes} outputs but --data "
                        f"{args.data} has {len(index.classes)} class folders")
    model = teacher.model.to(info.device)
    batches = replay.batches_per_epoch(len(index), args.batch_size)

    # Every rank checks the store (so a refusal stops them all), then rank 0 writes.
    manifest = store.check_compatible(args.fkd_path, build_manifest(args, index, teacher, batches))
    distributed.barrier(info)
    if info.is_main:
        store.write_manifest(args.fkd_path, manifest)
        for e in range(args.epochs):
            os.makedirs(store.epoch_dir(args.fkd_path, e), exist_ok=True)
            io.remove_stale_tmp(store.epoch_dir(args.fkd_path, e))
    distributed.barrier(info)

    todo = [(e, b) for e in range(args.epochs) for b in range(batches)
            if b % info.world_size == info.rank
            and not os.path.exists(store.batch_path(args.fkd_path, e, b))]
    skipped = sum(1 for b in range(batches) if b % info.world_size == info.rank) * args.epochs - len(todo)
    images_todo = sum(min(args.batch_size, len(index) - b * args.batch_size) for _, b in todo)
    jobs = RelabelBatches(index, todo, args.fkd_seed, args.batch_size, args.input_size,
                          (args.min_scale_crops, args.max_scale_crops), args.mix_type, args.mixup, args.cutmix)
    loader = batch_loader(jobs, args.workers, pin_memory=info.device.type == "cuda")
    if info.is_main:
        print(f"relabel: {len(index)} images, {len(index.classes)} classes, teacher {teacher.arch} "
              f"({teacher.source}), {args.epochs} epochs x {batches} batches of {args.batch_size}; "
              f"{len(todo)} batch files to write" + (f", {skipped} already done" if skipped else "")
              + (f" (rank 0 of {info.world_size})" if info.distributed else ""), flush=True)

    mean, std = teacher.mean, teacher.std
    correct = seen = 0
    start = time.time()
    bar = runinfo.progress(images_todo, "relabel", disable=not info.is_main)
    with torch.inference_mode():
        for item in loader:
            pixels = item["pixels"].to(info.device, non_blocking=True)
            inputs = replay.model_inputs(pixels, mean, std, item["mix_index"], item["mix_lam"], item["mix_bbox"])
            logits = model(inputs).float()
            correct += int((logits.argmax(1).cpu() == item["target"]).sum())
            seen += len(item["target"])
            logits = (logits / args.temperature).cpu()
            record = store.BatchRecord(item["coords"], item["flip"], item["mix_index"], item["mix_lam"],
                                       item["mix_bbox"], logits.half() if args.use_fp16 else logits,
                                       item["index"])
            store.write_batch(args.fkd_path, item["epoch"], item["batch"], record)
            bar.update(len(item["index"]))
            bar.set_postfix(epoch=item["epoch"], top1=f"{100.0 * correct / seen:.1f}", refresh=False)
    bar.close()
    correct, seen, written = distributed.sum_across(info, correct, seen, len(todo))
    if info.is_main:
        acc = f"{100.0 * correct / seen:.2f}%" if seen else "n/a"
        print(f"relabel: wrote {int(written)} batch files to {args.fkd_path} in {time.time() - start:.1f}s; "
              f"teacher top-1 on the crops it labelled: {acc} (a mixed crop counts as its first image's class)",
              flush=True)
    distributed.cleanup(info)


if __name__ == "__main__":
    run_main(main)
