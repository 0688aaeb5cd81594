"""What a run reports while it runs: a progress bar counting images, and optional wandb logging.

wandb is off by default; ``offline`` needs no account and no key; ``online`` reads the key from
the environment (WANDB_API_KEY) like any wandb program. No key is ever written into code, logs,
checkpoints or the run config."""
from __future__ import annotations

import sys
from typing import Any, Optional

from tqdm import tqdm

from softlabel.errors import optional_import


def progress(total: int, desc: str, disable: bool = False) -> tqdm:
    """A progress bar counting images, so its rate reads as images/s."""
    interactive = sys.stderr.isatty()
    # In a log file, a redraw every half second would bury everything else.
    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True,
                mininterval=0.5 if interactive else 30.0, smoothing=0.1, disable=disable)


class Tracker:
    def __init__(self, mode: str, project: str, name: str, directory: str, config: dict[str, Any]):
        self.run: Optional[Any] = None
        if mode == "disabled":
            return
        wandb = optional_import("wandb", "wandb", f"--wandb-mode {mode}")
        self.run = wandb.init(project=project, name=name, dir=directory, mode=mode, config=config,
                              settings=wandb.Settings(silent=True))

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(row, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
