"""Smaller things users hit: unreadable validation images found before
training, 16-bit images scaled rather than clipped, odd file names on one error line, and files
that keep the team's umask."""
from __future__ import annotations

import os
import shutil
import stat

import numpy as np
import pytest
from conftest import assert_user_error, run_script
from PIL import Image

from softlabel.data import load_rgb, to_rgb
from softlabel.errors import _one_line
from softlabel.files import FILE_MODE, atomic_write_bytes, atomic_write_json

TRAIN = "validate/train_FKD_parallel.py"


@pytest.fixture()
def folders(demo_data, tmp_path):
    train, val = tmp_path / "train", tmp_path / "val"
    shutil.copytree(demo_data / "ipc2", train)
    shutil.copytree(demo_data / "ipc2", val)
    return train, val


def hard_run(train, val, out, *extra):
    return run_script(TRAIN, "--train-dir", train, "--val-dir", val, "--model", "democnn_small", "--epochs", 1,
                      "-b", 10, "--input-size", 16, "--output-dir", out, "--no-progress", "-j", 0, *extra,
                      check=False)


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_a_bad_validation_image_stops_the_run_before_training(folders, tmp_path, content):
    train, val = folders
    (val / "3" / "broken.png").write_bytes(content)
    proc = hard_run(train, val, tmp_path / "run")
    assert_user_error(proc, "--val-dir", "1 images cannot be read", "broken.png", "--skip-bad-images")
    assert not (tmp_path / "run" / "checkpoint.pth").exists()
    proc = hard_run(train, val, tmp_path / "run", "--skip-bad-images")
    assert proc.returncode == 0, proc.stderr
    assert "left out 1 unreadable validation images" in proc.stderr


def test_a_newline_in_a_file_name_stays_on_the_error_line(folders, tmp_path):
    train, val = folders
    (train / "4" / "two\nlines.png").write_bytes(b"garbage")
    proc = hard_run(train, val, tmp_path / "run")
    line = assert_user_error(proc, "two\\nlines.png", "cannot read image")
    assert "\n" not in line.strip()
    assert _one_line("a\tb\x1bc d") == "a\\tb\\x1bc d"


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.frombytes("I;16", (2, 2), values.astype("<u2").tobytes()).save(path)   # a 16-bit grey PNG
    with Image.open(path) as img:
        assert img.mode in ("I", "I;16")
    assert np.asarray(load_rgb(str(path)))[:, :, 0].tolist() == [[0, 64], [128, 255]]
    as_int32 = Image.fromarray(values.astype(np.int32))                             # mode "I", as older Pillow
    assert np.asarray(to_rgb(as_int32))[:, :, 1].tolist() == [[0, 64], [128, 255]]


def test_written_files_follow_the_umask_not_0600(tmp_path):
    atomic_write_bytes(str(tmp_path / "a.bin"), b"x")
    atomic_write_json(str(tmp_path / "b.json"), {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    for name in ("a.bin", "b.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~mask == FILE_MODE
    assert FILE_MODE & 0o044 or mask & 0o044  # readable by group and others unless the umask says not
