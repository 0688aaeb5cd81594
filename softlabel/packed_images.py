"""Image folders packed into one file, accepted wherever an image folder is (``--data``,
``--train-dir``, ``--val-dir``): decoded uint8 pixels, memory-mapped, or an LMDB of the files.

A packed folder ``OUT`` holds::

    pixels.u8     every image's RGB pixels, height x width x 3 uint8, one after another, in
                  ImageFolder order
    images.json   format, version, classes, per image [relative path, class, height, width],
                  each file's size, a SHA-256 of the pixels and a content digest (see _identity),
                  the source folder's fingerprint, and the pixel file's size

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

import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import numpy as np
from PIL import Image

from softlabel import files
from softlabel.decode import fingerprint_of, load_rgb, to_rgb
from softlabel.errors import UserError, optional_import

FORMAT, VERSION = "softlabel-packed-images", 2  # 2: file sizes and a content digest
INDEX, PIXELS = "images.json", "pixels.u8"
MAX_SIDE = 65535


def is_packed(root: str) -> bool:
    return os.path.isfile(os.path.join(root, INDEX))


class PackedPixels:
    """The pixel file of a packed folder, mapped on first use in each process."""

    def __init__(self, path: str, shapes: list[tuple[int, int]]):
        self.path, self.shapes = path, shapes
        sizes = np.array([h * w * 3 for h, w in shapes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]) if len(sizes) else np.zeros(1, np.int64)
        self._map: Optional[np.memmap] = None

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict:  # loader workers map the file themselves (the pages are shared)
        return {**self.__dict__, "_map": None}

    def image(self, i: int) -> Image.Image:
        if self._map is None:
            self._map = np.memmap(self.path, np.uint8, mode="r")
        h, w = self.shapes[i]
        return Image.fromarray(np.asarray(self._map[self.offsets[i]:self.offsets[i + 1]]).reshape(h, w, 3), "RGB")


def read(root: str, flag: str) -> dict[str, Any]:
    """The checked index of a packed folder: classes, samples, shapes, fingerprint, pixels."""
    where = os.path.join(root, INDEX)
    index = files.read_json(where, "packed image index")
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
        raise UserError(f"{flag} {root}: {INDEX} is not a packed image index of version {VERSION} "
                        f"(made by scripts/pack_images.py)" + _older(index))
    classes, samples = index.get("classes"), index.get("samples")
    _check_rows(classes, samples, f"packed image index {where}", lmdb_rows=False)
    rows = samples
    pixels = PackedPixels(os.path.join(root, PIXELS), [(h, w) for _, _, h, w in rows])
    try:
        size = os.path.getsize(pixels.path)
    except OSError:
        raise UserError(f"{flag} {root}: no {PIXELS}; pack the folder again with scripts/pack_images.py") from None
    if size != pixels.nbytes or index.get("pixel_bytes") != size:
        raise UserError(f"{flag} {root}: {PIXELS} holds {size} bytes, its index describes {pixels.nbytes} "
                        f"(truncated, or not the file this index was written with)")
    fingerprint, content = _check_identity(index, f"packed image index {where}")
    return {"classes": classes, "samples": [(os.path.join(root, *rel.split("/")), t) for rel, t, _, _ in rows],
            "fingerprint": fingerprint, "content": content, "pixels": pixels, "source": index.get("source")}


def _identity(classes: list, rows: list, sizes: list, data_sha256: str) -> tuple[str, str]:
    """A pack's (fingerprint, content digest), from its index alone. The fingerprint is the source
    folder's (relative paths, file sizes, classes: stores made from either check the same); the
    content digest adds what the pack hands out (each image's shape, and the SHA-256 of the decoded
    pixels, or of the files' bytes in an LMDB, taken when packing), so a pack of other images with
    the same names and sizes, or an index edited after packing, does not pass for the original."""
    import hashlib

    fingerprint = fingerprint_of((r[0], size, r[1]) for r, size in zip(rows, sizes))
    listing = json.dumps([classes, rows, sizes], separators=(",", ":"))
    kind = "pixels" if rows and len(rows[0]) == 4 else "files"  # compared only with a pack of its kind
    return fingerprint, f"{kind}:" + hashlib.sha256(f"{listing}\n{data_sha256}".encode()).hexdigest()


def _check_identity(index: dict, where: str) -> tuple[str, str]:
    """The fingerprint and content digest of a pack, checked against those its index records."""
    rows, sizes, data = index["samples"], index.get("file_sizes"), index.get("data_sha256")
    if not (isinstance(sizes, list) and len(sizes) == len(rows) and isinstance(data, str)
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes)):
        raise UserError(f"{where}: no file_sizes (one per sample) or data_sha256; pack the folder again")
    fingerprint, content = _identity(index["classes"], rows, sizes, data)
    if (fingerprint, content) != (index.get("fingerprint"), index.get("content")):
        what = "fingerprint" if fingerprint != index.get("fingerprint") else "content digest"
        raise UserError(f"{where}: its samples do not give the {what} it records (changed after packing: an "
                        f"image left out, a shape edited?); pack the folder again")
    return fingerprint, content


def _older(index: Any) -> str:
    older = isinstance(index, dict) and index.get("format") == FORMAT and index.get("version") == 1
    return "; version 1 (no content digest) is no longer read: pack the folder again" if older else ""


def pack(folder, out: str, threads: int = 8, progress=None) -> int:
    """Decode every image of ``folder`` (a ``FolderIndex``) once into ``out``; returns the pixel bytes.
    The pixel file is written first and the index last (both atomically): an index present means
    a complete pack."""
    files.ensure_dir(out, "OUT")
    import hashlib
    rows: list[list] = []
    tmp = os.path.join(out, f"{files.TMP_PREFIX}{os.getpid()}-{PIXELS}")
    total, digest = 0, hashlib.sha256()
    with _cleaned_on_failure(tmp, os.path.join(out, PIXELS)), open(tmp, "wb") as f, \
            ThreadPoolExecutor(max_workers=threads) as pool:
        paths = [p for p, _ in folder.samples]
        for n, img in enumerate(pool.map(load_rgb, paths)):  # in order: pool.map keeps it
            pixels = np.asarray(img, dtype=np.uint8)
            if max(img.size) > MAX_SIDE:
                raise UserError(f"{paths[n]}: {img.size[0]}x{img.size[1]} pixels, over the {MAX_SIDE} a side "
                                f"a packed folder holds")
            f.write(pixels.tobytes())
            digest.update(pixels.tobytes())
            total += pixels.nbytes
            rel = os.path.relpath(paths[n], folder.root).replace(os.sep, "/")
            rows.append([rel, folder.samples[n][1], img.height, img.width])
            if progress is not None:
                progress.update(1)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, files.FILE_MODE)
    os.replace(tmp, os.path.join(out, PIXELS))
    sizes = [os.path.getsize(p) for p in paths]
    fingerprint, content = _identity(folder.classes, rows, sizes, digest.hexdigest())
    files.atomic_write_json(os.path.join(out, INDEX), {
        "format": FORMAT, "version": VERSION, "classes": folder.classes, "samples": rows, "file_sizes": sizes,
        "fingerprint": fingerprint, "data_sha256": digest.hexdigest(), "content": content,
        "pixel_bytes": total, "source": folder.root})
    return total


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


class LmdbImages:
    """The images of an LMDB pack (ours, or WSLD's), decoded on demand from the environment of the
    process that reads them."""

    def __init__(self, root: str, keys: list[bytes], wsld: bool):
        self.root, self.keys, self.wsld = root, keys, wsld

    def image(self, i: int) -> Image.Image:
        import io

        with _open_lmdb(self.root, "LMDB").begin() as txn:  # this process's environment
            value = txn.get(self.keys[i])
        where = f"{self.root} record {self.keys[i].decode(errors='replace')}"
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
            try:
                index = json.loads(raw)
            except ValueError:
                index = None
            if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION \
                    or index.get("kind") != "lmdb":
                raise UserError(f"{flag} {root}: its {LMDB_INDEX_KEY.decode()} is not a packed image index of "
                                f"version {VERSION}" + _older(index))
            classes, samples = index.get("classes"), index.get("samples")
            _check_rows(classes, samples, f"packed image index in {root}", lmdb_rows=True)
            fingerprint, content = _check_identity(index, f"packed image index in {root}")
            return {"classes": classes, "samples": [(os.path.join(root, *rel.split("/")), t) for rel, t in samples],
                    "fingerprint": fingerprint, "content": content,
                    "pixels": LmdbImages(root, [r.encode() for r, _ in samples], False), "source": index.get("source")}
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
            "pixels": LmdbImages(root, [k for _, _, k in rows], True), "source": "wsld"}


def _check_rows(classes: Any, samples: Any, where: str, lmdb_rows: bool) -> None:
    width = 2 if lmdb_rows else 4
    if not (isinstance(classes, list) and all(files.is_plain_name(c) for c in classes) and isinstance(samples, list)):
        raise UserError(f"{where}: classes must be plain folder names and samples a list")
    for n, s in enumerate(samples):
        if not (isinstance(s, list) and len(s) == width and isinstance(s[0], str)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in s[1:])
                and all(files.is_plain_name(part) for part in s[0].split("/")) and 0 <= s[1] < len(classes)
                and all(0 < v <= MAX_SIDE for v in s[2:])):
            raise UserError(f"{where}: sample {n} is not [relative path, class"
                            + (", height, width] with a plain path, a known class and sides in 1.." + str(MAX_SIDE)
                               if not lmdb_rows else "] with a plain path and a known class"))


def pack_lmdb(folder, out: str, progress=None) -> int:
    """Every image file of ``folder`` into an LMDB at ``out``, bytes unchanged; returns the bytes."""
    lmdb = optional_import("lmdb", "lmdb", "--format lmdb")
    paths = [p for p, _ in folder.samples]
    total = sum(os.path.getsize(p) for p in paths)
    # Written under a temporary name (no lock file: the folder's lock keeps other writers out) and
    # renamed last, so data.mdb only ever names a finished pack.
    tmp = os.path.join(out, f"{files.TMP_PREFIX}{os.getpid()}-data.mdb")
    with _cleaned_on_failure(tmp, os.path.join(out, "data.mdb")):
        env = lmdb.open(tmp, subdir=False, lock=False, map_size=int(total * 1.2) + (64 << 20), meminit=False)
        try:
            _fill_lmdb(env, folder, progress)
            env.sync()
        finally:
            env.close()
        os.chmod(tmp, files.FILE_MODE)
        os.replace(tmp, os.path.join(out, "data.mdb"))
    return total


def _fill_lmdb(env, folder, progress) -> None:
    import hashlib
    rows, sizes, done, digest = [], [], 0, hashlib.sha256()
    txn = env.begin(write=True)
    try:
        for path, target in folder.samples:
            rel = os.path.relpath(path, folder.root).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            txn.put(rel.encode(), data)
            digest.update(data)
            rows.append([rel, target])
            sizes.append(len(data))
            done += 1
            if done % 1000 == 0:
                txn.commit()
                txn = env.begin(write=True)
            if progress is not None:
                progress.update(1)
        fingerprint, content = _identity(folder.classes, rows, sizes, digest.hexdigest())
        txn.put(LMDB_INDEX_KEY, json.dumps({"format": FORMAT, "version": VERSION, "kind": "lmdb",
                                            "classes": folder.classes, "samples": rows, "file_sizes": sizes,
                                            "fingerprint": fingerprint, "data_sha256": digest.hexdigest(),
                                            "content": content, "source": folder.root}).encode())
    except BaseException:
        txn.abort()
        raise
    txn.commit()  # the index last: an LMDB without it is an unfinished pack


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
