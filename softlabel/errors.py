"""User-facing errors: one line naming the file or flag at fault, exit status 2, no traceback."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """A problem with the user's input (a flag, a file, a store) rather than a bug."""


def run_main(main: Callable[[], None]) -> None:
    """Run a script's ``main``; report a ``UserError`` as one line and exit non-zero."""
    prog = os.path.basename(sys.argv[0]) or "softlabel"
    try:
        main()
    except UserError as exc:
        _close_progress_bars()
        sys.stdout.flush()
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_progress_bars()
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)


def _close_progress_bars() -> None:
    """Close the bars a failed command left open now: closed at exit instead, they would be
    redrawn after the error, which must be the last line the user sees."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _one_line(message: str) -> str:
    """A UserError raised in a DataLoader worker comes back wrapped with the worker's
    traceback; the user needs only its last line, the original message."""
    if message.startswith("Caught UserError"):
        message = message.strip().splitlines()[-1].split("UserError: ", 1)[-1]
    # a file name may hold a newline or other control characters: shown escaped, on one line
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in message)


def optional_import(module: str, extra: str, needed_for: str) -> Any:
    """A package only some users install (pyproject's extras): imported when used, or one line
    naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{needed_for} needs the {module.split('.')[0]} package: pip install "
                        f"\"softlabel[{extra}]\" (or pip install {PACKAGES.get(extra, extra)})") from None


PACKAGES = {"demo": "scikit-learn", "plots": "matplotlib"}  # an extra's package where the names differ
