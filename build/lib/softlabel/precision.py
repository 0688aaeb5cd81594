"""The autocast table: what each --amp choice, and each dtype name a manifest records, means."""
from __future__ import annotations

from typing import Optional

import torch

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Relabelling runs its teachers in float32 unless asked, as upstream (PRISM, SRe2L, FKD_SLG run
# them in float32; --use-fp16 rounds the stored logits only). docs/relabel.md measures what
# bf16/fp16 change.
RELABEL_AMP_HELP = ("autocast of the teachers' forward: off (float32, as upstream), bf16, fp16, or auto (bf16 on "
                    "CUDA, fp16 where the GPU has no bf16, off on CPU) (default: off; --use-fp16 only rounds "
                    "the stored labels)")
_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def amp_dtype(choice: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of an --amp choice on ``device`` (None: float32). ``auto``: bf16 on
    CUDA (fp16 where the GPU has no bf16), off elsewhere."""
    if choice != "auto":
        return _DTYPES[choice]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    """How a manifest records an autocast dtype ("bfloat16", "float16", or None)."""
    return str(dtype).replace("torch.", "") if dtype else None


def dtype_of_name(name: Optional[str]) -> Optional[torch.dtype]:
    return _NAMES.get(name or "")
