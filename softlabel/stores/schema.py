"""Manifest schemas: every value a reader acts on is checked once, when the manifest is read
(type, range, required or nullable), and so are the counts that bound the work a reader does.
A manifest that fails is one line naming the file and the entry, never a traceback later."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from softlabel.ensemble import ENSEMBLES
from softlabel.errors import UserError
from softlabel.files import is_plain_name
from softlabel.replay import MIX_TYPES, RESAMPLE
from softlabel.teachers import SOURCES

# What a number read from a file (or a flag) may ask for: generous for real stores (ImageNet-21k
# classes, a 300-epoch FKD store of all ImageNet at batch 1024 is 375,000 files), far below what
# would exhaust memory or disk building paths and buffers.
MAX_INPUT_SIZE = 4096
MAX_CLASSES = 1_000_000
MAX_SAMPLES = 100_000_000
MAX_EPOCHS = 100_000
MAX_BATCH_FILES = 10_000_000
MAX_CROPS = 100_000


@dataclass(frozen=True)
class Field:
    kind: str        # int, number, str, bool, list, dict, floats3, names, strs, class_index, sha256
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: tuple = ()
    nullable: bool = False
    positive: bool = False                 # number: strictly above lo
    optional: bool = False                 # may be absent: stores written before the entry existed lack it
    entries: Optional[Mapping[str, "Field"]] = None  # dict: its own schema; list: each item's (an object)
    same_as: Optional[str] = None          # must equal this entry of the manifest itself
    requires: Optional[str] = None         # set (not null) only beside this entry of the same object


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_json_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _problem(value: Any, f: Field, manifest: Mapping[str, Any]) -> Optional[str]:
    """What is wrong with ``value`` for ``f``, or None."""
    if value is None:
        return None if f.nullable else "must be set, found null"
    if f.kind == "int":
        if not _is_int(value):
            return f"must be an integer, found {value!r:.60}"
    elif f.kind == "number":
        if not _is_finite_json_number(value):
            return f"must be a finite number, found {value!r:.60}"
        if f.positive and f.lo is not None and value <= f.lo:
            return f"must be above {f.lo}, found {value}"
    elif f.kind == "str":
        if not isinstance(value, str):
            return f"must be a string, found {value!r:.60}"
    elif f.kind == "sha256":
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            return f"must be a sha256 (64 hexadecimal digits), found {value!r:.60}"
    elif f.kind == "strs":
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return f"must be a list of strings, found {value!r:.60}"
    elif f.kind == "dict":
        if not isinstance(value, dict):
            return f"must be a JSON object, found {value!r:.60}"
    elif f.kind == "bool":
        if not isinstance(value, bool):
            return f"must be true or false, found {value!r:.60}"
    elif f.kind == "list":
        if not isinstance(value, list):
            return f"must be a list, found {type(value).__name__}"
    elif f.kind == "floats3":
        if not (isinstance(value, list) and len(value) == 3 and all(_is_finite_json_number(v) for v in value)):
            return f"must be 3 finite numbers, found {value!r:.60}"
        if f.positive and not all(v > 0 for v in value):
            return f"must be 3 positive numbers (a zero would divide the pixels by zero), found {value!r:.60}"
    elif f.kind == "names":
        if not (isinstance(value, list) and all(is_plain_name(v) for v in value)):
            bad = value if not isinstance(value, list) else next(v for v in value if not is_plain_name(v))
            return f"holds a class name that is not a plain folder name: {bad!r:.60}"
        if len(set(value)) != len(value):
            return "names a class twice"
    elif f.kind == "class_index":
        n = manifest.get("num_classes")
        if not (isinstance(value, dict) and all(is_plain_name(k) and _is_int(v) for k, v in value.items())):
            return "must map folder names to class indices"
        if _is_int(n) and any(not 0 <= v < n for v in value.values()):
            return f"maps a folder to a class outside the {n} classes"
    if f.kind in ("int", "number") and ((f.lo is not None and value < f.lo) or (f.hi is not None and value > f.hi)):
        return f"must be in [{f.lo}, {f.hi}], found {value}"
    if f.choices and value not in f.choices:
        return f"must be one of {', '.join(map(str, f.choices))}, found {value!r:.60}"
    if f.same_as is not None and _is_int(manifest.get(f.same_as)) and value != manifest[f.same_as]:
        return f"must be the store's {f.same_as} {manifest[f.same_as]}, found {value!r:.60}"
    return None


def check(manifest: Any, schema: Mapping[str, Field], where: str) -> None:
    """Every entry of ``schema`` present (unless optional) and valid in ``manifest``, nested entries
    too (a teacher entry's fields), or one UserError naming the entry ("teachers[0].mean")."""
    if not isinstance(manifest, dict):
        raise UserError(f"{where}: not a JSON object")
    _check_entries(manifest, schema, where, "", manifest)


def _check_entries(obj: dict, schema: Mapping[str, Field], where: str, prefix: str, manifest: dict) -> None:
    for key, f in schema.items():
        name = prefix + key
        if key not in obj:
            if f.optional:
                continue
            raise UserError(f"{where}: missing entry {name}")
        value = obj[key]
        if f.requires is not None and value is not None and obj.get(f.requires) is None:  # read as a pair
            raise UserError(f"{where}: {name} is given without {prefix}{f.requires}")
        problem = _problem(value, f, manifest)
        if problem:
            raise UserError(f"{where}: {name} {problem}")
        if f.entries is None or value is None:
            continue
        items = [(name, value)] if f.kind == "dict" else [(f"{name}[{n}]", v) for n, v in enumerate(value)]
        for item_name, item in items:
            if not isinstance(item, dict):
                raise UserError(f"{where}: {item_name} must be a JSON object, found {item!r:.60}")
            _check_entries(item, f.entries, where, item_name + ".", manifest)


SIZE = Field("int", 1, MAX_INPUT_SIZE)
# null: converted from an upstream store (both, since readers take them as a pair)
SCALE = {end: Field("number", 0.0, 1.0, nullable=True, positive=True, requires=other)
         for end, other in (("min_scale_crops", "max_scale_crops"), ("max_scale_crops", "min_scale_crops"))}
# A teacher entry as ``Teacher.describe`` writes it. Only ``arch`` is required: entries written
# before ``weights`` (or the others) were recorded lack them, and readers take them as unrecorded.
TEACHER = {
    "arch": Field("str"),
    "source": Field("str", choices=SOURCES, optional=True),
    "builder": Field("str", choices=("local", "torchvision", "timm"), optional=True),  # models.model_source's
    "weights": Field("str", nullable=True, optional=True),    # null: a weight file, not published weights
    "weights_sha256": Field("sha256", optional=True),
    "num_classes": Field("int", 1, MAX_CLASSES, optional=True, same_as="num_classes"),
    "mean": Field("floats3", optional=True, requires="std"),
    "std": Field("floats3", positive=True, optional=True, requires="mean"),
}
# What a store converted by convert_labels.py says of its source (``kind``: ``Store.source_name``).
CONVERTED_FROM = {"kind": Field("str", choices=("ours", "sre2l", "prism", "fkd-upstream")),
                  "path": Field("str", optional=True), "label_type": Field("str", optional=True),
                  "label_format": Field("str", choices=("full", "topk"), optional=True),
                  "topk": Field("int", 1, MAX_CLASSES, nullable=True, optional=True),
                  "topk_fill": Field("str", choices=("residual",), nullable=True, optional=True)}
COMMON = {
    "fkd_seed": Field("int"),
    "num_samples": Field("int", 1, MAX_SAMPLES),
    "num_classes": Field("int", 1, MAX_CLASSES),
    "input_size": Field("int", 1, MAX_INPUT_SIZE, nullable=True),   # null: converted from an upstream store
    **SCALE,
    "use_fp16": Field("bool"),
    "temperature": Field("number", 0.0, nullable=True, positive=True),
    "class_to_index": Field("class_index"),
    "dataset_fingerprint": Field("str", nullable=True),
    "class_names": Field("names"),
    "mean": Field("floats3"),
    "std": Field("floats3", positive=True),
    # entries only some stores have, read by summaries, the image checks and conversions (created_by and
    # versions by people): typed all the same, so that no reader meets a value it cannot use
    "args": Field("dict", nullable=True, optional=True, entries={"data": Field("str", nullable=True, optional=True)}),
    "class_mapping": Field("str", nullable=True, optional=True),
    "converted_from": Field("dict", optional=True, entries=CONVERTED_FROM),
    "skipped_images": Field("strs", optional=True),
    "images_digest": Field("str", nullable=True, optional=True),
    "amp": Field("str", choices=("bfloat16", "float16"), nullable=True, optional=True),  # precision.dtype_name's
    "created_by": Field("str", optional=True),
    "versions": Field("dict", optional=True),
}
BATCH = {
    **COMMON,
    "batch_size": Field("int", 1, MAX_SAMPLES),
    "epochs": Field("int", 0, MAX_EPOCHS),
    "batches_per_epoch": Field("int", 0, MAX_BATCH_FILES),
    "mix_type": Field("str", choices=MIX_TYPES),
    "mixup": Field("number", 0.0, nullable=True),
    "cutmix": Field("number", 0.0, nullable=True),
    "teachers": Field("list", entries=TEACHER),
    "ensemble": Field("str", choices=tuple(ENSEMBLES), nullable=True),
    "primary_weight": Field("number", 0.0, 1.0, nullable=True),
    "label_format": Field("str", choices=("full", "topk")),
    "topk": Field("int", 1, MAX_CLASSES, nullable=True),
    "topk_fill": Field("str", choices=("residual",), nullable=True),
    "container": Field("str", choices=("batch", "epoch")),
    "label_keep": Field("number", 0.0, 1.0, positive=True),
    "topk_fill_temperature": Field("number", 0.0, 1000.0, positive=True, nullable=True),
    "label_dtype": Field("str", choices=("float16", "float32"), optional=True),
    # set in memory for an upstream store read without a manifest (its sample order, numpy scalars)
    "legacy_kind": Field("str", choices=("sre2l", "prism"), optional=True),
}
# fkd_seed null: FKD's own files, which record none
# teacher null: converted from FKD's own files, which record none
PER_IMAGE = {**COMMON, "input_size": SIZE, "fkd_seed": Field("int", nullable=True),
             "temperature": Field("number", 0.0, positive=True), "num_crops": Field("int", 1, MAX_CROPS),
             "top_k": Field("int", 1, MAX_CLASSES), "teacher": Field("dict", nullable=True, entries=TEACHER),
             "interpolation": Field("str", choices=tuple(RESAMPLE), nullable=True, optional=True)}


def as_recorded_teachers(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict:
    """``new`` with its teacher entries' ``weights`` (the published weights' name) left out where
    ``old``'s entries lack it: stores written before the name was recorded still resume, the
    teacher's identity being its weights_sha256."""
    out = dict(new)
    for key in ("teachers", "teacher"):   # batch stores: a list; per-image stores: one teacher
        mine, theirs = new.get(key), old.get(key)
        lists = isinstance(mine, list) and isinstance(theirs, list) and len(mine) == len(theirs)
        pairs = (list(zip(mine, theirs)) if lists
                 else [(mine, theirs)] if isinstance(mine, dict) and isinstance(theirs, dict) else [])
        if pairs and any("weights" in m and "weights" not in t for m, t in pairs if isinstance(t, dict)):
            stripped = [{k: v for k, v in m.items() if k != "weights"} for m, _ in pairs]
            out[key] = stripped if isinstance(mine, list) else stripped[0]
    return out


def check_batch_counts(manifest: Mapping[str, Any], where: str) -> None:
    """The counts of a batch store agree with each other and bound the files a reader visits."""
    n, b = manifest["num_samples"], manifest["batch_size"]
    if manifest["batches_per_epoch"] != math.ceil(n / b):
        raise UserError(f"{where}: batches_per_epoch {manifest['batches_per_epoch']} contradicts "
                        f"ceil(num_samples {n} / batch_size {b}) = {math.ceil(n / b)}")
    if manifest["epochs"] * manifest["batches_per_epoch"] > MAX_BATCH_FILES:
        raise UserError(f"{where}: epochs x batches_per_epoch = {manifest['epochs'] * manifest['batches_per_epoch']:,} "
                        f"batch files, over the {MAX_BATCH_FILES:,} this toolkit reads")
    if manifest["container"] == "epoch" and manifest["batch_size"] > 65536:
        raise UserError(f"{where}: batch_size {manifest['batch_size']} is over the 65536 a packed store's "
                        f"uint16 mix partners hold")
    if manifest["label_format"] == "topk" and manifest["topk"] is None:
        raise UserError(f"{where}: label_format topk needs topk")
    if None not in (manifest["min_scale_crops"], manifest["max_scale_crops"]) and \
            manifest["min_scale_crops"] > manifest["max_scale_crops"]:
        raise UserError(f"{where}: min_scale_crops is above max_scale_crops")
