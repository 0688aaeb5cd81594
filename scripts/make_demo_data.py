"""Render scikit-learn's bundled digits (1797 images, 8x8, no download) as a 32x32 RGB
ImageFolder demo dataset:

    DIR/train/<c>/NNNN.png   a fixed, seeded 75/25 split of all 1797 images (per class)
    DIR/val/<c>/NNNN.png
    DIR/ipcN/<c>/NNNN.png    "distilled" subsets: N images per class taken from train, for
                             N in {1, 2, 5, 10, 20, 50} with N <= K, and N = K

File names are the digit's index in scikit-learn's array. Subsets are nested (ipc2 is part of
ipc5) and identical on every run and machine: the split and the subset order come from
numpy's legacy RandomState, whose stream numpy keeps fixed across versions.

    python scripts/make_demo_data.py --out demo/data --ipc 50
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

from softlabel.errors import UserError, optional_import, run_main
from softlabel.files import atomic_write_bytes, ensure_dir

IPC_LEVELS = (1, 2, 5, 10, 20, 50)
SPLIT_SEED = 0
VAL_FRACTION = 0.25
SIZE = 32


def split_digits(labels: np.ndarray) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Per class: train indices in a fixed random order (subsets take a prefix) and val."""
    rs = np.random.RandomState(SPLIT_SEED)
    train, val = {}, {}
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rs.permutation(len(idx))]
        n_val = int(round(len(idx) * VAL_FRACTION))
        val[c] = sorted(int(i) for i in idx[:n_val])
        train[c] = [int(i) for i in idx[n_val:]]
    return train, val


def render(image8: np.ndarray) -> bytes:
    """8x8 intensities 0..16 -> 32x32 RGB PNG bytes (bilinear upsampling)."""
    grey = Image.fromarray(np.round(image8 * (255.0 / 16.0)).astype(np.uint8), mode="L")
    rgb = grey.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB")
    import io
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_split(out: str, name: str, per_class: dict[int, list[int]], images: np.ndarray) -> int:
    n = 0
    for c, indices in per_class.items():
        folder = os.path.join(out, name, str(c))
        os.makedirs(folder, exist_ok=True)
        for i in indices:
            path = os.path.join(folder, f"{i:04d}.png")
            if not os.path.exists(path):
                atomic_write_bytes(path, render(images[i]), durable=False)
            n += 1
    return n


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--ipc", type=int, default=50, metavar="K",
                   help="largest images-per-class subset to write (default: 50)")
    return p


def main(args: argparse.Namespace) -> None:
    # bundled with scikit-learn: no network
    digits = optional_import("sklearn.datasets", "demo", "the demo data").load_digits()
    train, val = split_digits(digits.target)
    smallest = min(len(v) for v in train.values())
    if not 1 <= args.ipc <= smallest:
        raise UserError(f"--ipc {args.ipc}: must be between 1 and {smallest} (the smallest class "
                        f"has {smallest} training images)")
    ensure_dir(args.out, "--out")
    counts = {"train": write_split(args.out, "train", train, digits.images),
              "val": write_split(args.out, "val", val, digits.images)}
    for n in sorted({k for k in IPC_LEVELS if k <= args.ipc} | {args.ipc}):
        counts[f"ipc{n}"] = write_split(args.out, f"ipc{n}", {c: v[:n] for c, v in train.items()},
                                        digits.images)
    print(f"demo data in {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
