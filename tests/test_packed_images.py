"""Packed image folders (scripts/pack_images.py): decoded once into one mapped file, accepted
wherever an image folder is, with the very pixels and fingerprint of the folder, so stores and
training are identical; a damaged pack is one line naming it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, STORE_ARGS, relabel, run_script, script_env, train_in_process, tree_bytes

from softlabel.data import load_rgb, scan_image_folder
from softlabel.errors import UserError


@pytest.fixture(scope="module")
def packed(demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "ipc2"
    proc = run_script("scripts/pack_images.py", demo_data / "ipc2", out, "--no-progress")
    assert "20 images, 10 classes" in proc.stdout
    return out


@pytest.fixture(scope="module")
def packed_lmdb(demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "ipc2_lmdb"
    run_script("scripts/pack_images.py", demo_data / "ipc2", out, "--format", "lmdb", "--no-progress")
    return out


def wsld_lmdb(folder: Path, out: Path) -> None:
    """An LMDB as WSLD's dataset/img2lmdb.py writes it: key class/file, value one msgpack bin
    (0xc6 + uint32 big-endian length) of the JPEG-encoded image followed by a uint16 label,
    numbered in os.listdir order."""
    import io

    import lmdb
    from PIL import Image
    env = lmdb.open(str(out), map_size=1 << 26)
    classes = [d for d in os.listdir(folder) if (folder / d).is_dir()]
    with env.begin(write=True) as txn:
        for c in classes:
            for f in os.listdir(folder / c):
                buf = io.BytesIO()
                Image.open(folder / c / f).convert("RGB").save(buf, "JPEG", quality=90)
                payload = buf.getvalue() + np.uint16(classes.index(c)).tobytes()
                txn.put(f"{c}/{f}".encode(), b"\xc6" + len(payload).to_bytes(4, "big") + payload)
    env.close()


def test_a_packed_folder_has_the_folders_pixels_and_fingerprint(packed, demo_data):
    folder, pack = scan_image_folder(str(demo_data / "ipc2"), "--data"), scan_image_folder(str(packed), "--data")
    assert pack.classes == folder.classes and pack.targets == folder.targets
    assert pack.fingerprint() == folder.fingerprint()
    for (a, _), (b, _) in zip(folder.samples, pack.samples):
        assert np.array_equal(np.asarray(load_rgb(a)), np.asarray(pack.load(b)))
    assert sorted(p.name for p in packed.iterdir()) == [".lock", "images.json", "pixels.u8"]


def test_stores_and_training_are_the_same_from_the_pack(packed, packed_lmdb, demo_data, teacher_ckpt, cutmix_store,
                                                        tmp_path):
    for name, source in (("pixels", packed), ("lmdb", packed_lmdb)):
        store = tmp_path / f"store_{name}"
        relabel(source, teacher_ckpt, store, *STORE_ARGS, *(("-j", 2) if name == "lmdb" else ()))  # workers open it
        assert tree_bytes(store) == tree_bytes(cutmix_store) | {"manifest.json": (store / "manifest.json").read_bytes()}
    base = ["--model", "mlpnet", "--epochs", 2, "--no-progress", "--seed", 0]
    runs = {}
    for name, train_dir, extra in (("store_folder", demo_data / "ipc2", ["--fkd-path", cutmix_store, "-j", 0]),
                                   ("store_pack", packed, ["--fkd-path", cutmix_store, "-j", 2]),
                                   ("hard_folder", demo_data / "ipc2", ["--input-size", 24, "-b", 8, "-j", 0]),
                                   ("hard_pack", packed, ["--input-size", 24, "-b", 8, "-j", 0,
                                                          "--val-dir", packed]),
                                   ("store_lmdb", packed_lmdb, ["--fkd-path", cutmix_store, "-j", 2,
                                                                "--val-dir", packed_lmdb]),  # workers open it
                                   ("hard_lmdb", packed_lmdb, ["--input-size", 24, "-b", 8, "-j", 0])):
        runs[name] = tmp_path / name
        train_in_process("--train-dir", train_dir, *base, *extra, "--output-dir", runs[name])
    weights = {k: torch.load(v / "checkpoint.pth", weights_only=True)["model"] for k, v in runs.items()}
    for a, b in (("store_folder", "store_pack"), ("store_folder", "store_lmdb"), ("hard_folder", "hard_pack"),
                 ("hard_folder", "hard_lmdb")):
        assert all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a]), (a, b)
    assert json.loads((runs["hard_pack"] / "results.json").read_text())["top1"] >= 0


def test_wsld_lmdb_files_are_read_as_an_image_folder(demo_data, tmp_path):
    wsld_lmdb(demo_data / "ipc2", tmp_path / "wsld")
    folder, lm = scan_image_folder(str(demo_data / "ipc2"), "--data"), scan_image_folder(str(tmp_path / "wsld"), "--data")
    assert lm.classes == folder.classes and lm.targets == folder.targets  # ImageFolder order, not os.listdir's
    from PIL import Image
    for (a, _), (b, _) in zip(folder.samples, lm.samples):
        assert os.path.basename(a) == os.path.basename(b)
        import io
        jpeg = io.BytesIO()
        Image.open(a).convert("RGB").save(jpeg, "JPEG", quality=90)
        assert np.array_equal(np.asarray(Image.open(jpeg).convert("RGB")), np.asarray(lm.load(b)))
    train_in_process("--train-dir", tmp_path / "wsld", "--model", "mlpnet", "--epochs", 1, "--input-size", 24,
                     "-b", 8, "-j", 2, "--no-progress", "--output-dir", tmp_path / "run")  # workers open it
    # an LMDB of ours left unfinished (no index) is not mistaken for WSLD's
    import lmdb
    env = lmdb.open(str(tmp_path / "unfinished"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"0/a.png", (demo_data / "ipc2" / folder.classes[0] / os.listdir(demo_data / "ipc2" / folder.classes[0])[0]).read_bytes())
    env.close()
    with pytest.raises(UserError, match="unfinished pack_images.py run"):
        scan_image_folder(str(tmp_path / "unfinished"), "--data")


def test_msgpack_bin_records_of_every_width():
    from softlabel.packed_images import msgpack_bin
    for head in (b"\xc4\x03", b"\xc5\x00\x03", b"\xc6\x00\x00\x00\x03"):
        assert msgpack_bin(head + b"abc", "x") == b"abc"
    with pytest.raises(UserError, match="says 4 bytes"):
        msgpack_bin(b"\xc4\x04abc", "x")


def damage(root: Path, how: str) -> None:
    index = json.loads((root / "images.json").read_text())
    if how == "truncated":
        (root / "pixels.u8").write_bytes((root / "pixels.u8").read_bytes()[:-3])
    elif how == "path":
        index["samples"][3][0] = "../../etc/passwd"
    elif how == "class":
        index["samples"][0][1] = 99
    elif how == "side":
        index["samples"][0][2] = 0
    elif how == "version":
        index["version"] = 1
    (root / "images.json").write_text(json.dumps(index))


@pytest.mark.parametrize("how,needle", [("truncated", "truncated"), ("path", "plain path"), ("class", "known class"),
                                        ("side", "sides in"), ("version", "version 1 .* pack the folder again")])
def test_a_damaged_pack_is_one_line(packed, tmp_path, how, needle):
    root = tmp_path / "p"
    shutil.copytree(packed, root)
    damage(root, how)
    with pytest.raises(UserError, match=needle) as err:
        scan_image_folder(str(root), "--data")
    assert "\n" not in str(err.value)


def test_pack_images_refuses_what_would_overwrite(packed, demo_data, tmp_path, monkeypatch):
    from softlabel.commands import pack as module
    for argv, needle in (([demo_data / "ipc2", demo_data / "ipc2" / "packed"], "inside"),
                         ([demo_data / "ipc2", packed], "holds a packed folder already"),
                         ([packed, tmp_path / "x"], "DIR .* is a packed folder already")):
        monkeypatch.setattr(sys, "argv", ["pack_images.py", *map(str, argv)])
        with pytest.raises(UserError, match=needle):
            module.main(module.get_args_parser().parse_args())
    assert not (demo_data / "ipc2" / "packed").exists() and not (tmp_path / "x").exists()


# Packs 6,000 images with 8 MB of address space above the interpreter's after the imports and the
# folder's scan (one malloc arena and 1 MB thread stacks: the limit bounds what is allocated, not
# what threads reserve). Packing keeps each image's shape and size (12 bytes), so it needs 3-4 MB
# whatever the count (chunks of the index, two threads); a future, a decoded image and a row per
# image, and the indented index as one string, needed about 2 KB an image (12 MB here).
BOUNDED_PACK = """
import os, re, resource, sys, threading
from softlabel import packed_images
from softlabel.data import load_rgb, scan_image_folder
index = scan_image_folder(sys.argv[1], "DIR")
load_rgb(index.samples[0][0])  # PIL's decoders loaded
threading.stack_size(1 << 20)
with open("/proc/self/status") as f:
    size = int(re.search(r"VmSize:\\s+(\\d+)", f.read()).group(1)) * 1024
limit = size + int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
os.makedirs(sys.argv[2])
packed_images.pack(index, sys.argv[2], threads=2)
"""


def test_packing_memory_does_not_grow_with_the_image_count(tmp_path):
    import io

    from PIL import Image
    png = io.BytesIO()
    Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(png, "PNG")
    count, folder = 6000, tmp_path / "tiny"
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True)
        for n in range(count // 10):
            (folder / f"c{c}" / f"{n:05d}.png").write_bytes(png.getvalue())
    proc = subprocess.run([sys.executable, "-c", BOUNDED_PACK, folder, tmp_path / "packed", str(8 << 20)],
                          cwd=ROOT, env=script_env(MALLOC_ARENA_MAX="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pack = scan_image_folder(str(tmp_path / "packed"), "--data")
    assert len(pack) == count and pack.fingerprint() == scan_image_folder(str(folder), "--data").fingerprint()
    last = np.asarray(pack.load(pack.samples[-1][0]))
    assert np.array_equal(last, np.asarray(Image.open(io.BytesIO(png.getvalue()))))
