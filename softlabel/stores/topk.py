"""Top-k labels: the one encoder/decoder of the logits a top-k store keeps, shared by every format
that keeps them (batch files of format 1, packed epoch files of format 2, the per-image class
indices): which integer type holds the classes, the residual fill logit that keeps the left-out
classes' probability, the checks of what a reader is given, and the (B, C) logits rebuilt from it.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from softlabel.errors import UserError

COORD_SCALE = 65535  # top-k stores (both formats) keep crop fractions as uint16 fixed point
# Crop fractions of a top-k store are rounded to 1/65535: their sum may pass 1 by that much.
EDGE_SLACK = 2.0 / COORD_SCALE


def smallest_int_dtype(limit: int) -> torch.dtype:
    """The smallest integer type holding 0..limit-1."""
    if limit <= 256:
        return torch.uint8
    if limit <= 32768:
        return torch.int16
    return torch.int32


def residual_fill(logits: torch.Tensor, classes: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """(B,) the logit which, given to each class not in ``classes``, keeps their summed
    probability under a softmax at ``temperature``: T (logsumexp(dropped / T) - log(how many)).
    Exact at that temperature only (docs/stores.md measures the error at others)."""
    dropped = logits.float().scatter(1, classes, float("-inf")) / temperature
    n = logits.shape[1] - classes.shape[1]
    if n == 0:
        return torch.full((len(logits),), float("-inf"))
    return temperature * (torch.logsumexp(dropped, dim=1) - math.log(n))


TOPK_FILL_HELP = ("residual (default): one more float16 logit per sample, given to every class left out, "
                  "so that together they keep their probability; none: they get probability 0 (the top K "
                  "renormalized: much worse students, see docs/stores.md)")


def fill_setting(label_format: str, choice: str) -> Optional[str]:
    """The manifest's ``topk_fill`` for a --topk-fill choice: "residual", or None (no fill)."""
    return choice if label_format == "topk" and choice != "none" else None


def fill_entries(label_format: str, choice: str, temperature: float) -> dict:
    """The manifest's ``topk_fill`` and ``topk_fill_temperature`` for --topk-fill and
    --topk-fill-temperature (no fill: both None)."""
    fill = fill_setting(label_format, choice)
    return {"topk_fill": fill, "topk_fill_temperature": fill and temperature}


FILL_TEMPERATURE_HELP = ("the softmax temperature at which the residual fill keeps the left-out probability "
                         "exactly: give the student's -T (default: 1; docs/stores.md measures the error elsewhere)")


def fill_temperature(manifest: Any) -> float:
    """The temperature a store's residual fill is exact at (1 for stores made before the choice)."""
    return float(manifest.get("topk_fill_temperature") or 1.0)


def writes_fill(manifest: dict) -> bool:
    return manifest.get("label_format") == "topk" and manifest.get("topk_fill") == "residual"


def decode_topk(data: Any, path: str, num_classes: int, fill: bool) -> tuple[list, torch.Tensor]:
    """A top-k batch as a full record list, and the (B, C) mask of the logits it stores."""
    n = 3 if fill else 2
    what = "[values, classes, fill]" if fill else "[values, classes]"
    if not isinstance(data, (list, tuple)) or len(data) != 7 or not isinstance(data[5], (list, tuple)) \
            or len(data[5]) != n:
        raise UserError(f"store batch file {path}: not a top-k batch of this store (a list of 7 with {what}, "
                        f"as its manifest's topk_fill says)")
    coords, flip, mix_index, mix_lam, mix_bbox, label, index = data
    values, classes = label[0], label[1]
    if not (isinstance(coords, torch.Tensor) and coords.dtype == torch.uint16):
        raise UserError(f"store batch file {path}: top-k coords must be uint16")
    if not (isinstance(values, torch.Tensor) and isinstance(classes, torch.Tensor) and values.shape == classes.shape
            and values.dim() == 2 and values.shape[0] == len(coords)):
        raise UserError(f"store batch file {path}: top-k values and classes must be two (B, K) tensors")
    classes = classes.long()
    rest = None
    if fill:
        rest = label[2]
        if not (isinstance(rest, torch.Tensor) and rest.shape == (len(values),) and rest.is_floating_point()):
            raise UserError(f"store batch file {path}: top-k fill must be a ({len(values)},) float tensor")
    try:
        logits, stored = topk_logits(values.float(), classes, rest, num_classes)
    except ValueError as exc:
        raise UserError(f"store batch file {path}: {exc}") from None
    fractions = coords.to(torch.int32).double() / COORD_SCALE
    return [fractions.float(), flip, None if mix_index is None else mix_index.long(), mix_lam, mix_bbox,
            logits, index.long()], stored


def topk_problem(values: torch.Tensor, classes: torch.Tensor, fill: Optional[torch.Tensor],
                 num_classes: int) -> Optional[str]:
    """What no top-k writer writes, or None: a class out of range or twice in a record, a value
    that is not finite, a fill that is not finite (it is -inf only where no class is left out)."""
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        return f"top-k class index out of range for {num_classes} classes"
    if classes.shape[1] > 1 and bool((classes.sort(dim=1).values.diff(dim=1) == 0).any()):
        return "a top-k record names a class twice"
    if not bool(torch.isfinite(values).all()):
        return "top-k values hold NaN or infinite values"
    if fill is not None:
        ok = torch.isfinite(fill) | (torch.isneginf(fill) if classes.shape[1] >= num_classes else False)
        if not bool(ok.all()):
            return "the top-k fill holds NaN or infinite values"
    return None


def topk_logits(values: torch.Tensor, classes: torch.Tensor, fill: Optional[torch.Tensor],
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) logits from the top K (the others at ``fill``, or -inf without one) and the mask of
    the stored ones: the one decoder of every top-k encoding, so every reader refuses what
    ``topk_problem`` finds (raised as ValueError; the callers name the file)."""
    problem = topk_problem(values, classes, fill, num_classes)
    if problem:
        raise ValueError(problem)
    if fill is not None:
        logits = fill.float()[:, None].expand(len(values), num_classes).clone()
    else:
        logits = torch.full((len(values), num_classes), float("-inf"))
    logits.scatter_(1, classes, values.float())
    return logits, torch.zeros(logits.shape, dtype=torch.bool).scatter_(1, classes, True)
