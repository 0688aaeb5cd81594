"""FKD per-image soft labels (the layout of szq0214/FKD): reader, writer, quantization, and
the datasets of both sides (generation and training).

A per-image store is a directory mirroring the class folders of the images::

    fkd_manifest.json            settings, teacher, classes, dataset fingerprint
    <class>/<image stem>.tar     one file per image: all its crops and their labels

Each image file is a ``torch.save``d list, loadable with ``torch.load(..., weights_only=True)``::

    [coords (K, 4) float32   crop boxes as fractions (top/H, left/W, height/H, width/W),
     flip (K,) bool          horizontal flip of each crop,
     classes (K, k) uint8/int16/int32   the k classes kept per crop (largest first),
     values (K, k) float16/32 | None    their probabilities (None for label type "hard")]

K = ``num_crops``. The labels are the teacher's softmax at ``temperature``, quantized as FKD
does (``TOP_K`` below): ``hard`` keeps the top-1 class; ``smoothing`` the top-1 class and its
probability; ``marginal_smoothing_k5`` / ``_k10`` the top-5 / top-10 classes and probabilities;
``marginal_renorm`` the top-5 classes and probabilities. ``recover`` turns them back into
(K, C) distributions as FKD's trainer does: hard -> one-hot; smoothing and marginal_smoothing
-> the kept probabilities, the remaining mass spread evenly over the other classes;
marginal_renorm -> the kept probabilities renormalized to sum to 1, zero elsewhere.

Crops of image i derive from the stream ``PER_IMAGE_CROPS`` at (fkd_seed, i) only, drawn crop by crop
(box, then flip), so a file's content depends on (seed, image, settings) and not on the order,
batching or number of processes that made it, and the first k crops of a K-crop store are
those of a k-crop store with the same seed.
"""
from __future__ import annotations

import os
import pathlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from softlabel import distributed, files, replay, streams
from softlabel.classmap import folder_targets
from softlabel.data import FolderIndex, ImageCache
from softlabel.distributed import DistInfo, slice_bounds
from softlabel.errors import UserError
from softlabel.stores import schema
from softlabel.stores.base import (PER_IMAGE, LabelledImages, Request, StepPlan, Store, checked, fmt_floats, spread,
                                   weights_name)
from softlabel.stores.topk import smallest_int_dtype
from softlabel.streams import Stream
from softlabel.threads import running_on

MANIFEST = "fkd_manifest.json"
FORMAT = "fkd-per-image"
FORMAT_VERSION = 1
LABEL_TYPES = ("hard", "smoothing", "marginal_smoothing_k5", "marginal_smoothing_k10", "marginal_renorm")
LABEL_ALIASES = {"marginal_renorm_k5": "marginal_renorm"}  # FKD's generator spells it so
TOP_K = {"hard": 1, "smoothing": 1, "marginal_smoothing_k5": 5, "marginal_smoothing_k10": 10,
         "marginal_renorm": 5}

# Settings that change the content of the image files: a rerun on an existing store must
# agree on all of them.
CONTENT_KEYS = ("format", "format_version", "num_crops", "label_type", "input_size", "min_scale_crops",
                "max_scale_crops", "temperature", "use_fp16", "fkd_seed", "teacher", "num_samples",
                "num_classes", "class_to_index", "dataset_fingerprint")

WRITE_THREADS = 8        # files written at once (each mostly waits for its fsync)
WRITES_IN_FLIGHT = 64    # serialized files waiting to be written, at most


# ----------------------------------------------------------------------------- layout

def label_relpath(index: FolderIndex, i: int) -> str:
    """``<class>/<stem>.tar`` for image i (its path under the data folder, extension replaced)."""
    rel = os.path.relpath(index.samples[i][0], index.root)
    return os.path.splitext(rel)[0] + ".tar"


def label_path(root: str, index: FolderIndex, i: int) -> str:
    return os.path.join(root, label_relpath(index, i))


def check_unique_names(index: FolderIndex, flag: str) -> None:
    """Two images differing only in their extension (a.png, a.jpg) would share a label file."""
    seen: dict[str, str] = {}
    for i, (path, _) in enumerate(index.samples):
        rel = label_relpath(index, i)
        if rel in seen:
            raise UserError(f"{flag} {index.root}: images {seen[rel]} and {path} would share the label "
                            f"file {rel}; rename one")
        seen[rel] = path


def missing_files(root: str, index: FolderIndex) -> list[str]:
    return [label_path(root, index, i) for i in range(len(index)) if not os.path.isfile(label_path(root, index, i))]


# ----------------------------------------------------------------------------- crops

def sample_crops(seed: int, image: int, num_crops: int, width: int, height: int,
                 scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Image ``image``'s crops (num_crops, 4) float32 and flips (num_crops,) bool, drawn as
    RandomResizedCrop + RandomHorizontalFlip draw them, one crop after the other."""
    rng = streams.rng(seed, Stream.PER_IMAGE_CROPS, image)
    coords, flips = [], []
    for _ in range(num_crops):
        coords.append(replay.sample_crop(rng, width, height, scale))
        flips.append(bool(rng.random() < 0.5))
    return torch.tensor(coords, dtype=torch.float32).reshape(num_crops, 4), torch.tensor(flips, dtype=torch.bool)


# ----------------------------------------------------------------------------- quantization

def quantize(probs: torch.Tensor, label_type: str, use_fp16: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(K, C) probabilities -> (classes (K, k), values (K, k) or None), k = TOP_K[label_type]
    (at most C). Classes are ordered by decreasing probability."""
    k = min(TOP_K[label_type], probs.shape[1])
    values, classes = probs.float().topk(k, dim=1)
    classes = classes.to(smallest_int_dtype(probs.shape[1]))
    if label_type == "hard":
        return classes, None
    return classes, values.half() if use_fp16 else values


def recover(classes: torch.Tensor, values: Optional[torch.Tensor], label_type: str, num_classes: int) -> torch.Tensor:
    """Quantized labels -> (K, C) float32 probability distributions, as FKD's trainer
    recovers them (see the module docstring). Every row sums to 1."""
    classes = classes.long()
    n, k = classes.shape
    if label_type == "hard":
        return torch.zeros(n, num_classes).scatter_(1, classes[:, :1], 1.0)
    v = values.float()
    if label_type == "marginal_renorm":
        kept = v / v.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.zeros(n, num_classes).scatter_(1, classes, kept)
    # smoothing, marginal_smoothing_k5/k10: the mass the kept classes leave, spread evenly
    others = num_classes - k
    rest = (1.0 - v.sum(dim=1, keepdim=True)).clamp_min(0.0) / others if others else torch.zeros(n, 1)
    return rest.expand(n, num_classes).clone().scatter_(1, classes, v)


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    """Probabilities as 'logits' for the losses, which apply softmax(t / T): log p, with -inf
    for classes of probability 0 (the losses treat -inf as probability 0). At T = 1,
    softmax(log p) = p exactly; for unquantized labels softmax(log p / T) = softmax(z / T)."""
    return probs.log()


# ----------------------------------------------------------------------------- files

def encode(coords: torch.Tensor, flips: torch.Tensor, classes: torch.Tensor, values: Optional[torch.Tensor]) -> list:
    """The list written to disk. Each tensor is copied: torch.save writes a view's whole
    storage, which would make a file's bytes depend on what it was sliced from."""
    return [coords.float().clone(), flips.bool().clone(), classes.clone(),
            None if values is None else values.clone()]


def file_bytes(coords: torch.Tensor, flips: torch.Tensor, classes: torch.Tensor, values: Optional[torch.Tensor]
               ) -> bytes:
    """One image's file, as ``files.atomic_torch_save`` would write it."""
    return files.torch_bytes(encode(coords, flips, classes, values))


def load_file(path: str) -> list:
    """One image's file as stored, [coords, flip, classes, values], before ``check_labels``."""
    data = files.safe_torch_load(path, "FKD label file")
    if not isinstance(data, (list, tuple)) or len(data) != 4:
        n = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise UserError(f"FKD label file {path}: expected a list of 4 entries [coords, flip, classes, values], "
                        f"found {n}")
    return list(data)


def read_file(path: str, manifest: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Load and validate one image's file; any problem is one line naming the file."""
    return check_labels(path, *load_file(path), manifest)


def check_labels(path: str, coords: Any, flips: Any, classes: Any, values: Any, manifest: Mapping[str, Any]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One image's crops and labels, validated against the store's settings (both per-image formats):
    each entry's type and shape, then its values, entry by entry."""
    shapes = shape_problems(coords, flips, classes, values, manifest)
    hard = manifest["label_type"] == "hard"
    for problem in (lambda: shapes[0], lambda: coords_problem(coords), lambda: shapes[1], lambda: shapes[2],
                    lambda: classes_problem(classes, int(manifest["num_classes"])), lambda: shapes[3],
                    lambda: None if hard else values_problem(values)):
        why = problem()
        if why:
            raise UserError(f"FKD label file {path}: {why}")
    return coords.float(), flips.bool(), classes, values


def shape_problems(coords: Any, flips: Any, classes: Any, values: Any, manifest: Mapping[str, Any]
                   ) -> list[Optional[str]]:
    """What is wrong with the type or shape of each of one file's entries (None where nothing is)."""
    n, c = int(manifest["num_crops"]), int(manifest["num_classes"])
    label_type = manifest["label_type"]
    k = min(TOP_K[label_type], c)
    problems: list[Optional[str]] = [None] * 4
    if not (isinstance(coords, torch.Tensor) and coords.is_floating_point() and coords.shape == (n, 4)):
        problems[0] = f"coords must be a float ({n}, 4) tensor"
    if not (isinstance(flips, torch.Tensor) and flips.shape == (n,)):
        problems[1] = f"flip must be a ({n},) tensor"
    if not (isinstance(classes, torch.Tensor) and not classes.is_floating_point() and classes.shape == (n, k)):
        problems[2] = f"classes must be an integer ({n}, {k}) tensor for label type {label_type}"
    if label_type == "hard":
        problems[3] = None if values is None else "label type hard stores no values"
    elif not (isinstance(values, torch.Tensor) and values.is_floating_point() and values.shape == (n, k)):
        problems[3] = f"values must be a float ({n}, {k}) tensor for label type {label_type}"
    return problems


def coords_problem(coords: torch.Tensor) -> Optional[str]:
    """What is wrong with (N, 4) crop boxes, or None (of one file, or of several stacked)."""
    if not (bool(torch.isfinite(coords).all()) and float(coords.min()) >= 0.0 and float(coords.max()) <= 1.0):
        return "coords outside [0, 1]"
    return replay.crop_box_problem(coords, 1e-3)  # FKD's --use_fp16 files keep float16 fractions


def classes_problem(classes: torch.Tensor, num_classes: int) -> Optional[str]:
    if int(classes.min()) < 0 or int(classes.max()) >= num_classes:
        return f"class index out of range for {num_classes} classes"
    return None


def values_problem(values: torch.Tensor) -> Optional[str]:
    """What is wrong with (N, k) probabilities of N crops, or None."""
    if not bool(torch.isfinite(values).all()) or float(values.min()) < 0 or float(values.max()) > 1:
        return "values must be probabilities in [0, 1]"
    empty = torch.nonzero(values.float().sum(dim=1) == 0).flatten()
    if len(empty):  # a teacher's top class has probability >= 1 / classes: such a file is broken
        return f"crop {int(empty[0])}'s probabilities are all zero ({len(empty)} of {len(values)} crops); relabel " \
               f"this image"
    return None


def labels_ok(loaded: Sequence[Sequence[Any]], manifest: Mapping[str, Any]) -> bool:
    """Whether ``check_labels`` passes each of several files' entries: their types and shapes file by
    file, their values all at once."""
    if any(any(shape_problems(*entries, manifest)) for entries in loaded):
        return False
    if not loaded:
        return True
    stacked = [torch.cat([entries[j] for entries in loaded]) for j in ((0, 2) if manifest["label_type"] == "hard"
                                                                      else (0, 2, 3))]
    return not (coords_problem(stacked[0]) or classes_problem(stacked[1], int(manifest["num_classes"]))
                or (len(stacked) > 2 and values_problem(stacked[2])))


# Files read and checked together by ``check_files``.
CHECK_FILES = 64


def check_files(load: Callable[[int], tuple[str, list]], images: Sequence[int], manifest: Mapping[str, Any]) -> None:
    """``check_labels`` of the files of ``images`` (``load``: an image's file and its entries as
    stored), their values checked at once; where anything fails, file by file, so that the first bad
    file is named as reading them in order names it."""
    loaded, failure = [], None
    for i in images:
        try:
            loaded.append(load(i))
        except UserError as exc:  # raised after the files before it are checked
            failure = exc
            break
    if failure is not None or not labels_ok([entries for _, entries in loaded], manifest):
        for path, entries in loaded:
            check_labels(path, *entries, manifest)
    if failure is not None:
        raise failure


class _CheckChunks(Dataset):
    """``check_files`` of each chunk of CHECK_FILES images: its error message, or "" when it holds."""

    def __init__(self, load: Callable[[int], tuple[str, list]], images: Sequence[int], manifest: Mapping[str, Any]):
        self.load, self.images, self.manifest = load, images, manifest

    def __len__(self) -> int:
        return -(-len(self.images) // CHECK_FILES)

    def __getitem__(self, n: int) -> str:
        try:
            check_files(self.load, self.images[n * CHECK_FILES:(n + 1) * CHECK_FILES], self.manifest)
        except UserError as exc:
            return str(exc)
        return ""


def check_workers(files: int) -> int:
    """Processes that check a store's files: reading one is a torch.load, bound by the interpreter,
    so processes (not threads) share the work; none for a few chunks (starting them costs more)."""
    return min(os.cpu_count() or 1, 8) if files >= 16 * CHECK_FILES else 0


def check_in_processes(chunks: _CheckChunks, workers: int) -> None:
    """Every chunk checked (by ``workers`` loader processes, or here), the results taken in order:
    the error raised is the one reading the files in order meets first."""
    results = DataLoader(chunks, batch_size=None, num_workers=workers,
                                          prefetch_factor=4 if workers else None)
    for message in results:
        if message:
            raise UserError(message)


# ----------------------------------------------------------------------------- manifest

def manifest_path(root: str) -> str:
    return os.path.join(root, MANIFEST)


def is_store(root: str) -> bool:
    return os.path.isfile(manifest_path(root))


def read_manifest(root: str, flag: str = "--fkd-path") -> dict:
    manifest = files.read_manifest_json(
        root, MANIFEST, flag, "FKD manifest",
        "not an FKD per-image store (made by relabel/generate_soft_label_fkd.py)",
        {"format": FORMAT, "format_version": FORMAT_VERSION}, CONTENT_KEYS + ("class_names", "mean", "std"))
    if manifest["label_type"] not in LABEL_TYPES:
        raise UserError(f"FKD manifest {manifest_path(root)}: unknown label type {manifest['label_type']!r}")
    schema.check(manifest, schema.PER_IMAGE, f"FKD manifest {manifest_path(root)}")
    return manifest


def new_manifest(cfg: Any, images: LabelledImages) -> dict:
    """The manifest of a store the FKD generator writes, from its resolved config (crops, label
    type, temperature): content settings only (no paths, workers or versions), so a rerun with
    other settings is refused and concurrent runs write byte-identical manifests."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created_by": "relabel/generate_soft_label_fkd.py",
        "num_crops": cfg.num_crops, "label_type": cfg.label_type,
        "top_k": min(TOP_K[cfg.label_type], images.num_classes),
        "input_size": cfg.input_size, "min_scale_crops": cfg.min_scale_crops,
        "max_scale_crops": cfg.max_scale_crops, "temperature": cfg.temp, "use_fp16": bool(cfg.use_fp16),
        "fkd_seed": cfg.fkd_seed, "teacher": images.teachers[0], **images.entries(),
        "layout": "<class>/<image stem>.tar: [coords (K,4) float32, flip (K,) bool, classes (K,k) int, "
                  "values (K,k) float | None]",
    }


# What a store made on the crops of another (--reference_path) takes from it.
CROP_SETTINGS = (("--fkd_seed", "fkd_seed"), ("--min_scale_crops", "min_scale_crops"),
                 ("--max_scale_crops", "max_scale_crops"))


def reference_crops(path: str, index: FolderIndex, num_crops: int, given: Mapping[str, Any]
                    ) -> tuple[dict, tuple[str, dict]]:
    """The crop settings of the store at ``path`` (--reference_path), whose crops a new store reuses,
    and the reference as ``GenerateImages`` reads it. ``given``: the crop flags given (None: not
    given); one contradicting the reference, other images or more crops than it holds: one error."""
    ref = read_manifest(path, "--reference_path")
    where = f"--reference_path {path}"
    if ref["dataset_fingerprint"] != index.fingerprint():
        raise UserError(f"{where}: made from other images than {index.root} (file names or sizes differ)")
    if num_crops > ref["num_crops"]:
        raise UserError(f"--num_crops {num_crops}: {where} holds only {ref['num_crops']} crops per image")
    for flag, attr in CROP_SETTINGS:
        if given.get(attr) is not None and given[attr] != ref[attr]:
            raise UserError(f"{flag} {given[attr]} contradicts {where}, whose crops were made with {ref[attr]}; "
                            f"omit {flag}")
    return {attr: ref[attr] for _, attr in CROP_SETTINGS}, (path, ref)


def first_clash(old: dict, new: dict) -> Optional[str]:
    return files.first_clash(CONTENT_KEYS, old, schema.as_recorded_teachers(new, old))


def prepare_store(root: str, manifest: dict, flag: str = "--save_path") -> None:
    """Check an existing store's settings (read-only), or write the manifest of a new one.
    The manifest holds only content settings, so concurrent runs write identical bytes."""
    if is_store(root):
        clash = first_clash(read_manifest(root, flag), manifest)
        if clash:
            raise UserError(f"{flag} {root}: the soft labels there were made with other settings "
                            f"({clash}); use a new {flag} or the original settings")
        return
    schema.check(manifest, schema.PER_IMAGE, f"{flag} {root}: the manifest to write")  # as a reader will
    files.ensure_dir(root, flag)
    files.atomic_write_json(manifest_path(root), manifest)


# ----------------------------------------------------------------------------- generation side

class GenerateImages(Dataset):
    """One item per chunk of images to label: for each image, its crops and flips (sampled
    from (seed, image), or read from a reference store) and the rendered uint8 crops."""

    def __init__(self, index: FolderIndex, chunks: list[list[int]], seed: int, num_crops: int,
                 input_size: int, scale: tuple[float, float], reference: Optional[tuple[str, dict]] = None):
        self.index, self.chunks, self.seed, self.num_crops = index, chunks, seed, num_crops
        self.input_size, self.scale, self.reference = input_size, scale, reference
        self.cache = ImageCache(0, index)

    def __len__(self) -> int:
        return len(self.chunks)

    def crops(self, i: int, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference is None:
            return sample_crops(self.seed, i, self.num_crops, width, height, self.scale)
        root, manifest = self.reference
        path = label_path(root, self.index, i)
        if not os.path.isfile(path):
            raise UserError(f"--reference_path {root}: no label file {path}; finish the reference store first")
        coords, flips, _, _ = read_file(path, manifest)
        return coords[:self.num_crops], flips[:self.num_crops]

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        """(B,) image indices, (B, K, 4) crops, (B, K) flips and (B, K, 3, S, S) uint8 pixels."""
        coords, flips, pixels = [], [], []
        for i in self.chunks[n]:
            img = self.cache.load(self.index.samples[i][0])
            c, f = self.crops(i, img.width, img.height)
            coords.append(c)
            flips.append(f)
            pixels.append(replay.render_batch([img] * len(c), c, f, self.input_size))
        return {"image": torch.tensor(self.chunks[n], dtype=torch.int64), "coords": torch.stack(coords),
                "flip": torch.stack(flips), "pixels": torch.stack(pixels)}


# ----------------------------------------------------------------------------- training side

def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    return streams.rng(seed, Stream.PER_IMAGE_ORDER, epoch).permutation(num_samples)


def crops_for(seed: int, image: int, epoch: int, per_epoch: int, num_crops: int) -> list[int]:
    """The stored crops image ``image`` uses in ``epoch``: positions epoch*N .. epoch*N + N-1
    of an endless sequence of that image's crops in which every run of ``num_crops``
    ("cycle") is a fresh permutation of all of them. So no crop repeats until all have been
    used; a cycle seams inside an epoch only when N does not divide num_crops."""
    out, perms = [], {}
    for p in range(epoch * per_epoch, (epoch + 1) * per_epoch):
        cycle, slot = divmod(p, num_crops)
        if cycle not in perms:
            perms[cycle] = streams.rng(seed, Stream.PER_IMAGE_CYCLE, image, cycle).permutation(num_crops)
        out.append(int(perms[cycle][slot]))
    return out


class PerImageSteps(Dataset):
    """One item per (epoch, step) of training: ``images_per_step`` images of the epoch's
    order (from (seed, epoch)), ``per_epoch`` stored crops of each (``crops_for``), image by
    image; rank ``rank`` gets its contiguous slice of those crops (``slice_bounds``), and
    only the images and label files the slice needs are read. ``soft_label`` holds
    log-probabilities (``log_probs``) of the recovered labels; no mixing.

    ``passes`` (train_FKD.py's epoch loop): job epoch p is a pass (first epoch, crops); a pass
    of ``per_epoch`` crops takes crop positions first .. first + per_epoch - 1, a single-crop
    pass position first with ``per_epoch`` times the images per step, so every epoch of
    train_FKD.py's count uses one crop of each image."""

    def __init__(self, read: Callable[[int], tuple], manifest: Mapping[str, Any], index: FolderIndex,
                 jobs: list[tuple[int, int]], plan: StepPlan, cache_bytes: int = 0, rank: int = 0, world: int = 1):
        self.read, self.index, self.manifest, self.jobs = read, index, manifest, jobs
        self.seed, self.images_per_step, self.per_epoch = plan.seed, plan.images_per_step, plan.crops_per_epoch
        self.passes, self.targets = plan.passes, plan.targets
        self.rank, self.world = rank, world
        self.cache = ImageCache(cache_bytes, index)
        self.num_crops, self.num_classes = int(manifest["num_crops"]), int(manifest["num_classes"])
        self.input_size, self.label_type = int(manifest["input_size"]), manifest["label_type"]
        self._order: tuple[int, Any] = (-1, None)
        self.resample = manifest.get("interpolation") or "bilinear"

    def __len__(self) -> int:
        return len(self.jobs)

    def plan(self, epoch: int) -> tuple[int, int, int]:
        """(crop sequence epoch, crops per image, images per step) of job epoch ``epoch``."""
        if self.passes is None:
            return epoch, self.per_epoch, self.images_per_step
        first, crops = self.passes[epoch]
        return first // crops, crops, self.images_per_step * self.per_epoch // crops

    def step_crops(self, epoch: int, step: int) -> list[tuple[int, int]]:
        """(image, stored crop) pairs of the whole step, over all ranks."""
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, len(self.index)))
        crop_epoch, crops, per_step = self.plan(epoch)
        images = self._order[1][step * per_step:(step + 1) * per_step]
        return [(int(i), c) for i in images
                for c in crops_for(self.seed, int(i), crop_epoch, crops, self.num_crops)]

    def __getitem__(self, n: int) -> dict[str, Any]:
        epoch, step = self.jobs[n]
        pairs = self.step_crops(epoch, step)
        lo, hi = slice_bounds(len(pairs), self.rank, self.world)
        mine = pairs[lo:hi]
        files: dict[int, tuple] = {}
        for i, _ in mine:
            if i not in files:
                files[i] = self.read(i)
        coords = torch.stack([files[i][0][c] for i, c in mine])  # the trainer gives every rank crops
        flips = torch.stack([files[i][1][c] for i, c in mine])
        classes = torch.stack([files[i][2][c] for i, c in mine])
        values = None if self.label_type == "hard" else torch.stack([files[i][3][c] for i, c in mine])
        soft = log_probs(recover(classes, values, self.label_type, self.num_classes))
        images = [self.cache.load(self.index.samples[i][0]) for i, _ in mine]
        index = torch.tensor([i for i, _ in mine], dtype=torch.int64)
        return {"epoch": epoch, "batch": step, "batch_size": len(pairs), "index": index,
                "target": self.targets[index], "soft_label": soft, "mix_index": None, "mix_lam": None,
                "mix_bbox": None, "partners": None,
                "pixels": replay.render_batch(images, coords, flips, self.input_size, self.resample)}


def normalize_label_type(name: str) -> str:
    return LABEL_ALIASES.get(name, name)


def chunks_of(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[k:k + size]) for k in range(0, len(items), size)]


# ----------------------------------------------------------------------------- the store interface



class PerImageStore(Store):
    """Our per-image store: one file per image, ``num_crops`` labelled crops each."""

    kind = format = layout = PER_IMAGE
    labelled_resample = "bilinear"  # how the generator resampled the crops it labelled
    request_fields = ("input_size", "num_classes", "label_type")
    not_converted = "is our per-image store already; this converts batch stores and FKD's own per-image files"

    @classmethod
    def open(cls, path: str, flag: str = "--fkd-path", index: Optional[FolderIndex] = None,
             request: Request = Request()) -> "PerImageStore":
        manifest = dict(read_manifest(path, flag))
        manifest.setdefault("mix_type", "none")
        return cls(path, manifest, flag)

    @property
    def where(self) -> str:
        return f"the FKD store {self.flag} {self.path}"

    def check_request(self, request: Request) -> None:
        m, where = self.manifest, self.where
        if request.label_type and normalize_label_type(request.label_type) != m["label_type"]:
            raise UserError(f"--soft_label_type {request.label_type}: {where} holds {m['label_type']} "
                            f"labels (choose the store made with that type, or leave the flag out)")
        if request.num_crops is not None and request.num_crops > m["num_crops"]:
            raise UserError(f"--num-crops {request.num_crops} is more than the {m['num_crops']} crops per image "
                            f"{where} holds")
        if request.mix_type is not None and request.mix_type != "none":
            raise UserError(f"--mix-type {request.mix_type}: {where} holds labels of unmixed crops; omit --mix-type")

    def missing(self, epochs: int, index: Optional[FolderIndex] = None) -> list[str]:
        return missing_files(self.path, index)

    def check_complete(self, epochs: int, index: Optional[FolderIndex] = None) -> None:
        missing = self.missing(epochs, index)
        if missing:
            raise UserError(f"{self.flag} {self.path}: {len(missing)} label files missing (first: "
                            f"{missing[0]}); rerun the generate_soft_label_fkd.py command to finish the store")

    def dataset(self, index: FolderIndex, jobs: list[tuple[int, int]], cache_bytes: int = 0, rank: int = 0,
                world: int = 1, plan: StepPlan = StepPlan()) -> Dataset:
        if plan.targets is None:
            plan = replace(plan, targets=folder_targets(index, self.class_index(index.classes)))
        return PerImageSteps(self.reader(index), dict(self.manifest), index, jobs, plan, cache_bytes, rank, world)

    def unchecked(self, index: FolderIndex, i: int) -> tuple[str, list]:
        """Image i's file and its [coords, flips, classes, values] as stored, before ``check_labels``."""
        path = label_path(self.path, index, i)
        return path, load_file(path)

    def read_labels(self, index: FolderIndex, i: int) -> tuple:
        """Image i's (coords (K, 4), flips (K,), classes (K, k), values (K, k) | None), validated."""
        path, entries = self.unchecked(index, i)
        return check_labels(path, *entries, self.manifest)

    def reader(self, index: FolderIndex) -> Callable[[int], tuple]:
        return lambda i: self.read_labels(index, i)

    def teachers(self) -> list:
        return [self.manifest["teacher"]] if self.manifest.get("teacher") else []

    def summary(self, index: Optional[FolderIndex] = None) -> list[tuple[str, str]]:
        m, t = self.manifest, self.manifest.get("teacher") or {}
        return [
            ("format", f"per-image v{m['format_version']} ({MANIFEST})"),
            ("images", str(m["num_samples"])),
            ("classes", f"{m['num_classes']} ({len(m['class_names'])} class folders)"),
            ("crops per image", str(m["num_crops"])),
            ("label type", f"{m['label_type']} (top {m.get('top_k')}, {'float16' if m.get('use_fp16') else 'float32'}"
                           f", temperature {m['temperature']:g})"),
            ("crops", f"{m['input_size']}px, scale {fmt_floats([m['min_scale_crops'], m['max_scale_crops']])}, "
                      f"fkd seed {m['fkd_seed']}"),
            ("teacher", f"{t.get('arch')} ({t.get('source')}, {weights_name(t)}, "
                        f"sha256 {str(t.get('weights_sha256'))[:12]})"),
            ("made from", f"fingerprint {str(m.get('dataset_fingerprint'))[:12]}"),
        ]

    def check(self, index: Optional[FolderIndex] = None, sample: int = 0) -> str:
        """With the images: each one's file, read as the trainer reads it; without (ours only): every
        file under the store."""
        if index is not None:
            self.check_complete(0, index)
            count, load = len(index), (lambda i: self.unchecked(index, i))
        else:
            paths = sorted(str(p) for p in pathlib.Path(self.path).rglob("*.tar"))
            if len(paths) != self.manifest["num_samples"]:
                raise UserError(f"{self.flag} {self.path}: {len(paths)} label files for "
                                f"{self.manifest['num_samples']} images")
            count, load = len(paths), (lambda i: (paths[i], load_file(paths[i])))
        images = spread(range(count), sample)
        with running_on(1):  # many small operations
            check_in_processes(_CheckChunks(load, images, self.manifest), check_workers(len(images)))
        return checked(len(images), count, "files")


class PerImageWriter:
    """Writes the per-image files of a store created by ``create``, each atomically and durably.

    Writing a file is mostly waiting for the disk (its fsync), and the disk commits concurrent
    fsyncs together: the files are serialized here, then written by a few threads, at most
    ``WRITES_IN_FLIGHT`` at a time, while labelling goes on. ``finish`` waits for every write; a
    write's error (a full disk) is raised by a later ``write`` or by ``finish``."""

    def __init__(self, path: str, index: FolderIndex):
        self.path, self.index = path, index
        self._pool: Optional[ThreadPoolExecutor] = None
        self._in_flight: deque[Future] = deque()

    def path_of(self, image: int) -> str:
        return label_path(self.path, self.index, image)

    def exists(self, image: int) -> bool:
        return os.path.exists(self.path_of(image))

    def write(self, image: int, coords, flips, classes, values) -> None:
        data = file_bytes(coords, flips, classes, values)
        while len(self._in_flight) >= WRITES_IN_FLIGHT:
            self._in_flight.popleft().result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="fkd-write")
        self._in_flight.append(self._pool.submit(files.atomic_write_bytes, self.path_of(image), data))

    def finish(self) -> None:
        """Wait until every file written so far is on disk under its name."""
        try:
            while self._in_flight:
                self._in_flight.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def create(path: str, manifest: dict, index: FolderIndex, info: Optional[DistInfo] = None,
           flag: str = "--save_path") -> PerImageWriter:
    """Create a per-image store, or reopen one of the same content settings. Several runs may
    write one store at once (each skips the files that exist), so there is no lock: the manifest
    holds content settings only and every run writes the same bytes."""
    if is_store(path):  # every rank checks, so a refusal stops them all at once
        prepare_store(path, manifest, flag)

    def prepare() -> None:
        prepare_store(path, manifest, flag)
        for directory in sorted({os.path.dirname(label_path(path, index, i)) for i in range(len(index))}):
            files.ensure_dir(directory, flag, inside=path)
            files.remove_stale_tmp(directory)  # only files of writers that no longer run
    if info is None:
        prepare()
    else:
        distributed.on_main_then_all(info, prepare)
        distributed.require_shared(info, os.path.join(path, MANIFEST), flag, path)
    return PerImageWriter(path, index)
