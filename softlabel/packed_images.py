"""Image folders packed into one file, accepted wherever an image folder is (``--data``,
``--train-dir``, ``--val-dir``): decoded uint8 pixels, memory-mapped, or an LMDB of the files.

A packed folder ``OUT`` holds::

    pixels.u8     every image's RGB pixels, height x width x 3 uint8, one after another, in
                  ImageFolder order
    images.json   format, version, classes, per image [relative path, class, height, width],
                  each file's size, a SHA-256 of the pixels and a content digest (see _Identity),
                  the source folder's fingerprint, and the pixel file's size: compact JSON whose
                  file sizes and rows (one a line) come after the rest, so that a reader checks
                  each row as it is parsed (indented indexes of earlier packs are read as well)

The pixels are those ``decode.load_rgb`` gives for each file (the loader relabel and the trainer
use), so a crop rendered from a packed folder is the crop rendered from the folder: stores and
training are identical, and the fingerprint is the folder's, so a store made from one is trained
with the other. Every process maps the same file: the pages are shared by all workers and ranks
on a machine, decoded once instead of once per process and epoch.

An LMDB pack (``pack_images.py --format lmdb``, for training sets whose decoded pixels would not
fit) is a folder with ``data.mdb``: one record per image keyed by its relative path, holding the
image file's bytes unchanged (so it decodes to the folder's pixels), and the index under the key
``__softlabel_index__``, written in the last transaction (no index: an unfinished pack).
WSLD's own LMDB files (its ``dataset/img2lmdb.py``: key ``class/file``, value a msgpack ``bin``
of the JPEG re-encoded by OpenCV followed by a uint16 label) are read too: classes from the key
prefixes in ImageFolder order, the JPEG decoded by PIL (OpenCV's decoder may differ by a level
here and there), WSLD's own label numbers ignored (they follow ``os.listdir`` order).
"""
from __future__ import annotations

import collections
import contextlib
import gc
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from json.encoder import encode_basestring_ascii
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from softlabel import files
from softlabel.decode import fingerprint_of, fingerprint_update, load_rgb, to_rgb
from softlabel.errors import UserError, optional_import

FORMAT, VERSION = "softlabel-packed-images", 2  # 2: file sizes and a content digest
INDEX, PIXELS = "images.json", "pixels.u8"
MAX_SIDE = 65535
CHUNK = 4096  # rows checked, hashed and written at a time: what a pack holds in memory stays per-image small


def is_packed(root: str) -> bool:
    return os.path.isfile(os.path.join(root, INDEX))


class PackedPixels:
    """The pixel file of a packed folder, mapped on first use in each process. ``shapes`` is
    (height, width) per image: an (N, 2) array (4 bytes an image, however many are pickled to workers)."""

    def __init__(self, path: str, shapes):
        self.path = path
        self.shapes = np.asarray(shapes, dtype=np.uint16).reshape(-1, 2)
        sizes = self.shapes[:, 0].astype(np.int64) * self.shapes[:, 1] * 3
        self.offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)])
        self._map: Optional[np.memmap] = None

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:  # loader workers map the file themselves (the pages are shared)
        return {**self.__dict__, "_map": None}

    def image(self, i: int) -> Image.Image:
        if self._map is None:
            self._map = np.memmap(self.path, np.uint8, mode="r")
        h, w = (int(v) for v in self.shapes[i])
        return Image.fromarray(np.asarray(self._map[self.offsets[i]:self.offsets[i + 1]]).reshape(h, w, 3), "RGB")


def read(root: str, flag: str) -> dict[str, Any]:
    """The checked index of a packed folder: classes, samples, shapes, fingerprint, pixels."""
    where = os.path.join(root, INDEX)
    index, rows = _parsed(lambda: _text_of(where), lambda: files.read_json(where, "packed image index"),
                          lambda: _Rows(f"packed image index {where}", root, 4, _is_our_index))
    if not isinstance(index, dict) or not _is_our_index(index):
        raise UserError(f"{flag} {root}: {INDEX} is not a packed image index of version {VERSION} "
                        f"(made by scripts/pack_images.py)" + _older(index))
    rows.finish(index)
    pixels = PackedPixels(os.path.join(root, PIXELS), rows.shapes)
    try:
        size = os.path.getsize(pixels.path)
    except OSError:
        raise UserError(f"{flag} {root}: no {PIXELS}; pack the folder again with scripts/pack_images.py") from None
    if size != pixels.nbytes or index.get("pixel_bytes") != size:
        raise UserError(f"{flag} {root}: {PIXELS} holds {size} bytes, its index describes {pixels.nbytes} "
                        f"(truncated, or not the file this index was written with)")
    fingerprint, content = rows.identity(index)
    return {"classes": rows.classes, "samples": rows.samples, "fingerprint": fingerprint, "content": content,
            "pixels": pixels, "source": index.get("source")}


def _is_our_index(head: dict) -> bool:
    return head.get("format") == FORMAT and head.get("version") == VERSION


def _is_our_lmdb_index(head: dict) -> bool:
    return _is_our_index(head) and head.get("kind") == "lmdb"


def _text_of(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@contextlib.contextmanager
def _gc_paused():
    """No cyclic garbage collection while an index's hundreds of thousands of rows are made: they
    hold no cycles, and the collections they would trigger cost more than the rest of the reading."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ----------------------------------------------------------------------------- reading an index, row by row

_scan = json.JSONDecoder().scan_once  # json.loads' own parser of one value: the same syntax, the same values
_SPACE = re.compile(r"[ \t\n\r]*")


def _parsed(text: Callable[[], str], load: Callable[[], Any], new_rows: Callable[[], "_Rows"]) -> tuple[Any, "_Rows"]:
    """An index and its rows. The rows are read as they are parsed (``_walk``); a text that parser
    refuses is loaded by ``load`` instead (whose error names the file), its rows left to ``finish``."""
    rows = new_rows()
    try:
        with _gc_paused():
            return _walk(text(), rows), rows
    except (ValueError, StopIteration, IndexError, RecursionError, OSError):
        with _gc_paused():
            return load(), new_rows()


def _walk(text: str, rows: "_Rows") -> dict:
    """``json.loads(text)`` of an index object, except that the rows of "samples", when what checks
    them came first (``rows.streams``), go to ``rows`` a chunk at a time as they are parsed, never
    all at once (they are then left out of the index returned). Raises ValueError, StopIteration
    or IndexError on a text that is not one JSON object."""
    out: dict = {}
    i = _SPACE.match(text, 0).end()
    if text[i] != "{":
        raise ValueError("not an object")
    i = _SPACE.match(text, i + 1).end()
    while text[i] != "}":
        if text[i] != '"':
            raise ValueError("a key is not a string")
        key, i = _scan(text, i)
        i = _SPACE.match(text, i).end()
        if text[i] != ":":
            raise ValueError("no ':' after a key")
        i = _SPACE.match(text, i + 1).end()
        if key == "samples" and rows.started:
            raise ValueError("samples twice")  # json.loads keeps the last: left to it
        if key == "samples" and text[i] == "[" and rows.streams(out):
            i = _walk_rows(text, i, rows)
        else:
            out[key], i = _scan(text, i)
        i = _SPACE.match(text, i).end()
        if text[i] == ",":
            i = _SPACE.match(text, i + 1).end()
            if text[i] == "}":
                raise ValueError("a comma before '}'")
        elif text[i] != "}":
            raise ValueError("no ',' or '}' after a value")
    if _SPACE.match(text, i + 1).end() != len(text):
        raise ValueError("more after the object")
    return out


def _walk_rows(text: str, i: int, rows: "_Rows") -> int:
    """The array at ``text[i]``, its elements to ``rows`` as they are parsed; the index past its end.
    Rows are parsed a block of lines at a time (``_block``) while that works, then one by one."""
    scan, space, chunk, blocks = _scan, _SPACE.match, [], True
    i = space(text, i + 1).end()
    while text[i] != "]":
        parsed = _block(text, i) if blocks else None
        if parsed is not None:
            rows.add(parsed[0])
            i = parsed[1]
            continue
        blocks = False  # the last lines, or another layout: one row at a time from here
        row, i = scan(text, i)
        chunk.append(row)
        if len(chunk) == CHUNK:
            rows.add(chunk)
            chunk = []
        i = space(text, i).end()
        if text[i] == ",":
            i = space(text, i + 1).end()
            if text[i] == "]":
                raise ValueError("a comma before ']'")
        elif text[i] != "]":
            raise ValueError("no ',' or ']' after a value")
    if chunk:
        rows.add(chunk)
    return i + 1


_BLOCK = 1 << 18  # characters of rows parsed at once: ~10,000 rows of a compact index


def _block(text: str, i: int) -> Optional[tuple[list, int]]:
    """The rows from ``text[i]`` to the end of the line ``_BLOCK`` characters on, if that text is
    complete rows followed by a comma, and where the next row starts; else None. A newline is
    never inside a JSON string, so the cut falls between tokens; a cut inside a row, or past the
    array's end, leaves brackets unbalanced, which json.loads refuses."""
    end = text.find("\n", i + _BLOCK)
    block = text[i:end].rstrip(" \t\r\n") if end > 0 else ""
    if not block.endswith(",") or len(block) < 2:
        return None
    try:
        parsed = json.loads(f"[{block[:-1]}]")
    except ValueError:
        return None
    return parsed, _SPACE.match(text, end).end()


class _Rows:
    """An index's rows, read a chunk at a time, each chunk's lists dropped once read: every row
    checked (plain relative path, known class, sides in 1..MAX_SIDE), the samples list (absolute
    path, class: what a folder's scan gives), the shapes (pixels packs: ``width`` 4), the keys
    (LMDB packs: ``width`` 2), and the identity they give. Checks run over whole columns: a Python
    call per row costs more than the scan of a folder. ``ours(head)``: whether the keys before
    "samples" say the index is one of ours (its rows are then read as they are parsed)."""

    def __init__(self, where: str, root: str, width: int, ours: Callable[[dict], bool]):
        self.where, self.prefix, self.width, self.ours = where, os.path.join(root, ""), width, ours
        self.started, self.classes, self._sizes, self._identity = False, None, None, None
        self.samples: list[tuple[str, int]] = []
        self._shapes: list[np.ndarray] = []
        self._keys: list[str] = []

    def streams(self, head: dict) -> bool:
        """Whether rows that come after ``head`` are read as they come (start them if so)."""
        if not (self.ours(head) and "classes" in head and "file_sizes" in head):
            return False
        self._start(head)
        return True

    def _start(self, index: dict) -> None:
        self.classes, sizes, self.started = index.get("classes"), index.get("file_sizes"), True
        if not (isinstance(self.classes, list) and all(files.is_plain_name(c) for c in self.classes)):
            raise UserError(f"{self.where}: classes must be plain folder names and samples a list")
        if isinstance(sizes, list) and _ints_in(sizes, 0, float("inf")):
            self._sizes, self._identity = sizes, _Identity(self.classes)

    def add(self, chunk: list) -> None:
        start = len(self.samples)
        columns = self._checked(chunk, start)
        chunk.clear()  # the rows' lists go now
        sizes = self._sizes[start:start + len(columns[0])] if self._sizes is not None else []
        if self._identity is not None and len(sizes) == len(columns[0]):
            self._identity.add([*columns, sizes])
        else:
            self._identity = None  # fewer sizes than rows: refused by identity()
        rels = columns[0] if os.sep == "/" else [r.replace("/", os.sep) for r in columns[0]]
        self.samples += zip(map(self.prefix.__add__, rels), columns[1])
        if self.width == 4:
            self._shapes.append(np.array(columns[2:], np.uint16).T)
        else:
            self._keys.append("\0".join(columns[0]))

    def finish(self, index: dict) -> None:
        """The rows of an index not read as they were parsed, then the shapes and keys."""
        if not self.started:
            rows = index.pop("samples", None)
            self._start(index)
            if not isinstance(rows, list):
                raise UserError(f"{self.where}: classes must be plain folder names and samples a list")
            for a in range(0, len(rows), CHUNK):
                self.add(rows[a:a + CHUNK])
                rows[a:a + CHUNK] = [None] * min(CHUNK, len(rows) - a)  # freed as they are read
        if self._sizes is not None and len(self._sizes) != len(self.samples):
            self._identity = None
        self.shapes = np.concatenate(self._shapes) if self._shapes else np.zeros((0, 2), np.uint16)
        self.keys = _Keys("\0".join(self._keys).encode(), len(self.samples)) if self.width == 2 else None

    def _checked(self, chunk: list, start: int) -> list[Sequence]:
        """The chunk's columns (paths, classes[, heights, widths]); a refused row named by number."""
        if set(map(type, chunk)) == {list} and set(map(len, chunk)) == {self.width}:
            columns = list(zip(*chunk))
            if (_plain_paths(columns[0]) and _ints_in(columns[1], 0, len(self.classes) - 1)
                    and all(_ints_in(c, 1, MAX_SIDE) for c in columns[2:])):
                return columns
        n = next((n for n, s in enumerate(chunk) if not self._plain_row(s)), 0)
        raise UserError(f"{self.where}: sample {start + n} is not [relative path, class"
                        + (", height, width] with a plain path, a known class and sides in 1.." + str(MAX_SIDE)
                           if self.width == 4 else "] with a plain path and a known class"))

    def _plain_row(self, s: Any) -> bool:
        return (isinstance(s, list) and len(s) == self.width and isinstance(s[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in s[1:])
                and all(files.is_plain_name(part) for part in s[0].split("/")) and 0 <= s[1] < len(self.classes)
                and all(0 < v <= MAX_SIDE for v in s[2:]))

    def identity(self, index: dict) -> tuple[str, str]:
        """The fingerprint and content digest of the pack, checked against those its index records."""
        data = index.get("data_sha256")
        if self._identity is None or not isinstance(data, str):
            raise UserError(f"{self.where}: no file_sizes (one per sample) or data_sha256; pack the folder again")
        fingerprint, content = self._identity.digests(data)
        if (fingerprint, content) != (index.get("fingerprint"), index.get("content")):
            what = "fingerprint" if fingerprint != index.get("fingerprint") else "content digest"
            raise UserError(f"{self.where}: its samples do not give the {what} it records (changed after packing: "
                            f"an image left out, a shape edited?); pack the folder again")
        return fingerprint, content


def _ints_in(values: Sequence, low: float, high: float) -> bool:
    return set(map(type, values)) <= {int} and (not values or (low <= min(values) and max(values) <= high))


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\\]")  # control characters but the newline joining paths; '\'
_EMPTY = ("//", "/\n", "\n/", "\n\n")  # an empty part
_DOTS = [f"{a}{dots}{b}" for a in "/\n" for b in "/\n" for dots in (".", "..")]  # a part '.' or '..'


def _plain_paths(rels: Sequence) -> bool:
    """Whether every path is '/'-separated plain names (``files.is_plain_name``), tested on the
    paths joined by newlines (a newline within a path shows as one line too many)."""
    if not set(map(type, rels)) <= {str}:
        return False
    text = "\n" + "\n".join(rels) + "\n"
    if text.count("\n") != len(rels) + 1 or _CONTROL.search(text) or any(p in text for p in _EMPTY):
        return False
    return not (("/." in text or "\n." in text) and any(p in text for p in _DOTS))  # few names start with '.'


class _Identity:
    """A pack's (fingerprint, content digest), from its index alone, hashed a chunk of rows at a
    time. The fingerprint is the source folder's (relative paths, file sizes, classes: stores made
    from either check the same); the content digest adds what the pack hands out (each image's
    shape, and the SHA-256 of the decoded pixels, or of the files' bytes in an LMDB, taken when
    packing), so a pack of other images with the same names and sizes, or an index edited after
    packing, does not pass for the original. It is the SHA-256 of ``json.dumps([classes, rows,
    sizes])`` (compact), a newline and that data digest."""

    def __init__(self, classes: list):
        self.fingerprint, self.listing = hashlib.sha256(), hashlib.sha256()
        self.listing.update(f"[{json.dumps(classes, separators=(',', ':'))},[".encode())
        self.sizes: list[str] = []  # ~7 bytes an image: in the listing they follow every row
        self.kind = "files"

    def add(self, columns: list[Sequence]) -> None:
        """Rows as columns: paths, classes, (heights, widths,) file sizes."""
        rels, targets, *shape, sizes = columns
        if not rels:
            return
        self.kind = "pixels" if shape else self.kind  # compared only with a pack of its kind
        fingerprint_update(self.fingerprint, zip(rels, sizes, targets))
        self.listing.update(("," if self.sizes else "").encode() + ",".join(_row_texts(rels, targets, *shape)).encode())
        self.sizes.append(",".join(map(str, sizes)))

    def digests(self, data_sha256: str) -> tuple[str, str]:
        self.listing.update(f"],[{','.join(self.sizes)}]]\n{data_sha256}".encode())
        return self.fingerprint.hexdigest(), f"{self.kind}:" + self.listing.hexdigest()


def _row_texts(rels: Sequence[str], *numbers: Sequence[int]) -> Iterator[str]:
    """Each row as compact JSON, ``json.dumps([rel, *numbers], separators=(",", ":"))`` exactly."""
    return map(("[{}" + ",{}" * len(numbers) + "]").format, map(encode_basestring_ascii, rels), *numbers)


def _identity(classes: list, chunks: Iterable[list[Sequence]], data_sha256: str) -> tuple[str, str]:
    identity = _Identity(classes)
    for chunk in chunks:
        identity.add(chunk)
    return identity.digests(data_sha256)


def _in_chunks(rows_at: Callable[[int, int], list[Sequence]], sizes: Sequence[int]) -> Iterator[list[Sequence]]:
    """The columns of rows ``[a, a + CHUNK)`` (``rows_at(a, b)``) with their file sizes, chunk by chunk."""
    for a in range(0, len(sizes), CHUNK):
        part = sizes[a:a + CHUNK]
        yield [*rows_at(a, a + CHUNK), part.tolist() if isinstance(part, np.ndarray) else part]


def _older(index: Any) -> str:
    older = isinstance(index, dict) and index.get("format") == FORMAT and index.get("version") == 1
    return "; version 1 (no content digest) is no longer read: pack the folder again" if older else ""


def pack(folder, out: str, threads: int = 8, progress=None) -> tuple[int, str]:
    """Decode every image of ``folder`` (a ``FolderIndex``) once into ``out``; returns the pixel
    bytes and the folder's fingerprint. The images are decoded by ``threads`` threads, a few at a
    time each, and written as they come, in order: what is kept per image is its shape and file
    size. The pixel file is written first and the index last (both atomically): an index present
    means a complete pack."""
    files.ensure_dir(out, "OUT")
    shapes, sizes = np.zeros((len(folder.samples), 2), np.uint16), np.zeros(len(folder.samples), np.int64)
    total, digest = 0, hashlib.sha256()
    with _atomic_file(out, PIXELS) as f, \
            contextlib.closing(_in_order(_decoded, (p for p, _ in folder.samples), threads)) as decoded:
        for n, (pixels, size) in enumerate(decoded):
            f.write(pixels.data)
            digest.update(pixels.data)
            shapes[n], sizes[n], total = pixels.shape[:2], size, total + pixels.nbytes
            if progress is not None:
                progress.update(1)
    rows = _FolderRows(folder, shapes)
    fingerprint, content = _identity(folder.classes, _in_chunks(rows.at, sizes), digest.hexdigest())
    head = {"format": FORMAT, "version": VERSION, "classes": folder.classes, "fingerprint": fingerprint,
            "data_sha256": digest.hexdigest(), "content": content, "pixel_bytes": total, "source": folder.root}
    with _atomic_file(out, INDEX) as f:
        for text in _index_text(head, rows.at, sizes):
            f.write(text.encode())
    return total, fingerprint


def _decoded(path: str) -> tuple[np.ndarray, int]:
    """An image's pixels (height x width x 3) and its file's size."""
    pixels = np.asarray(load_rgb(path), dtype=np.uint8)
    if max(pixels.shape[:2]) > MAX_SIDE:
        raise UserError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, over the {MAX_SIDE} a side "
                        f"a packed folder holds")
    try:
        return pixels, os.path.getsize(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read image ({exc.strerror or exc}); fix or remove it") from None


def _in_order(fn: Callable, items: Iterable, threads: int) -> Iterator:
    """``fn`` of each item, in order, from a pool of ``threads`` threads holding a few items each in
    flight (``ThreadPoolExecutor.map`` would submit every item at once and keep every result)."""
    pool, pending = ThreadPoolExecutor(max_workers=threads), collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _FolderRows:
    """A folder's rows as columns (relative paths, classes[, heights, widths]), made on demand a
    slice at a time from its scan (and the shapes): nothing more is kept per image while packing."""

    def __init__(self, folder, shapes: Optional[np.ndarray] = None):
        self.folder, self.shapes = folder, shapes
        first = folder.samples[0][0] if folder.samples else folder.root
        rel = os.path.relpath(first, folder.root)
        prefix = first[:len(first) - len(rel)] if first.endswith(os.sep + rel) else ""
        # the scan joined one root to every path: slicing it off gives relpath's answer wherever
        # the rest is already normal (no '.', '..' or empty parts)
        self.prefix = prefix if prefix and os.path.abspath(prefix) == folder.root else None

    def relative(self, path: str) -> str:
        rest = path[len(self.prefix):] if self.prefix and path.startswith(self.prefix) else ""
        if not rest or rest.startswith((os.sep, "..")) or os.path.normpath(rest) != rest:
            rest = os.path.relpath(path, self.folder.root)
        return rest if os.sep == "/" else rest.replace(os.sep, "/")

    def at(self, start: int, stop: int) -> list[Sequence]:
        samples = self.folder.samples[start:stop]
        shapes = [] if self.shapes is None else self.shapes[start:stop].T.tolist()
        return [[self.relative(p) for p, _ in samples], [t for _, t in samples], *shapes]


def _index_text(head: dict, rows_at: Callable[[int, int], list[Sequence]], sizes) -> Iterator[str]:
    """The index as compact JSON, in pieces: the keys of ``head``, then file_sizes, then samples
    one row to a line (``json.load`` reads it as it read the indented index of earlier packs)."""
    yield json.dumps(head, sort_keys=True, separators=(",", ":"))[:-1] + ',\n"file_sizes":['
    for n, (file_sizes,) in enumerate(_in_chunks(lambda a, b: [], sizes)):
        yield ("," if n else "") + ",".join(map(str, file_sizes))
    yield '],\n"samples":['
    for n, chunk in enumerate(_in_chunks(rows_at, sizes)):
        yield ("," if n else "") + "\n" + ",\n".join(_row_texts(*chunk[:-1]))
    yield "\n]}\n"


@contextlib.contextmanager
def _atomic_file(out: str, name: str):
    """``out/name`` written through a temporary file, flushed to disk, then renamed; a failed
    write leaves nothing (see ``_cleaned_on_failure``)."""
    tmp, final = os.path.join(out, f"{files.TMP_PREFIX}{os.getpid()}-{name}"), os.path.join(out, name)
    with _cleaned_on_failure(tmp, final):
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, files.FILE_MODE)
        os.replace(tmp, final)


# ----------------------------------------------------------------------------- LMDB

LMDB_INDEX_KEY = b"__softlabel_index__"


def is_lmdb(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "data.mdb"))


_ENVS: dict[str, Any] = {}  # this process's open environments (LMDB allows one per file and process)


def _close_before_fork() -> None:
    """No environment crosses a fork: LMDB forbids using one in a child, and the lmdb package
    refuses to open a file its parent held open ("already open in this process"). Each process
    (a loader worker, and the parent again afterwards) opens its own on its next read."""
    while _ENVS:
        _ENVS.popitem()[1].close()


os.register_at_fork(before=_close_before_fork)


def _open_lmdb(root: str, flag: str):
    """The read-only environment of ``root`` in this process, opened on first use, its data file
    checked to hold every page the environment says it has."""
    lmdb = optional_import("lmdb", "lmdb", f"{flag} {root}: an LMDB folder")
    key = os.path.realpath(root)
    if key not in _ENVS:
        data = os.path.join(root, "data.mdb")
        try:
            env = lmdb.open(root, readonly=True, lock=False, readahead=False, meminit=False, max_readers=2048)
        except lmdb.Error as exc:
            raise UserError(f"{flag} {data}: cannot open the LMDB ({exc})") from None
        # A data file shorter than its last page (an interrupted copy) would be mapped all the same
        # and kill the process with SIGBUS on the first read past its end.
        need, size = (env.info()["last_pgno"] + 1) * env.stat()["psize"], os.path.getsize(data)
        if size < need:
            env.close()
            raise UserError(f"{flag} {data}: {size} bytes, its LMDB pages need {need} (truncated, e.g. an "
                            f"interrupted copy); copy or pack it again")
        _ENVS[key] = env
    return _ENVS[key]


def msgpack_bin(value: bytes, where: str) -> bytes:
    """The payload of a msgpack ``bin`` object (WSLD packs each record as one), without msgpack."""
    lengths = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    if not value or value[0] not in lengths:
        raise UserError(f"{where}: not a msgpack bin record as WSLD's img2lmdb.py writes them")
    width = lengths[value[0]]
    size = int.from_bytes(value[1:1 + width], "big")
    if len(value) != 1 + width + size:
        raise UserError(f"{where}: its msgpack record says {size} bytes, it holds {len(value) - 1 - width}")
    return value[1 + width:]


class _Keys:
    """Many record keys in one buffer, NUL-separated (a list of bytes objects costs ~60 bytes a
    key; this costs the key's own bytes and 9). Keys hold no NUL: they are plain relative paths."""

    def __init__(self, blob: bytes, count: int):
        self.blob = blob + b"\0"
        ends = np.flatnonzero(np.frombuffer(self.blob, np.uint8) == 0)
        if len(ends) != count:
            raise ValueError(f"{count} keys expected, {len(ends)} found")
        self.starts = np.concatenate([np.zeros(1, np.int64), ends + 1])

    @classmethod
    def of(cls, keys: list[bytes]) -> "_Keys":
        return cls(b"\0".join(keys), len(keys))

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.blob[self.starts[i]:self.starts[i + 1] - 1]


class LmdbImages:
    """The images of an LMDB pack (ours, or WSLD's), decoded on demand from the environment of the
    process that reads them."""

    def __init__(self, root: str, keys: _Keys, wsld: bool):
        self.root, self.keys, self.wsld = root, keys, wsld

    def image(self, i: int) -> Image.Image:
        import io

        key = self.keys[i]
        with _open_lmdb(self.root, "LMDB").begin() as txn:  # this process's environment
            value = txn.get(key)
        where = f"{self.root} record {key.decode(errors='replace')}"
        if value is None:
            raise UserError(f"{where}: missing")
        data = msgpack_bin(value, where)[:-2] if self.wsld else value
        try:
            return to_rgb(Image.open(io.BytesIO(data)))
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            raise UserError(f"{where}: cannot decode the image ({exc})") from None


def read_lmdb(root: str, flag: str) -> dict[str, Any]:
    """The index of an LMDB pack: ours (its stored index) or WSLD's (built from its keys)."""
    env = _open_lmdb(root, flag)
    with env.begin() as txn:
        raw = txn.get(LMDB_INDEX_KEY)
        if raw is not None:
            return _our_lmdb(root, flag, raw)
        sizes = {bytes(k): len(v) for k, v in txn.cursor()}
        keys = list(sizes)
        first = txn.get(keys[0]) if keys else None
    if first is None or first[:1] not in (b"\xc4", b"\xc5", b"\xc6"):
        raise UserError(f"{flag} {root}: an LMDB with no {LMDB_INDEX_KEY.decode()} whose records are not WSLD's "
                        f"msgpack ones: an unfinished pack_images.py run? Pack the folder again")
    rows = []
    for k in keys:
        name = k.decode(errors="replace")
        parts = name.split("/")
        if len(parts) != 2 or not all(files.is_plain_name(x) for x in parts):
            raise UserError(f"{flag} {root}: key {name!r:.80} is not class/file; neither our LMDB pack (no "
                            f"{LMDB_INDEX_KEY.decode()}) nor WSLD's")
        rows.append((parts[0], parts[1], k))
    rows.sort(key=lambda r: (r[0], r[1]))  # ImageFolder's order: classes, then files, by name
    classes = sorted({r[0] for r in rows})
    target = {c: n for n, c in enumerate(classes)}
    return {"classes": classes, "samples": [(os.path.join(root, c, f), target[c]) for c, f, _ in rows],
            "fingerprint": fingerprint_of((f"{c}/{f}", sizes[k], target[c]) for c, f, k in rows), "content": None,
            "pixels": LmdbImages(root, _Keys.of([k for _, _, k in rows]), True), "source": "wsld"}


def _our_lmdb(root: str, flag: str, raw: bytes) -> dict[str, Any]:
    """The checked index of an LMDB pack of ours (``raw``: its index record)."""
    index, rows = _parsed(raw.decode, lambda: _loaded(raw),
                          lambda: _Rows(f"packed image index in {root}", root, 2, _is_our_lmdb_index))
    if not isinstance(index, dict) or not _is_our_lmdb_index(index):
        raise UserError(f"{flag} {root}: its {LMDB_INDEX_KEY.decode()} is not a packed image index of "
                        f"version {VERSION}" + _older(index))
    rows.finish(index)
    fingerprint, content = rows.identity(index)
    return {"classes": rows.classes, "samples": rows.samples, "fingerprint": fingerprint, "content": content,
            "pixels": LmdbImages(root, rows.keys, False), "source": index.get("source")}


def _loaded(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def pack_lmdb(folder, out: str, progress=None) -> tuple[int, str]:
    """Every image file of ``folder`` into an LMDB at ``out``, bytes unchanged, a file at a time;
    returns the bytes and the folder's fingerprint."""
    lmdb = optional_import("lmdb", "lmdb", "--format lmdb")
    total = sum(os.path.getsize(p) for p, _ in folder.samples)
    # Written under a temporary name (no lock file: the folder's lock keeps other writers out) and
    # renamed last, so data.mdb only ever names a finished pack.
    tmp = os.path.join(out, f"{files.TMP_PREFIX}{os.getpid()}-data.mdb")
    with _cleaned_on_failure(tmp, os.path.join(out, "data.mdb")):
        env = lmdb.open(tmp, subdir=False, lock=False, map_size=int(total * 1.2) + (64 << 20), meminit=False)
        try:
            fingerprint = _fill_lmdb(env, folder, progress)
            env.sync()
        finally:
            env.close()
        os.chmod(tmp, files.FILE_MODE)
        os.replace(tmp, os.path.join(out, "data.mdb"))
    return total, fingerprint


def _fill_lmdb(env, folder, progress) -> str:
    """The records, a thousand to a transaction, then the index (kept meanwhile: each file's size)."""
    rows, sizes, digest = _FolderRows(folder), np.zeros(len(folder.samples), np.int64), hashlib.sha256()
    txn = env.begin(write=True)
    try:
        for n, (path, _) in enumerate(folder.samples):
            with open(path, "rb") as f:
                data = f.read()
            txn.put(rows.relative(path).encode(), data)
            digest.update(data)
            sizes[n] = len(data)
            if n % 1000 == 999:
                txn.commit()
                txn = env.begin(write=True)
            if progress is not None:
                progress.update(1)
        fingerprint, content = _identity(folder.classes, _in_chunks(rows.at, sizes), digest.hexdigest())
        head = {"format": FORMAT, "version": VERSION, "kind": "lmdb", "classes": folder.classes,
                "fingerprint": fingerprint, "data_sha256": digest.hexdigest(), "content": content,
                "source": folder.root}
        txn.put(LMDB_INDEX_KEY, "".join(_index_text(head, rows.at, sizes)).encode())
    except BaseException:
        txn.abort()
        raise
    txn.commit()  # the index last: an LMDB without it is an unfinished pack
    return fingerprint


@contextlib.contextmanager
def _cleaned_on_failure(tmp: str, final: str):
    """A failed write (a full disk, a quota, a file-size limit) removes its temporary file and
    is one line naming the file it was writing."""
    try:
        yield
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        lmdb_error = type(exc).__module__.startswith("lmdb")  # lmdb's errors wrap the OS's
        if isinstance(exc, OSError) or lmdb_error:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split(": ")[-1]
            raise UserError(f"cannot write {final}: {reason}; nothing partial was left") from None
        raise
