"""The bad-input matrix: each case runs the real script as a user would and expects one error
line naming the culprit, a non-zero exit, no traceback, and nothing else damaged."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, STORE_ARGS, assert_user_error, relabel, run_script, script_env, tree_bytes
from PIL import Image

from softlabel.stores import batch as store

TRAIN = "validate/train_FKD_parallel.py"
RELABEL = "relabel/generate_soft_label.py"


def train(*args, check=False):
    return run_script(TRAIN, *args, "--no-progress", "-j", 0, check=check)


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.startswith(".tmp-")]


@pytest.fixture()
def broken_store(cutmix_store, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(cutmix_store, copy)
    return copy


# ----------------------------------------------------------------------------- stores

def test_truncated_batch_file_is_named(broken_store, demo_data, tmp_path):
    path = broken_store / "epoch_1" / "batch_1.tar"
    path.write_bytes(path.read_bytes()[:300])
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", broken_store, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert_user_error(proc, str(path), "truncated or corrupt")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_named(value, broken_store, demo_data, tmp_path):
    path = broken_store / "epoch_2" / "batch_0.tar"
    entry = torch.load(path, weights_only=True)
    entry[5][3, 1] = value
    torch.save(entry, path)
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", broken_store, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert_user_error(proc, str(path), "NaN or infinite")


def test_store_with_another_class_count(broken_store, demo_data, tmp_path):
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", broken_store, "--model", "mlpnet",
                 "--num-classes", 100, "--output-dir", tmp_path / "run")
    assert_user_error(proc, "--num-classes 100", "10")


def test_manifest_class_names_cannot_point_outside(broken_store, demo_data, tmp_path):
    manifest = store.read_manifest(str(broken_store))
    manifest["class_names"][0] = "../../etc"
    store.write_manifest(str(broken_store), manifest)
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", broken_store, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert_user_error(proc, "manifest", "class name")


# ----------------------------------------------------------------------------- data

def make_folder(root: Path, images: dict[str, Image.Image | bytes]) -> Path:
    for rel, img in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            img.save(path)
    return root


def digits(demo_data: Path) -> dict[str, Image.Image]:
    """The 20 IPC2 images, in their folders."""
    base = demo_data / "ipc2"
    return {str(p.relative_to(base)): Image.open(p).copy() for p in sorted(base.rglob("*.png"))}


def test_missing_and_empty_data_folders(teacher_ckpt, tmp_path):
    proc = relabel(tmp_path / "nope", teacher_ckpt, tmp_path / "s", check=False)
    assert_user_error(proc, "--data", "no such directory")
    for c in ("0", "1"):
        (tmp_path / "empty" / c).mkdir(parents=True)
    proc = relabel(tmp_path / "empty", teacher_ckpt, tmp_path / "s", check=False)
    assert_user_error(proc, "--data")
    proc = train("--train-dir", tmp_path / "empty", "--model", "mlpnet", "--output-dir", tmp_path / "run")
    assert_user_error(proc, "--train-dir")
    assert not (tmp_path / "s").exists()


def test_corrupt_image_is_named_or_skipped(demo_data, teacher_ckpt, tmp_path):
    images = digits(demo_data)
    bad = sorted(images)[7]
    images[bad] = b"\x89PNG\r\n\x1a\n broken"
    data = make_folder(tmp_path / "data", images)
    proc = relabel(data, teacher_ckpt, tmp_path / "s", "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0,
                   check=False)
    assert_user_error(proc, bad, "--skip-bad-images")
    proc = relabel(data, teacher_ckpt, tmp_path / "s2", "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0,
                   "--skip-bad-images")  # a new store: the first one was started for 20 images
    assert "left out 1 unreadable images" in proc.stderr and bad in proc.stderr
    manifest = store.read_manifest(str(tmp_path / "s2"))
    assert manifest["num_samples"] == 19 and manifest["skipped_images"] == [bad]
    run = train("--train-dir", data, "--fkd-path", tmp_path / "s2", "--model", "mlpnet", "--output-dir",
                tmp_path / "run", "--skip-bad-images")
    assert run.returncode == 0, run.stderr
    no_flag = train("--train-dir", data, "--fkd-path", tmp_path / "s2", "--model", "mlpnet", "--output-dir",
                    tmp_path / "run2")
    assert_user_error(no_flag, "--skip-bad-images")


def test_non_rgb_images_are_converted(demo_data, teacher_ckpt, tmp_path):
    images = digits(demo_data)
    names = sorted(images)
    images[names[0]] = images[names[0]].convert("L")
    images[names[1]] = images[names[1]].convert("P")
    images[names[2]] = images[names[2]].convert("RGBA")
    images[names[3]] = images[names[3]].convert("LA")
    images[names[4]] = images[names[4]].convert("1")
    data = make_folder(tmp_path / "data", images)
    relabel(data, teacher_ckpt, tmp_path / "s", "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    proc = train("--train-dir", data, "--val-dir", data, "--fkd-path", tmp_path / "s", "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- outputs

def test_output_paths_that_cannot_be_created(demo_data, teacher_ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    proc = relabel(demo_data / "ipc1", teacher_ckpt, blocker / "store", "--epochs", 1, check=False)
    assert_user_error(proc, "--fkd-path", "a file is in the way")
    proc = train("--train-dir", demo_data / "ipc1", "--model", "mlpnet", "--output-dir", blocker / "run")
    assert_user_error(proc, "--output-dir", "a file is in the way")
    denied = Path("/sys/softlabel-test") if os.geteuid() == 0 else tmp_path / "ro" / "x"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o500)
    proc = relabel(demo_data / "ipc1", teacher_ckpt, denied, "--epochs", 1, check=False)
    assert_user_error(proc, "--fkd-path", "cannot create directory")


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child: a write past `limit` bytes fails as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_a_write_leaves_no_partial_file(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    out = tmp_path / "store"
    args = [sys.executable, str(ROOT / RELABEL), "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt,
            "--fkd-path", out, *STORE_ARGS]
    proc = subprocess.run([str(a) for a in args], cwd=ROOT, env=script_env(), capture_output=True, text=True,
                          timeout=600, preexec_fn=_file_size_limit(2500))
    assert_user_error(proc, "cannot write", "nothing partial was left")
    assert no_temp_files(out)
    for path in out.rglob("batch_*.tar"):  # whatever was finished is whole
        torch.load(path, weights_only=True)
    relabel(demo_data / "ipc2", teacher_ckpt, out, *STORE_ARGS)  # the rerun completes the store
    assert {k: v for k, v in tree_bytes(out).items() if k.startswith("epoch_")} == \
        {k: v for k, v in tree_bytes(cutmix_store).items() if k.startswith("epoch_")}


# ----------------------------------------------------------------------------- flags

@pytest.mark.parametrize("extra, needle", [
    (["--label-format", "topk"], "label_format"),
    (["--topk", 0, "--label-format", "topk"], "--topk"),
    (["-b", 0], "--batch-size"),
    (["--min-scale-crops", 0.9, "--max-scale-crops", 0.5], "--min-scale-crops"),
    (["--temperature", 0], "--temperature"),
])
def test_relabel_flags_that_contradict_each_other_or_the_store(extra, needle, cutmix_store, demo_data,
                                                                teacher_ckpt, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(cutmix_store, copy)
    before = tree_bytes(copy)
    base = [a for a in STORE_ARGS]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    proc = relabel(demo_data / "ipc2", teacher_ckpt, copy, *base, check=False)
    assert_user_error(proc, needle)
    assert tree_bytes(copy) == before


def test_checkpoint_that_is_not_ours_or_corrupt(cutmix_store, demo_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth").write_bytes(b"garbage")
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet",
                 "--resume", "auto", "--output-dir", run)
    assert_user_error(proc, "checkpoint.pth", "truncated or corrupt")
    torch.save({"weights": np.zeros(2).tolist()}, run / "checkpoint.pth")
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet",
                 "--resume", "auto", "--output-dir", run)
    assert_user_error(proc, "--resume", "not a checkpoint of this trainer")
