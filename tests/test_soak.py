"""Long runs: memory must not grow with the number of epochs. Marked slow: excluded from CI
(`-m "not slow"` in pytest.ini); run with `bash scripts/test.sh -m slow` (about 10 minutes)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

import pytest

from conftest import ROOT, script_env


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages are divided among the processes that share them, so
    forked DataLoader workers are not counted once more each (RSS would)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def tree_mib(pid: int) -> float:
    """Memory of a process and its DataLoader workers, together."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += pss_mib(p)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def sample_rss(args: list, seconds_between: float = 0.5) -> list[float]:
    """Run a script to the end, sampling its resident memory; returns the samples."""
    proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=script_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while proc.poll() is None:
        samples.append(tree_mib(proc.pid))
        time.sleep(seconds_between)
    assert proc.wait() == 0, proc.stderr.read()
    return [s for s in samples if s > 0]


def assert_flat(samples: list[float], what: str) -> None:
    """After warm-up (the first fifth), the median of the last fifth may not exceed the median of
    the second fifth by more than 5 % + 20 MiB: a leak grows steadily, while evaluation workers
    come and go (medians ignore them)."""
    n = len(samples)
    assert n >= 20, f"{what}: too short to judge ({n} samples)"
    early = statistics.median(samples[n // 5: 2 * n // 5])
    late = statistics.median(samples[4 * n // 5:])
    print(f"{what}: memory (PSS) {early:.0f} MiB early, {late:.0f} MiB late, peak {max(samples):.0f} MiB")
    assert late <= early * 1.05 + 20, (what, early, late)


EPOCHS = int(os.environ.get("SOAK_EPOCHS", "1500"))


@pytest.mark.slow
def test_relabel_and_training_memory_does_not_grow(demo_data, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    relabel = sample_rss(["relabel/generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path",
                          teacher_ckpt, "--fkd-path", store, "--epochs", EPOCHS, "-b", 10, "--input-size", 32,
                          "--mix-type", "cutmix", "--use-fp16", "-j", 2, "--print-freq", 1000])
    assert_flat(relabel, f"relabel {EPOCHS} epochs x 2 batches")
    train = sample_rss(["validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--fkd-path", store,
                        "--model", "democnn_small", "-j", 2, "--eval-interval", max(1, EPOCHS // 3), "--save-interval", max(1, EPOCHS // 3),
                        "--val-dir", demo_data / "val", "--output-dir", tmp_path / "run", "--no-progress"])
    assert_flat(train, f"train {EPOCHS} epochs x 2 batches")
