"""Checkpoints: the trainer's (save, resume) and any weights file read as a teacher. Every
read is ``weights_only``: a file that would run code when unpickled is refused."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from softlabel import files, provenance, zoo
from softlabel.errors import UserError

CHECKPOINT = "checkpoint.pth"
# Metadata our trainer stores next to the weights, read back when a checkpoint is a teacher.
META = ("arch", "num_classes", "mean", "std", "input_size", "class_names")
# The entries of the files RepDistiller's train_teacher.py and train_student.py write (ckpt_epoch_N.pth,
# <model>_best.pth, <model>_last.pth, the last with its flags as an argparse Namespace).
REPDISTILLER_KEYS = {"epoch", "model", "accuracy", "best_acc", "optimizer", "opt"}


def repdistiller_arch(ckpt: Any, path: str) -> Optional[str]:
    """The model of a teacher file in RepDistiller's layout, named by its folder as RepDistiller's
    train_student.py names it (``zoo.arch_from_folder``); None for any other file, or a folder
    naming no model of its zoo."""
    if not (isinstance(ckpt, dict) and "model" in ckpt and ("epoch" in ckpt or "opt" in ckpt)
            and set(ckpt) <= REPDISTILLER_KEYS):
        return None
    return zoo.arch_from_folder(path)


def read_weights(path: str, flag: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and metadata of a plain state_dict or a checkpoint dict (``model`` or the
    upstream ``state_dict`` key); DDP/compile prefixes are removed. A file of RepDistiller's
    layout names its model by its folder (meta ``arch``, with ``arch_from`` 'folder': a guess that
    -a/--arch overrides)."""
    with torch.serialization.safe_globals([argparse.Namespace]):  # plain attributes, no code
        ckpt = files.safe_torch_load(path, flag)
    meta: dict[str, Any] = {}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        state = ckpt["model"]
        meta = {k: ckpt[k] for k in META if k in ckpt}
        if arch := repdistiller_arch(ckpt, path):
            meta.update(arch=arch, arch_from="folder")
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        state = ckpt["state_dict"]
    else:
        state = ckpt
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{flag} {path}: not a state_dict nor a checkpoint with a 'model' entry")
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean, meta


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)       # DistributedDataParallel
    return getattr(model, "_orig_mod", model)      # torch.compile


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint saves for a run to resume from: the model, what trains it (``scaler``:
    None without float16 loss scaling) and ``extra`` state (a distiller's trained parts)."""
    model: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any = None
    extra: Optional[dict] = None


def save(path: str, state: TrainingState, epoch: int, config: Any, secrets: tuple[str, ...], mean, std,
         class_names: list[str]) -> None:
    """A training checkpoint, written atomically: a kill never leaves a partial one."""
    files.atomic_torch_save({
        **(state.extra or {}),
        "model": unwrap(state.model).state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(), "scaler": state.scaler.state_dict() if state.scaler else None,
        "epoch": epoch, "args": provenance.args_dict(config, secrets), "rng": rng_states(),
        # What a later reader needs to use this model as a teacher without guessing.
        "arch": config.model, "num_classes": config.num_classes, "mean": list(mean), "std": list(std),
        "input_size": config.input_size, "class_names": class_names,
    }, path)


def resume_path(resume: Optional[str], output_dir: str) -> Optional[str]:
    """The checkpoint --resume names (auto: the output folder's, if there is one)."""
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(output_dir, CHECKPOINT)
        return path if os.path.isfile(path) else None
    if not os.path.isfile(resume):
        raise UserError(f"--resume {resume}: no such file")
    return resume


def read_for_resume(path: str, config: Any, must_match: tuple[str, ...]) -> dict:
    """A training checkpoint this run can continue exactly, or one line saying why not."""
    ckpt = files.safe_torch_load(path, "--resume")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"--resume {path}: not a checkpoint of this trainer")
    shapes = {"model": dict, "optimizer": dict, "scheduler": dict, "rng": dict, "args": dict, "epoch": int}
    for key, kind in shapes.items():
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise UserError(f"--resume {path}: entry '{key}' is missing or not a {kind.__name__}; not a checkpoint "
                            f"this trainer wrote")
    if not isinstance(ckpt["rng"].get("torch"), torch.Tensor) or ckpt["epoch"] < 0:
        raise UserError(f"--resume {path}: its random state or epoch is malformed")
    saved, now = ckpt["args"], provenance.args_dict(config)
    for key in must_match:
        if key in saved and saved[key] != now.get(key):
            if key == "label_source":
                raise UserError(f"--resume {path}: the checkpoint was trained on {saved[key]}, this run on "
                                f"{now.get(key)}; it could not continue exactly")
            flag = "--" + key.replace("_", "-")
            raise UserError(f"--resume {path}: the checkpoint was trained with {flag} {saved[key]}, this run "
                            f"has {now.get(key)}; it could not continue exactly")
    passes = len(config.passes) if hasattr(config, "passes") else config.epochs  # train_FKD.py's count: passes
    if ckpt.get("epoch", 0) >= passes:
        raise UserError(f"--resume {path}: the checkpoint already finished all {passes} passes of --epochs "
                        f"{config.epochs}" if passes != config.epochs else
                        f"--resume {path}: the checkpoint already finished epoch {ckpt['epoch']} of --epochs "
                        f"{config.epochs}")
    return ckpt
