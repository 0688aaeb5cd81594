"""What both relabel scripts share: the teachers' accuracy on the crops they label, the preflight
check that stops a run whose teachers' classes do not line up with the folders, and the
teachers' accuracy on a validation folder (--evaluate)."""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from softlabel.data import IndexedImageFolder, scan_image_folder
from softlabel.distributed import DistInfo, reduce_across
from softlabel.errors import UserError
from softlabel.evaluation import batches
from softlabel.teachers import Ensemble, Teacher
from softlabel.transforms import eval_pixels_transform

PREFLIGHT_CROPS = 256  # the teachers' accuracy is checked on this many crops before anything is written


class Accuracy:
    """Top-1 of each teacher and the ensemble on the crops they label. A mixed crop counts as
    right when the prediction is either of its two images' classes."""

    def __init__(self, n_teachers: int):
        self.correct = torch.zeros(n_teachers + 1, dtype=torch.float64)
        self.seen = 0

    def update(self, combined: torch.Tensor, outputs: list[torch.Tensor], target: torch.Tensor, mix_index) -> None:
        partner = target if mix_index is None else target[mix_index]
        for i, logits in enumerate([combined] + outputs):
            pred = logits.argmax(1).cpu()
            self.correct[i] += float(((pred == target) | (pred == partner)).sum())
        self.seen += len(target)

    def percent(self) -> list[float]:
        return (100.0 * self.correct / max(self.seen, 1)).tolist()


def check_teacher_accuracy(acc: Accuracy, teachers: list[Teacher], num_classes: int, mixed: bool,
                           minimum: Optional[float], where: str) -> None:
    """A teacher whose classes do not line up with the folders labels at chance: say so
    loudly, or stop (--min-teacher-acc) before the labels are used."""
    top1 = acc.percent()[0]
    chance = 100.0 * (2.0 if mixed else 1.0) / num_classes
    if minimum is not None and top1 < minimum:
        raise UserError(f"the teachers' top-1 on {where} is {top1:.1f}%, below --min-teacher-acc {minimum:g}; "
                        f"is their class order the folders' order? (see --class-map)")
    if top1 < 2 * chance:
        bar = "!" * 78
        print(f"{bar}\nWARNING: the teachers' top-1 on {where} is {top1:.1f}%, below twice chance "
              f"({2 * chance:.1f}%).\nLikely cause: the teachers' class order does not match the class "
              f"folders (folder i is taken as\nteacher class i). Name ImageNet folders by WNID, or pass "
              f"--class-map FILE. Other causes:\nwrong weights, or crops too small for these images "
              f"(--min-scale-crops).\n--min-teacher-acc PCT turns this into an error.\n{bar}",
              file=sys.stderr, flush=True)


def refuse_below_together(acc: Accuracy, teachers: list[Teacher], num_classes: int, mixed: bool, minimum: float,
                          info: DistInfo) -> None:
    """--min-teacher-acc on the first crops each rank labels, before its store exists: every rank learns
    whether any rank's teachers fall below (so none waits for another in a later collective), the rank
    below says why, the others stop with it."""
    below = bool(acc.seen) and acc.percent()[0] < minimum
    anywhere = reduce_across(info, float(below), op="max")[0] > 0
    one = len(teachers) == 1
    if below:
        check_teacher_accuracy(acc, teachers, num_classes, mixed, minimum,
                               f"the first {acc.seen} crops {'it' if one else 'they'} label{'s' if one else ''}")
    if anywhere:
        raise UserError(f"the teachers' top-1 on another rank's first crops is below --min-teacher-acc "
                        f"{minimum:g}; is their class order the folders' order? (see --class-map)")


class HeldWrites:
    """Both relabel commands' writes, held back until the teachers pass the accuracy check on the
    first crops they label (PREFLIGHT_CROPS, or every crop of a shorter run), then written through:
    a teacher whose classes do not line up with the folders never leaves a file behind."""

    def __init__(self, write: Callable[..., None], acc: Accuracy, teachers: list[Teacher], num_classes: int,
                 mixed: bool, minimum: Optional[float], first_crops: int = PREFLIGHT_CROPS):
        self.write, self.acc, self.teachers = write, acc, teachers
        self.num_classes, self.mixed, self.minimum, self.first_crops = num_classes, mixed, minimum, first_crops
        self.pending: list[tuple] = []
        self.checked = False
        self.written = 0

    def add(self, *entry: Any) -> None:
        """One labelled entry (the arguments of ``write``); call after ``acc`` counted its crops."""
        self.pending.append(entry)
        if not self.checked and self.acc.seen >= self.first_crops:
            self._check("the first {seen} crops {who} label{s}")
        if self.checked:
            self._flush()

    def finish(self) -> None:
        """The end of the run: a run shorter than the check's crops is checked on all of them."""
        if self.pending:
            self._check("the {seen} crops {who} labelled")
            self._flush()

    def _check(self, where: str) -> None:
        one = len(self.teachers) == 1
        check_teacher_accuracy(self.acc, self.teachers, self.num_classes, self.mixed, self.minimum,
                               where.format(seen=self.acc.seen, who="it" if one else "they", s="s" if one else ""))
        self.checked = True

    def _flush(self) -> None:
        for entry in self.pending:
            self.write(*entry)
        self.written += len(self.pending)
        self.pending.clear()


def evaluate_teachers(ens: Ensemble, val_dir: str, class_index_of_folder: dict[str, int], input_size: int,
                      crop_pct: float, workers: int) -> None:
    """Print each teacher's and the ensemble's top-1 on a validation folder (center crops)."""
    index = scan_image_folder(val_dir, "--val-dir")
    unknown = [c for c in index.classes if c not in class_index_of_folder]
    if unknown:
        raise UserError(f"--val-dir {val_dir}: class folder '{unknown[0]}' is not among --data's classes")
    loader = DataLoader(IndexedImageFolder(index, eval_pixels_transform(input_size, crop_pct)),
                        batch_size=256, num_workers=min(workers, 2))

    def all_logits(pixels: torch.Tensor) -> torch.Tensor:  # (B, 1 + teachers, C)
        combined, outputs = ens(pixels, None, None, None)
        return torch.stack([combined] + outputs, dim=1)
    class_of_folder = torch.tensor([class_index_of_folder[c] for c in index.classes])
    correct = torch.zeros(len(ens.teachers) + 1, dtype=torch.float64)
    for logits, folder in batches(all_logits, loader, ens.device):
        correct += (logits.argmax(2) == class_of_folder[folder][:, None]).double().sum(dim=0)
    acc = 100.0 * correct / max(len(index), 1)
    names = ", ".join(f"{t.arch} {a:.2f}%" for t, a in zip(ens.teachers, acc[1:].tolist()))
    print(f"evaluate: top-1 on --val-dir {val_dir} ({len(index)} images): ensemble {acc[0]:.2f}% ({names})",
          flush=True)
