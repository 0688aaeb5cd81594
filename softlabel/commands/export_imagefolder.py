"""Write CIFAR-10, CIFAR-100 or STL-10, as torchvision keeps them on disk, in the ImageFolder
layout every tool here reads: OUT/train/<class>/<n>.png and OUT/val/<class>/<n>.png.

    python scripts/export_imagefolder.py --dataset cifar100 --root ~/data --out data/cifar100
    python scripts/export_imagefolder.py --dataset cifar10 --root ~/data --out data/cifar10 --download

ROOT is the folder torchvision's dataset classes use (it holds cifar-10-batches-py/,
cifar-100-python/ or stl10_binary/). Nothing is downloaded without --download. The CIFAR files
are Python pickles; they are read with an unpickler that builds only numpy arrays and plain
data, so a tampered file cannot run code. Class folders are the dataset's class names, whose
alphabetical order is the dataset's label order (checked), so folder indices equal the original
labels. Each PNG is written atomically; rerunning skips finished files.
"""
from __future__ import annotations

import argparse
import io
import os
from typing import Iterator

import numpy as np
from PIL import Image

from softlabel import tracking
from softlabel.cifar import load_pickle
from softlabel.errors import UserError, run_main
from softlabel.files import atomic_write_bytes, ensure_dir, plain_name, refuse_output_inside, remove_stale_tmp

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


def read_pickle(path: str) -> dict:
    """A CIFAR batch file through the one safe reader (softlabel/cifar.py): no code from it runs."""
    if not os.path.isfile(path):
        raise UserError(f"--root: {path} is missing (pass --download to fetch the dataset)")
    return load_pickle(path)


def _names(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def cifar(root: str, which: str) -> tuple[list[str], dict[str, tuple[np.ndarray, list[int]]]]:
    base = os.path.join(root, FOLDERS[which])
    if which == "cifar10":
        classes = _names(read_pickle(os.path.join(base, "batches.meta"))["label_names"])
        splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}
        key = "labels"
    else:
        classes = _names(read_pickle(os.path.join(base, "meta"))["fine_label_names"])
        splits = {"train": ["train"], "val": ["test"]}
        key = "fine_labels"
    out = {}
    for split, files in splits.items():
        images, labels = [], []
        for name in files:
            path = os.path.join(base, name)
            batch = read_pickle(path)
            data = np.asarray(batch.get("data"))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or key not in batch:
                raise UserError(f"{path}: expected 'data' uint8 (N, 3072) and '{key}'")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels += [int(v) for v in batch[key]]
        out[split] = (np.concatenate(images), labels)
    return classes, out


def stl10(root: str) -> tuple[list[str], dict[str, tuple[np.ndarray, list[int]]]]:
    base = os.path.join(root, FOLDERS["stl10"])
    names_path = os.path.join(base, "class_names.txt")
    if not os.path.isfile(names_path):
        raise UserError(f"--root: {names_path} is missing (pass --download to fetch the dataset)")
    with open(names_path) as f:
        classes = [line.strip() for line in f if line.strip()]
    out = {}
    for split, stem in (("train", "train"), ("val", "test")):
        x_path, y_path = os.path.join(base, f"{stem}_X.bin"), os.path.join(base, f"{stem}_y.bin")
        for path in (x_path, y_path):
            if not os.path.isfile(path):
                raise UserError(f"--root: {path} is missing (pass --download to fetch the dataset)")
        raw = np.fromfile(x_path, dtype=np.uint8)
        labels = np.fromfile(y_path, dtype=np.uint8).astype(int) - 1  # stored 1..10
        if raw.size != labels.size * 3 * 96 * 96:
            raise UserError(f"{x_path}: {raw.size} bytes do not hold the {labels.size} 96x96 images of {y_path}")
        # column-major on disk: (N, 3, W, H) -> (N, H, W, 3)
        out[split] = (raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1), labels.tolist())
    return classes, out


def download(which: str, root: str) -> None:
    import torchvision.datasets as D
    builder = {"cifar10": D.CIFAR10, "cifar100": D.CIFAR100}.get(which)
    if builder is not None:
        for train in (True, False):
            builder(root, train=train, download=True)
    else:
        D.STL10(root, split="train", download=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def jobs(out: str, classes: list[str], splits: dict) -> Iterator[tuple[str, np.ndarray]]:
    for split, (images, labels) in splits.items():
        for n, (pixels, label) in enumerate(zip(images, labels)):
            yield os.path.join(out, split, classes[label], f"{n:05d}.png"), pixels


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(FOLDERS), help="which dataset")
    p.add_argument("--root", required=True, help="torchvision's dataset folder")
    p.add_argument("--out", required=True, help="ImageFolder tree to write (train/ and val/)")
    p.add_argument("--download", action="store_true", help="fetch the dataset into --root first (torchvision)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(args: argparse.Namespace) -> None:
    if args.download:
        download(args.dataset, args.root)
    elif not os.path.isdir(args.root):
        raise UserError(f"--root {args.root}: no such directory (pass --download to fetch the dataset)")
    refuse_output_inside(args.out, "--out", [("--root", args.root)])
    classes, splits = stl10(args.root) if args.dataset == "stl10" else cifar(args.root, args.dataset)
    classes = [plain_name(c, f"--root {args.root}: class name") for c in classes]
    if classes != sorted(classes) or len(set(classes)) != len(classes):
        raise UserError(f"--dataset {args.dataset}: class names are not unique and sorted; folder order would "
                        f"not match the labels")
    for split, (_, labels) in splits.items():
        bad = [v for v in labels if not 0 <= v < len(classes)]
        if bad:
            raise UserError(f"--root {args.root}: {split} label {bad[0]} outside the {len(classes)} classes")
    for split in splits:
        for name in classes:
            ensure_dir(os.path.join(args.out, split, name), "--out", inside=args.out)
            remove_stale_tmp(os.path.join(args.out, split, name))  # from a killed earlier run
    total = sum(len(labels) for _, labels in splits.values())
    bar = tracking.progress(total, "export", disable=args.no_progress)
    written = 0
    for path, pixels in jobs(args.out, classes, splits):
        if not os.path.isfile(path):
            atomic_write_bytes(path, png_bytes(np.ascontiguousarray(pixels)), durable=False)
            written += 1
        bar.update(1)
    bar.close()
    counts = ", ".join(f"{split} {len(labels)}" for split, (_, labels) in splits.items())
    print(f"export: {args.dataset} -> {args.out}: {len(classes)} classes, {counts} images ({written} written)")


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
