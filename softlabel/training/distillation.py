"""The trainer's --distiller at work: building one from a probe forward of both networks, and the
init stage of the methods that train parts of their own before distilling (AB, FT, KDSS)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from softlabel import checkpoint, replay
from softlabel.distill import DISTILLERS, Distiller, Features, FeatureTap, stage_modules, stage_names
from softlabel.distributed import DistInfo
from softlabel.errors import UserError
from softlabel.teachers import Ensemble
from softlabel.training.config import TrainConfig


@dataclass
class DistillRun:
    """A feature distiller at work: its module (wrapped for DDP when it trains parameters), the
    hooks that tap the student's and the teacher's stages, and its weight."""
    distiller: nn.Module
    student_tap: FeatureTap
    teacher_tap: FeatureTap
    weight: float


@dataclass(frozen=True)
class InitNets:
    """The networks an init stage runs: the student, the teachers, and the mean and std the
    student's inputs are normalized with."""
    student: nn.Module
    teachers: Ensemble
    mean: list[float]
    std: list[float]


def _names(text: Optional[str]) -> Optional[list[str]]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def build_distiller(cfg: TrainConfig, student: nn.Module, teachers: Ensemble, device: torch.device,
                    num_samples: int, targets: list[int]) -> Optional[DistillRun]:
    """The --distiller, its parts shaped by one probe forward of both networks (no model code is
    edited: the features come from forward hooks on their stage modules). Parts trained only in
    an init stage are frozen here, so the distilling optimizer leaves them out."""
    if not cfg.distiller:
        return None
    method = DISTILLERS[cfg.distiller]
    teacher = teachers.teachers[0].model
    flags = ("--feat-layers", "--teacher-feat-layers")
    student_tap = _tap(cfg.distiller, student, _names(cfg.feat_layers), flags[0], method.preact)
    teacher_tap = _tap(cfg.distiller, teacher, _names(cfg.teacher_feat_layers or cfg.feat_layers), flags[1],
                       method.preact)
    probe = torch.zeros(2, 3, cfg.input_size, cfg.input_size, device=device)
    was_training = student.training
    student.eval()
    with torch.no_grad():
        student(probe)
        teacher(probe)
    student.train(was_training)
    taken = []
    for side, tap, flag in (("student", student_tap, flags[0]), ("teacher", teacher_tap, flags[1])):
        try:
            taken.append(tap.take())
        except RuntimeError as exc:
            raise UserError(f"--distiller {cfg.distiller} ({flag}): the {side}'s {exc}; name stages its "
                            f"forward runs") from None
        check_stages(cfg.distiller, method, side, taken[-1], tap.names, flag, len(probe))
    fs, ft = taken
    if method.preact:
        for tap, features, flag in ((student_tap, fs, flags[0]), (teacher_tap, ft, flags[1])):
            try:
                tap.check_preact(features)
            except UserError as exc:
                raise UserError(f"--distiller {cfg.distiller} ({flag}): {exc}") from None
    if len(fs.stages) != len(ft.stages):
        raise UserError(f"--distiller {cfg.distiller}: the student has {len(fs.stages)} stages, the teacher "
                        f"{len(ft.stages)}; name matching ones with --feat-layers / --teacher-feat-layers")
    for i in method.map_stages(len(fs.stages)):
        problem = method.stage_problem(i, fs.stages[i].shape, ft.stages[i].shape)
        if problem:
            raise UserError(f"--distiller {cfg.distiller}: the student's {student_tap.names[i]} "
                            f"{tuple(fs.stages[i].shape)} against the teacher's {teacher_tap.names[i]} "
                            f"{tuple(ft.stages[i].shape)}: {problem}; name other layers with --feat-layers / "
                            f"--teacher-feat-layers")
    try:
        distiller = method(fs, ft, num_samples=num_samples, targets=torch.tensor(targets)).to(device)
    except ValueError as exc:
        raise UserError(f"--distiller {cfg.distiller}: {exc}") from None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        for warning in distiller.warnings():
            print(f"train: warning: --distiller {cfg.distiller}: {warning}", file=sys.stderr, flush=True)
    for part in distiller.init_parts():
        part.requires_grad_(False)
    weight = cfg.distill_weight if cfg.distill_weight is not None else method.weight
    return DistillRun(distiller, student_tap, teacher_tap, weight)


def _tap(name: str, model: nn.Module, layers: Optional[list[str]], flag: str, preact: bool) -> FeatureTap:
    modules = stage_modules(model, layers, flag)
    try:
        return FeatureTap(modules, preact, stage_names(model, modules))
    except UserError as exc:  # preact: no ReLU whose input a hook can take
        raise UserError(f"--distiller {name} ({flag}): {exc}") from None


MAP = "a 4-D feature map (batch, channels, height, width)"


def check_stages(name: str, method: type[Distiller], side: str, features: Features, layers: list[str], flag: str,
                 batch: int) -> None:
    """On the probe forward: the tapped layers give what the method needs (enough stages; a
    batch-first tensor at each, a 4-D map where it convolves or pools), else one line naming the
    distiller, the layer, what it gave and what is needed."""
    n = len(features.stages)
    if n < method.min_stages:
        raise UserError(f"--distiller {name}: the {side}'s layers {', '.join(layers)} ({flag}) are {n} stage(s); "
                        f"{name} needs at least {method.min_stages} (it distills stage {method.min_stages}); "
                        f"name {method.min_stages} or more with {flag}")
    maps = set(method.map_stages(n))
    for i, (out, layer) in enumerate(zip(features.stages, layers)):
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[0] == batch \
                and (i not in maps or out.dim() == 4):
            continue
        got = f"a {tuple(out.shape)} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        needs = MAP if i in maps else "a tensor with the batch first, of 2 or more dimensions"
        raise UserError(f"--distiller {name}: the {side}'s {layer} ({flag}) gives {got} on a probe batch of {batch} "
                        f"images; {name} needs {needs} there; name other layers with {flag}")


def _average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """Mean of the ranks' gradients, in one all-reduce of them all flattened (one per parameter
    would be a collective for every tensor of the model)."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
        offset += p.grad.numel()


def distilling(run: Optional[DistillRun]) -> Optional[DistillRun]:
    """The run the distilling steps use. None for a method whose loss after its init stage is nil
    (AB): its hooks are removed, so that no step takes (on in-place ReLUs, clones) every stage's
    features for nothing. The run itself stays, for the checkpoint of its init parts."""
    if run is None or checkpoint.unwrap(run.distiller).distills:
        return run
    run.student_tap.remove()
    run.teacher_tap.remove()
    return None


def _capped_lr(cfg: TrainConfig, d: nn.Module, teacher: Features, lr: float, optimizer: torch.optim.Optimizer,
               info: DistInfo, log: Callable[[str], None]) -> float:
    """The method's default init rate, capped at what its first batch's features allow (the
    smallest cap over ranks): a method's rate may suit its paper's data and not these."""
    limit = torch.tensor(d.init_lr_limit(teacher), dtype=torch.float64, device=info.device)
    if info.distributed:
        dist.all_reduce(limit, op=dist.ReduceOp.MIN)
    if float(limit) >= lr:
        return lr
    for group in optimizer.param_groups:
        group["lr"] = float(limit)
    log(f"distill init ({cfg.distiller}): lr {float(limit):.3g}, not {lr:g}, on teacher features of this scale "
        f"(--distill-init-lr auto; a rate given is used as given)")
    return float(limit)


def diverged(cfg: TrainConfig, d: nn.Module, teacher: Features, epoch: int, loss: float, lr: float) -> UserError:
    """The one line of an init stage that diverged, naming the cap a method's default rate lacks where
    the teacher's features are what makes that rate diverge (FT's paraphraser)."""
    capped = cfg.distill_init_lr is None and math.isfinite(d.init_lr_limit(teacher))
    return UserError(f"--distiller {cfg.distiller}: its init stage diverged in epoch {epoch + 1} (loss {loss}) at lr "
                     f"{lr:g}" + ("; --distill-init-lr auto caps the rate where the teacher's features are as large "
                                  "as these, or give a smaller --distill-init-lr" if capped
                                  else "; try a smaller --distill-init-lr"))


INIT_GAMMA = 0.1  # the factor at each init milestone (SSKD's --gamma)


def init_milestones(method: type[Distiller], epochs: int) -> list[int]:
    """The init epochs at which the rate drops by INIT_GAMMA: the method's ``init_milestones``, of its
    default ``init_epochs``, scaled to ``epochs`` and rounded to the nearest epoch (halves up)."""
    return [math.floor(epochs * m / method.init_epochs + 0.5) for m in method.init_milestones]


def _init_step(run: DistillRun, nets: InitNets, batch: dict, info: DistInfo) -> tuple[torch.Tensor, Features]:
    """The init loss of one batch (this rank's share of the global mean) and the teacher's features."""
    d = run.distiller
    pixels = batch["pixels"].to(info.device, non_blocking=True)  # every view of each image, view-major
    nets.teachers(pixels, None, None, None)
    teacher_features = run.teacher_tap.take().detached()
    student_features = None
    if d.init_trains_student:
        nets.student(replay.slice_inputs(pixels, None, nets.mean, nets.std, None, None))
        student_features = run.student_tap.take()
    share = len(batch["target"]) * info.world_size / batch["batch_size"]  # this rank's part of the global mean
    return d.init_loss(student_features, teacher_features).float() * share, teacher_features


def init_stage(run: DistillRun, cfg: TrainConfig, nets: InitNets, epochs: Iterator, info: DistInfo,
               log: Callable[[str], None]) -> list[float]:
    """RepDistiller's ``init``: before distilling, train the method's init parts (AB: its
    connectors and the student; FT: its paraphraser; KDSS: the teacher's self-supervision head, on
    the teacher's views) on the method's init loss alone, with SGD at the init learning rate (x0.1
    at the method's scaled ``init_milestones``: KDSS's), the run's momentum and weight decay, for
    --distill-init-epochs epochs of the run's crops and flips (no mixing; each rank's batch whole).
    Gradients are averaged over ranks by hand, the student not being under DDP yet. Returns each
    epoch's mean loss."""
    d, student = run.distiller, nets.student
    params = [p for part in d.init_parts() for p in part.parameters()]
    if d.init_trains_student:
        params += list(student.parameters())
    given = isinstance(cfg.distill_init_lr, float)
    lr = cfg.distill_init_lr if given else d.init_lr(cfg.model, cfg.learning_rate)
    for part in d.init_parts():
        part.requires_grad_(True)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    student.train(d.init_trains_student)
    milestones = init_milestones(type(d), cfg.distill_init_epochs)
    losses, capped = [], cfg.distill_init_lr != "auto"  # the method's rate and a rate given are used as they are
    for epoch, batches in epochs:
        rate = lr * INIT_GAMMA ** sum(epoch >= m for m in milestones)
        for group in optimizer.param_groups:
            group["lr"] = rate
        total, seen = torch.zeros((), device=info.device), 0
        for batch in batches:
            loss, teacher_features = _init_step(run, nets, batch, info)
            if not capped:
                lr, capped = _capped_lr(cfg, d, teacher_features, lr, optimizer, info, log), True
                rate = lr  # the first epoch's
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if info.distributed:
                _average_gradients([p for p in params if p.grad is not None], info.world_size)
            optimizer.step()
            total += loss.detach() * batch["batch_size"] / info.world_size
            seen += batch["batch_size"]
        if info.distributed:
            dist.all_reduce(total)
        losses.append(float(total) / max(seen, 1))
        if not math.isfinite(losses[-1]):
            raise diverged(cfg, d, teacher_features, epoch, losses[-1], rate)
        log(f"distill init ({cfg.distiller}) epoch {epoch + 1}/{cfg.distill_init_epochs}: loss {losses[-1]:.4f}, "
            f"lr {rate:g}")
    _end_init(d, params, student, info)
    return losses


def _end_init(d: Distiller, params: list[nn.Parameter], student: nn.Module, info: DistInfo) -> None:
    """The init parts frozen again, their gradients dropped; the student as DDP would start it."""
    for part in d.init_parts():
        part.requires_grad_(False)
    for p in params:
        p.grad = None
    if info.distributed and d.init_trains_student:  # batch-norm statistics of rank 0, as DDP would broadcast
        for b in student.buffers():
            dist.broadcast(b, 0)
    student.train()
