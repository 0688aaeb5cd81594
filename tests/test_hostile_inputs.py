"""Hostile inputs to the public commands: manifests whose teacher entries are not as relabel writes
them (fkd_info.py), relabel's --min-teacher-acc out of range or refusing the teacher (the
--class-map rerun into the same store runs), score_distilled.py's flags and folders checked before
--out is written (so the corrected rerun is not "other settings"), and a cutmix box edited away
from its stored weight (the one reader, from the trainer and fkd_info.py --check)."""
from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_in_process

from softlabel.errors import UserError
from softlabel.stores import packed

SMALL = ("-j", 0, "--input-size", 16)


def command(module: str, *args) -> None:
    """A command's main() on these flags in this process, as its script runs it."""
    cmd = importlib.import_module(f"softlabel.commands.{module}")
    cmd.main(cmd.get_args_parser().parse_args([str(a) for a in args]))


@pytest.fixture(scope="module")
def stores(demo_data, teacher_ckpt, tmp_path_factory) -> dict[str, Path]:
    """A cutmix batch store (20 images in batches 8 + 8 + 4), its packed top-k twin and an FKD
    per-image store, each made by its relabel command."""
    root = tmp_path_factory.mktemp("hostile")
    cutmix = ("--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--epochs", 1, "-b", 8,
              "--mix-type", "cutmix", *SMALL)
    command("relabel", *cutmix, "--fkd-path", root / "batch")
    command("relabel", *cutmix, "--fkd-path", root / "packed", "--label-format", "topk", "--topk", 3)
    command("relabel_fkd", demo_data / "ipc1", "--teacher-path", teacher_ckpt, "--save_path", root / "per_image",
            "--num_crops", 2, "--num_seg", 2, "--input_size", 16, "-j", 0, "--device", "cpu")
    return {"batch": root / "batch", "packed": root / "packed", "per_image": root / "per_image",
            "per_image_data": demo_data / "ipc1", "batch_data": demo_data / "ipc2"}


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- A: manifests

def first_teacher(m: dict) -> dict:
    return m["teachers"][0] if "teachers" in m else m["teacher"]


MANIFESTS = {  # (store, edit, what the one line says after the manifest's path)
    "teachers as strings": ("batch", lambda m: m.__setitem__("teachers", ["resnet18"]),
                            r"teachers\[0\] must be a JSON object, found 'resnet18'"),
    "weights a list": ("batch", lambda m: first_teacher(m).__setitem__("weights", ["IMAGENET1K_V1"]),
                       r"teachers\[0\].weights must be a string"),
    "mean a string": ("batch", lambda m: first_teacher(m).__setitem__("mean", "abc"),
                      r"teachers\[0\].mean must be 3 finite numbers"),
    "a sha256 that is not one": ("batch", lambda m: first_teacher(m).__setitem__("weights_sha256", 7),
                                 r"teachers\[0\].weights_sha256 must be a sha256"),
    "a teacher of other classes": ("batch", lambda m: first_teacher(m).__setitem__("num_classes", 1000),
                                   r"teachers\[0\].num_classes must be the store's num_classes 10"),
    "crop scale without its other end": ("batch", lambda m: m.__setitem__("max_scale_crops", None),
                                         "min_scale_crops is given without max_scale_crops"),
    "per-image teacher a string": ("per_image", lambda m: m.__setitem__("teacher", "resnet18"),
                                   "teacher must be a JSON object, found 'resnet18'"),
    "per-image mean without std": ("per_image", lambda m: first_teacher(m).pop("std"),
                                   "teacher.mean is given without teacher.std"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_teacher_entries_not_as_relabel_writes_them_are_one_line_from_every_mode(case, stores, teacher_ckpt,
                                                                                tmp_path):
    kind, edit, needle = MANIFESTS[case]
    store = copy_of(stores[kind], tmp_path)
    path = store / ("manifest.json" if kind == "batch" else "fkd_manifest.json")
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    data = stores[f"{kind}_data"]
    for mode in ((), ("--verify-weights",), ("--check", "--data", data),
                 ("--verify-teacher", "democnn_small", "--teacher-path", teacher_ckpt, "--data", data)):
        with pytest.raises(UserError, match=f"manifest {re.escape(str(path))}: {needle}"):
            command("info", store, *mode)


def test_the_script_says_it_in_one_line(stores, tmp_path, monkeypatch, capsys):
    from softlabel.commands import info
    store = copy_of(stores["batch"], tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["teachers"] = ["resnet18"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(sys, "argv", ["scripts/fkd_info.py", str(store), "--verify-weights"])
    with pytest.raises(SystemExit) as exit_:
        info.cli()  # what scripts/fkd_info.py runs
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines() == [f"fkd_info.py: error: store manifest {store / 'manifest.json'}: teachers[0] must be a "
                                f"JSON object, found 'resnet18'"]


# ----------------------------------------------------------------------------- B: --min-teacher-acc

@pytest.mark.parametrize("value", ["nan", "-5", "150", "inf"])
def test_min_teacher_acc_out_of_range_is_refused_before_anything_is_written(value, stores, teacher_ckpt, tmp_path):
    with pytest.raises(UserError, match=f"--min-teacher-acc is a top-1 in percent, in \\[0, 100\\], got {value}"):
        command("relabel", "--data", stores["batch_data"], "--teacher-path", teacher_ckpt, "--fkd-path",
                tmp_path / "store", "--min-teacher-acc", value, *SMALL)
    with pytest.raises(UserError, match=f"--min-teacher-acc is a top-1 in percent, in \\[0, 100\\], got {value}"):
        command("relabel_fkd", stores["per_image_data"], "--teacher-path", teacher_ckpt, "--save_path",
                tmp_path / "store", "--min-teacher-acc", value, "-j", 0)
    assert not (tmp_path / "store").exists()


def test_a_teacher_refused_for_its_class_order_leaves_nothing_so_the_class_map_rerun_runs(demo_data, tmp_path):
    """A teacher that always answers class 7, on one folder "3": at identity its top-1 is 0 and
    --min-teacher-acc refuses it, saying --class-map; mapped to 7 it is 100%."""
    from softlabel.models import create_model
    model = create_model("democnn_small", 10).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.nn.functional.one_hot(torch.tensor(7), 10).float() * 5)
    teacher = tmp_path / "sevens.pth"
    torch.save({"model": model.state_dict(), "arch": "democnn_small", "num_classes": 10,
                "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}, teacher)
    data = tmp_path / "data"
    shutil.copytree(demo_data / "ipc5" / "3", data / "3")
    store = tmp_path / "store"
    flags = ("--data", data, "--teacher-path", teacher, "--fkd-path", store, "--epochs", 2, "-b", 5,
             "--min-teacher-acc", 50, *SMALL)
    with pytest.raises(UserError, match=r"top-1 on the first 10 crops it labels is 0.0%, below --min-teacher-acc "
                                        r"50; .* \(see --class-map\)"):
        command("relabel", *flags)
    assert not store.exists()  # refused before the store was created: no "made with other settings"
    (tmp_path / "map.json").write_text(json.dumps({"3": 7}))
    command("relabel", *flags, "--class-map", tmp_path / "map.json")
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["class_mapping"] == "class-map" and manifest["class_to_index"] == {"3": 7}
    assert len(list(store.glob("epoch_*/batch_*.tar"))) == 2
    # the FKD generator alike: refused before its store exists, then the --class-map rerun writes every file
    fkd = ("--teacher-path", teacher, "--save_path", tmp_path / "fkd", "--num_crops", 2, "--num_seg", 2,
           "--input_size", 16, "-j", 0, "--min-teacher-acc", 50)
    with pytest.raises(UserError, match=r"top-1 on the first 10 crops it labels is 0.0%, below --min-teacher-acc "
                                        r"50; .* \(see --class-map\)"):
        command("relabel_fkd", data, *fkd)
    assert not (tmp_path / "fkd").exists()
    command("relabel_fkd", data, *fkd, "--class-map", tmp_path / "map.json")
    assert len(list((tmp_path / "fkd").rglob("*.tar"))) == 5


# ----------------------------------------------------------------------------- C: score_distilled.py

def score_args(demo_data, teacher_ckpt, out: Path, **change) -> list[str]:
    """The toy run of test_score_distilled.py, with flags changed (``syn_lr`` -> --syn-lr)."""
    flags = {"syn": demo_data / "ipc1", "real_train": demo_data / "ipc2", "val": demo_data / "ipc2",
             "teacher": "democnn_small", "teacher_path": teacher_ckpt, "model": "mlpnet", "epochs": 2,
             "batch_size": 10, "input_size": 24, "seeds": "0", "out": out, **change}
    return [f"--{key.replace('_', '-')}={value}" for key, value in flags.items()]  # "=": a value may start with --


class Reached(Exception):
    """The first training would start here: every check before it passed."""


DDRANKING = {"protocol": "ddranking", "epochs": 20}
SCORE_CASES = {  # (the flags as typed, as corrected, what the one line says)
    "no --val folder": ({"val": "missing"}, {}, "--val missing: no such directory"),
    "no --syn folder": ({"syn": "missing"}, {}, "--syn missing: no such directory"),
    "--syn-lr inf": ({**DDRANKING, "syn_lr": "inf"}, {**DDRANKING, "syn_lr": 0.01},
                     r"--syn-lr must be in \[0, 100\] \(the trainer's --adamw-lr\), got inf"),
    "--syn-lr 1000 with SGD": ({**DDRANKING, "syn_lr": 1000, "recipe": "--sgd"},
                               {**DDRANKING, "syn_lr": 0.01, "recipe": "--sgd"},
                               r"--syn-lr must be in \[0, 100\] \(the trainer's -lr\), got 1000"),
    "--min-scale-crops nan": ({"min_scale_crops": "nan"}, {}, r"--min-scale-crops must be in \(0, 1\], got nan"),
    "--w nan": ({"w": "nan"}, {}, r"--w must be in \[0, 1\], got nan"),
    "a --recipe the trainer refuses": ({"recipe": "--adamw-lr inf"}, {},
                                       r"--recipe '--adamw-lr inf': --adamw-lr must be in \[0, 100\], got inf"),
    "--relabel-args relabel refuses": ({"relabel_args": "--temperature 0"}, {},
                                       "--relabel-args '--temperature 0': --temperature must be positive"),
    "an unknown --model": ({"model": "no_such_net"}, {}, "--model: unknown model 'no_such_net'"),
}


@pytest.mark.parametrize("case", sorted(SCORE_CASES))
def test_score_refuses_before_out_is_written_so_the_corrected_rerun_runs(case, demo_data, teacher_ckpt, tmp_path,
                                                                          monkeypatch):
    from softlabel.commands import score as module
    bad, fixed, needle = SCORE_CASES[case]
    monkeypatch.chdir(tmp_path)  # "missing" is a folder name as typed, relative to here
    out = tmp_path / "out"
    with pytest.raises(UserError, match=needle):
        command("score", *score_args(demo_data, teacher_ckpt, out, **bad))
    assert not out.exists()

    def first_work(*_args, **_kwargs):
        raise Reached
    monkeypatch.setattr(module, "run_arms", first_work)
    monkeypatch.setattr(module, "run_ddranking", first_work)
    with pytest.raises(Reached):  # the corrected rerun into the same --out gets past every check
        command("score", *score_args(demo_data, teacher_ckpt, out, **fixed))
    settings = json.loads((out / "settings.json").read_text(),
                          parse_constant=lambda c: pytest.fail(f"settings.json holds {c}, which is not JSON"))
    assert settings["syn_lr"] == fixed.get("syn_lr")


# ----------------------------------------------------------------------------- D: the cutmix box

def cut_batch(store: Path) -> tuple[Path, list]:
    """A batch file of the store whose cutmix box covers some of the crop (its weight below 1)."""
    for file in sorted(store.glob("epoch_0/batch_*.tar")):
        entry = torch.load(file, weights_only=True)
        if entry[3] < 1 - 1e-3:
            return file, entry
    raise AssertionError("no batch of the store mixes: pick another --fkd-seed")


def test_a_cutmix_box_shrunk_away_from_its_weight_is_refused_by_trainer_and_check(stores, tmp_path):
    store = copy_of(stores["batch"], tmp_path)
    command("info", store, "--check")  # as relabel wrote it: every weight is its box's
    file, entry = cut_batch(store)
    lam, (x1, y1, _, _) = entry[3], entry[4]
    entry[3] = float(np.nextafter(lam, 2.0))  # one float64 step: within the rounding of the weight
    torch.save(entry, file)
    command("info", store, "--check")
    entry[3], entry[4] = lam, [x1, y1, x1, y1]  # zero area: nothing mixed, yet the weight says otherwise
    torch.save(entry, file)
    needle = f"store batch file {file}: mix_lam {lam:.6g} disagrees with the cutmix box"
    with pytest.raises(UserError, match=needle):
        command("info", store, "--check")
    with pytest.raises(UserError, match=needle):
        train_in_process("--train-dir", stores["batch_data"], "--fkd-path", store, "--model", "mlpnet", "-j", 0,
                         "--no-progress", "--output-dir", tmp_path / "run")


def test_a_packed_steps_weight_that_disagrees_with_its_box_is_refused(stores, tmp_path):
    store = copy_of(stores["packed"], tmp_path)
    file = store / "epoch_0.pack"
    raw = bytearray(file.read_bytes())
    steps = int(np.frombuffer(bytes(raw[8:12]), "<u4")[0])
    table = np.frombuffer(bytes(raw), packed.STEP, count=steps, offset=packed.HEADER.itemsize).copy()
    cut = int(np.flatnonzero((table["lam"] > 0.01) & (table["lam"] < 0.99))[0])
    table["lam"][cut] -= 1.0 / 16 ** 2  # the weight of a box one pixel larger than the one stored
    raw[packed.HEADER.itemsize:packed.HEADER.itemsize + table.nbytes] = table.tobytes()
    file.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"epoch_0.pack step {int(table['step'][cut])}: mix_lam .* disagrees with "
                                        f"the cutmix box"):
        command("info", store, "--check")


# ----------------------------------------------------------------------------- dropped or unchecked

def test_published_weights_named_beside_the_only_teachers_file_are_refused(stores, teacher_ckpt, demo_data, tmp_path):
    """--teacher-path FILE --teacher-weights NAME: no teacher takes the name; relabel, the FKD generator
    and the trainer say so rather than drop it."""
    from softlabel.teachers import weight_names
    with pytest.raises(UserError, match="--teacher-weights NO_SUCH_WEIGHTS names published weights, but every"):
        weight_names("NO_SUCH_WEIGHTS", ["resnet18"], [str(teacher_ckpt)])
    assert weight_names("IMAGENET1K_V2", ["resnet18", "resnet50"], [str(teacher_ckpt), None]) == [None, "IMAGENET1K_V2"]
    runs = [("relabel", "--data", stores["batch_data"], "--teacher-path", teacher_ckpt, "--fkd-path", tmp_path / "a",
             *SMALL),
            ("relabel_fkd", stores["per_image_data"], "--teacher-path", teacher_ckpt, "--save_path", tmp_path / "b",
             "-j", 0),
            ("train", "--train-dir", demo_data / "ipc1", "--teacher", "democnn_small", "--teacher-path", teacher_ckpt,
             "--output-dir", tmp_path / "c", "-j", 0)]
    for module, *args in runs:
        with pytest.raises(UserError, match="names published weights, but every teacher has a weight file"):
            command(module, *args, "--teacher-weights", "NO_SUCH_WEIGHTS")
        assert not any((tmp_path / d).exists() for d in "abc"), module


def test_fkds_default_four_crops_on_files_of_two_is_refused_as_the_explicit_value_is(stores, tmp_path):
    for flags, said in (((), "--num_crops defaults to 4"), (("--num_crops", 4), "--num-crops 4 is more than the 2")):
        with pytest.raises(UserError, match=said):
            command("train", "--train-dir", stores["per_image_data"], "--softlabel_path", stores["per_image"], *flags,
                    "--output-dir", tmp_path / "run", "-j", 0)
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value", [("--mixup", "0"), ("--cutmix", "-1"), ("--mixup", "inf"), ("--cutmix", "nan"),
                                        ("-T", "inf"), ("-T", "nan"), ("-T", "0")])
def test_the_trainers_mix_and_temperature_are_range_checked_before_anything_is_written(flag, value, demo_data,
                                                                                      teacher_ckpt, tmp_path):
    with pytest.raises(UserError, match=f"{re.escape(flag)}.* must be .*got {value}"):
        command("train", "--train-dir", demo_data / "ipc1", "--teacher", "democnn_small", "--teacher-path",
                teacher_ckpt, "--mix-type", "cutmix", flag, value, "--output-dir", tmp_path / "run", "-j", 0)
    assert not (tmp_path / "run").exists()


def test_an_online_teacher_of_other_classes_is_one_line_before_the_output_folder(demo_data, tmp_path, monkeypatch):
    """torchvision's resnet18 (1000 classes) beside a 10-class folder: refused before --output-dir exists."""
    from test_teachers import fake_torchvision_cache
    fake_torchvision_cache(tmp_path / "torch", ["resnet18"])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match=r"--teacher resnet18 \(torchvision IMAGENET1K_V1\) outputs 1000 classes, the "
                                        r"student 10"):
        command("train", "--train-dir", demo_data / "ipc1", "--teacher", "resnet18", "--output-dir", tmp_path / "run",
                "-j", 0)
    assert not (tmp_path / "run").exists()


def test_train_mode_teacher_on_a_batch_of_one_is_refused_up_front(demo_data, teacher_ckpt, tmp_path):
    """10 images at -b 3: the epoch's last batch holds one image, which batch norm cannot normalize by
    its own statistics; --drop-last (WSLD's loader) leaves it out, and the run trains."""
    flags = ("--train-dir", demo_data / "ipc1", "--model", "democnn_small", "--teacher", "democnn_small",
             "--teacher-path", teacher_ckpt, "--teacher-mode", "train", "-b", 3, "--epochs", 1, "--input-size", 16,
             "-j", 0, "--no-progress")
    with pytest.raises(UserError, match="--teacher-mode train: a rank's batch of 1 image .* pass --drop-last"):
        command("train", *flags, "--output-dir", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    command("train", *flags, "--drop-last", "--output-dir", tmp_path / "run")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 3


def test_a_missing_wandb_is_found_before_anything_is_written(demo_data, teacher_ckpt, tmp_path, monkeypatch):
    """--wandb-mode offline without the package: one line before a distiller's init stage writes its checkpoint,
    so the rerun without --wandb-mode is not "another run"."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    flags = ("--train-dir", demo_data / "ipc1", "--model", "resnet20", "--teacher", "resnet20", "--teacher-path",
             tmp_path / "t.pth", "--distiller", "ab", "--distill-init-epochs", 1, "--epochs", 1, "--input-size", 32,
             "-j", 0, "--no-progress", "--output-dir", tmp_path / "run")
    from softlabel.models import create_model
    torch.save({"model": create_model("resnet20", 10).state_dict(), "arch": "resnet20", "num_classes": 10},
               tmp_path / "t.pth")
    with pytest.raises(UserError, match="--wandb-mode offline"):
        command("train", *flags, "--wandb-mode", "offline")
    assert not (tmp_path / "run").exists()
    command("train", *flags)


def test_a_resumed_hard_label_run_on_other_images_under_the_same_names_is_refused(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data / "ipc1", data)
    flags = ("--train-dir", data, "--model", "mlpnet", "--input-size", 16, "-b", 5, "-j", 0, "--no-progress")
    command("train", *flags, "--epochs", 1, "--output-dir", tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")  # this process holds the first folder's lock
    for image in sorted(data.rglob("*.png")):  # the other ipc2 image of its class, under this name
        other = sorted((demo_data / "ipc2" / image.parent.name).glob("*.png"))[-1]
        shutil.copyfile(other, image)
    with pytest.raises(UserError, match="trained on hard labels of images .*, this run on hard labels of images"):
        command("train", *flags, "--epochs", 2, "--resume", "auto", "--output-dir", tmp_path / "resumed")
