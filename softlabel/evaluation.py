"""The one evaluation loop: a model's logits on every image of a loader, batch by batch."""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from softlabel.replay import normalize


@torch.no_grad()
def batches(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device, *,
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
            channels_last: bool = False, amp: Optional[torch.dtype] = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 logits on the CPU, targets) of each batch of the loader, in its order. With
    ``mean``/``std`` the loader yields uint8 pixels, normalized here exactly as ToTensor +
    Normalize would. Metrics of a large split accumulate over these (``SplitMetrics``) rather
    than keep every logit."""
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        if mean is not None:
            images = normalize(images, mean, std)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(images).float().cpu()
        yield logits, target


def predict(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, device: torch.device,
            **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of the whole loader, in its order, on the CPU (see ``batches``): for
    splits small enough to hold."""
    logits, targets = zip(*batches(model, loader, device, **kwargs)) if len(loader) else ((), ())
    return torch.cat(logits), torch.cat(targets)
