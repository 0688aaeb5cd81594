"""What an image file is to every tool: its RGB pixels, and the fingerprint of a folder of them.
Below both the folder scan (data.py) and the image packs (packed_images.py), which use it."""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
from PIL import Image

from softlabel.errors import UserError


def fingerprint_of(entries) -> str:
    """The dataset fingerprint of (relative path, file size, class) entries, in dataset order."""
    h = hashlib.sha256()
    fingerprint_update(h, entries)
    return h.hexdigest()


def fingerprint_update(h, entries: Iterable[tuple[str, int, int]]) -> None:
    """Add entries to a fingerprint's SHA-256 (a pack's index adds its rows a chunk at a time)."""
    for rel, size, target in entries:
        h.update(f"{rel}\t{size}\t{target}\n".encode())


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB of any mode; 16- and 32-bit grey (16-bit PNGs) scaled to 8 bits rather than clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") or pixels.max(initial=0) <= 65535 else int(pixels.max())
        img = Image.fromarray((np.clip(pixels, 0, top) * 255 // max(top, 1)).astype(np.uint8), "L")
    return img.convert("RGB")


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB (grey, palette and RGBA images are converted, not refused)."""
    try:
        with open(path, "rb") as f:
            return to_rgb(Image.open(f))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise UserError(f"{path}: cannot read image ({exc}); fix or remove it, or pass --skip-bad-images") from None
