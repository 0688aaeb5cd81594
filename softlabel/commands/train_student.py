"""RepDistiller's ``train_student.py`` (HobbitLong/RepDistiller, the CRD paper's code) on our trainer.

Its flags, defaults and recipe, translated once into the trainer's flags and run by the trainer
(softlabel/commands/train.py): one training loop for every upstream command, with torchrun, exact
resume, wandb and one-line errors. Its command runs as written:

    python validate/train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth \
        --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1

CIFAR-100 is read where RepDistiller reads it (``./data/cifar-100-python``, torchvision's files,
read without running code: softlabel/cifar.py) or from image folders (``--train-dir``/``--val-dir``).
Flags of our trainer not among RepDistiller's (``--resume auto``, ``--wandb-mode``, ``--device``,
``--amp``, ``--no-progress`` ...) pass through to it. What differs from RepDistiller is listed in
docs/upstream.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from softlabel import tracking, zoo
from softlabel.cli import parse_with_config
from softlabel.commands import train
from softlabel.errors import UserError, run_main

# train_student.py's --model_s choices and --distill choices (RepDistiller's names)
STUDENTS = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
            "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
            "ResNet50", "MobileNetV2", "ShuffleV1", "ShuffleV2")
# RepDistiller's --distill name -> our --distiller (kd: the KD loss alone, no distiller)
METHODS = {"kd": None, "hint": "fitnet", "attention": "at", "similarity": "sp", "correlation": "cc", "vid": "vid",
           "crd": "crd", "kdsvd": "kdsvd", "fsp": "fsp", "rkd": "rkd", "pkt": "pkt", "abound": "ab", "factor": "ft",
           "nst": "nst"}
INIT_METHODS = ("abound", "factor", "fsp")  # the methods train_student.py runs helper/pretrain.py's init for
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # its --learning_rate 0.01 for these
# its CRD settings; ours are fixed at these (softlabel/distill/crd.py)
CRD_DEFAULTS = {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "mode": "exact"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("train_student.py (RepDistiller) on softlabel's trainer", allow_abbrev=False,
                                epilog="Other flags of validate/train_FKD_parallel.py (--resume auto, --wandb-mode, "
                                       "--device, --amp, --no-progress, ...) pass through to it.")
    g = p.add_argument_group("RepDistiller's flags (its defaults)")
    g.add_argument("--print_freq", type=int, default=100, help="a line every N steps (the trainer's --print-freq)")
    g.add_argument("--tb_freq", type=int, default=500, help="accepted; no tensorboard (metrics.jsonl, --wandb-mode)")
    g.add_argument("--save_freq", type=int, default=40, help="epochs between checkpoints (checkpoint.pth)")
    g.add_argument("--batch_size", type=int, default=64)
    g.add_argument("--num_workers", type=int, default=8)
    g.add_argument("--epochs", type=int, default=240)
    g.add_argument("--init_epochs", type=int, default=30, help="init stage of abound, factor, fsp")
    g.add_argument("--learning_rate", type=float, default=None, help="0.05 (0.01 for MobileNetV2, ShuffleV1/V2)")
    g.add_argument("--lr_decay_epochs", type=str, default="150,180,210")
    g.add_argument("--lr_decay_rate", type=float, default=0.1)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--dataset", default="cifar100", choices=["cifar100"])
    g.add_argument("--model_s", default="resnet8", choices=STUDENTS)
    g.add_argument("--path_t", default=None, help="the teacher's file; its folder names the architecture")
    g.add_argument("--distill", default="kd", choices=sorted(METHODS))
    g.add_argument("--trial", type=str, default="1")
    g.add_argument("-r", "--gamma", type=float, default=1.0, help="weight of the cross-entropy")
    g.add_argument("-a", "--alpha", type=float, default=None, help="weight of KD (required, as upstream)")
    g.add_argument("-b", "--beta", type=float, default=None, help="weight of --distill's loss (required)")
    g.add_argument("--kd_T", type=float, default=4.0)
    g.add_argument("--feat_dim", type=int, default=128)
    g.add_argument("--mode", default="exact", choices=["exact", "relax"])
    g.add_argument("--nce_k", type=int, default=16384)
    g.add_argument("--nce_t", type=float, default=0.07)
    g.add_argument("--nce_m", type=float, default=0.5)
    g.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4])
    g = p.add_argument_group("ours")
    g.add_argument("--data-folder", default="./data",
                   help="holds torchvision's cifar-100-python/ (RepDistiller's ./data/); the images are written "
                        "once as PNG folders beside it, in cifar-100-folders/")
    g.add_argument("--train-dir", default=None, help="image folders instead of CIFAR-100's files")
    g.add_argument("--val-dir", default=None)
    g.add_argument("--output-dir", default=None,
                   help="default: RepDistiller's ./save/student_model/S:{model_s}_T:{model_t}_{dataset}_{distill}_"
                        "r:{gamma}_a:{alpha}_b:{beta}_{trial}")
    return p


def teacher_arch(path_t: Optional[str]) -> str:
    """RepDistiller's get_teacher_name, as our model name."""
    if not path_t:
        raise UserError("--path_t FILE is required: the teacher (RepDistiller's "
                        "save/models/<model>_vanilla/ckpt_epoch_240.pth)")
    if not os.path.isfile(path_t):
        raise UserError(f"--path_t {path_t}: no such file")
    arch = zoo.arch_from_folder(path_t)
    if arch is None:
        raise UserError(f"--path_t {path_t}: its folder '{os.path.basename(os.path.dirname(os.path.abspath(path_t)))}'"
                        f" names none of RepDistiller's models (train_student.py reads the teacher's architecture "
                        f"from it, e.g. resnet32x4_vanilla)")
    return arch


def model_name(opt: argparse.Namespace, model_t: str) -> str:
    """train_student.py's opt.model_name: the run's folder under ./save/student_model."""
    return "S:{}_T:{}_{}_{}_r:{}_a:{}_b:{}_{}".format(opt.model_s, model_t, opt.dataset, opt.distill, opt.gamma,
                                                      opt.alpha, opt.beta, opt.trial)


def check(opt: argparse.Namespace) -> None:
    """What train_student.py would crash on, or what our trainer does not offer, as one line."""
    for flag, value in (("-a/--alpha", opt.alpha), ("-b/--beta", opt.beta)):
        if value is None:
            raise UserError(f"{flag} is required: train_student.py's loss is -r x CE + -a x KD + -b x --distill's "
                            f"loss, with no default for -a and -b (its scripts/run_cifar_distill.sh gives both)")
    used = {"crd": tuple(CRD_DEFAULTS), "correlation": ("feat_dim",)}.get(opt.distill, ())
    changed = [f"--{k} {getattr(opt, k)}" for k in used if getattr(opt, k) != CRD_DEFAULTS[k]]
    if changed:
        raise UserError(f"{', '.join(changed)}: --distill {opt.distill} here runs RepDistiller's defaults only "
                        f"(--feat_dim 128, --nce_k 16384, --nce_t 0.07, --nce_m 0.5, --mode exact)")
    if opt.distill == "hint" and opt.hint_layer not in (2, 3):
        raise UserError(f"--hint_layer {opt.hint_layer}: FitNet here takes the second or third stage's output "
                        f"(2, the default, or 3: RepDistiller's feat[2], feat[3]); its stem (0), first stage (1) "
                        f"and pooled embedding (4) are not offered")
    if (opt.train_dir is None) != (opt.val_dir is None):
        raise UserError("--train-dir and --val-dir go together (image folders instead of CIFAR-100's files)")


def data_dirs(opt: argparse.Namespace) -> tuple[str, str]:
    if opt.train_dir:
        return opt.train_dir, opt.val_dir
    from softlabel.cifar import cifar100_folders
    return cifar100_folders(opt.data_folder, os.path.join(opt.data_folder, "cifar-100-folders"))


def trainer_args(opt: argparse.Namespace, passed: list[str]) -> list[str]:
    """The trainer's flags for this train_student.py command (``passed``: our own, appended)."""
    model_t, student = teacher_arch(opt.path_t), zoo.from_repdistiller(opt.model_s)
    train_dir, val_dir = data_dirs(opt)
    lr = opt.learning_rate if opt.learning_rate is not None else (
        0.01 if opt.model_s in SMALL_LR_STUDENTS else 0.05)
    distiller, beta = METHODS[opt.distill], opt.beta
    alpha = opt.alpha + (beta if distiller is None else 0.0)  # --distill kd: its -b weights a second KD term
    out = opt.output_dir or os.path.join("./save/student_model", model_name(opt, zoo.repdistiller_name(model_t)))
    argv = ["--recipe", "repdistiller", "--train-dir", train_dir, "--val-dir", val_dir, "--model", student,
            "--teacher", model_t, "--teacher-path", opt.path_t, "-b", opt.batch_size, "-j", opt.num_workers,
            "--epochs", opt.epochs, "--lr", lr, "--lr-milestones", opt.lr_decay_epochs,
            "--lr-gamma", opt.lr_decay_rate, "--weight-decay", opt.weight_decay, "--momentum", opt.momentum,
            "--loss-type", "kd", "--ce-weight", opt.gamma, "--alpha", alpha, "-T", opt.kd_T,
            "--crop-pct", 1.0, "--eval-interval", 1, "--save-interval", opt.save_freq, "--save-best",
            "--print-freq", opt.print_freq,
            "--output-dir", out]
    if distiller:
        argv += ["--distiller", distiller, "--distill-weight", beta]
        if opt.distill in INIT_METHODS:
            argv += ["--distill-init-epochs", opt.init_epochs]
        if opt.distill == "hint" and opt.hint_layer == 3:  # FitNet guides the second of the stages it is given
            argv += ["--feat-layers", stages(student, 2, 3), "--teacher-feat-layers", stages(model_t, 2, 3)]
    return [str(a) for a in argv] + passed


def stages(arch: str, *feats: int) -> str:
    """--feat-layers naming the modules whose outputs are RepDistiller's feat[k] of ``arch``, k in ``feats``."""
    names = zoo.MODELS[arch](10).feature_stages
    if max(feats) > len(names):
        raise UserError(f"--hint_layer {max(feats)}: {arch} has {len(names)} stages")
    return ",".join(names[k - 1] for k in feats)


def main(argv: Optional[list[str]] = None, origin: Optional[tracking.StartUp] = None) -> None:
    opt, passed = get_args_parser().parse_known_args(argv)
    check(opt)
    args = trainer_args(opt, passed)
    print("train_student.py: " + " ".join(["validate/train_FKD_parallel.py"] + args), flush=True)
    train.main(parse_with_config(train.get_args_parser(), args), origin or tracking.StartUp.of_main())


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(sys.argv[1:], tracking.StartUp.of_process()))
