"""softlabel/cifar.py on tiny files in the layout of torchvision's cifar-100-python/, written here."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from softlabel.cifar import MARKER, cifar100_folders, read_cifar100
from softlabel.errors import UserError

NAMES = [f"class_{i:03d}" for i in range(100)]  # alphabetical, as CIFAR-100's are
TRAIN_LABELS = [3, 97, 0, 3, 42]
TEST_LABELS = [99, 0, 7]


class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as the original files were written (by Python 2): byte strings as BINSTRING
    opcodes, which read back as text under encoding='latin1' (torchvision's)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        size = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([size]) if size < 256 else pickle.BINSTRING + struct.pack("<i", size)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def dump(path, obj, python2=False):
    if not python2:
        path.write_bytes(pickle.dumps(obj, protocol=2))
        return
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def split_entries(split, labels, seed):
    data = np.random.default_rng(seed).integers(0, 256, (len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": f"{split} batch 1 of 1".encode(), b"fine_labels": labels,
            b"coarse_labels": [v // 5 for v in labels], b"data": data,
            b"filenames": [f"img_{n}.png".encode() for n in range(len(labels))]}


def write_cifar(root, python2=False, **overrides):
    """torchvision's files under root/cifar-100-python; ``overrides`` replaces fields per file:
    {"train": {b"data": ...}}. Returns {split: (data, labels)}."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    meta = {b"fine_label_names": [n.encode() for n in NAMES], b"coarse_label_names": [b"c"] * 20}
    dump(base / "meta", {**meta, **overrides.get("meta", {})}, python2)
    found = {}
    for seed, (split, labels) in enumerate((("train", TRAIN_LABELS), ("test", TEST_LABELS))):
        entries = {**split_entries(split, labels, seed), **overrides.get(split, {})}
        dump(base / split, entries, python2)
        found[split] = (entries[b"data"], entries[b"fine_labels"])
    return found


def refused(call, *needles):
    """``call`` raises a UserError of one line holding every needle."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("python2", [False, True], ids=["protocol2", "python2-layout"])
def test_read_back_the_arrays_rows_and_labels(tmp_path, python2):
    written = write_cifar(tmp_path, python2)
    for split, (data, labels) in written.items():
        pixels, got_labels, names = read_cifar100(str(tmp_path), split)
        assert pixels.dtype == np.uint8 and pixels.shape == (len(labels), 32, 32, 3)
        assert np.array_equal(pixels, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        assert got_labels == labels and names == NAMES


def test_image_folders_hold_each_image_under_its_label(tmp_path, capsys):
    written = write_cifar(tmp_path / "data")
    (tmp_path / "images").mkdir()  # an empty folder is taken
    (tmp_path / ".images.tmp-999999999" / "train").mkdir(parents=True)  # a killed writer's
    train_dir, test_dir = cifar100_folders(str(tmp_path / "data"), str(tmp_path / "images"))
    assert (train_dir, test_dir) == (str(tmp_path / "images" / "train"), str(tmp_path / "images" / "test"))
    for root, (data, labels) in zip((train_dir, test_dir), written.values()):
        assert sorted(os.listdir(root)) == NAMES  # every class folder, so folder index = label
        for index, label in enumerate(labels):
            png = Image.open(os.path.join(root, NAMES[label], f"{index:05d}.png"))
            assert png.mode == "RGB"
            assert np.array_equal(np.asarray(png), data[index].reshape(3, 32, 32).transpose(1, 2, 0))
        assert sum(len(os.listdir(os.path.join(root, n))) for n in NAMES) == len(labels)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    assert "writing CIFAR-100" in capsys.readouterr().err

    png = tmp_path / "images" / "test" / NAMES[99] / "00000.png"
    before = png.stat().st_mtime_ns
    meta = tmp_path / "data" / "cifar-100-python" / "meta"
    os.utime(meta, ns=(1, 1))  # same bytes, another time (a copy): recognised by its SHA-256
    assert cifar100_folders(str(tmp_path / "data"), str(tmp_path / "images")) == (train_dir, test_dir)
    assert png.stat().st_mtime_ns == before and "writing" not in capsys.readouterr().err

    write_cifar(tmp_path / "data", train={b"fine_labels": [1, 1, 1, 1, 1]})
    refused(lambda: cifar100_folders(str(tmp_path / "data"), str(tmp_path / "images")),
            str(tmp_path / "images"), "train", "changed")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused(lambda: cifar100_folders(str(tmp_path / "data"), str(tmp_path / "other")), "other", MARKER)


def test_unsorted_names_are_refused_rather_than_mislabelled(tmp_path):
    write_cifar(tmp_path, meta={b"fine_label_names": [n.encode() for n in NAMES[1:2] + NAMES[:1] + NAMES[2:]]})
    refused(lambda: cifar100_folders(str(tmp_path), str(tmp_path / "out")), "meta", "fine_label_names", "sorted")
    assert not (tmp_path / "out").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


class RunsCode:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, protocol):
    touched = tmp_path / "ran"
    hostile = {  # the message names the global as the pickle spells it (protocol 2: Python 2's modules)
        ".system": RunsCode(os.system, f"touch {touched}"),
        ".eval": RunsCode(builtins.eval, f"open({str(touched)!r}, 'w')"),
        ".Popen": RunsCode(subprocess.Popen, ["touch", str(touched)]),
    }
    write_cifar(tmp_path)
    train = tmp_path / "cifar-100-python" / "train"
    for name, payload in hostile.items():
        entries = split_entries("train", TRAIN_LABELS, 0)
        train.write_bytes(pickle.dumps({**entries, b"fine_labels": [payload]}, protocol=protocol))
        refused(lambda: read_cifar100(str(tmp_path), "train"), str(train), "refused to load", name,
                "nothing from it was executed")
        assert not touched.exists()
    train.write_bytes(pickle.dumps(RunsCode(__import__("codecs").encode, "x", "rot13"), protocol=2))
    refused(lambda: read_cifar100(str(tmp_path), "train"), "refused to load", "rot13")


@pytest.mark.parametrize("override, needles", [
    ({b"data": np.zeros((5, 3072), np.float32)}, ["'data'", "float32"]),
    ({b"data": np.zeros((5, 3071), np.uint8)}, ["'data'", "(5, 3071)"]),
    ({b"data": np.zeros((5, 3, 32, 32), np.uint8)}, ["'data'", "(5, 3, 32, 32)"]),
    ({b"data": [[0] * 3072] * 5}, ["'data'", "a list"]),
    ({b"fine_labels": [3, 97, 0, 3, 100]}, ["'fine_labels'", "100", "0..99"]),
    ({b"fine_labels": [3, 97, -1, 3, 4]}, ["'fine_labels'", "-1"]),
    ({b"fine_labels": [3, 97, 0]}, ["'fine_labels'", "3 labels for the 5 images"]),
    ({b"fine_labels": [3, 97, 0, 3, 4.0]}, ["'fine_labels'", "list of ints"]),
    ({b"fine_labels": None}, ["'fine_labels'", "NoneType"]),
])
def test_wrong_fields_are_refused_in_one_line(tmp_path, override, needles):
    write_cifar(tmp_path, train=override)
    refused(lambda: read_cifar100(str(tmp_path), "train"), str(tmp_path / "cifar-100-python" / "train"), *needles)


def test_wrong_files_are_refused_in_one_line(tmp_path):
    base = tmp_path / "cifar-100-python"
    write_cifar(tmp_path, meta={b"fine_label_names": [b"x"] * 99})
    refused(lambda: read_cifar100(str(tmp_path), "test"), str(base / "meta"), "fine_label_names", "100")
    write_cifar(tmp_path)
    (base / "test").write_bytes((base / "test").read_bytes()[:500])
    refused(lambda: read_cifar100(str(tmp_path), "test"), str(base / "test"), "truncated or corrupt")
    dump(base / "test", [1, 2, 3])
    refused(lambda: read_cifar100(str(tmp_path), "test"), str(base / "test"), "not a dict")
    dump(base / "test", {b"data": np.zeros((1, 3072), np.uint8)})
    refused(lambda: read_cifar100(str(tmp_path), "test"), str(base / "test"), "no field 'fine_labels'")


def test_missing_files_say_where_and_that_nothing_is_downloaded(tmp_path):
    for call in (lambda: read_cifar100(str(tmp_path), "train"),
                 lambda: cifar100_folders(str(tmp_path), str(tmp_path / "out"))):
        refused(call, str(tmp_path / "cifar-100-python"), "train", "meta", "nothing is downloaded",
                "cifar-100-python.tar.gz")
    write_cifar(tmp_path)
    os.remove(tmp_path / "cifar-100-python" / "test")
    refused(lambda: cifar100_folders(str(tmp_path), str(tmp_path / "out")), "no test in")
    assert not (tmp_path / "out").exists()
