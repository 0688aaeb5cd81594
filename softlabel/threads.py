"""Torch's intra-op threads for a stretch of code: many small operations (a check's records, one
image's crops) run faster on fewer threads than torch's default, since a pool of threads started
and joined for each operation can cost more than the operation itself, the more so on a busy
machine (docs/stores.md and docs/per-image.md measure it)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn


@contextlib.contextmanager
def running_on(threads: int, keep: Sequence[nn.Module] = (), default: Optional[int] = None) -> Iterator[None]:
    """Run on ``threads`` intra-op threads, the modules of ``keep`` on ``default`` (torch's setting
    when entered); then that setting again."""
    previous = torch.get_num_threads()
    default = previous if default is None else default
    handles = [h for m in keep for h in (m.register_forward_pre_hook(lambda *_: torch.set_num_threads(default)),
                                         m.register_forward_hook(lambda *_: torch.set_num_threads(threads)))]
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        for h in handles:
            h.remove()
