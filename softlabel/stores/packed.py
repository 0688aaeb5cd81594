"""Packed top-k stores (format v2): one file per epoch of fixed-width records, read without
unpickling anything, memory-mapped, whose overhead does not depend on the batch size.

``epoch_{e}.pack``, little-endian throughout::

    header   20 bytes   b"SLPACK03", uint32 steps, uint32 samples, uint32 epoch
    steps    steps x STEP            step, start, count (rows of the sample table), mix_lam
                                     (float64, NaN without a mix), cutmix box (4 x int16, -1 without)
    samples  samples x sample_dtype  coords (4 x uint16 fixed point), flip (uint8), mix partner in
                                     the batch (uint16, only with a mix), dataset index (uint32),
                                     top-K values (float16), their classes (uint8/uint16/uint32),
                                     the residual fill (float16, only with topk_fill residual)

The record types follow from the manifest (``topk``, ``num_classes``, ``mix_type``,
``topk_fill``), so a file is read with ``numpy.frombuffer`` / ``numpy.memmap`` alone. A step is
written first as ``epoch_{e}.parts/step_{b}.part`` (one STEP row then its samples, atomically),
so an interrupted relabel resumes step by step as with batch files; once every kept step of an
epoch is there, its parts become the epoch file (atomically) and the parts folder goes. The epoch
file depends only on the records, never on which rank or worker wrote which part.

Files written before the header held the epoch (``b"SLPACK02"``, 16 bytes: no epoch) are still
read; their epoch is known by their name only, so such a file copied over another epoch's is
found only where its step table differs (a pruned store).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from softlabel import files, replay
from softlabel.errors import UserError
from softlabel.stores.base import cutmix_lam_is_area
from softlabel.stores.topk import (COORD_SCALE, EDGE_SLACK, fill_temperature, residual_fill, topk_logits,
                                   topk_problem)

MAGIC = b"SLPACK03"
HEADER = np.dtype([("magic", "S8"), ("steps", "<u4"), ("samples", "<u4"), ("epoch", "<u4")])
HEADERS = {MAGIC: HEADER, b"SLPACK02": np.dtype([("magic", "S8"), ("steps", "<u4"), ("samples", "<u4")])}
STEP = np.dtype([("step", "<u4"), ("start", "<u4"), ("count", "<u4"), ("lam", "<f8"), ("bbox", "<i2", (4,))])


def sample_dtype(manifest: dict) -> np.dtype:
    """The fixed-width sample record of a packed store, from its manifest."""
    k, c = int(manifest["topk"]), int(manifest["num_classes"])
    classes = "u1" if c <= 256 else "<u2" if c <= 65536 else "<u4"
    fields: list = [("coords", "<u2", (4,)), ("flip", "u1")]
    if manifest.get("mix_type", "none") != "none":
        fields.append(("mix", "<u2"))
    fields += [("index", "<u4"), ("values", "<f2", (k,)), ("classes", classes, (k,))]
    if manifest.get("topk_fill") == "residual":
        fields.append(("fill", "<f2"))
    return np.dtype(fields)


def epoch_path(root: str, epoch: int) -> str:
    return os.path.join(root, f"epoch_{epoch}.pack")


def parts_dir(root: str, epoch: int) -> str:
    return os.path.join(root, f"epoch_{epoch}.parts")


def part_path(root: str, epoch: int, step: int) -> str:
    return os.path.join(parts_dir(root, epoch), f"step_{step}.part")


# ----------------------------------------------------------------------------- writing

def encode_step(record, step: int, manifest: dict) -> bytes:
    """One step (a ``BatchRecord`` with full logits) as a STEP row followed by its sample rows."""
    k = min(int(manifest["topk"]), record.soft_label.shape[1])
    values, classes = record.soft_label.float().topk(k, dim=1)
    rows = np.zeros(len(record), sample_dtype(manifest))
    rows["coords"] = torch.round(record.coords.double().clamp(0, 1) * COORD_SCALE).to(torch.int64).numpy()
    rows["flip"] = record.flip.bool().numpy()
    if "mix" in rows.dtype.names:
        rows["mix"] = record.mix_index.numpy()
    rows["index"] = record.index.numpy()
    rows["values"] = values.half().numpy()
    rows["classes"] = classes.numpy()
    if "fill" in rows.dtype.names:
        rows["fill"] = residual_fill(record.soft_label, classes, fill_temperature(manifest)).half().numpy()
    fill = rows["fill"] if "fill" in rows.dtype.names and k < record.soft_label.shape[1] else None
    if not (np.isfinite(rows["values"]).all() and (fill is None or np.isfinite(fill).all())):
        raise ValueError("its top-k logits pass float16's range (65504), in which a top-k store keeps them; "
                         "relabel with a larger --temperature, or keep full labels")
    head = np.zeros(1, STEP)
    head["step"], head["count"] = step, len(record)
    head["lam"] = np.nan if record.mix_lam is None else record.mix_lam
    head["bbox"] = -1 if record.mix_bbox is None else record.mix_bbox
    return head.tobytes() + rows.tobytes()


def write_part(root: str, epoch: int, step: int, record, manifest: dict) -> None:
    try:
        data = encode_step(record, step, manifest)
    except ValueError as exc:
        raise UserError(f"epoch {epoch}, step {step}: {exc}; nothing was written for it") from None
    files.atomic_write_bytes(part_path(root, epoch, step), data)


def pack_epoch(root: str, epoch: int, steps: list[int], manifest: dict) -> bool:
    """The epoch file from its parts, if every one of ``steps`` is there; the parts then go."""
    if os.path.isfile(epoch_path(root, epoch)):
        return True
    if not all(os.path.isfile(part_path(root, epoch, s)) for s in steps):
        return False
    width = sample_dtype(manifest).itemsize
    heads, bodies, start = [], [], 0
    for s in steps:
        path = part_path(root, epoch, s)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) < STEP.itemsize or (len(data) - STEP.itemsize) % width:
            raise UserError(f"store part {path}: {len(data)} bytes is not one step of this store; delete it "
                            f"and rerun the command to write it again")
        head = np.frombuffer(data[:STEP.itemsize], STEP).copy()
        count = (len(data) - STEP.itemsize) // width
        if int(head["step"][0]) != s or int(head["count"][0]) != count:
            raise UserError(f"store part {path}: its header does not describe step {s}; delete it and rerun")
        head["start"] = start
        start += count
        heads.append(head.tobytes())
        bodies.append(data[STEP.itemsize:])
    header = np.array([(MAGIC, len(steps), start, epoch)], HEADER).tobytes()
    files.atomic_write_bytes(epoch_path(root, epoch), header + b"".join(heads) + b"".join(bodies))
    shutil.rmtree(parts_dir(root, epoch), ignore_errors=True)
    return True


# ----------------------------------------------------------------------------- reading

class EpochFile:
    """One epoch file, memory-mapped, its structure checked once: the header (its epoch too), the
    size, and a step table that covers the sample table in order, with exactly the steps the store
    keeps. Each step's records are checked as they are decoded (``decode``)."""

    def __init__(self, root: str, epoch: int, manifest: dict, steps: list[int], batch_len):
        self.path = path = epoch_path(root, epoch)
        self.epoch = epoch
        self.dtype = sample_dtype(manifest)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise UserError(f"store epoch file {path}: missing; rerun the relabel command to finish the store") from None
        with open(path, "rb") as f:
            magic = f.read(8)
        header = HEADERS.get(magic)
        if size < (8 if header is None else header.itemsize):
            raise UserError(f"store epoch file {path}: {size} bytes, shorter than its header")
        if header is None:
            raise UserError(f"store epoch file {path}: not a packed epoch file of this format (no {MAGIC!r} header)")
        raw = np.memmap(path, np.uint8, mode="r")
        head = np.frombuffer(raw[:header.itemsize].tobytes(), header)[0]
        if "epoch" in header.names and int(head["epoch"]) != epoch:
            raise UserError(f"store epoch file {path}: holds the labels of epoch {int(head['epoch'])}, not of "
                            f"epoch {epoch} (a file copied over another?)")
        n_steps, n_samples = int(head["steps"]), int(head["samples"])
        offset = header.itemsize
        want = offset + n_steps * STEP.itemsize + n_samples * self.dtype.itemsize
        if size != want:
            raise UserError(f"store epoch file {path}: {size} bytes, its header says {want} (truncated or "
                            f"not written for this store's manifest)")
        table = np.frombuffer(raw[offset:offset + n_steps * STEP.itemsize].tobytes(), STEP)
        if table["step"].tolist() != list(steps):
            raise UserError(f"store epoch file {path}: holds steps {_short(table['step'].tolist())}, the store "
                            f"keeps {_short(list(steps))}")
        counts = table["count"].astype(np.int64)
        expected = [batch_len(s) for s in steps]
        if counts.tolist() != expected or table["start"].tolist() != (np.cumsum(counts) - counts).tolist():
            raise UserError(f"store epoch file {path}: its step table does not cover its samples in batches of "
                            f"{manifest['batch_size']}")
        self.table = table
        self.row_of = {int(s): n for n, s in enumerate(table["step"])}
        self.samples = np.memmap(path, self.dtype, mode="r", offset=offset + n_steps * STEP.itemsize,
                                 shape=(n_samples,))

    def step(self, step: int) -> tuple[np.void, np.ndarray]:
        n = self.row_of[step]
        row = self.table[n]
        start, count = int(row["start"]), int(row["count"])
        return row, np.array(self.samples[start:start + count])


def decode(row: np.void, samples: np.ndarray, num_classes: int) -> tuple[list, torch.Tensor]:
    """A step as the record list of format v1 (fractions, full logits), and the stored-logit mask."""
    names = samples.dtype.names
    fill = torch.from_numpy(samples["fill"].astype(np.float32)) if "fill" in names else None
    classes = torch.from_numpy(samples["classes"].astype(np.int64))
    logits, stored = topk_logits(torch.from_numpy(samples["values"].astype(np.float32)), classes, fill, num_classes)
    coords = fractions(samples["coords"])
    lam = float(row["lam"])
    mixed = "mix" in names and not np.isnan(lam)
    bbox = [int(v) for v in row["bbox"]]
    return [coords, torch.from_numpy(samples["flip"].astype(bool)),
            torch.from_numpy(samples["mix"].astype(np.int64)) if mixed else None,
            lam if mixed else None, bbox if mixed and bbox != [-1, -1, -1, -1] else None,
            logits, torch.from_numpy(samples["index"].astype(np.int64))], stored


def fractions(coords: np.ndarray) -> torch.Tensor:
    """(N, 4) fixed-point crop boxes as the float32 fractions a reader replays."""
    return torch.from_numpy(coords.astype(np.float64) / COORD_SCALE).float()


# Samples checked at once by ``epoch_ok``: bounds its memory at any epoch size.
CHECK_ROWS = 1 << 16


def epoch_ok(epoch: EpochFile, manifest: dict) -> bool:
    """Whether every step of an epoch file passes what the reader checks of it (``decode``, then the
    batch store's record and geometry checks) and no sample appears twice in the epoch: the records
    checked as stored, many steps at once, no logits rebuilt. False does not say which step is bad:
    the reader, step by step, names it (and is the judge: a step this refuses, it reads)."""
    table = epoch.table
    counts = table["count"].astype(np.int64)
    mixed = np.full(len(table), "mix" in epoch.dtype.names) & ~np.isnan(table["lam"])
    if not steps_ok(table, mixed, manifest):
        return False
    seen = np.zeros(int(manifest["num_samples"]), dtype=bool)
    ends, first = np.cumsum(counts), 0  # the steps cover the sample table in order (EpochFile)
    while first < len(table):  # whole steps, about CHECK_ROWS samples at a time
        start = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, start + CHECK_ROWS, side="right")))
        rows = np.array(epoch.samples[start:int(ends[last - 1])])
        if not rows_ok(rows, counts[first:last], mixed[first:last], manifest, seen):
            return False
        first = last
    return True


def steps_ok(table: np.ndarray, mixed: np.ndarray, manifest: dict) -> bool:
    """Each step's mix as the store's (``mix_type``), its lambda in [0, 1], its cutmix box in the crop
    and its lambda the share of the crop the box leaves unmixed."""
    lam, box = table["lam"], table["bbox"].astype(np.int64)
    cut = mixed & (box != -1).any(axis=1)
    kind = np.where(mixed, np.where(cut, "cutmix", "mixup"), "none")
    if manifest.get("mix_type") and bool((kind != manifest["mix_type"]).any()):
        return False
    if not bool(((lam[mixed] >= 0) & (lam[mixed] <= 1)).all()):
        return False
    size = manifest.get("input_size")
    x1, y1, x2, y2 = box[cut].T
    if not size:
        return True
    if not bool(((0 <= x1) & (x1 <= x2) & (x2 <= size) & (0 <= y1) & (y1 <= y2) & (y2 <= size)).all()):
        return False
    return not (cutmix_lam_is_area(manifest) and replay.cutmix_lam_problem(lam[cut], box[cut], size))


def rows_ok(rows: np.ndarray, counts: np.ndarray, mixed: np.ndarray, manifest: dict, seen: np.ndarray) -> bool:
    """The sample records of consecutive steps (``counts`` each): top-k records as ``decode`` checks
    them, crop boxes, indices in range and new to the epoch (``seen``, updated), mix partners in their step."""
    names = rows.dtype.names
    fill = torch.from_numpy(rows["fill"].astype(np.float32)) if "fill" in names else None
    if topk_problem(torch.from_numpy(rows["values"].astype(np.float32)),
                    torch.from_numpy(rows["classes"].astype(np.int64)), fill, int(manifest["num_classes"])):
        return False
    if replay.crop_box_problem(fractions(rows["coords"]), EDGE_SLACK):
        return False
    index = rows["index"].astype(np.int64)
    if len(index) and (int(index.max()) >= len(seen) or len(np.unique(index)) != len(index) or seen[index].any()):
        return False
    seen[index] = True
    return "mix" not in names or not bool((np.repeat(mixed, counts) & (rows["mix"] >= np.repeat(counts, counts))).any())


def _short(values: list) -> str:
    text = str(values)
    return text if len(text) <= 60 else text[:57] + "...]"


def missing_epochs(root: str, epochs: int) -> list[str]:
    return [epoch_path(root, e) for e in range(epochs) if not os.path.isfile(epoch_path(root, e))]
