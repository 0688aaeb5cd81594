"""Inspect a soft-label store, check every batch file, or verify its labels against a teacher.

    python scripts/fkd_info.py STORE                      # summary: format, sizes, labels, teachers
    python scripts/fkd_info.py STORE --check              # load and validate every batch file
    python scripts/fkd_info.py STORE --check --sample 100 # a quick look: 100 steps (files) spread over the store
    python scripts/fkd_info.py STORE --verify-teacher democnn --teacher-path T.pth --data DIR
    python scripts/fkd_info.py STORE --verify-weights     # the hub cache's teacher files against the store's sha256
    python scripts/fkd_info.py STORE --verify-weights A.pth,B.pth   # these files, one per teacher
    python scripts/fkd_info.py UPSTREAM_STORE --verify-teacher resnet18 --data DIR \
        --input-size 224 --fkd_seed 42                    # an SRe2L / G-VBSM / PRISM store (no manifest)

STORE is ours (manifest.json + epoch_{e}/batch_{b}.tar) or an upstream one (no manifest: SRe2L /
G-VBSM lists of 6, PRISM lists of 7). Every file is loaded safely (weights_only; upstream stores
admit numpy scalars, nothing that can run code) and validated by the store reader.

--verify-teacher re-renders a few stored batches from the raw images exactly as the trainer
does (the stored crops, flips and mix), runs the teacher(s) on those pixels with the store's
normalization, ensemble rule, temperature and autocast (on CUDA), and compares with the stored
logits. The error of a sample is max |stored - recomputed| over its stored classes divided by
the largest |recomputed| logit among them. Tolerance: 2e-2 where the arithmetic can be
reproduced (float32, or the store's bf16/fp16 autocast on a GPU). Float16 storage alone rounds
by at most 2^-11 (5e-4) of that scale; the rest covers float32 on another device: a GPU's TF32
convolutions against a CPU gave up to 1.2e-2. A store labelled under autocast (relabel's --amp
on CUDA) checked in float32, on a CPU: 0.25 (bf16 against float32 gave up to 0.15 with a
random-init ResNet-18). A wrong teacher, wrong images or a wrong seed give errors near 1 or
more. Argmax agreement must be 100%, up to near-ties (two classes within twice the tolerance).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import torch

from softlabel import precision, replay
from softlabel.data import scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import Request, layout_of, open_store
from softlabel.stores.base import Store, spread, weights_name
from softlabel.streams import DEFAULT_SEED

# Relative to each sample's logit scale (measured on an H200 and this CPU, 32px crops, random-init
# democnn_small and ResNet-18 with BatchNorm statistics from the images): float16 storage rounds by
# <= 2^-11; the same device and autocast reproduce a store to <= 5e-4 (bf16 on CUDA: exactly).
TOLERANCE = 2e-2           # float32 here and there; a GPU's TF32 convolutions against a CPU: <= 1.2e-2
TOLERANCE_UNMATCHED = 0.25  # a store labelled under bf16/fp16 autocast, checked in float32: <= 0.15
DEFAULT_SAMPLE = 4


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", metavar="STORE", help="soft-label store: ours (with manifest.json) or an upstream one")

    g = p.add_argument_group("modes (default: print a summary of the store)")
    g.add_argument("--check", action="store_true",
                   help="load every batch file safely and validate it (shapes, dtypes, crop boxes in [0, 1], "
                        "indices in range, finite logits, batch sizes, each sample once per epoch); fails "
                        "on the first bad or missing file; with --sample K, K steps (per-image: files) only")
    g.add_argument("--verify-teacher", metavar="ARCH[,ARCH]", default=None,
                   help="recompute --sample stored batches with this teacher (an ensemble: several, as the "
                        "store was made) and compare with the stored logits; fails unless they agree")

    g.add_argument("--verify-weights", metavar="FILE[,FILE]", nargs="?", const="", default=None,
                   help="compare the sha256 of each teacher's weight file with the store's record: the files "
                        "given, one per teacher (an empty item, or none given: the published weights the store "
                        "names, from the torch hub / Hugging Face cache); one line per teacher, fails on a "
                        "difference or a file it cannot find")

    g = p.add_argument_group("teacher (--verify-teacher)")
    g.add_argument("--teacher-path", metavar="P[,P]", default=None,
                   help="the teacher's weights, one file per teacher (default: published weights from the "
                        "local cache; nothing is downloaded)")
    g.add_argument("--teacher-source", choices=["torchvision", "timm", "private"], default=None,
                   help="library of the architecture and published weights, as in relabel")
    g.add_argument("--sample", type=int, default=None, metavar="K",
                   help=f"batches to recompute, spread evenly over the store from the first to the last "
                        f"(default: {DEFAULT_SAMPLE}; 0: all); with --check, the steps (per-image: files) to check, "
                        f"spread alike (default: all)")
    g.add_argument("--tolerance", type=float, default=None, metavar="REL",
                   help=f"largest relative error accepted (default: {TOLERANCE:g}; {TOLERANCE_UNMATCHED:g} for a "
                        f"store labelled under autocast on a GPU and checked without a GPU)")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1 ... (default: cuda if available, as relabel; there the store's "
                        "autocast is reproduced)")

    g = p.add_argument_group("data (--verify-teacher; for upstream stores, what they do not record)")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="the image folder the store was made from (also lets the summary and --check of an "
                        "upstream store use its image count and class names)")
    g.add_argument("--input-size", type=int, default=None, metavar="S",
                   help="crop size of the relabel run (an upstream store does not record it; ours: must match)")
    g.add_argument("--num-classes", type=int, default=None, metavar="C",
                   help="FKD's own files: the teacher's classes (they do not record it; default 1000, as FKD)")
    g.add_argument("--soft_label_type", default=None, metavar="TYPE",
                   help="FKD's own files: marginal_renorm_k5 for top-5 files that are renormalized when read "
                        "(the shape does not tell it from marginal_smoothing_k5)")
    g.add_argument("--temp", type=float, default=1.0,
                   help="FKD's own files, --verify-teacher: FKD_SLG's --temp (default: 1.0)")
    g.add_argument("--fkd-seed", "--fkd_seed", dest="fkd_seed", type=int, default=None, metavar="N",
                   help=f"seed of the relabel run: an upstream SRe2L/G-VBSM store's sample order (default: "
                        f"{DEFAULT_SEED}; ours: must match)")
    return p


# ----------------------------------------------------------------------------- the store's files

def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def disk_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files
               if os.path.isfile(os.path.join(d, f)))


# ----------------------------------------------------------------------------- summary

def print_summary(root: str, rows: list[tuple[str, str]]) -> None:
    size = disk_bytes(root)
    rows = [("store", os.path.abspath(root))] + rows + [("size on disk", f"{human_bytes(size)} ({size} bytes)")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    sys.stdout.flush()


def per_image_info(root: str, args: argparse.Namespace) -> None:
    """Summary, --check and --verify-teacher of a per-image store: ours, or FKD's own files (which
    need --data to be found and record neither class count nor crop size: --num-classes, --input-size)."""
    index = scan_image_folder(args.data, "--data") if args.data else None
    store = open_store(root, index, flag="STORE", layout="per-image", data_arg="--data",
                       request=Request(input_size=args.input_size, num_classes=args.num_classes,
                                       label_type=args.soft_label_type))
    print_summary(root, store.summary(index))
    if args.check:  # every file through the store's own validator
        print(f"ok: {store.check(index, args.sample or 0)}", flush=True)
    if args.verify_weights is not None:
        verify_weights(root, store.teachers(), args.verify_weights)
    if args.verify_teacher is not None:
        verify_per_image(store, index, args)


def verify_per_image(store, index, args: argparse.Namespace) -> None:
    """Re-render the crops of a few images as their generator did (ours: bilinear; FKD_SLG: bicubic),
    run the teacher, and compare its probabilities at the stored classes with the stored values."""
    from softlabel.teachers import Ensemble, load_teacher
    if index is None:
        raise UserError("--verify-teacher needs --data DIR, the image folder the store was made from")
    s, labelling = store.settings, store.labelling()
    if s.label_format == "hard":
        raise UserError(f"--verify-teacher: STORE {store.path} holds hard labels (classes only): nothing to compare")
    recorded = labelling.teachers[0] if labelling.teachers else {}
    teacher = load_teacher(args.verify_teacher, args.teacher_path, s.num_classes, args.teacher_source,
                           weights=recorded_weights(recorded, args.verify_teacher, args.teacher_path))
    if recorded.get("mean"):
        teacher.mean, teacher.std = list(recorded["mean"]), list(recorded["std"])
    ens = Ensemble([teacher], "mean", 0.5, torch.device(args.device or "cpu"))
    temperature = labelling.temperature or args.temp
    read, worst, where = store.reader(index), 0.0, None
    for i in spread(range(len(index)), verify_sample(args)):
        coords, flips, classes, values = read(i)
        img = index.load(index.samples[i][0])
        pixels = replay.render_batch([img] * len(coords), coords, flips, int(s.input_size),
                                     store.labelled_resample)
        probs = torch.softmax(ens(pixels.to(ens.device), None, None, None)[0].float() / temperature, dim=1).cpu()
        err = (probs.gather(1, classes.long()) - values.float()).abs().max().item()
        if err > worst:
            worst, where = err, i
    tol = args.tolerance if args.tolerance is not None else 2e-3  # float16 probabilities round by <= 2^-11
    print(f"verify: worst |stored - recomputed| probability {worst:.3g} (image {where}); tolerance {tol:g}", flush=True)
    if worst > tol:
        raise UserError(f"--verify-teacher {args.verify_teacher}: does not reproduce the labels of STORE "
                        f"{store.path}: worst probability error {worst:.3g} > {tol:g} at {index.samples[where][0]}")
    print("ok: the teacher reproduces the stored labels", flush=True)


# ----------------------------------------------------------------------------- --check

# ----------------------------------------------------------------------------- --verify-teacher

def verify_sample(args: argparse.Namespace) -> int:
    """--verify-teacher's --sample (default: DEFAULT_SAMPLE batches; --check's default is all)."""
    return DEFAULT_SAMPLE if args.sample is None else args.sample


def compare(stored: torch.Tensor, recomputed: torch.Tensor, tol: float,
            kept: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Per sample: relative error over the stored classes (``kept``; a top-k store's fill is an
    aggregate, not a teacher logit), and whether the argmax agrees (a disagreement between two
    classes within 2 * tol of each other is a near-tie)."""
    stored, recomputed = stored.float(), recomputed.float()
    kept = torch.isfinite(stored) if kept is None else kept & torch.isfinite(stored)
    diff = torch.where(kept, (stored - recomputed).abs(), torch.zeros_like(stored)).amax(dim=1)
    scale = torch.where(kept, recomputed.abs(), torch.zeros_like(stored)).amax(dim=1).clamp_min(1e-6)
    rel = diff / scale
    a_stored, a_new = stored.argmax(dim=1), recomputed.argmax(dim=1)
    agree = a_stored == a_new
    gap = recomputed.gather(1, a_new[:, None]) - recomputed.gather(1, a_stored[:, None])
    tie = ~agree & (gap[:, 0] <= 2 * tol * scale)
    return {"rel": rel, "agree": agree, "tie": tie}


def amp_of(amp: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """Relabel's autocast (``amp``: its name, None: off), reproduced where it ran (CUDA); elsewhere float32."""
    return precision.dtype_of_name(amp) if device.type == "cuda" else None


def verify_teacher(bs: Store, index, args: argparse.Namespace) -> None:
    from softlabel.teachers import Ensemble
    s, labelling = bs.settings, bs.labelling()
    teachers = verified_teachers(bs, args)
    device = verify_device(args.device)
    amp = amp_of(labelling.amp, device)
    ens = Ensemble(teachers, labelling.ensemble, labelling.primary_weight, device, amp)
    temperature = labelling.temperature or 1.0
    unmatched = labelling.amp in ("bfloat16", "float16") and amp is None
    if unmatched:
        print(f"note: the store was labelled under {labelling.amp} autocast on a GPU; in float32 on {device} "
              f"the check is looser (tolerance {TOLERANCE_UNMATCHED:g}); run it on a GPU for a tight one", flush=True)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE_UNMATCHED if unmatched else TOLERANCE

    bs.check_complete(s.epochs)
    jobs = spread(bs.jobs(s.epochs), verify_sample(args))
    rel_all, agree_all, tie_all, where = relabelled(bs, index, jobs, ens, temperature, tol, device)
    worst = int(rel_all.argmax())
    e, b, k = where[worst]
    n, n_agree, n_tie = len(rel_all), int(agree_all.sum()), int(tie_all.sum())
    label = "full logits" if s.label_format != "topk" else f"the stored top-{s.topk} logits"
    print(f"verify: {len(jobs)} batches, {n} samples re-rendered from {args.data} and labelled by "
          f"{', '.join(t.arch for t in teachers)} (temperature {temperature:g}"
          f"{', autocast ' + str(amp).replace('torch.', '') if amp else ''}); compared on {label}", flush=True)
    print(f"worst relative error: {float(rel_all[worst]):.3g} (epoch {e}, batch {b}, sample {k}); "
          f"tolerance {tol:g}", flush=True)
    print(f"argmax agreement: {100.0 * n_agree / n:.2f}% ({n_agree}/{n})"
          + (f"; {n_tie} disagreement(s) are near-ties" if n_tie else ""), flush=True)
    wrong = n - n_agree - n_tie
    if float(rel_all[worst]) > tol or wrong:
        raise UserError(f"--verify-teacher {args.verify_teacher}: does not reproduce the labels of STORE {bs.path}: "
                        f"worst relative error {float(rel_all[worst]):.3g} > tolerance {tol:g} at "
                        f"{bs.reader().where(e, b)} sample {k}, argmax agreement {100.0 * n_agree / n:.1f}%; "
                        f"wrong teacher, wrong --data, or wrong --fkd_seed/--input-size?"
                        if float(rel_all[worst]) > tol else
                        f"--verify-teacher {args.verify_teacher}: {wrong} of {n} argmax disagree with STORE {bs.path}")
    print(f"ok: the teacher reproduces the stored labels ({n} samples)", flush=True)


def verified_teachers(bs: Store, args: argparse.Namespace) -> list:
    """--verify-teacher's teachers, each with the weights and normalization the store records for it."""
    from softlabel.teachers import load_teachers, split_list, weight_paths
    archs = split_list(args.verify_teacher)
    if not archs:
        raise UserError("--verify-teacher: name the teacher's architecture (several: A,B,C)")
    paths = weight_paths(args.teacher_path, archs)
    recorded = list(bs.labelling().teachers)
    if recorded and len(recorded) != len(archs):
        raise UserError(f"--verify-teacher {args.verify_teacher}: the store was labelled by {len(recorded)} "
                        f"teacher(s) ({', '.join(str(t.get('arch')) for t in recorded)}); name them all, in order")
    teachers = load_teachers(archs, paths, None, args.teacher_source,
                             [recorded_weights(rec, a, p)
                              for rec, a, p in zip(recorded or [{}] * len(archs), archs, paths)])
    if teachers[0].num_classes != bs.settings.num_classes:
        raise UserError(f"--verify-teacher {args.verify_teacher}: the teacher has {teachers[0].num_classes} "
                        f"outputs, the store {bs.settings.num_classes} classes")
    for t, rec in zip(teachers, recorded):  # each teacher in the normalization relabel gave it
        if rec.get("mean") and rec.get("std"):
            t.mean, t.std = [float(v) for v in rec["mean"]], [float(v) for v in rec["std"]]
        if rec.get("weights_sha256") and rec["weights_sha256"] != t.weights_sha256:
            print(f"note: teacher {t.arch}'s weights (sha256 {t.weights_sha256[:12]}) are not the store's "
                  f"(sha256 {rec['weights_sha256'][:12]}); comparing anyway", flush=True)
    return teachers


def relabelled(bs: Store, index, jobs: list, ens, temperature: float, tol: float, device: torch.device) -> tuple:
    """The stored steps ``jobs`` re-rendered and labelled again by ``ens``: (relative error, argmax
    agreement, near-tie per sample, and each sample's (epoch, batch, position))."""
    dataset = bs.stored_steps(index, jobs)
    rel, agree, tie, where = [], [], [], []
    for i, (e, b) in enumerate(jobs):
        item = dataset[i]
        pixels = item["pixels"].to(device)
        partners = None if item["partners"] is None else item["partners"].to(device)
        combined, _ = ens(pixels, partners, item["mix_lam"], item["mix_bbox"])
        r = compare(item["soft_label"], (combined / temperature).cpu(), tol, item["stored"])
        rel.append(r["rel"])
        agree.append(r["agree"])
        tie.append(r["tie"])
        where += [(e, b, k) for k in range(len(r["rel"]))]
    return torch.cat(rel), torch.cat(agree), torch.cat(tie), where


def verify_device(name: Optional[str]) -> torch.device:
    """--device (default: cuda where there is one, as relabel)."""
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise UserError(f"--device {name}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here; use --device cpu")
    return device


# ----------------------------------------------------------------------------- teacher weight files

def recorded_weights(rec: dict, arch: Optional[str], path: Optional[str]) -> Optional[str]:
    """The published weights a store names for a teacher re-run as ``arch`` without a file."""
    if path or not rec.get("weights") or rec.get("source") == "private" or rec.get("arch") != arch:
        return None
    return rec["weights"] if rec.get("source") == "torchvision" else None  # timm: the arch holds the tag


def cached_weights_file(rec: dict) -> str:
    """The cache file of the published weights a teacher entry names (stores that record no
    name were labelled with torchvision's DEFAULT, what relabel loaded then)."""
    from softlabel import models
    arch = str(rec.get("arch"))
    if rec.get("source") == "torchvision":
        return models.torchvision_cached_weights(arch, rec.get("weights") or "DEFAULT")[0]
    if rec.get("source") == "timm":
        return models.timm_cached_weights(arch)
    raise UserError(f"teacher {arch} was loaded from a file; pass it to --verify-weights")


def verify_weights(root: str, recorded: list, given: str) -> None:
    """One line per teacher: does its weight file's sha256 match the store's record? Fails
    (after every line) on a difference or a file it cannot find."""
    from softlabel.teachers import file_sha256
    recorded = [t for t in recorded if isinstance(t, dict)]
    if not any(t.get("weights_sha256") for t in recorded):
        raise UserError(f"--verify-weights: STORE {root} records no teacher weights sha256 (an upstream store?)")
    files = [f.strip() for f in given.split(",")] if given else [""] * len(recorded)
    if len(files) != len(recorded):
        raise UserError(f"--verify-weights gives {len(files)} files for the store's {len(recorded)} teachers "
                        f"({', '.join(str(t.get('arch')) for t in recorded)}); one per teacher, in order (an empty "
                        f"item: the cache's file)")
    bad = 0
    for n, (rec, path) in enumerate(zip(recorded, files)):
        name = f"teacher {n} {rec.get('arch')} ({weights_name(rec)})"
        try:
            path = path or cached_weights_file(rec)
            if not os.path.isfile(path):
                raise UserError(f"no file {path}")
        except UserError as exc:
            print(f"{name}: NOT CHECKED: {str(exc).removeprefix('error: ')}", flush=True)
            bad += 1
            continue
        digest, want = file_sha256(path), rec.get("weights_sha256")
        if digest == want:
            print(f"{name}: same file: {path} has the recorded sha256 {digest[:16]}", flush=True)
        else:
            print(f"{name}: DIFFERENT file: {path} has sha256 {digest[:16]}, the store records {str(want)[:16]}",
                  flush=True)
            bad += 1
    if bad:
        raise UserError(f"--verify-weights: {bad} of {len(recorded)} teacher file(s) are not the ones STORE {root} "
                        f"was labelled with (or could not be found)")


# ----------------------------------------------------------------------------- main

def main(args: argparse.Namespace) -> None:
    if args.sample is not None and args.sample < 0:
        raise UserError(f"--sample must be >= 0, got {args.sample}")
    if args.tolerance is not None and not args.tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {args.tolerance}")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be at least 1, got {args.input_size}")
    root = args.store
    layout = layout_of(root, "STORE")
    if args.verify_teacher is not None and not args.data:
        raise UserError("--verify-teacher needs --data DIR, the image folder the store was made from")
    if layout == "per-image":
        return per_image_info(root, args)
    # the images are checked by --check and --verify-teacher, with a note rather than a refusal
    store = open_store(root, flag="STORE", request=Request(input_size=args.input_size, fkd_seed=args.fkd_seed,
                                                           need_pixels=False))
    if args.verify_teacher is not None and store.settings.input_size is None:
        raise UserError(f"STORE {root} is an upstream store (no manifest), which does not record its crop "
                        f"size: --verify-teacher needs --input-size (and --fkd_seed, default {DEFAULT_SEED})")
    index = scan_image_folder(args.data, "--data") if args.data else None
    print_summary(root, store.summary(index))
    if args.check:
        print(f"ok: {store.check(index, args.sample or 0)}", flush=True)
    if args.verify_weights is not None:
        verify_weights(root, store.teachers(), args.verify_weights)
    if args.verify_teacher is not None:
        store, note = store.with_images(index, f"--data {args.data}")
        if note:
            print(note, flush=True)
        verify_teacher(store, index, args)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
