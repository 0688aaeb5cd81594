"""CIFAR-100 as torchvision keeps it on disk (``cifar-100-python/train``, ``test`` and ``meta``),
read without running code, and written once as the PNG image folders every tool here reads.

The three files are Python pickles. They are read by an unpickler that builds nothing but plain
data and uint8 numpy arrays: any other global a pickle names (``os.system``, ``builtins.eval``,
...) is refused before it is looked up, so a tampered file cannot run code. Nothing is downloaded:
torchvision's ``download=True`` is never run here.
"""
from __future__ import annotations

import codecs
import contextlib
import fcntl
import glob
import os
import pickle
import shutil
import sys
from typing import Any, Iterator

import numpy as np
from PIL import Image

from softlabel.errors import UserError
from softlabel.files import atomic_write_json, ensure_dir, file_sha256, is_plain_name, read_json

FOLDER = "cifar-100-python"
SPLITS = ("train", "test")
FILES = ("train", "test", "meta")
CLASSES = 100
SIDE = 32
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MARKER = "cifar100.json"
MARKER_KIND = "cifar-100 image folders"


class _RefusedGlobal(Exception):
    """A pickle named a global outside the allowed few (its ``module.name`` is the message)."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    # Pickle protocol 2 under Python 3 writes every bytes object as _codecs.encode(text, 'latin1');
    # no other codec is ever needed, so no other codec is reachable from a file.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _RefusedGlobal(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a pickled uint8 array needs, under the names numpy 1 and numpy 2 write."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return {("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_bytes}


class _PlainUnpickler(pickle.Unpickler):
    """Builds plain containers, strings, numbers and numpy arrays; refuses every other global."""

    ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


def load_pickle(path: str) -> dict[str, Any]:
    """The dict a CIFAR file (torchvision's CIFAR-10 and CIFAR-100 batches) holds, keys as text, read
    without running code from it; every failure is one line naming ``path``."""
    try:
        with open(path, "rb") as f:
            # latin1, as torchvision reads them: the files were written by Python 2
            loaded = _PlainUnpickler(f, encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise UserError(f"{path}: refused to load: it names {exc}, which a CIFAR file never holds and "
                        f"which could run code; nothing from it was executed") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # an untrusted pickle can break the parser in many ways, each the file's fault
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a CIFAR file, truncated or corrupt ({detail})") from None
    if not isinstance(loaded, dict) or not all(isinstance(k, (str, bytes)) for k in loaded):
        raise UserError(f"{path}: not a CIFAR file (a {type(loaded).__name__}, not a dict of named fields)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _field(entries: dict[str, Any], path: str, key: str) -> Any:
    if key not in entries:
        raise UserError(f"{path}: no field '{key}'; not a CIFAR-100 file")
    return entries[key]


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def _pixels(entries: dict[str, Any], path: str) -> np.ndarray:
    data = _field(entries, path, "data")
    if (type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * SIDE * SIDE or data.shape[0] == 0):
        raise UserError(f"{path}: field 'data' must be a uint8 array of shape (N, {3 * SIDE * SIDE}) with "
                        f"N >= 1; it is {_describe(data)}")
    # each row is the red plane, then the green, then the blue, each 32 rows of 32 pixels
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))


def _labels(entries: dict[str, Any], path: str, count: int) -> list[int]:
    labels = _field(entries, path, "fine_labels")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise UserError(f"{path}: field 'fine_labels' must be a list of ints; it is {_describe(labels)}"
                        + (" holding other values" if isinstance(labels, list) else ""))
    if len(labels) != count:
        raise UserError(f"{path}: field 'fine_labels' holds {len(labels)} labels for the {count} images of "
                        f"field 'data'")
    bad = next((v for v in labels if not 0 <= v < CLASSES), None)
    if bad is not None:
        raise UserError(f"{path}: field 'fine_labels' holds {bad}, outside 0..{CLASSES - 1}")
    return labels


def _class_names(path: str) -> list[str]:
    names = _field(load_pickle(path), path, "fine_label_names")
    if (not isinstance(names, list) or len(names) != CLASSES
            or not all(isinstance(n, (str, bytes)) for n in names)):
        raise UserError(f"{path}: field 'fine_label_names' must be a list of {CLASSES} names; it is "
                        f"{_describe(names)}" + (f" of {len(names)}" if isinstance(names, list) else ""))
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


def _source_paths(folder: str, names: tuple[str, ...]) -> dict[str, str]:
    base = os.path.join(folder, FOLDER)
    missing = [n for n in names if not os.path.isfile(os.path.join(base, n))]
    if missing:
        raise UserError(f"CIFAR-100: no {', '.join(missing)} in {base}; nothing is downloaded: place "
                        f"torchvision's files there (extract {ARCHIVE_URL} into {folder})")
    return {n: os.path.join(base, n) for n in names}


def read_cifar100(folder: str, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """``split`` ('train' or 'test') of the CIFAR-100 files under ``folder`` (the ``root`` given to
    torchvision's ``CIFAR100``): pixels uint8 (N, 32, 32, 3), fine labels, the 100 class names."""
    if split not in SPLITS:
        raise UserError(f"CIFAR-100 split {split!r}: expected one of {', '.join(SPLITS)}")
    paths = _source_paths(folder, (split, "meta"))
    names = _class_names(paths["meta"])
    entries = load_pickle(paths[split])
    pixels = _pixels(entries, paths[split])
    return pixels, _labels(entries, paths[split], len(pixels)), names


def _folder_names(names: list[str], path: str) -> list[str]:
    """The class names as folder names, whose sorted order (an image folder's class order) must be
    the label order: otherwise every image would be read back under another label."""
    for name in names:
        if not is_plain_name(name):
            raise UserError(f"{path}: field 'fine_label_names' holds {name!r}, not a plain folder name")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{path}: field 'fine_label_names' holds {twice!r} twice")
    if names != sorted(names):
        first = next(a for a, b in zip(names, sorted(names)) if a != b)
        raise UserError(f"{path}: field 'fine_label_names' is not in sorted order (from {first!r} on): image "
                        f"folders number classes in sorted order, so the images would get other labels")
    return names


def _identity(path: str, with_hash: bool = True) -> dict[str, Any]:
    stat = os.stat(path)
    found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {**found, "sha256": file_sha256(path)} if with_hash else found


def _same_source(recorded: dict[str, Any], path: str) -> bool:
    """Whether ``path`` is the file ``recorded`` describes: size and time first (no read), and if
    the time moved (a copy without its times), the SHA-256 of its bytes."""
    now = _identity(path, with_hash=False)
    if now["size"] != recorded.get("size"):
        return False
    return now["mtime_ns"] == recorded.get("mtime_ns") or file_sha256(path) == recorded.get("sha256")


def _reusable(out: str, paths: dict[str, str]) -> bool:
    """Whether ``out`` holds the image folders of exactly these files (False: absent or empty)."""
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return False
    marker_path = os.path.join(out, MARKER)
    if not os.path.isfile(marker_path):
        raise UserError(f"CIFAR-100 image folders {out}: exists and was not written here (no {MARKER}); "
                        f"refusing to write into it: choose a new or empty folder")
    marker = read_json(marker_path, "CIFAR-100 image folders marker")
    source = marker.get("source") if isinstance(marker, dict) else None
    if (not isinstance(marker, dict) or marker.get("kind") != MARKER_KIND or not isinstance(source, dict)
            or not all(isinstance(source.get(n), dict) for n in FILES)):
        raise UserError(f"{marker_path}: not the marker of CIFAR-100 image folders written here")
    changed = [n for n in FILES if not _same_source(source[n], paths[n])]
    if changed:
        raise UserError(f"CIFAR-100 image folders {out}: written from other files than {paths[changed[0]]} "
                        f"({', '.join(changed)} changed since); remove that folder to write it again, or "
                        f"choose another")
    return True


@contextlib.contextmanager
def _build_lock(out: str) -> Iterator[None]:
    """One writer per output folder (torchrun's ranks may all ask for it): the others wait, then
    find it complete. The OS drops the lock when its holder dies."""
    parent, base = os.path.split(out)
    ensure_dir(parent, "CIFAR-100 image folders")
    with open(os.path.join(parent, f".{base}.lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_split(root: str, names: list[str], pixels: np.ndarray, labels: list[int]) -> None:
    for name in names:  # every class gets its folder, even an empty one: folder index = label
        os.makedirs(os.path.join(root, name))
    for index, (image, label) in enumerate(zip(pixels, labels)):
        Image.fromarray(image).save(os.path.join(root, names[label], f"{index:05d}.png"), format="PNG")


def _build(out: str, paths: dict[str, str]) -> None:
    """Write the folders into a temporary folder beside ``out``, then rename it to ``out``: ``out``
    is either absent or complete, with its marker."""
    parent, base = os.path.split(out)
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(base)}.tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)  # a killed writer's; we hold the lock
    tmp = os.path.join(parent, f".{base}.tmp-{os.getpid()}")
    print(f"note: writing CIFAR-100 from {os.path.dirname(paths['meta'])} as PNG image folders in {out} "
          f"(once)", file=sys.stderr, flush=True)
    try:
        source = {n: _identity(p) for n, p in paths.items()}
        names = _folder_names(_class_names(paths["meta"]), paths["meta"])
        counts = {}
        for split in SPLITS:
            entries = load_pickle(paths[split])
            pixels = _pixels(entries, paths[split])
            _write_split(os.path.join(tmp, split), names, pixels, _labels(entries, paths[split], len(pixels)))
            counts[split] = len(pixels)
        atomic_write_json(os.path.join(tmp, MARKER), {"kind": MARKER_KIND, "version": 1, "source": source,
                                                      "images": counts, "classes": names})
        os.sync()  # the images reach the disk before the rename: a crash never leaves a marked, partial tree
        os.rename(tmp, out)
    except OSError as exc:
        raise UserError(f"CIFAR-100 image folders {out}: cannot write ({exc.strerror or exc}); nothing partial "
                        f"was left") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cifar100_folders(folder: str, out: str) -> tuple[str, str]:
    """The CIFAR-100 files under ``folder`` as image folders ``out/train`` and ``out/test``
    (``<class name>/<index:05d>.png``, lossless), written once and reused while the files are the
    same ones; returns (train folder, test folder)."""
    paths = _source_paths(folder, FILES)
    out = os.path.abspath(out)
    if not _reusable(out, paths):  # a complete one is read without the lock: it may sit on a read-only disk
        with _build_lock(out):
            if not _reusable(out, paths):  # another process may have written it while we waited
                _build(out, paths)
    return os.path.join(out, "train"), os.path.join(out, "test")
