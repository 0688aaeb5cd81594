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
from softlabel.stores import Store, create_store, open_store, store_class, topk
from softlabel.stores.base import Conversion
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


def open_source(args: argparse.Namespace) -> tuple[Store, Optional[FolderIndex]]:
    """SRC through the store interface, complete, and the images it needs (None: it needs none)."""
    cls = store_class(args.src, "SRC")
    if cls.not_converted:
        raise UserError(f"SRC {args.src} {cls.not_converted}")
    if cls.needs_images and not args.data:
        raise UserError(f"SRC {args.src} {cls.needs_images_hint}")
    index = scan_image_folder(args.data, "--data") if cls.needs_images else None
    request = cls.request({"input_size": args.input_size, "fkd_seed": args.fkd_seed, "num_classes": args.num_classes,
                           "label_type": args.soft_label_type})
    src = open_store(args.src, index, flag="SRC", layout=cls.layout, data_arg="--data", request=request)
    src.check_complete(src.settings.epochs or 0, index)
    return src, index


def disk_mib(root: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root)
               for f in fs if not f.startswith(".")) / 2**20


@files.releasing_locks
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
    plan = src.conversion(Conversion(os.path.abspath(args.src), args.label_format, args.topk, args.topk_fill,
                                     args.topk_fill_temperature, args.temp), index)
    writer = create_store(args.dst, plan.target, flag="DST", index=index)
    bar = tracking.progress(len(plan.keys), "convert", disable=args.no_progress)
    written, start = 0, time.time()
    for key in plan.keys:
        if not writer.exists(*key):
            writer.write(*key, *plan.labels(*key))
            written += 1
        bar.update(1)
    bar.close()
    writer.finish()
    src_mib, dst_mib = disk_mib(args.src), disk_mib(args.dst)
    print(f"convert: wrote {written} of {len(plan.keys)} {plan.unit} in {time.time() - start:.1f}s; "
          f"store {src_mib:.2f} MiB -> {dst_mib:.2f} MiB ({src_mib / max(dst_mib, 2**-20):.1f}x smaller)", flush=True)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
