"""The one crop/flip/mix implementation, used to *sample* augmentations when relabelling and
to *replay* them when training, so the student sees exactly the pixels the teacher labelled.

Every random choice derives from ``(seed, epoch, batch)`` through numpy's ``SeedSequence``:
the result does not depend on the number of loader workers, processes or ranks, nor on the
order in which batches are produced.

Pipeline (the upstream SRe2L/PRISM one, so a store can be replayed without our code):
PIL image -> crop at the stored fractional box (rounded to whole pixels) -> bilinear resize
to ``input_size`` -> horizontal flip -> to tensor -> normalize -> cutmix/mixup on the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from softlabel import streams
from softlabel.streams import Stream

MIX_TYPES = ("none", "mixup", "cutmix")
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass(frozen=True)
class Augment:
    """How relabelling samples each batch: the seed every choice derives from, the batch size,
    the rendered size, the crops' area range, and the mix (``mixup`` / ``cutmix``: their Beta alphas)."""
    seed: int
    batch_size: int
    input_size: int
    scale: tuple[float, float]
    mix_type: str
    mixup: float = 0.8
    cutmix: float = 1.0


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The dataset indices of one epoch, in the order batches take them."""
    return streams.rng(seed, Stream.SAMPLE_ORDER, epoch).permutation(num_samples)


def batches_per_epoch(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)  # the last batch may be short (drop_last=False)


def batch_slice(batch_size: int, batch: int) -> slice:
    """Where batch ``batch`` sits in an epoch's sample order."""
    return slice(batch * batch_size, (batch + 1) * batch_size)


def batch_len(num_samples: int, batch_size: int, batch: int) -> int:
    """Samples in batch ``batch`` of an epoch: ``batch_size``, fewer in the last one."""
    return min(batch_size, num_samples - batch * batch_size)


def epoch_jobs(first_epoch: int, epochs: int, per_epoch: int) -> list[tuple[int, int]]:
    """(epoch, batch) of every step from ``first_epoch`` up to ``epochs``, in order."""
    return [(e, b) for e in range(first_epoch, epochs) for b in range(per_epoch)]


def kept_in_epoch(seed: int, epoch: int, per_epoch: int, keep: float) -> list[int]:
    """The steps of ``epoch`` a store pruned to ``keep`` of its steps labels (label pruning, as
    LPLD): round(keep x steps) over the first epochs, spread so each epoch keeps its share to
    within one step, the steps drawn from (seed, epoch). keep 1: every step."""
    if keep >= 1.0:
        return list(range(per_epoch))
    n = math.floor((epoch + 1) * per_epoch * keep + 0.5) - math.floor(epoch * per_epoch * keep + 0.5)
    return sorted(int(b) for b in streams.rng(seed, Stream.LABEL_KEEP, epoch).permutation(per_epoch)[:n])


def kept_steps(seed: int, epochs: int, per_epoch: int, keep: float) -> list[tuple[int, int]]:
    """(epoch, step) of every labelled step of the first ``epochs`` epochs, in order."""
    return [(e, b) for e in range(epochs) for b in kept_in_epoch(seed, e, per_epoch, keep)]


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    return streams.rng(seed, Stream.BATCH_AUGMENT, epoch, batch)


def normalize_mix_type(mix_type: Optional[str]) -> str:
    """Accept upstream spellings: ``None``/``none``/empty mean no mixing."""
    if mix_type is None or str(mix_type).lower() in ("none", ""):
        return "none"
    return str(mix_type).lower()


# ----------------------------------------------------------------------------- sampling

def sample_crop(rng: np.random.Generator, width: int, height: int,
                scale: tuple[float, float], ratio: tuple[float, float] = DEFAULT_RATIO) -> tuple[float, float, float, float]:
    """RandomResizedCrop's box, drawn as torchvision draws it; returned as fractions
    (top/H, left/W, height/H, width/W) of the image."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i / height, j / width, h / height, w / width
    # Fallback to a central crop, as torchvision does.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    i, j = (height - h) // 2, (width - w) // 2
    return i / height, j / width, h / height, w / width


def sample_crops_and_flips(rng: np.random.Generator, sizes: Sequence[tuple[int, int]],
                           scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes (B, 4) float32 and flips (B,) bool for images of the given (width, height)."""
    coords = torch.tensor([sample_crop(rng, w, h, scale) for w, h in sizes], dtype=torch.float32)
    flips = torch.from_numpy(rng.random(len(sizes)) < 0.5)
    return coords.reshape(len(sizes), 4), flips


def sample_mix(rng: np.random.Generator, mix_type: str, batch_size: int, input_size: int,
               mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0
               ) -> tuple[Optional[torch.Tensor], Optional[float], Optional[list[int]]]:
    """Partner index, lambda and (for cutmix) box of one batch, as the upstream ``mix_aug``.

    For cutmix the returned lambda is the fraction of the image kept after the box is
    clipped to the image, i.e. the true mixing weight of the pixels.
    """
    mix_type = normalize_mix_type(mix_type)
    if mix_type == "none":
        return None, None, None
    if mix_type == "mixup":
        lam = float(rng.beta(mixup_alpha, mixup_alpha))
        index = torch.from_numpy(rng.permutation(batch_size).astype(np.int64))
        return index, lam, None
    if mix_type == "cutmix":
        lam0 = float(rng.beta(cutmix_alpha, cutmix_alpha))
        index = torch.from_numpy(rng.permutation(batch_size).astype(np.int64))
        rows = cols = input_size
        cut = math.sqrt(1.0 - lam0)
        cut_r, cut_c = int(rows * cut), int(cols * cut)
        cr, cc = int(rng.integers(rows)), int(rng.integers(cols))
        x1, x2 = min(max(cr - cut_r // 2, 0), rows), min(max(cr + cut_r // 2, 0), rows)
        y1, y2 = min(max(cc - cut_c // 2, 0), cols), min(max(cc + cut_c // 2, 0), cols)
        lam = 1.0 - (x2 - x1) * (y2 - y1) / float(rows * cols)
        return index, lam, [x1, y1, x2, y2]
    raise ValueError(f"unknown mix type {mix_type!r}; expected one of {MIX_TYPES}")


# ----------------------------------------------------------------------------- replay

def crop_box_problem(coords: torch.Tensor, slack: float) -> Optional[str]:
    """What is wrong with (K, 4) crop fractions (top, left, height, width) for replay, or None:
    every box of positive area and inside the image (``slack``: the rounding of the stored type)."""
    if not len(coords):
        return None
    top, left, h, w = coords.double().unbind(dim=1)
    if not bool(((h > 0) & (w > 0)).all()):
        return "a crop box has zero area"
    if not bool(((top + h <= 1 + slack) & (left + w <= 1 + slack)).all()):
        return "a crop box runs past the image edge"
    return None


# How far a stored cutmix weight may be from 1 - its box's share of the crop. ``sample_mix`` computes
# it with one product of integers, one division and one subtraction, each rounded to float64, and
# stores keep it in float64 (a Python float in a batch file, <f8 in an epoch file): recomputed here
# the same way it agrees to within a few float64 ulps of 1 (< 1e-15). One pixel more or less of box
# moves it by 1 / input_size^2, at least 2^-24 (6e-8) for the largest crops (4096 px).
CUTMIX_LAM_SLACK = 1e-12


def cutmix_lam_problem(lam: Sequence[float] | float, boxes: Sequence, input_size: int) -> Optional[str]:
    """What is wrong with cutmix weights for their boxes ([x1, y1, x2, y2] in crop pixels), or None:
    each must be the share of the ``input_size`` px crop the box leaves unmixed, as ``sample_mix``
    gives it (stores made by upstream code keep the Beta draw instead: not for those)."""
    lam = np.asarray(lam, dtype=np.float64).reshape(-1)
    box = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    unmixed = 1.0 - (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) / float(input_size * input_size)
    bad = np.flatnonzero(~(np.abs(lam - unmixed) <= CUTMIX_LAM_SLACK))
    if not len(bad):
        return None
    k = int(bad[0])
    return (f"mix_lam {lam[k]:.6g} disagrees with the cutmix box {box[k].tolist()}, which leaves {unmixed[k]:.6g} "
            f"of the {input_size}px crop unmixed (edited by hand?)")


def crop_box(coords: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of fractional coords, rounded as PIL's crop does."""
    top, left, h, w = (float(c) for c in coords)
    top, left, h, w = top * height, left * width, h * height, w * width
    return round(left), round(top), round(left + w), round(top + h)


RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def render_crop(img: Image.Image, coords: Sequence[float], flip: bool, input_size: int,
                resample: str = "bilinear") -> Image.Image:
    """torchvision's resized_crop (+ hflip) of a PIL image at fractional coords: PIL rounds the box."""
    out = img.crop(crop_box(coords, *img.size)).resize((input_size, input_size), RESAMPLE[resample])
    return out.transpose(Image.FLIP_LEFT_RIGHT) if flip else out


def render_batch(images: Sequence[Image.Image], coords: torch.Tensor, flips: torch.Tensor,
                 input_size: int, resample: str = "bilinear") -> torch.Tensor:
    """Crop, resize and flip every image; uint8 (B, 3, S, S), still un-normalized (a quarter
    of the bytes of float pixels to move between processes and to the GPU)."""
    out = np.empty((len(images), 3, input_size, input_size), dtype=np.uint8)
    for k, (img, box, flip) in enumerate(zip(images, coords.tolist(), flips.tolist())):
        # image by image: a cache-sized transposition, 2-4x cheaper than permuting the whole batch after
        out[k] = np.asarray(render_crop(img, box, flip, input_size, resample)).transpose(2, 0, 1)
    return torch.from_numpy(out)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32, exactly as ToTensor followed by Normalize."""
    x = pixels.to(torch.float32, copy=True).div_(255)  # in place after the one copy: same values, no temporaries
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def mix_with(images: torch.Tensor, partners: Optional[torch.Tensor], mix_lam: Optional[float],
             mix_bbox: Optional[Sequence[int]]) -> torch.Tensor:
    """Mix each image with its partner: cutmix (a box given) or mixup (no box); no partners:
    unchanged. Partners are passed in, so a rank can mix its slice of a batch alone."""
    if partners is None:
        return images
    if mix_bbox is not None:
        x1, y1, x2, y2 = (int(v) for v in mix_bbox)
        out = images.clone()
        out[:, :, x1:x2, y1:y2] = partners[:, :, x1:x2, y1:y2]
        return out
    lam = float(mix_lam)
    return lam * images + (1.0 - lam) * partners


def partners_of(values: torch.Tensor, mix_index: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Each sample's mix partner (its pixels, its target, ...): ``values[mix_index]``; None unmixed."""
    return None if mix_index is None else values[mix_index.to(values.device)]


def apply_mix(images: torch.Tensor, mix_index: Optional[torch.Tensor], mix_lam: Optional[float],
              mix_bbox: Optional[Sequence[int]]) -> torch.Tensor:
    """Cutmix or mixup of a whole normalized batch, each sample with ``images[mix_index]``."""
    if mix_index is None:
        return images
    return mix_with(images, partners_of(images, mix_index), mix_lam, mix_bbox)


def model_inputs(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 mix_index: Optional[torch.Tensor], mix_lam: Optional[float],
                 mix_bbox: Optional[Sequence[int]]) -> torch.Tensor:
    """What the network sees: normalized pixels with the batch's mix applied."""
    return apply_mix(normalize(pixels, mean, std), mix_index, mix_lam, mix_bbox)


def slice_inputs(pixels: torch.Tensor, partners: Optional[torch.Tensor], mean: Sequence[float],
                 std: Sequence[float], mix_lam: Optional[float], mix_bbox: Optional[Sequence[int]]) -> torch.Tensor:
    """``model_inputs`` for a slice of a batch whose mix partners' pixels come alongside:
    equal, sample by sample, to the same rows of the whole batch's inputs."""
    partners = None if partners is None else normalize(partners, mean, std)
    return mix_with(normalize(pixels, mean, std), partners, mix_lam, mix_bbox)
