"""Inspect a soft-label store, check every batch file, or verify its labels against a teacher.

    python scripts/fkd_info.py STORE                      # summary: format, sizes, labels, teachers
    python scripts/fkd_info.py STORE --check              # load and validate every batch file
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
import pathlib
import sys
from typing import Any, Optional

import torch

from softlabel import precision, replay
from softlabel.data import scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import Request, detect, open_store, per_image, upstream
from softlabel.stores import batch as store
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
                        "on the first bad or missing file")
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
    g.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="K",
                   help=f"batches to recompute, spread evenly over the store from the first to the last "
                        f"(default: {DEFAULT_SAMPLE}; 0: all)")
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

def fmt_floats(values: Any) -> str:
    return "[" + ", ".join("-" if v is None else f"{float(v):.4g}" for v in values) + "]" if values else "-"


def summary_ours(root: str, m: dict) -> list[tuple[str, str]]:
    epochs, batches = int(m["epochs"]), int(m["batches_per_epoch"])
    packed = m.get("container") == "epoch"
    opened = store.BatchStore(root, m, "STORE")
    labelled = len(opened.jobs(epochs))
    files_wanted = epochs if packed else labelled
    present = files_wanted - len(opened.missing(epochs))
    label = "full" if m["label_format"] == "full" else f"topk {m['topk']}" + (
        " + residual fill" if m.get("topk_fill") else " (the rest -inf)")
    dtype = m.get("label_dtype") or ("float16" if m.get("use_fp16") else "float32")
    mix = m["mix_type"]
    alpha = m.get("mixup") if mix == "mixup" else m.get("cutmix") if mix == "cutmix" else None
    rows = [
        ("format", "ours v%d (manifest.json)" % m["format_version"]
         + (f", converted from {'our' if m['converted_from'].get('kind') == 'ours' else 'an upstream'} "
            f"{m['converted_from'].get('kind')} store" if m.get("converted_from") else "")),
        ("epochs", str(epochs)),
        ("batches per epoch", str(batches)),
        ("label files", f"{present} of {files_wanted} {'epoch files (packed)' if packed else 'batch files'} present"),
        ("labelled steps", f"{labelled} of {epochs * batches}" + (
            f" (pruned: label_keep {store.keep_of(m):g}; the trainer cycles them)" if labelled < epochs * batches
            else "")),
        ("batch size", str(m["batch_size"])),
        ("samples", str(m["num_samples"])),
        ("classes", f"{m['num_classes']} ({len(m['class_names'])} class folders"
                    + (f", {m['class_mapping']}" if m.get("class_mapping") else "") + ")"),
        ("label format", f"{label} ({dtype})"),
        ("mix type", mix + (f" (alpha {alpha:g})" if alpha is not None else "")),
        ("crops", f"{m['input_size']}px, scale " + (f"{m['min_scale_crops']:g}..{m['max_scale_crops']:g}"
                                                     if m.get("min_scale_crops") is not None else "not recorded")
                  + f", fkd seed {m['fkd_seed']}"),
    ]
    if not m.get("teachers"):
        rows.append(("teacher", "not recorded"))
    for n, t in enumerate(m.get("teachers") or []):
        rows.append((f"teacher {n}" if len(m["teachers"]) > 1 else "teacher",
                     f"{t.get('arch')} ({t.get('source')}, {weights_name(t)}, "
                     f"sha256 {str(t.get('weights_sha256'))[:12]}, "
                     f"{t.get('num_classes')} classes, mean {fmt_floats(t.get('mean'))}, "
                     f"std {fmt_floats(t.get('std'))})"))
    if m.get("ensemble"):
        rows.append(("ensemble", m["ensemble"] + (f" (primary weight {m['primary_weight']:g})"
                                                  if m.get("primary_weight") is not None else "")))
    rows.append(("temperature", f"{m['temperature']:g}" if m.get("temperature") is not None else "-"))
    rows.append(("autocast", str(m.get("amp") or "off")))
    rows.append(("student normalization", f"mean {fmt_floats(m.get('mean'))}, std {fmt_floats(m.get('std'))}"))
    data = (m.get("args") or {}).get("data")
    rows.append(("made from", f"{data or '?'} (fingerprint {str(m.get('dataset_fingerprint'))[:12]})"))
    return rows


def summary_upstream(root: str, args: argparse.Namespace, index) -> list[tuple[str, str]]:
    epochs, batches, files = upstream.layout(root)
    first = upstream.load_upstream(store.batch_path(root, 0, 0))
    kind = "sre2l" if len(first) == 6 else "prism"
    batch_size, soft = len(first[0]), first[5]
    samples = upstream.samples_from_batches(root, batches, batch_size)
    said = "from the last batch of epoch 0" if samples is not None else "unknown: epoch 0's last batch is missing"
    if index is not None:
        said = f"--data has {len(index)} images" + ("" if samples in (None, len(index)) else
                                                     f"; the batches say {samples}: not the images it was made from")
    mix = "none" if first[2] is None else ("cutmix" if first[4] is not None else "mixup")
    return [
        ("format", f"legacy {kind} (no manifest; lists of {len(first)} "
                   f"{'without' if kind == 'sre2l' else 'with'} sample indices)"),
        ("epochs", str(epochs)),
        ("batches per epoch", str(batches)),
        ("batch files", f"{files} of {epochs * batches} present"),
        ("batch size", str(batch_size)),
        ("samples", f"{samples if samples is not None else '?'} ({said})"),
        ("classes", str(int(soft.shape[1]))),
        ("label format", f"full ({str(soft.dtype).replace('torch.', '')})"),
        ("mix type", mix),
        ("crops", (f"{args.input_size}px (--input-size)" if args.input_size else "size not recorded (--input-size)")
                  + (f", fkd seed {args.fkd_seed} (--fkd_seed)" if args.fkd_seed is not None else
                     f", fkd seed not recorded (upstream default {DEFAULT_SEED})")),
        ("teacher", "not recorded (an upstream store has no manifest)"),
    ]


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
    m = dict(store.manifest)
    ours = store.format == "per-image"
    t = m.get("teacher") or {}
    print_summary(root, [
        ("format", f"per-image v{m['format_version']} ({per_image.MANIFEST})" if ours else
         "FKD's own files (FKD_SLG: <split>/<class>/<image>.tar, numpy arrays)"),
        ("images", str(m["num_samples"])),
        ("classes", f"{m['num_classes']} ({len(m['class_names'])} class folders)" + ("" if ours else " (--num-classes)")),
        ("crops per image", str(m["num_crops"])),
        ("label type", f"{m['label_type']} (top {m.get('top_k')}, {'float16' if m.get('use_fp16') else 'float32'}"
                       + (f", temperature {m['temperature']:g})" if ours else ", inferred from the arrays)")),
        ("crops", f"{m['input_size']}px, scale {fmt_floats([m['min_scale_crops'], m['max_scale_crops']])}, fkd seed "
                  f"{m['fkd_seed']}" if ours else f"{m['input_size']}px (--input-size), scale and seed not recorded"),
        ("teacher", f"{t.get('arch')} ({t.get('source')}, {weights_name(t)}, "
                    f"sha256 {str(t.get('weights_sha256'))[:12]})" if ours else "not recorded"),
        ("made from", f"fingerprint {str(m.get('dataset_fingerprint'))[:12]}" if ours else str(m["args"]["data"])),
    ])
    if args.check:  # every file through the store's own validator
        if index is not None:
            store.check_complete(0, index)
            for i in range(len(index)):
                store.read_labels(index, i)
            checked = len(index)
        else:  # ours, without its images: every file under it
            paths = sorted(str(p) for p in pathlib.Path(root).rglob("*.tar"))
            if len(paths) != m["num_samples"]:
                raise UserError(f"STORE {root}: {len(paths)} label files for {m['num_samples']} images")
            for path in paths:
                per_image.read_file(path, m)
            checked = len(paths)
        print(f"ok: {checked} files checked", flush=True)
    if args.verify_weights is not None:
        verify_weights(root, [t] if ours else [], args.verify_weights)
    if args.verify_teacher is not None:
        verify_per_image(store, index, args)


def verify_per_image(store, index, args: argparse.Namespace) -> None:
    """Re-render the crops of a few images as their generator did (ours: bilinear; FKD_SLG: bicubic),
    run the teacher, and compare its probabilities at the stored classes with the stored values."""
    from softlabel.teachers import Ensemble, load_teacher
    if index is None:
        raise UserError("--verify-teacher needs --data DIR, the image folder the store was made from")
    m = store.manifest
    if m["label_type"] == "hard":
        raise UserError(f"--verify-teacher: STORE {store.path} holds hard labels (classes only): nothing to compare")
    recorded = m.get("teacher") or {}
    teacher = load_teacher(args.verify_teacher, args.teacher_path, m["num_classes"], args.teacher_source,
                           weights=recorded_weights(recorded, args.verify_teacher, args.teacher_path))
    if recorded.get("mean"):
        teacher.mean, teacher.std = list(recorded["mean"]), list(recorded["std"])
    ens = Ensemble([teacher], "mean", 0.5, torch.device(args.device or "cpu"))
    resample = "bilinear" if store.format == "per-image" else "bicubic"  # FKD_SLG labelled bicubic crops
    temperature = float(m.get("temperature") or args.temp)
    read, worst, where = store.reader(index), 0.0, None
    for i in sample_jobs(list(range(len(index))), args.sample):
        coords, flips, classes, values = read(i)
        img = index.load(index.samples[i][0])
        pixels = replay.render_batch([img] * len(coords), coords, flips, int(m["input_size"]), resample)
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

def check_store(root: str, manifest: dict) -> str:
    """Every labelled step of the store, validated; says how many. One UserError naming the
    first missing or bad file."""
    bs = store.BatchStore(root, manifest, "STORE")
    epochs = int(manifest["epochs"])
    bs.check_complete(epochs)
    reader = bs.reader()
    jobs = bs.jobs(epochs)
    shown = None
    for e, b in jobs:
        if shown is None or shown.epoch != e:
            shown = store.EpochSamples(int(manifest["num_samples"]), e)
        # the store's one validator: types, ranges, NaN, geometry, then each sample once an epoch
        shown.add(reader.read(e, b).index, reader.where(e, b))
    if manifest.get("container") == "epoch":
        return f"{len(jobs)} steps checked in {epochs} epoch files"
    return f"{len(jobs)} files checked"


# ----------------------------------------------------------------------------- --verify-teacher

def sample_jobs(jobs: list, k: int) -> list:
    """``k`` of the jobs spread evenly from the first to the last (0 or more than there are: all)."""
    if k <= 0 or k >= len(jobs):
        return list(jobs)
    if k == 1:
        return [jobs[0]]
    return [jobs[i] for i in sorted({round(i * (len(jobs) - 1) / (k - 1)) for i in range(k)})]


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


def amp_of(manifest: dict, device: torch.device) -> Optional[torch.dtype]:
    """Relabel's autocast, reproduced where it ran (CUDA); elsewhere float32."""
    return precision.dtype_of_name(manifest.get("amp")) if device.type == "cuda" else None


def verify_teacher(root: str, manifest: dict, index, args: argparse.Namespace) -> None:
    from softlabel.loader import StoreBatches
    from softlabel.teachers import Ensemble, load_teachers, split_list, weight_paths

    archs = split_list(args.verify_teacher)
    if not archs:
        raise UserError("--verify-teacher: name the teacher's architecture (several: A,B,C)")
    paths = weight_paths(args.teacher_path, archs)
    recorded = manifest.get("teachers") or []
    if recorded and len(recorded) != len(archs):
        raise UserError(f"--verify-teacher {args.verify_teacher}: the store was labelled by {len(recorded)} "
                        f"teacher(s) ({', '.join(str(t.get('arch')) for t in recorded)}); name them all, in order")
    teachers = load_teachers(archs, paths, None, args.teacher_source,
                             [recorded_weights(rec, a, p)
                              for rec, a, p in zip(recorded or [{}] * len(archs), archs, paths)])
    if teachers[0].num_classes != int(manifest["num_classes"]):
        raise UserError(f"--verify-teacher {args.verify_teacher}: the teacher has {teachers[0].num_classes} "
                        f"outputs, the store {manifest['num_classes']} classes")
    for t, rec in zip(teachers, recorded):  # each teacher in the normalization relabel gave it
        if rec.get("mean") and rec.get("std"):
            t.mean, t.std = [float(v) for v in rec["mean"]], [float(v) for v in rec["std"]]
        if rec.get("weights_sha256") and rec["weights_sha256"] != t.weights_sha256:
            print(f"note: teacher {t.arch}'s weights (sha256 {t.weights_sha256[:12]}) are not the store's "
                  f"(sha256 {rec['weights_sha256'][:12]}); comparing anyway", flush=True)
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise UserError(f"--device {args.device}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    amp = amp_of(manifest, device)
    ens = Ensemble(teachers, manifest.get("ensemble") or "mean", manifest.get("primary_weight") or 0.5, device, amp)
    temperature = float(manifest.get("temperature") or 1.0)
    unmatched = manifest.get("amp") in ("bfloat16", "float16") and amp is None
    if unmatched:
        print(f"note: the store was labelled under {manifest['amp']} autocast on a GPU; in float32 on {device} "
              f"the check is looser (tolerance {TOLERANCE_UNMATCHED:g}); run it on a GPU for a tight one", flush=True)
    tol = args.tolerance if args.tolerance is not None else TOLERANCE_UNMATCHED if unmatched else TOLERANCE

    bs = store.BatchStore(root, manifest, "STORE")
    bs.check_complete(int(manifest["epochs"]))
    jobs = sample_jobs(bs.jobs(int(manifest["epochs"])), args.sample)
    dataset = StoreBatches(root, index, manifest, jobs, with_stored=True)
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
    rel_all, agree_all, tie_all = torch.cat(rel), torch.cat(agree), torch.cat(tie)
    worst = int(rel_all.argmax())
    e, b, k = where[worst]
    n, n_agree, n_tie = len(rel_all), int(agree_all.sum()), int(tie_all.sum())
    label = "full logits" if manifest.get("label_format") != "topk" else f"the stored top-{manifest['topk']} logits"
    print(f"verify: {len(jobs)} batches, {n} samples re-rendered from {args.data} and labelled by "
          f"{', '.join(t.arch for t in teachers)} (temperature {temperature:g}"
          f"{', autocast ' + str(amp).replace('torch.', '') if amp else ''}); compared on {label}", flush=True)
    print(f"worst relative error: {float(rel_all[worst]):.3g} (epoch {e}, batch {b}, sample {k}); "
          f"tolerance {tol:g}", flush=True)
    print(f"argmax agreement: {100.0 * n_agree / n:.2f}% ({n_agree}/{n})"
          + (f"; {n_tie} disagreement(s) are near-ties" if n_tie else ""), flush=True)
    wrong = n - n_agree - n_tie
    if float(rel_all[worst]) > tol or wrong:
        raise UserError(f"--verify-teacher {args.verify_teacher}: does not reproduce the labels of STORE {root}: "
                        f"worst relative error {float(rel_all[worst]):.3g} > tolerance {tol:g} at "
                        f"{bs.reader().where(e, b)} sample {k}, argmax agreement {100.0 * n_agree / n:.1f}%; "
                        f"wrong teacher, wrong --data, or wrong --fkd_seed/--input-size?"
                        if float(rel_all[worst]) > tol else
                        f"--verify-teacher {args.verify_teacher}: {wrong} of {n} argmax disagree with STORE {root}")
    print(f"ok: the teacher reproduces the stored labels ({n} samples)", flush=True)


# ----------------------------------------------------------------------------- teacher weight files

def weights_name(t: dict) -> str:
    """A teacher entry's weights for a summary: the published weights' name, or a file."""
    if t.get("weights"):
        return str(t["weights"])
    return "a weight file" if t.get("source") == "private" else "weights name not recorded"


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
    if args.sample < 0:
        raise UserError(f"--sample must be >= 0, got {args.sample}")
    if args.tolerance is not None and not args.tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {args.tolerance}")
    if args.input_size is not None and args.input_size < 1:
        raise UserError(f"--input-size must be at least 1, got {args.input_size}")
    root = args.store
    kind = {"batch": "ours", "upstream": "legacy", "per-image": "per-image", "fkd-upstream": "per-image"}[
        detect(root, "STORE")]
    if args.verify_teacher is not None and not args.data:
        raise UserError("--verify-teacher needs --data DIR, the image folder the store was made from")
    if kind == "per-image":
        return per_image_info(root, args)
    if args.verify_teacher is not None and kind == "legacy" and args.input_size is None:
        raise UserError(f"STORE {root} is an upstream store (no manifest), which does not record its crop "
                        f"size: --verify-teacher needs --input-size (and --fkd_seed, default {DEFAULT_SEED})")
    index = scan_image_folder(args.data, "--data") if args.data else None
    request = Request(input_size=args.input_size, fkd_seed=args.fkd_seed)

    if kind == "ours":  # the images are checked below, with a note rather than a refusal
        manifest = dict(open_store(root, flag="STORE", request=request).manifest)
        print_summary(root, summary_ours(root, manifest))
    else:
        print_summary(root, summary_upstream(root, args, index))
        manifest = None

    if args.check:
        if manifest is None:
            epochs, batches, _ = upstream.layout(root)
            missing = [store.batch_path(root, e, b) for e in range(epochs) for b in range(batches)
                       if not os.path.isfile(store.batch_path(root, e, b))]
            if missing:
                raise UserError(f"STORE {root}: {len(missing)} of {epochs * batches} batch files missing "
                                f"(first: {missing[0]})")
            manifest = dict(open_store(root, index, flag="STORE", data_arg="--data", request=request,
                                       need_pixels=False).manifest)
        print(f"ok: {check_store(root, manifest)}", flush=True)

    if args.verify_weights is not None:
        verify_weights(root, (manifest or {}).get("teachers") or [], args.verify_weights)

    if args.verify_teacher is not None:
        if kind == "ours":
            if index is not None and len(index) != int(manifest["num_samples"]):
                raise UserError(f"--data {args.data}: {len(index)} images, but STORE {root} was made from "
                                f"{manifest['num_samples']}; not the images it was made from")
            if manifest.get("dataset_fingerprint") and index.fingerprint() != manifest["dataset_fingerprint"]:
                print(f"note: --data {args.data} is not the folder the store was made from (file names or "
                      f"sizes differ from {(manifest.get('args') or {}).get('data')}); comparing anyway", flush=True)
        elif manifest is None:
            manifest = dict(open_store(root, index, flag="STORE", data_arg="--data", request=request).manifest)
        verify_teacher(root, manifest, index, args)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
