"""torchrun-native process setup: rank and world size come from the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``); gloo on CPU, NCCL on GPU; no hand-picked ports."""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from softlabel.errors import UserError

R = TypeVar("R")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """--device (cpu, cuda, cuda:N), checked against this machine; default: this rank's GPU, else cpu."""
    if requested:
        try:
            device = torch.device(requested)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {requested}: not a device name (cpu, cuda or cuda:N)") from None
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"--device {requested}: only cpu and cuda[:N] are supported")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {requested}: no CUDA device on this machine; use --device cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(requested_device: str | None = None) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        if device.index is None:  # "--device cuda": this rank's GPU (set_device needs an index)
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def reduce_across(info: DistInfo, *values: float, op: str = "sum") -> list[float]:
    """Sum (or max) a few numbers over all ranks; every rank gets the result."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


def on_main_then_all(info: DistInfo, fn: Callable[[], R]) -> R | None:
    """Run ``fn`` on rank 0 only; if it refuses (UserError), every rank raises the same
    error instead of waiting forever for rank 0."""
    message, result = "", None
    if info.is_main:
        try:
            result = fn()
        except UserError as exc:
            message = str(exc) or "error"
    if info.distributed:
        device = info.device if info.device.type == "cuda" else torch.device("cpu")
        buf = torch.zeros(4096, dtype=torch.uint8, device=device)
        if message:
            data = message.encode()[:4096]
            buf[:len(data)] = torch.tensor(list(data), dtype=torch.uint8, device=device)
        dist.broadcast(buf, src=0)
        message = bytes(buf[buf != 0].cpu().tolist()).decode(errors="replace")
    if message:
        raise UserError(message)
    return result


def ranks_differing(info: DistInfo, data: bytes) -> int:
    """How many ranks hold other ``data`` than rank 0 (compared by sha256). 0 on one process."""
    if not info.distributed:
        return 0
    device = info.device if info.device.type == "cuda" else torch.device("cpu")
    mine = torch.tensor(list(hashlib.sha256(data).digest()), dtype=torch.uint8, device=device)
    main = mine.clone()
    dist.broadcast(main, src=0)
    return int(reduce_across(info, float(not torch.equal(mine, main)))[0])


def ranks_not_seeing(info: DistInfo, path: str) -> int:
    """How many ranks do not read ``path`` as rank 0 does (missing there, or other bytes): a
    folder on a node's own disk rather than one every node shares. 0 on one process."""
    if not info.distributed:
        return 0
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b"\0missing"
    return ranks_differing(info, data)


def require_same(info: DistInfo, data: bytes, what: str) -> None:
    """Every rank holds rank 0's ``data`` (its inputs, the manifest it would write), or every rank
    fails with one line before anything is written: ``what`` says what differs."""
    differ = ranks_differing(info, data)
    if differ:
        raise UserError(f"{differ} of the {info.world_size} processes {what} than rank 0; with several nodes each "
                        f"must see the same files at the same paths; nothing was written")


@contextlib.contextmanager
def together(info: DistInfo) -> Iterator[None]:
    """Local work (scanning, loading, checking inputs) that every rank does before the next
    collective step: if it refuses on one rank (a UserError), every rank stops with one line — that
    rank its own, the others saying so — rather than wait for it in the next collective."""
    try:
        yield
    except UserError:
        reduce_across(info, 1.0)
        raise
    refused = int(reduce_across(info, 0.0)[0])
    if refused:
        raise UserError(f"{refused} of the {info.world_size} processes refused their inputs (their error line "
                        f"says why); this one stops with them, before anything is written")


def require_shared(info: DistInfo, path: str, flag: str, folder: str) -> None:
    """Every rank must read the file rank 0 just wrote at ``path`` in the output ``folder``: with
    several nodes, that folder must be one they all share."""
    missing = ranks_not_seeing(info, path)
    if missing:
        raise UserError(f"{flag} {folder}: {missing} of the {info.world_size} processes do not see the "
                        f"{os.path.basename(path)} rank 0 wrote there; with several nodes {flag} must be a folder "
                        f"every node shares (a network file system), at the same path")


def require_same_start(info: DistInfo, epoch: int, flag: str, folder: str) -> None:
    """Every rank must start at the same epoch: a rank that finds no checkpoint where rank 0
    resumes one would otherwise train other steps than the rest (or wait for them forever)."""
    high, neg_low = reduce_across(info, epoch, -epoch, op="max")
    if high != -neg_low:
        raise UserError(f"{flag} {folder}: the ranks resume from different epochs ({int(-neg_low)} to {int(high)}): "
                        f"a node sees another checkpoint there, or none; with several nodes {flag} must be a "
                        f"folder every node shares, at the same path")


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share of ``n`` items (the first n % world ranks get one more)."""
    q, r = divmod(n, world)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (1 if rank < r else 0)
