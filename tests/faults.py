"""The fault harness every fault test uses: start one of our scripts as a user would (alone or
under torchrun), wait for a moment of its run, then SIGKILL it, pause it, or let it run into a
full disk; and the checks made afterwards (no temporary file left, the finished files whole)."""
from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from conftest import ROOT, script_env, tree_bytes


def start(script: str, *args, nproc: int = 0, capture: bool = False) -> subprocess.Popen:
    """Start a script (under torchrun with ``nproc`` processes) in its own process group, so
    that a kill reaches torchrun, its ranks and loader workers together. ``capture``: keep its
    stdout and stderr (text) for ``communicate()``; else they are discarded."""
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([*launcher, str(ROOT / script), *map(str, args)], cwd=ROOT, env=script_env(),
                            stdout=out, stderr=out, text=True, start_new_session=True)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """Poll ``ready()`` while the run goes on; True once it holds, False if the run ended (or
    ``timeout`` seconds passed) first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            return True
        time.sleep(0.01)
    return False


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL the run's whole process group once ``ready()`` holds (or after ``timeout``
    seconds); False if the run ended by itself first."""
    wait_until(proc, ready, timeout)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return not finished


@contextlib.contextmanager
def paused(proc: subprocess.Popen) -> Iterator[None]:
    """SIGSTOP the run's process group for the duration of the block (it keeps its locks and
    open files, as a stalled run does), then SIGCONT it."""
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGCONT)


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: in the child, a write past ``limit`` bytes fails as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def count(root: Path, pattern: str) -> int:
    return len(list(root.glob(pattern)))


def no_temp_files(root: Path) -> bool:
    """No ``.tmp-*`` file (a write cut short) anywhere under ``root``."""
    return not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def store_content(root: Path) -> dict[str, bytes]:
    """The batch files of a store, by path (the manifest records the command line)."""
    return {k: v for k, v in tree_bytes(root).items() if k.startswith("epoch_")}
