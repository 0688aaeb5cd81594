"""Pinned outputs: refactors must not change what the tools write.

The digests were taken with the code before the store-interface redesign (issue 13). A store
written by relabel with explicit flags must stay byte-for-byte the same, and a student trained
from it must end with the same weights. Both depend on float arithmetic on this CPU (the
teacher's forward, the student's steps): after a torch upgrade or on another processor family,
re-pin only after checking with the previous code that the old code gives the new digest too.

Top-k stores are packed one file per epoch since issue 16 (format 2): their pin is still the
format-1 digest, taken over their records re-encoded as format 1 wrote them (so the packed store
holds exactly what the old one held), plus a digest of the packed files themselves. The top-k
manifest digest was re-pinned then: its format_version is 2.
"""
from __future__ import annotations

import hashlib
import json

import torch
from conftest import relabel, run_script

from softlabel import files
from softlabel.stores import batch

STORE_DIGESTS = {
    "full": "a101501d48c44314e398a8845363b965ee21f3b99c8dd47789fe7255b807842b",
    "topk": "4e65d1b114ee162633c0e7a729a4d3263d10e10271024be5ecbc5236a914da65",
}
MANIFEST_DIGESTS = {
    "full": "3443635cc1d686110be4693e9d9e13121584467f0d29cc1d73229f79987f3c91",
    "topk": "6b56cf5cce81159d5b59850fabdd98b8d430138a08cd7fca8817849bff803614",
}
PACKED_DIGEST = "e1107d0ecf5c5bf647d179a58d732cdf2041461048b9dead8a39bc742d0b8a51"
WEIGHTS_DIGEST = "171429b3bac9e6df08894e1f63f738b9ef1602f6ac8999ade5006bcd10abd534"

FLAGS = ("--epochs", 2, "-b", 8, "--input-size", 24, "--min-scale-crops", 0.3, "--max-scale-crops", 1.0,
         "--mix-type", "cutmix", "--cutmix", 1.0, "--use-fp16", "--fkd-seed", 42, "--temperature", 1.0, "-j", 0)
# The manifest holds paths, library versions and the full argument list: compared on what
# describes the content.
MANIFEST_KEYS = ("format_version", "fkd_seed", "batch_size", "epochs", "batches_per_epoch", "num_samples",
                 "num_classes", "class_names", "class_to_index", "class_mapping", "input_size", "min_scale_crops",
                 "max_scale_crops", "mix_type", "mixup", "cutmix", "use_fp16", "label_dtype", "label_format",
                 "topk", "topk_fill", "temperature", "teachers", "ensemble", "primary_weight", "mean", "std",
                 "amp", "dataset_fingerprint", "skipped_images")


def batch_files_digest(store) -> str:
    h = hashlib.sha256()
    for path in sorted(store.rglob("batch_*.tar")):
        h.update(str(path.relative_to(store)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def v1_topk_digest(store) -> str:
    """A packed top-k store's records as format 1 wrote them, one file per step, digested as
    ``batch_files_digest`` digests those files."""
    m = batch.read_manifest(str(store))
    reader = batch.Reader(str(store), m)
    h = hashlib.sha256()
    for e in range(m["epochs"]):
        for b in range(m["batches_per_epoch"]):
            h.update(f"epoch_{e}/batch_{b}.tar".encode())
            h.update(files.torch_bytes(batch.encode(reader.read(e, b), "topk", m["topk"], m["num_samples"], True)))
    return h.hexdigest()


def packed_digest(store) -> str:
    h = hashlib.sha256()
    for path in sorted(store.glob("epoch_*.pack")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def manifest_digest(store) -> str:
    manifest = json.loads((store / "manifest.json").read_text())
    return hashlib.sha256(json.dumps({k: manifest.get(k) for k in MANIFEST_KEYS},
                                     sort_keys=True).encode()).hexdigest()


def weights_digest(path) -> str:
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def test_relabel_writes_the_pinned_store_and_the_trainer_the_pinned_weights(demo_data, teacher_ckpt, tmp_path):
    found = {}
    for fmt, extra in (("full", ()), ("topk", ("--label-format", "topk", "--topk", 3))):
        store = tmp_path / fmt
        relabel(demo_data / "ipc2", teacher_ckpt, store, *FLAGS, *extra)
        found[fmt] = (batch_files_digest(store) if fmt == "full" else v1_topk_digest(store), manifest_digest(store))
    run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--fkd-path", tmp_path / "full",
               "--model", "democnn_small", "--output-dir", tmp_path / "run", "--loss-type", "kl", "-T", 3,
               "-j", 0, "--eval-interval", 100, "--seed", 0, "--no-progress")
    weights = weights_digest(tmp_path / "run" / "checkpoint.pth")
    assert {k: v[0] for k, v in found.items()} == STORE_DIGESTS
    assert packed_digest(tmp_path / "topk") == PACKED_DIGEST
    assert {k: v[1] for k, v in found.items()} == MANIFEST_DIGESTS
    assert weights == WEIGHTS_DIGEST


PER_IMAGE_DIGEST = "5217f85c61d9e12037d73e604c9d771ef0d334808288f2e0d51174cdc76344e7"
PER_IMAGE_WEIGHTS_DIGEST = "4f19a83e38f57bdb61afee56358e7c66ab8f1277d0dfc3525d4a67f2bbb0f867"


def test_per_image_generator_writes_the_pinned_files_and_the_trainer_the_pinned_weights(
        demo_data, teacher_ckpt, tmp_path):
    out = tmp_path / "per_image"
    run_script("relabel/generate_soft_label_fkd.py", demo_data / "ipc1", "--teacher-path", teacher_ckpt,
               "--save_path", out, "--num_crops", 6, "--num_seg", 3, "--input_size", 24, "--min_scale_crops", 0.3,
               "--max_scale_crops", 1.0, "--fkd_seed", 42, "--label_type", "marginal_smoothing_k5", "--use_fp16",
               "-j", 0)
    h = hashlib.sha256()
    for path in sorted(out.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            h.update(str(path.relative_to(out)).encode())
            h.update(path.read_bytes())
    run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc1", "--softlabel_path", out,
               "--model", "democnn_small", "--output-dir", tmp_path / "run", "--epochs", 2, "--num_crops", 2,
               "-b", 4, "-j", 0, "--eval-interval", 100, "--seed", 0, "--no-progress",
               "--loss-type", "kl", "-T", 3)  # the defaults when the digest was taken (now FKD's soft_ce, T 1)
    assert (h.hexdigest(), weights_digest(tmp_path / "run" / "checkpoint.pth")) == \
        (PER_IMAGE_DIGEST, PER_IMAGE_WEIGHTS_DIGEST)
