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
import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from softlabel import (
    checkpoint,
    distributed,
    evaluation,
    files,
    models,
    precision,
    provenance,
    replay,
    streams,
    tracking,
    zoo,
)
from softlabel.cli import (CONFIG_FILE, add_config_flag, add_mix_type, add_replaced_flags, config_of,
                           note_replaced_flags, parse_with_config)
from softlabel.data import (
    FolderIndex,
    IndexedImageFolder,
    drop_unreadable,
    eval_transform,
    scan_image_folder,
    scan_images,
)
from softlabel.distill import DISTILLERS, Features
from softlabel.distill.base import Crop
from softlabel.distributed import DistInfo, require_same_start, slice_bounds
from softlabel.errors import UserError, run_main
from softlabel.classmap import class_index_of
from softlabel.loader import batch_loader, cache_bytes, loader_workers
from softlabel.models import WEIGHTS_HELP
from softlabel.precision import AMP_CHOICES
from softlabel.stores import Store
from softlabel.stores import topk
from softlabel.stores import batch as batch_store
from softlabel.stores.base import same_path
from softlabel.stores.per_image import DEFAULT_CROPS_PER_STEP
from softlabel.streams import Stream
from softlabel.teachers import SOURCES, Ensemble, load_teacher, load_teachers, split_list, weight_names, weight_paths
from softlabel.training.config import (RESUME_MUST_MATCH, TRAIN_CROPS, TrainConfig, check_flags, data_folder,
                                       init_lr_value, pass_batch, resolve)
from softlabel.training.distillation import DistillRun, build_distiller, distilling, init_stage
from softlabel.training.losses import LOSSES, PROBABILITY_LOSSES, keep_topk
from softlabel.training.metrics import BestAndLast, SplitMetrics
from softlabel.training.schedules import SCHEDULES

TRAINER_REPLACED = ("multiprocessing_distributed", "dist_url", "dist_backend", "world_size", "rank", "gpu", "gpu_id")
SECRETS = ("wandb_api_key",)
BEST_CHECKPOINT = "model_best.pth"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="FKD-style student training from stored soft labels "
                                            "(or hard labels, or online distillation)")
    add_config_flag(p)
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
    g.add_argument("--fkd-seed", "--fkd_seed", dest="fkd_seed", type=int, default=None,
                   help="seed the store was made with (default: the store's; a different value is refused)")

    g = p.add_argument_group("model")
    g.add_argument("--model", "-a", "--arch", dest="model", type=str, default=None,
                   help="student: ours (democnn, ...), torchvision or timm name (default: resnet18; --recipe fkd: "
                        "resnet50, as train_FKD.py's -a)")
    g.add_argument("--num-classes", "--num_classes", dest="num_classes", type=int, default=None,
                   help="default: the store's; FKD's own files: 1000 (as FKD); hard labels: the number of "
                        "class folders")
    g.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")

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

    g = p.add_argument_group("loss")
    g.add_argument("--loss-type", type=str, default=None, choices=sorted(LOSSES),
                   help="loss against the teacher's logits (default: kl; with --softlabel_path: soft_ce, as "
                        "FKD's train_FKD.py)")
    g.add_argument("-T", "--temperature", "--temp", dest="temperature", type=float, default=None,
                   help="distillation temperature (default: 3; wsld: 2; kd: 4; lo_*: 3; with --softlabel_path: 1, as "
                        "FKD's --temp)")
    g.add_argument("--ce-weight", type=float, default=None,
                   help="cross-entropy weight of mse_gt / mae_gt (default: 0.1) and of kd (default: 1 - --alpha; "
                        "RepDistiller's -r)")
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the soft term: wsld (default: 2.5), kd (default: 0.9, CE gets 1 - alpha), "
                        "lo_kd / lo_sl / lo_sl_gt (default: 0.1, the label-optimization study's --alpha)")
    g.add_argument("--kd-t2", action="store_true", help="kl only: multiply by T^2 (kd, wsld and dist include it)")
    g.add_argument("--keep-topk", type=int, default=None, metavar="K",
                   help=f"keep only each sample's top-K teacher logits (the rest masked to -inf, probability 0) "
                        f"before the loss; losses on probabilities only: {', '.join(PROBABILITY_LOSSES)} (refused "
                        f"for {', '.join(sorted(set(LOSSES) - set(PROBABILITY_LOSSES)))})")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="hard labels: label smoothing")

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
    add_replaced_flags(p, TRAINER_REPLACED)
    return p



# ----------------------------------------------------------------------------- batches

def epoch_seed(seed: int, epoch: int, stream: Stream = Stream.TRAIN_EPOCH) -> int:
    """Every epoch's randomness restarts from (seed, epoch): a run resumed at an epoch boundary
    draws exactly what the uninterrupted run drew."""
    return int(streams.rng(seed, stream, epoch).integers(2 ** 62))


def store_epochs(cfg: TrainConfig, store: Store, index: FolderIndex, first_epoch: int, info: DistInfo,
                 pin: bool) -> Iterator[tuple[int, Iterator[dict]]]:
    """(epoch, batches) from a store through one loader for the whole run, so workers start once
    rather than once per epoch. Each rank gets its slice of every step. Per-image stores draw each
    step's images and stored crops from (--seed, epoch)."""
    passes = cfg.passes
    if cfg.per_image:
        steps = [replay.batches_per_epoch(len(index), pass_batch(cfg, crops)[0]) for _, crops in passes]
        targets = torch.tensor(class_index_of(store.manifest, index.classes))[torch.tensor(index.targets)]
        options = {"seed": cfg.seed, "images_per_step": cfg.batch_size, "crops_per_epoch": cfg.num_crops,
                   "targets": targets}
        if cfg.recipe == "fkd":
            options["passes"] = passes
    else:
        steps, options = [store.settings.batches_per_epoch] * len(passes), {}
    jobs = [(p, b) for p in range(first_epoch, len(passes)) for b in range(steps[p])]
    dataset = store.dataset(index, jobs, cache_bytes(cfg.cache_images, cfg.workers), info.rank, info.world_size,
                            **options)
    batches = iter(batch_loader(dataset, cfg.workers, pin, background=pin, yield_cpu=not pin))
    for epoch in range(first_epoch, len(passes)):
        epoch_batches = (next(batches) for _ in range(steps[epoch]))
        if cfg.mixup_cutmix:
            epoch_batches = (mix_per_image(cfg, item, info.rank) for item in epoch_batches)
        yield epoch, (epoch_batches if cfg.per_image else each_sample_once(epoch_batches, store, epoch))


def mix_per_image(cfg: TrainConfig, item: dict, rank: int) -> dict:
    """train_FKD.py's --mixup_cutmix (utils_FKD.py's mixup_cutmix): with --mixup_cutmix_prob the
    step is mixed, by mixup with --mixup_switch_prob else cutmix, each crop with a partner of the
    same batch; the labels mix as probabilities, lambda p + (1 - lambda) p_partner."""
    rng = streams.rng(cfg.seed, Stream.PER_IMAGE_MIX, item["epoch"], item["batch"], rank)
    if not rng.random() < cfg.mixup_cutmix_prob:
        return item
    kind = "mixup" if rng.random() < cfg.mixup_switch_prob else "cutmix"
    index, lam, bbox = replay.sample_mix(rng, kind, len(item["target"]), cfg.input_size, cfg.mixup, cfg.cutmix)
    probs = item["soft_label"].exp()
    mixed = (lam * probs + (1.0 - lam) * probs[index]).log()
    return {**item, "soft_label": mixed, "partners": item["pixels"][index], "mix_lam": lam, "mix_bbox": bbox}


def each_sample_once(batches: Iterator[dict], store: Store, epoch: int) -> Iterator[dict]:
    """A stored epoch's batches, refused at the first one that repeats a sample of an earlier batch.
    A pruned store's steps cycle across epochs (a student epoch may show a sample twice): not checked."""
    if store.settings.label_keep < 1.0:
        yield from batches
        return
    shown, reader = batch_store.EpochSamples(store.settings.num_samples, epoch), store.reader()
    for item in batches:
        shown.add(item["index"], reader.where(item["epoch"], item["batch"]))
        yield item


def hard_label_epochs(cfg: TrainConfig, index: FolderIndex, epochs: range, info: DistInfo, pin: bool,
                      stream: Stream = Stream.TRAIN_EPOCH) -> Iterator[tuple[int, Iterator[dict]]]:
    """Online crops (--train-crop) + flip as uint8 pixels (normalized later, per model); each
    rank draws its share of every epoch (DistributedSampler), mixes within its own batch.
    ``stream``: a distiller's init stage draws its epochs from its own, and mixes nothing. A
    distiller of several views (KDSS) gets every image as its ``image_views``, drawn from
    (--seed, ``stream``, epoch, image) whatever the workers, ranks or resumption."""
    method = DISTILLERS[cfg.distiller] if cfg.distiller else None
    views = method is not None and method.views > 1
    crop = (T.RandomCrop(cfg.input_size, padding=4) if cfg.train_crop == "padded" else
            T.RandomResizedCrop(cfg.input_size, scale=(cfg.min_scale_crops, cfg.max_scale_crops),
                                interpolation=T.InterpolationMode.BILINEAR))
    one_view = IndexedImageFolder(index, T.Compose([crop, T.RandomHorizontalFlip(), T.PILToTensor()]),
                                  with_index=True)
    local_batch = max(1, cfg.batch_size // info.world_size)
    for epoch in epochs:
        seed = epoch_seed(cfg.seed, epoch, stream)
        dataset = (ImageViews(index, method.image_views, drawn_crop(cfg), (cfg.seed, stream, epoch)) if views
                   else one_view)
        if info.distributed:
            sampler = DistributedSampler(dataset, info.world_size, info.rank, shuffle=True, seed=seed)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, num_workers=cfg.workers,
                            pin_memory=pin, generator=torch.Generator().manual_seed(seed), drop_last=cfg.drop_last)
        yield epoch, _hard_label_batches(loader, epoch, cfg, info, stream == Stream.TRAIN_EPOCH)


def drawn_crop(cfg: TrainConfig) -> Crop:
    """The run's --train-crop with its draws from a numpy generator: padded = RandomCrop(--input-size,
    padding=4) (PIL fills the box outside the image with zeros, as the padding); resized =
    RandomResizedCrop's box drawn as torchvision draws it (replay.sample_crop)."""
    size = cfg.input_size

    def padded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left = (int(rng.integers(0, max(n + 8 - size, 0) + 1)) - 4 for n in image.size[::-1])
        return image.crop((left, top, left + size, top + size))

    def resized(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        box = replay.sample_crop(rng, *image.size, (cfg.min_scale_crops, cfg.max_scale_crops))
        return replay.render_crop(image, box, False, size)
    return padded if cfg.train_crop == "padded" else resized


class ImageViews(torch.utils.data.Dataset):
    """Every image as a distiller's views: uint8 (views, C, H, W), its class, its index; the draws
    of image i from the stream at ``key`` + (i,)."""

    def __init__(self, index: FolderIndex, views: Callable, crop: Crop, key: tuple[int, Stream, int]):
        self.index, self.views, self.crop, self.key = index, views, crop, key

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        path, target = self.index.samples[i]
        seed, stream, epoch = self.key
        images = self.views(self.index.load(path), self.crop, streams.rng(seed, stream, epoch, i))
        return torch.stack([T.functional.pil_to_tensor(image) for image in images]), target, i


def view_major(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, views, C, H, W) -> (views x B, C, H, W): each view's batch in turn."""
    return None if x is None else x.transpose(0, 1).flatten(0, 1)


def _hard_label_batches(loader: DataLoader, epoch: int, cfg: TrainConfig, info: DistInfo,
                        mix: bool) -> Iterator[dict]:
    """``pixels`` (and ``partners``): the batch, or with a distiller's views every view of it, view-major;
    each view mixed with its partner's same view."""
    for step, (pixels, target, sample_index) in enumerate(loader):
        rng = streams.rng(cfg.seed, Stream.HARD_LABEL_MIX, epoch, step, info.rank)
        mix_index, mix_lam, mix_bbox = replay.sample_mix(rng, cfg.mix_type if mix else "none", len(target),
                                                         cfg.input_size, cfg.mixup, cfg.cutmix)
        partners = replay.partners_of(pixels, mix_index)
        if pixels.dim() == 5:
            pixels, partners = view_major(pixels), view_major(partners)
        yield {"pixels": pixels, "partners": partners,
               "mix_lam": mix_lam, "mix_bbox": mix_bbox, "target": target, "index": sample_index,
               "partner_target": replay.partners_of(target, mix_index),
               "batch_size": len(target) * info.world_size}


# ----------------------------------------------------------------------------- model, optimizer

def param_groups(model: nn.Module, weight_decay: float, norms_too: bool = False) -> list[dict]:
    """Weight decay on weights of convolutions and linear layers, none on norms and biases
    (``norms_too``: on every parameter)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 and not norms_too else decay).append(p)
    if norms_too:
        return [{"params": decay, "weight_decay": weight_decay}]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(epoch: int, epochs: int, warmup: int, schedule: Callable[[int, int], float]) -> float:
    """Per-epoch learning-rate factor: ``warmup`` epochs of linear warm-up, then ``schedule``
    (softlabel/training/schedules.py) over the remaining epochs."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    return schedule(epoch - warmup, max(1, epochs - warmup))


def schedule_of(cfg: TrainConfig) -> Callable[[int, int], float]:
    if cfg.lr_schedule == "step":
        return functools.partial(SCHEDULES["step"], size=cfg.lr_step_size, gamma=cfg.lr_gamma)
    if cfg.lr_schedule == "multistep":
        return functools.partial(SCHEDULES["multistep"], milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
    return SCHEDULES[cfg.lr_schedule]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, LambdaLR]:
    if cfg.sgd:
        optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.weight_decay_norms), lr=cfg.learning_rate,
                                    momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        optimizer = torch.optim.AdamW(param_groups(model, cfg.adamw_weight_decay, cfg.weight_decay_norms),
                                      lr=cfg.adamw_lr)
    epochs, warmup, schedule = cfg.epochs, cfg.warmup_epochs, schedule_of(cfg)
    # stepped once per pass (an epoch, or train_FKD.py's pass of --num-crops epochs) at its first epoch
    firsts = [first for first, _ in cfg.passes] + [epochs]
    return optimizer, LambdaLR(optimizer, lambda p: lr_factor(firsts[min(p, len(firsts) - 1)], epochs, warmup,
                                                               schedule))


def online_teachers(cfg: TrainConfig, device: torch.device) -> Optional[Ensemble]:
    if not cfg.teacher:
        return None
    archs = split_list(cfg.teacher)
    paths = weight_paths(cfg.teacher_path, archs)
    teachers = load_teachers(archs, paths, cfg.num_classes, cfg.teacher_source,
                             weight_names(cfg.teacher_weights, archs, paths))
    for t in teachers:  # before --output-dir exists: online KD compares the two networks' classes one to one
        if t.num_classes != cfg.num_classes:
            weights = f"{t.source} {t.weights}" if t.weights else "its weight file"
            raise UserError(f"--teacher {t.arch} ({weights}) outputs {t.num_classes} classes, the student "
                            f"{cfg.num_classes} (--train-dir {cfg.train_dir}); online distillation needs the same "
                            f"classes: a teacher trained on them (--teacher-path), or relabel with --class-map and "
                            f"train from the store")
    # float32 teachers (no autocast), as WSLD's, whatever the student's --amp
    return Ensemble(teachers, "mean", 0.5, device)


def mixed_cross_entropy(logits: torch.Tensor, target: torch.Tensor, partner: Optional[torch.Tensor],
                        lam: Optional[float], label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with mixed targets: lambda x own class + (1 - lambda) x partner's."""
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    if partner is None:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)


# ----------------------------------------------------------------------------- one epoch

@dataclass
class Run:
    """The run's state, built once in main() and passed whole to every part of the loop: what each
    step, checkpoint and resume uses besides its batch."""
    cfg: TrainConfig
    info: DistInfo
    index: FolderIndex                 # the training images (their classes go into checkpoints)
    student: nn.Module                 # the network itself
    model: nn.Module                   # what runs the forward: the student, or it under DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: Optional[torch.amp.GradScaler]
    teachers: Optional[Ensemble]
    distill: Optional[DistillRun]      # the distiller with its trained parts (checkpoints, the init stage)
    mean: list[float]
    std: list[float]
    amp: Optional[torch.dtype]
    step_distill: Optional[DistillRun] = None  # what the steps use of it (distilling(): None once nothing is left)


def targets_of(run: Run, batch: dict, pixels: torch.Tensor, partners: Optional[torch.Tensor],
               views: int = 1) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The soft targets of a batch: stored, or the online teachers' on the same pixels (None: hard
    labels); and with a distiller's ``views`` (KDSS: ``pixels`` holds every view, view-major), the
    teacher's logits on every view."""
    seen = None
    if run.teachers is not None:
        soft, outputs = run.teachers(pixels, partners, batch["mix_lam"], batch["mix_bbox"])
        if views > 1:
            seen, soft = outputs[0].clone(), soft[:len(pixels) // views]
    else:
        soft = batch["soft_label"].to(run.info.device, non_blocking=True) if "soft_label" in batch else None
    if soft is not None and run.cfg.keep_topk:
        soft = keep_topk(soft.float(), run.cfg.keep_topk)
    return soft, seen


def view_rows(part: slice, batch: int, views: int) -> slice | torch.Tensor:
    """The rows of a micro-batch in a view-major batch of ``views`` views."""
    if views == 1:
        return part
    return torch.cat([torch.arange(part.start, part.stop) + v * batch for v in range(views)])


def train_step(run: Run, batch: dict) -> torch.Tensor:
    """One optimizer step on this rank's slice; the loss is a mean over the *global* batch, so
    ranks and micro-batches recombine exactly to the one-process, one-step result."""
    cfg, info, device = run.cfg, run.info, run.info.device
    pixels = batch["pixels"].to(device, non_blocking=True)
    partners = None if batch["partners"] is None else batch["partners"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    inputs = replay.slice_inputs(pixels, partners, run.mean, run.std, batch["mix_lam"], batch["mix_bbox"])
    views = checkpoint.unwrap(run.step_distill.distiller).views if run.step_distill else 1
    soft, teacher_logits = targets_of(run, batch, pixels, partners, views)
    teacher_features = run.step_distill.teacher_tap.take().detached() if run.step_distill else None
    if cfg.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    run.optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    share = info.world_size / batch["batch_size"]    # each sample's weight in the global mean
    parts = [slice(*slice_bounds(len(target), k, cfg.gradient_accumulation_steps))
             for k in range(cfg.gradient_accumulation_steps)]  # views, no copies
    parts = [p for p in parts if p.stop > p.start]
    for n, part in enumerate(parts):
        with contextlib.ExitStack() as stack:
            if n + 1 < len(parts) and info.distributed:  # gradients are all-reduced once, at the last part
                for m in (run.model, run.step_distill and run.step_distill.distiller):
                    if hasattr(m, "no_sync"):
                        stack.enter_context(m.no_sync())
            stack.enter_context(torch.autocast(device.type, dtype=run.amp or torch.float32,
                                               enabled=run.amp is not None))
            rows = view_rows(part, len(target), views)
            # the distiller's views ride along; the run's loss takes the batch itself (the first view)
            every_view = run.model(inputs[rows]).float()
            logits = every_view[:part.stop - part.start]
            if soft is not None:
                loss = LOSSES[cfg.loss_type](logits, soft[part], target[part], temperature=cfg.temperature,
                                             ce_weight=cfg.ce_weight, alpha=cfg.alpha)
                if cfg.kd_t2:
                    loss = loss * cfg.temperature ** 2
            else:
                partner = batch["partner_target"]
                loss = mixed_cross_entropy(logits, target[part], None if partner is None else partner.to(device)[part],
                                           batch["mix_lam"], cfg.label_smoothing)
            if run.step_distill is not None:
                mine = Features([f[rows] for f in teacher_features.stages],
                                teacher_logits[rows] if views > 1 else None)
                theirs = run.step_distill.student_tap.take()
                theirs.logits = every_view if views > 1 else None
                where = batch["index"].to(device)[part] if "index" in batch else None
                loss = loss + run.step_distill.weight * run.step_distill.distiller(theirs, mine, where).float()
            loss = loss * ((part.stop - part.start) * share)
            (run.scaler.scale(loss) if run.scaler else loss).backward()
        total += loss.detach()
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    return total / info.world_size  # this rank's share of the global mean loss


def train_one_epoch(run: Run, epoch: int, batches: Iterator[dict], bar,
                    speed: tracking.Throughput) -> tuple[float, int]:
    """Train on one epoch's batches; returns the epoch's mean loss over all ranks and its steps."""
    torch.manual_seed(epoch_seed(run.cfg.seed, epoch))  # dropout & co. restart per epoch too
    loss_sum = torch.zeros((), device=run.info.device)
    seen = steps = 0
    # On a GPU nothing here waits for a step to finish: a step's compute time is the time to queue
    # its work, and queuing blocks once the device is a few steps behind (its launch queue is
    # bounded). Time blocked on the loader is then time the device runs out of work, and the wait
    # for the queued steps at the epoch's end (float() below) counts as compute: the epoch's split
    # holds without a synchronisation per step.
    for batch in speed.timed(batches):
        steps += 1
        loss = train_step(run, batch)
        loss_sum += loss * batch["batch_size"]
        seen += batch["batch_size"]
        speed.step_done(batch["batch_size"])
        bar.update(batch["batch_size"])
        if run.cfg.print_freq and steps % run.cfg.print_freq == 0 and run.info.is_main:  # this rank's loss
            bar.write(f"epoch {epoch + 1} step {steps}: loss {float(loss):.4f} lr "
                      f"{run.optimizer.param_groups[0]['lr']:.4g} {speed.rate():.1f} img/s")
    if run.info.distributed:
        dist.all_reduce(loss_sum)
    loss = float(loss_sum) / max(seen, 1)
    speed.epoch_done()
    if not math.isfinite(loss):  # before this epoch's checkpoint: the last one written stays good
        raise UserError(f"epoch {epoch + 1}: the training loss is {loss} (diverged, or the store's labels or "
                        f"normalization are broken); stopped before writing this epoch's checkpoint")
    return loss, steps


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, channels_last: bool,
             amp: Optional[torch.dtype]) -> dict[str, float]:
    """top-1, top-5, NLL and ECE of the model on the validation loader."""
    model.eval()
    metrics = SplitMetrics()
    for logits, targets in evaluation.batches(model, loader, device, channels_last=channels_last, amp=amp):
        metrics.update(logits, targets)
    model.train()
    return metrics.result()


# ----------------------------------------------------------------------------- set-up

def validation_loader(cfg: TrainConfig, train_index: FolderIndex, store: Optional[Store], mean, std,
                      pin: bool) -> Optional[DataLoader]:
    if not cfg.val_dir:
        return None
    # every image decoded now: a bad one must stop the run before training, not at its first evaluation
    val_index, bad = drop_unreadable(scan_image_folder(cfg.val_dir, "--val-dir"))
    if bad and not cfg.skip_bad_images:
        raise UserError(f"--val-dir {cfg.val_dir}: {len(bad)} images cannot be read (first: {bad[0]}); fix or "
                        f"remove them, or pass --skip-bad-images to leave them out")
    if bad:
        print(f"train: --skip-bad-images: left out {len(bad)} unreadable validation images: "
              + ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else ""), file=sys.stderr, flush=True)
    if val_index.classes != train_index.classes:
        raise UserError(f"--val-dir {cfg.val_dir}: class folders differ from --train-dir "
                        f"{cfg.train_dir} ({len(val_index.classes)} vs {len(train_index.classes)} classes "
                        f"or other names); accuracy would be meaningless")
    val_classes = None if store is None else class_index_of(store.manifest, val_index.classes)
    return DataLoader(IndexedImageFolder(val_index, eval_transform(cfg.input_size, cfg.crop_pct, mean, std),
                                         val_classes),
                      batch_size=cfg.val_batch_size, shuffle=False,
                      num_workers=min(cfg.workers, 2) if cfg.val_workers is None else cfg.val_workers, pin_memory=pin)


def resume(run: Run) -> tuple[int, bool]:
    """(first epoch, resumed?): a checkpoint's state restored, or the schedule moved to --start-epoch."""
    cfg, info, teachers = run.cfg, run.info, run.teachers
    distiller = run.distill.distiller if run.distill else None
    files.ensure_dir(cfg.output_dir, "--output-dir")
    if info.is_main:
        files.lock_dir(cfg.output_dir, "--output-dir", "another run is training into this folder; wait for it to "
                       "finish or use another --output-dir")
        files.remove_stale_tmp(cfg.output_dir)  # a checkpoint write cut short by a kill
    path = checkpoint.resume_path(cfg.resume, cfg.output_dir)
    own = os.path.join(cfg.output_dir, checkpoint.CHECKPOINT)
    if os.path.isfile(own) and not (path and same_path(path, own)):
        raise UserError(f"--output-dir {cfg.output_dir} holds the checkpoint of another run; pass --resume auto "
                        f"to continue it, or choose another --output-dir (nothing is overwritten)")
    if path:
        ckpt = checkpoint.read_for_resume(path, cfg, RESUME_MUST_MATCH)
        try:
            run.student.load_state_dict(ckpt["model"])
            if distiller is not None:
                distiller.load_state_dict(ckpt["distiller"])
            if teachers is not None and cfg.teacher_mode == "train":  # running statistics it updated
                teachers.load_buffers(ckpt["teacher_buffers"])
            run.optimizer.load_state_dict(ckpt["optimizer"])
            run.scheduler.load_state_dict(ckpt["scheduler"])
            if run.scaler is not None and ckpt.get("scaler"):
                run.scaler.load_state_dict(ckpt["scaler"])
            torch.set_rng_state(ckpt["rng"]["torch"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--resume {path}: its state does not fit this run ({first[:200]})") from None
        return ckpt["epoch"], True
    if cfg.resume and info.is_main:
        print(f"train: --resume {cfg.resume}: no checkpoint in {cfg.output_dir}, starting afresh", flush=True)
    first = cfg.first_pass()
    for _ in range(first):  # the schedule starts where the run starts
        run.scheduler.step()
    return first, False


def distill_init(run: Run) -> None:
    """The distiller's init stage, then a checkpoint at epoch 0: --resume continues after it."""
    cfg, info = run.cfg, run.info
    pin = info.device.type == "cuda"
    epochs = hard_label_epochs(cfg, run.index, range(cfg.distill_init_epochs), info, pin, Stream.DISTILL_INIT)
    init_stage(run.distill, cfg, run.student, run.teachers, epochs, info, run.mean, run.std,
               lambda line: print(line, flush=True) if info.is_main else None)
    if info.is_main:
        save_checkpoint(run, 0)


def save_checkpoint(run: Run, epoch: int, filename: str = checkpoint.CHECKPOINT) -> None:
    """--output-dir/``filename`` after ``epoch`` epochs (0: after a distiller's init stage); with
    --teacher-mode train also the teachers' running statistics, which that mode updates."""
    cfg, distill, teachers = run.cfg, run.distill, run.teachers
    for what, part in (("student", run.student), ("distiller", distill.distiller if distill else None)):
        for name, value in (checkpoint.unwrap(part).state_dict().items() if part is not None else ()):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise UserError(f"epoch {epoch}: the {what}'s {name} is not finite (training diverged: lower the "
                                f"learning rate); this checkpoint is not written, the last one written stays good")
    extra = {"distiller": checkpoint.unwrap(distill.distiller).state_dict()} if distill else {}
    if teachers is not None and cfg.teacher_mode == "train":
        extra["teacher_buffers"] = teachers.buffers()
    checkpoint.save(os.path.join(cfg.output_dir, filename), run.student, run.optimizer, run.scheduler,
                    run.scaler, epoch, cfg, SECRETS, run.mean, run.std, run.index.classes, extra)


def store_notes(cfg: TrainConfig, store: Optional[Store]) -> list[str]:
    """What a user should know about how this store's labels meet this run: pruned steps cycled,
    a residual fill exact at another temperature than the loss's."""
    if store is None or cfg.per_image:
        return []
    notes, m = [], store.manifest
    if store.settings.label_keep < 1.0:
        notes.append(f"the store labels {len(store.jobs(store.settings.epochs))} of "
                     f"{store.settings.epochs * store.settings.batches_per_epoch} steps (--label-keep "
                     f"{store.settings.label_keep:g}); each step replays the kept ones in turn")
    fill_t = topk.fill_temperature(m)
    if m.get("topk_fill") and cfg.temperature and abs(cfg.temperature - fill_t) > 1e-9:
        notes.append(f"the store's residual fill keeps the left-out classes' probability exactly at T = {fill_t:g}, "
                     f"not at this run's -T {cfg.temperature:g} (the error: docs/stores.md); for an exact one, "
                     f"relabel or convert with --topk-fill-temperature {cfg.temperature:g}")
    return notes


def describe(cfg: TrainConfig, store: Optional[Store], index: FolderIndex) -> tuple[str, int, str]:
    """(labels, images per epoch, batch) as the log and results.json name them; per-image counts are crops
    (per pass: --num-crops of every image)."""
    if cfg.per_image:
        batch = f"{cfg.batch_size} images x {cfg.num_crops} crops"
        if cfg.recipe == "fkd":
            batch += (f", train_FKD.py's epochs: {sum(c > 1 for _, c in cfg.passes)} passes of {cfg.num_crops}, "
                      f"{sum(c == 1 for _, c in cfg.passes)} single-crop")
        return (f"soft ({cfg.loss_type}, FKD {store.settings.label_format})", len(index) * cfg.num_crops, batch)
    if store is not None:
        return f"soft ({cfg.loss_type})", store.settings.num_samples, f"{cfg.batch_size}"
    labels = (f"online KD from {cfg.teacher} ({cfg.loss_type})" if cfg.teacher else
              "hard" + (f" (ls {cfg.label_smoothing})" if cfg.label_smoothing else ""))
    return labels, len(index), f"{cfg.batch_size}"


def log_epoch(run: Run, epoch: int, n_steps: int, train_loss: float, started: float,
              val_loader: Optional[DataLoader], metrics_path: str, tracker, bar, times: dict) -> dict:
    """``epoch``: the epochs done (train_FKD.py's count with --recipe fkd); ``times``: where the time of the
    epochs since the previous row went (Throughput.lap())."""
    row = {"epoch": epoch, "step": n_steps, "train_loss": train_loss,
           "lr": run.optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - started, 2), **times}
    if val_loader is not None:
        row.update(evaluate(run.student, val_loader, run.info.device, run.cfg.channels_last, run.amp))
    with open(metrics_path, "a") as f:
        f.write(json.dumps(row) + "\n")
    tracker.log(row, n_steps)
    busy = max(times["data_wait_s"] + times["compute_s"], 1e-9)
    bar.write(f"epoch {epoch}: train loss {train_loss:.4f}"
              + f" | data wait {times['data_wait_s']:.2f}s ({100 * times['data_wait_s'] / busy:.0f}%), "
                f"compute {times['compute_s']:.2f}s"
              + (" | val top-1 {top1:.2f}% top-5 {top5:.2f}% nll {nll:.3f} ece {ece:.2f}%".format(**row)
                 if "top1" in row else ""))
    return row


def read_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl this run wrote (none yet: [])."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def upstream_of(cfg: TrainConfig) -> str:
    """The upstream command whose reported top-1 this run's recipe mirrors (UPSTREAM_REPORTS)."""
    return "wsld" if cfg.recipe == "ours" and cfg.loss_type == "wsld" else cfg.recipe


def crossed(done: int, before: int, interval: int) -> bool:
    """Whether the epochs ``before`` .. ``done`` reached a multiple of ``interval``."""
    return done // interval > before // interval


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


# ----------------------------------------------------------------------------- main

def main(args: argparse.Namespace, origin: Optional[tracking.StartUp] = None) -> None:
    """``origin``: where the logged start-up begins (default: this call)."""
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
        return
    check_flags(args)
    info = distributed.setup(args.device)
    # the same images relabel left out with --skip-bad-images, so the same fingerprint
    with distributed.together(info):  # a node that refuses its inputs stops every node, in one line each
        train_index, _ = scan_images(args.train_dir, "--train-dir", args.skip_bad_images, info.is_main, "train")
        cfg, store = resolve(args, train_index, info, loader_workers(args.workers, info.device.type == "cuda"))
    distributed.require_same(info, f"{cfg.label_source} {train_index.fingerprint()}".encode(),
                             f"train on other images (--train-dir {cfg.train_dir}) or other labels")

    torch.manual_seed(cfg.seed)
    student = models.create_model(cfg.model, cfg.num_classes).to(info.device)
    mean, std = ((list(store.settings.mean), list(store.settings.std)) if store is not None
                 else models.default_normalization(cfg.model, student))
    teachers = online_teachers(cfg, info.device)
    if cfg.channels_last:
        student = student.to(memory_format=torch.channels_last)
    distill = build_distiller(cfg, student, teachers, info.device, len(train_index), train_index.targets)
    trained = student if distill is None else nn.ModuleList([student, distill.distiller])  # one optimizer
    optimizer, scheduler = build_optimizer(trained, cfg)
    amp = precision.amp_dtype(cfg.amp, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if amp == torch.float16 else None
    if teachers is not None:  # after the distiller's probe forward, which must not touch running statistics
        teachers.set_mode(cfg.teacher_mode)
    run = Run(cfg, info, train_index, student, student, optimizer, scheduler, scaler, teachers, distill, mean, std,
              amp)
    first_epoch, resumed = resume(run)
    require_same_start(info, first_epoch, "--output-dir", cfg.output_dir)
    if info.is_main:
        files.atomic_write_bytes(os.path.join(cfg.output_dir, CONFIG_FILE), config_of(given, SECRETS).encode())

    if distill is not None and cfg.distill_init_epochs and not resumed:
        distill_init(run)

    model: nn.Module = student
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    if info.distributed:
        model = DistributedDataParallel(student, device_ids=device_ids)
        if distill is not None and any(p.requires_grad for p in distill.distiller.parameters()):
            distill.distiller = DistributedDataParallel(distill.distiller, device_ids=device_ids,
                                                        broadcast_buffers=distill.distiller.broadcast_buffers)
    if cfg.compile:
        model = torch.compile(model)
    pin = info.device.type == "cuda"
    val_loader = validation_loader(cfg, train_index, store, mean, std, pin) if info.is_main else None
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if os.path.islink(metrics_path):  # appends would follow it out of the folder
        raise UserError(f"--output-dir {cfg.output_dir}: metrics.jsonl is a symbolic link; refusing to write "
                        f"through it")
    if info.is_main and not resumed:
        open(metrics_path, "w").close()
    tracker = tracking.Tracker(cfg.wandb_mode if info.is_main else "disabled", cfg.wandb_project,
                               os.path.basename(os.path.abspath(cfg.output_dir)), cfg.output_dir,
                               provenance.args_dict(cfg, SECRETS))
    epochs = (store_epochs(cfg, store, train_index, first_epoch, info, pin) if store is not None
              else hard_label_epochs(cfg, train_index, range(first_epoch, cfg.epochs), info, pin))
    labels, images_per_epoch, batch_desc = describe(cfg, store, train_index)
    passes = cfg.passes
    done = passes[first_epoch][0] if first_epoch < len(passes) else cfg.epochs
    if info.is_main:
        print(f"train: {cfg.model} on {len(train_index)} images, {labels} labels, epochs {done}.."
              f"{cfg.epochs}, batch {batch_desc}" + (f" on {info.world_size} ranks" if info.distributed else "")
              + f", input {cfg.input_size}px, device {info.device}", flush=True)
        for note in store_notes(cfg, store):
            print(f"note: {note}", flush=True)

    run.model, run.step_distill = model, distilling(distill)
    total = (len(train_index) * sum(crops for _, crops in passes[first_epoch:]) if cfg.per_image
             else images_per_epoch * (len(passes) - first_epoch))
    bar = tracking.progress(total, "train",
                            disable=cfg.no_progress or not info.is_main)
    student.train()
    started, speed, n_steps, result = time.time(), tracking.Throughput(origin), 0, {}
    # rows of the epochs a resumed run starts after (a row of an epoch whose checkpoint a kill cut short is redone)
    scores = BestAndLast([r for r in read_rows(metrics_path) if r["epoch"] <= done] if info.is_main else [])
    for epoch, batches in epochs:
        train_loss, steps = train_one_epoch(run, epoch, batches, bar, speed)
        n_steps += steps
        scheduler.step()
        first, crops = passes[epoch]
        done = first + (crops if cfg.recipe == "fkd" else 1)  # epochs done; a pass may count as several
        bar.set_postfix(epoch=done, loss=f"{train_loss:.4f}", refresh=False)
        last = epoch + 1 == len(passes)
        if info.is_main and (crossed(done, first, cfg.eval_interval) or last):
            result = log_epoch(run, done, n_steps, train_loss, started, val_loader, metrics_path, tracker, bar,
                               speed.lap())
            if scores.add(result) and cfg.save_best:
                save_checkpoint(run, epoch + 1, BEST_CHECKPOINT)
        if info.is_main and (crossed(done, first, cfg.save_interval) or last):
            save_checkpoint(run, epoch + 1)
    bar.close()
    end = time.time()
    if info.is_main:
        result.update({"model": cfg.model, "labels": labels, "fkd_path": cfg.fkd_path,
                       "train_dir": cfg.train_dir, "epochs": cfg.epochs, "steps": n_steps,
                       "train_time_s": round(end - started, 2), "steady_images_per_s": round(speed.rate(), 2),
                       "startup_s": round(speed.startup(), 2), "startup_since": origin.since,
                       "train_s": round(speed.busy, 2), "data_wait_s": round(speed.wait, 2),
                       "compute_s": round(speed.compute, 2), **scores.summary(upstream_of(cfg))})
        files.atomic_write_json(os.path.join(cfg.output_dir, "results.json"), result)
        print(f"train: done in {time.perf_counter() - origin.at:.1f}s since {origin.since} (start-up to the first "
              f"step {speed.startup():.2f}s, then {speed.rate():.1f} img/s; data wait {speed.wait:.1f}s, compute "
              f"{speed.compute:.1f}s)" + scores.line(upstream_of(cfg)),
              flush=True)
    tracker.finish()
    distributed.cleanup(info)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(parse_with_config(get_args_parser()), tracking.StartUp.of_process()))


if __name__ == "__main__":
    cli()
