"""The run's checkpoints: written after each --save-interval (and the init stage of a distiller),
read back by --resume so that a killed run continues to exactly the same weights."""
from __future__ import annotations

import os

import torch

from softlabel import checkpoint, files
from softlabel.errors import UserError
from softlabel.stores.base import same_path
from softlabel.streams import Stream
from softlabel.training.config import RESUME_MUST_MATCH
from softlabel.training.distillation import InitNets, init_stage
from softlabel.training.epochs import hard_label_epochs
from softlabel.training.step import Run

SECRETS = ("wandb_api_key",)  # flags never written: not in checkpoints, args.yaml or the tracker's config
BEST_CHECKPOINT = "model_best.pth"


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
    init_stage(run.distill, cfg, InitNets(run.student, run.teachers, run.mean, run.std), epochs, info,
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
    state = checkpoint.TrainingState(run.student, run.optimizer, run.scheduler, run.scaler, extra)
    checkpoint.save(os.path.join(cfg.output_dir, filename), state, epoch, cfg, SECRETS, run.mean, run.std,
                    run.index.classes)
