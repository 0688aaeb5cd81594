"""Convert any readable soft-label store into ours, optionally into the compact top-k format.

    python scripts/convert_labels.py SRC DST --label-format topk --topk 5
    python scripts/convert_labels.py UPSTREAM_STORE DST --data DIR --input-size 224 --fkd_seed 42 \
        --label-format topk --topk 5          # an SRe2L / G-VBSM / PRISM store (no manifest)
    python scripts/convert_labels.py FKD_SAVE/imagenet DST --data IMAGENET/train --num-classes 1000
                                              # FKD's own per-image files -> our per-image store

SRC is read with the store reader (safe loading; numpy scalars admitted for upstream stores,
nothing that can run code) and every batch is validated before it is re-encoded. A top-k DST is
packed one file per epoch (format 2, docs/stores.md), whatever SRC is: a full store, a top-k store
of format 1 (one file per step), an upstream store. Each step is written atomically; rerunning the
same command after an interruption skips the finished ones. DST is locked while a conversion
writes it.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional

from softlabel import files, tracking
from softlabel.data import FolderIndex, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import (FKD_UPSTREAM, PER_IMAGE, UPSTREAM, Request, Store, create_store, open_store, per_image,
                              store_class, topk)
from softlabel.stores import batch as store
from softlabel.streams import DEFAULT_SEED, check_seed


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", metavar="SRC", help="store to read (ours, or an upstream one)")
    p.add_argument("dst", metavar="DST", help="store to write (created; resumed if it exists)")
    p.add_argument("--label-format", choices=["full", "topk"], default="topk",
                   help="format of DST (default: topk)")
    p.add_argument("--topk", type=int, default=5, metavar="K", help="logits kept per sample with topk (default: 5)")
    p.add_argument("--topk-fill", choices=["residual", "none"], default="residual", help=topk.TOPK_FILL_HELP)
    p.add_argument("--topk-fill-temperature", type=float, default=1.0, metavar="T", help=topk.FILL_TEMPERATURE_HELP)
    g = p.add_argument_group("upstream stores (what they do not record)")
    g.add_argument("--data", metavar="DIR", default=None,
                   help="the image folder the store was made from (needed for an upstream store: sample "
                        "count, class names, dataset fingerprint)")
    g.add_argument("--input-size", type=int, default=None,
                   help="crop size of the upstream relabel run (FKD's own files: of its trainer, default 224)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="FKD's own files: the teacher's classes (they do not record it; default 1000, as FKD)")
    g.add_argument("--soft_label_type", default=None, metavar="TYPE",
                   help="FKD's own files: marginal_renorm_k5 for renormalized top-5 files (the shape does not say)")
    g.add_argument("--temp", type=float, default=1.0, help="FKD's own files: FKD_SLG's --temp (default: 1.0)")
    g.add_argument("--fkd-seed", "--fkd_seed", dest="fkd_seed", type=int, default=None,
                   help=f"seed of the upstream relabel run (default: {DEFAULT_SEED})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


# What SRC lacks without its images, per kind that needs them.
NEEDS_DATA = {UPSTREAM: "is an upstream store (no manifest): pass --data DIR, the image folder it was made from, "
                        "and --input-size",
              FKD_UPSTREAM: "holds FKD's own per-image files, found through the images they label: pass --data DIR "
                            "(FKD's train folder)"}


def open_source(args: argparse.Namespace) -> tuple[Store, Optional[FolderIndex]]:
    """SRC through the store interface, complete, and the images it needs (None: it needs none)."""
    cls = store_class(args.src, "SRC")
    if cls.kind == PER_IMAGE:
        raise UserError(f"SRC {args.src} is our per-image store already; this converts batch stores and FKD's "
                        f"own per-image files")
    if cls.needs_images and not args.data:
        raise UserError(f"SRC {args.src} {NEEDS_DATA[cls.kind]}")
    index = scan_image_folder(args.data, "--data") if cls.needs_images else None
    if cls.layout == "per-image":
        request = Request(input_size=args.input_size, num_classes=args.num_classes, label_type=args.soft_label_type)
    else:
        request = Request(input_size=args.input_size, fkd_seed=args.fkd_seed)
    src = open_store(args.src, index, flag="SRC", layout=cls.layout, data_arg="--data", request=request)
    src.check_complete(src.settings.epochs or 0, index)
    return src, index


def target_manifest(source: Store, args: argparse.Namespace) -> dict:
    src = source.manifest
    if src["label_format"] == "topk":
        if args.label_format == "full":
            raise UserError(f"--label-format full: SRC {args.src} keeps only the top {src['topk']} logits; "
                            f"the others cannot be restored")
        if args.topk > src["topk"]:
            raise UserError(f"--topk {args.topk}: SRC {args.src} keeps only the top {src['topk']} logits")
    if args.label_format == "topk" and args.topk > src["num_classes"]:
        raise UserError(f"--topk {args.topk}: SRC {args.src} has {src['num_classes']} classes; keep at most "
                        f"{src['num_classes']}")
    manifest = source.content()
    manifest.update(store.container_of(args.label_format))  # top-k: packed, one file per epoch
    manifest["label_keep"] = store.keep_of(src)               # a pruned store stays pruned
    manifest["label_format"] = args.label_format
    manifest["topk"] = args.topk if args.label_format == "topk" else None
    manifest["topk_fill"] = topk.fill_setting(args.label_format, args.topk_fill)
    manifest["topk_fill_temperature"] = manifest["topk_fill"] and args.topk_fill_temperature
    if args.label_format == "topk":
        manifest["label_dtype"] = "float16"
    manifest["converted_from"] = {"path": os.path.abspath(args.src), "kind": source.source_name(),
                                  "label_format": src["label_format"], "topk": src["topk"],
                                  "topk_fill": src.get("topk_fill")}
    return manifest


def convert_per_image(args: argparse.Namespace, src: Store, index: FolderIndex) -> None:
    """FKD's own per-image files into our per-image store: the same crops and quantized labels,
    with a manifest that records what FKD's files do not (classes, crop size, the images)."""
    m = dict(src.manifest)
    manifest = {k: m.get(k) for k in per_image.CONTENT_KEYS}
    manifest.update({"format": per_image.FORMAT, "format_version": per_image.FORMAT_VERSION,
                     "created_by": "scripts/convert_labels.py", "class_names": m["class_names"],
                     "mean": m["mean"], "std": m["std"], "top_k": m["top_k"], "interpolation": m["interpolation"],
                     "dataset_fingerprint": index.fingerprint(), "temperature": args.temp,
                     "converted_from": {"kind": src.source_name(), "label_type": m["label_type"]}})
    writer = create_store(args.dst, manifest, flag="DST", index=index)
    bar = tracking.progress(len(index), "convert", disable=args.no_progress)
    written, start = 0, time.time()
    for i in range(len(index)):
        if not writer.exists(i):
            coords, flips, classes, values = src.read_labels(index, i)
            classes = classes.to(store.smallest_int_dtype(m["num_classes"]))
            values = None if values is None else (values.half() if m["use_fp16"] else values.float())
            writer.write(i, coords, flips, classes, values)
            written += 1
        bar.update(1)
    bar.close()
    print(f"convert: wrote {written} of {len(index)} per-image files in {time.time() - start:.1f}s", flush=True)


def main(args: argparse.Namespace) -> None:
    if args.topk < 1:
        raise UserError(f"--topk must be at least 1, got {args.topk}")
    if not 0 < args.topk_fill_temperature <= 1000:
        raise UserError(f"--topk-fill-temperature must be in (0, 1000], got {args.topk_fill_temperature}")
    if args.fkd_seed is not None:
        check_seed(args.fkd_seed, "--fkd-seed")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise UserError(f"DST {args.dst} is SRC; write the converted store to a new directory")
    files.refuse_output_inside(args.dst, "DST", [("SRC", args.src), ("--data", args.data)])
    src, index = open_source(args)
    if src.layout == "per-image":
        return convert_per_image(args, src, index)
    writer = create_store(args.dst, target_manifest(src, args), flag="DST")
    reader = src.reader()
    jobs = src.jobs(src.settings.epochs)
    bar = tracking.progress(len(jobs), "convert", disable=args.no_progress)
    written, start = 0, time.time()
    for e, b in jobs:
        if not writer.exists(e, b):
            writer.write(e, b, reader.read(e, b))
            written += 1
        bar.update(1)
    bar.close()
    writer.finish()
    size = lambda root: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root)  # noqa: E731
                            for f in fs if not f.startswith("."))
    src_bytes, dst_bytes = size(args.src), size(args.dst)
    print(f"convert: wrote {written} of {len(jobs)} batches in {time.time() - start:.1f}s; "
          f"store {src_bytes / 2**20:.2f} MiB -> {dst_bytes / 2**20:.2f} MiB "
          f"({src_bytes / max(dst_bytes, 1):.1f}x smaller)", flush=True)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
