"""The label-optimization study's ``main.py`` (qwer343/id_8285), with its own flags, run by our tools.

    python validate/label_optimization.py --is_smart_model --smart_model resnet44 \\
        --smart_model_path ./checkpoints/ --student_model resnet20 --dataset cifar100 --data-root ~/data \\
        --n_class 100 --batch_size 128 --lr 0.1 --wd 5e-4 --epochs 200 --method SL --result ./results

Nothing here trains: the command becomes (1) ``scripts/export_imagefolder.py`` once, from
torchvision's on-disk CIFAR-10/100 or STL-10 under --data-root (``--dataset folder``: --data-root
already holds train/ and val/ class folders); (2) ``relabel/generate_soft_label.py``, the smart
model(s) labelling every crop of every epoch into a store; (3) ``validate/train_FKD_parallel.py``
from that store with the study's loss, optimizer and schedule. Every step resumes when rerun.

Methods (the rows of its README's table; the source's spellings are accepted too), from the study's source
(qwer343/id_8285: function.py ``loss_fn``/``model_fit``, main.py, opts.py):

- ``Vanilla`` (``scratch`` without a smart model): cross-entropy on the ground truth.
- ``LS`` (``label_smoothing``): smoothing 0.1 spread over all classes (its ``LabelSmoothingLoss``).
- ``KD`` (``scratch`` with a smart model): CE + alpha T^2 KL, the KL ``nn.KLDivLoss()``'s mean over
  samples and classes (``--loss-type lo_kd``).
- ``SL``: alpha T^2 soft-CE(softmax(t/T), s/T), no ground truth (``lo_sl``).
- ``SL-KD``: ``SL --use_gt``, the one-hot label added to the smart model's logits (``lo_sl_gt``).
  The source has no method of this name; this is the one way its code mixes the smart model's
  labels with the ground truth other than KD (our reading).
- ``SL-Ens``: SL from several smart models (``--smart_model resnet32,resnet44``), mean of logits.
  The source has no ensemble code; mean of logits is our choice.
- ``random``: SL from a smart model with random weights (seeded by --seed, no checkpoint): our
  reading of its README's row (1% top-1, ECE 0 on CIFAR-100: near-uniform labels).
- ``SL-Enc``: refused. The released source defines nothing by that name; its only candidate
  (``--isPerturbation``, a noise-fed ``LabelPerturbation`` network) is never built by main.py.

Defaults are the source's opts.py (--lr 1e-3, --wd 1e-4, --T 3, --alpha 0.1, --epochs 200, batch
128, SGD momentum 0.9); its README's command passes --lr 0.1 --wd 5e-4. Schedule: main.py's
MultiStepLR, milestones 60,120,160,200 with gamma 0.1 (STL-10: 0.2), weight decay on every
parameter. What differs from the source, and why, is in docs/recipes.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from softlabel import files, models
from softlabel.errors import UserError, run_main
from softlabel.teachers import split_list

DATASETS = {"cifar10": 32, "cifar100": 32, "stl10": 96, "folder": None}   # name -> image size
# main.py: MultiStepLR(milestones=[60, 120, 160, 200], gamma=0.1; 0.2 on stl10) over 200 epochs.
MILESTONES = (60, 120, 160, 200)
STUDY_EPOCHS = 200


@dataclass(frozen=True)
class Method:
    name: str
    loss: Optional[str]          # trainer --loss-type; None: hard labels
    smart: str                   # "none", "one", "several" or "random": what labels the store
    hard_flags: tuple[str, ...] = ()


METHODS = {m.name.lower(): m for m in (
    Method("Vanilla", None, "none"),
    Method("LS", None, "none", ("--label-smoothing", "0.1")),
    Method("KD", "lo_kd", "one"),
    Method("SL", "lo_sl", "one"),
    Method("SL-KD", "lo_sl_gt", "one"),
    Method("SL-Ens", "lo_sl", "several"),
    Method("random", "lo_sl", "random"),
)}
SOURCE_SPELLINGS = {"scratch": "vanilla", "label_smoothing": "ls", "kd": "kd"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The label-optimization study's main.py flags, run by relabel + trainer")
    g = p.add_argument_group("the study's flags (opts.py)")
    g.add_argument("--data-root", "--data_path", dest="data_root", default="./dataset/",
                   help="torchvision's dataset folder (cifar-100-python/ ...), or train/ + val/ with --dataset folder")
    g.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS), help="(default: cifar10)")
    g.add_argument("--n_class", type=int, default=10, help="number of classes (default: 10)")
    g.add_argument("--batch_size", type=int, default=128)
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--student_model", default="resnet18", help="student: resnet20/32/44/56/110 on CIFAR (default: resnet18)")
    g.add_argument("--smart_model", default="", help="the teacher; A,B for SL-Ens")
    g.add_argument("--smart_model_path", default=None,
                   help="a checkpoint file, or a folder holding <dataset>/<model>/student_lastest.pth as the "
                        "study's main.py writes them (A,B: one per model)")
    g.add_argument("--is_smart_model", action="store_true", help="accepted; a --smart_model is what counts")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    g.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=1e-4,
                   help="weight decay (default: 1e-4)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--optim", default="sgd", choices=["sgd"], help="sgd (the study's adam is not offered)")
    g.add_argument("--result", default="./results", help="output folder")
    g.add_argument("--T", type=float, default=3.0, help="temperature (default: 3)")
    g.add_argument("--alpha", type=float, default=0.1, help="weight of the smart model's term (default: 0.1)")
    g.add_argument("--method", default="SL", help="Vanilla|scratch, LS|label_smoothing, KD, SL, SL-KD, SL-Ens, "
                                                  "random (default: SL)")
    g.add_argument("--use_gt", action="store_true", help="SL: add the one-hot label to the smart model's logits")
    g.add_argument("--isPerturbation", action="store_true", help="refused: the source never builds it")
    g.add_argument("--save_model_path", default=None, help="accepted; checkpoints are in RESULT/.../train")
    g = p.add_argument_group("ours")
    g.add_argument("--seed", type=int, default=0, help="seed of the crops, the student and `random` (default: 0)")
    g.add_argument("--min-scale-crops", type=float, default=0.5,
                   help="RandomResizedCrop min scale standing in for the study's pad-4 crop + rotation (default: 0.5)")
    g.add_argument("-j", "--workers", type=int, default=None, help="data loading workers")
    g.add_argument("--device", default=None, help="cpu, cuda, ...")
    g.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs and at the end")
    g.add_argument("--no-progress", action="store_true")
    return p


def method_of(args: argparse.Namespace) -> Method:
    name = args.method.lower()
    if name == "sl-enc" or args.isPerturbation:
        raise UserError("--method SL-Enc / --isPerturbation: the study's released source defines no SL-Enc, and its "
                        "main.py never builds the LabelPerturbation network; not offered (see docs/recipes.md)")
    name = SOURCE_SPELLINGS.get(name, name)
    if name == "vanilla" and args.smart_model:
        name = "kd"      # the source: method scratch with a smart model is CE + alpha KD
    if name == "sl" and (args.use_gt or len(split_list(args.smart_model)) > 1):
        name = "sl-kd" if args.use_gt else "sl-ens"
    if name not in METHODS:
        raise UserError(f"--method {args.method}: expected one of {', '.join(m.name for m in METHODS.values())}")
    method = METHODS[name]
    count = len(split_list(args.smart_model))
    need = {"none": count == 0 or method.name == "LS", "one": count == 1, "several": count > 1, "random": count == 1}
    if not need[method.smart]:
        wanted = {"none": "no --smart_model", "one": "one --smart_model", "several": "two or more --smart_model A,B",
                  "random": "one --smart_model (its architecture; the weights are random)"}[method.smart]
        raise UserError(f"--method {args.method} takes {wanted}, got '{args.smart_model}'")
    if args.use_gt and method.name != "SL-KD":
        raise UserError(f"--use_gt applies to --method SL (it is SL-KD), not {args.method}")
    return method


# The commands the front end runs, each as its own process (as the study's scripts run main.py);
# by module, so that an installed package runs them as well as a checkout.
STEPS = {"export": ("softlabel.commands.export_imagefolder", "scripts/export_imagefolder.py"),
         "relabel": ("softlabel.commands.relabel", "relabel/generate_soft_label.py"),
         "train": ("softlabel.commands.train", "validate/train_FKD_parallel.py")}


def run(step: str, args: list[str], what: str) -> None:
    module, script = STEPS[step]
    print("+ " + " ".join([script, *args]), flush=True)  # what a user of the checkout would type
    if subprocess.run([sys.executable, "-m", module, *args]).returncode != 0:
        raise UserError(f"{what} failed (its message is above)")


def image_folders(args: argparse.Namespace, out: str) -> tuple[str, str]:
    """(train, val) folders: --data-root itself with --dataset folder, else exported once into OUT."""
    if args.dataset == "folder":
        train, val = os.path.join(args.data_root, "train"), os.path.join(args.data_root, "val")
        for d in (train, val):
            if not os.path.isdir(d):
                raise UserError(f"--data-root {args.data_root}: --dataset folder needs train/ and val/ class folders")
        return train, val
    images = os.path.join(out, "images")
    marker = images + ".done"
    if not os.path.isfile(marker):
        run("export", ["--dataset", args.dataset, "--root", args.data_root,
             "--out", images] + (["--no-progress"] if args.no_progress else []), "export of --data-root")
        files.atomic_write_bytes(marker, b"exported\n")
    return os.path.join(images, "train"), os.path.join(images, "val")


def smart_weights(args: argparse.Namespace, method: Method, out: str) -> list[str]:
    """One weight file per smart model: the study's layout, a file, or random weights (saved in OUT)."""
    archs = split_list(args.smart_model)
    if method.smart == "random":
        torch.manual_seed(args.seed)
        model = models.create_model(archs[0], args.n_class, models.model_source(archs[0]))
        path = os.path.join(out, f"random_{archs[0]}_s{args.seed}.pth")
        files.atomic_torch_save(model.state_dict(), path)
        return [path]
    if not args.smart_model_path:
        raise UserError(f"--method {method.name} needs --smart_model_path (the smart model's weights)")
    given = split_list(args.smart_model_path)
    if len(given) == 1:
        given = given * len(archs)
    if len(given) != len(archs):
        raise UserError(f"--smart_model_path gives {len(given)} paths for {len(archs)} smart models")
    paths = []
    for arch, path in zip(archs, given):
        if os.path.isdir(path):
            path = os.path.join(path, args.dataset, arch, "student_lastest.pth")
        if not os.path.isfile(path):
            raise UserError(f"--smart_model_path: no checkpoint for {arch} at {path} (a file, or a folder with "
                            f"{args.dataset}/{arch}/student_lastest.pth)")
        paths.append(path)
    return paths


def main(args: argparse.Namespace) -> None:
    method = method_of(args)
    if args.epochs < 1 or args.batch_size < 1 or args.n_class < 2:
        raise UserError("--epochs and --batch_size must be at least 1, --n_class at least 2")
    archs = split_list(args.smart_model)
    run_name = args.student_model + ("_" + "_".join(archs) if method.smart != "none" else "")
    out = os.path.join(args.result, args.dataset, method.name, run_name, f"seed{args.seed}")
    files.refuse_output_inside(args.result, "--result", [("--data-root", args.data_root)])
    files.ensure_dir(out, "--result")
    train_dir, val_dir = image_folders(args, os.path.join(args.result, args.dataset))
    size = DATASETS[args.dataset] or 32
    crops = ["--input-size", str(size), "--min-scale-crops", str(args.min_scale_crops), "--mix-type", "none"]
    common = ["--device", args.device] if args.device else []
    common += ["-j", str(args.workers)] if args.workers is not None else []
    store = []
    if method.loss:
        store_dir = os.path.join(out, "store")
        paths = smart_weights(args, method, out)
        run("relabel", ["--data", train_dir, "--teachers", ",".join(archs),
             "--teacher-path", ",".join(paths), "--ensemble", "mean", "--num-classes", str(args.n_class),
             "--fkd-path", store_dir, "--epochs", str(args.epochs), "-b", str(args.batch_size), *crops,
             "--fkd-seed", str(args.seed), "--print-freq", str(max(1, args.epochs // 10)), *common], "relabel")
        store = ["--fkd-path", store_dir, "--loss-type", method.loss, "-T", str(args.T), "--alpha", str(args.alpha)]
    else:
        store = [*crops, "-b", str(args.batch_size), "--epochs", str(args.epochs), *method.hard_flags]
    results = os.path.join(out, "train", "results.json")
    result = finished(results, args.epochs)
    if result is None:
        train(args, train_dir, val_dir, store, out, common)
        result = files.read_json(results, "results.json")
    print(f"label_optimization: {method.name} {run_name} on {args.dataset}: top-1 {result['top1']:.2f}%, "
          f"ECE {result['ece'] / 100:.4f} -> {out}")


def finished(results: str, epochs: int) -> Optional[dict]:
    """A finished run's results (None: not run, or run to fewer epochs)."""
    if not os.path.isfile(results):
        return None
    result = files.read_json(results, "results.json")
    return result if result.get("epoch") == epochs else None


def train(args: argparse.Namespace, train_dir: str, val_dir: str, labels: list[str], out: str,
          common: list[str]) -> None:
    """The trainer with main.py's optimizer and MultiStepLR (milestones scaled to --epochs)."""
    milestones = [m * args.epochs // STUDY_EPOCHS for m in MILESTONES]
    milestones = sorted({m for m in milestones if 0 < m < args.epochs}) or [args.epochs]
    run("train", ["--train-dir", train_dir, "--val-dir", val_dir,
         "--model", args.student_model, "--num-classes", str(args.n_class), *labels,
         "--sgd", "-lr", str(args.lr), "--momentum", str(args.momentum), "--weight-decay", str(args.weight_decay),
         "--weight-decay-norms", "--lr-schedule", "multistep", "--lr-milestones", ",".join(map(str, milestones)),
         "--lr-gamma", "0.2" if args.dataset == "stl10" else "0.1", "--crop-pct", "1.0", "--seed", str(args.seed),
         "--eval-interval", str(args.eval_interval), "--resume", "auto", "--output-dir", os.path.join(out, "train"),
         *common] + (["--no-progress"] if args.no_progress else []), "training")


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
