"""FKD soft-label generation (the per-image layout of szq0214/FKD, FKD_SLG): for every image,
``--num_crops`` random-resized crops with flips, the teacher's softmax on each, quantized by
``--label_type``, one file per image under ``--save_path`` (format: softlabel/stores/per_image.py).

    python relabel/generate_soft_label_fkd.py DATA -a resnet50 --teacher_source pytorch \
        --input_size 224 --num_crops 500 --num_seg 50 --label_type marginal_smoothing_k5 \
        --save_path FKD_r50_k5
    python relabel/generate_soft_label_fkd.py DATA --teacher-path T.pth --save_path S2 \
        --reference_path FKD_r50_k5          # a second teacher on exactly the same crops
    torchrun --standalone --nproc_per_node 4 relabel/generate_soft_label_fkd.py ...

DATA is an image folder with class sub-folders, or a folder holding ``train/`` (and ``val/``
for ``--evaluate``), as upstream. Every crop derives from (--fkd_seed, image) only, so the files
are the same for any -b, -j, number of processes or interruptions: rerunning the command skips
finished files (resume), and several runs on the same --save_path (or torchrun ranks, which
split the images) share the work without clashing.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from softlabel import classmap, distributed, files, precision, tracking
from softlabel.cli import (LABELLING_REPLACED, NOT_IN_STORE, add_config_flag, add_replaced_flags, freeze,
                           note_replaced_flags, parse_with_config, write_config)
from softlabel.data import FolderIndex, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.labelling import PREFLIGHT_CROPS, Accuracy, HeldWrites, evaluate_teachers, refuse_below_together
from softlabel.loader import batch_loader, loader_workers
from softlabel.precision import AMP_CHOICES
from softlabel.stores import LabelledImages, create_store, per_image
from softlabel.stores.schema import MAX_CROPS, MAX_INPUT_SIZE
from softlabel.streams import DEFAULT_SEED, check_seed
from softlabel.teachers import Ensemble, Teacher, load_teachers, weight_names
from softlabel.threads import running_on

SOURCE_NAMES = {"pytorch": "torchvision", "torchvision": "torchvision", "timm": "timm", "private": "private"}
DEFAULT_SCALE = (0.08, 0.936)  # FKD_SLG's RandomResizedCrop scale


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FKD soft-label generation: per-image files of many crops each")
    add_config_flag(p)
    p.add_argument("data", metavar="DIR", help="image folder (class sub-folders), or a folder with train/ "
                                                "(and val/) as upstream")
    g = p.add_argument_group("crops and labels (FKD flags)")
    g.add_argument("--num_crops", "--num-crops", dest="num_crops", type=int, default=500, metavar="N",
                   help="crops labelled per image (default: 500)")
    g.add_argument("--num_seg", "--num-seg", dest="num_seg", type=int, default=50, metavar="N",
                   help="crops per teacher forward (FKD: the true batch size); must divide --num_crops "
                        "unless it is larger (default: 50)")
    g.add_argument("--label_type", "--label-type", dest="label_type", default="marginal_smoothing_k5", metavar="TYPE",
                   choices=list(per_image.LABEL_TYPES) + sorted(per_image.LABEL_ALIASES),
                   help="quantization of each crop's probabilities: hard (top-1 class), smoothing (top-1 "
                        "class and probability), marginal_smoothing_k5/k10 (top-5/10 classes and "
                        "probabilities), marginal_renorm (top-5, renormalized when read) "
                        "(default: marginal_smoothing_k5)")
    g.add_argument("--use_fp16", "--use-fp16", dest="use_fp16", action="store_true",
                   help="store the probabilities as float16 (default: float32)")
    g.add_argument("--temp", "--temperature", dest="temp", type=float, default=1.0, metavar="T",
                   help="softmax temperature of the stored probabilities (default: 1.0)")
    g.add_argument("--input_size", "--input-size", dest="input_size", type=int, default=224, metavar="S",
                   help="crop size the teacher sees (default: 224)")
    g.add_argument("--min_scale_crops", "--min-scale-crops", dest="min_scale_crops", type=float, default=None, metavar="S",
                   help=f"RandomResizedCrop min scale (default: {DEFAULT_SCALE[0]}, or the reference's)")
    g.add_argument("--max_scale_crops", "--max-scale-crops", dest="max_scale_crops", type=float, default=None, metavar="S",
                   help=f"RandomResizedCrop max scale (default: {DEFAULT_SCALE[1]}, or the reference's)")
    g.add_argument("--fkd_seed", "--fkd-seed", dest="fkd_seed", type=int, default=None, metavar="N",
                   help=f"seed of every crop and flip (default: {DEFAULT_SEED}, or the reference's)")

    g = p.add_argument_group("paths")
    g.add_argument("--save_path", "--save-path", dest="save_path", default="./FKD_soft_label", metavar="DIR",
                   help="output folder, one <class>/<image>.tar per image (default: ./FKD_soft_label)")
    g.add_argument("--reference_path", "--reference-path", dest="reference_path", default=None, metavar="DIR",
                   help="an FKD store of the same images: reuse its crops and flips exactly (teacher "
                        "ensembles; its seed and scales are taken, --num_crops may be fewer)")

    g = p.add_argument_group("teacher")
    g.add_argument("-a", "--arch", metavar="ARCH", default=None,
                   help="teacher architecture (default: what --teacher-path says, else resnet18)")
    g.add_argument("--teacher_path", "--teacher-path", dest="teacher_path", default=None, metavar="FILE",
                   help="teacher weights file (default: published weights from the local cache)")
    g.add_argument("--teacher_source", "--teacher-source", dest="teacher_source", default=None,
                   choices=sorted(SOURCE_NAMES),
                   help="pytorch (= torchvision), timm, or private (--teacher-path) (default: published "
                        "weights from timm when timm knows -a, as FKD_SLG's --teacher_source timm, else "
                        "torchvision; with --teacher-path, torchvision's architecture unless timm's is asked)")
    g.add_argument("--teacher_weights", "--teacher-weights", dest="teacher_weights", default=None, metavar="NAME",
                   help="published weights by name: torchvision's (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT = "
                        "torchvision's current best) or a timm pretrained tag (a1_in1k: the teacher becomes "
                        "ARCH.a1_in1k) (default: what FKD_SLG's pretrained=True loads: IMAGENET1K_V1 for "
                        "torchvision, timm's default tag); a file goes to --teacher-path")
    g.add_argument("--num-classes", type=int, default=None, help="teacher outputs (default: the checkpoint's)")
    g.add_argument("--class-map", metavar="FILE", default=None,
                   help="JSON {class folder: teacher class index} (default: folder order; ImageNet WNIDs "
                        "map to 1000-class teachers)")
    g.add_argument("--min-teacher-acc", type=float, default=None, metavar="PCT",
                   help="stop with an error, before the store is created, when the teacher's top-1 on the "
                        "first crops it labels is below PCT percent (0 to 100; default: only warn below twice "
                        "chance)")
    g.add_argument("-e", "--evaluate", action="store_true",
                   help="only report the teacher's top-1 on the validation images (--val-dir, else DIR/val), "
                        "as upstream; nothing is written")
    g.add_argument("--val-dir", default=None, help="validation folder for --evaluate (default: DIR/val)")
    g.add_argument("--crop-pct", type=float, default=0.875,
                   help="--evaluate: resize to input_size/crop-pct, center-crop (default: 0.875)")

    g = p.add_argument_group("run")
    g.add_argument("-b", "--batch-size", type=int, default=1, metavar="N",
                   help="images per loading job (default: 1); the files do not depend on it, memory is "
                        "about N x num_crops x 3 x S^2 bytes per job in flight")
    g.add_argument("-j", "--workers", type=int, default=None, metavar="N",
                   help="loading worker processes (default: 4 on GPU; on CPU 1 when the teacher runs on fewer "
                        "threads than torch's default, else 0)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--amp", choices=AMP_CHOICES, default="off", help=precision.RELABEL_AMP_HELP)
    add_replaced_flags(p, LABELLING_REPLACED)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Everything that needs no file, before any work."""
    for flag, value in (("--num_crops", args.num_crops), ("--num_seg", args.num_seg),
                        ("--input_size", args.input_size), ("-b/--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.input_size > MAX_INPUT_SIZE or args.num_crops > MAX_CROPS:
        raise UserError(f"--input_size {args.input_size} / --num_crops {args.num_crops}: at most {MAX_INPUT_SIZE} px "
                        f"and {MAX_CROPS} crops")
    if args.num_crops > args.num_seg and args.num_crops % args.num_seg:
        raise UserError(f"--num_crops {args.num_crops} is not divisible by --num_seg {args.num_seg} "
                        f"(crops per teacher forward); pick a divisor, e.g. --num_seg "
                        f"{max(d for d in range(1, args.num_seg + 1) if args.num_crops % d == 0)}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"-j/--workers must be >= 0, got {args.workers}")
    if not (math.isfinite(args.temp) and args.temp > 0):
        raise UserError(f"--temp must be positive and finite, got {args.temp}")
    if args.fkd_seed is not None:
        check_seed(args.fkd_seed, "--fkd_seed")
    lo = DEFAULT_SCALE[0] if args.min_scale_crops is None else args.min_scale_crops
    hi = DEFAULT_SCALE[1] if args.max_scale_crops is None else args.max_scale_crops
    if not 0 < lo <= hi <= 1:
        raise UserError(f"--min_scale_crops {lo} / --max_scale_crops {hi}: need 0 < min <= max <= 1")
    if not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.min_teacher_acc is not None and not 0 <= args.min_teacher_acc <= 100:  # NaN fails too
        raise UserError(f"--min-teacher-acc is a top-1 in percent, in [0, 100], got {args.min_teacher_acc}")
    files.refuse_output_inside(args.save_path, "--save_path", [("DATA", args.data)])
    if args.reference_path and os.path.abspath(args.reference_path) == os.path.abspath(args.save_path):
        raise UserError(f"--reference_path {args.reference_path} is --save_path; use another --save_path")
    per_image.normalize_label_type(args.label_type)  # an unknown --label_type: refused before any work


def data_dirs(args: argparse.Namespace) -> tuple[str, Optional[str]]:
    """(training images, validation images): DIR/train and DIR/val when DIR has them."""
    train = os.path.join(args.data, "train")
    if os.path.isdir(train):
        val = os.path.join(args.data, "val")
        return train, args.val_dir or (val if os.path.isdir(val) else None)
    return args.data, args.val_dir


def settle_crops(args: argparse.Namespace, index: FolderIndex) -> tuple[dict, Optional[tuple[str, dict]]]:
    """Seed and scales: the flags' (or defaults), or those of --reference_path, whose crops are
    reused; a flag contradicting the reference is an error. Returns them and the reference."""
    given = {"fkd_seed": args.fkd_seed, "min_scale_crops": args.min_scale_crops,
             "max_scale_crops": args.max_scale_crops}
    if args.reference_path:
        return per_image.reference_crops(args.reference_path, index, args.num_crops, given)
    return {"fkd_seed": DEFAULT_SEED if args.fkd_seed is None else args.fkd_seed,
            "min_scale_crops": DEFAULT_SCALE[0] if args.min_scale_crops is None else args.min_scale_crops,
            "max_scale_crops": DEFAULT_SCALE[1] if args.max_scale_crops is None else args.max_scale_crops}, None

def teacher_source(args: argparse.Namespace) -> Optional[str]:
    """The library of the teacher: --teacher_source, else for published weights timm when it knows
    -a (FKD_SLG's default --teacher_source timm loads timm.create_model(arch, pretrained=True)),
    else whichever library knows -a."""
    if args.teacher_source:
        return SOURCE_NAMES[args.teacher_source]
    if args.teacher_path:
        return None
    import timm
    return "timm" if timm.is_model(args.arch or "resnet18") else None


def label_crops(ens: Ensemble, pixels: torch.Tensor, num_seg: int, temp: float) -> torch.Tensor:
    """(K, C) float32 probabilities, softmax(logits / temp), one forward per segment of num_seg crops."""
    out = []
    for k in range(0, len(pixels), num_seg):
        logits, _ = ens(pixels[k:k + num_seg].to(ens.device, non_blocking=True), None, None, None)
        out.append(F.softmax(logits.float() / temp, dim=1).cpu())
    return torch.cat(out)


def timed(label: Callable[[], torch.Tensor], give_up: float = math.inf) -> tuple[float, torch.Tensor]:
    """(median seconds of ``label()`` at the current threads, its result); a run over ``give_up``
    seconds ends the timing there."""
    result = label()  # also the warm-up
    times: list[float] = []
    until = time.perf_counter() + 0.05
    while len(times) < 2 or (len(times) < 25 and time.perf_counter() < until):
        start = time.perf_counter()
        label()
        times.append(time.perf_counter() - start)
        if times[-1] > give_up:
            break
    return statistics.median(times), result


def differing_modules(model: nn.Module, label: Callable[[], torch.Tensor], default: int, threads: int
                      ) -> list[nn.Module]:
    """The leaf modules of ``model`` whose output at ``threads`` intra-op threads differs bit for
    bit from their output at ``default`` (run by ``label()``, at ``default``), each on the input it
    sees there (a matrix product's blocking, e.g., can depend on the thread count)."""
    differ: dict[int, nn.Module] = {}
    inputs: dict[int, tuple] = {}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs[id(module)] = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args), kwargs

    def after(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        saved_args, saved_kwargs = inputs.pop(id(module))
        torch.set_num_threads(threads)
        try:
            again = module.forward(*saved_args, **saved_kwargs)  # forward(): no hooks again
        except Exception:  # a module that cannot run twice keeps the default, as if it differed
            again = None
        finally:
            torch.set_num_threads(default)
        if not (isinstance(output, torch.Tensor) and isinstance(again, torch.Tensor) and torch.equal(output, again)):
            differ[id(module)] = module
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                           m.register_forward_hook(after, with_kwargs=True))]
    try:
        label()
    finally:
        for h in handles:
            h.remove()
    return list(differ.values())


def labelling_threads(ens: Ensemble, num_crops: int, num_seg: int, input_size: int, temp: float
                      ) -> tuple[int, list[nn.Module]]:
    """The intra-op threads to label with, and the teacher modules to run at torch's default
    instead: the default everywhere, or fewer threads where they label faster. One image's crops
    make small operations, and a pool of threads started and joined for each one can cost more
    than the operation itself, the more so on a busy machine. Counts halve from the default while
    they keep getting faster; the modules whose result would change at a count keep the default
    there, and a count qualifies only if it gives the default's probabilities bit for bit (on
    seeded random crops of the run's shape), so the files never depend on the choice. On a GPU:
    the default (the CPU only feeds it)."""
    default = torch.get_num_threads()
    if ens.device.type != "cpu" or default == 1:
        return default, []
    shape = (min(num_crops, num_seg), 3, input_size, input_size)
    pixels = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    label = lambda: label_crops(ens, pixels, num_seg, temp)  # noqa: E731
    best, reference = timed(label)
    choice, threads = (default, []), default
    while threads > 1:
        threads //= 2
        keep = [m for t in ens.teachers for m in differing_modules(t.model, label, default, threads)]
        with running_on(threads, keep, default):
            took, probs = timed(label, give_up=2 * best)
        if took > best:  # fewer threads only get slower from here
            break
        if torch.equal(probs, reference):
            best, choice = took, (threads, keep)
    return choice


def generation_workers(requested: Optional[int], on_gpu: bool, spare_cores: bool) -> int:
    """-j default: the loader's, and one worker process on a CPU whose cores labelling leaves in part
    idle (it decodes and crops the next images meanwhile)."""
    if requested is None and not on_gpu and spare_cores:
        return 1
    return loader_workers(requested, on_gpu)


def rank_images(index: FolderIndex, info: distributed.DistInfo) -> list[int]:
    """The images this rank labels: every world_size-th, from its rank."""
    return list(range(info.rank, len(index), info.world_size))


@dataclass
class Work:
    """This rank's part of the store: its writer, the images whose files are not there yet, how many
    images are this rank's, and the crops of --reference_path (None: drawn from --fkd_seed)."""
    writer: Any
    todo: list[int]
    mine: int
    reference: Optional[tuple[str, dict]]


def open_store(cfg, info: distributed.DistInfo, index: FolderIndex, teacher: Teacher, class_index: list[int],
               class_mapping: str, reference: Optional[tuple[str, dict]]) -> Work:
    manifest = per_image.new_manifest(cfg, LabelledImages.of(index, [teacher], class_index, class_mapping))
    writer = create_store(cfg.save_path, manifest, info, flag="--save_path", index=index)
    mine = rank_images(index, info)
    return Work(writer, [i for i in mine if not writer.exists(i)], len(mine), reference)


def check_teacher_first(cfg, info: distributed.DistInfo, index: FolderIndex, ens: Ensemble,
                        class_index: list[int], reference: Optional[tuple[str, dict]]) -> None:
    """--min-teacher-acc on this rank's first images' crops, before the store is created: a refused
    run (a class order unlike the folders') leaves nothing, so its --class-map rerun into the same
    --save_path starts a new store rather than meet one made with other settings. Those crops are
    labelled again for the files, where HeldWrites checks them again."""
    if cfg.min_teacher_acc is None:
        return
    first = rank_images(index, info)[:-(-PREFLIGHT_CROPS // cfg.num_crops)]
    jobs = per_image.GenerateImages(index, per_image.chunks_of(first, cfg.batch_size), cfg.fkd_seed, cfg.num_crops,
                                    cfg.input_size, (cfg.min_scale_crops, cfg.max_scale_crops),
                                    reference)
    acc, targets = Accuracy(1), classmap.folder_targets(index, class_index)
    for chunk in batch_loader(jobs, 0, pin_memory=False, background=False):
        for n, i in enumerate(chunk["image"].tolist()):
            probs = label_crops(ens, chunk["pixels"][n], cfg.num_seg, cfg.temp)
            acc.update(probs, [probs], targets[i].repeat(len(probs)), None)
    refuse_below_together(acc, ens.teachers, len(index.classes), False, cfg.min_teacher_acc, info)


def choose_threads(info: distributed.DistInfo, ens: Ensemble, cfg) -> tuple[int, list[nn.Module]]:
    """``labelling_threads``, said on the main process."""
    default, chosen = torch.get_num_threads(), time.perf_counter()
    threads, keep = labelling_threads(ens, cfg.num_crops, cfg.num_seg, cfg.input_size, cfg.temp)
    if info.is_main and info.device.type == "cpu":
        kept = f", {len(keep)} teacher module(s) on {default} (same results)" if keep else ""
        print(f"fkd: the teacher runs on {threads} of {default} CPU threads{kept}: the fastest that "
              f"labels as the default does (chosen in {time.perf_counter() - chosen:.1f}s)", flush=True)
    return threads, keep


def label_images(cfg, info: distributed.DistInfo, index: FolderIndex, ens: Ensemble, class_index: list[int],
                 class_mapping: str, work: Work, spare_cores: bool) -> None:
    """Write the files of ``work.todo`` (``spare_cores``: the teacher runs on fewer intra-op threads
    than torch's default)."""
    writer, todo, mine, reference = work.writer, work.todo, work.mine, work.reference
    teacher = ens.teachers[0]
    jobs = per_image.GenerateImages(index, per_image.chunks_of(todo, cfg.batch_size), cfg.fkd_seed, cfg.num_crops,
                                    cfg.input_size, (cfg.min_scale_crops, cfg.max_scale_crops),
                                    reference)
    on_gpu = info.device.type == "cuda"
    # idle-priority workers only when the teacher's threads take every core: with cores to spare,
    # they would starve behind any other work on the machine while labelling waits for them
    workers = generation_workers(cfg.workers, on_gpu, spare_cores)
    loader = batch_loader(jobs, workers, pin_memory=False, background=on_gpu,
                          yield_cpu=not (on_gpu or spare_cores))
    if info.is_main:
        crops = "crops of --reference_path" if reference else f"crops from --fkd_seed {cfg.fkd_seed}"
        print(f"fkd: {len(index)} images, {len(index.classes)} classes ({class_mapping}), teacher {teacher.arch} "
              f"({teacher.source}); {cfg.num_crops} {crops}, {cfg.label_type} labels at T={cfg.temp:g}; "
              f"{len(todo)} files to write"
              + (f", {mine - len(todo)} already done" if mine > len(todo) else "")
              + (f" (rank 0 of {info.world_size})" if info.distributed else ""), flush=True)

    started = time.time()
    acc = Accuracy(1)
    held = HeldWrites(writer.write, acc, [teacher], len(index.classes), False, cfg.min_teacher_acc)
    targets = classmap.folder_targets(index, class_index)
    bar = tracking.progress(len(todo), "fkd", disable=not info.is_main)
    for chunk in loader:
        for n, i in enumerate(chunk["image"].tolist()):
            if writer.exists(i):  # another run on this --save_path finished it meanwhile
                bar.update(1)
                continue
            probs = label_crops(ens, chunk["pixels"][n], cfg.num_seg, cfg.temp)
            acc.update(probs, [probs], targets[i].repeat(len(probs)), None)
            held.add(i, chunk["coords"][n], chunk["flip"][n],
                     *per_image.quantize(probs, cfg.label_type, cfg.use_fp16))
            bar.update(1)
    bar.close()
    held.finish()
    writer.finish()
    correct, seen, total = distributed.reduce_across(info, float(acc.correct[0]), acc.seen, held.written)
    if info.is_main:
        top1 = f"{100.0 * correct / seen:.2f}%" if seen else "n/a"
        print(f"fkd: wrote {int(total)} files to {cfg.save_path} in {time.time() - started:.1f}s; "
              f"top-1 on the crops it labelled: {top1}", flush=True)


@files.releasing_locks
def main(args: argparse.Namespace) -> None:
    given = argparse.Namespace(**vars(args))  # the flags as parsed: the store's args.yaml
    note_replaced_flags(args, LABELLING_REPLACED)
    check_args(args)
    train_dir, val_dir = data_dirs(args)
    info = distributed.setup(args.device)
    workers = loader_workers(args.workers, info.device.type == "cuda")
    with distributed.together(info):  # a node that refuses its inputs stops every node, in one line each
        index = scan_image_folder(train_dir, "DIR")
        per_image.check_unique_names(index, "DIR")
        (teacher,) = load_teachers([args.arch], [args.teacher_path], args.num_classes, teacher_source(args),
                                   weight_names(args.teacher_weights, [args.arch], [args.teacher_path]))
        class_index, class_mapping = classmap.resolve(index.classes, teacher.num_classes, args.class_map)
        ens = Ensemble([teacher], "mean", 0.5, info.device, precision.amp_dtype(args.amp, info.device))

    if args.evaluate:  # upstream: test the teacher, write nothing
        if not val_dir:
            raise UserError(f"--evaluate needs validation images: DIR/val or --val-dir (DIR is {args.data})")
        distributed.on_main_then_all(info, lambda: evaluate_teachers(
            ens, val_dir, dict(zip(index.classes, class_index)), args.input_size, args.crop_pct, workers))
        distributed.cleanup(info)
        return

    with distributed.together(info):
        crops, reference = settle_crops(args, index)
    # -j stays as given here: its default depends on the thread choice, made only when files are left
    cfg = freeze(args, "FkdRelabelConfig", label_type=per_image.normalize_label_type(args.label_type), **crops)
    check_teacher_first(cfg, info, index, ens, class_index, reference)
    work = open_store(cfg, info, index, teacher, class_index, class_mapping, reference)
    if info.is_main:
        write_config(cfg.save_path, given, NOT_IN_STORE)
    default_threads = torch.get_num_threads()
    threads, keep = choose_threads(info, ens, cfg) if work.todo else (default_threads, [])
    with running_on(threads, keep):  # then the caller's setting again (main runs in-process too)
        label_images(cfg, info, index, ens, class_index, class_mapping, work, threads < default_threads)
    distributed.cleanup(info)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(parse_with_config(get_args_parser())))


if __name__ == "__main__":
    cli()
