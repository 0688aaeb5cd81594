"""Writes stay inside their declared output: names read from files never pick
a path, an output inside an input is refused, and a symbolic link inside a store does not lead
writes or temp-file cleanup out of it. Each case runs the real script and checks the disk."""
from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import assert_user_error, relabel, run_script, tree_bytes
from test_export_imagefolder import CIFAR10, dump

from softlabel.errors import UserError
from softlabel.files import is_within, plain_name


@pytest.mark.parametrize("name", ["..", ".", "", "../escaped", "/tmp/abs", "a/b", "a\\b", "new\nline", "nul\0"])
def test_a_name_from_a_file_must_be_one_plain_component(name):
    with pytest.raises(UserError, match="not a plain file name"):
        plain_name(name, "class name")
    assert plain_name("aquarium_fish", "class name") == "aquarium_fish"


def cifar10_with_names(root, names):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    dump(base / "batches.meta", {b"label_names": [n.encode() for n in names]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(base / name, {b"labels": list(range(len(names))), b"data": np.zeros((len(names), 3072), np.uint8)})


@pytest.mark.parametrize("evil", ["../../escaped", "{abs}/escaped", "sub/../../escaped"])
def test_export_refuses_class_names_that_are_paths(tmp_path, evil):
    names = sorted(CIFAR10[:9] + [evil.format(abs=tmp_path)])
    cifar10_with_names(tmp_path / "root", names)
    proc = run_script("scripts/export_imagefolder.py", "--dataset", "cifar10", "--root", tmp_path / "root",
                      "--out", tmp_path / "a" / "out", check=False)
    assert_user_error(proc, "class name", "not a plain file name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a" / "escaped").exists()


def test_outputs_inside_their_inputs_are_refused(demo_data, teacher_ckpt, tmp_path):
    data = tmp_path / "data"
    os.symlink(demo_data / "ipc2", data)           # a link to the input is the input
    before = tree_bytes(demo_data / "ipc2")
    for store in (data, data / "store", demo_data / "ipc2" / "0" / "store"):
        proc = relabel(data, teacher_ckpt, store, "--epochs", 1, "-b", 8, check=False)
        assert_user_error(proc, "--fkd-path", "inside --data")
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", data, "--output-dir", data / "run",
                      "--model", "democnn_small", "--epochs", 1, check=False)
    assert_user_error(proc, "--output-dir", "inside --train-dir")
    proc = run_script("relabel/generate_soft_label_fkd.py", demo_data, "--teacher-path", teacher_ckpt,
                      "--save_path", demo_data / "labels", check=False)
    assert_user_error(proc, "--save_path", "inside DATA")
    (tmp_path / "src").mkdir()
    proc = run_script("scripts/convert_labels.py", tmp_path / "src", tmp_path / "src" / "dst", check=False)
    assert_user_error(proc, "DST", "inside SRC")
    assert tree_bytes(demo_data / "ipc2") == before


def test_a_symlinked_epoch_folder_does_not_lead_writes_out_of_the_store(demo_data, teacher_ckpt, tmp_path):
    store, outside = tmp_path / "store", tmp_path / "outside"
    relabel(demo_data / "ipc2", teacher_ckpt, store, "--epochs", 1, "-b", 8, "-j", 0)
    os.rename(store / "epoch_0", outside)
    for name in os.listdir(outside):
        os.remove(outside / name)
    stale = outside / ".tmp-999999999-x"        # a "stale temp file" that is not the store's
    stale.write_bytes(b"keep me")
    os.symlink(outside, store / "epoch_0")
    proc = relabel(demo_data / "ipc2", teacher_ckpt, store, "--epochs", 1, "-b", 8, "-j", 0, check=False)
    assert_user_error(proc, "--fkd-path", "outside", "symbolic link")
    assert os.listdir(outside) == [stale.name] and stale.read_bytes() == b"keep me"
    assert is_within(store / "epoch_0" / "x", outside) and not is_within(outside, store)


def test_a_symlinked_metrics_file_is_not_followed(demo_data, tmp_path):
    out, target = tmp_path / "run", tmp_path / "elsewhere.txt"
    out.mkdir()
    target.write_text("keep me\n")
    os.symlink(target, out / "metrics.jsonl")
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--model", "mlpnet",
                      "--epochs", 1, "--output-dir", out, "--no-progress", "-j", 0, check=False)
    assert_user_error(proc, "metrics.jsonl is a symbolic link")
    assert target.read_text() == "keep me\n"
