"""Tampered stores: one validator for batch geometry, a schema for
manifests and bounds on the work a number may ask for. Each variant is refused in one line naming
the file, by the store interface every reader uses; a few go through the real scripts too."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_user_error, run_script, train_in_process

from softlabel.data import scan_image_folder
from softlabel.errors import UserError
from softlabel.stores import Request, open_store, packed
from softlabel.stores import batch as store


@pytest.fixture()
def spoilable(cutmix_store, tmp_path) -> Path:
    """A copy of the session's cutmix store (20 images, batches 8 + 8 + 4, 3 epochs, 24 px)."""
    copy = tmp_path / "store"
    shutil.copytree(cutmix_store, copy)
    return copy


def read_all(path: Path, demo_data: Path) -> None:
    """What the trainer does with a store: open it (manifest, flags) and read every batch."""
    s = open_store(str(path), scan_image_folder(str(demo_data / "ipc2"), "--train-dir"), request=Request())
    reader = s.reader()
    for e in range(s.settings.epochs):
        for b in range(s.settings.batches_per_epoch):
            reader.read(e, b)


def spoil_batch(path: Path, change) -> Path:
    file = path / "epoch_1" / "batch_0.tar"
    entry = torch.load(file, weights_only=True)
    change(entry)
    torch.save(entry, file)
    return file


def drop_last(entry):
    for i in (0, 1, 2, 5, 6):
        entry[i] = entry[i][:-1]
    entry[2] = entry[2].clamp(max=len(entry[0]) - 1)


GEOMETRY = {
    "zero-area crop": (lambda e: e[0].__setitem__((2, 2), 0.0), "zero area"),
    "crop past the edge": (lambda e: e[0].__setitem__(1, torch.tensor([0.6, 0.1, 0.6, 0.5])), "past the image edge"),
    "cutmix box outside the crop": (lambda e: e.__setitem__(4, [0, 0, 30, 10]), "outside the 24px crop"),
    "cutmix box inverted": (lambda e: e.__setitem__(4, [10, 0, 5, 10]), "outside the 24px crop"),
    "duplicate sample": (lambda e: e[6].__setitem__(1, e[6][0]), "appears twice"),
    "short batch": (drop_last, "7 samples, expected 8"),
    "empty batch": (lambda e: [e.__setitem__(i, e[i][:0]) for i in (0, 1, 2, 5, 6)], "0 samples"),
    "unmixed batch in a cutmix store": (lambda e: [e.__setitem__(i, None) for i in (2, 3, 4)], "mix type none"),
    "mix_lam a string": (lambda e: e.__setitem__(3, "half"), "mix_lam must be a number"),
    "mix_bbox of strings": (lambda e: e.__setitem__(4, ["a", "b", "c", "d"]), "mix_bbox must be 4 integers"),
}


@pytest.mark.parametrize("case", sorted(GEOMETRY))
def test_batch_geometry_is_checked_by_the_one_reader(case, spoilable, demo_data):
    change, needle = GEOMETRY[case]
    file = spoil_batch(spoilable, change)
    with pytest.raises(UserError, match=f"store batch file {file}: .*{needle}"):
        read_all(spoilable, demo_data)


def spoil_manifest(path: Path, change) -> None:
    file = path / "manifest.json"
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest))


MANIFEST = {
    "a string count": (lambda m: m.__setitem__("num_samples", "20"), "num_samples must be an integer"),
    "no mean": (lambda m: m.pop("mean"), "missing entry mean"),
    "zero std": (lambda m: m.__setitem__("std", [0.0, 0.2, 0.3]), "std must be 3 positive numbers"),
    "class index past the classes": (lambda m: m["class_to_index"].__setitem__("0", 99), "outside the 10 classes"),
    "null fingerprint": (lambda m: m.__setitem__("dataset_fingerprint", None), "dataset_fingerprint is null"),
    "a boolean batch size": (lambda m: m.__setitem__("batch_size", True), "batch_size must be an integer"),
    "NaN temperature": (lambda m: m.__setitem__("temperature", math.nan), "temperature must be a finite"),
    "unknown mix": (lambda m: m.__setitem__("mix_type", "mosaic"), "mix_type must be one of"),
    "batches_per_epoch against the batch size": (lambda m: m.__setitem__("batches_per_epoch", 2),
                                                 r"contradicts ceil\(num_samples 20 / batch_size 8\) = 3"),
    "a billion epochs": (lambda m: m.__setitem__("epochs", 10 ** 9), r"epochs must be in \[0, 100000\]"),
    "too many batch files": (lambda m: m.update(epochs=100_000, batch_size=1, num_samples=200, batches_per_epoch=200),
                             "over the 10,000,000"),
    "a huge crop": (lambda m: m.__setitem__("input_size", 100_000), r"input_size must be in \[1, 4096\]"),
    "a class name that is a path": (lambda m: m["class_names"].__setitem__(0, "../../etc"), "not a plain folder name"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST))
def test_manifest_values_are_checked_when_read(case, spoilable, demo_data):
    change, needle = MANIFEST[case]
    spoil_manifest(spoilable, change)
    with pytest.raises(UserError, match=f"store manifest {spoilable / 'manifest.json'}: .*{needle}"):
        read_all(spoilable, demo_data)


def test_deeply_nested_json_is_one_line(spoilable, demo_data):
    (spoilable / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_all(spoilable, demo_data)


def test_the_scripts_refuse_tampered_stores_in_one_line(spoilable, demo_data, tmp_path):
    spoil_batch(spoilable, GEOMETRY["crop past the edge"][0])
    common = ("--train-dir", demo_data / "ipc2", "--fkd-path", spoilable, "--model", "mlpnet", "--no-progress",
              "-j", 0, "--output-dir", tmp_path / "run")
    proc = run_script("validate/train_FKD_parallel.py", *common, check=False)
    assert_user_error(proc, "batch_0.tar", "past the image edge")
    proc = run_script("scripts/fkd_info.py", spoilable, "--check", check=False)
    assert_user_error(proc, "batch_0.tar", "past the image edge")
    spoil_manifest(spoilable, MANIFEST["a billion epochs"][0])
    for script in ("scripts/fkd_info.py", "scripts/convert_labels.py"):
        extra = () if script.endswith("info.py") else (tmp_path / "converted",)
        proc = run_script(script, spoilable, *extra, check=False)
        assert_user_error(proc, "epochs must be in")
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--model", "mlpnet",
                      "--input-size", 100_000, "--output-dir", tmp_path / "run2", check=False)
    assert_user_error(proc, "--input-size 100000", "at most 4096")


def test_a_sample_in_two_batches_of_an_epoch_is_refused_by_the_trainer(spoilable, demo_data, tmp_path):
    first = torch.load(spoilable / "epoch_1" / "batch_0.tar", weights_only=True)
    file = spoil_batch(spoilable, lambda e: None)
    second = spoilable / "epoch_1" / "batch_1.tar"
    entry = torch.load(second, weights_only=True)
    entry[6][0] = first[6][0]                      # each file alone is valid; the epoch repeats a sample
    torch.save(entry, second)
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--fkd-path", spoilable,
                      "--model", "mlpnet", "--no-progress", "-j", 0, "--output-dir", tmp_path / "run", check=False)
    assert_user_error(proc, str(second), "repeat samples already in epoch 1")
    assert file.exists()


# ----------------------------------------------------------------------------- packed top-k stores

def command_in_process(module: str, *args) -> None:
    """A command's main() on these flags in this process, as its script runs it."""
    import importlib
    command = importlib.import_module(f"softlabel.commands.{module}")
    command.main(command.get_args_parser().parse_args([str(a) for a in args]))


PACKED_ARGS = ("--epochs", 2, "-b", 8, "--input-size", 16, "--mix-type", "cutmix", "-j", 0,
               "--label-format", "topk", "--topk", 3)


@pytest.fixture(scope="module")
def packed_store(demo_data, teacher_ckpt, tmp_path_factory) -> Path:
    """20 images in steps of 8 + 8 + 4, 2 epoch files, the top 3 of 10 classes with their fill."""
    root = tmp_path_factory.mktemp("packed") / "store"
    command_in_process("relabel", "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--fkd-path", root,
                       *PACKED_ARGS)
    return root


def spoil_records(path: Path, change) -> None:
    """``change`` the sample records of epoch 1's file in place (numpy, as docs/stores.md lays them out)."""
    manifest = json.loads((path / "manifest.json").read_text())
    file = path / "epoch_1.pack"
    raw = bytearray(file.read_bytes())
    steps = int(np.frombuffer(bytes(raw[8:12]), "<u4")[0])
    start = packed.HEADER.itemsize + steps * packed.STEP.itemsize
    rows = np.frombuffer(raw, packed.sample_dtype(manifest), offset=start).copy()
    change(rows)
    raw[start:] = rows.tobytes()
    file.write_bytes(bytes(raw))


PACKED = {
    "a class twice in a record": (lambda r: r["classes"].__setitem__((0, 1), r["classes"][0, 0]), "a class twice"),
    "a -inf value": (lambda r: r["values"].__setitem__((0, 2), -np.inf), "values hold NaN or infinite"),
    "a NaN value": (lambda r: r["values"].__setitem__((3, 0), np.nan), "values hold NaN or infinite"),
    "a -inf fill": (lambda r: r["fill"].__setitem__(5, -np.inf), "fill holds NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(PACKED))
def test_packed_records_no_writer_writes_are_refused_by_the_one_reader(case, packed_store, demo_data, tmp_path):
    change, needle = PACKED[case]
    copy = tmp_path / "store"
    shutil.copytree(packed_store, copy)
    spoil_records(copy, change)
    with pytest.raises(UserError, match=needle) as err:
        read_all(copy, demo_data)
    assert "epoch_1.pack" in str(err.value) and "\n" not in str(err.value)


def test_an_epoch_file_copied_over_another_is_refused_by_every_reader(packed_store, demo_data, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(packed_store, copy)
    shutil.copyfile(copy / "epoch_0.pack", copy / "epoch_1.pack")
    needle = "epoch_1.pack: holds the labels of epoch 0, not of epoch 1"
    with pytest.raises(UserError, match=needle):  # the trainer
        train_in_process("--train-dir", demo_data / "ipc2", "--fkd-path", copy, "--model", "mlpnet", "-j", 0,
                         "--no-progress", "--output-dir", tmp_path / "run")
    with pytest.raises(UserError, match=needle):
        command_in_process("info", copy, "--check")
    with pytest.raises(UserError, match=needle):
        command_in_process("convert", copy, tmp_path / "converted", "--topk", 2, "--no-progress")


def test_epoch_files_written_before_they_recorded_their_epoch_are_still_read(packed_store, demo_data, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(packed_store, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for e in range(2):  # as the first packed format wrote them: b"SLPACK02", steps, samples (16 bytes)
        raw = (copy / f"epoch_{e}.pack").read_bytes()
        (copy / f"epoch_{e}.pack").write_bytes(b"SLPACK02" + raw[8:16] + raw[20:])
    old, new = (store.Reader(str(p), dict(manifest)) for p in (copy, packed_store))
    for b in range(3):
        a, c = old.read(1, b), new.read(1, b)
        assert torch.equal(a.soft_label, c.soft_label) and torch.equal(a.index, c.index)
    read_all(copy, demo_data)


def test_logits_past_float16_are_refused_before_a_top_k_store_holds_them(demo_data, teacher_ckpt, tmp_path):
    full = tmp_path / "full"  # float32 logits: a top-k store keeps float16
    command_in_process("relabel", "--data", demo_data / "ipc1", "--teacher-path", teacher_ckpt, "--fkd-path", full,
                       "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    entry = torch.load(full / "epoch_0" / "batch_0.tar", weights_only=True)
    entry[5] = entry[5] * 1e6
    torch.save(entry, full / "epoch_0" / "batch_0.tar")
    with pytest.raises(UserError, match="epoch 0, step 0: its top-k logits pass float16's range"):
        command_in_process("convert", full, tmp_path / "topk", "--no-progress")
    assert not list((tmp_path / "topk").rglob("*.pack")) and not list((tmp_path / "topk").rglob("*.part"))


# ----------------------------------------------------------------------------- resume on a pruned store

def test_resume_on_a_pruned_store_extended_since_is_exact_or_refused(demo_data, teacher_ckpt, tmp_path, monkeypatch):
    """A pruned store's student steps cycle its labelled steps; relabelling more epochs makes the
    cycle longer. A run whose steps never came round again resumes to the very weights of an
    uninterrupted run on the extended store; one whose steps did is refused in one line."""
    monkeypatch.setattr("softlabel.files.lock_dir", lambda *a, **k: None)  # several runs, one process
    pruned = tmp_path / "pruned"   # 20 images, 3 steps an epoch, a third of them labelled
    relabel = lambda epochs: command_in_process(  # noqa: E731
        "relabel", "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--fkd-path", pruned,
        "--epochs", epochs, "-b", 8, "--input-size", 16, "-j", 0, "--label-keep", 0.34)
    train = lambda out, epochs, *extra: train_in_process(  # noqa: E731
        "--train-dir", demo_data / "ipc2", "--fkd-path", pruned, "--model", "mlpnet", "-j", 0, "--no-progress",
        "--epochs", epochs, "--lr-schedule", "step", "--lr-step-size", 100, "--output-dir", out, *extra)
    relabel(3)                     # 3 labelled steps: one epoch of the student's never comes round again
    train(tmp_path / "cut", 1)
    relabel(6)                     # extended: 6 labelled steps
    train(tmp_path / "cut", 2, "--resume", "auto")
    train(tmp_path / "whole", 2)
    a, b = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True)["model"] for r in ("cut", "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    train(tmp_path / "wrapped", 3)  # 9 steps over 6 labelled ones: the cycle came round
    relabel(9)
    with pytest.raises(UserError, match="the 6 labelled steps it held cycled.*the 9 labelled steps"):
        train(tmp_path / "wrapped", 4, "--resume", "auto")
