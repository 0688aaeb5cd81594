"""Optional wandb logging. Off by default; ``offline`` needs no account and no key; ``online``
reads the key from the environment (WANDB_API_KEY) like any wandb program. No key is ever
written into code, logs, checkpoints or the run config."""
from __future__ import annotations

from typing import Any, Optional


class Tracker:
    def __init__(self, mode: str, project: str, name: str, directory: str, config: dict[str, Any]):
        self.run: Optional[Any] = None
        if mode == "disabled":
            return
        import wandb
        self.run = wandb.init(project=project, name=name, dir=directory, mode=mode, config=config,
                              settings=wandb.Settings(silent=True))

    def log(self, row: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(row, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
