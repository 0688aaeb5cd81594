"""Small helpers for scripts: versions, JSON-safe argument dicts, progress bars."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

from tqdm import tqdm


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


def args_dict(args: argparse.Namespace, secret: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments as plain JSON data, with secrets (API keys) left out."""
    out = {}
    for key, value in sorted(vars(args).items()):
        if key in secret:
            continue
        out[key] = value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)
    return out


def progress(total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar counting images, so its rate reads as images/s."""
    interactive = sys.stderr.isatty()
    # In a log file, a redraw every half second would bury everything else.
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, smoothing=0.1, disable=disable)
