"""Command-line pieces shared by the scripts: upstream flags our design replaces, --config files."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from typing import Any, Optional

from softlabel import files
from softlabel.errors import UserError
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


# What the trainer writes into its --output-dir and relabel into its store: --config of it reruns the run.
CONFIG_FILE = "args.yaml"
# Left out of a store's args.yaml: its files are the same whatever the loader processes (-j).
NOT_IN_STORE = ("workers",)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"YAML of flag values, keyed by the flags' long names (dashes or underscores, as "
                             f"the {CONFIG_FILE} of a run or a store writes them); flags on the command line "
                             f"override it")


def write_config(folder: str, given: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> None:
    """The flags as parsed into ``folder``/args.yaml (atomically), less ``leave_out``."""
    files.atomic_write_bytes(os.path.join(folder, CONFIG_FILE), config_of(given, leave_out).encode())


def parse_with_config(parser: argparse.ArgumentParser, argv: Optional[list[str]] = None) -> argparse.Namespace:
    """``parser.parse_args`` with --config FILE's values as the defaults (timm's --config)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = config_values(parser, known.config)
        parser.set_defaults(**values)
        for action in parser._actions:  # a positional the file gives may be left out (the FKD generator's DIR)
            if not action.option_strings and action.dest in values and action.nargs is None:
                action.nargs, action.required = "?", False
    return parser.parse_args(argv)


def config_values(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The flag values a --config file holds, each converted and checked as its flag's would be."""
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--config {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flags to values, found a {type(data).__name__}")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise UserError(f"--config {path}: '{key}' is not a flag of this command")
        values[dest] = _config_value(actions[dest], value, f"--config {path}: {key}")
    return values


def _config_value(action: argparse.Action, value: Any, where: str) -> Any:
    if value is None:
        return None
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, found {value!r}")
        return value
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if isinstance(value, list) != many or isinstance(value, dict):
        raise UserError(f"{where}: expected {'a list' if many else 'one value'}, found {value!r}")
    items = [_one(action, v, where) for v in (value if many else [value])]
    return items if many else items[0]


def _one(action: argparse.Action, value: Any, where: str) -> Any:
    if isinstance(value, (dict, list)):
        raise UserError(f"{where}: expected a value, found {value!r}")
    try:
        value = action.type(str(value)) if action.type is not None else value
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise UserError(f"{where}: {value!r} is not a valid value ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {sorted(map(str, action.choices))}")
    return value


def config_of(args: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> str:
    """The parsed flags as --config YAML (``leave_out``: secrets), keys sorted."""
    import yaml
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items())
              if k not in leave_out + ("config",)}
    return yaml.safe_dump(values, sort_keys=False)


def flags_from_keywords(parser: argparse.ArgumentParser, values: dict[str, Any], caller: str) -> argparse.Namespace:
    """``parser``'s defaults with ``values`` (keyed by the flags' dest names) in place, each converted
    and checked as its command-line value is (the flag's type, its choices, a switch's bool, a list
    for many values): a bad value is the UserError the command line gives. ``config``: a --config
    file whose values become the defaults, as on the command line. An unknown name is a TypeError,
    as an unknown keyword argument of a function."""
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    for name in values:
        if name not in actions:
            near = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), actions, 1)
            hint = f"; did you mean {near[0]!r}?" if near else " (the names are the flags' dest names)"
            raise TypeError(f"{caller}() got an unexpected keyword argument {name!r}{hint}")
    values = {name: plain(value) for name, value in values.items()}
    if values.get("config"):
        parser.set_defaults(**config_values(parser, values["config"]))
    args = parser.parse_args([])
    for name, value in values.items():
        setattr(args, name, _config_value(actions[name], value, f"{caller}(): {name}"))
    return args


def plain(value: Any) -> Any:
    """A path as its string and a tuple as a list, as the command line and --config give them."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return list(value) if isinstance(value, tuple) else value
