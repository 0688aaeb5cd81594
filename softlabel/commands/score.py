"""Score a distilled dataset against a random real subset of the same size, with one recipe.

    .venv/bin/python scripts/score_distilled.py --syn SYN --real-train TRAIN --val VAL \
        --teacher resnet18 --teacher-path T.pth --model resnet18 --epochs 300 -b 100 \
        --seeds 0,1,2 --out scores/syn [--full-hard-run RUN] [--recipe "--loss-type kl -T 4 ..."]

Draws a random subset of --real-train with as many images per class as --syn, labels both sets
with the same teacher, and trains every arm with our trainer, one recipe for all:

  syn_soft     the distilled set, the recipe (soft labels, crops and mix)
  rand_soft    the random subset, the same
  syn_hard     the distilled set, hard labels (same crops, epochs and batch)
  full_hard    the whole --real-train, hard labels (or --full-hard-run: an existing run's
               results.json; or --full-hard-top1: a number, as the package's cached ones)
  syn_noaug    the distilled set, soft labels, no augmentation (whole-image crops, no mix)
  rand_noaug   the random subset, the same

and writes OUT/scores.json and OUT/scores.md: each arm's top-1 (and ECE) over the evaluations
(one per --seeds entry, arms paired by seed), and DD-Ranking's scores (w = --w, γ = --gamma):

  HLR = Acc(full_hard) - Acc(syn_hard)
  IOR = Acc(syn_soft) - Acc(rand_soft)
  LRS = (e^α - e^-1) / (e - e^-1),  α = w·IOR - (1 - w)·HLR
  ARS = (e^β - e^-1) / (e - e^-1),  β = γ·(Acc(syn_soft) - Acc(rand_soft)) + (1 - γ)·(Acc(syn_noaug) - Acc(rand_noaug))

twice, per evaluation then mean ± std over evaluations:
  ours ("scores"): accuracies as fractions, so that α and β lie in [-1, 1] and LRS, ARS in [0, 1]
      as the paper means them; sample std.
  ddranking 0.2.0's ("scores_ddranking", the second table): as metrics/soft_label.py and
      metrics/aug_robust.py of NUS-HPC-AI-Lab/DD-Ranking code them: the accuracies in percent go
      straight into the exponent (α in points: LRS is below 0 as soon as α < -1, ARS above 1 as soon
      as β > 1); numpy's population std.
DD-Ranking's published leaderboard was computed by that package: set its LRS and ARS beside the
second table of a --protocol ddranking run (same formulas, the package's protocol as far as our
trainer goes; list below). A --protocol fixed run's second table has the package's scale but not
its protocol; the first table compares only with our own runs.

--protocol fixed (default): the recipe's learning rate, each arm's top-1 at its last epoch, one
random subset (seeded by --subset-seed, copied into OUT/random_subset), soft labels stored by our
relabel for both sets (OUT/stores), runs in OUT/runs/ARM/seedS.

--protocol ddranking: the package's protocol. Evaluation i (seed --seeds[i]; default 0..4, its
num_eval 5) draws its own random subset (from (--subset-seed, i), in OUT/random_subsets/evalI;
evaluation 0's is the fixed protocol's), trains syn_hard, syn_soft, rand_soft, syn_noaug and
rand_noaug once per learning rate of 0.001, 0.005, 0.01, 0.05, 0.1 (its lr_list; --syn-lr, its
syn_lr, trains the distilled set's soft arms at that one instead), validates every 20 epochs (its
test_interval; --epochs at least 20) and keeps an arm's best top-1 over those validations and
learning rates (the first learning rate wins a tie, as its strict ">"). full_hard: one run per
evaluation at the recipe's learning rate (the package's: one run, its own real-data recipe), or
--full-hard-run / --full-hard-top1 (its default reads a cached number: 56.5 for ImageNet-1k
ResNet-18-BN, 46.4 for Tiny-ImageNet). The teacher labels online each augmented batch (the
trainer's --teacher in eval mode: the package's soft_label_mode M); hard arms get crops but no
mixing (its use_aug_for_hard false). The learning rate searched is SGD's -lr when --recipe has
--sgd, else --adamw-lr. Runs in OUT/ddranking/evalI/ARM/lrLR; a rerun skips finished ones.
A rerun into the same --out continues its runs only with the same settings (OUT/settings.json:
the sets, teacher file, student, epochs, batch, crops, mix, recipe, relabel flags, subset seed,
--syn-lr; the two protocols keep their runs apart and may share it); other
settings are refused before any work. --w, --gamma and more --seeds may change. Every flag, folder,
--recipe and --relabel-args (through the trainer's and relabel's own checks), the teacher and the student
are checked before --out is written: a refused run leaves nothing there that its corrected rerun would
meet as other settings.
What our trainer does otherwise, and why:
  - optimizer, schedule, loss, temperature and batch come from --recipe and -b (the package's from
    its config; its "cosine" is a LambdaLR that ends at half the learning rate, its "step" needs a
    step size): give the package's values through --recipe where ours has them;
  - evaluations are seeded (the package seeds each from the clock, so its runs do not repeat);
  - the no-augmentation arms keep random flips and take a whole-image crop (the package only
    resizes): our trainer has no switch for flips;
  - syn_soft and rand_soft serve both LRS and ARS (the package trains them once for each score,
    with independent random subsets);
  - soft_label_mode S (one fixed soft label per distilled image, as shipped by a method) and the
    package's DSA and ZCA are not offered; --mix-type gives cutmix, mixup or none;
  - when --epochs is not a multiple of 20 the trainer's last validation is left out, as the package
    never validates there.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
from typing import Any, Callable, NamedTuple, NoReturn, Optional

from softlabel import files, streams
from softlabel.data import FolderIndex, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import begun, open_store
from softlabel.stores.schema import MAX_INPUT_SIZE
from softlabel.streams import Stream, check_seed
from softlabel.teachers import file_sha256

ARMS = ("syn_soft", "rand_soft", "syn_hard", "full_hard", "syn_noaug", "rand_noaug")
LR_SEARCH = (0.001, 0.005, 0.01, 0.05, 0.1)  # ddranking 0.2.0's lr_list
TEST_INTERVAL = 20  # its test_interval: validations at epochs 20, 40, ...
DEFAULT_SEEDS = {"fixed": "0,1,2", "ddranking": "0,1,2,3,4"}  # its num_eval: 5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--syn", required=True, metavar="DIR", help="the distilled image folder")
    p.add_argument("--real-train", required=True, metavar="DIR", help="the real training set it was distilled from")
    p.add_argument("--val", required=True, metavar="DIR", help="the real validation set")
    p.add_argument("--teacher", required=True, metavar="ARCH", help="the teacher that relabels both sets")
    p.add_argument("--teacher-path", required=True, metavar="FILE", help="its weights")
    p.add_argument("--out", required=True, metavar="OUT", help="where the subset, stores, runs and scores go")
    p.add_argument("--model", default="resnet18", help="the student of every arm (default: resnet18)")
    p.add_argument("--epochs", type=int, default=300, help="epochs of every arm (default: 300)")
    p.add_argument("-b", "--batch-size", type=int, default=100, help="batch of every arm (default: 100)")
    p.add_argument("--input-size", type=int, default=224, help="crop size (default: 224)")
    p.add_argument("--min-scale-crops", type=float, default=0.08, help="RandomResizedCrop scale (default: 0.08)")
    p.add_argument("--mix-type", default="cutmix", choices=["none", "mixup", "cutmix"], help="(default: cutmix)")
    p.add_argument("--recipe", default="", help="more trainer flags, the same for every arm (quoted)")
    p.add_argument("--relabel-args", default="",
                   help="more relabel flags, the same for both sets (quoted; --protocol fixed, which relabels)")
    p.add_argument("--protocol", choices=["fixed", "ddranking"], default="fixed",
                   help="fixed (default): one learning rate, last epoch, one random subset, stored labels; "
                        "ddranking: the package's learning-rate search, best of the validations every 20 "
                        "epochs, a new random subset per evaluation, the teacher online (see above)")
    p.add_argument("--seeds", default=None,
                   help="student seeds, one per evaluation (default: 0,1,2; with --protocol ddranking 0,1,2,3,4)")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the random subset draw (default: 0); --protocol ddranking draws evaluation i's "
                        "from (this, i), evaluation 0's being --protocol fixed's")
    p.add_argument("--syn-lr", type=float, default=None, metavar="LR",
                   help="--protocol ddranking: the distilled set's own learning rate for its soft arms, no "
                        "search (the package's syn_lr)")
    p.add_argument("--full-hard-run", default=None, metavar="RUN",
                   help="an existing trainer run (its results.json) for Acc(full real set, hard labels)")
    p.add_argument("--full-hard-top1", type=float, default=None, metavar="PCT",
                   help="Acc(full real set, hard labels) as a number, e.g. the package's cached 56.5 "
                        "(ImageNet-1k, ResNet-18-BN); no full_hard run")
    p.add_argument("--w", type=float, default=0.5, help="LRS weight of IOR against HLR (default: 0.5)")
    p.add_argument("--gamma", type=float, default=0.5, help="ARS weight of the augmented gap (default: 0.5)")
    p.add_argument("-j", "--workers", type=int, default=0, help="loader workers of every run (default: 0)")
    return p


# ----------------------------------------------------------------------------- the random subset

def draw_subset(syn: FolderIndex, real: FolderIndex, seed: int, evaluation: int = 0) -> list[tuple[str, int]]:
    """As many real images per class as the distilled set has, drawn without replacement from
    (seed, class[, evaluation]); classes matched by folder name. Evaluation 0 is the fixed
    protocol's draw."""
    missing = [c for c in syn.classes if c not in real.classes]
    if missing:
        raise UserError(f"--syn class {missing[0]} is not a class folder of --real-train")
    chosen = []
    for c, name in enumerate(syn.classes):
        want = sum(1 for _, t in syn.samples if t == c)
        pool = [path for path, t in real.samples if t == real.classes.index(name)]
        if want > len(pool):
            raise UserError(f"--syn has {want} images of class {name}, --real-train only {len(pool)}")
        key = (real.classes.index(name),) + ((evaluation,) if evaluation else ())
        picks = streams.rng(seed, Stream.RANDOM_SUBSET, *key).choice(len(pool), want, replace=False)
        chosen += [(pool[i], c) for i in sorted(int(i) for i in picks)]
    return chosen


def write_subset(chosen: list[tuple[str, int]], syn: FolderIndex, real_root: str, out: str,
                 name: str = "random_subset") -> str:
    """The subset as an image folder (files copied, names kept) at ``out``/``name``; kept when there."""
    root = os.path.join(out, name)
    done = os.path.join(root, ".complete")
    if os.path.isfile(done):
        return root
    for path, c in chosen:
        folder = os.path.join(root, files.plain_name(syn.classes[c], "--syn class"))
        files.ensure_dir(folder, "--out", inside=out)
        shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))
    files.atomic_write_json(done, {"drawn_from": os.path.abspath(real_root), "images": len(chosen)})
    return root


# ----------------------------------------------------------------------------- arms

def words(text: str, flag: str) -> list[str]:
    """A quoted flag of more flags (--recipe, --relabel-args) as its words."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UserError(f"{flag} {text!r}: {exc}") from None


def given_flags(parser: argparse.ArgumentParser, text: str, flag: str) -> dict[str, Any]:
    """The flags a quoted --recipe or --relabel-args gives, parsed by the command's own parser: only
    those it gives, by dest name, to be laid over score's own values as if given after them."""
    def refuse(message: str) -> NoReturn:
        raise UserError(f"{flag} {text!r}: {message}")
    parser.error = refuse  # type: ignore[method-assign]  # argparse would print usage and exit
    unset = object()
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    parsed = vars(parser.parse_args(words(text, flag), argparse.Namespace(**dict.fromkeys(actions, unset))))
    # argparse sets a positional it found no word for (the trainer's DATA) to its default: not given
    return {k: v for k, v in parsed.items()
            if v is not unset and (actions[k].option_strings or v is not actions[k].default)}


def relabel_values(args: argparse.Namespace, data: str, store: str, augment: bool) -> dict[str, Any]:
    """Relabel's flags (by dest name) for one store, --relabel-args over them."""
    from softlabel.commands.relabel import get_args_parser
    return {"data": data, "teacher_path": args.teacher_path, "arch": args.teacher, "fkd_path": store,
            "epochs": args.epochs, "batch_size": args.batch_size, "input_size": args.input_size,
            "min_scale_crops": args.min_scale_crops if augment else 1.0,
            "mix_type": args.mix_type if augment else "none", "workers": args.workers, "print_freq": 10 ** 6,
            **given_flags(get_args_parser(), args.relabel_args, "--relabel-args")}


def relabel(args: argparse.Namespace, data: str, store: str, augment: bool) -> None:
    from softlabel.commands.relabel import main, relabel_args
    if begun(store):  # begun: relabel resumes it, or it is complete
        index = scan_image_folder(data, "--data")
        if not open_store(store, index).missing(args.epochs, index):
            return
    main(relabel_args(**relabel_values(args, data, store, augment)))


def run_values(args: argparse.Namespace, train_dir: str, out: str, seed: int, eval_interval: int) -> dict[str, Any]:
    """The trainer's flags (by dest name) every run of score begins with, --recipe over them."""
    from softlabel.commands.train import get_args_parser
    return {"train_dir": train_dir, "val_dir": args.val, "model": args.model, "seed": seed, "workers": args.workers,
            "no_progress": True, "output_dir": out, "eval_interval": eval_interval, "resume": "auto",
            **given_flags(get_args_parser(), args.recipe, "--recipe")}


def train_values(args: argparse.Namespace, out: str, seed: int, train_dir: str, store: Optional[str]
                 ) -> dict[str, Any]:
    """A --protocol fixed run's trainer flags: its store, or the hard-label arm's crops, over --recipe."""
    values = run_values(args, train_dir, out, seed, args.epochs)
    if store:
        return {**values, "fkd_path": store}
    return {**values, "epochs": args.epochs, "batch_size": args.batch_size, "input_size": args.input_size,
            "min_scale_crops": args.min_scale_crops, "mix_type": args.mix_type}


def train(args: argparse.Namespace, out: str, seed: int, train_dir: str, store: Optional[str]) -> dict:
    from softlabel.commands.train import main, train_args
    results = os.path.join(out, "results.json")
    if not os.path.isfile(results):
        main(train_args(**train_values(args, out, seed, train_dir, store)))
    return checked_result(results, "results.json")


def is_percent(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 100


def checked_result(path: str, what: str) -> dict:
    """A run's results.json, with the validation top-1 the scores need (and its ECE, when it has one)."""
    result = files.read_json(path, what)
    top1 = result.get("top1") if isinstance(result, dict) else None
    if not is_percent(top1):
        raise UserError(f"{what} {path}: no validation top-1 (was the run given --val-dir?)")
    if result.get("ece") is not None and not is_percent(result["ece"]):
        raise UserError(f"{what} {path}: its ece is not a percentage ({result['ece']!r})")
    return result


# What the arms' runs under --out depend on; a rerun continues them only with the same values.
ARM_SETTINGS = ("syn", "real_train", "val", "teacher", "model", "epochs", "batch_size", "input_size",
                "min_scale_crops", "mix_type", "recipe", "relabel_args", "subset_seed", "syn_lr")


def arm_settings(args: argparse.Namespace) -> dict:
    settings = {k: getattr(args, k) for k in ARM_SETTINGS}
    for k in ("syn", "real_train", "val"):
        settings[k] = os.path.abspath(settings[k])
    if not os.path.isfile(args.teacher_path):
        raise UserError(f"--teacher-path {args.teacher_path}: no such file")
    settings["teacher_sha256"] = file_sha256(args.teacher_path)
    return settings


def check_same_settings(args: argparse.Namespace, want: dict) -> None:
    """The first run records its settings (``want``) in --out; a rerun with others is refused before
    any work (its arms would mix runs of two settings), naming what differs."""
    path = os.path.join(args.out, "settings.json")
    if not os.path.isfile(path):  # strict JSON: every number was range-checked, none is NaN or infinite
        files.atomic_write_bytes(path, (json.dumps(want, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())
        return
    have = files.read_json(path, "--out settings")
    changed = [k for k in want if not isinstance(have, dict) or have.get(k) != want[k]]
    if changed:
        what = ", ".join(f"{k} {have.get(k)!r} -> {want[k]!r}" if isinstance(have, dict) else k for k in changed)
        raise UserError(f"--out {args.out} holds the runs of other settings ({what}); give another --out, "
                        f"or remove it to start again")


def given_full_hard(args: argparse.Namespace) -> dict:
    if args.full_hard_top1 is not None:
        return {"top1": args.full_hard_top1}
    return checked_result(os.path.join(args.full_hard_run, "results.json"), "--full-hard-run")


def fixed_stores(args: argparse.Namespace, subset: str) -> dict[str, tuple[str, str, bool]]:
    """The stores --protocol fixed relabels: name -> (images, store folder, augmented)."""
    sets = (("syn", args.syn, True), ("rand", subset, True), ("syn_noaug", args.syn, False),
            ("rand_noaug", subset, False))
    return {name: (data, os.path.join(args.out, "stores", name), augment) for name, data, augment in sets}


def fixed_plan(args: argparse.Namespace, subset: str) -> dict[str, tuple[str, Optional[str]]]:
    """Each arm of --protocol fixed: (training images, its store; None: hard labels)."""
    stores = {name: store for name, (_, store, _) in fixed_stores(args, subset).items()}
    return {"syn_soft": (args.syn, stores["syn"]), "rand_soft": (subset, stores["rand"]),
            "syn_hard": (args.syn, None), "full_hard": (args.real_train, None),
            "syn_noaug": (args.syn, stores["syn_noaug"]), "rand_noaug": (subset, stores["rand_noaug"])}


def run_arms(args: argparse.Namespace, seeds: list[int], subset: str) -> dict[str, list[dict]]:
    for data, store, augment in fixed_stores(args, subset).values():
        relabel(args, data, store, augment)
    results: dict[str, list[dict]] = {}
    for arm, (data, store) in fixed_plan(args, subset).items():
        if arm == "full_hard" and (args.full_hard_run or args.full_hard_top1 is not None):
            results[arm] = [given_full_hard(args)]
            continue
        results[arm] = [train(args, os.path.join(args.out, "runs", arm, f"seed{s}"), s, data, store) for s in seeds]
    return results


# ----------------------------------------------------------------------------- --protocol ddranking

class Run(NamedTuple):
    """One training of the ddranking protocol: an arm of an evaluation at one learning rate."""
    arm: str
    evaluation: int
    seed: int
    data: str
    out: str
    teacher: bool        # soft labels: the teacher online on each augmented batch
    augment: bool        # crops (and, for soft arms, --mix-type)
    lr: Optional[float]  # None: the recipe's


def ddranking_plan(args: argparse.Namespace, seeds: list[int], subsets: list[str]) -> list[Run]:
    """Every training the package's protocol asks for: per evaluation i (seed seeds[i], random
    subset subsets[i]) each searched arm once per learning rate of LR_SEARCH."""
    runs = []
    for i, (seed, subset) in enumerate(zip(seeds, subsets)):
        arms = [("syn_hard", args.syn, False, True, None), ("syn_soft", args.syn, True, True, args.syn_lr),
                ("rand_soft", subset, True, True, None), ("syn_noaug", args.syn, True, False, args.syn_lr),
                ("rand_noaug", subset, True, False, None)]
        where = os.path.join(args.out, "ddranking", f"eval{i}")
        for arm, data, teacher, augment, fixed_lr in arms:
            for lr in (fixed_lr,) if fixed_lr is not None else LR_SEARCH:
                runs.append(Run(arm, i, seed, data, os.path.join(where, arm, f"lr{lr:g}"), teacher, augment, lr))
        if not args.full_hard_run and args.full_hard_top1 is None:  # the package: once per evaluation, no search
            runs.append(Run("full_hard", i, seed, args.real_train, os.path.join(where, "full_hard", "recipe_lr"),
                            False, True, None))
    return runs


def lr_flag(recipe: str) -> str:
    """The trainer flag that sets the recipe's learning rate: SGD's or AdamW's."""
    return "-lr" if "--sgd" in shlex.split(recipe) else "--adamw-lr"


LR_DESTS = {"-lr": "learning_rate", "--adamw-lr": "adamw_lr"}  # lr_flag's flags by dest name


def ddranking_values(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """A --protocol ddranking run's trainer flags: its crops, mix, teacher and learning rate over --recipe."""
    values = {**run_values(args, run.data, run.out, run.seed, TEST_INTERVAL), "epochs": args.epochs,
              "batch_size": args.batch_size, "input_size": args.input_size,
              "min_scale_crops": args.min_scale_crops if run.augment else 1.0,
              "mix_type": args.mix_type if run.augment and run.teacher else "none"}
    if run.teacher:
        values.update(teacher=args.teacher, teacher_path=args.teacher_path)
    if run.lr is not None:
        values[LR_DESTS[lr_flag(args.recipe)]] = run.lr
    return values


def train_ddranking(args: argparse.Namespace, run: Run) -> float:
    """The run's best validation top-1 over epochs 20, 40, ... (the package's best_acc1; 0 with none)."""
    from softlabel.commands.train import main, train_args
    if not os.path.isfile(os.path.join(run.out, "results.json")):
        main(train_args(**ddranking_values(args, run)))
    return best_validation(os.path.join(run.out, "metrics.jsonl"))


def best_validation(path: str) -> float:
    best = 0.0
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "top1" in row and row["epoch"] % TEST_INTERVAL == 0:
                best = max(best, row["top1"])
    return best


def pick_lr(accs: list[tuple[Optional[float], float]]) -> tuple[float, Optional[float]]:
    """(best accuracy, its learning rate) as the package's search: from 0, only a strictly higher
    accuracy replaces the best, so the first learning rate wins a tie (and none beats 0: lr 0)."""
    best, best_lr = 0.0, 0.0
    for lr, acc in accs:
        if acc > best:
            best, best_lr = acc, lr
    return best, best_lr


def subset_name(args: argparse.Namespace, evaluation: int) -> str:
    """Where an evaluation's random subset goes under --out: one for --protocol fixed, one per
    evaluation for ddranking."""
    return "random_subset" if args.protocol == "fixed" else os.path.join("random_subsets", f"eval{evaluation}")


def run_ddranking(args: argparse.Namespace, seeds: list[int], syn: FolderIndex,
                  drawn: list[list[tuple[str, int]]]) -> tuple[dict[str, list[dict]], dict[str, list]]:
    """Each arm's accuracy per evaluation (as results dicts with "top1") and its chosen learning rates;
    ``drawn``: each evaluation's random subset."""
    subsets = [write_subset(chosen, syn, args.real_train, args.out, subset_name(args, i))
               for i, chosen in enumerate(drawn)]
    found: dict[tuple[str, int], list] = {}
    for run in ddranking_plan(args, seeds, subsets):
        found.setdefault((run.arm, run.evaluation), []).append((run.lr, train_ddranking(args, run)))
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    lrs: dict[str, list] = {arm: [] for arm in ARMS}
    for i in range(len(seeds)):
        for arm in ARMS:
            if arm == "full_hard" and (args.full_hard_run or args.full_hard_top1 is not None):
                acc, lr = given_full_hard(args)["top1"], None
            elif arm == "full_hard":
                acc, lr = found[(arm, i)][0][1], None
            else:
                acc, lr = pick_lr(found[(arm, i)])
            results[arm].append({"top1": acc})
            lrs[arm].append(lr)
    return results, lrs


# ----------------------------------------------------------------------------- scores

def normalized_exp(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): maps [-1, 1] onto [0, 1], as DD-Ranking's LRS and ARS."""
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


def scores(acc: dict[str, float], w: float, gamma: float) -> dict[str, float]:
    """HLR, IOR, LRS, ARS from mean top-1 accuracies in percent."""
    a = {k: v / 100.0 for k, v in acc.items()}
    hlr = a["full_hard"] - a["syn_hard"]
    ior = a["syn_soft"] - a["rand_soft"]
    alpha = w * ior - (1 - w) * hlr
    beta = gamma * (a["syn_soft"] - a["rand_soft"]) + (1 - gamma) * (a["syn_noaug"] - a["rand_noaug"])
    return {"HLR": hlr, "IOR": ior, "alpha": alpha, "LRS": normalized_exp(alpha), "beta": beta,
            "ARS": normalized_exp(beta)}


def ddranking_scores(acc: dict[str, float], w: float, gamma: float) -> dict[str, float]:
    """One evaluation's scores as ddranking 0.2.0 computes them (soft_label.py, aug_robust.py):
    the same differences, in percentage points, straight into the normalized exp."""
    hlr = acc["full_hard"] - acc["syn_hard"]
    ior = acc["syn_soft"] - acc["rand_soft"]
    alpha = w * ior - (1 - w) * hlr
    with_aug, without_aug = acc["syn_soft"] - acc["rand_soft"], acc["syn_noaug"] - acc["rand_noaug"]
    beta = gamma * with_aug + (1 - gamma) * without_aug
    return {"HLR": hlr, "IOR": ior, "alpha": alpha, "LRS": normalized_exp(alpha), "with_aug": with_aug,
            "without_aug": without_aug, "beta": beta, "ARS": normalized_exp(beta)}


def per_evaluation(results: dict[str, list[dict]], formulas, w: float, gamma: float, population: bool
                   ) -> dict[str, dict]:
    """``formulas`` on each evaluation's accuracies (arms paired by seed; a single --full-hard-run
    serves every one), then mean and std: the sample std (ours) or numpy's population std (the
    package's np.std)."""
    n = max(len(r) for r in results.values())
    each = [formulas({arm: runs[min(i, len(runs) - 1)]["top1"] for arm, runs in results.items()}, w, gamma)
            for i in range(n)]
    std = statistics.pstdev if population else (statistics.stdev if n > 1 else lambda v: 0.0)
    return {k: {"mean": statistics.mean(v[k] for v in each), "std": std([v[k] for v in each]),
                "per_seed": [v[k] for v in each]} for k in each[0]}


def seed_scores(results: dict[str, list[dict]], w: float, gamma: float) -> dict[str, dict]:
    """Our scores of each seed, then their mean and sample std."""
    return per_evaluation(results, scores, w, gamma, population=False)


def ddranking_seed_scores(results: dict[str, list[dict]], w: float, gamma: float) -> dict[str, dict]:
    """The package's scores of each evaluation, then their mean and population std, as it reports them."""
    return per_evaluation(results, ddranking_scores, w, gamma, population=True)


def summary(results: dict[str, list[dict]]) -> dict[str, dict]:
    out = {}
    for arm, runs in results.items():
        top1, ece = [r["top1"] for r in runs], [r.get("ece") for r in runs]
        out[arm] = {"top1": top1, "ece": ece, "top1_mean": statistics.mean(top1),
                    "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    "ece_mean": statistics.mean(ece) if None not in ece else None}
    return out


def table(arms: dict[str, dict], s: dict[str, dict], w: float, gamma: float) -> str:
    rows = ["| arm | top-1 (mean ± std) | ECE | seeds |", "|---|---|---|---|"]
    for arm in ARMS:
        a = arms[arm]
        ece = "—" if a["ece_mean"] is None else f"{a['ece_mean']:.2f}%"
        rows.append(f"| {arm} | {a['top1_mean']:.2f} ± {a['top1_std']:.2f}% | {ece} | {len(a['top1'])} |")
    pct = lambda k, sign="": f"{100 * s[k]['mean']:{sign}.2f} ± {100 * s[k]['std']:.2f}"  # noqa: E731
    rows += ["", "| score (mean ± std over seeds) | value | formula |", "|---|---|---|",
             f"| HLR | {pct('HLR', '+')} pts | Acc(full_hard) − Acc(syn_hard) |",
             f"| IOR | {pct('IOR', '+')} pts | Acc(syn_soft) − Acc(rand_soft) |",
             f"| LRS | {pct('LRS')}% | (e^α − e^−1)/(e − e^−1), α = {w:g}·IOR − {1 - w:g}·HLR |",
             f"| ARS | {pct('ARS')}% | (e^β − e^−1)/(e − e^−1), β = {gamma:g}·(syn_soft − rand_soft) + "
             f"{1 - gamma:g}·(syn_noaug − rand_noaug) |"]
    return "\n".join(rows)


def ddranking_table(d: dict[str, dict], w: float, gamma: float, lrs: Optional[dict[str, list]]) -> str:
    """The package's numbers: differences in points, LRS and ARS as it returns them (its log prints
    them with a % sign, unscaled)."""
    val = lambda k, f: f"{d[k]['mean']:{f}} ± {d[k]['std']:{f.lstrip('+')}}"  # noqa: E731
    rows = ["ddranking 0.2.0 formulas (percentages in the exponent; mean ± population std over evaluations):", "",
            "| score | value | formula |", "|---|---|---|",
            f"| HLR | {val('HLR', '+.2f')} pts | Acc(full_hard) − Acc(syn_hard) |",
            f"| IOR | {val('IOR', '+.2f')} pts | Acc(syn_soft) − Acc(rand_soft) |",
            f"| LRS | {val('LRS', '.4f')} | (e^α − e^−1)/(e − e^−1), "
            f"α = {w:g}·IOR − {1 - w:g}·HLR in points |",
            f"| with_aug | {val('with_aug', '+.2f')} pts | Acc(syn_soft) − Acc(rand_soft) |",
            f"| without_aug | {val('without_aug', '+.2f')} pts | Acc(syn_noaug) − Acc(rand_noaug) |",
            f"| ARS | {val('ARS', '.4f')} | (e^β − e^−1)/(e − e^−1), β = {gamma:g}·with_aug + "
            f"{1 - gamma:g}·without_aug in points |"]
    if lrs:
        rows += ["", "| arm | learning rate chosen per evaluation |", "|---|---|"]
        rows += [f"| {arm} | {', '.join('recipe' if v is None else f'{v:g}' for v in lrs[arm])} |" for arm in ARMS]
    return "\n".join(rows)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--seeds {text}: integers separated by commas") from None
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise UserError(f"--seeds {text}: seed {twice[0]} given twice (each seed is one evaluation)")
    return seeds


def check_numbers(args: argparse.Namespace) -> list[int]:
    """Every number of the flags in range (NaN and infinities refused); returns the seeds."""
    seeds = parse_seeds(args.seeds or DEFAULT_SEEDS[args.protocol])
    if not seeds:
        raise UserError("--seeds needs one seed at least")
    for seed in seeds:
        check_seed(seed, "--seeds")
    check_seed(args.subset_seed, "--subset-seed")
    for flag, value in (("--w", args.w), ("--gamma", args.gamma)):
        if not 0 <= value <= 1:
            raise UserError(f"{flag} must be in [0, 1], got {value}")
    for flag, value in (("--epochs", args.epochs), ("-b/--batch-size", args.batch_size),
                        ("--input-size", args.input_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.input_size > MAX_INPUT_SIZE:
        raise UserError(f"--input-size {args.input_size}: at most {MAX_INPUT_SIZE} px")
    if not 0 < args.min_scale_crops <= 1:
        raise UserError(f"--min-scale-crops must be in (0, 1], got {args.min_scale_crops}")
    if args.workers < 0:
        raise UserError(f"-j/--workers must be >= 0, got {args.workers}")
    if args.protocol == "ddranking" and args.epochs < TEST_INTERVAL:
        raise UserError(f"--protocol ddranking validates every {TEST_INTERVAL} epochs (the package's test_interval) "
                        f"and keeps the best: --epochs must be at least {TEST_INTERVAL}, got {args.epochs}")
    if args.full_hard_top1 is not None and (args.full_hard_run or not 0 <= args.full_hard_top1 <= 100):
        raise UserError("--full-hard-top1 is a top-1 in percent, 0 to 100, instead of --full-hard-run")
    if args.syn_lr is not None:
        check_syn_lr(args)
    return seeds


def check_syn_lr(args: argparse.Namespace) -> None:
    """--syn-lr: positive, and in the range the trainer takes for the flag it is passed as."""
    from softlabel.training.config import NUMBER_RANGES
    if args.protocol != "ddranking" or not args.syn_lr > 0:
        raise UserError("--syn-lr is a positive learning rate for --protocol ddranking")
    key = LR_DESTS[lr_flag(args.recipe)]
    _, _, ok, where = next(r for r in NUMBER_RANGES if r[1] == key)
    if not (math.isfinite(args.syn_lr) and ok(args.syn_lr)):
        raise UserError(f"--syn-lr must be {where} (the trainer's {lr_flag(args.recipe)}), got {args.syn_lr}")


def check_folders(args: argparse.Namespace, syn: FolderIndex, real: FolderIndex, val: FolderIndex) -> None:
    """What the trainer asks of --val (the class folders of the set it trains on), and a
    --full-hard-run that can be scored."""
    if val.classes != syn.classes:
        raise UserError(f"--val {args.val}: class folders differ from --syn {args.syn} ({len(val.classes)} vs "
                        f"{len(syn.classes)} classes or other names); accuracy would be meaningless")
    if args.full_hard_run:
        checked_result(os.path.join(args.full_hard_run, "results.json"), "--full-hard-run")
    elif args.full_hard_top1 is None and val.classes != real.classes:
        raise UserError(f"--val {args.val}: class folders differ from --real-train {args.real_train}, which the "
                        f"full_hard arm trains on; give --full-hard-run or --full-hard-top1 instead")


def check_models(args: argparse.Namespace) -> None:
    from softlabel.models import model_source
    from softlabel.teachers import load_teacher
    try:
        model_source(args.model)
    except UserError as exc:
        raise UserError(f"--model: {exc}") from None
    try:
        load_teacher(args.teacher, args.teacher_path)
    except UserError as exc:
        raise UserError(f"--teacher {args.teacher}: {exc}") from None


def check_run_flags(args: argparse.Namespace, seeds: list[int]) -> None:
    """Every run's trainer and relabel flags (--recipe and --relabel-args with them) through those
    commands' own checks, as the runs will get them."""
    from softlabel.commands import relabel as labeller
    from softlabel.commands import train as trainer
    from softlabel.training.config import check_flags
    if args.protocol == "ddranking":
        runs = [ddranking_values(args, run) for run in
                ddranking_plan(args, seeds[:1], [os.path.join(args.out, subset_name(args, 0))])]
    else:
        subset = os.path.join(args.out, subset_name(args, 0))
        runs = [train_values(args, os.path.join(args.out, "runs", arm), seeds[0], data, store)
                for arm, (data, store) in fixed_plan(args, subset).items()]
        nested([relabel_values(args, *s) for s in fixed_stores(args, subset).values()], labeller.relabel_args,
               labeller.check_args, "--relabel-args", args.relabel_args)
    nested(runs, trainer.train_args, check_flags, "--recipe", args.recipe)


def nested(runs: list[dict[str, Any]], flags: Callable[..., argparse.Namespace],
           check: Callable[[argparse.Namespace], None], flag: str, value: str) -> None:
    """Each run's values made into a command's flags (``flags``: its train_args or relabel_args)
    and checked by its own checks; a refusal is one line naming ``flag``, which brought the
    user's part of them."""
    for values in runs:
        try:
            check(flags(**values))
        except UserError as exc:
            raise UserError(f"{flag} {value!r}: {exc}") from None


@files.releasing_locks
def main(args: argparse.Namespace) -> None:
    # Everything a run depends on is checked before --out is touched: a refusal after settings.json
    # is written would make every corrected rerun into the same --out one "of other settings".
    seeds = check_numbers(args)
    files.refuse_output_inside(args.out, "--out", [("--syn", args.syn), ("--real-train", args.real_train),
                                                   ("--val", args.val)])
    syn, real = scan_image_folder(args.syn, "--syn"), scan_image_folder(args.real_train, "--real-train")
    check_folders(args, syn, real, scan_image_folder(args.val, "--val"))
    drawn = [draw_subset(syn, real, args.subset_seed, i)
             for i in range(len(seeds) if args.protocol == "ddranking" else 1)]
    check_models(args)
    check_run_flags(args, seeds)
    settings = arm_settings(args)
    files.ensure_dir(args.out, "--out")
    files.lock_dir(args.out, "--out", "another score_distilled.py is writing here")
    check_same_settings(args, settings)
    lrs = None
    if args.protocol == "ddranking":
        results, lrs = run_ddranking(args, seeds, syn, drawn)
    else:
        results = run_arms(args, seeds, write_subset(drawn[0], syn, args.real_train, args.out, subset_name(args, 0)))
    arms, s = summary(results), seed_scores(results, args.w, args.gamma)
    d = ddranking_seed_scores(results, args.w, args.gamma)
    text = table(arms, s, args.w, args.gamma) + "\n\n" + ddranking_table(d, args.w, args.gamma, lrs)
    files.atomic_write_json(os.path.join(args.out, "scores.json"), {
        "protocol": args.protocol, "arms": arms, "scores": s, "scores_ddranking": d, "chosen_lr": lrs,
        "w": args.w, "gamma": args.gamma, "seeds": seeds, "syn_lr": args.syn_lr,
        "subset_seed": args.subset_seed, "recipe": args.recipe, "model": args.model, "epochs": args.epochs,
        "formulas": {"HLR": "Acc(full_hard) - Acc(syn_hard)", "IOR": "Acc(syn_soft) - Acc(rand_soft)",
                     "LRS": "(e^a - e^-1)/(e - e^-1), a = w IOR - (1 - w) HLR",
                     "ARS": "(e^b - e^-1)/(e - e^-1), b = gamma (syn_soft - rand_soft) + (1 - gamma) "
                            "(syn_noaug - rand_noaug)",
                     "scores_ddranking": "the same in percentage points into the exponent, population std "
                                         "(ddranking 0.2.0)"}})
    files.atomic_write_bytes(os.path.join(args.out, "scores.md"), (text + "\n").encode())
    print(text, flush=True)


def cli() -> None:
    """The console command: parse sys.argv, run, report a user error as one line."""
    run_main(lambda: main(get_args_parser().parse_args()))


if __name__ == "__main__":
    cli()
