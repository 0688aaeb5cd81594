"""scripts/export_imagefolder.py on small files in torchvision's on-disk formats, written here."""
from __future__ import annotations

import os
import pickle

import numpy as np
from conftest import assert_user_error, run_script
from PIL import Image

SCRIPT = "scripts/export_imagefolder.py"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # as the CIFAR archives are written: bytes keys, numpy arrays


def fake_cifar10(root, per_batch=3):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dump(base / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10], b"num_cases_per_batch": per_batch})
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        dump(base / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                           b"filenames": [b"x.png"] * per_batch})
        batches[name] = (data, labels)
    return batches


def test_cifar10_exports_every_image_under_its_class(tmp_path):
    batches = fake_cifar10(tmp_path / "root")
    out = tmp_path / "out"
    proc = run_script(SCRIPT, "--dataset", "cifar10", "--root", tmp_path / "root", "--out", out, "--no-progress")
    assert "10 classes, train 15, val 3 images (18 written)" in proc.stdout
    assert sorted(os.listdir(out / "train")) == CIFAR10
    data, labels = batches["data_batch_2"]
    n = 3 + 1  # second image of the second batch
    img = np.asarray(Image.open(out / "train" / CIFAR10[labels[1]] / f"{n:05d}.png"))
    assert np.array_equal(img, data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    again = run_script(SCRIPT, "--dataset", "cifar10", "--root", tmp_path / "root", "--out", out, "--no-progress")
    assert "(0 written)" in again.stdout


def test_cifar100_and_stl10(tmp_path):
    base = tmp_path / "root" / "cifar-100-python"
    base.mkdir(parents=True)
    names = ["apple", "aquarium_fish", "baby"]
    dump(base / "meta", {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"x"]})
    for split, count in (("train", 4), ("test", 2)):
        dump(base / split, {b"data": np.full((count, 3072), 7, np.uint8), b"fine_labels": [0, 1, 2, 1][:count],
                            b"coarse_labels": [0] * count})
    run_script(SCRIPT, "--dataset", "cifar100", "--root", tmp_path / "root", "--out", tmp_path / "c100")
    assert sorted(os.listdir(tmp_path / "c100" / "train" / "aquarium_fish")) == ["00001.png", "00003.png"]

    stl = tmp_path / "root" / "stl10_binary"
    stl.mkdir()
    (stl / "class_names.txt").write_text("\n".join(["airplane", "bird", "car"]) + "\n")
    x = np.arange(2 * 3 * 96 * 96, dtype=np.uint64).astype(np.uint8).reshape(2, 3, 96, 96)
    for stem in ("train", "test"):
        x.tofile(stl / f"{stem}_X.bin")
        np.array([3, 1], np.uint8).tofile(stl / f"{stem}_y.bin")
    run_script(SCRIPT, "--dataset", "stl10", "--root", tmp_path / "root", "--out", tmp_path / "stl")
    img = np.asarray(Image.open(tmp_path / "stl" / "val" / "car" / "00000.png"))
    assert np.array_equal(img, x[0].transpose(2, 1, 0))  # stored column-major


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_files_are_refused(tmp_path):
    """(A --root without the dataset: test_bad_inputs.py.)"""
    fake_cifar10(tmp_path / "root")
    marker = tmp_path / "pwned"
    dump(tmp_path / "root" / "cifar-10-batches-py" / "data_batch_3", {b"data": RunsCode(marker)})
    proc = run_script(SCRIPT, "--dataset", "cifar10", "--root", tmp_path / "root", "--out", tmp_path / "o",
                      check=False)
    assert_user_error(proc, "data_batch_3", "refused to load")
    assert not marker.exists()
