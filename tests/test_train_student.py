"""RepDistiller's train_student.py command on our trainer: its flags and recipe translated once,
its teacher files and save folders, its reported number (the last epoch's), one-line errors."""
from __future__ import annotations

import json
import os
import shlex

import pytest
import torch

from softlabel.commands import train_student
from softlabel.errors import UserError
from softlabel.models import create_model

# scripts/run_cifar_distill.sh of HobbitLong/RepDistiller, as upstream writes its lines
UPSTREAM = """\
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill kd --model_s resnet8x4 -r 0.1 -a 0.9 -b 0 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill hint --model_s resnet8x4 -a 0 -b 100 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill attention --model_s resnet8x4 -a 0 -b 1000 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill similarity --model_s resnet8x4 -a 0 -b 3000 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill correlation --model_s resnet8x4 -a 0 -b 0.02 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill vid --model_s resnet8x4 -a 0 -b 1 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill rkd --model_s resnet8x4 -a 0 -b 1 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill pkt --model_s resnet8x4 -a 0 -b 30000 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill abound --model_s resnet8x4 -a 0 -b 1 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill factor --model_s resnet8x4 -a 0 -b 200 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill fsp --model_s resnet8x4 -a 0 -b 50 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill nst --model_s resnet8x4 -a 0 -b 50 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd --model_s resnet8x4 -a 1 -b 0.8 --trial 1
"""
OURS = {"kd": None, "hint": "fitnet", "attention": "at", "similarity": "sp", "correlation": "cc", "vid": "vid",
        "rkd": "rkd", "pkt": "pkt", "abound": "ab", "factor": "ft", "fsp": "fsp", "nst": "nst", "crd": "crd"}


def repdistiller_file(root, arch: str, num_classes: int = 10, seed: int = 0):
    """A teacher as RepDistiller's train_teacher.py saves it: save/models/<arch>_vanilla/ckpt_epoch_240.pth
    holding epoch, model (the state dict), accuracy and the SGD optimizer's state."""
    torch.manual_seed(seed)
    model = create_model(train_student.zoo.from_repdistiller(arch), num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # a momentum buffer per parameter, as a trained teacher's file holds
    folder = root / "save" / "models" / f"{arch}_vanilla"
    folder.mkdir(parents=True)
    path = folder / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(79.42),
                "optimizer": optimizer.state_dict()}, path)
    return path


def flags(argv: list[str]):
    """The trainer's flags as its own parser reads them."""
    from softlabel.commands.train import get_args_parser
    return get_args_parser().parse_args(argv)


def test_every_line_of_run_cifar_distill_translates_to_the_trainer(tmp_path, monkeypatch):
    """Each of upstream's commands as written: its method, weights (-r CE, -a KD, -b the method's) and recipe."""
    monkeypatch.chdir(tmp_path)
    repdistiller_file(tmp_path, "resnet32x4", num_classes=100)
    monkeypatch.setattr(train_student, "data_dirs", lambda opt: ("TRAIN", "VAL"))
    for line in UPSTREAM.splitlines():
        argv = shlex.split(line)[2:]
        opt, passed = train_student.get_args_parser().parse_known_args(argv)
        train_student.check(opt)
        got = flags(train_student.trainer_args(opt, passed))
        method = OURS[opt.distill]
        assert got.distiller == method, line
        assert (got.model, got.teacher, got.recipe) == ("resnet8x4", "resnet32x4", "repdistiller")
        assert (got.learning_rate, got.batch_size, got.epochs, got.lr_milestones, got.lr_gamma) == \
            (0.05, 64, 240, "150,180,210", 0.1)
        assert (got.weight_decay, got.momentum, got.temperature, got.loss_type) == (5e-4, 0.9, 4.0, "kd")
        assert got.ce_weight == opt.gamma and got.alpha == opt.alpha + (opt.beta if method is None else 0.0)
        assert got.distill_weight == (opt.beta if method else None)
        assert (got.distill_init_epochs is not None) == (opt.distill in ("abound", "factor", "fsp"))
        assert got.output_dir == (f"./save/student_model/S:resnet8x4_T:resnet32x4_cifar100_{opt.distill}_"
                                  f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}_1")
    # its 0.01 for the mobile students; our option-B name for its resnet8 .. resnet110
    opt, _ = train_student.get_args_parser().parse_known_args(shlex.split(UPSTREAM.splitlines()[0])[2:] +
                                                               ["--model_s", "MobileNetV2"])
    assert flags(train_student.trainer_args(opt, [])).learning_rate == 0.01
    opt, _ = train_student.get_args_parser().parse_known_args(shlex.split(UPSTREAM.splitlines()[0])[2:] +
                                                               ["--model_s", "resnet20"])
    assert flags(train_student.trainer_args(opt, [])).model == "resnet20_b"


@pytest.mark.parametrize("extra,needle", [
    (["-b", "0.8"], "-a/--alpha is required"),
    (["-a", "0", "-b", "0.8", "--nce_k", "4096"], "--nce_k 4096"),
    (["-a", "0", "-b", "100", "--hint_layer", "4"], "--hint_layer 4"),
])
def test_what_upstream_would_crash_on_or_we_do_not_offer_is_one_line(tmp_path, extra, needle):
    path = repdistiller_file(tmp_path, "resnet8")
    method = "hint" if "--hint_layer" in extra else "crd"
    with pytest.raises(UserError, match=needle.replace("/", ".")):
        train_student.main(["--path_t", str(path), "--distill", method, *extra])


def test_the_teachers_folder_must_name_its_model(tmp_path):
    other = tmp_path / "save" / "models" / "mine"
    other.mkdir(parents=True)
    torch.save({"model": create_model("resnet8_b", 10).state_dict()}, other / "ckpt_epoch_240.pth")
    with pytest.raises(UserError, match="'mine' names none of RepDistiller's models"):
        train_student.main(["--path_t", str(other / "ckpt_epoch_240.pth"), "-a", "0", "-b", "0"])


def test_kd_and_crd_train_as_upstream_names_and_reports_them(tmp_path, demo_data, monkeypatch):
    """The command as upstream writes it, on image folders: RepDistiller's save folder, the last
    epoch's top-1 reported as its train_student.py reports it, the best kept as its _best.pth."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = repdistiller_file(tmp_path, "resnet8")
    base = ["--path_t", os.path.relpath(path), "--model_s", "resnet8", "--trial", "1", "--epochs", "2",
            "--num_workers", "0", "--train-dir", str(demo_data / "ipc1"), "--val-dir", str(demo_data / "val"),
            "--no-progress"]
    for method, weights in (("kd", ["-r", "0.1", "-a", "0.9", "-b", "0"]), ("crd", ["-a", "0", "-b", "0.8"])):
        train_student.main(base + ["--distill", method, *weights])
        r, a, b = (weights[weights.index(f) + 1] if f in weights else "1" for f in ("-r", "-a", "-b"))
        out = tmp_path / "save" / "student_model" / (f"S:resnet8_T:resnet8_cifar100_{method}_r:{float(r)}_"
                                                     f"a:{float(a)}_b:{float(b)}_1")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2]  # evaluated every epoch, as upstream
        result = json.loads((out / "results.json").read_text())
        assert result["reported"] == {"top1": rows[-1]["top1"], "epoch": 2, "which": "last",
                                      "as": "RepDistiller's train_student.py"}
        args = torch.load(out / "checkpoint.pth", weights_only=True)["args"]
        assert args["train_crop"] == "padded" and args["recipe"] == "repdistiller" and args["batch_size"] == 64
        assert (out / "model_best.pth").is_file()
