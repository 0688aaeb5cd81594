"""The trainer's settings, resolved once from the flags and the store into an immutable
``TrainConfig``: unset flags take the store's values (or the hard-label defaults), flags that
contradict the store are refused, and every value is checked before any work starts."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from softlabel import files, replay
from softlabel.data import FolderIndex
from softlabel.distill import DISTILLERS
from softlabel.distributed import DistInfo
from softlabel.errors import UserError, optional_import
from softlabel.stores import Request, Store, open_store
from softlabel.stores.base import same_path
from softlabel.stores.base import DEFAULT_CROPS_PER_STEP
from softlabel.stores.schema import MAX_INPUT_SIZE
from softlabel.streams import check_seed
from softlabel.teachers import file_sha256, split_list
from softlabel.training.losses import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, PROBABILITY_LOSSES
from softlabel.training.schedules import fkd_passes

HARD_LABEL_DEFAULTS = {"batch_size": 1024, "epochs": 300, "input_size": 224, "min_scale_crops": 0.08,
                       "max_scale_crops": 1.0}
# What a run takes when the flags are not given. "fkd" (the default with --softlabel_path): FKD's
# train_FKD.py (szq0214/FKD, FKD/train_FKD.py): its argparse defaults -a resnet50, --lr 0.1,
# --momentum 0.9, --wd 1e-4, and torch.optim.SGD(model.parameters(), ...), so decay on every
# parameter. "ours": PRISM's trainer's (validate/train_FKD_parallel.py of Brian-Moser/prism).
RECIPES = {
    "fkd": {"model": "resnet50", "sgd": True, "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
            "weight_decay_norms": True},
    "ours": {"model": "resnet18", "sgd": False, "learning_rate": 1.024, "momentum": 0.875, "weight_decay": 3e-5,
             "weight_decay_norms": False},
    # RepDistiller's train_student.py (HobbitLong/RepDistiller): --model_s resnet8, --learning_rate 0.05 (its
    # 0.01 for MobileNetV2 and the ShuffleNets is the front end's), --momentum 0.9, --weight_decay 5e-4 on every
    # parameter of optim.SGD(trainable_list.parameters(), ...)
    "repdistiller": {"model": "resnet8", "sgd": True, "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                     "weight_decay_norms": True},
}
# ... and its --batch_size 64, --epochs 240, CIFAR's 32 px, --lr_decay_epochs 150,180,210 (helper/util.py's
# adjust_learning_rate: x --lr_decay_rate 0.1 from the epoch after each) and RandomCrop(32, padding=4) + flip
REPDISTILLER_HARD_LABEL_DEFAULTS = {"batch_size": 64, "epochs": 240, "input_size": 32}
REPDISTILLER_MILESTONES = (150, 180, 210)
TRAIN_CROPS = ("resized", "padded")
# train_FKD.py's --epochs 300, -b 1024 (crops per step: it loads ceil(b / --num_crops) images) and,
# without --cos, adjust_learning_rate's x0.1 at each of --schedule 120 240.
FKD_EPOCHS, FKD_CROPS_PER_STEP, FKD_MILESTONES = 300, 1024, (120, 240)


def match() -> Any:
    """A setting a resumed run must share with its checkpoint, or it could not continue exactly."""
    return field(metadata={"resume": "match"})


def free() -> Any:
    """A setting a resumed run may change: where it runs, how fast, what it logs, how long."""
    return field(metadata={"resume": "free"})


@dataclass(frozen=True)
class TrainConfig:
    # data
    train_dir: str = free()
    val_dir: Optional[str] = free()
    fkd_path: Optional[str] = free()       # a store (None: hard labels or online KD)
    fkd_layout: str = match()              # "batch" or "per-image"
    soft_label_type: Optional[str] = match()
    num_crops: Optional[int] = match()     # per-image: stored crops of each image per epoch
    workers: int = free()
    skip_bad_images: bool = free()
    cache_images: int = free()
    input_size: int = match()
    train_crop: Optional[str] = match()    # online crops: resized (RandomResizedCrop) or padded (RepDistiller's
                                           # RandomCrop(size, padding=4)); None: a store's
    drop_last: bool = match()              # online crops: an epoch's last partial batch left out (WSLD)
    min_scale_crops: float = match()
    max_scale_crops: float = match()
    crop_pct: float = free()
    crop_interpolation: str = match()      # FKD's own files: bilinear (its trainer) or bicubic (its teacher)
    mix_type: str = match()
    mixup: float = match()
    cutmix: float = match()
    mixup_cutmix: bool = match()           # FKD's --mixup_cutmix: online mixup or cutmix of per-image crops and labels
    mixup_cutmix_prob: float = match()
    mixup_switch_prob: float = match()
    fkd_seed: Optional[int] = match()
    # model
    model: str = match()
    num_classes: int = match()
    channels_last: bool = free()
    compile: bool = free()
    # optimization
    recipe: str = match()                  # fkd: train_FKD.py's defaults and epoch loop (RECIPES, fkd_passes); ours
    batch_size: int = match()              # global: all ranks together
    gradient_accumulation_steps: int = match()
    epochs: int = free()
    start_epoch: int = free()
    cos: bool = match()
    lr_schedule: str = match()             # softlabel/training/schedules.py; --cos: prism-cos
    lr_step_size: int = match()
    lr_milestones: tuple[int, ...] = match()  # --lr-schedule multistep
    lr_gamma: float = match()
    warmup_epochs: int = match()
    sgd: bool = match()
    learning_rate: float = match()
    momentum: float = match()
    weight_decay: float = match()
    nesterov: bool = match()
    weight_decay_norms: bool = match()
    adamw_lr: float = match()
    adamw_weight_decay: float = match()
    amp: str = match()
    # loss
    loss_type: str = match()
    temperature: float = match()
    ce_weight: Optional[float] = match()   # None: kd's 1 - alpha
    alpha: float = match()
    kd_t2: bool = match()
    keep_topk: Optional[int] = match()
    label_smoothing: float = match()
    # online distillation
    teacher: Optional[str] = match()
    teacher_path: Optional[str] = free()
    teacher_source: Optional[str] = free()
    teacher_weights: Optional[str] = free()  # published weights' names (None: IMAGENET1K_V1 / timm's default tag)
    teacher_mode: str = match()            # eval, or train (WSLD's: batch norm on batch statistics)
    distiller: Optional[str] = match()     # softlabel/distill: a feature loss with the online teacher
    distill_weight: Optional[float] = match()  # its weight (None: the method's default)
    feat_layers: Optional[str] = match()   # module names of the student's stages (None: layer1, layer2, ...)
    teacher_feat_layers: Optional[str] = match()
    distill_init_epochs: int = match()     # AB, FT: epochs of their init stage (resolved: the method's, else 0)
    distill_init_lr: Optional[float | str] = match()  # its SGD rate (None: the method's; auto: capped)
    # run
    output_dir: str = free()
    seed: int = match()
    eval_interval: int = free()
    save_interval: int = free()
    save_best: bool = free()
    print_freq: Optional[int] = free()
    val_batch_size: int = free()
    val_workers: Optional[int] = free()
    resume: Optional[str] = free()
    device: Optional[str] = free()
    wandb_mode: str = free()
    wandb_project: str = free()
    no_progress: bool = free()
    label_source: str = match()            # what the labels are (hard, a store's identity, an online teacher)

    @property
    def per_image(self) -> bool:
        return self.fkd_path is not None and self.fkd_layout == "per-image"

    @property
    def passes(self) -> list[tuple[int, int]]:
        """(first epoch, crops per image) of each pass over the images: train_FKD.py's loop with
        --recipe fkd (a pass of N crops counts as N epochs, the last ones single-crop), else one
        pass per epoch."""
        if self.recipe == "fkd":
            return fkd_passes(self.epochs, self.num_crops)
        return [(e, self.num_crops or 1) for e in range(self.epochs)]

    def first_pass(self) -> int:
        """The pass --start-epoch starts: the first that begins at or after it."""
        return next((p for p, (first, _) in enumerate(self.passes) if first >= self.start_epoch), len(self.passes))


FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# The labels first: a resume on other labels is named as such, whatever else differs too.
RESUME_MUST_MATCH = tuple(sorted((f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"] == "match"),
                                 key=lambda name: name != "label_source"))


def check_flags(args: argparse.Namespace) -> None:
    """What the flags alone can tell, before any file is read."""
    if not args.train_dir:
        raise UserError("--train-dir DIR is required (or train_FKD.py's DATA, a folder holding train/ and val/)")
    check_ranges(vars(args))
    check_seed(args.seed, "--seed")
    if getattr(args, "wandb_mode", "disabled") != "disabled":  # before an init stage or a checkpoint is written
        optional_import("wandb", "wandb", f"--wandb-mode {args.wandb_mode}")
    if args.fkd_seed is not None:
        check_seed(args.fkd_seed, "--fkd-seed")
    files.refuse_output_inside(args.output_dir, "--output-dir", [
        ("--train-dir", args.train_dir), ("--val-dir", args.val_dir), ("--fkd-path", args.fkd_path),
        ("--softlabel_path", args.softlabel_path)])
    if args.softlabel_path:
        if args.fkd_path and not same_path(args.fkd_path, args.softlabel_path):
            raise UserError(f"--softlabel_path {args.softlabel_path} and --fkd-path {args.fkd_path} name two "
                            f"stores; give one")
        if args.fkd_layout == "batch":
            raise UserError("--softlabel_path is FKD's per-image store; with --fkd-layout batch use --fkd-path")
    layout = layout_of(args)
    has_store = bool(args.fkd_path or args.softlabel_path)
    if getattr(args, "teacher_weights", None) and not args.teacher:
        raise UserError("--teacher-weights names an online teacher's published weights: give --teacher ARCH")
    check_recipe_flags(args, layout)
    if has_store and args.teacher:
        raise UserError("--teacher runs a teacher online; --fkd-path reads stored labels: choose one")
    if getattr(args, "teacher_mode", "eval") != "eval" and not args.teacher:
        raise UserError(f"--teacher-mode {args.teacher_mode} applies to an online --teacher")
    check_distill_flags(args)
    if args.soft_label_type and layout != "per-image":
        raise UserError("--soft_label_type applies to FKD per-image stores (--softlabel_path or "
                        "--fkd-layout per-image)")
    if layout == "per-image" and not has_store:
        raise UserError("--fkd-layout per-image needs --fkd-path (an FKD store)")
    if args.num_crops is not None and layout != "per-image":
        raise UserError("--num-crops applies to --fkd-layout per-image (a batch store fixes one crop per image "
                        "and step)")
    if args.crop_interpolation != "bilinear" and layout != "per-image":
        raise UserError("--crop-interpolation applies to FKD's own per-image files (--softlabel_path)")
    if args.kd_t2 and loss_type_of(args) != "kl":
        raise UserError(f"--kd-t2 applies to --loss-type kl (kd, wsld and dist already scale by T^2), "
                        f"not {loss_type_of(args)}")
    check_schedule_flags(args)
    if args.keep_topk and loss_type_of(args) not in PROBABILITY_LOSSES:
        raise UserError(f"--keep-topk applies to losses on probabilities ({', '.join(PROBABILITY_LOSSES)}), "
                        f"not --loss-type {loss_type_of(args)}")


def check_distill_flags(args: argparse.Namespace) -> None:
    """--distiller and its flags: one teacher to compare with, its init stage where it has one."""
    if args.distiller and (not args.teacher or len(split_list(args.teacher)) != 1):
        raise UserError(f"--distiller {args.distiller} compares the student's features with one teacher's: "
                        f"give --teacher ARCH (one) and --teacher-path")
    if (args.distill_weight is not None or args.feat_layers or args.teacher_feat_layers) and not args.distiller:
        raise UserError("--distill-weight / --feat-layers / --teacher-feat-layers apply to --distiller")
    if args.distill_init_epochs is not None or args.distill_init_lr is not None:
        if not args.distiller or not DISTILLERS[args.distiller].init_epochs:
            raise UserError("--distill-init-epochs / --distill-init-lr apply to a --distiller with an init stage: "
                            + ", ".join(k for k, v in sorted(DISTILLERS.items()) if v.init_epochs))
        if args.distill_init_epochs is not None and args.distill_init_epochs < 1 and \
                DISTILLERS[args.distiller].init_required:
            raise UserError(f"--distill-init-epochs {args.distill_init_epochs}: --distiller {args.distiller} needs "
                            f"its init stage (it trains the teacher's self-supervision head); give 1 or more")


def check_schedule_flags(args: argparse.Namespace) -> None:
    """--cos, --lr-schedule, --lr-milestones and train_FKD.py's --schedule agree."""
    cos = cos_schedule(args)
    if args.cos and args.lr_schedule not in (None, cos):
        raise UserError(f"--cos is {'train_FKD.py' if cos == 'cosine' else 'PRISM'}'s --lr-schedule {cos}; it "
                        f"contradicts --lr-schedule {args.lr_schedule}")
    if args.lr_milestones is not None and args.schedule is not None:
        raise UserError("--lr-milestones and --schedule (train_FKD.py's spelling) both set the milestones; give one")
    multistep = lr_schedule_of(args) == "multistep"
    if args.lr_milestones is not None and not multistep:
        raise UserError("--lr-milestones applies to --lr-schedule multistep")
    if multistep and args.lr_milestones is None and args.schedule is None and recipe_of(args) == "ours":
        raise UserError("--lr-schedule multistep needs --lr-milestones E[,E]")


# Optimizer and loss numbers: finite, and where training means something (flag, key, test, range).
NUMBER_RANGES = (
    ("-lr/--lr", "learning_rate", lambda v: 0 <= v <= 100, "in [0, 100]"),  # 0: the weights stay put
    ("--adamw-lr", "adamw_lr", lambda v: 0 <= v <= 100, "in [0, 100]"),
    ("--distill-init-lr", "distill_init_lr", lambda v: v == "auto" or 0 < v <= 100, "in (0, 100], or auto"),
    ("--momentum", "momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("--weight-decay", "weight_decay", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("--adamw-weight-decay", "adamw_weight_decay", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("--ce-weight", "ce_weight", lambda v: 0 <= v <= 1e4, "in [0, 10000]"),
    ("--alpha", "alpha", lambda v: 0 <= v <= 1e4, "in [0, 10000]"),
    ("--distill-weight", "distill_weight", lambda v: 0 <= v <= 1e4, "in [0, 10000]"),
    ("--label-smoothing", "label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("--lr-gamma", "lr_gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
    # the Beta(alpha, alpha) of a mix: alpha > 0 (relabel checks its flags alike)
    ("--mixup", "mixup", lambda v: 0 < v <= 1e4, "a Beta parameter in (0, 10000]"),
    ("--cutmix", "cutmix", lambda v: 0 < v <= 1e4, "a Beta parameter in (0, 10000]"),
    ("-T/--temperature", "temperature", lambda v: 1e-3 <= v <= 1e3, "in [0.001, 1000]"),
)


def init_lr_value(text: str) -> float | str:
    """--distill-init-lr: a rate, or auto."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a learning rate or auto, got {text!r}") from None


def check_ranges(values: dict) -> None:
    """Counts, sizes and optimizer/loss numbers in range (flags as given, and again once resolved)."""
    for flag, key, ok, where in NUMBER_RANGES:
        v = values.get(key)
        if v is not None and not ((isinstance(v, str) or math.isfinite(v)) and ok(v)):
            raise UserError(f"{flag} must be {where}, got {v}")
    for flag, key in (("-b/--batch-size", "batch_size"), ("--epochs", "epochs"), ("--input-size", "input_size"),
                      ("--eval-interval", "eval_interval"), ("--save-interval", "save_interval"),
                      ("-p/--print-freq", "print_freq"), ("--val-batch-size", "val_batch_size"),
                      ("--num-classes", "num_classes"), ("--gradient-accumulation-steps", "gradient_accumulation_steps"),
                      ("--keep-topk", "keep_topk"), ("--num-crops", "num_crops"), ("--lr-step-size", "lr_step_size")):
        if values[key] is not None and values[key] < 1:
            raise UserError(f"{flag} must be at least 1, got {values[key]}")
    for flag, key in (("-j/--workers", "workers"), ("--cache-images", "cache_images"), ("--val-workers", "val_workers"),
                      ("--distill-init-epochs", "distill_init_epochs"),
                      ("--warmup-epochs", "warmup_epochs"), ("--start-epoch", "start_epoch")):
        if values[key] is not None and values[key] < 0:
            raise UserError(f"{flag} must be >= 0, got {values[key]}")
    if values["input_size"] is not None and values["input_size"] > MAX_INPUT_SIZE:
        raise UserError(f"--input-size {values['input_size']}: at most {MAX_INPUT_SIZE} px")
    if not 0 < values["crop_pct"] <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {values['crop_pct']}")
    epochs = values["epochs"]
    if epochs is not None and values["start_epoch"] >= epochs:
        raise UserError(f"--start-epoch {values['start_epoch']} leaves nothing to train in --epochs {epochs}")
    if epochs is not None and values["warmup_epochs"] >= epochs:
        raise UserError(f"--warmup-epochs {values['warmup_epochs']} must be fewer than --epochs {epochs}")


def check_recipe_flags(args: argparse.Namespace, layout: str) -> None:
    if recipe_of(args) == "fkd" and layout != "per-image":
        raise UserError("--recipe fkd is train_FKD.py's recipe for FKD's per-image labels: give --softlabel_path DIR")
    stored = bool(args.fkd_path or args.softlabel_path)
    if recipe_of(args) == "repdistiller" and stored:
        raise UserError("--recipe repdistiller is RepDistiller's train_student.py recipe: online distillation "
                        "(--teacher) or hard labels, not a label store")
    if getattr(args, "train_crop", None) and stored:
        raise UserError(f"--train-crop {args.train_crop} crops online; a store's crops are the ones it holds")
    if getattr(args, "drop_last", False) and stored:
        raise UserError("--drop-last applies to online crops; a store's steps are the ones it holds")
    if args.mixup_cutmix and layout != "per-image":
        raise UserError("--mixup_cutmix mixes FKD's per-image crops and labels online (train_FKD.py); a batch "
                        "store holds its mix, and hard labels mix with --mix-type")
    if args.sgd and args.optimizer == "adamw":
        raise UserError("--sgd contradicts --optimizer adamw")
    if args.schedule is not None and lr_schedule_of(args) != "multistep":
        if not (args.cos and recipe_of(args) == "fkd" and not args.lr_schedule):
            raise UserError("--schedule (train_FKD.py's milestones) applies to --lr-schedule multistep")
        print("note: --schedule is not used with --cos (train_FKD.py's cosine ignores it too)", flush=True)
    for flag, key in (("--mixup_cutmix_prob", "mixup_cutmix_prob"), ("--mixup_switch_prob", "mixup_switch_prob")):
        if not 0 <= getattr(args, key) <= 1:
            raise UserError(f"{flag} must be in [0, 1], got {getattr(args, key)}")


def data_folder(args: argparse.Namespace) -> None:
    """train_FKD.py's positional DATA (a folder holding train/ and val/) as --train-dir DATA/train
    and, when DATA/val exists, --val-dir DATA/val."""
    if not args.data:
        return
    if args.train_dir or args.val_dir:
        raise UserError(f"DATA {args.data} (train_FKD.py's folder of train/ and val/) and --train-dir/--val-dir "
                        f"name the images twice; give one")
    train, val = os.path.join(args.data, "train"), os.path.join(args.data, "val")
    if not os.path.isdir(train):
        raise UserError(f"DATA {args.data}: no train/ folder in it (train_FKD.py's DATA holds train/ and val/)")
    args.train_dir, args.val_dir = train, val if os.path.isdir(val) else None
    if not args.softlabel_path and not args.evaluate:
        raise UserError(f"DATA {args.data}: train_FKD.py trains from FKD's labels; give --softlabel_path DIR "
                        f"(its default ./soft_label is not assumed), or --train-dir for hard labels")


def recipe_of(args: argparse.Namespace) -> str:
    """--recipe, else fkd with FKD's --softlabel_path (train_FKD.py's flag brings its recipe), else ours."""
    return args.recipe or ("fkd" if args.softlabel_path else "ours")


def cos_schedule(args: argparse.Namespace) -> str:
    """What --cos means: train_FKD.py's cosine under --recipe fkd, else PRISM's."""
    return "cosine" if recipe_of(args) == "fkd" else "prism-cos"


def recipe_settings(args: argparse.Namespace) -> dict:
    """The optimizer's settings: the flags given, else the recipe's (RECIPES)."""
    defaults = RECIPES[recipe_of(args)]
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()
              if k != "sgd"}
    values["sgd"] = True if args.sgd else (args.optimizer == "sgd") if args.optimizer else defaults["sgd"]
    values["recipe"] = recipe_of(args)
    return values


def loss_type_of(args: argparse.Namespace) -> str:
    """--loss-type, else FKD's soft cross-entropy with --softlabel_path or --recipe fkd (train_FKD.py),
    else the cross-entropy alone beside a --distiller (RepDistiller's -a 0; kdss: kd, SSKD's 0.1 CE +
    0.9 KD at T 4), else kl."""
    fkd = args.softlabel_path or args.recipe == "fkd"
    return args.loss_type or ("soft_ce" if fkd else DISTILLERS[args.distiller].loss_type if args.distiller
                              else "kl")


def temperature_of(args: argparse.Namespace, loss_type: str) -> float:
    """-T, else FKD's --temp 1.0 with --softlabel_path or --recipe fkd, else the loss's default (3; wsld 2; kd 4)."""
    if args.temperature:
        return args.temperature
    return 1.0 if args.softlabel_path or args.recipe == "fkd" else DEFAULT_TEMPERATURE.get(loss_type, 3.0)


def lr_schedule_of(args: argparse.Namespace) -> str:
    """--lr-schedule; else --recipe fkd: cosine with --cos, else multistep (train_FKD.py's
    adjust_learning_rate); else PRISM's: prism-cos with --cos, else linear."""
    if args.lr_schedule:
        return args.lr_schedule
    if recipe_of(args) == "fkd":
        return "cosine" if args.cos else "multistep"
    if recipe_of(args) == "repdistiller" and not args.cos:
        return "multistep"
    return "prism-cos" if args.cos else "linear"


def lr_milestones_of(args: argparse.Namespace) -> tuple[int, ...]:
    """--lr-milestones, or train_FKD.py's --schedule E E ..., else its 120 240 under --recipe fkd."""
    if args.schedule is not None:
        return milestones_of(",".join(str(e) for e in args.schedule)) if args.schedule else ()
    if args.lr_milestones is None and recipe_of(args) != "ours" and lr_schedule_of(args) == "multistep":
        return FKD_MILESTONES if recipe_of(args) == "fkd" else REPDISTILLER_MILESTONES
    return milestones_of(args.lr_milestones)


def label_source_of(store: Optional[Store], args: argparse.Namespace, epochs: Optional[int] = None,
                    index: Optional[FolderIndex] = None) -> str:
    """Where the labels come from, as a resumed run must match it: a store by its content (not
    its path; with a pruned store's cycle where the run's ``epochs`` come round to its first labels
    again, which extending the store changes; the store checks its images), an online teacher by its
    weights, or the ground truth, each of these two on the images ``index`` fingerprints (other images
    under the same names would otherwise continue the run)."""
    if store is not None:
        cycle = store.label_cycle(epochs) if epochs else None
        return store.identity() + (f" (label pruning: the {cycle} labelled steps it held cycled)" if cycle else "")
    images = f" of images {index.fingerprint()[:16]}" if index is not None else ""
    if args.teacher:
        paths = split_list(args.teacher_path)
        weights = ",".join(file_sha256(p)[:16] if os.path.isfile(p) else "?" for p in paths) or "published"
        named = getattr(args, "teacher_weights", None)
        return f"online {args.teacher} ({weights}" + (f" {named}" if named and not paths else "") + ")" + images
    return "hard labels" + images


def milestones_of(value: Optional[str]) -> tuple[int, ...]:
    """--lr-milestones as increasing positive epochs ("60,120,160" -> (60, 120, 160))."""
    if value is None:
        return ()
    try:
        epochs = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise UserError(f"--lr-milestones {value}: expected comma-separated epochs, e.g. 60,120,160") from None
    if any(e < 1 for e in epochs) or list(epochs) != sorted(set(epochs)):
        raise UserError(f"--lr-milestones {value}: epochs must be positive and increasing")
    return epochs


def layout_of(args: argparse.Namespace) -> str:
    """--fkd-layout, per-image with FKD's --softlabel_path, else batch."""
    return "per-image" if args.softlabel_path else (args.fkd_layout or "batch")


def resolve(args: argparse.Namespace, index: FolderIndex, info: DistInfo, workers: int
            ) -> tuple[TrainConfig, Optional[Store]]:
    """The run's settings and its store (None for hard labels and online KD)."""
    values = {k: getattr(args, k, None) for k in FIELDS}
    values["workers"] = workers
    values["lr_schedule"] = lr_schedule_of(args)
    values["lr_milestones"] = lr_milestones_of(args)
    values.update(recipe_settings(args))
    values["fkd_path"] = args.fkd_path or args.softlabel_path
    values["fkd_layout"] = layout_of(args)
    store = None
    if values["fkd_path"]:
        store = open_store(values["fkd_path"], index, layout=values["fkd_layout"], skip_bad_images=args.skip_bad_images,
                           request=Request(args.input_size, args.min_scale_crops, args.max_scale_crops, args.fkd_seed,
                                           args.num_classes, args.batch_size, args.epochs, args.mix_type,
                                           args.soft_label_type, args.num_crops, args.crop_interpolation))
        values.update(from_store(store, args, info))
    else:
        values.update(hard_label_settings(args, len(index.classes)))
    values["distill_init_epochs"] = (args.distill_init_epochs if args.distill_init_epochs is not None else
                                     DISTILLERS[args.distiller].init_epochs if args.distiller else 0)
    values["label_source"] = label_source_of(store, args, values.get("epochs"), index)
    values["loss_type"] = loss_type_of(args)
    values["temperature"] = temperature_of(args, values["loss_type"])
    values["alpha"] = args.alpha if args.alpha is not None else DEFAULT_ALPHA.get(values["loss_type"], 1.0)
    # kd: its CE weight is 1 - alpha unless given (RepDistiller's -r); mse_gt / mae_gt: 0.1
    values["ce_weight"] = args.ce_weight if args.ce_weight is not None else (
        None if values["loss_type"] == "kd" else 0.1)
    check_ranges(values)
    config = TrainConfig(**values)
    if store is not None:
        store.check_complete(config.epochs, index)
    check_batch_shares(config, len(index), store, info.world_size)
    return config, store


def from_store(store: Store, args: argparse.Namespace, info: DistInfo) -> dict:
    s = store.settings
    recorded = {"input_size": s.input_size, "min_scale_crops": s.min_scale_crops, "max_scale_crops": s.max_scale_crops,
                "fkd_seed": s.fkd_seed, "num_classes": s.num_classes, "mix_type": s.mix_type}
    if s.layout == "batch":
        return {**recorded, "batch_size": s.batch_size, "epochs": args.epochs or s.epochs}
    fkd = recipe_of(args) == "fkd"
    if args.epochs is None and not fkd:
        raise UserError(f"--epochs is required with --fkd-layout per-image (every epoch uses --num-crops of "
                        f"the {s.num_crops} crops {store.where} holds per image)")
    epochs = args.epochs or FKD_EPOCHS
    num_crops = args.num_crops or DEFAULT_CROPS_PER_STEP
    if num_crops > s.num_crops:  # given, the store's check_request refused it already
        raise UserError(f"--num_crops defaults to {DEFAULT_CROPS_PER_STEP} crops of each image per step (train_FKD.py's)"
                        f"; {store.where} holds {s.num_crops} per image: pass --num_crops {s.num_crops} or fewer")
    # train_FKD.py: a pass of N crops counts as N epochs, so every epoch uses one crop of each image
    used = (epochs - args.start_epoch) * (1 if fkd else num_crops)
    if used > s.num_crops and info.is_main:
        print(f"note: {epochs - args.start_epoch} epochs{'' if fkd else f' x --num-crops {num_crops}'} use {used} "
              f"crops per image; the store holds {s.num_crops}, so crops repeat", flush=True)
    # train_FKD.py's -b counts crops: it loads ceil(b / --num_crops) images per step
    batch = math.ceil((args.batch_size or FKD_CROPS_PER_STEP) / num_crops) if fkd else (
        args.batch_size or math.ceil(1024 / num_crops))
    return {**recorded, "num_crops": num_crops, "batch_size": batch, "epochs": epochs}


def hard_label_settings(args: argparse.Namespace, num_folders: int) -> dict:
    """Online crops: the flags, else the recipe's defaults."""
    repdistiller = recipe_of(args) == "repdistiller"
    defaults = HARD_LABEL_DEFAULTS | (REPDISTILLER_HARD_LABEL_DEFAULTS if repdistiller else {})
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    values["train_crop"] = getattr(args, "train_crop", None) or ("padded" if repdistiller else "resized")
    values["mix_type"] = args.mix_type or "none"
    values["num_classes"] = args.num_classes or num_folders
    if num_folders > values["num_classes"]:
        raise UserError(f"--train-dir {args.train_dir} has {num_folders} classes, more "
                        f"than the model's {values['num_classes']} outputs")
    return values


def pass_batch(config: TrainConfig, crops: int) -> tuple[int, int]:
    """(images, crops of each) of a per-image step in a pass of ``crops`` crops per image:
    train_FKD.py's single-crop passes load --num_crops times the images, so a step keeps its size."""
    return config.batch_size * config.num_crops // crops, crops


def check_batch_shares(config: TrainConfig, num_images: int, store: Optional[Store], world: int) -> None:
    """Every rank needs a share of every batch, the smallest (an epoch's last) included."""
    if config.per_image:
        smallest = min(replay.batch_len(num_images, images, replay.batches_per_epoch(num_images, images) - 1) * crops
                       for images, crops in {pass_batch(config, crops) for _, crops in config.passes})
    elif store is not None:
        s = store.settings
        smallest = min(s.batch_size, replay.batch_len(s.num_samples, s.batch_size, s.batches_per_epoch - 1))
    else:
        smallest = config.batch_size
    if smallest < world:
        raise UserError(f"{'the store' if store else '-b/--batch-size'} holds batches of {smallest} "
                        f"{'crops' if config.per_image else 'images'}, "
                        f"fewer than the {world} ranks; every rank needs a share of every batch")
    if config.teacher_mode == "train" and store is None:
        check_train_mode_batches(config, num_images, world)


def check_train_mode_batches(config: TrainConfig, num_images: int, world: int) -> None:
    """--teacher-mode train normalizes each rank's batch by its own statistics, which a batch of one
    image at a 1x1 map does not have: every rank's smallest batch (an epoch's last) holds two or more."""
    local = max(1, config.batch_size // world)
    last = -(-num_images // world) % local or local  # DistributedSampler: each rank ceil(N / world) images
    smallest = local if config.drop_last else min(local, last)
    if smallest < 2:
        raise UserError(f"--teacher-mode train: a rank's batch of {smallest} image ({num_images} images at -b "
                        f"{config.batch_size} on {world} rank(s): an epoch's last) has no batch statistics to "
                        f"normalize by; pass --drop-last (WSLD's loader) or another -b")
