"""FKD's README training command (szq0214/FKD, FKD/README.md) run by our trainer in place of its
FKD/train_FKD.py: every flag train_FKD.py defines is accepted (doing what it does, or with one line
naming what replaces it, or refused with one line), and FKD's files (--softlabel_path) bring
train_FKD.py's recipe: SGD 0.1 / 0.9 / 1e-4 on every parameter, its cosine, its epoch loop."""
from __future__ import annotations

import json
import math
import re
import shlex
import shutil

import pytest
import torch
from conftest import ROOT, train_in_process
from rounding import FLOAT64, within
from test_fkd_upstream_files import CLASSES, SIZE, write_fkd_files
from test_upstream_commands import script_command

from softlabel.cli import note_replaced_flags
from softlabel.data import scan_image_folder
from softlabel.distributed import DistInfo
from softlabel.errors import UserError
from softlabel.training.config import check_flags, data_folder, resolve
from softlabel.training.schedules import fkd_passes
from softlabel.commands.train import TRAINER_REPLACED, get_args_parser, main
from softlabel.training.epochs import mix_per_image
from softlabel.training.optim import build_optimizer

# FKD/README.md of szq0214/FKD, "FKD Training on CNNs" and "Evaluation", as written there.
FKD_TRAIN = ("python train_FKD.py -a resnet50 --lr 0.1 --num_crops 4 -b 1024 --cos --temp 1.0 "
             "--softlabel_path [soft label path] [imagenet-folder with train and val folders]")
FKD_TRAIN_DIST = """python train_FKD.py \\
--dist-url 'tcp://127.0.0.1:10001' \\
--dist-backend 'nccl' \\
--multiprocessing-distributed --world-size 1 --rank 0 \\
-a resnet50 --lr 0.1 --num_crops 4 -b 1024 \\
--temp 1.0 --cos -j 32 \\
--save_checkpoint_path ./FKD_nc_4_res50_plain \\
--softlabel_path [soft label path, e.g., ./FKD_soft_label_500_crops_marginal_smoothing_k_5/imagenet] \\
[imagenet-folder with train and val folders]"""
FKD_EVAL = "python train_FKD.py -a resnet50 -e --resume [model path] [imagenet-folder with train and val folders]"
# Every option string of train_FKD.py's argparse (FKD/train_FKD.py), with a value where it takes one.
FKD_FLAGS = {"-a": "resnet50", "--arch": "resnet50", "-j": "2", "--workers": "2", "--epochs": "8",
             "--start-epoch": "0", "-b": "16", "--batch-size": "16", "--lr": "0.1", "--learning-rate": "0.1",
             "--schedule": "2 4", "--momentum": "0.9", "--wd": "1e-4", "--weight-decay": "1e-4", "-p": "10",
             "--print-freq": "10", "--resume": "auto", "-e": None, "--evaluate": None, "--pretrained": None,
             "--world-size": "1", "--rank": "0", "--dist-url": "tcp://127.0.0.1:10001", "--dist-backend": "nccl",
             "--seed": "1", "--gpu": "0", "--multiprocessing-distributed": None, "--num_crops": "4",
             "--softlabel_path": "SL", "--temp": "1.0", "--cos": None, "--save_checkpoint_path": "OUT",
             "--soft_label_type": "marginal_smoothing_k5", "--num_classes": "10", "--mixup_cutmix": None,
             "--mixup": "0.8", "--cutmix": "1.0", "--mixup_cutmix_prob": "1.0", "--mixup_switch_prob": "0.5"}


def readme_tokens(command: str, *paths: str) -> list[str]:
    """The tokens after ``python train_FKD.py``, the README's [placeholders] replaced by ``paths`` in turn."""
    values = iter(paths)
    command = re.sub(r"\[[^]]*\]", lambda _: next(values), command)
    return shlex.split(command.replace("\\\n", " "))[2:]


@pytest.fixture(scope="module")
def fkd_data(demo_data, tmp_path_factory):
    """DATA with train/ (10 images) and val/ (20), and FKD's marginal_smoothing_k5 files of train/."""
    root = tmp_path_factory.mktemp("fkd_cmd")
    shutil.copytree(demo_data / "ipc1", root / "data" / "train")
    for folder in sorted((demo_data / "val").iterdir()):
        (root / "data" / "val" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            shutil.copy(image, root / "data" / "val" / folder.name / image.name)
    write_fkd_files(root / "data" / "train", root / "labels", "marginal_smoothing_k5", fp16=True)
    return root / "data", root / "labels"


def resolved(*tokens):
    args = get_args_parser().parse_args([str(t) for t in tokens])
    data_folder(args)
    check_flags(args)
    index = scan_image_folder(args.train_dir, "--train-dir")
    return resolve(args, index, DistInfo(0, 1, 0, torch.device("cpu")), 0)[0]


def test_fkd_readme_commands_parse_and_the_script_is_the_first():
    parser = get_args_parser()
    readme = vars(parser.parse_args(readme_tokens(FKD_TRAIN, "SL", "D")))
    assert (readme["model"], readme["learning_rate"], readme["num_crops"], readme["batch_size"], readme["cos"],
            readme["temperature"], readme["softlabel_path"], readme["data"]) == ("resnet50", 0.1, 4, 1024, True,
                                                                                 1.0, "SL", "D")
    ours = vars(parser.parse_args(script_command(ROOT / "validate" / "train_FKD_r50.sh",
                                                 "validate/train_FKD_parallel.py")))
    paths = ("data", "softlabel_path", "output_dir", "resume")
    assert {k for k in readme if k not in paths and readme[k] != ours[k]} == set()
    assert ours["resume"] == "auto" and ours["output_dir"] == "$OUTPUT_DIR" and ours["data"] == "$DATA"
    for ours_lr in (["-lr", "0.2"], ["--learning-rate", "0.2"], ["--lr", "0.2"]):  # PRISM's spellings stay
        assert parser.parse_args(ours_lr).learning_rate == 0.2
    dist = parser.parse_args(readme_tokens(FKD_TRAIN_DIST, "SL", "D"))
    assert dist.output_dir == "./FKD_nc_4_res50_plain" and dist.workers == 32 and dist.multiprocessing_distributed
    evaluate = parser.parse_args(readme_tokens(FKD_EVAL, "M", "D"))
    assert evaluate.evaluate and evaluate.resume == "M" and evaluate.model == "resnet50" and evaluate.data == "D"


def test_fkd_files_resolve_to_train_fkd_recipe(fkd_data):
    data, labels = fkd_data
    base = ("-a", "democnn_small", "--lr", 0.1, "--num_crops", 4, "-b", 1024, "--temp", 1.0, "--softlabel_path",
            labels, data, "--num_classes", CLASSES, "--input-size", SIZE)
    cfg = resolved(*base, "--cos")
    # train_FKD.py: SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4), 300 epochs, -b in crops
    assert (cfg.recipe, cfg.sgd, cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.weight_decay_norms) == \
        ("fkd", True, 0.1, 0.9, 1e-4, True)
    assert (cfg.epochs, cfg.batch_size, cfg.num_crops, cfg.lr_schedule, cfg.loss_type, cfg.temperature) == \
        (300, 256, 4, "cosine", "soft_ce", 1.0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer, scheduler = build_optimizer(model, cfg)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert len(optimizer.param_groups[0]["params"]) == 4 and optimizer.param_groups[0]["momentum"] == 0.9
    # the loop: passes at epochs 0, 4, ..., 292 with 4 crops, then 296, 297, 298, 299 with one
    assert cfg.passes == [(e, 4) for e in range(0, 296, 4)] + [(e, 1) for e in range(296, 300)]
    rates = [0.1 * scheduler.lr_lambdas[0](p) for p in range(len(cfg.passes))]
    for p, epoch in ((0, 0), (1, 4), (37, 148), (73, 292), (74, 296), (77, 299)):  # 0.1 * 0.5 (1 + cos(pi e / 300))
        assert within(rates[p], 0.1 * 0.5 * (1 + math.cos(math.pi * epoch / 300)), 8, 0.1, FLOAT64)
    step = resolved(*base)  # no --cos: x0.1 at --schedule 120 240
    assert (step.lr_schedule, step.lr_milestones) == ("multistep", (120, 240))
    _, scheduler = build_optimizer(model, step)
    factors = [scheduler.lr_lambdas[0](p) for p in (0, 29, 30, 59, 60)]  # epochs 0, 116, 120, 236, 240
    assert within(factors, [1.0, 1.0, 0.1, 0.1, 0.01], 4, 1.0, FLOAT64)
    # the former defaults stay reachable
    ours = resolved(*base, "--recipe", "ours", "--epochs", 75)
    assert (ours.sgd, ours.learning_rate, ours.momentum, ours.weight_decay, ours.weight_decay_norms, ours.batch_size,
            len(ours.passes)) == (False, 0.1, 0.875, 3e-5, False, 1024, 75)
    mixed = resolved(*base, "--optimizer", "adamw", "--lr-schedule", "linear", "--no-weight-decay-norms")
    assert (mixed.sgd, mixed.lr_schedule, mixed.weight_decay_norms) == (False, "linear", False)
    assert resolved(*base, "--cos", "--epochs", 10).passes == [(0, 4), (4, 4), (8, 1), (9, 1)]
    assert fkd_passes(3, 4) == [(0, 1), (1, 1), (2, 1)] and fkd_passes(6, 2) == [(0, 2), (2, 2), (4, 1), (5, 1)]


def test_fkd_readme_command_trains_and_evaluates(fkd_data, tmp_path, capsys):
    data, labels = fkd_data
    out = tmp_path / "run"
    command = readme_tokens(FKD_TRAIN, str(labels), str(data))
    command = [t for t in command if t not in ("resnet50", "1024")]  # toy sizes below
    command[command.index("-a") + 1:command.index("-a") + 1] = ["democnn_small"]
    command[command.index("-b") + 1:command.index("-b") + 1] = ["8"]
    train_in_process(*command, "--num_crops", 2, "--epochs", 5, "--num_classes", CLASSES, "--input-size", SIZE,
                     "--save_checkpoint_path", out, "--eval-interval", 1, "-j", 0, "--no-progress")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # passes (0, 2 crops), (2, 2 crops), (4, 1 crop): 4 images x 2 crops per step, then 8 images x 1
    assert [r["epoch"] for r in rows] == [2, 4, 5] and [r["step"] for r in rows] == [3, 6, 8]
    want = [0.1 * 0.5 * (1 + math.cos(math.pi * e / 5)) for e in (2, 4, 5)]
    assert within([r["lr"] for r in rows], want, 8, 0.1, FLOAT64)
    assert all("top1" in r for r in rows)
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["args"]["recipe"] == "fkd" and ckpt["args"]["sgd"]
    assert "train_FKD.py's epochs: 2 passes of 2, 1 single-crop" in capsys.readouterr().out
    train_in_process("-a", "democnn_small", "-e", "--resume", out / "checkpoint.pth", data, "-j", 0,
                     "--input-size", SIZE)
    assert f" * Acc@1 {rows[-1]['top1']:.3f}" in capsys.readouterr().out
    # killed after its first pass, resumed: the same weights, and a run of another recipe is refused
    from softlabel.training import loop as trainer
    cut, passes = tmp_path / "cut", []
    real = trainer.train_one_epoch

    def stop_at_second_pass(*a):
        passes.append(a[1])
        if len(passes) == 2:
            raise KeyboardInterrupt
        return real(*a)
    flags = (*command, "--num_crops", 2, "--epochs", 5, "--num_classes", CLASSES, "--input-size", SIZE,
             "--save_checkpoint_path", cut, "-j", 0, "--no-progress")
    trainer.train_one_epoch = stop_at_second_pass
    try:
        with pytest.raises(KeyboardInterrupt):
            train_in_process(*flags)
    finally:
        trainer.train_one_epoch = real
    # the interrupted command released its folder's lock as it unwound (as the OS does when a killed run ends)
    with pytest.raises(UserError, match="--recipe fkd"):
        train_in_process(*flags, "--resume", "auto", "--recipe", "ours", "-b", 4)  # the same 4 images per step
    train_in_process(*flags, "--resume", "auto")
    resumed = torch.load(cut / "checkpoint.pth", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], ckpt["model"][k]) for k in resumed)
    mixed = tmp_path / "mixed"
    train_in_process(*command, "--num_crops", 2, "--epochs", 2, "--num_classes", CLASSES, "--input-size", SIZE,
                     "--save_checkpoint_path", mixed, "-j", 0, "--no-progress", "--mixup_cutmix")
    assert torch.load(mixed / "checkpoint.pth", weights_only=True)["args"]["mixup_cutmix"]


def test_mixup_cutmix_mixes_crops_and_label_probabilities(fkd_data):
    data, labels = fkd_data
    cfg = resolved("--softlabel_path", labels, data, "--num_classes", CLASSES, "--input-size", SIZE, "--mixup_cutmix")
    probs = torch.softmax(torch.randn(6, CLASSES), dim=1)
    item = {"epoch": 0, "batch": 0, "target": torch.zeros(6, dtype=torch.long), "soft_label": probs.log(),
            "pixels": torch.arange(6).view(6, 1, 1, 1).expand(6, 3, SIZE, SIZE).to(torch.uint8), "partners": None,
            "mix_lam": None, "mix_bbox": None}
    kinds = set()
    for step in range(12):
        mixed = mix_per_image(cfg, {**item, "batch": step}, 0)
        lam, partners = mixed["mix_lam"], mixed["partners"][:, 0, 0, 0].long()
        kinds.add(mixed["mix_bbox"] is None)
        expected = lam * probs + (1 - lam) * probs[partners]
        # mixed as probabilities, kept as their log: within a few roundings of p (1 + |log p|)
        assert within(mixed["soft_label"].exp(), expected, 8, expected + torch.xlogy(expected, expected).abs())
    assert kinds == {True, False}  # mixup and cutmix, each about half of the steps (--mixup_switch_prob 0.5)
    never = resolved("--softlabel_path", labels, data, "--num_classes", CLASSES, "--input-size", SIZE,
                     "--mixup_cutmix", "--mixup_cutmix_prob", 0)
    assert mix_per_image(never, item, 0) is item


def test_every_train_fkd_flag_is_accepted_or_refused_with_one_line(fkd_data, capsys):
    parser = get_args_parser()
    for flag, value in FKD_FLAGS.items():
        # DATA first: an option of nargs="*" (--schedule) takes the words after it, in train_FKD.py too
        assert parser.parse_args(["DATA", flag] + (value.split() if value else [])).data == "DATA", flag
    args = parser.parse_args(["--dist-url", "x", "--dist-backend", "nccl", "--multiprocessing-distributed",
                              "--world-size", "1", "--rank", "0", "-p", "10", "--gpu", "0"])
    note_replaced_flags(args, TRAINER_REPLACED)
    notes = capsys.readouterr().err.splitlines()  # -p/--print-freq is ours too: it prints every N steps
    assert len(notes) == 6 and all(line.startswith("note: --") for line in notes), notes
    assert args.print_freq == 10
    assert args.device == "cuda:0"
    data, labels = fkd_data
    refusals = {("--pretrained",): "--pretrained",
                ("-e",): "-e/--evaluate evaluates --resume FILE",
                (): "--softlabel_path DIR"}  # DATA alone: FKD's default ./soft_label is not assumed
    for extra, needle in refusals.items():
        with pytest.raises(UserError, match=needle.replace("(", r"\(")):
            main(parser.parse_args([str(data), *extra]))
    with pytest.raises(UserError, match="--train-dir"):
        main(parser.parse_args([str(data), "--train-dir", str(data / "train")]))
    with pytest.raises(UserError, match="--mixup_cutmix"):
        main(parser.parse_args(["--train-dir", str(data / "train"), "--mixup_cutmix"]))
    cfg = resolved("--softlabel_path", labels, data, "--num_classes", CLASSES, "--input-size", SIZE,
                   "--start-epoch", 4, "--schedule", 2, 4, "--epochs", 8, "--seed", 3, "--wd", 0.5, "-b", 6)
    assert (cfg.lr_milestones, cfg.first_pass(), cfg.seed, cfg.weight_decay, cfg.batch_size) == ((2, 4), 1, 3, 0.5, 2)
    assert cfg.mixup_switch_prob == 0.5 and cfg.lr_schedule == "multistep"
