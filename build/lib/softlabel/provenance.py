"""What a run records about itself in a manifest or checkpoint: its arguments (secrets left
out) and the versions of the libraries that produced it."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Any


def library_versions() -> dict[str, str]:
    import numpy
    import PIL
    import torch
    import torchvision

    import softlabel
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__,
                "pillow": PIL.__version__, "softlabel": softlabel.__version__}
    timm = sys.modules.get("timm")
    if timm is not None:
        versions["timm"] = timm.__version__
    return versions


def args_dict(args: Any, secret: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments (a Namespace or a dataclass) as plain JSON data, secrets (API keys) left out."""
    items = vars(args) if isinstance(args, argparse.Namespace) else dict(vars(args))
    out = {}
    for key, value in sorted(items.items()):
        if key in secret:
            continue
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)
    return out
