"""Soft-label stores: the one reader/writer, used by relabel, the trainer and the tools.

Our format (v1) is a directory::

    manifest.json                 format version, settings, teachers, classes, fingerprint
    epoch_{e}/batch_{b}.tar       one training step each

Each batch file is a ``torch.save``d list in the upstream SRe2L/PRISM order, loadable with
``torch.load(..., weights_only=True)``. With ``label_format`` "full"::

    [coords (B,4) float32, flip (B,) bool, mix_index (B,) int64 | None, mix_lam float | None,
     mix_bbox [x1, y1, x2, y2] | None, soft_label (B,C) float16/32, index (B,) int64]

With ``label_format`` "topk" (K = manifest ``topk``) the same list in compact types::

    [coords (B,4) uint16 = round(fraction * 65535), flip (B,) bool, mix_index int16 | None,
     mix_lam, mix_bbox, [values (B,K) float16, classes (B,K) uint8/int16/int32, fill (B,) float16],
     index int32]

``fill`` (manifest ``topk_fill`` "residual", the default) is one logit per sample for every class
left out, chosen so that those classes keep the probability mass the teacher gave them together:
``fill = logsumexp(dropped logits) - log(C - K)``. Without it (``topk_fill`` null, and stores
written before it existed, whose list holds only [values, classes]) the left-out classes read as
-inf: probability 0, the top K renormalized, which costs a student far more (docs/stores.md).

Stores made by the upstream repositories (no manifest) are read through the same validator by
``stores/upstream.py``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from softlabel import distributed, files, provenance, replay
from softlabel.data import FolderIndex
from softlabel.distributed import DistInfo
from softlabel.errors import UserError
from softlabel.loader import StoreBatches
from softlabel.stores import packed, schema
from softlabel.stores.base import (BATCH, OURS, Conversion, Converted, LabelledImages, Request, Store, check_digest,
                                   checked, class_index_of, cutmix_lam_is_area, fmt_floats, spread, weights_name)
from softlabel.stores.topk import (COORD_SCALE, EDGE_SLACK, decode_topk, fill_entries, fill_temperature, residual_fill,
                                   smallest_int_dtype, writes_fill)
from softlabel.threads import running_on

FORMAT_VERSION = 1          # one file per step (full, and the first top-k stores)
PACKED_VERSION = 2          # top-k packed one file per epoch (stores/packed.py)
MANIFEST = "manifest.json"

# Manifest settings that change the content of batch files: a rerun on an existing store
# must agree on all of them (``epochs`` may grow: rerunning with more epochs extends a store).
CONTENT_KEYS = ("fkd_seed", "batch_size", "num_samples", "num_classes",
                "input_size", "min_scale_crops", "max_scale_crops", "mix_type", "mixup",
                "cutmix", "use_fp16", "temperature", "teachers", "ensemble", "primary_weight",
                "class_to_index", "label_format", "topk", "topk_fill", "dataset_fingerprint",
                "container", "label_keep", "topk_fill_temperature",
                "format_version")  # last: a clash names the setting behind it (label_format) first


@dataclass
class BatchRecord:
    coords: torch.Tensor
    flip: torch.Tensor
    mix_index: Optional[torch.Tensor]
    mix_lam: Optional[float]
    mix_bbox: Optional[list[int]]
    soft_label: torch.Tensor   # (B, C) logits; a top-k store's missing classes are its fill or -inf
    index: torch.Tensor
    stored: Optional[torch.Tensor] = None  # (B, C) bool: the logits a top-k store holds (None: all)

    def to_list(self) -> list:
        return [self.coords, self.flip, self.mix_index, self.mix_lam, self.mix_bbox,
                self.soft_label, self.index]

    @property
    def mix_type(self) -> str:
        if self.mix_index is None:
            return "none"
        return "cutmix" if self.mix_bbox is not None else "mixup"

    def __len__(self) -> int:
        return int(self.index.numel())


def epoch_dir(root: str, epoch: int) -> str:
    return os.path.join(root, f"epoch_{epoch}")


def batch_path(root: str, epoch: int, batch: int) -> str:
    return os.path.join(epoch_dir(root, epoch), f"batch_{batch}.tar")


# ----------------------------------------------------------------------------- encoding

def encode(record: BatchRecord, label_format: str, topk: Optional[int], num_samples: int,
           fill: bool = False) -> list:
    """A record as the list written to disk, in the store's label format (``fill``: top-k with
    the residual fill logit)."""
    if label_format == "full":
        return [_own(v) for v in record.to_list()]
    k = min(int(topk), record.soft_label.shape[1])
    values, classes = record.soft_label.float().topk(k, dim=1)
    label = [values.half(), classes.to(smallest_int_dtype(record.soft_label.shape[1]))]
    if fill:
        label.append(residual_fill(record.soft_label, classes).half())
    coords = torch.round(record.coords.double().clamp(0, 1) * COORD_SCALE).to(torch.int32).to(torch.uint16)
    mix_index = None if record.mix_index is None else record.mix_index.to(smallest_int_dtype(max(len(record), 2)))
    return [coords, _own(record.flip.bool()), mix_index, record.mix_lam, record.mix_bbox,
            label, record.index.to(torch.int32 if num_samples < 2 ** 31 else torch.int64)]


def _own(value: Any) -> Any:
    """torch.save writes a view's whole storage: a batch sliced from a larger tensor would
    carry all of it into the file."""
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.nbytes:
        return value.clone()
    return value


def write_batch(root: str, epoch: int, batch: int, record: BatchRecord, label_format: str = "full",
                topk: Optional[int] = None, num_samples: int = 0, fill: bool = False) -> None:
    files.atomic_torch_save(encode(record, label_format, topk, num_samples, fill), batch_path(root, epoch, batch))


# ----------------------------------------------------------------------------- reading

class Reader:
    """Reads any store's batches as ``BatchRecord``s, validated, with full (B, C) logits."""

    def __init__(self, root: str, manifest: dict):
        self.root, self.manifest = root, manifest
        self.num_samples, self.num_classes = int(manifest["num_samples"]), int(manifest["num_classes"])
        self.input_size = manifest["input_size"]
        self.packed = manifest.get("container") == "epoch"
        self._epoch: Optional[packed.EpochFile] = None  # the last epoch file read (memory-mapped)

    def __getstate__(self) -> dict:  # loader workers open their own maps
        return {**self.__dict__, "_epoch": None}

    def class_index(self, classes: list[str]) -> list[int]:
        """The teacher's class number of each named folder, as the store records it."""
        return class_index_of(self.manifest, classes)

    def where(self, epoch: int, batch: int) -> str:
        """The file (and step) of a batch, as errors name it."""
        if self.packed:
            return f"{packed.epoch_path(self.root, epoch)} step {batch}"
        return batch_path(self.root, epoch, batch)

    def read(self, epoch: int, batch: int) -> BatchRecord:
        if self.packed:
            return self._read_packed(epoch, batch)
        path = batch_path(self.root, epoch, batch)
        data = self.load(path, epoch, batch)
        stored = None
        if self.manifest.get("label_format") == "topk":
            data, stored = decode_topk(data, path, self.num_classes, writes_fill(self.manifest))
        return self._checked(data, path, batch, stored)

    def load(self, path: str, epoch: int, batch: int) -> Any:
        """A batch file as stored, the list of 7 the validator takes (a format read through this
        reader turns its own list into that one here)."""
        return files.safe_torch_load(path, "store batch file")

    def epoch_file(self, epoch: int) -> packed.EpochFile:
        """A packed store's epoch file, its structure checked; a new map for each call."""
        m = self.manifest
        steps = replay.kept_in_epoch(m["fkd_seed"], epoch, int(m["batches_per_epoch"]), keep_of(m))
        return packed.EpochFile(self.root, epoch, m, steps, lambda s: replay.batch_len(
            self.num_samples, int(m["batch_size"]), s))

    def _read_packed(self, epoch: int, batch: int) -> BatchRecord:
        if self._epoch is None or self._epoch.epoch != epoch:
            self._epoch = self.epoch_file(epoch)
        m = self.manifest
        where = self.where(epoch, batch)
        if batch not in self._epoch.row_of:
            raise UserError(f"store {self.root}: epoch {epoch} step {batch} has no labels (the store keeps "
                            f"{keep_of(m):g} of its steps)")
        try:
            data, stored = packed.decode(*self._epoch.step(batch), self.num_classes)
        except ValueError as exc:
            raise UserError(f"store batch file {where}: {exc}") from None
        return self._checked(data, where, batch, stored)

    def _checked(self, data: Any, where: str, batch: int, stored: Optional[torch.Tensor]) -> BatchRecord:
        record = parse_record(data, where, self.num_samples, self.num_classes, masked=stored is not None)
        check_geometry(record, where, self.manifest, batch)
        record.stored = stored
        return record


def keep_of(manifest: Any) -> float:
    """The fraction of steps a store labels (``label_keep``; 1 for stores made before pruning)."""
    return float(manifest.get("label_keep") or 1.0)


class EpochSamples:
    """The samples one epoch has shown so far: a stored batch that repeats one is refused. Each
    file is checked alone by the reader; this is the part of the validator that needs the epoch."""

    def __init__(self, num_samples: int, epoch: int):
        self.seen, self.epoch = torch.zeros(num_samples, dtype=torch.bool), epoch

    def add(self, index: torch.Tensor, path: str) -> None:
        index = index.cpu()
        if bool(self.seen[index].any()):
            raise UserError(f"store batch file {path}: sample indices repeat samples already in epoch {self.epoch}")
        self.seen[index] = True


def check_steps(reader: Reader, epoch: int, steps: list[int]) -> None:
    """Steps of one epoch read in order through the reader, the one validator (types, ranges, NaN,
    geometry), then each sample once in the epoch."""
    shown = EpochSamples(reader.num_samples, epoch)
    for b in steps:
        shown.add(reader.read(epoch, b).index, reader.where(epoch, b))


def check_geometry(record: "BatchRecord", path: str, manifest: dict, batch: int) -> None:
    """What a batch must hold to replay as its teacher saw it: its share of the epoch, each image
    once, crops of positive area inside the image, the store's mix, a cutmix box inside the crop
    whose weight is the share it leaves unmixed. The one validator every reader (trainer, tools)
    goes through."""
    def bad(why: str) -> UserError:
        return UserError(f"store batch file {path}: {why}")

    want = replay.batch_len(int(manifest["num_samples"]), int(manifest["batch_size"]), batch)
    if len(record) != want:
        raise bad(f"{len(record)} samples, expected {want} (batches of {manifest['batch_size']}, "
                  f"{manifest['num_samples']} images)")
    if int(record.index.unique().numel()) != len(record.index):
        raise bad("a sample index appears twice in the batch")
    problem = replay.crop_box_problem(record.coords, EDGE_SLACK)
    if problem:
        raise bad(problem)
    mix_type = manifest.get("mix_type")
    if mix_type and record.mix_type != mix_type:
        raise bad(f"mix type {record.mix_type}, the store's is {mix_type}")
    size = manifest.get("input_size")
    if record.mix_bbox is not None and size:
        x1, y1, x2, y2 = record.mix_bbox
        if not (0 <= x1 <= x2 <= size and 0 <= y1 <= y2 <= size):
            raise bad(f"cutmix box {record.mix_bbox} outside the {size}px crop")
        problem = cutmix_lam_is_area(manifest) and replay.cutmix_lam_problem(record.mix_lam, record.mix_bbox, size)
        if problem:
            raise bad(problem)


def _is_scalar_number(value: Any) -> bool:
    """A Python, numpy or 0-d torch number (upstream stores keep numpy scalars), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.dtype == torch.bool
    return hasattr(value, "__float__") and not isinstance(value, (bool, str, bytes))


def _is_scalar_integer(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return hasattr(value, "__index__") and not isinstance(value, bool)


def parse_record(data: Any, path: str, num_samples: int, num_classes: int, masked: bool = False) -> BatchRecord:
    """Validate a batch record; ``masked``: -inf marks the classes a top-k store left out."""
    def bad(why: str) -> UserError:
        return UserError(f"store batch file {path}: {why}")

    if not isinstance(data, (list, tuple)) or len(data) != 7:
        n = len(data) if isinstance(data, (list, tuple)) else type(data).__name__
        raise bad(f"expected a list of 7 entries (format v1), found {n}")
    coords, flip, mix_index, mix_lam, mix_bbox, soft_label, index = data
    if not (isinstance(coords, torch.Tensor) and coords.dim() == 2 and coords.shape[1] == 4
            and coords.is_floating_point()):
        raise bad("coords must be a float (B, 4) tensor")
    b = coords.shape[0]
    if not (isinstance(flip, torch.Tensor) and flip.shape == (b,)):
        raise bad(f"flip must be a ({b},) tensor")
    if not (isinstance(index, torch.Tensor) and index.shape == (b,) and not index.is_floating_point()):
        raise bad(f"index must be an integer ({b},) tensor")
    if not (isinstance(soft_label, torch.Tensor) and soft_label.shape == (b, num_classes)
            and soft_label.is_floating_point()):
        shape = tuple(soft_label.shape) if isinstance(soft_label, torch.Tensor) else type(soft_label).__name__
        raise bad(f"soft_label must be a float ({b}, {num_classes}) tensor, found {shape}")
    if b and (int(index.min()) < 0 or int(index.max()) >= num_samples):
        raise bad(f"index out of range for a dataset of {num_samples} images")
    if b and not (float(coords.min()) >= 0.0 and float(coords.max()) <= 1.0):
        raise bad("coords outside [0, 1]")
    finite = torch.isfinite(soft_label)
    if masked:  # a top-k store's left-out classes may be -inf, but not a whole row
        ok = bool((finite | torch.isneginf(soft_label)).all()) and (not b or bool(finite.any(dim=1).all()))
    else:  # every row holds a logit (num_classes >= 1): all finite says it
        ok = bool(finite.all())
    if not ok:
        raise bad("soft_label holds NaN or infinite values")
    if mix_index is not None:
        if not (isinstance(mix_index, torch.Tensor) and mix_index.shape == (b,)):
            raise bad(f"mix_index must be a ({b},) tensor or None")
        if b and (int(mix_index.min()) < 0 or int(mix_index.max()) >= b):
            raise bad("mix_index out of range for the batch")
        if not _is_scalar_number(mix_lam) or not 0.0 <= float(mix_lam) <= 1.0:
            raise bad("mix_lam must be a number in [0, 1] when mix_index is set")
    if mix_bbox is not None and (mix_index is None or not isinstance(mix_bbox, (list, tuple, torch.Tensor))
                                 or len(mix_bbox) != 4 or not all(_is_scalar_integer(v) for v in mix_bbox)):
        raise bad("mix_bbox must be 4 integers, set together with mix_index")
    return BatchRecord(coords.float(), flip.bool(), None if mix_index is None else mix_index.long(),
                       None if mix_lam is None else float(mix_lam),
                       None if mix_bbox is None else [int(v) for v in mix_bbox],
                       soft_label, index.long())


# ----------------------------------------------------------------------------- manifest

def manifest_path(root: str) -> str:
    return os.path.join(root, MANIFEST)


def read_manifest(root: str, flag: str = "--fkd-path") -> dict:
    manifest = files.read_manifest_json(
        root, MANIFEST, flag, "store manifest",
        "no epoch_0/batch_0.tar either: not a soft-label store (or relabel has not started writing it)",
        {"format_version": (FORMAT_VERSION, PACKED_VERSION)}, ())
    check_manifest(manifest, f"store manifest {manifest_path(root)}")
    return manifest


def check_manifest(manifest: dict, where: str) -> None:
    """Every value a reader acts on (filling in the defaults of older stores): the one check of a
    manifest read, and of a manifest about to be written, so a store no reader opens is never begun."""
    manifest.setdefault("topk_fill", None)  # stores written before the fill existed have none
    manifest.setdefault("container", "batch")  # and before packed epoch files and label pruning
    manifest.setdefault("label_keep", 1.0)
    manifest.setdefault("topk_fill_temperature", 1.0 if manifest["topk_fill"] else None)
    missing = [k for k in CONTENT_KEYS + ("epochs", "batches_per_epoch", "class_names") if k not in manifest]
    if missing:
        raise UserError(f"{where}: missing entries {', '.join(missing)}")
    # Class names are matched against folder names (a name that is a path is never one), and
    # every count bounds the work a reader does before it acts on it.
    schema.check(manifest, schema.BATCH, where)
    schema.check_batch_counts(manifest, where)
    if (manifest["container"] == "epoch") != (manifest["format_version"] == PACKED_VERSION) or \
            (manifest["container"] == "epoch" and manifest["label_format"] != "topk"):
        raise UserError(f"{where}: container {manifest['container']!r} with format_version "
                        f"{manifest['format_version']} and label_format {manifest['label_format']!r}; epoch files "
                        f"are format {PACKED_VERSION}, top-k only")
    if manifest["container"] == "epoch" and manifest["topk"] > manifest["num_classes"]:
        raise UserError(f"{where}: topk {manifest['topk']} is more than its {manifest['num_classes']} classes")
    if manifest["dataset_fingerprint"] is None and "converted_from" not in manifest:
        raise UserError(f"{where}: dataset_fingerprint is null, so the images could not be checked against the "
                        f"store; only a store converted from an upstream one may lack it")


def first_clash(old: dict, new: dict) -> Optional[str]:
    return files.first_clash(CONTENT_KEYS, old, schema.as_recorded_teachers(new, old))


def check_compatible(root: str, manifest: dict, flag: str = "--fkd-path") -> dict:
    """Read-only check before writing into ``root``: a store already there must have been made
    with the same content settings. Returns the manifest to write (``epochs`` may only grow)."""
    check_manifest(manifest, f"{flag} {root}: the manifest to write")
    if not os.path.exists(manifest_path(root)):
        if os.path.isdir(root) and any(re.fullmatch(r"epoch_\d+(\.pack|\.parts)?", n) for n in os.listdir(root)):
            raise UserError(f"{flag} {root}: holds label files but no {MANIFEST} (an upstream store?); "
                            f"use a new {flag}")
        return manifest
    old = read_manifest(root, flag)
    clash = first_clash(old, manifest)
    if clash:
        raise UserError(f"{flag} {root}: the store was made with other settings ({clash}); "
                        f"use a new {flag} or the original settings")
    check_digest(old.get("images_digest"), manifest.get("images_digest"),
                 f"--data {(manifest.get('args') or {}).get('data')}", f"{flag} {root}")
    if manifest["epochs"] <= old["epochs"]:
        return old
    return {**manifest, "images_digest": old["images_digest"]} if old.get("images_digest") else manifest


def lock(root: str, flag: str = "--fkd-path") -> None:
    """Take the store's lock: a second run on the same store is refused instead of mixing its files in."""
    files.lock_dir(root, flag, f"another run is writing this store; wait for it to finish or use another {flag}")


def write_manifest(root: str, manifest: dict, flag: str = "--fkd-path") -> None:
    files.ensure_dir(root, flag)
    files.atomic_write_json(manifest_path(root), manifest)


# ----------------------------------------------------------------------------- the store interface

class BatchStore(Store):
    """Our batch store (format v1, full or top-k): one file per student step."""

    kind = format = BATCH

    @classmethod
    def open(cls, path: str, flag: str = "--fkd-path", index: Optional[FolderIndex] = None,
             request: Request = Request()) -> "BatchStore":
        return cls(path, read_manifest(path, flag), flag)

    def check_request(self, request: Request) -> None:
        m, where = self.manifest, self.where
        if request.batch_size is not None and request.batch_size != m["batch_size"]:
            raise UserError(f"-b/--batch-size {request.batch_size} does not match {where}, which holds "
                            f"batches of {m['batch_size']}; omit -b or relabel with -b {request.batch_size}")
        if request.epochs is not None and request.epochs > m["epochs"]:
            raise UserError(f"--epochs {request.epochs} is more than the {m['epochs']} epochs {where} "
                            f"holds; train at most {m['epochs']} epochs or relabel with --epochs {request.epochs}")
        if request.mix_type is not None and request.mix_type != m["mix_type"]:
            raise UserError(f"--mix-type {request.mix_type} does not match {where}, which was made with "
                            f"{m['mix_type']}; the mix is replayed from the store")

    def reader(self, index: Optional[FolderIndex] = None) -> Reader:
        return Reader(self.path, dict(self.manifest))

    def jobs(self, epochs: int) -> list[tuple[int, int]]:
        """(epoch, step) of every labelled step of the first ``epochs`` epochs (all, unless pruned)."""
        m = self.manifest
        return replay.kept_steps(m.get("fkd_seed") or 0, epochs, int(m["batches_per_epoch"]), keep_of(m))

    def missing(self, epochs: int, index: Optional[FolderIndex] = None) -> list[str]:
        if self.manifest.get("container") == "epoch":
            return packed.missing_epochs(self.path, epochs)
        return [batch_path(self.path, e, b) for e, b in self.jobs(epochs)
                if not os.path.isfile(batch_path(self.path, e, b))]

    def check_complete(self, epochs: int, index: Optional[FolderIndex] = None) -> None:
        missing = self.missing(epochs)
        if missing:
            kind = "epoch" if self.manifest.get("container") == "epoch" else "batch"
            raise UserError(f"{self.flag} {self.path}: {len(missing)} {kind} files missing for {epochs} epochs "
                            f"(first: {missing[0]}); rerun the relabel command to finish the store")

    def label_cycle(self, epochs: int) -> Optional[int]:
        # The cycle's length grows when the store is extended: a run whose steps came round
        # again replays other steps after an extension (its label source then differs).
        if keep_of(self.manifest) >= 1.0:
            return None
        kept = len(self.jobs(int(self.manifest["epochs"])))
        return kept if epochs * int(self.manifest["batches_per_epoch"]) > kept else None

    def replayed(self, jobs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The stored step each student step replays: itself, or in a pruned store the kept steps
        cycled in order, so that a student still trains every step (as LPLD reuses its labels)."""
        if keep_of(self.manifest) >= 1.0:
            return jobs
        kept, per_epoch = self.jobs(int(self.manifest["epochs"])), int(self.manifest["batches_per_epoch"])
        return [kept[(e * per_epoch + b) % len(kept)] for e, b in jobs]

    def dataset(self, index: FolderIndex, jobs: list[tuple[int, int]], cache_bytes: int = 0, rank: int = 0,
                world: int = 1, with_stored: bool = False) -> Dataset:
        return StoreBatches(self.reader(), index, self.replayed(jobs), cache_bytes, rank, world, with_stored)

    def fill_temperature(self) -> Optional[float]:
        return fill_temperature(self.manifest) if self.manifest.get("topk_fill") else None

    def stored_steps(self, index: FolderIndex, jobs: list[tuple[int, int]]) -> Dataset:
        """The stored steps ``jobs`` themselves (no replay cycle) with their pixels, and which logits
        each holds: what the tools draw and check."""
        return StoreBatches(self.reader(), index, jobs, with_stored=True)

    def conversion(self, options: Conversion, index: Optional[FolderIndex] = None) -> Converted:
        """Into our batch store: top-k packed one file per epoch, full one file per step; a pruned
        store stays pruned. A top-k source gives at most its top k."""
        m, src = self.manifest, f"{self.flag} {self.path}"
        if m["label_format"] == "topk":
            if options.label_format == "full":
                raise UserError(f"--label-format full: {src} keeps only the top {m['topk']} logits; "
                                f"the others cannot be restored")
            if options.topk > m["topk"]:
                raise UserError(f"--topk {options.topk}: {src} keeps only the top {m['topk']} logits")
        if options.label_format == "topk" and options.topk > m["num_classes"]:
            raise UserError(f"--topk {options.topk}: {src} has {m['num_classes']} classes; keep at most "
                            f"{m['num_classes']}")
        manifest = {**self.content(), **container_of(options.label_format), "label_keep": keep_of(m),
                    "label_format": options.label_format,
                    "topk": options.topk if options.label_format == "topk" else None,
                    **fill_entries(options.label_format, options.topk_fill, options.fill_temperature)}
        if options.label_format == "topk":
            manifest["label_dtype"] = "float16"
        manifest["converted_from"] = {"path": options.source, "kind": self.source_name(),
                                      "label_format": m["label_format"], "topk": m["topk"],
                                      "topk_fill": m.get("topk_fill")}
        reader = self.reader()
        return Converted(manifest, self.jobs(int(m["epochs"])), lambda e, b: (reader.read(e, b),), "batches")

    def source_name(self) -> str:
        return OURS

    def check(self, index: Optional[FolderIndex] = None, sample: int = 0) -> str:
        epochs = int(self.manifest["epochs"])
        self.check_complete(epochs)
        reader, steps = self.reader(), {}
        every = self.jobs(epochs)
        jobs = spread(every, sample)
        for e, b in jobs:
            steps.setdefault(e, []).append(b)
        with running_on(1):  # many small operations
            for e, kept in steps.items():
                # a whole epoch file's records are checked at once, and the reader reads the steps of
                # one that fails, naming the first bad step; a file per step, or a sample, it reads all
                if not (reader.packed and len(jobs) == len(every)
                        and packed.epoch_ok(reader.epoch_file(e), reader.manifest)):
                    check_steps(reader, e, kept)
        if reader.packed:
            return checked(len(jobs), len(every), "steps", f" in {epochs} epoch files")
        return checked(len(jobs), len(every), "files")

    def with_images(self, index: FolderIndex, data_arg: str) -> tuple[Store, Optional[str]]:
        m = self.manifest
        if len(index) != int(m["num_samples"]):
            raise UserError(f"{data_arg}: {len(index)} images, but {self.flag} {self.path} was made from "
                            f"{m['num_samples']}; not the images it was made from")
        if m.get("dataset_fingerprint") and index.fingerprint() != m["dataset_fingerprint"]:
            return self, (f"note: {data_arg} is not the folder the store was made from (file names or "
                          f"sizes differ from {(m.get('args') or {}).get('data')}); comparing anyway")
        return self, None

    def summary(self, index: Optional[FolderIndex] = None) -> list[tuple[str, str]]:
        m = self.manifest
        epochs, batches = int(m["epochs"]), int(m["batches_per_epoch"])
        packed_files = m.get("container") == "epoch"
        labelled = len(self.jobs(epochs))
        files_wanted = epochs if packed_files else labelled
        present = files_wanted - len(self.missing(epochs))
        label = "full" if m["label_format"] == "full" else f"topk {m['topk']}" + (
            " + residual fill" if m.get("topk_fill") else " (the rest -inf)")
        dtype = m.get("label_dtype") or ("float16" if m.get("use_fp16") else "float32")
        mix = m["mix_type"]
        alpha = m.get("mixup") if mix == "mixup" else m.get("cutmix") if mix == "cutmix" else None
        source = m.get("converted_from")
        rows = [
            ("format", "ours v%d (manifest.json)" % m["format_version"]
             + (f", converted from {'our' if source.get('kind') == OURS else 'an upstream'} "
                f"{source.get('kind')} store" if source else "")),
            ("epochs", str(epochs)),
            ("batches per epoch", str(batches)),
            ("label files", f"{present} of {files_wanted} "
                            f"{'epoch files (packed)' if packed_files else 'batch files'} present"),
            ("labelled steps", f"{labelled} of {epochs * batches}" + (
                f" (pruned: label_keep {keep_of(m):g}; the trainer cycles them)" if labelled < epochs * batches
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


def new_manifest(cfg: Any, images: LabelledImages, batches: int, ensemble: Optional[str], amp: Optional[str],
                 skipped: list[str]) -> dict:
    """The manifest of a store relabel writes: ``cfg`` is relabel's resolved config (its label,
    crop, mix and ensemble settings, recorded with its arguments), ``ensemble`` the rule recorded
    (None: one teacher, nothing combined), ``amp`` the autocast dtype's name, ``skipped`` the
    images --skip-bad-images left out (relative to the folder)."""
    index = images.index
    return {
        **container_of(cfg.label_format),
        "label_keep": cfg.label_keep,
        "created_by": "relabel/generate_soft_label.py",
        "args": provenance.args_dict(cfg),
        "fkd_seed": cfg.fkd_seed,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
        "batches_per_epoch": batches,
        **images.entries(),
        "input_size": cfg.input_size,
        "min_scale_crops": cfg.min_scale_crops,
        "max_scale_crops": cfg.max_scale_crops,
        "mix_type": cfg.mix_type,
        "mixup": cfg.mixup if cfg.mix_type == "mixup" else None,
        "cutmix": cfg.cutmix if cfg.mix_type == "cutmix" else None,
        "use_fp16": bool(cfg.use_fp16),
        "label_dtype": "float16" if cfg.use_fp16 or cfg.label_format == "topk" else "float32",
        "label_format": cfg.label_format,
        "topk": cfg.topk if cfg.label_format == "topk" else None,
        **fill_entries(cfg.label_format, cfg.topk_fill, cfg.topk_fill_temperature),
        "temperature": cfg.temperature,
        "teachers": list(images.teachers),
        "ensemble": ensemble,
        "primary_weight": cfg.primary_weight if ensemble == "primary-weighted" else None,
        "amp": amp,
        **({"images_digest": index.content_digest} if index.content_digest else {}),  # from a pack only
        "versions": provenance.library_versions(),
        "skipped_images": skipped,
    }


def container_of(label_format: str) -> dict:
    """The manifest entries saying how a new store of ``label_format`` lies on disk: top-k packed
    one file per epoch (format 2), full labels one upstream-compatible file per step (format 1)."""
    if label_format == "topk":
        return {"format_version": PACKED_VERSION, "container": "epoch"}
    return {"format_version": FORMAT_VERSION, "container": "batch"}


class BatchWriter:
    """Writes the labelled steps of a store created by ``create``, each atomically: a batch file,
    or a part that ``finish`` (and rank 0 on the way) packs into its epoch file."""

    def __init__(self, path: str, manifest: dict, info: Optional[DistInfo] = None):
        self.path, self.manifest, self.info = path, manifest, info
        self.fill = writes_fill(manifest)
        self.packed = manifest.get("container") == "epoch"
        self.packs = info is None or info.is_main  # one rank packs, so no two write an epoch file
        self._unpacked: set[int] = set()

    def kept(self, epoch: int) -> list[int]:
        m = self.manifest
        return replay.kept_in_epoch(m["fkd_seed"], epoch, int(m["batches_per_epoch"]), keep_of(m))

    def exists(self, epoch: int, batch: int) -> bool:
        if self.packed:
            return os.path.exists(packed.epoch_path(self.path, epoch)) or \
                os.path.exists(packed.part_path(self.path, epoch, batch))
        return os.path.exists(batch_path(self.path, epoch, batch))

    def write(self, epoch: int, batch: int, record: BatchRecord) -> None:
        m = self.manifest
        if not self.packed:
            write_batch(self.path, epoch, batch, record, m["label_format"], m["topk"], m["num_samples"], self.fill)
            return
        packed.write_part(self.path, epoch, batch, record, m)
        if self.packs:  # pack the epochs before this one as soon as their parts are all there
            self._unpacked.add(epoch)
            for e in sorted(e for e in self._unpacked if e < epoch):
                if packed.pack_epoch(self.path, e, self.kept(e), m):
                    self._unpacked.discard(e)

    def finish(self) -> None:
        """After the last write of every rank: pack every epoch whose parts are all there (those
        of earlier runs too). A packed store is complete only once this has run."""
        if not self.packed:
            return
        if self.info is not None:
            distributed.barrier(self.info)

        def pack_all() -> None:
            for e in range(int(self.manifest["epochs"])):
                packed.pack_epoch(self.path, e, self.kept(e), self.manifest)
        if self.info is None:
            pack_all()
        else:
            distributed.on_main_then_all(self.info, pack_all)


def create(path: str, manifest: dict, info: Optional[DistInfo] = None, flag: str = "--fkd-path") -> BatchWriter:
    """Create a store, or reopen one made with the same content settings to finish or extend it.
    Every rank checks read-only first, so a refusal stops them all at once; then rank 0 takes the
    lock, checks again under it, writes the manifest, makes the epoch (or parts) folders and
    removes the temporary files of writers that died."""
    manifest = check_compatible(path, manifest, flag)

    def prepare() -> None:
        lock(path, flag)
        settled = check_compatible(path, manifest, flag)
        write_manifest(path, settled, flag)
        for e in range(manifest["epochs"]):
            if settled.get("container") == "epoch":
                if os.path.isfile(packed.epoch_path(path, e)):
                    continue
                folder = packed.parts_dir(path, e)
            else:
                folder = epoch_dir(path, e)
            files.ensure_dir(folder, flag, inside=path)
            files.remove_stale_tmp(folder)
        files.remove_stale_tmp(path)
    if info is None:
        prepare()
    else:
        distributed.on_main_then_all(info, prepare)
        distributed.require_shared(info, manifest_path(path), flag, path)
    return BatchWriter(path, manifest, info)
