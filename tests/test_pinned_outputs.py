"""Pinned outputs: refactors must not change what the tools write, on any machine.

What is exact on every processor is pinned as a digest: the seeded sample order, crops, flips
and mix parameters of every stored step, the files a store holds, and what its manifest says of
its content. What is float arithmetic (the teacher's logits, the student's weights) differs
between processor families, so it is never pinned: the stored logits are checked against the
teacher run on the replayed pixels (``test_replay.py``, ``test_per_image_store.py``), and the
trained weights here against a plain PyTorch loop that does the same steps in the same test.
A digest that changes means the tools now sample, lay out or describe their output
differently: re-pin only for a change that means to do that.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from conftest import relabel, run_script

from softlabel import models, replay
from softlabel.data import scan_image_folder
from softlabel.loader import batch_loader
from softlabel.stores import StepPlan, open_store
from softlabel.stores import per_image as per_image_store

REPLAY_DIGESTS = {  # the top-k format stores crop boxes in fixed point (packed.COORD_SCALE)
    "full": "2dadb52589998de114f71c860e7a4e16a9f0f8b2e4152021399df7e7b0b6789f",
    "topk": "405d6f919c9efcdf9abe197725d968be1e9f10cf15a5430dc36f7f2851776e2d",
}
LAYOUT_DIGESTS = {
    "full": "0c9d46aae527b2ccaa42ebba93a72eb5bead7bde62a70948bb1c876000d9a9f6",
    "topk": "74767a318cae1c8c6bc3a34ef5bf490b6cd66bafdd3d25970283470bc0ecea74",
}
MANIFEST_DIGESTS = {
    "full": "b56fc12b23b83e966d7fb4b38abbfdedd6dac4bf0a80084da81fee88a4b9c937",
    "topk": "0e191f6db0b1a3a016016dda33376411b837666663923c873421dddc1125a7fc",
}
PER_IMAGE_DIGEST = "bee7d76d756e397a147289ebe58123352bafc7981f7ebe0bb4d6b4e55e472986"

FLAGS = ("--epochs", 2, "-b", 8, "--input-size", 24, "--min-scale-crops", 0.3, "--max-scale-crops", 1.0,
         "--mix-type", "cutmix", "--cutmix", 1.0, "--use-fp16", "--fkd-seed", 42, "--temperature", 1.0, "-j", 0)
# The manifest also holds paths, library versions, the argument list, the teacher's file digest
# and the images' fingerprint (their PNG bytes depend on the zlib that wrote them): compared on
# what describes the content.
MANIFEST_KEYS = ("format_version", "fkd_seed", "batch_size", "epochs", "batches_per_epoch", "num_samples",
                 "num_classes", "class_names", "class_to_index", "class_mapping", "input_size", "min_scale_crops",
                 "max_scale_crops", "mix_type", "mixup", "cutmix", "use_fp16", "label_dtype", "label_format",
                 "topk", "topk_fill", "temperature", "ensemble", "primary_weight", "mean", "std", "amp",
                 "skipped_images")
TEACHER_KEYS = ("arch", "source", "builder", "num_classes", "mean", "std")


def digest(parts: Iterable) -> str:
    """sha256 of names and integer/boolean tensors, numbers and lists, in order."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(f"{part.dtype}{tuple(part.shape)}".encode() + part.contiguous().numpy().tobytes())
        else:
            h.update(repr(part).encode())
    return h.hexdigest()


def replay_digest(store_path: Path, data: Path) -> str:
    """Every stored step's samples, crop boxes, flips and mix (partners, lambda, box)."""
    store = open_store(str(store_path), scan_image_folder(str(data), "--train-dir"))
    reader, s = store.reader(), store.settings
    parts: list = []
    for e in range(s.epochs):
        for b in range(s.batches_per_epoch):
            r = reader.read(e, b)
            parts += [f"{e}/{b}", r.index, r.coords, r.flip, r.mix_index, r.mix_lam, r.mix_bbox]
    return digest(parts)


def layout_digest(root: Path) -> str:
    return digest(str(p.relative_to(root)) for p in sorted(root.rglob("*")) if not p.name.startswith("."))


def manifest_digest(store: Path) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    content = {k: manifest.get(k) for k in MANIFEST_KEYS}
    content["teachers"] = [{k: t.get(k) for k in TEACHER_KEYS} for t in manifest["teachers"]]
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def plain_training(data: Path, store_path: Path, epochs: int, *, layout: str, model: str = "democnn_small",
                   temperature: float = 3.0, seed: int = 0, per_image: Optional[dict] = None) -> dict:
    """The trainer's defaults as a plain loop: the student built after ``torch.manual_seed(seed)``,
    AdamW (lr 0.001, weight decay 0.01 on weights, none on norms and biases), the learning rate
    times 1 - e/E stepped per epoch, the KL loss at ``temperature`` on the store's batches in
    order, inputs normalized as the store's teacher wants them."""
    index = scan_image_folder(str(data), "--train-dir")
    store = open_store(str(store_path), index, layout=layout)
    s = store.settings
    options = {}
    if per_image:
        per_epoch = replay.batches_per_epoch(len(index), per_image["images_per_step"])
        options = {"plan": StepPlan(seed, per_image["images_per_step"], per_image["crops_per_epoch"])}
    else:
        per_epoch = s.batches_per_epoch
    torch.manual_seed(seed)
    student = models.create_model(model, s.num_classes)
    weights = [p for p in student.parameters() if p.dim() > 1]
    others = [p for p in student.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW([{"params": weights, "weight_decay": 0.01}, {"params": others, "weight_decay": 0.0}],
                                  lr=0.001)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0 - e / epochs)
    dataset = store.dataset(index, replay.epoch_jobs(0, epochs, per_epoch), **options)
    student.train()
    for n, batch in enumerate(batch_loader(dataset, 0, False, background=False)):
        inputs = replay.slice_inputs(batch["pixels"], batch["partners"], s.mean, s.std, batch["mix_lam"],
                                     batch["mix_bbox"])
        optimizer.zero_grad(set_to_none=True)
        logits = student(inputs)
        soft = batch["soft_label"]
        loss = F.kl_div(F.log_softmax(logits / temperature, dim=1),
                        F.softmax(soft.to(logits.dtype) / temperature, dim=1), reduction="batchmean")
        loss.backward()
        optimizer.step()
        if (n + 1) % per_epoch == 0:
            schedule.step()
    return student.state_dict()


def assert_same_weights(checkpoint: Path, reference: dict) -> None:
    trained = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
    assert trained.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(trained[key], value), key


def test_relabel_writes_the_pinned_steps_and_the_trainer_trains_as_a_plain_loop(demo_data, teacher_ckpt, tmp_path):
    found = {}
    for fmt, extra in (("full", ()), ("topk", ("--label-format", "topk", "--topk", 3))):
        store = tmp_path / fmt
        relabel(demo_data / "ipc2", teacher_ckpt, store, *FLAGS, *extra)
        found[fmt] = (replay_digest(store, demo_data / "ipc2"), layout_digest(store), manifest_digest(store))
    assert {k: v[0] for k, v in found.items()} == REPLAY_DIGESTS
    assert {k: v[1] for k, v in found.items()} == LAYOUT_DIGESTS
    assert {k: v[2] for k, v in found.items()} == MANIFEST_DIGESTS

    run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--fkd-path", tmp_path / "full",
               "--model", "democnn_small", "--output-dir", tmp_path / "run", "--loss-type", "kl", "-T", 3,
               "-j", 0, "--eval-interval", 100, "--seed", 0, "--no-progress")
    reference = plain_training(demo_data / "ipc2", tmp_path / "full", 2, layout="batch")
    assert_same_weights(tmp_path / "run" / "checkpoint.pth", reference)


def per_image_crops_digest(root: Path, data: Path) -> str:
    """Every image's label file name and its stored crop boxes and flips."""
    index = scan_image_folder(str(data), "--train-dir")
    store = open_store(str(root), index, layout="per-image")
    parts: list = [layout_digest(root)]
    for i in range(len(index)):
        coords, flips, _, _ = per_image_store.read_file(per_image_store.label_path(str(root), index, i),
                                                        store.manifest)
        parts += [per_image_store.label_relpath(index, i), coords, flips]
    return digest(parts)


def test_per_image_generator_writes_the_pinned_crops_and_the_trainer_trains_as_a_plain_loop(
        demo_data, teacher_ckpt, tmp_path):
    out = tmp_path / "per_image"
    run_script("relabel/generate_soft_label_fkd.py", demo_data / "ipc1", "--teacher-path", teacher_ckpt,
               "--save_path", out, "--num_crops", 6, "--num_seg", 3, "--input_size", 24, "--min_scale_crops", 0.3,
               "--max_scale_crops", 1.0, "--fkd_seed", 42, "--label_type", "marginal_smoothing_k5", "--use_fp16",
               "-j", 0)
    found = per_image_crops_digest(out, demo_data / "ipc1")
    assert found == PER_IMAGE_DIGEST

    run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc1", "--fkd-path", out,
               "--fkd-layout", "per-image", "--model", "democnn_small", "--output-dir", tmp_path / "run",
               "--epochs", 2, "--num-crops", 2, "-b", 4, "-j", 0, "--eval-interval", 100, "--seed", 0,
               "--no-progress", "--loss-type", "kl", "-T", 3)
    reference = plain_training(demo_data / "ipc1", out, 2, layout="per-image",
                               per_image={"images_per_step": 4, "crops_per_epoch": 2})
    assert_same_weights(tmp_path / "run" / "checkpoint.pth", reference)
