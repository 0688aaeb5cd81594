"""The upstream commands, reproduced: PRISM's relabel presets and shell scripts carry exactly
PRISM's command (the READMEs of relabel/ and validate/ of Brian-Moser/prism; r50/r101 from PRISM's
own scripts), its schedules and its single-teacher ensemble rule."""
from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from rounding import FLOAT64, within

from softlabel.commands.relabel import get_args_parser as relabel_parser
from softlabel.commands.relabel import parse_command, teacher_specs
from softlabel.ensemble import combine
from softlabel.precision import amp_dtype
from softlabel.relabel_presets import PRESETS as PRESETS_BY_NAME
from softlabel.training.config import lr_schedule_of
from softlabel.training.schedules import SCHEDULES
from softlabel.commands.train import get_args_parser as train_parser

# The commands as PRISM's READMEs print them (relabel/README.md and validate/README.md of
# Brian-Moser/prism), their line continuations joined.
UPSTREAM_RELABEL_R18 = """python generate_soft_label_r18.py -b 50 -j 8 --epochs 300 --fkd-seed 42 --input-size 224
    --min-scale-crops 0.25 --max-scale-crops 1 --use-fp16 --candidate-number 4 --fkd-path FKD_prism_r18
    --mode 'fkd_save' --mix-type 'cutmix' --data /path/to/recover/syn_data/full_r18_10"""
UPSTREAM_TRAIN_R18 = """python train_FKD_parallel.py --wandb-project 'val_rn18_imnet_10' --batch-size 50
    --gradient-accumulation-steps 2 --model resnet18 --cos --loss-type "mse_gt" --ce-weight 0.1 -j 4 -T 20
    --mix-type 'cutmix' --output-dir ./save/val_rn18_imnet_10/ --train-dir /path/to/recover/syn_data/full_r18/
    --val-dir /path/to/imagenet/val/ --fkd-path /path/to/relabel/FKD_prism_r18/"""
# PRISM's relabel_r50.sh / relabel_r101.sh and train_FKD_10_r50.sh / _r101.sh (Brian-Moser/prism),
# without the cluster's srun wrapper and with our paths.
UPSTREAM_RELABEL = {"50": UPSTREAM_RELABEL_R18.replace("r18", "r50"),
                    "101": UPSTREAM_RELABEL_R18.replace("r18", "r101").replace("-b 50", "-b 100")}
UPSTREAM_TRAIN = {"50": UPSTREAM_TRAIN_R18.replace("rn18", "rn50").replace("resnet18", "resnet50").replace("r18", "r50"),
                  "101": UPSTREAM_TRAIN_R18.replace("rn18", "rn101").replace("resnet18", "resnet101").replace("r18", "r101")}
PRESETS = {arch: PRESETS_BY_NAME[f"r{arch}"] for arch in ("18", "50", "101")}
PATHS = ("data", "fkd_path", "train_dir", "val_dir", "output_dir", "resume")


def upstream_command(command: str, script: str) -> list[str]:
    """The tokens after ``python SCRIPT`` in an upstream command."""
    return shlex.split(command.split(script, 1)[1])


def script_command(path: Path, script: str) -> list[str]:
    """The tokens our shell script passes to ``script``, its variables left as their names."""
    text = path.read_text()
    body = text[text.index(script) + len(script):text.index('"$@"')]
    return shlex.split(body.replace("\\\n", " "))


@pytest.mark.parametrize("arch", ["18", "50", "101"])
def test_relabel_presets_default_to_the_upstream_command_and_the_scripts_say_it(arch):
    parser = relabel_parser(PRESETS[arch])
    defaults = vars(parser.parse_args([]))
    upstream = (upstream_command(UPSTREAM_RELABEL_R18, "generate_soft_label_r18.py") if arch == "18"
                else upstream_command(UPSTREAM_RELABEL[arch], f"generate_soft_label_r{arch}.py"))
    ours = script_command(ROOT / "relabel" / f"relabel_r{arch}.sh", f"generate_soft_label_r{arch}.py")
    family = teacher_specs(parser.parse_args([]), PRESETS[arch])
    assert family[0] == PRESETS[arch].teachers  # upstream's --candidate-number 4: the whole family
    for tokens in (upstream, ours):
        given = parser.parse_args(tokens)
        assert {k: v for k, v in vars(given).items() if k not in PATHS + ("candidate_number",)} == \
            {k: v for k, v in defaults.items() if k not in PATHS + ("candidate_number",)}
        assert given.candidate_number == 4 and teacher_specs(given, PRESETS[arch]) == family
    # the generic script with --preset is the same command
    assert vars(parse_command([f"--preset=r{arch}", *upstream])[0]) == vars(parser.parse_args(upstream))
    assert defaults["batch_size"] == (100 if arch == "101" else 50)
    assert defaults["min_scale_crops"] == 0.25 and defaults["workers"] == 8
    # float32 teachers, as upstream's (its --use-fp16 rounds the stored labels only), on a GPU too
    assert defaults["amp"] == "off" and amp_dtype(defaults["amp"], torch.device("cuda")) is None
    assert defaults["teacher_weights"] is None  # IMAGENET1K_V1 each, as upstream's pretrained=True: test_teachers.py


@pytest.mark.parametrize("arch", ["18", "50", "101"])
def test_training_scripts_are_the_upstream_command(arch):
    parser = train_parser()
    upstream = upstream_command(UPSTREAM_TRAIN_R18 if arch == "18" else UPSTREAM_TRAIN[arch], "train_FKD_parallel.py")
    ours = script_command(ROOT / "validate" / f"train_FKD_10_r{arch}.sh", "validate/train_FKD_parallel.py")
    theirs, mine = vars(parser.parse_args(upstream)), vars(parser.parse_args(ours))
    differ = {k for k in theirs if k not in PATHS and theirs[k] != mine[k]}
    # r101: upstream trains with --batch-size 50 on a store relabelled with -b 100, which its own
    # loader refuses; ours passes the store's batch (documented in the script and the README).
    assert differ == ({"batch_size"} if arch == "101" else set())
    assert mine["resume"] == "auto" and mine["cos"] and mine["loss_type"] == "mse_gt"


def test_prism_cos_is_upstreams_schedule_and_cos_selects_it():
    epochs = 300
    for e in (0, 1, 100, 250, 251, 299, 300):  # PRISM's LambdaLR, written out
        want = (0.5 * (1. + math.cos(math.pi * e / (2.5 * epochs))) if e <= epochs * 5 / 6 else
                0.5 * (1. + math.cos(math.pi * 5 / (6 * 2.5))) * (6 * epochs - 6 * e) / (6 * epochs))
        assert within(SCHEDULES["prism-cos"](e, epochs), want, 12, 1.0, FLOAT64)  # a cos and a few products
    assert within(SCHEDULES["cosine"](150, 300), 0.5, 8, 1.0, FLOAT64) and SCHEDULES["linear"](150, 300) == 0.5
    parse = train_parser().parse_args
    assert lr_schedule_of(parse(["--train-dir", "d", "--cos"])) == "prism-cos"
    assert lr_schedule_of(parse(["--train-dir", "d"])) == "linear"
    assert lr_schedule_of(parse(["--train-dir", "d", "--lr-schedule", "cosine"])) == "cosine"


def test_primary_weighted_rescales_a_single_teacher_as_prism_does():
    torch.manual_seed(0)
    logits = torch.randn(6, 10) * torch.arange(1, 7).view(6, 1)
    out = combine([logits], "primary-weighted")
    norms = logits.norm(dim=1, keepdim=True)
    # PRISM's two lines: norms of 10 classes, their mean over 6 rows, a product and a division
    assert within(out, logits / norms * norms.mean(0, keepdim=True), 10 + 6 + 6, out.abs())
    assert (out - logits).abs().max() > 0.5
    assert torch.equal(combine([logits], "mean"), logits) and torch.equal(combine([logits], "normmean"), logits)


def test_wsld_script_trains_with_wslds_optimizer_schedule_and_loss(demo_data, tmp_path):
    """validate/train_wsld_r34_r18.sh end to end at toy size (torchvision resnet34 teacher from a
    fake hub cache, 1000 outputs): the optimizer and schedule in the checkpoint are WSLD's."""
    import json
    import os
    import subprocess

    from conftest import script_env
    from test_teachers import fake_torchvision_cache
    fake_torchvision_cache(tmp_path / "torch", ["resnet34"])
    env = script_env(TORCH_HOME=str(tmp_path / "torch"), TRAIN_DIR=str(demo_data / "ipc1"),
                     VAL_DIR=str(demo_data / "ipc1"), OUTPUT_DIR=str(tmp_path / "run"),
                     PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "validate" / "train_wsld_r34_r18.sh"), "--epochs", "2", "-b", "10",
                           "--input-size", "32", "-j", "0", "--num-classes", "1000", "--lr-step-size", "1",
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in groups)
    # 0.1 x 0.1 x 0.1 after 2 steps of 1 epoch: three float64 products
    assert within([g["lr"] for g in groups], [0.001] * len(groups), 3, 0.001, FLOAT64)
    args = ckpt["args"]
    assert (args["loss_type"], args["temperature"], args["alpha"], args["teacher"]) == ("wsld", 2.0, 2.5, "resnet34")
    assert args["teacher_mode"] == "train" and ckpt["teacher_buffers"]  # WSLD's t_net.train()
    assert args["drop_last"]  # WSLD's train loader drops the last partial batch
    assert json.loads((tmp_path / "run" / "results.json").read_text())["labels"] == \
        "online KD from resnet34 (wsld)"
