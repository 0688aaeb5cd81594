"""What a run reports while it runs: a progress bar counting images, the timings of its loop
(start-up, steady images/s, data wait against compute), and optional wandb logging.

wandb is off by default; ``offline`` needs no account and no key; ``online`` reads the key from
the environment (WANDB_API_KEY) like any wandb program. No key is ever written into code, logs,
checkpoints or the run config."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

from softlabel.errors import optional_import

T = TypeVar("T")


def progress(total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar counting images, so its rate reads as images/s."""
    interactive = sys.stderr.isatty()
    # In a log file, a redraw every half second would bury everything else.
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, smoothing=0.1, disable=disable)


@dataclass(frozen=True)
class StartUp:
    """When a command's start-up began (``at``, on the time.perf_counter() clock) and what that
    moment was (``since``, as the log names it)."""
    at: float
    since: str

    @classmethod
    def of_main(cls) -> "StartUp":
        return cls(time.perf_counter(), "main() began")

    @classmethod
    def of_process(cls) -> "StartUp":
        """The start of this process, so the interpreter's start and the imports count too (a
        console command, a script); main()'s start where the system does not say (not Linux)."""
        try:
            with open("/proc/self/stat") as f:  # the name field may hold spaces: split after its ")"
                started = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            age = time.clock_gettime(time.CLOCK_BOOTTIME) - started  # the clock /proc counts on
        except (OSError, ValueError, IndexError, AttributeError):
            return cls.of_main()
        return cls(time.perf_counter() - age, "the process started") if age >= 0 else cls.of_main()


class Throughput:
    """A loop's timings. Start-up: from ``origin`` to the end of the first step. Steady state:
    images/s from the first step's end to the last's, the first step's images left out (it
    carries the warm-up). Each batch's time splits into data wait (blocked in the loader's
    next()) and compute (from receiving the batch to asking for the next one)."""

    def __init__(self, origin: StartUp):
        self.origin = origin
        self.first: Optional[float] = None
        self.last = origin.at
        self.images = 0
        self.wait = self.compute = self.busy = 0.0   # seconds: data wait, compute, in timed epochs
        self._begun = self._ended = 0.0
        self._lapped = (0.0, 0.0, 0.0)

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, with the time spent in their next() counted as data wait and the rest as compute."""
        self._begun = tick = time.perf_counter()
        source = iter(batches)
        while True:
            try:
                item = next(source)
            except StopIteration:
                break
            finally:
                received = time.perf_counter()
                self.wait += received - tick
            yield item
            tick = time.perf_counter()
            self.compute += tick - received
        self._ended = received

    def epoch_done(self) -> None:
        """Call after the epoch's synchronisation with the device: the time since the last batch
        (the steps still queued there finishing) counts as compute."""
        now = time.perf_counter()
        self.compute += now - self._ended
        self.busy += now - self._begun

    def step_done(self, images: int) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        else:
            self.images += images

    def startup(self) -> float:
        """Seconds from the origin to the end of the first step (to now, before it)."""
        return (self.first or time.perf_counter()) - self.origin.at

    def rate(self) -> float:
        window = (self.last - self.first) if self.first else 0.0
        return self.images / window if window > 0 else 0.0

    def lap(self) -> dict[str, float]:
        """Seconds of the timed epochs since the previous lap: in all (train_s), blocked on the
        loader (data_wait_s), in the steps (compute_s)."""
        now = (self.busy, self.wait, self.compute)
        busy, wait, compute = (a - b for a, b in zip(now, self._lapped))
        self._lapped = now
        return {"train_s": round(busy, 3), "data_wait_s": round(wait, 3), "compute_s": round(compute, 3)}


class Tracker:
    def __init__(self, mode: str, project: str, name: str, directory: str, config: dict[str, Any]):
        self.run: Optional[Any] = None
        if mode == "disabled":
            return
        wandb = optional_import("wandb", "wandb", f"--wandb-mode {mode}")
        self.run = wandb.init(project=project, name=name, dir=directory, mode=mode, config=config,
                              settings=wandb.Settings(silent=True))

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(row, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
