"""Long runs: memory must not grow with the number of epochs. Marked slow: excluded from CI
(`-m "not slow"` in pytest.ini); run with `bash scripts/test.sh -m slow` (about 4 minutes on 2 cores;
SOAK_EPOCHS=N for a longer run)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest
from conftest import ROOT, script_env


def anonymous_mib(pid: int) -> float:
    """Anonymous memory of one process (heap, tensors, Python objects): where a leak shows.
    Not PSS or RSS: both also count torch's shared library pages, and PSS moves whenever
    another process maps the same libraries (a first soak measured relabel "growing" by 10 %
    while the trainer of the same test started), RSS once more per forked worker."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) / 1024
    return 0.0


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        with open(f"/proc/{p}/task/{p}/children") as f:
            kids = [int(c) for c in f.read().split()]
        found += kids
        todo += kids
    return found


def sample_memory(args: list, seconds_between: float = 0.5) -> tuple[list[float], list[float]]:
    """Run a script to the end, sampling the anonymous memory of its main process and, apart,
    of its DataLoader workers together; returns both series."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main, workers = [], []
    while proc.poll() is None:
        try:
            main.append(anonymous_mib(proc.pid))
            workers.append(sum(anonymous_mib(w) for w in descendants(proc.pid)))
        except (FileNotFoundError, ProcessLookupError):  # a process ended while being read
            pass
        time.sleep(seconds_between)
    assert proc.wait() == 0, proc.stderr.read()
    return main, workers


def assert_flat(samples: list[float], what: str) -> None:
    """After warm-up (the first fifth: imports, model, workers starting), the median of the last
    fifth may not exceed the median of the second fifth by more than 5 % + 20 MiB: a leak grows
    steadily, while evaluation workers come and go (medians ignore them)."""
    n = len(samples)
    assert n >= 20, f"{what}: too short to judge ({n} samples)"
    early = statistics.median(samples[n // 5: 2 * n // 5])
    late = statistics.median(samples[4 * n // 5:])
    print(f"{what}: anonymous memory {early:.0f} MiB early, {late:.0f} MiB late, peak {max(samples):.0f} MiB "
          f"({n} samples)")
    assert late <= early * 1.05 + 20, (what, early, late)


EPOCHS = int(os.environ.get("SOAK_EPOCHS", "1500"))


@pytest.mark.slow
def test_relabel_and_training_memory_does_not_grow(demo_data, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    relabel, relabel_workers = sample_memory([
        "relabel/generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt,
        "--fkd-path", store, "--epochs", EPOCHS, "-b", 10, "--input-size", 32, "--mix-type", "cutmix",
        "--use-fp16", "-j", 2, "--print-freq", 1000])
    assert_flat(relabel, f"relabel {EPOCHS} epochs x 2 batches, main process")
    assert_flat(relabel_workers, f"relabel {EPOCHS} epochs x 2 batches, 2 loader workers")
    # Training evaluates and checkpoints every tenth of the run. The first evaluation raises the
    # trainer's memory once (about 40 MiB: the validation loader and what the allocator keeps
    # after it), inside the warm-up fifth; the nine after it may not add anything.
    every = max(1, EPOCHS // 10)
    train, train_workers = sample_memory([
        "validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--fkd-path", store,
        "--model", "democnn_small", "-j", 2, "--eval-interval", every, "--save-interval", every,
        "--val-dir", demo_data / "val", "--output-dir", tmp_path / "run", "--no-progress"])
    assert_flat(train, f"train {EPOCHS} epochs x 2 batches, main process")
    assert_flat(train_workers, f"train {EPOCHS} epochs x 2 batches, loader workers")
