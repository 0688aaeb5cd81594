"""Label stores: top-k compact stores, upstream (SRe2L / G-VBSM / PRISM) stores read safely,
files that would run code refused, and conversion between formats."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STORE_ARGS, assert_user_error, relabel, run_script, tree_bytes
from rounding import UNIT, between_orders

from softlabel.data import scan_image_folder
from softlabel.stores import Request, legacy_order, open_store
from softlabel.stores import batch as store
from softlabel.loader import StoreBatches
from softlabel.stores.batch import Reader

TRAIN = "validate/train_FKD_parallel.py"


def read_all(root: Path, manifest: dict, reader=None) -> list[store.BatchRecord]:
    reader = reader or store.Reader(str(root), manifest)  # an upstream store: its Store's reader()
    return [reader.read(e, b) for e in range(manifest["epochs"]) for b in range(manifest["batches_per_epoch"])]


def label_bytes(root: Path) -> int:
    """Bytes of the label files (at 10 classes and 8 images a file is mostly zip headers)."""
    return sum(p.stat().st_size for p in root.rglob("batch_*.tar"))


@pytest.fixture(scope="module")
def topk_store(demo_data, teacher_ckpt, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stores") / "topk3"
    relabel(demo_data / "ipc2", teacher_ckpt, root, *STORE_ARGS, "--label-format", "topk", "--topk", 3)
    return root


def test_topk_store_keeps_the_top_logits_and_the_exact_replay(cutmix_store, topk_store, demo_data):
    full, compact = store.read_manifest(str(cutmix_store)), store.read_manifest(str(topk_store))
    assert compact["label_format"] == "topk" and compact["topk"] == 3 and compact["topk_fill"] == "residual"
    assert compact["container"] == "epoch" and compact["format_version"] == 2  # packed: tests/test_packed_stores.py
    for a, b in zip(read_all(cutmix_store, full), read_all(topk_store, compact)):
        assert torch.equal(a.index, b.index) and torch.equal(a.flip, b.flip)
        assert torch.equal(a.mix_index, b.mix_index) and a.mix_bbox == b.mix_bbox and a.mix_lam == b.mix_lam
        # crops: uint16 fixed point, off by at most half a step; the rendered pixels agree
        assert (a.coords - b.coords).abs().max() <= 0.5 / store.COORD_SCALE + 1e-7
        values, classes = a.soft_label.float().topk(3, dim=1)
        assert torch.equal(b.soft_label.gather(1, classes), values.half().float())
        assert torch.equal(b.stored, torch.zeros_like(b.stored).scatter_(1, classes, True))
        # the 7 classes left out share one logit and keep, together, the teacher's probability
        rest = b.soft_label.masked_fill(b.stored, float("nan"))
        assert torch.equal(rest.nanquantile(0.0, dim=1), rest.nanquantile(1.0, dim=1))
        dropped_mass = lambda logits: logits.float().softmax(1).masked_fill(b.stored, 0).sum(1)  # noqa: E731
        # both stores hold float16 logits (one float16 step each, 2 u |z|): a probability mass
        # moves by at most twice the largest logit move, plus a float32 softmax of 10 classes
        move = 2 * 2 * UNIT[torch.float16] * float(a.soft_label.float().abs().max())
        diff = (dropped_mass(b.soft_label) - dropped_mass(a.soft_label)).abs().max()
        assert float(diff) <= 2 * move + between_orders(2 * 10 + 4, 1.0)
    index = scan_image_folder(str(demo_data / "ipc2"), "--data")
    for epoch, batch in ((0, 0), (2, 2)):  # the student sees the very same pixels from both
        a = StoreBatches(Reader(str(cutmix_store), full), index, [(epoch, batch)])[0]
        b = StoreBatches(Reader(str(topk_store), compact), index, [(epoch, batch)])[0]
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["partners"], b["partners"])


def write_v1_topk(full: Path, dest: Path, k: int, fill: bool) -> None:
    """A top-k store as format 1 wrote them, one torch file per step ([values, classes] before the
    fill existed, [values, classes, fill] after), from a full store."""
    manifest = store.read_manifest(str(full))
    reader = store.Reader(str(full), manifest)
    for e in range(manifest["epochs"]):
        (dest / f"epoch_{e}").mkdir(parents=True)
        for b in range(manifest["batches_per_epoch"]):
            store.write_batch(str(dest), e, b, reader.read(e, b), "topk", k, manifest["num_samples"], fill)
    old = {key: v for key, v in manifest.items() if key not in ("container", "label_keep")}
    old.update(label_format="topk", topk=k, label_dtype="float16")
    if fill:
        old["topk_fill"] = "residual"
    else:
        del old["topk_fill"]  # as a manifest from before the fill existed
    (dest / "manifest.json").write_text(json.dumps(old))


def test_topk_without_fill_and_stores_from_before_it_read_as_minus_inf(demo_data, teacher_ckpt, cutmix_store,
                                                                       topk_store, tmp_path):
    """--topk-fill none stores no fill: the left-out classes read as -inf, as in format-1 stores
    from before the fill existed (still read). A store cannot be extended with the other encoding."""
    bare, old = tmp_path / "bare", tmp_path / "v1"
    relabel(demo_data / "ipc2", teacher_ckpt, bare, *STORE_ARGS, "--label-format", "topk", "--topk", 3,
            "--topk-fill", "none")
    write_v1_topk(cutmix_store, old, 3, fill=False)
    manifest, old_manifest = store.read_manifest(str(bare)), store.read_manifest(str(old))
    assert manifest["topk_fill"] is None and old_manifest["topk_fill"] is None
    assert old_manifest["container"] == "batch" and old_manifest["format_version"] == 1
    assert len(torch.load(store.batch_path(str(old), 0, 0), weights_only=True)[5]) == 2
    for a, b, c in zip(read_all(topk_store, store.read_manifest(str(topk_store))), read_all(bare, manifest),
                       read_all(old, old_manifest)):
        assert torch.equal(a.soft_label[a.stored], b.soft_label[b.stored])
        assert bool(torch.isneginf(b.soft_label[~b.stored]).all())
        assert torch.equal(b.soft_label, c.soft_label) and torch.equal(b.coords, c.coords)
    clash = relabel(demo_data / "ipc2", teacher_ckpt, bare, *STORE_ARGS, "--label-format", "topk", "--topk", 3,
                    check=False)
    assert_user_error(clash, "topk_fill")


# ----------------------------------------------------------------------------- upstream stores

def write_upstream(ours: Path, dest: Path, kind: str, numpy_box: bool = True) -> None:
    """Rewrite our store the way the upstream relabel scripts save theirs: no manifest,
    the cutmix box as numpy scalars (np.clip results), fp16 labels; SRe2L/G-VBSM have no
    index (their order comes from the seeded RandomSampler), PRISM appends it."""
    manifest = store.read_manifest(str(ours))
    order = legacy_order.LegacyOrder(manifest["fkd_seed"], manifest["num_samples"])
    b_size = manifest["batch_size"]
    for rec_epoch in range(manifest["epochs"]):
        os.makedirs(dest / f"epoch_{rec_epoch}")
        for b in range(manifest["batches_per_epoch"]):
            rec = store.Reader(str(ours), manifest).read(rec_epoch, b)
            box = [np.int64(v) for v in rec.mix_bbox] if numpy_box else rec.mix_bbox
            entry = [rec.coords, rec.flip, rec.mix_index, np.float64(rec.mix_lam), box, rec.soft_label.half()]
            if kind == "prism":
                entry.append(rec.index)
            else:  # the sample order is the sampler's; (labels then belong to other images: fine here)
                assert len(order.epoch(rec_epoch)[b * b_size:(b + 1) * b_size]) == len(rec)
            torch.save(entry, dest / f"epoch_{rec_epoch}" / f"batch_{b}.tar")


@pytest.mark.parametrize("kind", ["sre2l", "prism"])
def test_upstream_stores_are_read_safely_and_trained(kind, cutmix_store, demo_data, tmp_path):
    legacy = tmp_path / kind
    write_upstream(cutmix_store, legacy, kind)
    with pytest.raises(pickle.UnpicklingError):  # why upstream trainers fail on torch >= 2.6
        torch.load(legacy / "epoch_0" / "batch_0.tar", weights_only=True)
    index = scan_image_folder(str(demo_data / "ipc2"), "--train-dir")
    opened = open_store(str(legacy), index, request=Request(input_size=24))
    manifest = dict(opened.manifest)
    assert manifest["legacy_kind"] == kind and manifest["epochs"] == 3 and manifest["batches_per_epoch"] == 3
    ours = read_all(cutmix_store, store.read_manifest(str(cutmix_store)))
    order = legacy_order.LegacyOrder(42, 20)
    for n, rec in enumerate(read_all(legacy, manifest, opened.reader())):
        e, b = divmod(n, 3)
        want = ours[n].index if kind == "prism" else order.epoch(e)[b * 8:(b + 1) * 8]
        assert torch.equal(rec.index, want)
        assert rec.mix_bbox == ours[n].mix_bbox and torch.equal(rec.coords, ours[n].coords)

    base = ["--train-dir", demo_data / "ipc2", "--fkd-path", legacy, "--model", "mlpnet", "-j", 0,
            "--no-progress"]
    needs_size = run_script(TRAIN, *base, "--output-dir", tmp_path / "a", check=False)
    assert_user_error(needs_size, "--input-size")
    run = run_script(TRAIN, *base, "--input-size", 24, "--fkd_seed", 42, "--output-dir", tmp_path / "run")
    assert "epochs 0..3, batch 8, input 24px" in run.stdout
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 9
    wrong_data = run_script(TRAIN, *base[:1], demo_data / "train", *base[2:], "--input-size", 24,
                            "--output-dir", tmp_path / "b", check=False)
    assert_user_error(wrong_data, "--fkd-path", "batches")


class RunsCode:
    """Unpickling this runs a shell command: what a malicious label file or checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_files_that_would_run_code_are_refused_unexecuted(cutmix_store, demo_data, tmp_path):
    marker = tmp_path / "pwned"
    poisoned = tmp_path / "store"
    shutil.copytree(cutmix_store, poisoned)
    batch = store.batch_path(str(poisoned), 1, 2)
    entry = torch.load(batch, weights_only=True)
    entry[4] = RunsCode(marker)
    torch.save(entry, batch)
    base = ["--train-dir", demo_data / "ipc2", "--model", "mlpnet", "-j", 0, "--no-progress"]
    proc = run_script(TRAIN, *base, "--fkd-path", poisoned, "--output-dir", tmp_path / "a", check=False)
    assert_user_error(proc, str(batch), "refused to load", "nothing from it was executed")

    legacy = tmp_path / "legacy"  # numpy admitted for upstream stores, still nothing that runs code
    write_upstream(cutmix_store, legacy, "prism")
    entry = torch.load(legacy / "epoch_0" / "batch_1.tar", weights_only=False)
    torch.save(entry[:4] + [RunsCode(marker)] + entry[5:], legacy / "epoch_0" / "batch_1.tar")
    proc = run_script(TRAIN, *base, "--fkd-path", legacy, "--input-size", 24, "--output-dir", tmp_path / "b",
                      check=False)
    assert_user_error(proc, "batch_1.tar", "refused to load")

    ckpt = tmp_path / "c" / "checkpoint.pth"
    ckpt.parent.mkdir()
    torch.save({"model": {}, "optimizer": RunsCode(marker), "epoch": 1}, ckpt)
    proc = run_script(TRAIN, *base, "--fkd-path", cutmix_store, "--resume", ckpt, "--output-dir", tmp_path / "c",
                      check=False)
    assert_user_error(proc, "--resume", "refused to load")
    teacher = run_script("relabel/generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path", ckpt,
                         "-a", "democnn_small", "--fkd-path", tmp_path / "d", "--epochs", 1, check=False)
    assert_user_error(teacher, str(ckpt), "refused to load")
    assert not marker.exists()


# ----------------------------------------------------------------------------- conversion

def test_convert_upstream_store_to_topk_resumable(cutmix_store, demo_data, tmp_path):
    legacy = tmp_path / "legacy"
    write_upstream(cutmix_store, legacy, "prism")
    dst = tmp_path / "topk"
    args = [legacy, dst, "--label-format", "topk", "--topk", 2, "--no-progress"]
    assert_user_error(run_script("scripts/convert_labels.py", *args, check=False), "--data")
    args += ["--data", demo_data / "ipc2", "--input-size", 24]
    run_script("scripts/convert_labels.py", *args)
    reference = tree_bytes(dst)
    manifest = store.read_manifest(str(dst))
    assert manifest["label_format"] == "topk" and manifest["converted_from"]["kind"] == "prism"
    assert sorted(p.name for p in dst.iterdir()) == [".lock"] + [f"epoch_{e}.pack" for e in range(3)] + [
        "manifest.json"]
    # interrupted: a finished epoch file lost, a dead writer's temp file left behind
    os.unlink(dst / "epoch_2.pack")
    (dst / ".tmp-999999-x").write_bytes(b"partial")
    proc = run_script("scripts/convert_labels.py", *args)
    assert "wrote 3 of 9" in proc.stdout
    assert tree_bytes(dst) == {k: v for k, v in reference.items()}
    # the converted store trains, with the fingerprint check of our own stores
    run_script(TRAIN, "--train-dir", demo_data / "ipc2", "--fkd-path", dst, "--model", "mlpnet", "-j", 0,
               "--epochs", 1, "--no-progress", "--output-dir", tmp_path / "run")
    again = run_script("scripts/convert_labels.py", dst, tmp_path / "full", "--label-format", "full", check=False)
    assert_user_error(again, "--label-format full", "cannot be restored")


def test_legacy_order_is_the_upstream_sampler_order_across_epochs():
    """SRe2L/G-VBSM: one seeded generator drives a RandomSampler; each epoch's DataLoader pass
    advances it (by more than the one permutation it yields)."""
    generator = torch.Generator().manual_seed(42)
    loader = torch.utils.data.DataLoader(list(range(23)), batch_size=5,
                                         sampler=torch.utils.data.RandomSampler(range(23), generator=generator))
    expected = [torch.cat(list(loader)) for _ in range(4)]
    order = legacy_order.LegacyOrder(42, 23)
    for e in (2, 0, 3, 1):  # in any order of access
        assert torch.equal(order.epoch(e), expected[e])
