"""Relabel a (distilled) image folder with one teacher or an ensemble: for every epoch and
batch, sample the crops, flips and mix, run the teachers on exactly those pixels, and store
the parameters with the combined logits (store format v1, see softlabel/stores/batch.py).

    python relabel/generate_soft_label.py --data DIR --teacher-path T.pth -a democnn \
        --fkd-path STORE --epochs 300 -b 1024 --input-size 224 --mix-type cutmix --use-fp16
    python relabel/generate_soft_label.py --data DIR --teachers resnet18,mobilenet_v2 \
        --ensemble normmean --fkd-path STORE          # published weights, from the local cache
    torchrun --standalone --nproc_per_node 2 relabel/generate_soft_label.py ...

Every random choice derives from (--fkd-seed, epoch, batch), so the store is the same for any
-j and any number of processes (torchrun: rank r writes the batches b with b % world == r).
Rerunning the same command skips finished batch files and writes the rest.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any, Optional

import torch

from softlabel import classmap, distributed, files, precision, replay, tracking
from softlabel.cli import (LABELLING_REPLACED, NOT_IN_STORE, add_config_flag, add_mix_type, add_replaced_flags,
                           config_values, flags_from_keywords, freeze, note_replaced_flags, parse_with_config,
                           write_config)
from softlabel.data import FolderIndex, scan_images
from softlabel.distributed import DistInfo
from softlabel.ensemble import ENSEMBLES, RESCALING
from softlabel.errors import UserError, run_main
from softlabel.labelling import PREFLIGHT_CROPS, Accuracy, HeldWrites, evaluate_teachers, refuse_below_together
from softlabel.loader import RelabelBatches, batch_loader, cache_bytes, loader_workers
from softlabel.models import WEIGHTS_HELP
from softlabel.precision import AMP_CHOICES
from softlabel.relabel_presets import PRESETS, Preset
from softlabel.stores import batch as store
from softlabel.stores import topk
from softlabel.stores import LabelledImages, create_store
from softlabel.stores.schema import MAX_BATCH_FILES, MAX_EPOCHS, MAX_INPUT_SIZE
from softlabel.streams import DEFAULT_SEED, check_seed
from softlabel.teachers import SOURCES, Ensemble, Teacher, load_teachers, split_list, weight_names, weight_paths


# PRISM's relabel command, as its relabel/README.md gives it for r18 (Brian-Moser/prism) and its
# relabel_r18.sh, relabel_r50.sh, relabel_r101.sh state it (r101 alone with -b 100: Preset.batch_size).
# Its --candidate-number 4 is every teacher of the family: a preset keeps all of its list (or of
# --teachers, when given) unless --candidate-number says fewer.
PRISM_RELABEL = {"workers": 8, "epochs": 300, "fkd_seed": 42, "input_size": 224, "min_scale_crops": 0.25,
                 "max_scale_crops": 1.0, "use_fp16": True, "mode": "fkd_save", "mix_type": "cutmix"}


PRESET_HELP = ("a relabel preset (table: docs/relabel.md) sets the defaults: its teacher family (what --teachers "
               "would give; -a may only name its first), its --ensemble and -b, and PRISM's relabel command "
               "for the rest (-j 8, --epochs 300, cutmix, --use-fp16, ...); --config's values and the flags "
               "given override them (default: %(default)s)")


def get_args_parser(preset: Optional[Preset] = None) -> argparse.ArgumentParser:
    title = f"PRISM {preset.name} preset: " if preset else ""
    p = argparse.ArgumentParser(description=f"{title}soft-label generation (relabel) with crop/flip/mix replay")
    add_config_flag(p)
    p.add_argument("--preset", choices=list(PRESETS), default=preset.name if preset else None, help=PRESET_HELP)
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="DIR", help="image folder to relabel (class sub-folders)")
    g.add_argument("-j", "--workers", default=None, type=int, metavar="N",
                   help="data loading worker processes (default: 4 on GPU; 0 on CPU, where loading in "
                        "the main process between batches is measured fastest; a PRISM preset: 8, as its command); "
                        "the store does not depend on it")
    g.add_argument("-b", "--batch-size", default=1024, type=int, metavar="N",
                   help="images per stored batch = per student step (default: %(default)s)")
    g.add_argument("--epochs", default=300, type=int, help="epochs of labels to store (default: 300)")
    g.add_argument("--input-size", default=224, type=int, metavar="S", help="crop size (default: 224)")
    g.add_argument("--min-scale-crops", type=float, default=0.08, help="RandomResizedCrop min scale (%(default)s)")
    g.add_argument("--max-scale-crops", type=float, default=1.0, help="RandomResizedCrop max scale (%(default)s)")
    add_mix_type(g, "none", "batch mix applied after cropping (default: %(default)s; None is accepted as upstream)")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (default: 0.8)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (default: 1.0)")
    g.add_argument("--class-map", metavar="FILE", default=None,
                   help="JSON {class folder: teacher class index} (default: folder order; ImageNet "
                        "WNID folders map to 1000-class teachers automatically)")

    g = p.add_argument_group("teachers")
    g.add_argument("-a", "--arch", metavar="ARCH", default=None,
                   help="teacher architecture: ours, torchvision or timm name (default: what "
                        "--teacher-path says, else resnet18)" + ("; a preset takes it as its first teacher" if preset else ""))
    g.add_argument("--teachers", metavar="A,B,C", default=None,
                   help="several teachers, ensembled with --ensemble (the first is the primary)")
    g.add_argument("--teacher-path", metavar="P1,P2", default=None,
                   help="weights, one file per teacher: a state_dict or a checkpoint dict with 'model' "
                        "(default: published weights from the local cache; nothing is downloaded)")
    g.add_argument("--teacher-source", choices=SOURCES, default=None,
                   help="library of the architecture and published weights (default: torchvision if "
                        "it knows the name, else timm; private: --teacher-path files only)")
    g.add_argument("--teacher-weights", metavar="NAME[,NAME]", default=None, help=WEIGHTS_HELP)
    g.add_argument("--candidate-number", type=int, default=None, metavar="N",
                   help="keep the first N teachers of the list (default: all)")
    g.add_argument("--ensemble", choices=sorted(ENSEMBLES), default="mean",
                   help="how teachers' logits combine: mean, normmean (PRISM r18), primary-weighted "
                        "(PRISM r50/r101) (default: mean)")
    g.add_argument("--primary-weight", type=float, default=0.5,
                   help="primary-weighted: weight of the first teacher (default: 0.5)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="teacher outputs (default: what the checkpoint says, else the number of class folders)")
    g.add_argument("--temperature", type=float, default=1.0, help="store logits / T (default: 1, raw logits)")
    g.add_argument("--evaluate", action="store_true",
                   help="report each teacher's and the ensemble's top-1 on --val-dir, then relabel (PRISM's "
                        "relabel has no such flag; FKD's generator, and ours, -e/--evaluate only reports, "
                        "as FKD_SLG does)")
    g.add_argument("--val-dir", metavar="DIR", default=None, help="validation images for --evaluate")
    g.add_argument("--crop-pct", type=float, default=0.875,
                   help="--evaluate: resize to input-size/crop-pct, center-crop (default: 0.875)")
    g.add_argument("--min-teacher-acc", type=float, default=None, metavar="PCT",
                   help="stop with an error, before the store is created, when the teachers' top-1 on the "
                        f"first {PREFLIGHT_CROPS} crops they label is below PCT percent (0 to 100; default: "
                        "only warn below twice chance)")

    g = p.add_argument_group("store and run")
    g.add_argument("--fkd-path", default="./FKD_soft_label", type=str, help="store directory")
    g.add_argument("--use-fp16", dest="use_fp16", action="store_true", help="store logits as float16" + (" (a PRISM preset: on, as its command)" if preset else ""))
    g.add_argument("--label-format", choices=["full", "topk"], default="full",
                   help="full: every class's logit; topk: each sample's --topk largest logits (float16) "
                        "with their classes, and the crops in compact types (default: full)")
    g.add_argument("--topk", type=int, default=5, metavar="K", help="logits kept per sample by --label-format topk (5)")
    g.add_argument("--topk-fill", choices=["residual", "none"], default="residual", help=topk.TOPK_FILL_HELP)
    g.add_argument("--topk-fill-temperature", type=float, default=1.0, metavar="T", help=topk.FILL_TEMPERATURE_HELP)
    g.add_argument("--label-keep", type=float, default=1.0, metavar="FRACTION",
                   help="label pruning (as LPLD): label only this seeded fraction of each epoch's steps; the "
                        "trainer cycles the kept steps so a student still trains every step (default: 1, all)")
    g.add_argument("--mode", default="fkd_save", type=str, help="fkd_save (the only mode of this script)")
    g.add_argument("--fkd-seed", default=DEFAULT_SEED, type=int, metavar="N",
                   help=f"seed of every random choice in the store (default: {DEFAULT_SEED})")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--cache-images", type=int, default=1024, metavar="MB",
                   help="keep decoded images in memory up to MB in all (split among -j workers): every "
                        "epoch revisits them (default: 1024; 0: decode every time)")
    g.add_argument("--amp", choices=AMP_CHOICES, default="off", help=precision.RELABEL_AMP_HELP)
    g.add_argument("--skip-bad-images", action="store_true",
                   help="decode every image first and leave out (and list) those that cannot be read, "
                        "instead of stopping at the first; pass it to the trainer too")
    g.add_argument("--print-freq", type=int, default=1, metavar="N",
                   help="print the teachers' top-1 on their crops every N epochs (default: 1)")

    add_replaced_flags(p, LABELLING_REPLACED)

    if preset:  # the PRISM ImageNet-1k command's defaults
        p.set_defaults(**PRISM_RELABEL, batch_size=preset.batch_size, ensemble=preset.ensemble)
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.mode != "fkd_save":
        raise UserError(f"--mode {args.mode}: this script only writes stores (fkd_save); "
                        f"train from a store with validate/train_FKD_parallel.py --fkd-path")
    if args.data is None:
        raise UserError("--data DIR is required")
    for flag, value in (("-b/--batch-size", args.batch_size), ("--epochs", args.epochs),
                        ("--input-size", args.input_size), ("--print-freq", args.print_freq)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.input_size > MAX_INPUT_SIZE:
        raise UserError(f"--input-size {args.input_size}: at most {MAX_INPUT_SIZE} px")
    if args.cache_images < 0:
        raise UserError(f"--cache-images must be >= 0 MB, got {args.cache_images}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"-j/--workers must be >= 0, got {args.workers}")
    if not 0 < args.min_scale_crops <= args.max_scale_crops <= 1:
        raise UserError(f"--min-scale-crops {args.min_scale_crops} / --max-scale-crops "
                        f"{args.max_scale_crops}: need 0 < min <= max <= 1")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise UserError(f"--temperature must be positive and finite, got {args.temperature}")
    check_seed(args.fkd_seed, "--fkd-seed")
    alpha = {"mixup": ("--mixup", args.mixup), "cutmix": ("--cutmix", args.cutmix)}.get(args.mix_type)
    if alpha and not (math.isfinite(alpha[1]) and alpha[1] > 0):
        raise UserError(f"{alpha[0]} (the Beta distribution's alpha of --mix-type {args.mix_type}) must be "
                        f"positive and finite, got {alpha[1]}")
    if args.epochs > MAX_EPOCHS:
        raise UserError(f"--epochs {args.epochs}: at most {MAX_EPOCHS}")
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    if not 0 < args.topk_fill_temperature <= 1000:
        raise UserError(f"--topk-fill-temperature must be in (0, 1000], got {args.topk_fill_temperature}")
    if not 0 < args.label_keep <= 1:
        raise UserError(f"--label-keep must be in (0, 1], got {args.label_keep}")
    if not 0 <= args.primary_weight <= 1:
        raise UserError(f"--primary-weight must be in [0, 1], got {args.primary_weight}")
    if args.evaluate and not args.val_dir:
        raise UserError("--evaluate needs --val-dir DIR")
    if not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {args.crop_pct}")
    if args.min_teacher_acc is not None and not 0 <= args.min_teacher_acc <= 100:  # NaN fails too
        raise UserError(f"--min-teacher-acc is a top-1 in percent, in [0, 100], got {args.min_teacher_acc}")
    files.refuse_output_inside(args.fkd_path, "--fkd-path", [("--data", args.data), ("--val-dir", args.val_dir)])


def preflight(cfg: Any, num_classes: int, batches: int) -> list[tuple[int, int]]:
    """What needs the teachers and the images, checked before the store is created (so a refused
    run leaves nothing that blocks the corrected rerun). Returns the labelled (epoch, step)s."""
    if cfg.label_format == "topk" and cfg.topk > num_classes:
        raise UserError(f"--topk {cfg.topk}: the teacher has {num_classes} outputs; keep at most {num_classes}")
    if cfg.epochs * batches > MAX_BATCH_FILES:
        raise UserError(f"--epochs {cfg.epochs} x {batches} batches per epoch = {cfg.epochs * batches:,} steps, "
                        f"over the {MAX_BATCH_FILES:,} a store may hold; raise -b or store fewer epochs")
    kept = replay.kept_steps(cfg.fkd_seed, cfg.epochs, batches, cfg.label_keep)
    if not kept:
        raise UserError(f"--label-keep {cfg.label_keep:g}: keeps no step of {cfg.epochs} epochs x {batches} "
                        f"batches; keep at least 1 / {cfg.epochs * batches:g}")
    return kept


def augment_of(cfg) -> replay.Augment:
    """How each batch is sampled: the config's seed, batch, crops and mix."""
    return replay.Augment(cfg.fkd_seed, cfg.batch_size, cfg.input_size, (cfg.min_scale_crops, cfg.max_scale_crops),
                          cfg.mix_type, cfg.mixup, cfg.cutmix)


def check_teachers_first(cfg: Any, index: FolderIndex, mine: list[tuple[int, int]], ens: Ensemble,
                         class_index: list[int], info: DistInfo) -> None:
    """--min-teacher-acc on the first crops this rank will label, before the store is created: a
    run it refuses (a class order unlike the folders') leaves no manifest, so its rerun with
    --class-map into the same --fkd-path is a new store, not one "made with other settings".
    Refusing before creating, rather than removing the store's first files after: nothing is ever
    deleted from a folder that other ranks, nodes or users write to. The check's crops (a batch or
    a few, only with this flag) are labelled again for the store, where HeldWrites checks them again."""
    if cfg.min_teacher_acc is None:
        return
    first, jobs = 0, []
    for e, b in mine:  # the batches that hold HeldWrites' first crops
        if first >= PREFLIGHT_CROPS:
            break
        jobs.append((e, b))
        first += replay.batch_len(len(index), cfg.batch_size, b)
    acc = Accuracy(len(ens.teachers))
    batches = RelabelBatches(index, jobs, augment_of(cfg), class_index)
    for item in batch_loader(batches, 0, pin_memory=False, background=False):
        pixels = item["pixels"].to(info.device)
        combined, outputs = ens(pixels, replay.partners_of(pixels, item["mix_index"]), item["mix_lam"],
                                item["mix_bbox"])
        acc.update(combined, outputs, item["target"], item["mix_index"])
    refuse_below_together(acc, ens.teachers, len(index.classes), cfg.mix_type != "none", cfg.min_teacher_acc, info)


def teacher_specs(args: argparse.Namespace, preset: Optional[Preset]
                  ) -> tuple[list[Optional[str]], list[Optional[str]], list[Optional[str]]]:
    """(architectures, weight files, published-weights names) of the teachers, from --teachers/-a,
    the preset, --candidate-number and --teacher-weights; a file list must give one file per teacher."""
    if args.teachers:
        archs: list[Optional[str]] = list(split_list(args.teachers))
    elif preset:
        archs = list(preset.teachers)
        if args.arch and args.arch != archs[0]:
            raise UserError(f"-a/--arch {args.arch}: this preset's primary teacher is {archs[0]}; use "
                            f"generate_soft_label.py --teachers {args.arch},... for another family")
    else:
        archs = [args.arch]
    if args.candidate_number is not None:
        if not 1 <= args.candidate_number <= len(archs):
            raise UserError(f"--candidate-number {args.candidate_number}: between 1 and {len(archs)} "
                            f"(the teachers: {', '.join(str(a) for a in archs)})")
        archs = archs[:args.candidate_number]
    paths = weight_paths(args.teacher_path, archs)
    return archs, paths, weight_names(args.teacher_weights, archs, paths)


def announce(cfg, index: FolderIndex, teachers: list[Teacher], class_mapping: str, batches: int, todo: list,
             mine: int, info: DistInfo) -> None:
    family = ", ".join(f"{t.arch} ({t.source})" for t in teachers)
    print(f"relabel: {len(index)} images, {len(index.classes)} classes ({class_mapping}), teachers "
          f"{family}" + (f", ensemble {cfg.ensemble}" if len(teachers) > 1 else "")
          + f"; {cfg.epochs} epochs x {batches} batches of {cfg.batch_size}; {len(todo)} batch files "
          f"to write" + (f", {mine - len(todo)} already done" if mine > len(todo) else "")
          + (f" (rank 0 of {info.world_size})" if info.distributed else ""), flush=True)


def label_batches(cfg, jobs: RelabelBatches, loader, ens: Ensemble, writer, images_todo: int, info: DistInfo,
                  speed: tracking.Throughput) -> Accuracy:
    """Label every batch the loader yields (those of ``jobs``, in order) and write it; nothing is
    written before the teachers pass the accuracy check on the first crops. Returns their accuracy;
    ``speed`` times the batches (each one's logits come back to the CPU, so its compute time is the
    device's too)."""
    teachers, todo, num_folders = ens.teachers, jobs.jobs, len(jobs.index.classes)
    total, epoch_acc = Accuracy(len(teachers)), Accuracy(len(teachers))
    held = HeldWrites(writer.write, total, teachers, num_folders, cfg.mix_type != "none", cfg.min_teacher_acc,
                      min(PREFLIGHT_CROPS, images_todo))
    bar = tracking.progress(images_todo, "relabel", disable=not info.is_main)
    for n, item in enumerate(speed.timed(loader)):
        epoch = item["epoch"]
        pixels = item["pixels"].to(info.device, non_blocking=True)
        partners = replay.partners_of(pixels, item["mix_index"])
        combined, outputs = ens(pixels, partners, item["mix_lam"], item["mix_bbox"])
        for acc in (total, epoch_acc):
            acc.update(combined, outputs, item["target"], item["mix_index"])
        logits = (combined / cfg.temperature).cpu()
        if not bool(torch.isfinite(logits).all()):
            raise UserError(f"the teachers' logits for epoch {epoch}, batch {item['batch']} are not finite (NaN "
                            f"weights, or --temperature {cfg.temperature:g} so small that float32 overflows); "
                            f"nothing was written for it")
        if cfg.use_fp16 and not bool(torch.isfinite(logits.half()).all()):
            raise UserError(f"--use-fp16: the teachers' logits for epoch {epoch}, batch {item['batch']} reach "
                            f"{float(logits.abs().max()):.4g}, beyond float16's 65504; drop --use-fp16 to store "
                            f"them in float32 (or raise --temperature {cfg.temperature:g}, which changes the "
                            f"labels); nothing was written for it")
        logits = logits.half() if cfg.use_fp16 else logits
        held.add(epoch, item["batch"], store.BatchRecord(
            item["coords"], item["flip"], item["mix_index"], item["mix_lam"], item["mix_bbox"], logits,
            item["index"]))
        last = n + 1 == len(todo)
        speed.step_done(len(item["index"]))
        bar.update(len(item["index"]))
        bar.set_postfix(epoch=epoch, top1=f"{total.percent()[0]:.1f}", refresh=False)
        if last or todo[n + 1][0] != epoch:
            if info.is_main and ((epoch + 1) % cfg.print_freq == 0 or epoch + 1 == cfg.epochs):
                parts = ", ".join(f"{t.arch} {a:.1f}%" for t, a in zip(teachers, epoch_acc.percent()[1:]))
                bar.write(f"epoch {epoch}: top-1 on its crops {epoch_acc.percent()[0]:.2f}%"
                          + (f" ({parts})" if len(teachers) > 1 else "")
                          + (" [rank 0's batches]" if info.distributed else ""))
            epoch_acc = Accuracy(len(teachers))
    held.finish()
    bar.close()
    return total


def report(cfg, total: Accuracy, todo: list, speed: tracking.Throughput, info: DistInfo) -> None:
    """The run's summary over all ranks. Start-up: from speed.origin to the first finished batch (the
    slowest rank's; a rank with nothing to write has none); steady state: from each rank's first
    finished batch to the last rank's end."""
    end = time.perf_counter()
    first = speed.first or end
    correct, seen, written, steady_images = distributed.reduce_across(
        info, float(total.correct[0]), total.seen, len(todo), speed.images)
    elapsed, startup, steady_time, wait = distributed.reduce_across(
        info, end - speed.origin.at, first - speed.origin.at if speed.first else 0.0, end - first, speed.wait,
        op="max")
    if info.is_main:
        acc = f"{100.0 * correct / seen:.2f}%" if seen else "n/a"
        rate = f", then {steady_images / steady_time:.1f} img/s" if steady_time > 0 and steady_images > 0 else ""
        timing = f" (start-up to the first batch {startup:.2f}s{rate}; data wait {wait:.2f}s)" if written else ""
        print(f"relabel: wrote {int(written)} batch files to {cfg.fkd_path} in {elapsed:.1f}s since "
              f"{speed.origin.since}{timing}; top-1 on the crops they labelled: {acc}", flush=True)


@files.releasing_locks
def main(args: argparse.Namespace, origin: Optional[tracking.StartUp] = None) -> None:
    """``args``: parsed by the parser of the preset ``args.preset`` names (``parse_command``,
    ``relabel_args``); ``origin``: where the logged start-up begins (default: this call)."""
    preset = PRESETS[args.preset] if args.preset else None
    speed = tracking.Throughput(origin or tracking.StartUp.of_main())
    given = argparse.Namespace(**vars(args))  # the flags as parsed: the store's args.yaml
    note_replaced_flags(args, LABELLING_REPLACED)
    check_args(args)
    archs, paths, weights = teacher_specs(args, preset)
    info = distributed.setup(args.device)
    cfg = freeze(args, "RelabelConfig", workers=loader_workers(args.workers, info.device.type == "cuda"))
    with distributed.together(info):  # a node that refuses its inputs stops every node, in one line each
        index, skipped = scan_images(cfg.data, "--data", cfg.skip_bad_images, info.is_main, "relabel")
        teachers = load_teachers(archs, paths, cfg.num_classes, cfg.teacher_source, weights)
        class_index, class_mapping = classmap.resolve(index.classes, teachers[0].num_classes, cfg.class_map)
        amp = precision.amp_dtype(cfg.amp, info.device)
        ens = Ensemble(teachers, cfg.ensemble, cfg.primary_weight, info.device, amp)
        batches = replay.batches_per_epoch(len(index), cfg.batch_size)
        kept = preflight(cfg, teachers[0].num_classes, batches)
    if cfg.evaluate:
        distributed.on_main_then_all(info, lambda: evaluate_teachers(
            ens, cfg.val_dir, dict(zip(index.classes, class_index)), cfg.input_size, cfg.crop_pct, cfg.workers))

    manifest = store.new_manifest(cfg, LabelledImages.of(index, teachers, class_index, class_mapping), batches,
                                  cfg.ensemble if len(teachers) > 1 or cfg.ensemble in RESCALING else None,
                                  precision.dtype_name(amp), [os.path.relpath(p, index.root) for p in skipped])
    mine = [(e, b) for n, (e, b) in enumerate(kept) if n % info.world_size == info.rank]
    check_teachers_first(cfg, index, mine, ens, class_index, info)
    writer = create_store(cfg.fkd_path, manifest, info)
    if info.is_main:
        write_config(cfg.fkd_path, given, NOT_IN_STORE)
    todo = [(e, b) for e, b in mine if not writer.exists(e, b)]
    images_todo = sum(replay.batch_len(len(index), cfg.batch_size, b) for _, b in todo)
    jobs = RelabelBatches(index, todo, augment_of(cfg), class_index, cache_bytes(cfg.cache_images, cfg.workers))
    on_gpu = info.device.type == "cuda"
    loader = batch_loader(jobs, cfg.workers, pin_memory=on_gpu, background=on_gpu, yield_cpu=not on_gpu)
    if info.is_main:
        announce(cfg, index, teachers, class_mapping, batches, todo, len(mine), info)
    total = label_batches(cfg, jobs, loader, ens, writer, images_todo, info, speed)
    writer.finish()
    report(cfg, total, todo, speed, info)
    distributed.cleanup(info)


def preset_of(argv: Optional[list[str]] = None, fixed: Optional[str] = None) -> Optional[Preset]:
    """The preset a command line names, read before its parser is built (a preset sets that parser's
    defaults): --preset, else the --config file's ``preset``, else ``fixed`` (a preset's own script).
    An unknown --preset is left to the parser, whose choices refuse it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="?")
    pre.add_argument("--config", nargs="?")
    known, _ = pre.parse_known_args(argv)
    name = known.preset
    if name is None and known.config:
        name = config_values(get_args_parser(), known.config).get("preset")
    if fixed and name not in (None, fixed):
        raise UserError(f"--preset {name}: this script is the {fixed} preset; run "
                        f"relabel/generate_soft_label.py --preset {name} for another")
    if name is None:
        return PRESETS[fixed] if fixed else None
    return PRESETS.get(name)


def parse_command(argv: Optional[list[str]] = None, preset_name: Optional[str] = None
                  ) -> tuple[argparse.Namespace, Optional[Preset]]:
    """``argv`` (default: sys.argv) parsed by the parser of the preset it names, and that preset;
    ``preset_name``: the preset of a preset's own script."""
    preset = preset_of(argv, preset_name)
    return parse_with_config(get_args_parser(preset), argv), preset


def cli(preset_name: Optional[str] = None) -> None:
    """The console command (or a preset's script, ``preset_name``): parse sys.argv, run, report a
    user error as one line."""
    def run() -> None:
        args, _ = parse_command(None, preset_name)
        main(args, tracking.StartUp.of_process())
    run_main(run)


def relabel_args(**values: Any) -> argparse.Namespace:
    """Relabel's flags from Python, for ``main(relabel_args(...))``: the defaults (``preset=``'s, as
    ``--preset``) with ``values`` in place, keyed by the flags' dest names (``data=``, ``arch=`` for -a,
    ``fkd_path=``, ``workers=``, ...), each converted and checked as on the command line. An unknown
    name is a TypeError."""
    return flags_from_keywords(get_args_parser(PRESETS.get(values.get("preset"))), values, "relabel_args")


if __name__ == "__main__":
    cli()
