"""The embedded demo dataset: fixed split, nested subsets, identical on every run. (Too many
images per class asked for: test_bad_inputs.py.)"""
from __future__ import annotations

import hashlib

from conftest import run_script, tree_bytes
from PIL import Image


def test_layout_split_and_subsets(demo_data):
    count = {split: len(list((demo_data / split).glob("*/*.png"))) for split in ("train", "val")}
    assert count == {"train": 1347, "val": 450}  # 75/25 of sklearn's 1797 digits
    for split in ("train", "val"):
        assert sorted(p.name for p in (demo_data / split).iterdir()) == [str(c) for c in range(10)]
    names = {split: {p.name for p in (demo_data / split).glob("*/*.png")} for split in ("train", "val")}
    assert not names["train"] & names["val"]
    subsets = sorted(p.name for p in demo_data.iterdir() if p.name.startswith("ipc"))
    assert subsets == ["ipc1", "ipc2", "ipc5"]  # every level <= K, and K itself
    for n in (1, 2, 5):
        for c in range(10):
            files = {p.name for p in (demo_data / f"ipc{n}" / str(c)).glob("*.png")}
            assert len(files) == n
            assert files <= {p.name for p in (demo_data / "train" / str(c)).glob("*.png")}
    for c in range(10):
        small = {p.name for p in (demo_data / "ipc2" / str(c)).glob("*.png")}
        assert small <= {p.name for p in (demo_data / "ipc5" / str(c)).glob("*.png")}
    img = Image.open(next((demo_data / "val" / "3").glob("*.png")))
    assert img.size == (32, 32) and img.mode == "RGB"


def test_identical_across_runs(demo_data, tmp_path):
    run_script("scripts/make_demo_data.py", "--out", tmp_path / "again", "--ipc", 7)
    again = tree_bytes(tmp_path / "again")
    assert "ipc7/0/" in "".join(again) and not any(k.startswith("ipc10") for k in again)
    ours = tree_bytes(demo_data)
    for key, value in again.items():
        if not key.startswith("ipc7"):
            assert ours[key] == value, key
    # Pinned: names and pixels must not drift between machines or library versions (PNG
    # bytes may, with another zlib, so the decoded pixels are what is pinned).
    assert pixels_digest(demo_data) == DEMO_PIXELS_SHA256


def pixels_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for split in ("train", "val") for p in (root / split).glob("*/*.png")):
        digest.update(str(path.relative_to(root)).encode() + Image.open(path).convert("RGB").tobytes())
    return digest.hexdigest()


DEMO_PIXELS_SHA256 = "b3d927a576990f6554c6bb4b2ae6f2bc69999d1d2136a4c56d8554af8c743084"
