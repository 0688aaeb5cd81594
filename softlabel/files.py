"""Atomic writes and safe loading.

Every file is written to a temporary name in the destination directory and renamed into
place, so readers never see half a file and a killed writer leaves no partial file under the
final name. Everything is loaded with ``weights_only=True``: a file that would run code when
unpickled is refused, never executed.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import zipfile
from typing import Any, Callable, Optional, TypeVar

import torch

from softlabel.errors import UserError

T = TypeVar("T")

TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; a finished file gets the mode open() would have given it, so a
# store in a shared folder is as readable as the team's umask says.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename; ``durable`` also
    flushes it to disk first (skip only for files that are cheap to remake)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=directory)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):  # a full disk, a quota, a file-size limit: the partial file is gone
            raise UserError(f"cannot write {path}: {exc.strerror or exc}; nothing partial was left") from None
        raise


def torch_bytes(obj: Any) -> bytes:
    """Serialize with ``torch.save`` into memory.

    Saving through a buffer (not a path) keeps the archive's inner record names independent
    of the file name, so the same object always gives the same bytes.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str) -> None:
    atomic_write_bytes(path, torch_bytes(obj))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def numpy_safe_globals() -> list:
    """Exactly the numpy pieces that upstream label files contain — numpy scalars (the cutmix
    box of SRe2L/G-VBSM/PRISM), plain arrays (FKD's per-image labels) and their dtypes — under
    the names both numpy 1 and numpy 2 give them. Nothing that can call arbitrary code."""
    import numpy as np
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed: list = [np.dtype, np.ndarray]
    for name in ("scalar", "_reconstruct"):
        fn = getattr(multiarray, name)
        allowed += [(fn, f"numpy.core.multiarray.{name}"), (fn, f"numpy._core.multiarray.{name}")]
    for kind in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                 "Float16", "Float32", "Float64"):
        dtype_class = getattr(getattr(np, "dtypes", None), f"{kind}DType", None)
        if dtype_class is not None:
            allowed.append(dtype_class)
    return allowed


def safe_torch_load(path: str, what: str = "file", allow_numpy: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file;
    ``allow_numpy`` admits the numpy scalars and arrays of upstream label files, nothing else."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip, or a legacy pickle
        raise UserError(f"{what} {path}: not a torch file, truncated or corrupt")
    try:
        if allow_numpy:
            with torch.serialization.safe_globals(numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        culprit = f"it names {found.group(1)}" if found else "it holds objects other than tensors and plain data"
        raise UserError(f"{what} {path}: refused to load: {culprit}, which could run code when unpickled; "
                        f"nothing from it was executed") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} {path}: not a readable torch file, truncated or corrupt "
                        f"({first})") from None


def read_json(path: str, what: str = "file") -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{what} {path}: JSON nested too deeply to be a manifest") from None


def read_manifest_json(root: str, name: str, flag: str, what: str, not_a_store: str,
                       version: dict[str, Any], required: tuple[str, ...]) -> dict:
    """The manifest ``name`` of the store at ``root``, checked: the directory and the file exist,
    the JSON is an object with the ``version`` entries (key: expected value) and every key of
    ``required`` (a tuple of values: any of them). Each failure is one line naming the flag or the file."""
    if not os.path.isdir(root):
        raise UserError(f"{flag} {root}: no such directory")
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise UserError(f"{flag} {root}: no {name}; {not_a_store}")
    manifest = read_json(path, what)
    found = {k: manifest.get(k) for k in version} if isinstance(manifest, dict) else None
    accepted = lambda k, v: v in version[k] if isinstance(version[k], tuple) else v == version[k]  # noqa: E731
    if found is None or not all(accepted(k, v) and not isinstance(v, bool) for k, v in found.items()):
        wanted = ", ".join(f"{k} {' or '.join(map(repr, v)) if isinstance(v, tuple) else repr(v)}"
                           for k, v in version.items())
        raise UserError(f"{what} {path}: has {found!r}; this toolkit reads {wanted}")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise UserError(f"{what} {path}: missing entries {', '.join(missing)}")
    return manifest


def first_clash(keys: tuple[str, ...], old: dict, new: dict) -> Optional[str]:
    """The first of ``keys`` on which two manifests disagree, as a readable phrase."""
    for key in keys:
        if old.get(key) != new.get(key):
            return f"{key}: the store has {_short(old.get(key))}, this run has {_short(new.get(key))}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it, once both are resolved (links followed)."""
    path, root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([path, root]) == root


def refuse_output_inside(output: str, flag: str, inputs: list[tuple[str, Optional[str]]]) -> None:
    """An output folder equal to or inside one of the run's input folders (flag, path) is refused:
    its files would become part of that input."""
    for in_flag, path in inputs:
        if path and os.path.exists(path) and is_within(output, path):
            raise UserError(f"{flag} {output} is inside {in_flag} {path}: its files would mix with that input; "
                            f"choose an output folder outside it")


def is_plain_name(name: Any) -> bool:
    """One plain path component: a non-empty string, not '.' or '..', no separator, no NUL or
    other control character. The one test for every name read from a file (classes, images)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and not any(ord(c) < 32 for c in name))


def plain_name(name: str, what: str) -> str:
    """``name`` if ``is_plain_name``, else one line naming ``what``: a name read from a file must
    not pick a path."""
    if not is_plain_name(name):
        raise UserError(f"{what}: {name!r} is not a plain file name; refusing to use it as a path")
    return name


def ensure_dir(path: str, flag: str, inside: Optional[str] = None) -> None:
    """Create an output directory, or fail with one line naming the flag. With ``inside``, the
    directory must resolve to a place within that root (a symbolic link must not lead writes out)."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{flag} {path}: cannot create directory (a file is in the way)") from None
    except PermissionError:
        raise UserError(f"{flag} {path}: cannot create directory (permission denied)") from None
    except OSError as exc:
        raise UserError(f"{flag} {path}: cannot create directory ({exc.strerror or exc})") from None
    if inside is not None and not is_within(path, inside):
        raise UserError(f"{flag} {path}: resolves to {os.path.realpath(path)}, outside {inside} (a symbolic "
                        f"link?); refusing to write there")
    if not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path}: directory is not writable")


_locks: list = []  # open lock files, held until the command that took them returns (or the process exits)


def lock_dir(root: str, flag: str, busy: str) -> None:
    """Take ``root``'s lock until the command taking it returns (``releasing_locks``) or the process
    ends, or fail with one line (``busy`` says what the other run is doing). The OS drops the lock
    when the holder dies, even by SIGKILL, so a killed run never blocks its own rerun."""
    import fcntl
    ensure_dir(root, flag)
    f = open(os.path.join(root, ".lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise UserError(f"{flag} {root}: {busy}") from None
    _locks.append(f)


def releasing_locks(command: Callable[..., T]) -> Callable[..., T]:
    """``command`` releasing the folder locks it took when it returns or raises: called again in the
    same process (as a library), it may write the same folder again."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> T:
        held = len(_locks)
        try:
            return command(*args, **kwargs)
        finally:
            while len(_locks) > held:
                _locks.pop().close()
    return run


def remove_stale_tmp(directory: str) -> None:
    """Delete temporary files left by writers that no longer run (killed mid-write)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(TMP_PREFIX):
            continue
        pid = name[len(TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except FileNotFoundError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

