"""Decode an image folder once into one memory-mappable file of uint8 pixels plus an index.

    .venv/bin/python scripts/pack_images.py SYN_DATA SYN_PACKED
    .venv/bin/python relabel/generate_soft_label.py --data SYN_PACKED ...        # instead of SYN_DATA
    .venv/bin/python validate/train_FKD_parallel.py --train-dir SYN_PACKED ...  # same store, same fingerprint

OUT is a folder accepted wherever an image folder is (--data, --train-dir, --val-dir): its
pixels are those the loader decodes from each file, so a store relabelled from OUT is
byte-identical to one relabelled from DIR, and the fingerprint is DIR's (a store made from either
trains with the other). Every loader process and rank on a machine maps the same file, so the
images are decoded once, not once per process and epoch. Size: height x width x 3 bytes per image
(ImageNet IPC10 at 224 px: 1.5 GB). Unreadable images are refused (fix or remove them first).

    .venv/bin/python scripts/pack_images.py IMAGENET/train IMAGENET_TRAIN_LMDB --format lmdb

--format lmdb keeps the image files as they are (compressed) in one LMDB, as WSLD packs ImageNet
for training: one file to copy and open instead of 1.28 million, decoded as the folder's files
are. WSLD's own LMDB folders (dataset/img2lmdb.py) are read as image folders too.
"""
from __future__ import annotations

import argparse
import os
import time

from softlabel import files, packed_images, tracking
from softlabel.data import scan_image_folder
from softlabel.errors import UserError, optional_import, run_main


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", metavar="DIR", help="the image folder (ImageFolder layout: one folder per class)")
    p.add_argument("out", metavar="OUT", help="the packed folder to write (pixels.u8 + images.json)")
    p.add_argument("--format", choices=["pixels", "lmdb"], default="pixels",
                   help="pixels: decoded uint8, memory-mapped (default); lmdb: the image files unchanged in an "
                        "LMDB, for training sets whose decoded pixels would not fit (as WSLD packs ImageNet)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1),
                   help="decoding threads (default: one per core, at most 8: more only contend for the "
                        "interpreter where decoding is quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@files.releasing_locks
def main(args: argparse.Namespace) -> None:
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if args.format == "lmdb":  # before OUT exists
        optional_import("lmdb", "lmdb", "--format lmdb")
    index = scan_image_folder(args.dir, "DIR")
    if index.pixels is not None:
        raise UserError(f"DIR {args.dir} is a packed folder already")
    if not index.samples:
        raise UserError(f"DIR {args.dir}: no images")
    files.refuse_output_inside(args.out, "OUT", [("DIR", args.dir)])
    if packed_images.is_packed(args.out) or packed_images.is_lmdb(args.out):
        raise UserError(f"OUT {args.out} holds a packed folder already; remove it or choose another OUT")
    files.lock_dir(args.out, "OUT", "another pack_images.py is writing this folder")
    files.remove_stale_tmp(args.out)  # what a killed run left
    start = time.time()
    bar = tracking.progress(len(index), "pack", disable=args.no_progress)
    if args.format == "lmdb":
        total, fingerprint = packed_images.pack_lmdb(index, args.out, bar)
    else:
        total, fingerprint = packed_images.pack(index, args.out, args.threads, bar)
    bar.close()
    what = "image files in an LMDB" if args.format == "lmdb" else "pixels"
    print(f"pack: {len(index)} images, {len(index.classes)} classes -> {args.out} ({total / 2**20:.1f} MiB of "
          f"{what}) in {time.time() - start:.1f}s; fingerprint {fingerprint[:12]} (the folder's)", flush=True)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
