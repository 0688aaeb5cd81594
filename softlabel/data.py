"""ImageFolder datasets: listing in torchvision's order, fingerprints, image loading (the
transforms applied to the images are in transforms.py)."""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from softlabel import packed_images
from softlabel.decode import fingerprint_of, load_rgb, to_rgb  # noqa: F401  (part of this module's interface)
from softlabel.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FolderIndex:
    """The samples of an ImageFolder tree, in ``torchvision.datasets.ImageFolder`` order."""

    root: str
    classes: list[str]
    samples: list[tuple[str, int]]  # (absolute path, class index)
    pixels: Optional[Any] = None    # a packed folder's pixels (packed_images.py): images come from there
    packed_fingerprint: Optional[str] = None  # ... and its fingerprint is the source folder's
    content_digest: Optional[str] = None      # ... and what it holds (packed_images._identity)
    # a packed folder's path -> position among its pixels (of the whole pack, also in a subset)
    position: Optional[dict[str, int]] = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: str) -> Image.Image:
        """Sample ``path`` as RGB: decoded from its file, or read from the packed pixels."""
        if self.pixels is None:
            return load_rgb(path)
        if self.position is None:
            self.position = {p: n for n, (p, _) in enumerate(self.samples)}
        return self.pixels.image(self.position[path])

    def subset(self, samples: list[tuple[str, int]]) -> "FolderIndex":
        """The same folder with fewer samples (the packed pixels still found by path)."""
        whole = None if self.pixels is None else self.position or {p: n for n, (p, _) in enumerate(self.samples)}
        return FolderIndex(self.root, self.classes, samples, self.pixels, None, None, whole)

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def fingerprint(self) -> str:
        """SHA-256 of the relative paths and file sizes, in dataset order.

        Cheap to compute (no image is read) yet it changes whenever an image is added,
        removed, renamed, re-encoded or the folders are reordered.
        """
        if self.packed_fingerprint is not None:
            return self.packed_fingerprint
        return fingerprint_of((os.path.relpath(path, self.root).replace(os.sep, "/"), os.path.getsize(path), target)
                              for path, target in self.samples)




def scan_image_folder(root: str, flag: str) -> FolderIndex:
    """List an ImageFolder tree; every problem is one line naming ``flag`` and the path."""
    if not root:
        raise UserError(f"{flag} is required")
    if not os.path.isdir(root):
        raise UserError(f"{flag} {root}: no such directory")
    if packed_images.is_packed(root) or packed_images.is_lmdb(root):
        read = packed_images.read if packed_images.is_packed(root) else packed_images.read_lmdb
        packed = read(os.path.abspath(root), flag)
        return FolderIndex(os.path.abspath(root), packed["classes"], packed["samples"], packed["pixels"],
                           packed["fingerprint"], packed["content"])
    try:
        classes, class_to_idx = find_classes(root)
        skipped: list[str] = []
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS) if not _has_dir_links(root) \
            else _list_without_loops(root, classes, class_to_idx, skipped)
    except FileNotFoundError as exc:
        raise UserError(f"{flag} {root}: {str(exc).splitlines()[0]}") from None
    if skipped:
        print(f"note: {flag} {root}: skipped {len(skipped)} symbolic links to folders inside the tree or "
              f"around the link (they would list its images again): " + ", ".join(skipped[:5])
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr, flush=True)
    return FolderIndex(os.path.abspath(root), classes, samples)


def _has_dir_links(root: str) -> bool:
    """Whether a folder below a class folder is a symbolic link (the common tree has none, and is
    listed by torchvision's own ``make_dataset``)."""
    for top, dirs, _ in os.walk(root):
        if any(os.path.islink(os.path.join(top, d)) for d in dirs):
            return True
    return False


def _list_without_loops(root: str, classes: list[str], class_to_idx: dict[str, int],
                        skipped: list[str]) -> list[tuple[str, int]]:
    """``make_dataset``'s listing (the same order: classes, then folders, then files, by name),
    following links to folders as it does, except a link to a folder inside the tree or to one it
    is in (``0/loop -> ..``), which it would follow until the path grew too long; those are added
    to ``skipped``."""
    inside = os.path.realpath(root)
    samples = []
    for name in classes:
        walked = []
        for top, dirs, fnames in os.walk(os.path.join(root, name), followlinks=True):
            here = os.path.realpath(top)
            for d in list(dirs):
                path = os.path.join(top, d)
                real = os.path.realpath(path)
                if os.path.islink(path) and any(a == b or a.startswith(b + os.sep)
                                                for a, b in ((real, inside), (here, real))):
                    dirs.remove(d)
                    skipped.append(os.path.relpath(path, root))
            walked.append((top, fnames))
        for top, fnames in sorted(walked):
            samples += [(os.path.join(top, f), class_to_idx[name]) for f in sorted(fnames)
                        if f.lower().endswith(IMG_EXTENSIONS)]
    if not samples or len({t for _, t in samples}) < len(classes):
        make_dataset(root, {c: class_to_idx[c] for c in classes if c not in {classes[t] for _, t in samples}},
                     extensions=IMG_EXTENSIONS)  # raises its own error naming the empty classes
    return samples


def _readable(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            to_rgb(Image.open(f))
        return True
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return False


def drop_unreadable(index: FolderIndex) -> tuple[FolderIndex, list[str]]:
    """``--skip-bad-images``: the index without the images that cannot be decoded, and those
    images' paths. Every image is decoded once, up front, so the sample order (and so every
    stored batch) is fixed before any work starts and is the same on every rerun."""
    if index.pixels is not None:  # a packed folder holds only images that were decoded
        return index, []
    good, bad = [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        readable = list(pool.map(_readable, (path for path, _ in index.samples)))
    for sample, ok in zip(index.samples, readable):
        (good if ok else bad).append(sample if ok else sample[0])
    if not good:
        raise UserError(f"{index.root}: none of the {len(index.samples)} images can be read")
    return index.subset(good), bad


def scan_images(root: str, flag: str, skip_bad_images: bool, announce: bool, prog: str
                ) -> tuple[FolderIndex, list[str]]:
    """The images of a run: the folder's listing, less (with ``--skip-bad-images``) the images
    that cannot be read, listed on stderr when ``announce``. Returns the index and those paths."""
    index = scan_image_folder(root, flag)
    if not skip_bad_images:
        return index, []
    index, skipped = drop_unreadable(index)
    if skipped and announce:
        print(f"{prog}: --skip-bad-images: left out {len(skipped)} unreadable images: "
              + ", ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""), file=sys.stderr, flush=True)
    return index, skipped






class ImageCache:
    """Decoded images kept in memory, up to a byte budget, for loaders that read the same small
    (distilled) dataset every epoch: relabel and store training revisit each image hundreds of
    times, and on a CPU decoding costs as much as a tenth of a teacher's forward pass. Images
    are kept in the order first seen until the budget is full, then simply decoded each time
    (with random order, evicting would only churn)."""

    def __init__(self, budget_bytes: int, index: Optional[FolderIndex] = None):
        self.index = index
        self.budget = 0 if index is not None and index.pixels is not None else budget_bytes  # mapped already
        self.used = 0
        self.images: dict[str, Image.Image] = {}

    def load(self, path: str) -> Image.Image:
        img = self.images.get(path)
        if img is not None:
            return img
        img = load_rgb(path) if self.index is None else self.index.load(path)
        size = img.width * img.height * 3
        if self.used + size <= self.budget:
            self.images[path] = img
            self.used += size
        return img


class IndexedImageFolder(torch.utils.data.Dataset):
    """A map-style dataset over a ``FolderIndex`` with a per-sample transform; labels are
    folder indices, or ``class_index[folder]`` when the classes are numbered otherwise."""

    def __init__(self, index: FolderIndex, transform, class_index: Optional[list[int]] = None,
                 with_index: bool = False):
        self.index = index
        self.transform = transform
        self.class_index = class_index
        self.with_index = with_index  # items are (image, label, dataset index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        path, target = self.index.samples[i]
        label = target if self.class_index is None else self.class_index[target]
        image = self.transform(self.index.load(path))
        return (image, label, i) if self.with_index else (image, label)
