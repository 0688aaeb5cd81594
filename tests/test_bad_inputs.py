"""The bad-input matrix: each case runs the real script as a user would and expects one error
line naming the culprit, a non-zero exit, no traceback, and nothing else damaged. Sections: stores
the trainer reads, data folders, output paths, relabel's flags and teachers, the trainer's flags and
checkpoints, FKD per-image generation, the helper scripts. (Cases that need a heavy fixture of
their own file stay there: the store inspector, per-image and upstream stores, conversion.)"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STORE_ARGS, assert_user_error, relabel, run_script, script_env, train_in_process, tree_bytes
from PIL import Image

from softlabel.errors import UserError
from softlabel.stores import batch as store

TRAIN = "validate/train_FKD_parallel.py"
RELABEL = "relabel/generate_soft_label.py"


def train(*args, check=False):
    return run_script(TRAIN, *args, "--no-progress", "-j", 0, check=check)


@pytest.fixture()
def store_copy(cutmix_store, tmp_path) -> Path:
    """A copy of the session's cutmix store, free to spoil or to be refused on."""
    copy = tmp_path / "store"
    shutil.copytree(cutmix_store, copy)
    return copy


# ----------------------------------------------------------------------------- stores

def test_truncated_batch_file_is_named(store_copy, demo_data, tmp_path):
    path = store_copy / "epoch_1" / "batch_1.tar"
    path.write_bytes(path.read_bytes()[:300])
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", store_copy, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert_user_error(proc, str(path), "truncated or corrupt")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_logits_are_named(value, store_copy, demo_data, tmp_path):
    path = store_copy / "epoch_2" / "batch_0.tar"
    entry = torch.load(path, weights_only=True)
    entry[5][3, 1] = value
    torch.save(entry, path)
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", store_copy, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run")
    assert_user_error(proc, str(path), "NaN or infinite")


def test_store_with_another_class_count(store_copy, demo_data, tmp_path):
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", store_copy, "--model", "mlpnet",
                 "--num-classes", 100, "--output-dir", tmp_path / "run")
    assert_user_error(proc, "--num-classes 100", "10")


def test_manifest_class_names_cannot_point_outside(store_copy, demo_data, tmp_path):
    manifest = store.read_manifest(str(store_copy))
    manifest["class_names"][0] = "../../etc"
    store.write_manifest(str(store_copy), manifest)
    proc = train("--train-dir", demo_data / "ipc2", "--fkd-path", store_copy, "--model", "mlpnet",
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


# ----------------------------------------------------------------------------- packed folders, LMDB, links

PACK = "scripts/pack_images.py"


def pack(*args) -> None:
    """pack_images.py's main() in this process (the packs below are tiny)."""
    from softlabel.commands import pack as module
    module.main(module.get_args_parser().parse_args([*map(str, args), "--no-progress"]))


def test_a_truncated_lmdb_is_named_not_a_bus_error(demo_data, teacher_ckpt, tmp_path):
    lm = tmp_path / "lmdb"
    pack(demo_data / "ipc2", lm, "--format", "lmdb")
    data = lm / "data.mdb"
    data.write_bytes(data.read_bytes()[:3 * 4096])  # an interrupted copy: the first pages only
    from conftest import train_in_process

    from softlabel.errors import UserError
    with pytest.raises(UserError, match=f"--train-dir {data}: .*truncated"):
        train_in_process("--train-dir", lm, "--model", "mlpnet", "--output-dir", tmp_path / "run", "-j", 2)
    proc = relabel(lm, teacher_ckpt, tmp_path / "s", "--epochs", 1, "-j", 2, check=False)
    assert_user_error(proc, str(data), "truncated")


def bmp_folder(demo_data: Path, root: Path) -> Path:
    """The IPC2 images as BMP files: a file's size depends on its shape only, so images can be
    regenerated with the same names and sizes."""
    for rel, img in digits(demo_data).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.convert("RGB").save((root / rel).with_suffix(".bmp"))
    return root


def test_a_pack_that_does_not_hold_the_stores_images_is_refused(demo_data, teacher_ckpt, tmp_path):
    import json

    from conftest import train_in_process

    from softlabel.errors import UserError
    folder = bmp_folder(demo_data, tmp_path / "bmp")
    pack(folder, tmp_path / "p1")
    pack(folder, tmp_path / "p1_lmdb", "--format", "lmdb")
    labels = tmp_path / "s"
    relabel(tmp_path / "p1", teacher_ckpt, labels, "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    assert store.read_manifest(str(labels))["images_digest"]
    # the folder regenerated: other pixels in one image, the same names and file sizes
    first = sorted(folder.rglob("*.bmp"))[0]
    size = first.stat().st_size
    Image.fromarray(255 - np.asarray(Image.open(first))).save(first)
    assert first.stat().st_size == size
    pack(folder, tmp_path / "p2")
    # one image fewer, and an image's shape changed, in copies of the original pack's index
    for name, edit in (("fewer", "fewer"), ("shape", "shape")):
        shutil.copytree(tmp_path / "p1", tmp_path / name)
        index = json.loads((tmp_path / name / "images.json").read_text())
        if edit == "fewer":
            h, w = index["samples"].pop()[2:]
            index["file_sizes"].pop()
            index["pixel_bytes"] -= h * w * 3
            (tmp_path / name / "pixels.u8").write_bytes((tmp_path / name / "pixels.u8").read_bytes()[:-h * w * 3])
        else:
            index["samples"][0][2:] = [16, 64]  # as many pixels, another shape
        (tmp_path / name / "images.json").write_text(json.dumps(index))
    base = ["--fkd-path", labels, "--model", "mlpnet", "-j", 0, "--no-progress"]
    for name, needle in (("p2", "other image contents"), ("fewer", "changed after packing"),
                         ("shape", "changed after packing")):
        with pytest.raises(UserError, match=needle):
            train_in_process("--train-dir", tmp_path / name, *base, "--output-dir", tmp_path / f"run_{name}")
    proc = relabel(tmp_path / "p2", teacher_ckpt, labels, "--epochs", 2, "-b", 10, "--input-size", 16, "-j", 0,
                   check=False)
    assert_user_error(proc, "--data", "other image contents")
    # the original pack and its LMDB twin (a digest of other things: not compared) still train from it
    for n, source in enumerate((tmp_path / "p1", tmp_path / "p1_lmdb")):
        train_in_process("--train-dir", source, *base, "--epochs", 1, "--output-dir", tmp_path / f"ok{n}")


def test_a_link_back_into_the_folder_lists_each_image_once(demo_data, teacher_ckpt, tmp_path, capsys):
    from conftest import train_in_process

    from softlabel.data import scan_image_folder
    data = tmp_path / "data"
    shutil.copytree(demo_data / "ipc2", data)
    (data / "0" / "loop").symlink_to("..")
    outside = tmp_path / "outside"
    shutil.copytree(demo_data / "ipc2" / "1", outside / "more")
    (data / "2" / "outside").symlink_to(outside)  # a link out of the tree: followed, as torchvision does
    (outside / "more" / "again").symlink_to(outside)  # ... but not round a loop out there
    proc = relabel(data, teacher_ckpt, tmp_path / "s", "--epochs", 1, "-b", 8, "--input-size", 16, "-j", 0)
    assert "22 images" in proc.stdout, proc.stdout
    notes = [line for line in proc.stderr.splitlines() if "symbolic links" in line]
    assert len(notes) == 1 and "0/loop" in notes[0] and "2/outside/more/again" in notes[0], proc.stderr
    assert len(list((tmp_path / "s").rglob("batch_*.tar"))) == 3
    index = scan_image_folder(str(data), "--train-dir")
    assert sorted(p for p, t in index.samples if "outside" in p) == sorted(
        str(data / "2" / "outside" / "more" / f.name) for f in (outside / "more").glob("*.png"))
    train_in_process("--train-dir", data, "--fkd-path", tmp_path / "s", "--model", "mlpnet", "-j", 0,
                     "--no-progress", "--output-dir", tmp_path / "run")
    assert "symbolic links" in capsys.readouterr().err


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


# ----------------------------------------------------------------------------- relabel

@pytest.mark.parametrize("extra, needle", [
    (["--label-format", "topk"], "label_format"),
    (["--topk", 0, "--label-format", "topk"], "--topk"),
    (["-b", 0], "--batch-size"),
    (["--min-scale-crops", 0.9, "--max-scale-crops", 0.5], "--min-scale-crops"),
    (["--temperature", 0], "--temperature"),
])
def test_relabel_flags_that_contradict_each_other_or_the_store(extra, needle, store_copy, demo_data, teacher_ckpt):
    copy = store_copy
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


def test_relabel_rerun_with_other_settings_or_other_images_is_refused(store_copy, demo_data, teacher_ckpt):
    before = tree_bytes(store_copy)
    proc = relabel(demo_data / "ipc2", teacher_ckpt, store_copy, *STORE_ARGS, "--fkd-seed", 1, check=False)
    assert_user_error(proc, "--fkd-path", "fkd_seed", "42", "1")
    proc = relabel(demo_data / "ipc5", teacher_ckpt, store_copy, *STORE_ARGS, check=False)
    assert_user_error(proc, "num_samples")
    assert tree_bytes(store_copy) == before


def test_relabel_bad_data_teachers_and_flags(demo_data, teacher_ckpt, tmp_path):
    cases = [
        (["--data", tmp_path / "nope", "--teacher-path", teacher_ckpt], "--data"),
        (["--data", demo_data / "ipc2", "--teacher-path", tmp_path / "missing.pth"], "missing.pth"),
        (["--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "-a", "resnet18"], "-a/--arch"),
        (["--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--mode", "fkd_load"], "--mode"),
        (["--data", demo_data / "ipc2", "-a", "resnet18"], "resnet18"),  # no weights cached, no download
        (["--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--min-scale-crops", 0], "--min-scale-crops"),
    ]
    (tmp_path / "empty_class" / "a").mkdir(parents=True)
    cases.append((["--data", tmp_path / "empty_class", "--teacher-path", teacher_ckpt], "--data"))
    for args, needle in cases:
        proc = run_script(RELABEL, *args, "--fkd-path", tmp_path / "s", "--epochs", 1, check=False)
        assert_user_error(proc, needle)


def test_missing_published_weights_name_the_model_and_the_cache(demo_data, tmp_path):
    env = script_env(TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"))
    for args, needles in (
        (["-a", "resnet18"], ["'resnet18'", "--teacher-path", "resnet18-", str(tmp_path / "torch")]),
        (["--teachers", "mobilenetv3_small_050.lamb_in1k", "--teacher-source", "timm"],
         ["'mobilenetv3_small_050.lamb_in1k'", "--teacher-path", "timm/mobilenetv3_small_050", "HF_HOME"]),
        (["-a", "democnn"], ["democnn", "--teacher-path"]),
        (["-a", "resnet18", "--teacher-source", "private"], ["--teacher-source private", "--teacher-path"]),
    ):
        proc = run_script(RELABEL, "--data", demo_data / "ipc1", *args, "--fkd-path", tmp_path / "s", check=False,
                          env=env)
        assert_user_error(proc, *needles)
        assert not (tmp_path / "s" / "manifest.json").exists()


def test_teacher_pickle_that_runs_code_is_refused(demo_data, tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"model": Evil()}))
    torch.save({"model": {"w": torch.zeros(1)}, "x": Evil()}, tmp_path / "evil2.pth")
    for path in (bad, tmp_path / "evil2.pth"):
        proc = run_script(RELABEL, "--data", demo_data / "ipc2", "--teacher-path", path, "-a", "democnn_small",
                          "--fkd-path", tmp_path / "s", check=False)
        assert_user_error(proc, str(path))
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- the trainer

def test_trainer_bad_data_model_and_flags(demo_data, tmp_path):
    cases = [
        (["--train-dir", tmp_path / "nope"], "--train-dir"),
        (["--train-dir", demo_data / "ipc1", "--model", "no_such_net"], "no_such_net"),
        (["--train-dir", demo_data / "ipc1", "--fkd-path", tmp_path], "--fkd-path"),
        (["--train-dir", demo_data / "ipc1", "--val-dir", demo_data / "val", "--num-classes", 5], "--train-dir"),
    ]
    for args, needle in cases:
        assert_user_error(train(*args, "--output-dir", tmp_path / "o"), needle)


def test_trainer_flags_that_contradict_the_store(cutmix_store, demo_data, tmp_path):
    base = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet",
            "--output-dir", tmp_path / "run"]
    assert_user_error(train(*base, "--batch-size", 16, check=False), "--batch-size 16", "batches of 8")
    assert_user_error(train(*base, "--epochs", 4, check=False), "--epochs 4", "3 epochs")
    assert_user_error(train(*base, "--input-size", 32, check=False), "--input-size 32", "24")
    assert_user_error(train(*base, "--mix-type", "mixup", check=False), "--mix-type mixup", "cutmix")
    wrong = ["--train-dir", demo_data / "ipc5"] + base[2:]
    assert_user_error(train(*wrong, check=False), "--train-dir", "not the images")
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_incomplete_store_is_refused_before_training(demo_data, teacher_ckpt, tmp_path):
    store_dir = tmp_path / "store"
    relabel(demo_data / "ipc1", teacher_ckpt, store_dir, "--epochs", 2, "-b", 10, "--input-size", 16, "-j", 0)
    (store_dir / "epoch_1" / "batch_0.tar").unlink()
    proc = train("--train-dir", demo_data / "ipc1", "--fkd-path", store_dir, "--model", "mlpnet",
                 "--output-dir", tmp_path / "run", check=False)
    assert_user_error(proc, "--fkd-path", "1 batch files missing", "epoch_1")
    (store_dir / "epoch_0" / "batch_0.tar").write_bytes(b"not a torch file")
    proc = train("--train-dir", demo_data / "ipc1", "--fkd-path", store_dir, "--model", "mlpnet", "--epochs", 1,
                 "--output-dir", tmp_path / "run", check=False)
    assert_user_error(proc, "batch_0.tar")


def test_resume_refuses_other_hyperparameters(cutmix_store, demo_data, tmp_path):
    base = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet", "--epochs", 2]
    train(*base, "--output-dir", tmp_path / "run", check=True)
    proc = train(*base, "--epochs", 3, "--adamw-lr", 0.01, "--output-dir", tmp_path / "run", "--resume", "auto",
                 check=False)
    assert_user_error(proc, "--resume", "--adamw-lr")
    assert_user_error(train(*base, "--output-dir", tmp_path / "x", "--resume", tmp_path / "none.pth", check=False),
                      "--resume", "none.pth")


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


# ----------------------------------------------------------------------------- FKD per-image generation

def test_fkd_crops_not_a_multiple_of_the_segments(demo_data, teacher_ckpt, tmp_path):
    out = tmp_path / "never"
    proc = run_script("relabel/generate_soft_label_fkd.py", demo_data / "ipc1", "--teacher-path", teacher_ckpt,
                      "--save_path", out, "--num_crops", 10, "--num_seg", 4, check=False)
    assert_user_error(proc, "--num_crops 10", "--num_seg 4")
    assert not out.exists()


# ----------------------------------------------------------------------------- helper scripts

def test_demo_data_with_too_many_images_per_class(tmp_path):
    proc = run_script("scripts/make_demo_data.py", "--out", tmp_path / "d", "--ipc", 1000, check=False)
    assert_user_error(proc, "--ipc 1000")


def test_export_from_a_root_without_the_dataset(tmp_path):
    proc = run_script("scripts/export_imagefolder.py", "--dataset", "cifar10", "--root", tmp_path / "none",
                      "--out", tmp_path / "o", check=False)
    assert_user_error(proc, "--root", "--download")


def test_bench_methods_unknown_recipe(tmp_path):
    proc = run_script("scripts/bench_methods.py", "--quick", "--work", tmp_path, "--recipes", "vanilla,mixup",
                      check=False)
    assert proc.returncode == 2
    assert_user_error(proc, "--recipes", "unknown mixup")


# ----------------------------------------------------------------------------- devices and non-finite numbers

@pytest.mark.parametrize("device, needle", [("foo", "not a device name"), ("mps", "only cpu and cuda"),
                                            ("cuda", "no CUDA device"), ("cuda:7", "no CUDA device")])
def test_devices_this_machine_lacks_are_one_line_errors(device, needle, cutmix_store, demo_data, teacher_ckpt,
                                                        tmp_path):
    if torch.cuda.is_available() and device.startswith("cuda"):  # CI has no GPU; a GPU machine names the count
        needle = "CUDA device" if device == "cuda:7" else ""
    assert_user_error(train("--fkd-path", cutmix_store, "--train-dir", demo_data / "ipc2", "--device", device,
                            "--output-dir", tmp_path / "t"), f"--device {device}", needle)
    assert_user_error(relabel(demo_data / "ipc2", teacher_ckpt, tmp_path / "s", "--device", device, check=False),
                      f"--device {device}", needle)


def poison_weights_after(monkeypatch, steps: int) -> None:
    """The trainer's weights turn NaN after its first ``steps`` steps, as a diverging run's do."""
    from softlabel.training import loop as trainer
    real_step, done = trainer.train_step, []

    def poisoned(step, batch):
        loss = real_step(step, batch)
        done.append(1)
        if len(done) == steps:
            with torch.no_grad():
                next(step.model.parameters()).fill_(float("nan"))
        return loss
    monkeypatch.setattr(trainer, "train_step", poisoned)


def test_a_diverging_run_stops_before_its_checkpoint(store_copy, demo_data, tmp_path, monkeypatch):
    """Weights that blow up make the losses NaN: the trainer stops at the epoch's end, names it,
    and writes no checkpoint of it (an earlier one would stay). (A store whose normalization
    divides by zero no longer gets this far: the schema refuses it.)"""
    poison_weights_after(monkeypatch, 1)
    out = tmp_path / "run"
    with pytest.raises(UserError, match="epoch 1: the training loss is nan"):
        train_in_process("--fkd-path", store_copy, "--train-dir", demo_data / "ipc2", "--output-dir", out,
                         "--model", "democnn_small", "--no-progress")
    assert not (out / "checkpoint.pth").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--sgd", "--momentum", "nan"], "--momentum must be in [0, 1), got nan"),
    (["--sgd", "-lr", "-1"], "-lr/--lr must be in [0, 100], got -1"),
    (["--adamw-lr", "inf"], "--adamw-lr must be in [0, 100], got inf"),
    (["--weight-decay", "-0.1", "--sgd"], "--weight-decay must be in [0, 1]"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_optimizer_numbers_that_cannot_train_are_refused_before_anything_is_written(flags, needle, demo_data,
                                                                                   tmp_path):
    with pytest.raises(UserError, match=re.escape(needle)):
        train_in_process("--train-dir", demo_data / "ipc1", "--model", "democnn_small", "--epochs", 1,
                         "--output-dir", tmp_path / "run", *flags)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("weight", ["-1000", "1e30", "nan"])
def test_distill_weights_that_cannot_train_are_refused(weight, demo_data, teacher_ckpt, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"--distill-weight must be in [0, 10000], got {float(weight)}")):
        train_in_process("--train-dir", demo_data / "ipc1", "--model", "democnn_small", "--epochs", 1,
                         "--teacher", "democnn", "--teacher-path", teacher_ckpt, "--distiller", "at",
                         "--distill-weight", weight, "--output-dir", tmp_path / "run")


def test_a_checkpoint_with_non_finite_weights_is_never_written(demo_data, tmp_path, monkeypatch):
    """An epoch's loss is taken before its last update: that update alone can make the weights
    NaN with a finite loss. The checkpoint is checked itself, whatever the loss said."""
    poison_weights_after(monkeypatch, 1)  # one step per epoch: the loss stays finite
    out = tmp_path / "run"
    with pytest.raises(UserError, match="epoch 1: the student's .* is not finite"):
        train_in_process("--train-dir", demo_data / "ipc1", "--model", "democnn_small", "--epochs", 1, "-b", 10,
                         "--output-dir", out, "--no-progress")
    assert not (out / "checkpoint.pth").exists()


def test_teachers_whose_logits_are_not_finite_write_nothing(demo_data, teacher_ckpt, tmp_path):
    broken = tmp_path / "nan_teacher.pth"
    ckpt = torch.load(teacher_ckpt, weights_only=True)
    first = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.dim() > 1)
    ckpt["model"][first] = torch.full_like(ckpt["model"][first], float("nan"))
    torch.save(ckpt, broken)
    for teacher, extra, needles in ((broken, (), ("not finite", "NaN weights")),
                                    (teacher_ckpt, ("--temperature", 1e-9, "--use-fp16"),
                                     ("--use-fp16: the teachers' logits", "beyond float16", "drop --use-fp16"))):
        out = tmp_path / f"store_{len(extra)}"
        proc = relabel(demo_data / "ipc2", teacher, out, "--epochs", 1, "-b", 8, "--input-size", 24, "-j", 0,
                       *extra, check=False)
        error = assert_user_error(proc, *needles)
        assert proc.stderr.strip().splitlines()[-1] == error  # the progress bar is not redrawn after it
        assert not list(out.rglob("batch_*.tar"))


# ----------------------------------------------------------------------------- nothing half-made

def command_in_process(module: str, *args) -> None:
    """A command's main() on these flags in this process (as its script runs it, without the
    start-up of a new interpreter)."""
    import importlib
    command = importlib.import_module(f"softlabel.commands.{module}")
    command.main(command.get_args_parser().parse_args([str(a) for a in args]))


SMALL = ("--epochs", 2, "-b", 8, "--input-size", 16, "-j", 0)
# (command, bad flags, the error, the flags that correct them): every value that decides whether a
# run can start is checked before its store exists, so the corrected rerun is never blocked.
REFUSED_BEFORE_WRITING = {
    "relabel: top-k wider than the classes": ("relabel", ("--label-format", "topk", "--topk", 20),
                                               "--topk 20: the teacher has 10 outputs", ("--topk", 10)),
    "relabel: negative seed": ("relabel", ("--fkd-seed", -1), "--fkd-seed must be >= 0", ("--fkd-seed", 0)),
    "relabel: pruning that keeps no step": ("relabel", ("--label-keep", 0.05), "keeps no step", ("--label-keep", 0.5)),
    "relabel: a mixup alpha of 0": ("relabel", ("--mix-type", "mixup", "--mixup", 0), "--mixup (the Beta",
                                    ("--mixup", 0.5)),
    "relabel: a temperature that is not finite": ("relabel", ("--temperature", "inf"), "--temperature must be",
                                                  ("--temperature", 2)),
    "fkd: negative seed": ("relabel_fkd", ("--fkd_seed", -1), "--fkd_seed must be >= 0", ("--fkd_seed", 1)),
    "fkd: a temperature that is not finite": ("relabel_fkd", ("--temp", "nan"), "--temp must be", ("--temp", 1)),
    "convert: top-k wider than the classes": ("convert", ("--topk", 20), "has 10 classes; keep at most 10",
                                              ("--topk", 10)),
}


@pytest.mark.parametrize("case", sorted(REFUSED_BEFORE_WRITING))
def test_a_refused_run_writes_nothing_so_the_corrected_rerun_runs(case, cutmix_store, demo_data, teacher_ckpt,
                                                                    tmp_path, monkeypatch):
    module, bad, needle, fix = REFUSED_BEFORE_WRITING[case]
    out = tmp_path / "out"
    if module == "relabel":
        base = ("--data", demo_data / "ipc1", "--teacher-path", teacher_ckpt, "--fkd-path", out, *SMALL)
    elif module == "relabel_fkd":
        base = (demo_data / "ipc1", "--teacher-path", teacher_ckpt, "--save_path", out, "--num_crops", 2,
                "--input_size", 16, "-j", 0)
    else:
        base = (cutmix_store, out, "--no-progress")
    with pytest.raises(UserError, match=re.escape(needle)):
        command_in_process(module, *base, *bad)
    assert not out.exists()
    monkeypatch.setattr("softlabel.files.lock_dir", lambda *a, **k: None)  # one process, two runs
    command_in_process(module, *base, *bad, *fix)  # the later flag wins, as a user retyping it
    assert out.exists() and not any(p.name.endswith((".parts", ".tmp")) for p in out.iterdir())


def test_a_refused_rerun_leaves_the_store_as_it_was(demo_data, teacher_ckpt, tmp_path):
    out = tmp_path / "store"
    base = ("--data", demo_data / "ipc1", "--teacher-path", teacher_ckpt, "--fkd-path", out, *SMALL,
            "--label-format", "topk", "--topk", 3)
    command_in_process("relabel", *base)
    before = tree_bytes(out)
    for bad, needle in ((("--topk", 20), "--topk 20"), (("--fkd-seed", -3), "--fkd-seed"),
                        (("--epochs", 100_001), "at most 100000")):
        with pytest.raises(UserError, match=re.escape(needle)):
            command_in_process("relabel", *base, *bad)
        assert tree_bytes(out) == before
