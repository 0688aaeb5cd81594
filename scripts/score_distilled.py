"""Score a distilled dataset against a random real subset of the same size, with one recipe.

    .venv/bin/python scripts/score_distilled.py --syn SYN --real-train TRAIN --val VAL \
        --teacher resnet18 --teacher-path T.pth --model resnet18 --epochs 300 -b 100 \
        --seeds 0,1,2 --out scores/syn [--full-hard-run RUN] [--recipe "--loss-type kl -T 4 ..."]

Draws a random subset of --real-train with as many images per class as --syn (seeded by
--subset-seed; its files copied into OUT/random_subset), relabels both sets with the same teacher
and settings (our relabel), and trains every arm with our trainer, one recipe for all:

  syn_soft     the distilled set, the recipe (soft labels, crops and mix)
  rand_soft    the random subset, the same
  syn_hard     the distilled set, hard labels (same crops, epochs and batch)
  full_hard    the whole --real-train, hard labels (or --full-hard-run: an existing run's results.json)
  syn_noaug    the distilled set, soft labels, no augmentation (whole-image crops, no mix)
  rand_noaug   the random subset, the same

and writes OUT/scores.json and OUT/scores.md: each arm's top-1 and ECE (mean ± std over --seeds)
and, as DD-Ranking defines them (the ddranking package's soft_label.py and aug_robust.py; w = --w,
γ = --gamma; per seed, arms paired by seed, then mean ± std; accuracies as fractions, so that α
and β lie in [-1, 1] and the scores in [0, 1] — ddranking 0.2.0 feeds percentages to the exponent):

  HLR = Acc(full_hard) - Acc(syn_hard)
  IOR = Acc(syn_soft) - Acc(rand_soft)
  LRS = (e^α - e^-1) / (e - e^-1),  α = w·IOR - (1 - w)·HLR
  ARS = (e^β - e^-1) / (e - e^-1),  β = γ·(Acc(syn_soft) - Acc(rand_soft)) + (1 - γ)·(Acc(syn_noaug) - Acc(rand_noaug))

Every arm is an ordinary run directory of our trainer (OUT/runs/ARM/seedS); rerunning skips the
finished ones and resumes the rest. Flips stay on in the no-augmentation arms (our stores always
sample them).
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
from typing import Optional

from softlabel import files, streams
from softlabel.data import FolderIndex, scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.stores import open_store
from softlabel.stores.batch import manifest_path
from softlabel.streams import Stream

ARMS = ("syn_soft", "rand_soft", "syn_hard", "full_hard", "syn_noaug", "rand_noaug")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    p.add_argument("--relabel-args", default="", help="more relabel flags, the same for both sets (quoted)")
    p.add_argument("--seeds", default="0,1,2", help="student seeds (default: 0,1,2)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the random subset draw (default: 0)")
    p.add_argument("--full-hard-run", default=None, metavar="RUN",
                   help="an existing trainer run (its results.json) for Acc(full real set, hard labels)")
    p.add_argument("--w", type=float, default=0.5, help="LRS weight of IOR against HLR (default: 0.5)")
    p.add_argument("--gamma", type=float, default=0.5, help="ARS weight of the augmented gap (default: 0.5)")
    p.add_argument("-j", "--workers", type=int, default=0, help="loader workers of every run (default: 0)")
    return p


# ----------------------------------------------------------------------------- the random subset

def draw_subset(syn: FolderIndex, real: FolderIndex, seed: int) -> list[tuple[str, int]]:
    """As many real images per class as the distilled set has, drawn without replacement from
    (seed, class); classes matched by folder name."""
    missing = [c for c in syn.classes if c not in real.classes]
    if missing:
        raise UserError(f"--syn class {missing[0]} is not a class folder of --real-train")
    chosen = []
    for c, name in enumerate(syn.classes):
        want = sum(1 for _, t in syn.samples if t == c)
        pool = [path for path, t in real.samples if t == real.classes.index(name)]
        if want > len(pool):
            raise UserError(f"--syn has {want} images of class {name}, --real-train only {len(pool)}")
        picks = streams.rng(seed, Stream.RANDOM_SUBSET, real.classes.index(name)).choice(len(pool), want, replace=False)
        chosen += [(pool[i], c) for i in sorted(int(i) for i in picks)]
    return chosen


def write_subset(chosen: list[tuple[str, int]], syn: FolderIndex, real_root: str, out: str) -> str:
    """The subset as an image folder (files copied, names kept) under ``out``; kept when there."""
    root = os.path.join(out, "random_subset")
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

def relabel(args: argparse.Namespace, data: str, store: str, augment: bool) -> None:
    from relabel.generate_soft_label import get_args_parser, main
    if os.path.isfile(manifest_path(store)):  # begun: relabel resumes it, or it is complete
        index = scan_image_folder(data, "--data")
        if not open_store(store, index).missing(args.epochs, index):
            return
    flags = ["--data", data, "--teacher-path", args.teacher_path, "-a", args.teacher, "--fkd-path", store,
             "--epochs", args.epochs, "-b", args.batch_size, "--input-size", args.input_size,
             "--min-scale-crops", args.min_scale_crops if augment else 1.0,
             "--mix-type", args.mix_type if augment else "none", "-j", args.workers, "--print-freq", 10 ** 6,
             *shlex.split(args.relabel_args)]
    main(get_args_parser().parse_args([str(f) for f in flags]))


def train(args: argparse.Namespace, out: str, seed: int, train_dir: str, store: Optional[str]) -> dict:
    from validate.train_FKD_parallel import get_args_parser, main
    results = os.path.join(out, "results.json")
    if not os.path.isfile(results):
        flags = ["--train-dir", train_dir, "--val-dir", args.val, "--model", args.model, "--seed", seed,
                 "-j", args.workers, "--no-progress", "--output-dir", out, "--eval-interval", args.epochs,
                 "--resume", "auto", *shlex.split(args.recipe)]
        if store:
            flags += ["--fkd-path", store]
        else:
            flags += ["--epochs", args.epochs, "-b", args.batch_size, "--input-size", args.input_size,
                      "--min-scale-crops", args.min_scale_crops, "--mix-type", args.mix_type]
        main(get_args_parser().parse_args([str(f) for f in flags]))
    return checked_result(results, "results.json")


def checked_result(path: str, what: str) -> dict:
    """A run's results.json, with the validation top-1 the scores need."""
    result = files.read_json(path, what)
    top1 = result.get("top1") if isinstance(result, dict) else None
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
        raise UserError(f"{what} {path}: no validation top-1 (was the run given --val-dir?)")
    return result


def run_arms(args: argparse.Namespace, seeds: list[int], subset: str) -> dict[str, list[dict]]:
    stores = {}
    for name, data, augment in (("syn", args.syn, True), ("rand", subset, True), ("syn_noaug", args.syn, False),
                                ("rand_noaug", subset, False)):
        stores[name] = os.path.join(args.out, "stores", name)
        relabel(args, data, stores[name], augment)
    plan = {"syn_soft": (args.syn, stores["syn"]), "rand_soft": (subset, stores["rand"]),
            "syn_hard": (args.syn, None), "full_hard": (args.real_train, None),
            "syn_noaug": (args.syn, stores["syn_noaug"]), "rand_noaug": (subset, stores["rand_noaug"])}
    results: dict[str, list[dict]] = {}
    for arm, (data, store) in plan.items():
        if arm == "full_hard" and args.full_hard_run:
            results[arm] = [checked_result(os.path.join(args.full_hard_run, "results.json"), "--full-hard-run")]
            continue
        results[arm] = [train(args, os.path.join(args.out, "runs", arm, f"seed{s}"), s, data, store) for s in seeds]
    return results


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


def seed_scores(results: dict[str, list[dict]], w: float, gamma: float) -> dict[str, dict]:
    """The scores of each seed (arms paired by seed; a single --full-hard-run serves every seed),
    then their mean and std, as the ddranking package averages its per-evaluation scores."""
    n = max(len(r) for r in results.values())
    per_seed = [scores({arm: runs[min(i, len(runs) - 1)]["top1"] for arm, runs in results.items()}, w, gamma)
                for i in range(n)]
    return {k: {"mean": statistics.mean(v[k] for v in per_seed),
                "std": statistics.stdev(v[k] for v in per_seed) if n > 1 else 0.0,
                "per_seed": [v[k] for v in per_seed]} for k in per_seed[0]}


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


def main() -> None:
    args = get_parser().parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    if not seeds or not 0 <= args.w <= 1 or not 0 <= args.gamma <= 1 or args.epochs < 1:
        raise UserError("--seeds needs one seed at least; --w and --gamma are in [0, 1]; --epochs at least 1")
    files.refuse_output_inside(args.out, "--out", [("--syn", args.syn), ("--real-train", args.real_train),
                                                   ("--val", args.val)])
    files.ensure_dir(args.out, "--out")
    files.lock_dir(args.out, "--out", "another score_distilled.py is writing here")
    syn, real = scan_image_folder(args.syn, "--syn"), scan_image_folder(args.real_train, "--real-train")
    subset = write_subset(draw_subset(syn, real, args.subset_seed), syn, args.real_train, args.out)
    results = run_arms(args, seeds, subset)
    arms, s = summary(results), seed_scores(results, args.w, args.gamma)
    text = table(arms, s, args.w, args.gamma)
    files.atomic_write_json(os.path.join(args.out, "scores.json"), {
        "arms": arms, "scores": s, "w": args.w, "gamma": args.gamma, "seeds": seeds,
        "subset_seed": args.subset_seed, "recipe": args.recipe, "model": args.model, "epochs": args.epochs,
        "formulas": {"HLR": "Acc(full_hard) - Acc(syn_hard)", "IOR": "Acc(syn_soft) - Acc(rand_soft)",
                     "LRS": "(e^a - e^-1)/(e - e^-1), a = w IOR - (1 - w) HLR",
                     "ARS": "(e^b - e^-1)/(e - e^-1), b = gamma (syn_soft - rand_soft) + (1 - gamma) "
                            "(syn_noaug - rand_noaug)"}})
    files.atomic_write_bytes(os.path.join(args.out, "scores.md"), (text + "\n").encode())
    print(text, flush=True)


if __name__ == "__main__":
    run_main(main)
