"""Faults: relabel (one process and under torchrun), FKD per-image generation and training are
SIGKILLed at several points, rerun or resumed, and end exactly where an uninterrupted run ends,
with no partial or temporary file left; a second relabel on a store being written is refused;
a full disk leaves nothing partial. Every run is started, killed and paused through the one
harness in tests/faults.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, STORE_ARGS, assert_user_error, relabel, run_script, script_env, tree_bytes
from faults import count, file_size_limit, kill_when, no_temp_files, paused, start, store_content, wait_until

RELABEL = "relabel/generate_soft_label.py"
TRAIN = "validate/train_FKD_parallel.py"
GEN_FKD = "relabel/generate_soft_label_fkd.py"

# ----------------------------------------------------------------------------- relabel

LONG_RUN = ("--epochs", 24, "-b", 5, "--input-size", 16, "--mix-type", "mixup", "-j", 0, "--print-freq", 100)


def content(store) -> dict[str, bytes]:
    """Everything but the manifest's record of the command line (its --fkd-path differs)."""
    files = tree_bytes(store)
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("args")
    files["manifest"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def long_reference(demo_data, teacher_ckpt, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "store"
    relabel(demo_data / "ipc5", teacher_ckpt, store, *LONG_RUN)
    return store


def test_relabel_killed_at_any_moment_then_rerun_gives_the_identical_store(demo_data, teacher_ckpt,
                                                                            long_reference, tmp_path):
    store = tmp_path / "store"
    total = count(long_reference, "epoch_*/batch_*.tar")
    assert total == 240
    killed = []
    for target in (1, 90, 200):  # early, mid-run, near the end
        proc = start(RELABEL, "--data", demo_data / "ipc5", "--teacher-path", teacher_ckpt, "--fkd-path", store,
                     *LONG_RUN)
        killed.append(kill_when(proc, lambda t=target: count(store, "epoch_*/batch_*.tar") >= t, timeout=120))
        for path in store.glob("epoch_*/batch_*.tar"):  # no partial file under a final name
            assert len(torch.load(path, weights_only=True)) == 7, path
    assert killed[-1], "the run finished before it could be killed; make LONG_RUN longer"
    proc = relabel(demo_data / "ipc5", teacher_ckpt, store, *LONG_RUN)
    assert "already done" in proc.stdout
    assert content(store) == content(long_reference)
    assert no_temp_files(store)


RUN = ("--epochs", 30, "-b", 5, "--input-size", 16, "--mix-type", "cutmix", "--use-fp16", "-j", 0,
       "--print-freq", 100)


def test_torchrun_relabel_killed_then_rerun(demo_data, teacher_ckpt, tmp_path):
    reference = tmp_path / "ref"
    relabel(demo_data / "ipc2", teacher_ckpt, reference, *RUN)  # one process: ranks must not matter
    store = tmp_path / "store"
    args = ["--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--fkd-path", store, *RUN]
    killed = []
    for target in (0, 40, 90):  # before the first batch file, early, late (of 120)
        proc = start(RELABEL, *args, nproc=2)
        ready = (lambda: (store / "manifest.json").exists()) if target == 0 else \
            (lambda t=target: count(store, "epoch_*/batch_*.tar") >= t)
        killed.append(kill_when(proc, ready))
        for path in store.glob("epoch_*/batch_*.tar"):  # nothing partial under a final name
            torch.load(path, weights_only=True)
    assert any(killed), "every run finished before it could be killed"
    run_script(RELABEL, *args, nproc=2)
    assert store_content(store) == store_content(reference)
    assert no_temp_files(store)


def test_a_second_relabel_on_the_same_store_is_refused(demo_data, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    run = ("--epochs", 8, "-b", 5, "--input-size", 16, "-j", 0, "--print-freq", 1000)  # 80 files
    first = start(RELABEL, "--data", demo_data / "ipc5", "--teacher-path", teacher_ckpt, "--fkd-path", store, *run,
                  capture=True)
    assert wait_until(first, lambda: count(store, "epoch_*/batch_*.tar") >= 1, timeout=120), \
        "the first run wrote no batch file"
    with paused(first):  # holding the lock, mid-run, for as long as the check takes
        second = relabel(demo_data / "ipc5", teacher_ckpt, store, *run, check=False)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert_user_error(second, "--fkd-path", "another run is writing")
    assert "wrote 80 batch files" in first_out  # the refused run wrote none of them
    assert count(store, "epoch_*/batch_*.tar") == 80


def test_full_disk_during_a_write_leaves_no_partial_file(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    out = tmp_path / "store"
    args = [sys.executable, str(ROOT / RELABEL), "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt,
            "--fkd-path", out, *STORE_ARGS]
    proc = subprocess.run([str(a) for a in args], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=file_size_limit(2500))
    assert_user_error(proc, "cannot write", "nothing partial was left")
    assert no_temp_files(out)
    for path in out.rglob("batch_*.tar"):  # whatever was finished is whole
        torch.load(path, weights_only=True)
    relabel(demo_data / "ipc2", teacher_ckpt, out, *STORE_ARGS)  # the rerun completes the store
    assert store_content(out) == store_content(cutmix_store)


@pytest.mark.parametrize("fmt", ["pixels", "lmdb"])
def test_pack_images_on_a_full_disk_leaves_nothing_and_reruns(fmt, demo_data, tmp_path):
    """A write past the file-size limit fails in the real write (Python's for pixels, LMDB's own C
    code for an LMDB) as on a full disk: one line, no temporary file, and a rerun packs."""
    out = tmp_path / "packed"
    args = [sys.executable, str(ROOT / "scripts/pack_images.py"), demo_data / "ipc2", out, "--format", fmt,
            "--no-progress"]
    proc = subprocess.run([str(a) for a in args], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=file_size_limit(16000))  # the pack needs 53-62 kB
    assert_user_error(proc, "cannot write", str(out), "nothing partial was left")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    from test_bad_inputs import pack

    from softlabel.data import scan_image_folder
    pack(demo_data / "ipc2", out, "--format", fmt)  # the rerun, in this process
    assert len(scan_image_folder(str(out), "--data")) == 20


# ----------------------------------------------------------------------------- FKD per-image generation

def test_fkd_generation_killed_then_rerun(demo_data, teacher_ckpt, tmp_path):
    args = ["--teacher-path", teacher_ckpt, "--num_crops", 40, "--num_seg", 8, "--input_size", 24, "-j", 0]
    reference = tmp_path / "ref"
    run_script(GEN_FKD, demo_data / "ipc5", "--save_path", reference, *args)
    out = tmp_path / "out"
    killed = []
    for target in (0, 15, 35):  # of 50 image files
        proc = start(GEN_FKD, demo_data / "ipc5", "--save_path", out, *args)
        ready = (lambda: (out / "fkd_manifest.json").exists()) if target == 0 else \
            (lambda t=target: count(out, "*/*.tar") >= t)
        killed.append(kill_when(proc, ready))
        for path in out.glob("*/*.tar"):
            torch.load(path, weights_only=True)
    assert any(killed), "every run finished before it could be killed"
    run_script(GEN_FKD, demo_data / "ipc5", "--save_path", out, *args)
    ref = {k: v for k, v in tree_bytes(reference).items() if k.endswith(".tar")}
    assert {k: v for k, v in tree_bytes(out).items() if k.endswith(".tar")} == ref
    assert no_temp_files(out)


# ----------------------------------------------------------------------------- training

def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


def checkpoint_epoch(ckpt: Path) -> int:
    """The epoch a run's checkpoint records; -1 while there is none (or it is being replaced)."""
    if not ckpt.exists():
        return -1
    try:
        return torch.load(ckpt, weights_only=True)["epoch"]
    except Exception:  # being replaced this very moment: look again
        return -1


@pytest.mark.parametrize("moment", ["before-first-checkpoint", "mid-epoch"])
def test_training_killed_then_resumed(moment, demo_data, tmp_path):
    # hard labels: random crops, flips, cutmix and batch norm; 8 epochs of 5 steps, long enough
    # that a kill lands inside the run however fast the machine is
    args = ["--train-dir", demo_data / "ipc5", "--model", "democnn_small", "--input-size", 24, "-b", 10,
            "--epochs", 8, "--mix-type", "cutmix", "--cos", "-j", 0, "--no-progress"]
    run_script(TRAIN, *args, "--output-dir", tmp_path / "full")
    out = tmp_path / "killed"
    ckpt = out / "checkpoint.pth"
    proc = start(TRAIN, *args, "--output-dir", out)
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


@pytest.mark.parametrize("mode", ["store", "hard"])
def test_training_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(mode, cutmix_store, demo_data,
                                                                                  tmp_path):
    if mode == "store":
        args = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "democnn_small",
                "--epochs", 3, "--loss-type", "dist", "--cos"]
    else:  # random crops, flips, cutmix and batch norm: every source of randomness
        args = ["--train-dir", demo_data / "ipc5", "--model", "democnn_small", "--input-size", 24, "-b", 10,
                "--epochs", 12, "--mix-type", "cutmix", "--label-smoothing", 0.1, "--warmup-epochs", 2]
    epochs = int(args[args.index("--epochs") + 1])
    run_script(TRAIN, *args, "--no-progress", "--output-dir", tmp_path / "full")
    out = tmp_path / "killed"
    proc = start(TRAIN, *args, "--output-dir", out, "--no-progress")
    assert kill_when(proc, lambda: checkpoint_epoch(out / "checkpoint.pth") >= 1, timeout=300), "finished too early"
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] < epochs, "finished too early"
    proc = run_script(TRAIN, *args, "--no-progress", "--output-dir", out, "--resume", "auto")
    assert "epochs 1.." in proc.stdout or "epochs 2.." in proc.stdout or "epochs 3.." in proc.stdout
    full, resumed = weights(tmp_path / "full"), weights(out)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "args", "rng"} <= set(ckpt)


def test_every_trainer_setting_says_whether_a_resume_must_match_it():
    """What a resumed run must share with its checkpoint comes from the config itself: a new
    setting cannot be forgotten, and those that change what is computed are all matched."""
    import dataclasses

    from softlabel.training.config import RESUME_MUST_MATCH, TrainConfig
    kinds = {f.name: f.metadata.get("resume") for f in dataclasses.fields(TrainConfig)}
    assert set(kinds.values()) == {"match", "free"}, kinds
    assert set(RESUME_MUST_MATCH) == {name for name, kind in kinds.items() if kind == "match"}
    assert {"label_source", "model", "loss_type", "learning_rate", "mixup", "cutmix", "mix_type", "seed", "amp",
            "crop_interpolation", "soft_label_type", "distiller", "teacher_mode"} <= set(RESUME_MUST_MATCH)
    assert {"workers", "output_dir", "resume", "device", "epochs", "eval_interval", "no_progress"}.isdisjoint(
        RESUME_MUST_MATCH)
