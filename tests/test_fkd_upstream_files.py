"""FKD's own per-image soft labels (FKD_SLG's files, FKD_SLG/README.md of szq0214/FKD): written here in FKD's
layout and array types, then trained from as train_FKD.py is given them (--softlabel_path)."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import assert_user_error, run_script
from rounding import within
from torchvision.transforms import InterpolationMode

from softlabel.data import load_rgb, scan_image_folder
from softlabel.errors import UserError
from softlabel.stores import StepPlan, Request, open_store
from softlabel.stores.per_image import sample_crops

CROPS, SIZE, CLASSES = 6, 24, 10


def fkd_quantize(p: np.ndarray, label_type: str) -> np.ndarray:
    """FKD_SLG's label_quantization, written out: per crop the argmax (hard), [argmax, p] (smoothing)
    or [top-k classes, their p] (marginal types), class indices as floats beside the probabilities."""
    order = np.argsort(-p, axis=1, kind="stable")
    if label_type == "hard":
        return order[:, 0].astype(np.int64)
    if label_type == "smoothing":
        return np.stack([order[:, 0], p[np.arange(len(p)), order[:, 0]]], axis=1).astype(np.float32)
    k = 10 if label_type.endswith("k10") else 5
    top = order[:, :k]
    return np.stack([top.astype(np.float32), np.take_along_axis(p, top, axis=1)], axis=1).astype(np.float32)


def fkd_recover(label: torch.Tensor, label_type: str, n: int) -> torch.Tensor:
    """train_FKD.py's Recover_soft_label, written out."""
    if label_type == "hard":
        return torch.zeros(len(label), n).scatter_(1, label.view(-1, 1).long(), 1)
    if label_type == "smoothing":
        index, value = label[:, 0].long(), label[:, 1]
        return ((1 - value) / (n - 1)).view(-1, 1).repeat(1, n).scatter_(1, index.view(-1, 1), value.view(-1, 1))
    index, value = label[:, 0, :].long(), label[:, 1, :]
    if label_type == "marginal_renorm":
        out = torch.zeros(len(label), n).scatter_(1, index, value)
        return out / out.sum(dim=1, keepdim=True)
    rest = (1 - value.sum(dim=1, keepdim=True)) / (n - index.shape[1])
    return rest.repeat(1, n).scatter_(1, index, value)


def write_fkd_files(data, save, label_type: str, fp16: bool = False, seed: int = 3) -> None:
    """Per image SAVE/<split>/<class>/<stem>.tar = [coords, flip, labels] as numpy arrays; the
    'teacher' here is a fixed random softmax per crop (the format is what is tested)."""
    index = scan_image_folder(str(data), "--data")
    rng = np.random.default_rng(seed)
    for i, (path, _) in enumerate(index.samples):
        img = load_rgb(path)
        coords, flips = sample_crops(seed, i, CROPS, img.width, img.height, (0.3, 1.0))
        logits = rng.normal(size=(CROPS, CLASSES)) * 3
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        labels = fkd_quantize(p.astype(np.float32), label_type)
        coords_np, flips_np = coords.numpy(), flips.numpy()
        if fp16:
            coords_np, labels = np.float16(coords_np), np.float16(labels)
        rel = os.path.relpath(path, os.path.dirname(index.root)).split(".")[0] + ".tar"
        os.makedirs(os.path.dirname(os.path.join(save, rel)), exist_ok=True)
        torch.save([coords_np, flips_np, labels], os.path.join(save, rel))


@pytest.fixture(scope="module")
def fkd_dirs(demo_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("fkd_upstream")
    out = {}
    for label_type, fp16 in (("marginal_smoothing_k5", True), ("hard", False), ("smoothing", False),
                             ("marginal_smoothing_k10", False)):
        write_fkd_files(demo_data / "ipc1", root / label_type, label_type, fp16)
        out[label_type] = root / label_type
    return out


def open_fkd(path, data, **request):
    index = scan_image_folder(str(data), "--train-dir")
    return open_store(str(path), index, layout="per-image", request=Request(**request)), index


@pytest.mark.parametrize("label_type", ["marginal_smoothing_k5", "hard", "smoothing", "marginal_smoothing_k10",
                                        "marginal_renorm"])
def test_labels_are_inferred_and_recovered_as_train_fkd_does(label_type, fkd_dirs, demo_data):
    folder = fkd_dirs["marginal_smoothing_k5" if label_type == "marginal_renorm" else label_type]
    store, index = open_fkd(folder, demo_data / "ipc1", num_classes=CLASSES, input_size=SIZE,
                            label_type="marginal_renorm_k5" if label_type == "marginal_renorm" else None)
    assert store.settings.label_format == label_type and store.settings.num_crops == CROPS
    item = store.dataset(index, [(0, 0)],
                         plan=StepPlan(0, 3, 2, targets=torch.tensor(index.targets)))[0]
    for n, i in enumerate(item["index"].tolist()):
        _, _, labels = torch.load(store.path_of(index, i), weights_only=False)  # our own test file
        recovered = fkd_recover(torch.from_numpy(np.asarray(labels, dtype=np.float32)), label_type, CLASSES)
        probs = item["soft_label"][n].exp()
        # stored as log-probabilities: exp(log p) is p within a few roundings of p (1 + |log p|)
        assert any(within(probs, r, 4, r + torch.xlogy(r, r).abs()) for r in recovered), (label_type, i)


def test_the_student_sees_fkd_trainers_bilinear_crops_or_the_teachers_bicubic(fkd_dirs, demo_data):
    for interpolation, mode in (("bilinear", InterpolationMode.BILINEAR), ("bicubic", InterpolationMode.BICUBIC)):
        index = scan_image_folder(str(demo_data / "ipc1"), "--train-dir")
        store = open_store(str(fkd_dirs["hard"]), index, layout="per-image",
                           request=Request(num_classes=CLASSES, input_size=SIZE, interpolation=interpolation))
        item = store.dataset(index, [(0, 0)],
                             plan=StepPlan(0, 2, 3, targets=torch.tensor(index.targets)))[0]
        for n, i in enumerate(item["index"].tolist()):
            coords, flips, _ = torch.load(store.path_of(index, i), weights_only=False)
            img = load_rgb(index.samples[i][0])
            # train_FKD.py's RandomResizedCrop_FKD + RandomHorizontalFlip_FKD at one of the stored crops
            expected = []
            for c, f in zip(coords, flips):
                top, left, h, w = (float(v) for v in c)  # FKD: coords[k].item() * img.size[...]
                crop = TF.resized_crop(img, top * img.height, left * img.width, h * img.height, w * img.width,
                                       [SIZE, SIZE], mode)
                expected.append(TF.pil_to_tensor(TF.hflip(crop) if f else crop))
            assert any(torch.equal(item["pixels"][n], e) for e in expected), (interpolation, i)


def test_train_fkd_flags_train_a_student_with_fkd_defaults(fkd_dirs, demo_data, tmp_path):
    out = tmp_path / "run"
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc1", "--softlabel_path",
                      fkd_dirs["marginal_smoothing_k5"], "--soft_label_type", "marginal_smoothing_k5",
                      "--num_crops", 2, "--num-classes", CLASSES, "--input-size", SIZE, "--model", "democnn_small",
                      "--epochs", 2, "-b", 4, "-j", 0, "--output-dir", out, "--no-progress")
    result = json.loads((out / "results.json").read_text())
    assert result["labels"] == "soft (soft_ce, FKD marginal_smoothing_k5)" and result["steps"] == 2 * 3
    args = torch.load(out / "checkpoint.pth", weights_only=True)["args"]
    assert args["loss_type"] == "soft_ce" and args["temperature"] == 1.0 and args["crop_interpolation"] == "bilinear"
    assert "FKD marginal_smoothing_k5" in proc.stdout


def test_wrong_type_missing_files_and_pickles_are_one_line_errors(fkd_dirs, demo_data, tmp_path):
    base = ("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc1", "--num-classes", CLASSES,
            "--input-size", SIZE, "--model", "democnn_small", "--epochs", 1, "-j", 0, "--output-dir", tmp_path / "r")
    assert_user_error(run_script(*base, "--softlabel_path", fkd_dirs["hard"], "--soft_label_type", "smoothing",
                                 check=False), "--soft_label_type smoothing", "holds hard labels")
    assert_user_error(run_script(*base, "--softlabel_path", fkd_dirs["hard"], "--num-classes", 5, check=False),
                      "--num-classes")
    broken = tmp_path / "broken"
    write_fkd_files(demo_data / "ipc1", broken, "hard")
    victim = sorted(broken.rglob("*.tar"))[-1]
    victim.unlink()
    assert_user_error(run_script(*base, "--softlabel_path", broken, check=False), "label files missing",
                      str(victim))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    victim.write_bytes(pickle.dumps([np.zeros((CROPS, 4), np.float32), np.zeros(CROPS, bool), Payload()]))
    assert_user_error(run_script(*base, "--softlabel_path", broken, check=False), str(victim), "refused to load")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(UserError, match="--train-dir"):
        open_store(str(broken), None, layout="per-image")


def write_fkd_files_with_teacher(data, save, teacher_path) -> None:
    """FKD_SLG's output for a real teacher: bicubic crops, softmax at --temp 1, marginal_smoothing_k5
    quantization, --use_fp16 (coords and labels float16)."""
    from softlabel.replay import render_batch
    from softlabel.teachers import Ensemble, load_teacher
    teacher = Ensemble([load_teacher(None, str(teacher_path))], "mean", 0.5, torch.device("cpu"))
    index = scan_image_folder(str(data), "--data")
    for i, (path, _) in enumerate(index.samples):
        img = load_rgb(path)
        coords, flips = sample_crops(5, i, CROPS, img.width, img.height, (0.3, 1.0))
        with torch.no_grad():
            logits, _ = teacher(render_batch([img] * CROPS, coords, flips, SIZE, "bicubic"), None, None, None)
        labels = fkd_quantize(torch.softmax(logits, dim=1).numpy(), "marginal_smoothing_k5")
        rel = os.path.relpath(path, os.path.dirname(index.root)).split(".")[0] + ".tar"
        os.makedirs(os.path.dirname(os.path.join(save, rel)), exist_ok=True)
        torch.save([np.float16(coords.numpy()), flips.numpy(), np.float16(labels)], os.path.join(save, rel))


def test_inspector_and_converter_read_fkd_files(demo_data, teacher_ckpt, tmp_path):
    fkd = tmp_path / "FKD" / "ipc1"
    write_fkd_files_with_teacher(demo_data / "ipc1", fkd, teacher_ckpt)
    info = ("scripts/fkd_info.py", fkd, "--data", demo_data / "ipc1", "--num-classes", CLASSES, "--input-size", SIZE)
    out = run_script(*info, "--check").stdout
    assert "FKD's own files" in out and "marginal_smoothing_k5 (top 5, float16" in out and "ok: 10 files checked" in out
    verified = run_script(*info, "--verify-teacher", "democnn_small", "--teacher-path", teacher_ckpt).stdout
    assert "ok: the teacher reproduces the stored labels" in verified
    other = tmp_path / "other.pth"
    state = torch.load(teacher_ckpt, weights_only=True)
    state["model"] = {k: v.flip(0) if v.dim() else v for k, v in state["model"].items()}
    torch.save(state, other)
    assert_user_error(run_script(*info, "--verify-teacher", "democnn_small", "--teacher-path", other, check=False),
                      "does not reproduce")

    ours = tmp_path / "ours"
    run_script("scripts/convert_labels.py", fkd, ours, "--data", demo_data / "ipc1", "--num-classes", CLASSES,
               "--input-size", SIZE)
    assert "per-image v1" in run_script("scripts/fkd_info.py", ours, "--check").stdout
    index = scan_image_folder(str(demo_data / "ipc1"), "--train-dir")
    a, _ = open_fkd(fkd, demo_data / "ipc1", num_classes=CLASSES, input_size=SIZE)
    b = open_store(str(ours), index, layout="per-image")
    for i in range(len(index)):  # the same crops and labels, read through either format
        for x, y in zip(a.read_labels(index, i), b.read_labels(index, i)):
            assert torch.equal(x.float(), y.float())
    jobs = [(0, 0)]
    items = [s.dataset(index, jobs,
                       plan=StepPlan(0, 4, 2, targets=torch.tensor(index.targets)))[0] for s in (a, b)]
    assert torch.equal(items[0]["pixels"], items[1]["pixels"])
    assert torch.equal(items[0]["soft_label"], items[1]["soft_label"])


def test_a_file_whose_probabilities_are_all_zero_is_refused_naming_it(demo_data, tmp_path):
    """No teacher gives a crop all-zero probabilities (its top class has at least 1 / classes): the
    store refuses such a file by name, before the loss could turn it into NaN."""
    from conftest import train_in_process
    save = tmp_path / "zeros"
    write_fkd_files(demo_data / "ipc1", save, "marginal_smoothing_k5")
    victim = sorted(save.rglob("*.tar"))[-1]
    coords, flips, labels = torch.load(victim, weights_only=False)  # our own test file
    labels[2, 1, :] = 0
    torch.save([coords, flips, labels], victim)
    with pytest.raises(UserError, match=f"{victim}: crop 2's probabilities are all zero"):
        train_in_process("--train-dir", demo_data / "ipc1", "--softlabel_path", save, "--soft_label_type",
                         "marginal_renorm_k5", "--num-classes", CLASSES, "--input-size", SIZE, "--model",
                         "democnn_small", "--epochs", 1, "-b", 10, "-j", 0, "--output-dir", tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoint.pth").exists()
