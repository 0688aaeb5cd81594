"""scripts/fkd_info.py: the summary, --check and --verify-teacher, on our stores (full and
top-k) and on an upstream SRe2L store, run as a user runs it."""
from __future__ import annotations

import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import assert_user_error, relabel, run_script

from softlabel import replay
from softlabel.stores import batch as store
from softlabel.stores import legacy_order

INFO = "scripts/fkd_info.py"
SIZE = 16
# 20 images in batches of 8 (the last one short), 2 epochs: 6 batch files per store.
BASE = ("--epochs", 2, "-b", 8, "--input-size", SIZE, "--min-scale-crops", 0.3, "-j", 0)


def parallel(*calls: Callable[[], object]) -> list:
    """Run independent script calls two at a time: each spends most of its time importing
    torch, on one core, and the test machines have two."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


def make_teacher(path: Path, seed: int, images: Path) -> Path:
    """A random democnn_small whose BatchNorm statistics are measured on the demo images: a
    plain random init gives nearly the same logits for every input (its BatchNorm has never
    seen data), which cannot tell the right images from wrong ones; this one's logits follow
    its input."""
    from PIL import Image

    from softlabel.models import create_model
    torch.manual_seed(seed)
    model = create_model("democnn_small", 10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the one calibration batch
    files = sorted(images.glob("*/*.png"))
    x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((SIZE, SIZE))))
                     for f in files]).permute(0, 3, 1, 2)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]
    with torch.no_grad():
        model.train()(replay.normalize(x, mean, std))
    torch.save({"model": model.eval().state_dict(), "arch": "democnn_small", "num_classes": 10,
                "mean": mean, "std": std}, path)
    return path


@pytest.fixture(scope="module")
def work(demo_data, tmp_path_factory) -> dict[str, Path]:
    """Teachers, stores and image folders shared by the tests of this file."""
    root = tmp_path_factory.mktemp("fkd_info")
    data = demo_data / "ipc2"
    w = {"root": root, "data": data,
         "teacher": make_teacher(root / "teacher.pth", 0, demo_data / "ipc5"),
         "other_teacher": make_teacher(root / "other.pth", 1, demo_data / "ipc5")}
    w["full"], w["topk"] = root / "full", root / "topk"
    parallel(lambda: relabel(data, w["teacher"], w["full"], *BASE, "--mix-type", "cutmix", "--use-fp16"),
             lambda: relabel(data, w["teacher"], w["topk"], *BASE, "--mix-type", "mixup",
                             "--label-format", "topk", "--topk", 3))
    # Other images under the same names: each class folder holds the next class's digits.
    w["wrong_data"] = root / "wrong_data"
    for c in range(10):
        (w["wrong_data"] / str(c)).mkdir(parents=True)
        names = sorted(p.name for p in (data / str(c)).iterdir())
        others = sorted((data / str((c + 1) % 10)).iterdir())
        for name, other in zip(names, others):
            shutil.copy(other, w["wrong_data"] / str(c) / name)
    w["legacy"] = root / "sre2l"
    write_sre2l(w["full"], w["legacy"], w["teacher"], data)
    return w


def write_sre2l(ours: Path, dest: Path, teacher_path: Path, data: Path) -> None:
    """An SRe2L/G-VBSM store, made the upstream way: no manifest; lists of 6 [coords, flip,
    mix_index, mix_lam, mix_bbox as numpy int64 scalars, fp16 soft labels]; the samples of
    each batch taken in the order of the RandomSampler seeded with --fkd_seed 42
    (legacy_order.LegacyOrder), and labelled by the teacher on those images' pixels. The crops and
    mix are our store's (all demo images are 32x32, so any crop fits any image)."""
    from softlabel.data import load_rgb, scan_image_folder
    from softlabel.teachers import load_teacher
    manifest = store.read_manifest(str(ours))
    reader = store.Reader(str(ours), manifest)
    order = legacy_order.LegacyOrder(42, manifest["num_samples"])
    samples = scan_image_folder(str(data), "--data").samples
    teacher = load_teacher(None, str(teacher_path))
    b_size = manifest["batch_size"]
    for e in range(manifest["epochs"]):
        (dest / f"epoch_{e}").mkdir(parents=True)
        for b in range(manifest["batches_per_epoch"]):
            rec = reader.read(e, b)
            idx = order.epoch(e)[b * b_size:(b + 1) * b_size]
            pixels = replay.render_batch([load_rgb(samples[k][0]) for k in idx.tolist()], rec.coords, rec.flip, SIZE)
            x = replay.model_inputs(pixels, teacher.mean, teacher.std, rec.mix_index, rec.mix_lam, rec.mix_bbox)
            with torch.no_grad():
                logits = teacher.model(x)
            entry = [rec.coords, rec.flip, rec.mix_index, np.float64(rec.mix_lam),
                     [np.int64(v) for v in rec.mix_bbox], logits.half()]
            torch.save(entry, dest / f"epoch_{e}" / f"batch_{b}.tar")


def verify(store_dir: Path, data: Path, teacher: Path, *extra, check: bool = True):
    return run_script(INFO, store_dir, "--verify-teacher", "democnn_small", "--teacher-path", teacher,
                      "--data", data, *extra, check=check)


# ----------------------------------------------------------------------------- summary, --check

def test_summary_and_check_of_good_stores(work):
    summary, full, topk = (p.stdout for p in parallel(lambda: run_script(INFO, work["full"]),
                                                      lambda: run_script(INFO, work["full"], "--check"),
                                                      lambda: run_script(INFO, work["topk"], "--check")))
    rows = summary.splitlines()
    for key, value in [("format:", "ours v1"), ("epochs:", " 2"), ("batches per epoch:", " 3"),
                       ("batch size:", " 8"), ("classes:", " 10"), ("label format:", "full (float16)"),
                       ("mix type:", "cutmix"), ("teacher:", "democnn_small (private"),
                       ("temperature:", " 1"), ("size on disk:", " bytes)")]:
        assert any(row.startswith(key) and value in row for row in rows), (key, summary)
    assert "ok:" not in summary  # a summary reads no batch file
    assert full.startswith(summary) and full.rstrip().endswith("ok: 6 files checked")
    assert "topk 3 + residual fill (float16)" in topk and "mixup" in topk
    assert topk.rstrip().endswith("ok: 6 steps checked in 2 epoch files")


def spoil(path: Path, how: str) -> None:
    """Damage one batch file the way a bad disk, a bad writer or a bad teacher would."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:300])
        return
    if how == "missing":
        path.unlink()
        return
    entry = torch.load(path, weights_only=True)
    if how == "nan":
        entry[5][1, 3] = float("nan")
    elif how == "coords":
        entry[0][2, 1] = 1.25
    elif how == "index":
        entry[6][0] = 20  # the store holds 20 images: 0..19
    torch.save(entry, path)


def test_check_names_the_first_bad_file(work, tmp_path):
    cases = {"truncated": "truncated or corrupt", "nan": "soft_label holds NaN", "coords": "coords outside [0, 1]",
             "index": "index out of range", "missing": "1 batch files missing for 2 epochs"}
    paths = {}
    for how in cases:
        shutil.copytree(work["full"], tmp_path / how)
        paths[how] = Path(store.batch_path(str(tmp_path / how), 1, 1))
        spoil(paths[how], how)
    procs = parallel(*[lambda how=how: run_script(INFO, tmp_path / how, "--check", check=False) for how in cases])
    for (how, needle), proc in zip(cases.items(), procs):
        assert_user_error(proc, str(paths[how]), needle)
        assert "ok:" not in proc.stdout, how


# ----------------------------------------------------------------------------- --verify-teacher

def relative_error(out: str) -> float:
    return float(out.split("worst relative error: ")[1].split()[0])


def test_verify_teacher_agrees_on_full_and_topk_stores(work):
    full, topk = (p.stdout for p in parallel(
        lambda: verify(work["full"], work["data"], work["teacher"], "--sample", 0),
        lambda: verify(work["topk"], work["data"], work["teacher"])))
    assert "6 batches, 40 samples" in full and "on full logits" in full, full
    assert "4 batches, 24 samples" in topk and "top-3 logits" in topk, topk  # default: 4 of the 6 batches
    for out in (full, topk):
        assert "argmax agreement: 100.00%" in out and "ok: the teacher reproduces the stored labels" in out, out
        assert relative_error(out) < 2e-3, out  # float16 rounding only


def test_verify_teacher_fails_with_another_teacher_or_other_images(work):
    other_teacher, other_images = parallel(
        lambda: verify(work["full"], work["data"], work["other_teacher"], check=False),
        lambda: verify(work["topk"], work["wrong_data"], work["teacher"], check=False))
    for proc in (other_teacher, other_images):
        assert_user_error(proc, "--verify-teacher", "does not reproduce", "worst relative error")
        assert relative_error(proc.stdout) > 0.1, proc.stdout
    assert "weights (sha256" in other_teacher.stdout  # noted: not the teacher the manifest records
    assert "not the folder the store was made from" in other_images.stdout


# ----------------------------------------------------------------------------- an upstream store

def test_upstream_sre2l_store_is_summarized_checked_and_verified(work):
    legacy = work["legacy"]
    with pytest.raises(pickle.UnpicklingError):  # numpy scalars: refused by a plain weights_only load
        torch.load(legacy / "epoch_0" / "batch_0.tar", weights_only=True)
    checked, needs_size = parallel(lambda: run_script(INFO, legacy, "--check"),
                                   lambda: verify(legacy, work["data"], work["teacher"], check=False))
    out = checked.stdout
    assert "legacy sre2l" in out and "20 (from the last batch of epoch 0)" in out, out
    for key, value in [("epochs:", " 2"), ("batches per epoch:", " 3"), ("classes:", " 10"),
                       ("label format:", "full (float16)"), ("mix type:", "cutmix")]:
        assert any(row.startswith(key) and value in row for row in out.splitlines()), (key, out)
    assert out.rstrip().endswith("ok: 6 files checked")
    assert_user_error(needs_size, "--input-size")

    right, wrong_seed = parallel(
        lambda: verify(legacy, work["data"], work["teacher"], "--input-size", SIZE, "--fkd_seed", 42, "--sample", 0),
        lambda: verify(legacy, work["data"], work["teacher"], "--input-size", SIZE, "--fkd_seed", 7, check=False))
    assert "argmax agreement: 100.00% (40/40)" in right.stdout and "ok: the teacher reproduces" in right.stdout
    assert relative_error(right.stdout) < 2e-3, right.stdout
    assert_user_error(wrong_seed, "does not reproduce")


# ----------------------------------------------------------------------------- --check --sample, many files

def info_check(capsys, *flags) -> str:
    """fkd_info's main in this process; its last line."""
    from softlabel.commands import info
    info.main(info.get_args_parser().parse_args([str(f) for f in flags]))
    return capsys.readouterr().out.rstrip().splitlines()[-1]


def test_check_sample_reads_a_few_steps_spread_over_the_store(work, tmp_path, capsys):
    from softlabel.errors import UserError
    assert info_check(capsys, work["topk"], "--check", "--sample", 2) == \
        "ok: 2 of 6 steps in 2 epoch files checked (spread evenly)"
    bad = tmp_path / "bad"
    shutil.copytree(work["full"], bad)
    spoil(Path(store.batch_path(str(bad), 1, 1)), "coords")  # the 5th of 6 steps: not in a sample of 2
    spoil(Path(store.batch_path(str(bad), 1, 2)), "nan")     # the last: in every sample
    with pytest.raises(UserError, match=r"epoch_1/batch_2.tar: soft_label holds NaN"):
        info_check(capsys, bad, "--check", "--sample", 2)
    with pytest.raises(UserError, match=r"epoch_1/batch_1.tar: coords outside"):
        info_check(capsys, bad, "--check")


def test_per_image_check_names_the_first_bad_file_of_many(tmp_path, capsys):
    """Files are checked many at a time (per_image.CHECK_FILES); a bad one is still named as a
    file-by-file read names it: the first in order, a value problem before a later unreadable file."""
    from softlabel.data import scan_image_folder
    from softlabel.errors import UserError
    from softlabel.stores import create_store, per_image
    n = per_image.CHECK_FILES + 6
    for i in range(n):
        (tmp_path / "data" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / f"c{i % 2}" / f"{i:03d}.png").write_bytes(b"x")
    index = scan_image_folder(str(tmp_path / "data"), "--data")
    manifest = {"format": per_image.FORMAT, "format_version": per_image.FORMAT_VERSION, "num_crops": 2,
                "label_type": "smoothing", "top_k": 1, "input_size": SIZE, "min_scale_crops": 0.3,
                "max_scale_crops": 1.0, "temperature": 1.0, "use_fp16": False, "fkd_seed": 0, "teacher": None,
                "num_samples": n, "num_classes": 10, "class_names": index.classes,
                "class_to_index": {c: i for i, c in enumerate(index.classes)}, "mean": [0.5] * 3, "std": [0.2] * 3,
                "dataset_fingerprint": index.fingerprint()}
    root = tmp_path / "labels"
    writer = create_store(str(root), manifest, index=index)
    for i in range(n):
        coords, flips = per_image.sample_crops(0, i, 2, SIZE, SIZE, (0.3, 1.0))
        writer.write(i, coords, flips, torch.tensor([[i % 10]] * 2), torch.full((2, 1), 0.5))
    writer.finish()
    files = [Path(per_image.label_path(str(root), index, i)) for i in range(n)]
    entries = torch.load(files[5], weights_only=True)
    entries[2][1, 0] = 10
    torch.save(entries, files[5])
    files[9].write_bytes(files[9].read_bytes()[:100])
    with pytest.raises(UserError, match=f"{files[5]}: class index out of range"):
        info_check(capsys, root, "--check")
    assert info_check(capsys, root, "--check", "--data", tmp_path / "data", "--sample", 2) == \
        f"ok: 2 of {n} files checked (spread evenly)"
    shutil.copy(files[6], files[5])  # another image's labels: valid
    with pytest.raises(UserError, match=f"{files[9]}: not a readable torch file, truncated or corrupt"):
        info_check(capsys, root, "--check", "--data", tmp_path / "data")
