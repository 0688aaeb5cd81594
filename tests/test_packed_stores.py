"""Packed top-k stores (format 2: one file per epoch of fixed-width records) and label pruning:
the documented layout read with numpy alone, the size goal at the batch sizes people use,
identical files and training for any worker or rank count, resume, conversion, tampering."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STORE_ARGS, assert_user_error, relabel, run_script, train_in_process, tree_bytes
from rounding import UNIT, assert_same_weights, between_orders, within

from softlabel import replay
from softlabel.errors import UserError
from softlabel.stores import batch as store
from softlabel.stores import topk
from softlabel.stores import create_store, open_store, packed

TRAIN = "validate/train_FKD_parallel.py"
TOPK = ("--label-format", "topk", "--topk", 3)


@pytest.fixture(scope="module")
def stores(demo_data, teacher_ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packed")
    out = {"packed": root / "packed", "pruned": root / "pruned"}
    relabel(demo_data / "ipc2", teacher_ckpt, out["packed"], *STORE_ARGS, *TOPK)
    relabel(demo_data / "ipc2", teacher_ckpt, out["pruned"], *STORE_ARGS, *TOPK, "--label-keep", 0.5)
    return out


def numpy_only(path: Path, k: int) -> tuple[np.ndarray, np.ndarray]:
    """An epoch file read as docs/stores.md describes it, without our reader (C = 10: uint8 classes)."""
    raw = path.read_bytes()
    assert raw[:8] == b"SLPACK03"
    steps, samples, epoch = np.frombuffer(raw[8:20], "<u4")
    assert path.name == f"epoch_{epoch}.pack"
    step = np.dtype([("step", "<u4"), ("start", "<u4"), ("count", "<u4"), ("lam", "<f8"), ("bbox", "<i2", (4,))])
    sample = np.dtype([("coords", "<u2", (4,)), ("flip", "u1"), ("mix", "<u2"), ("index", "<u4"),
                       ("values", "<f2", (k,)), ("classes", "u1", (k,)), ("fill", "<f2")])
    table = np.frombuffer(raw, step, steps, 20)
    rows = np.frombuffer(raw, sample, samples, 20 + steps * step.itemsize)
    assert len(raw) == 20 + steps * step.itemsize + samples * sample.itemsize
    return table, rows


def test_packed_store_is_one_plain_file_per_epoch_read_with_numpy_alone(stores, cutmix_store):
    root = stores["packed"]
    assert sorted(p.name for p in root.iterdir()) == [".lock", "args.yaml", "epoch_0.pack", "epoch_1.pack",
                                                     "epoch_2.pack", "manifest.json"]
    for p in root.iterdir():  # nothing a reader unpickles: no zip (torch.save) and no pickle stream
        assert not p.read_bytes()[:2] in (b"PK", b"\x80\x02", b"\x80\x04"), p
    manifest = store.read_manifest(str(root))
    full = store.Reader(str(cutmix_store), store.read_manifest(str(cutmix_store)))
    reader = store.Reader(str(root), manifest)
    for e in range(3):
        table, rows = numpy_only(root / f"epoch_{e}.pack", 3)
        assert table["step"].tolist() == [0, 1, 2] and table["count"].tolist() == [8, 8, 4]
        for b, (start, count) in enumerate(zip(table["start"], table["count"])):
            mine, ours, teacher = rows[start:start + count], reader.read(e, b), full.read(e, b)
            assert torch.equal(ours.index, torch.from_numpy(mine["index"].astype(np.int64)))
            assert torch.equal(ours.index, teacher.index) and torch.equal(ours.mix_index, teacher.mix_index)
            assert ours.mix_bbox == table["bbox"][b].tolist() == teacher.mix_bbox
            assert ours.mix_lam == float(table["lam"][b]) == teacher.mix_lam
            values, classes = teacher.soft_label.float().topk(3, dim=1)
            assert np.array_equal(mine["classes"], classes.numpy())
            assert torch.equal(ours.soft_label.gather(1, classes), values.half().float())
            assert (ours.coords - teacher.coords).abs().max() <= 0.5 / store.COORD_SCALE + 1e-7


def synthetic_manifest(batch: int, num_samples: int, epochs: int, classes: int = 1000) -> dict:
    names = [f"n{c:08d}" for c in range(classes)]  # ImageNet's wnid length
    return {"format_version": 2, "container": "epoch", "label_keep": 1.0, "fkd_seed": 42, "batch_size": batch,
            "epochs": epochs, "batches_per_epoch": math.ceil(num_samples / batch), "num_samples": num_samples,
            "num_classes": classes, "class_names": names, "class_to_index": {n: i for i, n in enumerate(names)},
            "input_size": 224, "min_scale_crops": 0.08, "max_scale_crops": 1.0, "mix_type": "cutmix",
            "mixup": None, "cutmix": 1.0, "use_fp16": True, "label_format": "topk", "topk": 5,
            "topk_fill": "residual", "temperature": 1.0, "teachers": [], "ensemble": None, "primary_weight": None,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "dataset_fingerprint": "x" * 64}


def synthetic_record(batch: int, classes: int, num_samples: int, g: torch.Generator) -> store.BatchRecord:
    boxes = torch.rand(batch, 4, generator=g) * 0.49 + torch.tensor([0.0, 0.0, 0.01, 0.01])
    # the weight the writer stores for this box: 1 - its share of the 224 px crop
    return store.BatchRecord(boxes, torch.rand(batch, generator=g) > 0.5, torch.randperm(batch, generator=g),
                             1 - (30 - 1) * (40 - 2) / 224 ** 2, [1, 2, 30, 40], torch.randn(batch, classes, generator=g).half(),
                             torch.randperm(num_samples, generator=g)[:batch])


@pytest.mark.parametrize("batch", [50, 100, 1024])
def test_compact_store_is_under_40_bytes_per_sample_at_every_batch_size(batch, tmp_path):
    """C = 1000, K = 5, cutmix, 2 epochs of 10,240 images: every file counted (the manifest too)."""
    n, epochs = 10_240, 2
    manifest = synthetic_manifest(batch, n, epochs)
    writer = create_store(str(tmp_path / "s"), manifest, flag="--fkd-path")
    g = torch.Generator().manual_seed(batch)
    first = None
    for e, b in replay.epoch_jobs(0, epochs, manifest["batches_per_epoch"]):
        rec = synthetic_record(replay.batch_len(n, batch, b), 1000, n, g)
        first = first or rec
        writer.write(e, b, rec)
    writer.finish()
    files = [p for p in (tmp_path / "s").iterdir()]
    assert len(files) == epochs + 2  # manifest, lock, one file per epoch: not one per step
    per_sample = sum(p.stat().st_size for p in files) / (n * epochs)
    (tmp_path / "full" / "epoch_0").mkdir(parents=True)
    store.write_batch(str(tmp_path / "full"), 0, 0, first)
    full = (tmp_path / "full" / "epoch_0" / "batch_0.tar").stat().st_size / len(first)
    assert per_sample <= 40 and full / per_sample >= 50, (per_sample, full)
    back = store.Reader(str(tmp_path / "s"), store.read_manifest(str(tmp_path / "s"))).read(0, 0)
    assert torch.equal(back.index, first.index) and torch.equal(back.mix_index, first.mix_index)


def test_label_keep_chooses_a_seeded_share_of_every_epoch():
    for keep, per_epoch, epochs in ((0.5, 3, 3), (0.1, 200, 30), (0.025, 1, 1000), (0.3, 7, 11)):
        kept = replay.kept_steps(42, epochs, per_epoch, keep)
        assert len(kept) == math.floor(epochs * per_epoch * keep + 0.5)
        for e in range(epochs):  # each epoch its share, to within one step
            assert abs(sum(1 for k in kept if k[0] == e) - keep * per_epoch) < 1
        assert kept == replay.kept_steps(42, epochs + 5, per_epoch, keep)[:len(kept)]  # extending keeps them
        assert len(set(kept)) == len(kept) and kept == sorted(kept)
    assert replay.kept_steps(42, 10, 20, 0.5) != replay.kept_steps(7, 10, 20, 0.5)
    assert replay.kept_steps(42, 4, 3, 1.0) == replay.epoch_jobs(0, 4, 3)


def test_pruned_store_holds_the_full_stores_steps_the_same_for_any_workers_and_ranks(stores, demo_data, teacher_ckpt,
                                                                                       tmp_path):
    pruned = stores["pruned"]
    m = store.read_manifest(str(pruned))
    assert m["label_keep"] == 0.5
    opened = open_store(str(pruned))
    kept = opened.jobs(3)
    assert len(kept) == 5 and opened.settings.label_keep == 0.5  # 0.5 x 9 steps, rounded half up
    a, b = store.Reader(str(pruned), m), store.Reader(str(stores["packed"]), store.read_manifest(str(stores["packed"])))
    for e, s in kept:  # the very steps the unpruned store holds
        x, y = a.read(e, s), b.read(e, s)
        assert torch.equal(x.soft_label, y.soft_label) and torch.equal(x.coords, y.coords)
    with pytest.raises(UserError, match="has no labels"):
        a.read(*next((e, s) for e in range(3) for s in range(3) if (e, s) not in kept))
    # the student trains every step: the kept ones cycled in order
    assert opened.replayed(replay.epoch_jobs(0, 3, 3)) == [kept[i % 5] for i in range(9)]
    args = list(STORE_ARGS)
    args[args.index("-j") + 1] = 2
    relabel(demo_data / "ipc2", teacher_ckpt, tmp_path / "j2", *args, *TOPK, "--label-keep", 0.5)
    proc = run_script("relabel/generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt,
                      "--fkd-path", tmp_path / "ranks", *STORE_ARGS, *TOPK, "--label-keep", 0.5, nproc=2)
    assert "wrote 5 batch files" in proc.stdout  # both ranks' shares
    for other in (tmp_path / "j2", tmp_path / "ranks"):
        assert tree_bytes(other) == tree_bytes(pruned) | {"manifest.json": (other / "manifest.json").read_bytes()}


def test_an_interrupted_packed_relabel_resumes_step_by_step(stores, demo_data, teacher_ckpt, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(stores["packed"], root)
    m = store.read_manifest(str(root))
    whole = store.Reader(str(stores["packed"]), m)
    (root / "epoch_1.pack").unlink()  # killed in epoch 1: two of its steps written as parts, one not
    (root / "epoch_1.parts").mkdir()
    for b in (0, 2):
        packed.write_part(str(root), 1, b, whole.read(1, b), m)
    (root / "epoch_1.parts" / ".tmp-999999999-x").write_bytes(b"partial")
    proc = relabel(demo_data / "ipc2", teacher_ckpt, root, *STORE_ARGS, *TOPK)
    assert "1 batch files to write, 8 already done" in proc.stdout
    assert tree_bytes(root) == tree_bytes(stores["packed"]) | {"manifest.json": (root / "manifest.json").read_bytes()}


def test_packed_pruned_and_converted_stores_train_the_same_for_any_workers_and_ranks(stores, cutmix_store, demo_data,
                                                                                      tmp_path):
    converted = tmp_path / "converted"
    run_script("scripts/convert_labels.py", cutmix_store, converted, "--topk", 3, "--no-progress")
    assert tree_bytes(converted)["epoch_0.pack"] == tree_bytes(stores["packed"])["epoch_0.pack"]
    base = ["--train-dir", demo_data / "ipc2", "--model", "mlpnet", "--loss-type", "kl", "-T", 4, "--sgd",
            "-lr", 0.2, "--cos", "--eval-interval", 100, "--no-progress"]
    for name, path in (("pruned", stores["pruned"]), ("converted", converted)):
        runs = {j: tmp_path / f"{name}_j{j}" for j in (0, 2)}
        for j, out in runs.items():
            train_in_process(*base, "--fkd-path", path, "-j", j, "--output-dir", out)
        a, b = (torch.load(out / "checkpoint.pth", weights_only=True)["model"] for out in runs.values())
        assert all(torch.equal(a[k], b[k]) for k in a), name
    run_script(TRAIN, *base, "--fkd-path", stores["pruned"], "--output-dir", tmp_path / "ranks", nproc=2)
    a, b = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True)["model"] for r in ("pruned_j0", "ranks"))
    # the sums are taken in another order across ranks: mlpnet's fan-in 3 x 64 pooled pixels
    # (each a mean of 9), batches of 8, 9 steps
    assert_same_weights(a, b, 3 * 64 + 9 + 8 + 2 * 9 + 32)


def tamper(root: Path, what: str) -> None:
    path = root / "epoch_1.pack"
    raw = bytearray(path.read_bytes())
    step_size, head = 28, 20
    if what == "truncated":
        del raw[-5:]
    elif what == "magic":
        raw[:8] = b"SLPACK99"
    elif what == "steps":
        raw[head:head + 4] = np.uint32(5).tobytes()
    elif what == "count":
        raw[head + 8:head + 12] = np.uint32(7).tobytes()
    elif what == "class":
        first = head + 3 * step_size
        raw[first + 8 + 1 + 2 + 4 + 6] = 200  # the first sample's top class: 200 of 10
    elif what == "coords":
        first = head + 3 * step_size
        raw[first:first + 8] = np.array([60000, 60000, 60000, 60000], "<u2").tobytes()
    elif what == "lam":
        raw[head + 12:head + 20] = np.float64(np.nan).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("what,needle", [
    ("truncated", "bytes, its header says"), ("magic", "not a packed epoch file"), ("steps", "holds steps"),
    ("count", "step table"), ("class", "class index out of range"), ("coords", "crop"), ("lam", "mix type none"),
])
def test_a_tampered_epoch_file_is_one_line_naming_it(stores, tmp_path, what, needle):
    root = tmp_path / "s"
    shutil.copytree(stores["packed"], root)
    tamper(root, what)
    with pytest.raises(UserError, match=needle) as err:
        reader = store.Reader(str(root), store.read_manifest(str(root)))
        for b in range(3):
            reader.read(1, b)
    assert "epoch_1.pack" in str(err.value) and "\n" not in str(err.value)


def test_the_trainer_names_a_tampered_epoch_file(stores, demo_data, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(stores["packed"], root)
    tamper(root, "truncated")
    proc = run_script(TRAIN, "--train-dir", demo_data / "ipc2", "--fkd-path", root, "--model", "mlpnet", "-j", 0,
                      "--no-progress", "--output-dir", tmp_path / "run", check=False)
    assert_user_error(proc, "epoch_1.pack", "truncated")


def test_a_packed_manifest_must_say_so(stores, tmp_path):
    root = tmp_path / "s"
    shutil.copytree(stores["packed"], root)
    m = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**m, "format_version": 1}))
    with pytest.raises(UserError, match="epoch files are format 2"):
        store.read_manifest(str(root))


@pytest.mark.parametrize("t", [1.0, 3.0, 20.0])
def test_the_residual_fill_keeps_the_left_out_mass_at_its_temperature(t, stores):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g) * 3  # peaked: where a T = 1 fill is furthest off at T = 3
    values, classes = logits.topk(5, dim=1)
    back, stored = topk.topk_logits(values, classes, topk.residual_fill(logits, classes, t), 1000)
    left_out = lambda z: (z / t).softmax(1).masked_fill(stored, 0).sum(1)  # noqa: E731
    # masses (<= 1) of 995 classes, each side a softmax over 1000 (and the fill a log-sum of 995)
    assert within(left_out(back), left_out(logits), 3 * 1000 + 8, 1.0)
    # and through a packed store made with --topk-fill-temperature t (float16 on disk)
    m = {**store.read_manifest(str(stores["packed"])), "num_classes": 1000, "topk": 5, "topk_fill_temperature": t,
         "mix_type": "none"}
    rec = store.BatchRecord(torch.full((64, 4), 0.5), torch.zeros(64, dtype=torch.bool), None, None, None, logits,
                            torch.arange(64))
    raw = packed.encode_step(rec, 0, m)
    row = np.frombuffer(raw[:packed.STEP.itemsize], packed.STEP)[0]
    samples = np.frombuffer(raw[packed.STEP.itemsize:], packed.sample_dtype(m))
    (*_, got, _), _ = packed.decode(row, samples, 1000)
    # float16 on disk: each logit (and the fill) moves by one float16 rounding, u |z|, and a
    # probability mass by at most twice the largest move over T
    move = 2 * UNIT[torch.float16] * float(logits.abs().max()) / t
    diff = float((left_out(got) - left_out(logits)).abs().max())
    assert diff <= move + between_orders(3 * 1000 + 8, 1.0)
