"""Killed at any moment: relabel under torchrun, FKD per-image generation and training are
SIGKILLed at several points, rerun or resumed, and end exactly where an uninterrupted run ends,
with no partial or temporary file left. (Single-process relabel: test_relabel_robust.py.)"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, relabel, run_script, script_env, tree_bytes

TRAIN = "validate/train_FKD_parallel.py"
GEN_FKD = "relabel/generate_soft_label_fkd.py"


def start(cmd: list, nproc: int = 0) -> subprocess.Popen:
    """A script in its own process group (torchrun and its ranks die together)."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                                   if nproc else [])
    return subprocess.Popen([*launcher, *map(str, cmd)], cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL the whole process group once ``ready()``; False if the run ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return not finished


def count(root: Path, pattern: str) -> int:
    return len(list(root.glob(pattern)))


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


def store_content(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(root).items() if k.startswith("epoch_")}


RUN = ("--epochs", 30, "-b", 5, "--input-size", 16, "--mix-type", "cutmix", "--use-fp16", "-j", 0,
       "--print-freq", 100)


def test_torchrun_relabel_killed_then_rerun(demo_data, teacher_ckpt, tmp_path):
    reference = tmp_path / "ref"
    relabel(demo_data / "ipc2", teacher_ckpt, reference, *RUN)  # one process: ranks must not matter
    store = tmp_path / "store"
    cmd = [ROOT / "relabel" / "generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt,
           "--fkd-path", store, *RUN]
    killed = []
    for target in (0, 40, 90):  # before the first batch file, early, late (of 120)
        proc = start(cmd, nproc=2)
        ready = (lambda: (store / "manifest.json").exists()) if target == 0 else \
            (lambda t=target: count(store, "epoch_*/batch_*.tar") >= t)
        killed.append(kill_when(proc, ready))
        for path in store.glob("epoch_*/batch_*.tar"):  # nothing partial under a final name
            torch.load(path, weights_only=True)
    assert any(killed), "every run finished before it could be killed"
    run_script("relabel/generate_soft_label.py", *cmd[1:], nproc=2)
    assert store_content(store) == store_content(reference)
    assert no_temp_files(store)


def test_fkd_generation_killed_then_rerun(demo_data, teacher_ckpt, tmp_path):
    args = ["--teacher-path", teacher_ckpt, "--num_crops", 40, "--num_seg", 8, "--input_size", 24, "-j", 0]
    reference = tmp_path / "ref"
    run_script(GEN_FKD, demo_data / "ipc5", "--save_path", reference, *args)
    out = tmp_path / "out"
    cmd = [ROOT / GEN_FKD, demo_data / "ipc5", "--save_path", out, *args]
    killed = []
    for target in (0, 15, 35):  # of 50 image files
        proc = start(cmd)
        ready = (lambda: (out / "fkd_manifest.json").exists()) if target == 0 else \
            (lambda t=target: count(out, "*/*.tar") >= t)
        killed.append(kill_when(proc, ready))
        for path in out.glob("*/*.tar"):
            torch.load(path, weights_only=True)
    assert any(killed), "every run finished before it could be killed"
    run_script(GEN_FKD, *cmd[1:])
    ref = {k: v for k, v in tree_bytes(reference).items() if k.endswith(".tar")}
    assert {k: v for k, v in tree_bytes(out).items() if k.endswith(".tar")} == ref
    assert no_temp_files(out)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


@pytest.mark.parametrize("moment", ["before-first-checkpoint", "mid-epoch"])
def test_training_killed_then_resumed(moment, demo_data, tmp_path):
    # hard labels: random crops, flips, cutmix and batch norm; 8 epochs of 5 steps, long enough
    # that a kill lands inside the run however fast the machine is
    args = ["--train-dir", demo_data / "ipc5", "--model", "democnn_small", "--input-size", 24, "-b", 10,
            "--epochs", 8, "--mix-type", "cutmix", "--cos", "-j", 0, "--no-progress"]
    run_script(TRAIN, *args, "--output-dir", tmp_path / "full")
    out = tmp_path / "killed"
    ckpt = out / "checkpoint.pth"
    proc = start([ROOT / TRAIN, *args, "--output-dir", out])
    if moment == "before-first-checkpoint":
        ready = lambda: (out / "metrics.jsonl").exists()  # noqa: E731  (set-up done, training begun)
    else:
        first_seen: list[float] = []

        def ready() -> bool:  # a moment after the first checkpoint: inside epoch 2 (or a little later)
            if ckpt.exists() and not first_seen:
                first_seen.append(time.time())
            return bool(first_seen) and time.time() - first_seen[0] > 0.05
    assert kill_when(proc, ready), "the run finished before it could be killed"
    if ckpt.exists():  # never a partial checkpoint
        assert 1 <= torch.load(ckpt, weights_only=True)["epoch"] < 8
    run_script(TRAIN, *args, "--output-dir", out, "--resume", "auto")
    assert no_temp_files(out)  # a checkpoint write cut short is cleaned up by the resumed run
    full, resumed = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
