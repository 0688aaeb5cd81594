"""What every store format shares: the resolved settings a reader gets, the flags a user may
give for settings a store records, and the checks that hold those flags to the store.

A format is one subclass of ``Store`` (``stores/batch.py``, ``stores/upstream.py``,
``stores/per_image.py``); ``stores.open_store`` picks it and runs every check once, so a
script makes one call and gets settings it can trust.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from torch.utils.data import Dataset

from softlabel.data import FolderIndex
from softlabel.errors import UserError


# The kinds of store ``stores.detect`` tells apart: the one vocabulary of the code. A manifest on
# disk says its source otherwise (a converted store's ``converted_from.kind`` is "ours", "sre2l",
# "prism" or "fkd-upstream"): ``Store.source_name`` maps at that boundary only.
BATCH = "batch"                  # ours, one file per step (format 1) or per epoch (format 2)
UPSTREAM = "upstream"            # SRe2L / G-VBSM / PRISM batch files, no manifest
PER_IMAGE = "per-image"          # ours, FKD's layout
FKD_UPSTREAM = "fkd-upstream"    # the per-image files FKD itself writes
KINDS = (BATCH, UPSTREAM, PER_IMAGE, FKD_UPSTREAM)
OURS = "ours"  # ``converted_from.kind`` of a store converted from a BATCH store (upstream ones: their name)


@dataclass(frozen=True)
class Request:
    """Flags given for settings a store records; None takes the store's. A flag that
    contradicts the store is refused (``epochs`` may be fewer than stored)."""
    input_size: Optional[int] = None
    min_scale_crops: Optional[float] = None
    max_scale_crops: Optional[float] = None
    fkd_seed: Optional[int] = None
    num_classes: Optional[int] = None
    batch_size: Optional[int] = None
    epochs: Optional[int] = None
    mix_type: Optional[str] = None
    label_type: Optional[str] = None   # per-image: FKD's --soft_label_type
    num_crops: Optional[int] = None    # per-image: crops used per image and epoch
    # How the labels are to be read, not settings the store records:
    interpolation: str = "bilinear"    # FKD's own files: crops re-rendered as its trainer (or "bicubic")
    need_pixels: bool = True           # an upstream store is then refused without input_size


# Request fields every format records, with the flag that sets each.
RECORDED = {"input_size": "--input-size", "min_scale_crops": "--min-scale-crops",
            "max_scale_crops": "--max-scale-crops", "fkd_seed": "--fkd-seed", "num_classes": "--num-classes"}


@dataclass(frozen=True)
class LabelledImages:
    """What every new store records of its images and teachers, whatever its format: the images
    (``index``), each folder's teacher class and how it was found, the teachers' identities and
    the normalization of the first (the student sees the pixels as the primary teacher wants them)."""
    index: FolderIndex
    class_index: tuple[int, ...]
    class_mapping: str
    teachers: tuple[Mapping[str, Any], ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, index: FolderIndex, teachers: Sequence[Any], class_index: Sequence[int],
           class_mapping: str) -> "LabelledImages":
        """From loaded teachers (``teachers.Teacher``: ``describe()``, ``num_classes``, ``mean``, ``std``)."""
        first = teachers[0]
        return cls(index, tuple(class_index), class_mapping, tuple(t.describe() for t in teachers),
                   first.num_classes, first.mean, first.std)

    def entries(self) -> dict[str, Any]:
        """The manifest entries every format writes alike."""
        return {"num_samples": len(self.index), "num_classes": self.num_classes,
                "class_names": self.index.classes, "class_to_index": dict(zip(self.index.classes, self.class_index)),
                "class_mapping": self.class_mapping, "mean": list(self.mean), "std": list(self.std),
                "dataset_fingerprint": self.index.fingerprint()}


@dataclass(frozen=True)
class StoreSettings:
    """A store's settings after every check: what the trainer and the tools use."""
    path: str
    format: str                       # "batch" (ours), "sre2l", "prism", "per-image", "fkd-upstream"
    layout: str                       # "batch" (one file per step) or "per-image"
    fkd_seed: Optional[int]           # None: not recorded (FKD's own files)
    input_size: Optional[int]         # None: an upstream store opened without --input-size (no pixels)
    min_scale_crops: Optional[float]
    max_scale_crops: Optional[float]
    mix_type: str
    batch_size: Optional[int]         # images per stored batch (batch layout)
    epochs: Optional[int]             # epochs stored (batch layout)
    batches_per_epoch: Optional[int]
    num_samples: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label_format: str                 # "full", "topk", or a per-image label type
    topk: Optional[int]
    num_crops: Optional[int]          # crops stored per image (per-image layout)
    label_keep: float = 1.0           # fraction of steps labelled (label pruning; batch layout)


class StoreWriter(Protocol):
    """What ``stores.create_store`` returns for every format: ``exists(*key)`` (a step (epoch, step),
    or an image) is written already, so a rerun resumes; ``write(*key, *labels)`` writes it atomically;
    ``finish()`` after the last write of every rank (a packed store is complete only then)."""

    def exists(self, *key: int) -> bool: ...

    def write(self, *key_and_labels: Any) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Labelling:
    """How a store's labels were made, as ``--verify-teacher`` runs its teachers again."""
    teachers: tuple                   # the teacher entries (arch, source, weights, sha256, mean, std...)
    ensemble: str = "mean"
    primary_weight: float = 0.5
    temperature: Optional[float] = None  # None: not recorded
    amp: Optional[str] = None         # relabel's autocast on a GPU ("bfloat16", "float16"; None: off)


VOLATILE = ("epochs", "args", "versions", "created_by", "amp", "converted_from")


DEFAULT_CROPS_PER_STEP = 4  # the trainer's --num-crops default: FKD's train_FKD.py --num_crops


@dataclass(frozen=True, eq=False)
class StepPlan:
    """How training draws a per-image store's crops: ``images_per_step`` images of each epoch's
    order (from (``seed``, epoch)), ``crops_per_epoch`` stored crops of each; ``passes``:
    train_FKD.py's epoch loop (below); ``targets``: each image's class as the teacher numbers
    them (None: the store's class mapping of the folders)."""
    seed: int = 0
    images_per_step: int = 1
    crops_per_epoch: int = DEFAULT_CROPS_PER_STEP
    passes: Optional[Sequence[tuple[int, int]]] = None
    targets: Optional[torch.Tensor] = None


class Store:
    """An opened store: its manifest (read-only), its settings and its loader dataset."""

    kind = ""          # one of KINDS
    format = ""
    layout = "batch"
    needs_images = False  # found, or counted, only through the images it was made from (upstream stores)
    needs_images_hint = ""  # what a command given no images says of it: "is ...: pass --data DIR ..."
    # The Request fields a command's flags may set when opening a store of this layout.
    request_fields: tuple[str, ...] = ("input_size", "fkd_seed")
    not_converted = ""  # why a conversion refuses it as its source ("": it converts)

    def __init__(self, path: str, manifest: dict, flag: str):
        self.path, self.flag = path, flag
        self.manifest: Mapping[str, Any] = MappingProxyType(manifest)
        self.settings = self._settings()

    @property
    def where(self) -> str:
        return f"the store {self.flag} {self.path}"

    def _settings(self) -> StoreSettings:
        m = self.manifest
        return StoreSettings(
            path=self.path, format=self.format, layout=self.layout, fkd_seed=m.get("fkd_seed"),
            input_size=m["input_size"], min_scale_crops=m.get("min_scale_crops"),
            max_scale_crops=m.get("max_scale_crops"), mix_type=m.get("mix_type") or "none",
            batch_size=m.get("batch_size"), epochs=m.get("epochs"), batches_per_epoch=m.get("batches_per_epoch"),
            num_samples=int(m["num_samples"]), num_classes=int(m["num_classes"]),
            class_names=tuple(m["class_names"]), mean=tuple(m["mean"]), std=tuple(m["std"]),
            label_format=m.get("label_format") or m.get("label_type"), topk=m.get("topk"),
            num_crops=m.get("num_crops"), label_keep=float(m.get("label_keep") or 1.0))

    def identity(self) -> str:
        """What the labels are, not where they lie: a hash of the manifest less what may change
        without changing a label (epochs appended, run arguments, versions)."""
        content = {k: v for k, v in self.manifest.items() if k not in VOLATILE}
        text = json.dumps(content, sort_keys=True, default=str)
        return f"{self.format} store {hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def class_index(self, classes: list[str]) -> list[int]:
        """The teacher's class number of each named folder, as the store records it."""
        return class_index_of(self.manifest, classes)

    def fill_temperature(self) -> Optional[float]:
        """The temperature the store's residual top-k fill is exact at (None: no such fill)."""
        return None

    def label_cycle(self, epochs: int) -> Optional[int]:
        """How many stored steps a student's ``epochs`` epochs replay in a cycle, where they come
        round again (a pruned store); None where every student step replays its own."""
        return None

    # ---- what a format provides
    @classmethod
    def open(cls, path: str, flag: str, index: Optional[FolderIndex] = None,
             request: Request = Request()) -> "Store":
        """The store at ``path`` (``flag`` names it in errors); ``index`` (the images) and
        ``request`` (the flags given) for a format that needs them to read its files."""
        raise NotImplementedError

    def check_request(self, request: Request) -> None:
        """Refuse flags that contradict the store (the recorded settings are checked by the caller)."""

    def missing(self, epochs: int, index: Optional[FolderIndex] = None) -> list[str]:
        """The files the first ``epochs`` epochs need that are not there."""
        raise NotImplementedError

    def dataset(self, index: FolderIndex, jobs: list[tuple[int, int]], cache_bytes: int = 0, rank: int = 0,
                world: int = 1, **options: Any) -> Dataset:
        """The loader dataset of rank ``rank``: one item per (epoch, step) of ``jobs``."""
        raise NotImplementedError

    def check_complete(self, epochs: int, index: Optional[FolderIndex]) -> None:
        raise NotImplementedError

    def reader(self, index: Optional[FolderIndex] = None) -> Any:
        """The store's labels, each validated as it is read: in the batch layout an object whose
        ``read(epoch, step)`` is a ``BatchRecord``; per image (``index`` needed: the files are named
        after the images) a function of an image's number giving (coords, flips, classes, values)."""
        raise NotImplementedError

    # ---- what the tools ask of a store (fkd_info), answered by each format alike
    def summary(self, index: Optional[FolderIndex] = None) -> list[tuple[str, str]]:
        """(name, value) rows saying what the store holds and how it was made; ``index``: the
        images it was made from, where given."""
        raise NotImplementedError

    def check(self, index: Optional[FolderIndex] = None, sample: int = 0) -> str:
        """Read every label file through the format's validator; what was checked ("N files
        checked"). One UserError naming the first missing or bad file. ``sample``: only that many
        steps (per image: files), spread evenly from the first to the last (0: all)."""
        raise NotImplementedError

    def source_name(self) -> str:
        """What a store converted from this one records as its source (``converted_from.kind``)."""
        raise NotImplementedError

    def content(self) -> dict:
        """The manifest less what only this format's reader uses: what a conversion starts from."""
        return dict(self.manifest)

    def teachers(self) -> list:
        """The teacher entries the store records (arch, source, weights, sha256...; none: [])."""
        return list(self.manifest.get("teachers") or [])

    def labelling(self) -> Labelling:
        """Its teachers and how they were run (ensemble rule, temperature, autocast)."""
        m = self.manifest
        temperature = m.get("temperature")
        return Labelling(tuple(self.teachers()), m.get("ensemble") or "mean", m.get("primary_weight") or 0.5,
                         None if temperature is None else float(temperature), m.get("amp"))

    def conversion(self, options: "Conversion", index: Optional[FolderIndex]) -> "Converted":
        """What converting it into our format writes: the new store's manifest, its keys (steps, or
        images) and each key's labels as its writer takes them."""
        raise NotImplementedError

    @classmethod
    def request(cls, given: Mapping[str, Any]) -> Request:
        """The Request of the flags ``given`` (field -> value) that apply to this layout."""
        return Request(**{k: given.get(k) for k in cls.request_fields})

    def with_images(self, index: FolderIndex, data_arg: str) -> tuple["Store", Optional[str]]:
        """This store read with ``index``, the images it was made from (``data_arg`` names them),
        to recompute its labels; and a note to print when the images differ from those it records."""
        return self, None


@dataclass(frozen=True)
class Conversion:
    """What a user asks of a conversion into our format (``convert_labels``); the source store
    tells what it makes of it (``Store.conversion``)."""
    source: str                       # the source's path, as the new store records it
    label_format: str = "topk"        # batch stores: "full" or "topk"
    topk: int = 5
    topk_fill: str = "residual"       # a --topk-fill choice
    fill_temperature: float = 1.0
    temperature: float = 1.0          # FKD's own files: FKD_SLG's --temp


@dataclass(frozen=True)
class Converted:
    """A conversion's plan: the new store's manifest, the keys to write, and each key's labels."""
    target: dict
    keys: list
    labels: Callable[..., tuple]      # labels(*key) -> what the writer's write(*key, ...) takes after the key
    unit: str                         # what a key is in the report: "batches", "per-image files"


def spread(items: Sequence, k: int) -> list:
    """``k`` of the items spread evenly from the first to the last (0 or more than there are: all)."""
    if k <= 0 or k >= len(items):
        return list(items)
    if k == 1:
        return [items[0]]
    return [items[i] for i in sorted({round(i * (len(items) - 1) / (k - 1)) for i in range(k)})]


def checked(count: int, total: int, what: str, where: str = "") -> str:
    """What a check read: "N files checked" (``where``: in what), or of a sample (``spread``) "N of M
    files checked (spread evenly)"."""
    if count == total:
        return f"{count} {what} checked{where}"
    return f"{count} of {total} {what}{where} checked (spread evenly)"


def fmt_floats(values: Any) -> str:
    """A list of floats for a summary row ("-" for none)."""
    return "[" + ", ".join("-" if v is None else f"{float(v):.4g}" for v in values) + "]" if values else "-"


def weights_name(t: Mapping[str, Any]) -> str:
    """A teacher entry's weights for a summary: the published weights' name, or a file."""
    if t.get("weights"):
        return str(t["weights"])
    return "a weight file" if t.get("source") == "private" else "weights name not recorded"


def class_index_of(manifest: Mapping[str, Any], classes: list[str]) -> list[int]:
    """Teacher class index of each named folder, as a store's manifest records it."""
    mapping = manifest["class_to_index"]
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise UserError(f"class folder '{missing[0]}' is not one of the store's classes")
    return [int(mapping[c]) for c in classes]


def cutmix_lam_is_area(manifest: Mapping[str, Any]) -> bool:
    """Whether a store's cutmix weights are 1 - each box's share of the crop, as our relabel writes
    them; SRe2L / G-VBSM / PRISM keep the Beta draw made before the box was clipped, and so do our
    stores converted from theirs."""
    source = manifest.get("converted_from") or {}
    return "legacy_kind" not in manifest and source.get("kind", OURS) == OURS


def check_recorded(request: Request, manifest: Mapping[str, Any], where: str) -> None:
    """A flag given for a setting the store records must agree with it (None: not recorded)."""
    for attr, flag in RECORDED.items():
        given, recorded = getattr(request, attr), manifest.get(attr)
        if given is not None and recorded is not None and given != recorded:
            raise UserError(f"{flag} {given} does not match {where}, which was made with "
                            f"{recorded}; omit {flag} to use the store's")


def check_images(store: Store, index: FolderIndex, skip_bad_images: bool, flag: str) -> None:
    """The images are those the store was made from, left out as it left them out."""
    m = store.manifest
    if m.get("skipped_images") and not skip_bad_images:
        raise UserError(f"{store.flag} {store.path} was made with --skip-bad-images (it left out "
                        f"{len(m['skipped_images'])} unreadable images, first "
                        f"{m['skipped_images'][0]}); pass --skip-bad-images here too")
    if m.get("dataset_fingerprint") and index.fingerprint() != m["dataset_fingerprint"]:
        made_from = (m.get("args") or {}).get("data")
        raise UserError(f"{flag} {index.root}: not the images {store.where} was made from (file names or "
                        f"sizes differ" + (f"; it was made from {made_from})" if made_from else ")"))
    check_digest(m.get("images_digest"), index.content_digest, flag, store.where)


def check_digest(recorded, content: Optional[str], data: str, where: str) -> None:
    """A store made from a packed folder records the pack's content digest; another pack of its
    kind (pixels, or files in an LMDB), of other images with the same names and sizes, is refused.
    (A folder, or a pack of the other kind, has no comparable digest: only the fingerprint is
    checked.)"""
    if recorded is not None and not isinstance(recorded, str):
        raise UserError(f"{where}: images_digest must be a string")
    same_kind = recorded and content and recorded.split(":")[0] == content.split(":")[0]
    if same_kind and recorded != content:
        raise UserError(f"{data}: not the images {where} was made from (a pack of other image contents, or of "
                        f"other shapes, with the same file names and sizes)")


def same_path(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)
