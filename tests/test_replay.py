"""The core invariant: the student sees exactly the pixels the teacher labelled."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from rounding import FLOAT64, UNIT, between_orders, logits_tolerance

from softlabel import replay, streams
from softlabel.data import scan_image_folder
from softlabel.loader import StoreBatches
from softlabel.stores.batch import Reader
from softlabel.streams import Stream
from softlabel.teachers import load_teacher


def reference_inputs(store, epoch: int, batch: int, data_dir) -> torch.Tensor:
    """Rebuild a stored batch the way the upstream SRe2L/PRISM pipeline does, with plain
    torchvision calls and none of our replay code: ImageFolder order, resized_crop at the
    fractional box, hflip, ToTensor, Normalize, then the stored cutmix/mixup."""
    manifest = json.loads((store / "manifest.json").read_text())
    coords, flip, mix_index, lam, bbox, _, index = torch.load(
        store / f"epoch_{epoch}" / f"batch_{batch}.tar", weights_only=True)
    folder = torchvision.datasets.ImageFolder(str(data_dir))
    size = manifest["input_size"]
    to_input = T.Compose([T.ToTensor(), T.Normalize(manifest["mean"], manifest["std"])])
    images = []
    for k, c, f in zip(index.tolist(), coords, flip.tolist()):
        img = Image.open(folder.samples[k][0]).convert("RGB")
        width, height = img.size
        top, left, h, w = c.tolist()
        img = TF.resized_crop(img, top * height, left * width, h * height, w * width, [size, size],
                              interpolation=T.InterpolationMode.BILINEAR)
        images.append(to_input(TF.hflip(img) if f else img))
    x = torch.stack(images)
    if mix_index is not None:
        if bbox is not None:
            x1, y1, x2, y2 = bbox
            x[:, :, x1:x2, y1:y2] = x[mix_index, :, x1:x2, y1:y2]
        else:
            x = lam * x + (1 - lam) * x[mix_index]
    return x


def student_inputs(store, epoch: int, batch: int, data_dir) -> tuple[torch.Tensor, dict]:
    """The same batch through the trainer's own loader (StoreBatches) and replay."""
    manifest = json.loads((store / "manifest.json").read_text())
    batches = manifest["batches_per_epoch"]
    jobs = [(e, b) for e in range(manifest["epochs"]) for b in range(batches)]
    item = StoreBatches(Reader(str(store), manifest), scan_image_folder(str(data_dir), "--train-dir"), jobs)[
        epoch * batches + batch]
    x = replay.slice_inputs(item["pixels"], item["partners"], manifest["mean"], manifest["std"],
                            item["mix_lam"], item["mix_bbox"])
    return x, item


@pytest.mark.parametrize("store_name", ["cutmix_store", "mixup_store"])
def test_student_pixels_equal_reference_pixels(store_name, request, demo_data):
    store = request.getfixturevalue(store_name)
    manifest = json.loads((store / "manifest.json").read_text())
    checked = 0
    for epoch in range(manifest["epochs"]):
        for batch in range(manifest["batches_per_epoch"]):
            ours, item = student_inputs(store, epoch, batch, demo_data / "ipc2")
            ref = reference_inputs(store, epoch, batch, demo_data / "ipc2")
            assert ours.shape == ref.shape == (len(item["index"]), 3, manifest["input_size"], manifest["input_size"])
            assert torch.equal(ours, ref), f"epoch {epoch} batch {batch}: max diff {(ours - ref).abs().max()}"
            checked += 1
    assert checked == manifest["epochs"] * manifest["batches_per_epoch"]


@pytest.mark.parametrize("store_name", ["cutmix_store", "mixup_store"])
def test_teacher_on_student_pixels_gives_stored_logits(store_name, request, demo_data, teacher_ckpt):
    store = request.getfixturevalue(store_name)
    teacher = load_teacher(None, str(teacher_ckpt), None)
    for epoch, batch in [(0, 0), (1, 1)]:
        x, item = student_inputs(store, epoch, batch, demo_data / "ipc2")
        with torch.no_grad():
            logits = teacher.model(x).float()
        stored = item["soft_label"].float()
        # the relabel run's float32 logits, rounded once more to float16 when stored so: within the
        # forward's rounding bound, plus one float16 step where the two sides round apart
        tol = logits_tolerance(teacher.model, x) + 2 * UNIT[item["soft_label"].dtype] * logits.abs()
        assert bool(((stored - logits).abs() <= tol).all()), f"max diff {(stored - logits).abs().max()}"
        assert torch.equal(stored.argmax(1), logits.argmax(1))


def test_every_sample_appears_once_per_epoch(cutmix_store):
    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    for epoch in range(manifest["epochs"]):
        seen = []
        for batch in range(manifest["batches_per_epoch"]):
            seen += torch.load(cutmix_store / f"epoch_{epoch}" / f"batch_{batch}.tar", weights_only=True)[6].tolist()
        assert sorted(seen) == list(range(manifest["num_samples"]))


def test_cutmix_lambda_is_the_kept_fraction(cutmix_store):
    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    size = manifest["input_size"]
    for epoch in range(manifest["epochs"]):
        rec = torch.load(cutmix_store / f"epoch_{epoch}" / "batch_0.tar", weights_only=True)
        x1, y1, x2, y2 = rec[4]
        assert all(isinstance(v, int) for v in rec[4])
        assert 0 <= x1 <= x2 <= size and 0 <= y1 <= y2 <= size
        # a float64 ratio of integers, subtracted from 1
        assert abs(rec[3] - (1 - (x2 - x1) * (y2 - y1) / size ** 2)) <= between_orders(3, 1.0, FLOAT64)


def test_sampled_crops_follow_random_resized_crop():
    rng = streams.rng(7, Stream.BATCH_AUGMENT, 2, 3)
    scale, ratio = (0.3, 0.9), replay.DEFAULT_RATIO
    for _ in range(500):
        width, height = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        top, left, h, w = replay.sample_crop(rng, width, height, scale)
        px_h, px_w = round(h * height), round(w * width)
        # fractions of whole pixels (float64, a division each), at most 300 pixels
        pixel = between_orders(4, 300.0, FLOAT64)
        assert 0 <= top and 0 <= left and top + h <= 1 + pixel and left + w <= 1 + pixel
        # whole pixels, as torchvision draws them
        assert abs(h * height - px_h) <= pixel and abs(top * height - round(top * height)) <= pixel
        area = px_h * px_w / (width * height)
        aspect = px_w / px_h
        fallback = abs(px_h - height) <= 1 and abs(px_w - width) <= 1 or px_h == height or px_w == width
        if not fallback:
            # rounding to whole pixels widens the bounds slightly
            assert scale[0] * 0.8 <= area <= scale[1] * 1.2
            assert ratio[0] * 0.8 <= aspect <= ratio[1] * 1.25


def test_stored_box_replays_to_the_sampled_pixels():
    """float32 fractions must round back to the exact integer box they were drawn as."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        width, height = int(rng.integers(8, 4000)), int(rng.integers(8, 4000))
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        i, j = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        coords = torch.tensor([i / height, j / width, h / height, w / width], dtype=torch.float32)
        assert replay.crop_box(coords.tolist(), width, height) == (j, i, j + w, i + h)


def test_batch_sampling_depends_only_on_seed_epoch_batch():
    sizes = [(32, 32)] * 5
    a = replay.sample_crops_and_flips(replay.batch_rng(3, 4, 5), sizes, (0.5, 1.0))
    b = replay.sample_crops_and_flips(replay.batch_rng(3, 4, 5), sizes, (0.5, 1.0))
    c = replay.sample_crops_and_flips(replay.batch_rng(3, 4, 6), sizes, (0.5, 1.0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    order = replay.epoch_order(3, 0, 100)
    assert sorted(order.tolist()) == list(range(100))
    assert not np.array_equal(order, replay.epoch_order(3, 1, 100))


def test_mix_sampling_matches_upstream_conventions():
    rng = streams.rng(0, 9)
    index, lam, bbox = replay.sample_mix(rng, "mixup", 6, 32)
    assert bbox is None and 0 <= lam <= 1 and sorted(index.tolist()) == list(range(6))
    index, lam, bbox = replay.sample_mix(rng, "cutmix", 6, 32)
    assert len(bbox) == 4 and index.dtype == torch.int64
    assert replay.sample_mix(rng, "None", 6, 32) == (None, None, None)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    out = replay.apply_mix(x, torch.tensor([1, 0]), 0.75, [0, 1, 2, 3])
    assert torch.equal(out[0, :, 0:2, 1:3], x[1, :, 0:2, 1:3])
    assert torch.equal(out[0, :, 2:, :], x[0, :, 2:, :])
    mixed = float(replay.apply_mix(x, torch.tensor([1, 0]), 0.25, None)[0, 0, 0, 0])  # 2 products and a sum
    assert abs(mixed - (0.25 * 0 + 0.75 * float(x[1, 0, 0, 0]))) <= between_orders(3, float(x.abs().max()))


def test_relabel_side_and_student_side_render_the_same_batch(cutmix_store, demo_data):
    """Both loaders, item by item: what relabel rendered for the teacher is what the trainer
    renders for the student, and the stored parameters are the sampled ones."""
    from softlabel.loader import RelabelBatches
    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    index = scan_image_folder(str(demo_data / "ipc2"), "--data")
    jobs = [(e, b) for e in range(manifest["epochs"]) for b in range(manifest["batches_per_epoch"])]
    augment = replay.Augment(manifest["fkd_seed"], manifest["batch_size"], manifest["input_size"],
                             (manifest["min_scale_crops"], manifest["max_scale_crops"]), manifest["mix_type"],
                             cutmix=manifest["cutmix"])
    teacher_side = RelabelBatches(index, jobs, augment)
    student_side = StoreBatches(Reader(str(cutmix_store), manifest), index, jobs)
    for i, (epoch, batch) in enumerate(jobs):
        t, s = teacher_side[i], student_side[i]
        assert torch.equal(t["pixels"], s["pixels"]), (epoch, batch)
        assert torch.equal(t["index"], s["index"]) and torch.equal(t["target"], s["target"])
        assert torch.equal(t["mix_index"], s["mix_index"])
        assert t["mix_lam"] == s["mix_lam"] and t["mix_bbox"] == s["mix_bbox"]
