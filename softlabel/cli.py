"""Command-line pieces shared by the scripts: upstream flags our design replaces."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Optional

from softlabel.replay import MIX_TYPES, normalize_mix_type

# Accepted so old scripts run; each prints one note of what replaces it.
REPLACED_FLAGS = {
    "multiprocessing_distributed": ("store_true", "launch with torchrun --nproc_per_node N instead"),
    "dist_url": (str, "torchrun's environment provides the rendezvous (use torchrun --standalone)"),
    "dist_backend": (str, "chosen automatically: NCCL on GPU, gloo on CPU"),
    "world_size": (int, "taken from torchrun's WORLD_SIZE"),
    "rank": (int, "taken from torchrun's RANK"),
    "gpu": (int, "taken as --device cuda:N"),
    "gpu_id": (str, "select GPUs with CUDA_VISIBLE_DEVICES and torchrun --nproc_per_node"),
    "seed": (int, "every random choice derives from --fkd-seed"),
    "print_freq": (int, "progress is the bar (--no-progress hides it) and one line per evaluation (--eval-interval)"),
}
SHORT_FLAGS = {"print_freq": "-p"}  # upstream's short spellings of replaced flags


# The upstream flags both relabel scripts (batch and per-image) replace.
LABELLING_REPLACED = ("multiprocessing_distributed", "dist_url", "dist_backend", "world_size", "rank", "gpu", "seed")


def add_mix_type(group, default: Optional[str], help: str) -> None:
    """--mix-type, one definition for every script: upstream spellings (None, none) are accepted
    and every value reaches the code normalized ("none", "mixup", "cutmix")."""
    group.add_argument("--mix-type", default=default, type=normalize_mix_type, choices=list(MIX_TYPES),
                       metavar="{mixup,cutmix,none}", help=help)


def add_replaced_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    g = parser.add_argument_group("upstream flags (accepted so old scripts run; replaced as noted)")
    for name in names:
        kind, note = REPLACED_FLAGS[name]
        flags = [SHORT_FLAGS[name]] if name in SHORT_FLAGS else []
        flags.append("--" + name.replace("_", "-"))
        if kind == "store_true":
            g.add_argument(*flags, action="store_true", help=note)
        else:
            g.add_argument(*flags, type=kind, default=None, help=note)


def note_replaced_flags(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """One note per replaced flag that was given; --gpu N still selects cuda:N."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value is not False:
            print(f"note: --{name.replace('_', '-')} is not needed here: {REPLACED_FLAGS[name][1]}",
                  file=sys.stderr)
    if getattr(args, "gpu", None) is not None and getattr(args, "device", None) is None:
        args.device = f"cuda:{args.gpu}"


def freeze(args: argparse.Namespace, name: str, **resolved: Any) -> Any:
    """The flags resolved once into an immutable config: ``args`` with the ``resolved`` values
    (defaults that depend on the machine or on the data) in place. Every later step reads this
    object, so none can change a setting after the manifest or a check has used it."""
    values = {**vars(args), **resolved}
    unknown = set(resolved) - set(vars(args))
    if unknown:  # a resolved value is one of the flags, never a new setting
        raise ValueError(f"freeze: not flags: {sorted(unknown)}")
    return dataclasses.make_dataclass(name, list(values), frozen=True)(**values)
