"""Train a student network: from a soft-label store, from hard labels, or distilled online.

Store mode (``--fkd-path``): every step reads one stored batch, re-renders exactly the crops,
flips and mix the teacher labelled (softlabel/replay.py) and fits the stored logits.

    python validate/train_FKD_parallel.py --train-dir DISTILLED --val-dir VAL \
        --fkd-path STORE --model resnet18 --loss-type kl -T 4 --cos --output-dir save/r18
    torchrun --standalone --nproc_per_node 8 validate/train_FKD_parallel.py ...   # DDP

Per-image FKD mode (``--fkd-layout per-image``): ``--fkd-path`` is a store of
relabel/generate_soft_label_fkd.py (one file per image, many labelled crops each); every step
takes -b images and ``--num-crops`` of each image's stored crops, re-rendered exactly, with
the recovered FKD labels as log-probabilities (softlabel/stores/per_image.py). FKD's own command
runs as written, with train_FKD.py's recipe (--recipe fkd, the default with --softlabel_path):

    python validate/train_FKD_parallel.py -a resnet50 --lr 0.1 --num_crops 4 -b 1024 --cos --temp 1.0 \
        --softlabel_path FKD_LABELS DATA        # DATA holds train/ and val/

Hard-label mode (no ``--fkd-path``): online RandomResizedCrop, flip, optional mix and label
smoothing; it trains teachers and baselines. With ``--teacher`` the teacher runs every step on
the same augmented batch (classic online KD), for comparison with stored labels.

Writes ``metrics.jsonl`` (one line per evaluation), ``checkpoint.pth`` and ``results.json`` in
``--output-dir``; ``--resume auto`` continues a killed run to exactly the same weights.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

from torch.utils.data import DataLoader

from softlabel import distributed, files, models, tracking, zoo
from softlabel.cli import (add_config_flag, add_mix_type, add_replaced_flags, flags_from_keywords,
                           note_replaced_flags, parse_with_config)
from softlabel.data import IndexedImageFolder, drop_unreadable, scan_image_folder, scan_images
from softlabel.distill import DISTILLERS
from softlabel.errors import UserError, run_main
from softlabel.loader import loader_workers
from softlabel.models import WEIGHTS_HELP
from softlabel.precision import AMP_CHOICES
from softlabel.stores.base import DEFAULT_CROPS_PER_STEP
from softlabel.teachers import SOURCES, load_teacher
from softlabel.training.checkpoints import BEST_CHECKPOINT
from softlabel.training.config import TRAIN_CROPS, check_flags, data_folder, init_lr_value, resolve
from softlabel.training.loop import train
from softlabel.training.losses import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, LOSSES, PROBABILITY_LOSSES, per_loss
from softlabel.training.report import evaluate
from softlabel.training.schedules import SCHEDULES
from softlabel.transforms import eval_transform

TRAINER_REPLACED = ("multiprocessing_distributed", "dist_url", "dist_backend", "world_size", "rank", "gpu", "gpu_id")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FKD-style student training from stored soft labels "
                                            "(or hard labels, or online distillation)")
    add_config_flag(p)
    add_data_args(p)
    add_model_args(p)
    add_optimization_args(p)
    add_loss_args(p)
    add_distillation_args(p)
    add_run_args(p)
    add_replaced_flags(p, TRAINER_REPLACED)
    return p


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The images, the store and how its labels are read."""
    g = p.add_argument_group("data")
    g.add_argument("data", nargs="?", default=None, metavar="DATA",
                   help="train_FKD.py's positional folder holding train/ and val/: --train-dir DATA/train "
                        "--val-dir DATA/val")
    g.add_argument("--train-dir", type=str, default=None, help="training images (ImageFolder)")
    g.add_argument("--val-dir", type=str, default=None, help="validation images (ImageFolder)")
    g.add_argument("--fkd-path", type=str, default=None,
                   help="soft-label store made by relabel/ (omit for hard labels or --teacher)")
    g.add_argument("--fkd-layout", choices=["batch", "per-image"], default=None,
                   help="batch: a store of relabel/generate_soft_label.py, one file per step (default); "
                        "per-image: an FKD store of relabel/generate_soft_label_fkd.py, one file per image")
    g.add_argument("--softlabel_path", default=None, metavar="DIR",
                   help="FKD's train_FKD.py flag: --fkd-path DIR --fkd-layout per-image with train_FKD.py's "
                        "recipe (--recipe fkd) and loss (--loss-type soft_ce -T 1); DIR is our per-image store or "
                        "FKD's own files (DIR/<split>/<class>/<image>.tar, as FKD_SLG writes them)")
    g.add_argument("--soft_label_type", default=None, metavar="TYPE",
                   help="FKD's flag: the label type the per-image store must hold (the store's manifest says "
                        "which it holds; a different one is refused, not reinterpreted)")
    g.add_argument("--num-crops", "--num_crops", dest="num_crops", type=int, default=None, metavar="N",
                   help=f"per-image: stored crops of every image per epoch, all in the image's step (a step "
                        f"holds -b images x N crops); crops repeat only once all were used "
                        f"(default: {DEFAULT_CROPS_PER_STEP}, as FKD)")
    g.add_argument("-j", "--workers", default=None, type=int,
                   help="data loading worker processes (default: 4 on GPU, 0 on CPU); results do not depend on it")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="leave out (and list) training and validation images that cannot be read, as relabel did "
                        "with this flag (validation images are all decoded before training either way)")
    g.add_argument("--cache-images", type=int, default=1024, metavar="MB",
                   help="store mode: keep decoded images in memory up to MB in all (default: 1024)")
    add_crop_args(g)
    add_mix_args(g)
    g.add_argument("--fkd-seed", "--fkd_seed", dest="fkd_seed", type=int, default=None,
                   help="seed the store was made with (default: the store's; a different value is refused)")



def add_crop_args(g: argparse._ArgumentGroup) -> None:
    """The crops: their size, the online ones' scale and kind, the validation's."""
    g.add_argument("--input-size", type=int, default=None,
                   help="crop size (default: the store's; FKD's own files: 224; hard labels: 224)")
    g.add_argument("--crop-interpolation", choices=["bilinear", "bicubic"], default="bilinear",
                   help="FKD's own files: re-render crops bilinear as its train_FKD.py (default), or bicubic as "
                        "its teacher saw them")
    g.add_argument("--min-scale-crops", type=float, default=None,
                   help="RandomResizedCrop min scale (default: the store's; hard labels: 0.08)")
    g.add_argument("--max-scale-crops", type=float, default=None,
                   help="RandomResizedCrop max scale (default: the store's; hard labels: 1.0)")
    g.add_argument("--train-crop", choices=TRAIN_CROPS, default=None,
                   help="online crops (hard labels, --teacher): resized = RandomResizedCrop(--input-size, scale "
                        "--min/--max-scale-crops); padded = RandomCrop(--input-size, padding=4), RepDistiller's and "
                        "SSKD's CIFAR crop; both then flipped (default: padded with --recipe repdistiller, else "
                        "resized)")
    g.add_argument("--drop-last", action="store_true",
                   help="online crops: leave out each epoch's last partial batch (WSLD's loader, drop_last=True)")
    g.add_argument("--crop-pct", type=float, default=0.875,
                   help="validation: resize to input-size/crop-pct, center-crop (default: 0.875)")


def add_mix_args(g: argparse._ArgumentGroup) -> None:
    """Mixing: the online mix of hard labels, train_FKD.py's --mixup_cutmix of per-image labels."""
    add_mix_type(g, None, "default: the store's; hard labels: none (online mix)")
    g.add_argument("--mixup", type=float, default=0.8,
                   help="hard labels and --mixup_cutmix: mixup alpha (default: 0.8)")
    g.add_argument("--cutmix", type=float, default=1.0,
                   help="hard labels and --mixup_cutmix: cutmix alpha (default: 1.0)")
    g.add_argument("--mixup_cutmix", "--mixup-cutmix", dest="mixup_cutmix", action="store_true",
                   help="per-image labels: mix each step's crops and their labels online, as train_FKD.py's "
                        "--mixup_cutmix (mixup or cutmix within each rank's share of the step)")
    g.add_argument("--mixup_cutmix_prob", "--mixup-cutmix-prob", dest="mixup_cutmix_prob", type=float, default=1.0,
                   help="--mixup_cutmix: probability that a step is mixed (default: 1.0, as FKD)")
    g.add_argument("--mixup_switch_prob", "--mixup-switch-prob", dest="mixup_switch_prob", type=float, default=0.5,
                   help="--mixup_cutmix: probability of mixup rather than cutmix (default: 0.5, as FKD)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", "-a", "--arch", dest="model", type=str, default=None,
                   help="student: ours (democnn, ...), torchvision or timm name (default: resnet18; --recipe fkd: "
                        "resnet50, as train_FKD.py's -a)")
    g.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=None,
                   help="default: the store's; FKD's own files: 1000 (as FKD); hard labels: the number of "
                        "class folders")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")


def add_optimization_args(p: argparse.ArgumentParser) -> None:
    """The batch, the epochs and the recipe; then the schedule and the optimizer."""
    g = p.add_argument_group("optimization")
    g.add_argument("-b", "--batch-size", type=int, default=None,
                   help="global batch (all ranks together); default: the store's batch size; hard labels: "
                        "1024; per-image: images per step (default: 1024 / --num-crops); --recipe fkd: crops per "
                        "step, as train_FKD.py (default: 1024, i.e. 1024 / --num-crops images)")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="split each batch into this many micro-batches, one optimizer step (default: 1)")
    g.add_argument("--epochs", type=int, default=None,
                   help="default: the epochs the store holds; hard labels: 300; --recipe fkd: 300, counted as "
                        "train_FKD.py counts them (a pass of --num-crops crops is that many epochs)")
    g.add_argument("--start-epoch", type=int, default=0, help="begin at this epoch (schedule and store)")
    g.add_argument("--recipe", choices=["fkd", "ours", "repdistiller"], default=None,
                   help="fkd (the default with --softlabel_path): train_FKD.py's: SGD lr 0.1 momentum 0.9 wd 1e-4 "
                        "on every parameter, --epochs 300 counted as train_FKD.py counts them (a pass with "
                        "--num-crops N crops of every image is N epochs; the last epochs single-crop), -b crops per "
                        "step (default 1024), --cos its cosine; ours (the default otherwise): AdamW, -b images, "
                        "one pass per epoch, --cos PRISM's; repdistiller: RepDistiller's train_student.py (online "
                        "KD or hard labels): SGD lr 0.05 momentum 0.9 wd 5e-4 on every parameter, -b 64, 240 "
                        "epochs, x0.1 at 150, 180, 210, 32 px, --train-crop padded")
    add_schedule_args(g)
    add_optimizer_args(g)


def add_schedule_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--cos", action="store_true",
                   help="cosine schedule as upstream's --cos: PRISM's (= --lr-schedule prism-cos; default: linear), "
                        "with --recipe fkd train_FKD.py's (= --lr-schedule cosine; default: multistep 120,240)")
    g.add_argument("--schedule", nargs="*", type=int, default=None, metavar="E",
                   help="train_FKD.py's spelling of --lr-milestones (x0.1 at each; --recipe fkd default: 120 240)")
    g.add_argument("--lr-schedule", choices=sorted(SCHEDULES), default=None,
                   help="per-epoch learning-rate factor: linear (1 - e/E, PRISM's and SRe2L's default), prism-cos "
                        "(PRISM's --cos: 0.5 (1 + cos(pi e / 2.5E)) up to 5E/6, then linear to 0), cosine "
                        "(SRe2L's --cos: 0.5 (1 + cos(pi e / E))), step (--lr-gamma every --lr-step-size epochs, "
                        "WSLD's), multistep (--lr-gamma at each of --lr-milestones, the label-optimization "
                        "study's) (default: linear, prism-cos with --cos)")
    g.add_argument("--lr-step-size", type=int, default=30, metavar="E",
                   help="--lr-schedule step: multiply the rate by --lr-gamma every E epochs (default: 30, as WSLD)")
    g.add_argument("--lr-milestones", type=str, default=None, metavar="E[,E]",
                   help="--lr-schedule multistep: the epochs at which the rate is multiplied by --lr-gamma")
    g.add_argument("--lr-gamma", type=float, default=0.1,
                   help="--lr-schedule step or multistep: the factor (default: 0.1)")
    g.add_argument("--warmup-epochs", type=int, default=0, help="linear warm-up epochs (default: 0)")


def add_optimizer_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sgd", action="store_true", help="SGD instead of AdamW (= --optimizer sgd)")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default=None,
                   help="default: adamw; --recipe fkd: sgd")
    g.add_argument("-lr", "--lr", "--learning-rate", dest="learning_rate", type=float, default=None,
                   help="SGD learning rate (default: 1.024; --recipe fkd: 0.1)")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default: 0.875; --recipe fkd: 0.9)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=None,
                   help="SGD weight decay (default: 3e-5; --recipe fkd: 1e-4)")
    g.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum (as WSLD's trainer)")
    g.add_argument("--weight-decay-norms", action=argparse.BooleanOptionalAction, default=None,
                   help="decay norms and biases too (as WSLD's trainer and --recipe fkd; default otherwise: only "
                        "conv and linear weights, as PRISM's)")
    g.add_argument("--adamw-lr", type=float, default=0.001, help="AdamW learning rate")
    g.add_argument("--adamw-weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (never on norms and biases)")
    g.add_argument("--amp", choices=[c for c in AMP_CHOICES if c != "auto"], default="off",
                   help="autocast; fp16 adds a gradient scaler (default: off)")


def add_loss_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("loss")
    g.add_argument("--loss-type", type=str, default=None, choices=sorted(LOSSES),
                   help="loss against the teacher's logits (default: kl; with --softlabel_path: soft_ce, as "
                        "FKD's train_FKD.py)")
    g.add_argument("-T", "--temperature", "--temp", dest="temperature", type=float, default=None,
                   help=f"distillation temperature (default: 3; {per_loss(DEFAULT_TEMPERATURE)}; with "
                        f"--softlabel_path: 1, as FKD's --temp)")
    g.add_argument("--ce-weight", type=float, default=None,
                   help="cross-entropy weight of mse_gt / mae_gt (default: 0.1) and of kd (default: 1 - --alpha; "
                        "RepDistiller's -r)")
    g.add_argument("--alpha", type=float, default=None,
                   help=f"weight of the soft term, by --loss-type (default: 1; {per_loss(DEFAULT_ALPHA)}; kd: CE gets "
                        f"1 - alpha; lo_*: the label-optimization study's --alpha)")
    g.add_argument("--kd-t2", action="store_true", help="kl only: multiply by T^2 (kd, wsld and dist include it)")
    g.add_argument("--keep-topk", type=int, default=None, metavar="K",
                   help=f"keep only each sample's top-K teacher logits (the rest masked to -inf, probability 0) "
                        f"before the loss; losses on probabilities only: {', '.join(PROBABILITY_LOSSES)} (refused "
                        f"for {', '.join(sorted(set(LOSSES) - set(PROBABILITY_LOSSES)))})")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="hard labels: label smoothing")


def add_distillation_args(p: argparse.ArgumentParser) -> None:
    """Online teachers and feature distillers."""
    g = p.add_argument_group("online distillation (no --fkd-path)")
    g.add_argument("--teacher", type=str, default=None, metavar="ARCH[,ARCH]",
                   help="run this teacher on every augmented batch; the loss is --loss-type")
    g.add_argument("--teacher-path", type=str, default=None, metavar="P[,P]", help="its weights")
    g.add_argument("--teacher-source", choices=SOURCES, default=None, help="as in relabel")
    g.add_argument("--teacher-weights", metavar="NAME[,NAME]", default=None, help=WEIGHTS_HELP)
    g.add_argument("--teacher-mode", choices=["eval", "train"], default="eval",
                   help="eval (default): the teacher's batch norm uses its running statistics; train: "
                        "WSLD's (train_with_distillation.py), batch norm on each batch's statistics, "
                        "its running statistics updated and kept in the checkpoint")
    g.add_argument("--distiller", choices=sorted(DISTILLERS), default=None,
                   help="add a feature-based distiller's loss (the label-optimization study's baselines, "
                        "RepDistiller's definitions; kdss: SSKD's); --loss-type then defaults to ce (its -a 0; "
                        "kdss: kd, SSKD's 0.1 CE + 0.9 KD at T 4)")
    g.add_argument("--distill-weight", type=float, default=None, metavar="BETA",
                   help="weight of the distiller's loss (default: the method's, RepDistiller's -b: " + ", ".join(
                       f"{k} {v.weight:g}" for k, v in sorted(DISTILLERS.items())) + ")")
    g.add_argument("--feat-layers", default=None, metavar="NAME[,NAME]",
                   help="the student's stage modules whose outputs are its features (default: layer1, layer2, ...)")
    g.add_argument("--teacher-feat-layers", default=None, metavar="NAME[,NAME]",
                   help="the teacher's (default: --feat-layers, else layer1, layer2, ...)")
    g.add_argument("--distill-init-epochs", type=int, default=None, metavar="N",
                   help=", ".join(k for k, v in sorted(DISTILLERS.items()) if v.init_epochs) + ": epochs of the "
                        "init stage that trains their parts before distilling "
                        "(default: RepDistiller's --init_epochs, SSKD's --t-epoch for kdss: " + ", ".join(
                            f"{k} {v.init_epochs}" for k, v in sorted(DISTILLERS.items()) if v.init_epochs) + "); "
                        "kdss's rate drops x0.1 at init epochs 30 and 45 of 60 (SSKD's --t-milestones), of N at "
                        "round(N x 30/60) and round(N x 45/60), halves up; the others keep one rate")
    g.add_argument("--distill-init-lr", type=init_lr_value, default=None, metavar="LR|auto",
                   help="SGD learning rate of the init stage (default: RepDistiller's: ft 0.01 for CIFAR ResNet/WRN "
                        "students, else --lr; kdss 0.05, SSKD's --t-lr); auto: that rate, capped where the teacher's "
                        "features make it diverge (ft: at most 0.02 / their mean square)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Output, seeds, evaluation and checkpoints, resumption, device and logging."""
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", "--save_checkpoint_path", dest="output_dir", type=str, default="./save",
                   help="checkpoint and metrics directory (train_FKD.py's --save_checkpoint_path)")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation and of hard-label augmentation")
    g.add_argument("--eval-interval", type=int, default=10, help="evaluate every N epochs and at the end")
    g.add_argument("--val-batch-size", type=int, default=256, metavar="N",
                   help="images per evaluation step (default: 256; the numbers do not depend on it)")
    g.add_argument("--val-workers", type=int, default=None, metavar="N",
                   help="loader workers of the evaluation (default: -j, at most 2)")
    g.add_argument("-p", "--print-freq", type=int, default=None, metavar="N",
                   help="also print every N steps: the step's loss (this rank's), lr and images/s (default: the "
                        "progress bar and one line per evaluation)")
    g.add_argument("--save-best", action="store_true",
                   help=f"also keep the best evaluation's weights in {BEST_CHECKPOINT} (as train_FKD.py's "
                        f"model_best.pth.tar; its format: checkpoint.pth's)")
    g.add_argument("--save-interval", type=int, default=1,
                   help="write checkpoint.pth every N epochs and at the end (default: 1)")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from a checkpoint; auto: --output-dir/checkpoint.pth if there is one; with -e: "
                        "the weights to evaluate")
    g.add_argument("-e", "--evaluate", action="store_true",
                   help="as train_FKD.py's -e: evaluate --resume's weights (ours or train_FKD.py's checkpoint) on "
                        "--val-dir (DATA/val) and stop")
    g.add_argument("--pretrained", action="store_true",
                   help="train_FKD.py's: start from torchvision's published weights; refused (not offered)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--wandb-mode", default="disabled", choices=["online", "offline", "disabled"],
                   help="wandb logging (default: disabled); online reads the key from WANDB_API_KEY")
    g.add_argument("--wandb-project", default="softlabel", help="wandb project")
    g.add_argument("--wandb-api-key", default=None,
                   help="accepted for old scripts: sets WANDB_API_KEY for this process only; never written anywhere")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def evaluate_only(args: argparse.Namespace) -> None:
    """train_FKD.py's -e: top-1/top-5 of --resume's weights on the validation images."""
    if not args.resume or args.resume == "auto":
        raise UserError("-e/--evaluate evaluates --resume FILE (a checkpoint of ours or of train_FKD.py); give it")
    if not args.val_dir:
        raise UserError("-e/--evaluate needs the validation images: DATA with a val/ folder, or --val-dir")
    meta = models.read_weights_file(args.resume, "--resume")[1]
    arch = args.model or (None if meta.get("arch") else "resnet50")  # train_FKD.py's -a default
    teacher = load_teacher(arch, args.resume, args.num_classes, flag="--resume")
    device = distributed.setup(args.device).device
    index, bad = drop_unreadable(scan_image_folder(args.val_dir, "--val-dir"))
    if bad:
        raise UserError(f"--val-dir {args.val_dir}: {len(bad)} images cannot be read (first: {bad[0]})")
    # the size it was trained at: recorded in our checkpoints; CIFAR's 32 px for RepDistiller's zoo
    size = args.input_size or meta.get("input_size") or (32 if teacher.arch in zoo.MODELS else 224)
    loader = DataLoader(IndexedImageFolder(index, eval_transform(size, args.crop_pct, teacher.mean,
                                                                 teacher.std)),
                        batch_size=256, shuffle=False, num_workers=loader_workers(args.workers, device.type == "cuda"))
    metrics = evaluate(teacher.model.to(device), loader, device, False, None)
    print(" * Acc@1 {top1:.3f} Acc@5 {top5:.3f}".format(**metrics), flush=True)


@files.releasing_locks
def main(args: argparse.Namespace, origin: Optional[tracking.StartUp] = None) -> dict:
    """Run the trainer on ``args`` (the parsed flags, or train_args()); returns results.json's content
    ({} with -e/--evaluate and on ranks other than the main one). ``origin``: where the logged
    start-up begins (default: this call)."""
    origin = origin or tracking.StartUp.of_main()
    given = argparse.Namespace(**vars(args))  # the flags as parsed: args.yaml, which --config reruns
    note_replaced_flags(args, TRAINER_REPLACED)
    if args.wandb_api_key:  # this process only; never logged or saved (SECRETS)
        os.environ["WANDB_API_KEY"] = args.wandb_api_key
        sys.argv = [a if a != args.wandb_api_key else "***" for a in sys.argv]
    if args.pretrained:
        raise UserError("--pretrained (train_FKD.py: start from torchvision's published weights) is not offered; "
                        "students start from scratch")
    data_folder(args)
    if args.evaluate:
        evaluate_only(args)
        return {}
    check_flags(args)
    info = distributed.setup(args.device)
    # the same images relabel left out with --skip-bad-images, so the same fingerprint
    with distributed.together(info):  # a node that refuses its inputs stops every node, in one line each
        train_index, _ = scan_images(args.train_dir, "--train-dir", args.skip_bad_images, info.is_main, "train")
        cfg, store = resolve(args, train_index, info, loader_workers(args.workers, info.device.type == "cuda"))
    distributed.require_same(info, f"{cfg.label_source} {train_index.fingerprint()}".encode(),
                             f"train on other images (--train-dir {cfg.train_dir}) or other labels")
    results = train(cfg, store, train_index, info, origin, given)
    distributed.cleanup(info)
    return results


def train_args(**values: Any) -> argparse.Namespace:
    """The trainer's flags from Python: the defaults with ``values`` in place, keyed by the flags'
    dest names (``train_dir=``, ``fkd_path=``, ``workers=``, ``learning_rate=`` for -lr, ...), given as
    Python values (ints, floats, None, lists), each converted and checked as on the command line;
    ``main(train_args(...))`` then runs what the same flags run (the same args.yaml). An unknown name
    is a TypeError."""
    return flags_from_keywords(get_args_parser(), values, "train_args")


def run(**values: Any) -> dict:
    """``main(train_args(**values))``: train, and return results.json's content."""
    return main(train_args(**values))


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(parse_with_config(get_args_parser()), tracking.StartUp.of_process()))


if __name__ == "__main__":
    cli()
