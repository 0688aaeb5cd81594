"""The plain (non-replayed) image pipelines, in the shape of torchvision's
references/classification/presets.py: the evaluation resize + center crop, and the online training
crop + flip of hard-label training and online distillation. Replaying a store's crops is a different
thing and lives in replay.py."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torchvision.transforms as T
from PIL import Image

from softlabel import replay

if TYPE_CHECKING:  # the type only: the pipelines need none of the distillers
    from softlabel.distill.base import Crop


def _eval_crop(input_size: int, crop_pct: float) -> list:
    """Resize the short side to ``input_size / crop_pct``, then center-crop ``input_size``."""
    return [T.Resize(int(round(input_size / crop_pct)), interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(input_size)]


def eval_transform(input_size: int, crop_pct: float, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """torchvision's ClassificationPresetEval (resize 256 -> center crop 224 upstream, bilinear) as
    normalized float tensors."""
    return T.Compose(_eval_crop(input_size, crop_pct) + [T.ToTensor(), T.Normalize(mean, std)])


def eval_pixels_transform(input_size: int, crop_pct: float) -> T.Compose:
    """The resize and center crop of ``eval_transform``, as uint8 pixels (normalized later,
    per teacher)."""
    return T.Compose(_eval_crop(input_size, crop_pct) + [T.PILToTensor()])


def train_crop_transform(train_crop: str, input_size: int, scale: tuple[float, float]) -> T.Compose:
    """The online training crop (--train-crop) + horizontal flip as uint8 pixels (normalized later,
    per model): resized = torchvision's ClassificationPresetTrain crop, RandomResizedCrop(input_size,
    scale, bilinear); padded = RepDistiller's CIFAR pipeline, RandomCrop(input_size, padding=4)."""
    crop = (T.RandomCrop(input_size, padding=4) if train_crop == "padded" else
            T.RandomResizedCrop(input_size, scale=scale, interpolation=T.InterpolationMode.BILINEAR))
    return T.Compose([crop, T.RandomHorizontalFlip(), T.PILToTensor()])


def drawn_train_crop(train_crop: str, input_size: int, scale: tuple[float, float]) -> Crop:
    """The crop of ``train_crop_transform`` (no flip) with its draws from a numpy generator, for a
    distiller's views: padded = RandomCrop(input_size, padding=4) (PIL fills the box outside the
    image with zeros, as the padding); resized = RandomResizedCrop's box drawn as torchvision draws
    it (replay.sample_crop)."""
    size = input_size

    def padded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        top, left = (int(rng.integers(0, max(n + 8 - size, 0) + 1)) - 4 for n in image.size[::-1])
        return image.crop((left, top, left + size, top + size))

    def resized(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        box = replay.sample_crop(rng, *image.size, scale)
        return replay.render_crop(image, box, False, size)
    return padded if train_crop == "padded" else resized
