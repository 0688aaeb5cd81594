"""The label-optimization study (qwer343/id_8285): its losses, schedule and main.py flags, as its source
(qwer343/id_8285) defines them, run through our relabel and trainer."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import assert_user_error, run_script
from rounding import FLOAT64, within
from test_export_imagefolder import CIFAR10, dump

from softlabel.cifar_resnet import cifar_resnet
from softlabel.errors import UserError
from softlabel.commands import label_optimization as lo
from softlabel.training.losses import LOSSES
from softlabel.training.schedules import multistep

SCRIPT = "validate/label_optimization.py"


def study_soft_ce(predicted, target):
    """function.py ``CrossEntropy``: mean over samples of -sum softmax(target) log_softmax(predicted)."""
    return torch.mean(torch.sum(-F.softmax(target, dim=1) * F.log_softmax(predicted, dim=1), 1))


# float32 losses of 8 samples over 100 classes: two log-softmaxes (100 exps each), a class sum,
# a batch mean and a dozen element-wise operations a term
DEPTH = 2 * 100 + 100 + 8 + 12


def log_prob_size(x: torch.Tensor, temp: float) -> float:
    """A bound of |log softmax(x / T)|: |x / T| + |logsumexp(x / T)| <= 2 max|x| / T + log C."""
    return 2 * float(x.abs().max()) / temp + math.log(x.shape[1])


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 100, generator=g) * 3, torch.randn(8, 100, generator=g) * 3, torch.arange(8) * 7


def test_kd_is_ce_plus_alpha_t2_kldivloss_with_its_default_mean(logits):
    s, t, y = logits
    T, alpha = 3.0, 0.1
    kd = T * T * nn.KLDivLoss(reduction="mean")(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1))
    want = F.cross_entropy(s, y) + alpha * kd
    got = LOSSES["lo_kd"](s, t, y, temperature=T, alpha=alpha)
    size = log_prob_size(s, 1.0) + alpha * T * T * 2 * log_prob_size(torch.cat([s, t]), T)
    assert within(got, want, DEPTH, size)
    hinton = LOSSES["kd"](s, t, y, temperature=T, alpha=alpha)     # not the study's: differs
    assert not within(got, hinton, DEPTH, size)


def test_sl_and_sl_with_ground_truth(logits):
    s, t, y = logits
    T, alpha = 3.0, 0.1
    want = alpha * T * T * study_soft_ce(s / T, t / T)
    size = alpha * T * T * 2 * log_prob_size(torch.cat([s, t + 1]), T)
    assert within(LOSSES["lo_sl"](s, t, y, temperature=T, alpha=alpha), want, DEPTH, size)
    with_gt = t + F.one_hot(y, 100).float()                 # --use_gt: one-hot added to the logits
    want_gt = alpha * T * T * study_soft_ce(s / T, with_gt / T)
    assert within(LOSSES["lo_sl_gt"](s, t, y, temperature=T, alpha=alpha), want_gt, DEPTH, size)


def test_multistep_matches_torch_multisteplr_stepped_per_epoch():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120, 160, 200], gamma=0.2)
    for epoch in range(200):
        assert within(multistep(epoch, 200, (60, 120, 160, 200), 0.2), opt.param_groups[0]["lr"], 8, 1.0, FLOAT64)
        opt.step()
        sched.step()


def parse(*argv):
    return lo.get_args_parser().parse_args(list(argv))


def test_methods_map_as_the_source_does():
    assert lo.method_of(parse("--method", "scratch")).name == "Vanilla"
    assert lo.method_of(parse("--method", "scratch", "--smart_model", "resnet32")).name == "KD"
    assert lo.method_of(parse("--method", "label_smoothing")).name == "LS"
    assert lo.method_of(parse("--method", "SL", "--smart_model", "resnet44", "--use_gt")).name == "SL-KD"
    assert lo.method_of(parse("--method", "SL", "--smart_model", "resnet32,resnet44")).name == "SL-Ens"
    assert lo.method_of(parse("--method", "random", "--smart_model", "resnet44")).name == "random"
    for bad, needle in ((("--method", "SL-Enc"), "SL-Enc"), (("--method", "SL"), "one --smart_model"),
                        (("--method", "SL-Ens", "--smart_model", "resnet44"), "two or more"),
                        (("--method", "KD", "--smart_model", "a", "--use_gt"), "--use_gt"),
                        (("--method", "focal"), "expected one of")):
        with pytest.raises(UserError, match=needle):
            lo.method_of(parse(*bad))


def cifar10_on_disk(root, per_batch=4):
    """torchvision's cifar-10-batches-py/ with every class in every split."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    dump(base / "batches.meta", {b"label_names": [c.encode() for c in CIFAR10]})
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        count = 10 if name == "test_batch" else per_batch
        labels = [(b * per_batch + i) % 10 for i in range(count)]
        dump(base / name, {b"labels": labels, b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)})


def study_checkpoint(folder, dataset, arch, num_classes):
    """A smart model as the study's main.py saves it: {'state_dict': ...} of an nn.DataParallel
    model, at <path>/<dataset>/<arch>/student_lastest.pth."""
    torch.manual_seed(1)
    model = cifar_resnet(arch, num_classes)
    path = folder / dataset / arch / "student_lastest.pth"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.mark.slow  # half a minute of CI; the quick benches (-m slow) run the front end end to end too
def test_the_seed_command_runs_relabel_and_trainer_on_torchvision_cifar(tmp_path):
    cifar10_on_disk(tmp_path / "root")
    study_checkpoint(tmp_path / "ckpt", "cifar10", "resnet20", 10)
    result = tmp_path / "results"
    argv = ("--is_smart_model", "--smart_model", "resnet20", "--smart_model_path", tmp_path / "ckpt",
            "--student_model", "resnet20", "--dataset", "cifar10", "--data-root", tmp_path / "root", "--n_class", 10,
            "--batch_size", 8, "--lr", 0.1, "--wd", 5e-4, "--epochs", 2, "--method", "SL", "--result", result,
            "--no-progress")
    proc = run_script(SCRIPT, *argv)
    out = result / "cifar10" / "SL" / "resnet20_resnet20" / "seed0"
    assert "label_optimization: SL resnet20_resnet20 on cifar10: top-1" in proc.stdout
    assert sorted(os.listdir(result / "cifar10" / "images" / "train")) == sorted(os.listdir(result / "cifar10" / "images" / "val"))
    manifest = json.loads((out / "store" / "manifest.json").read_text())
    assert manifest["num_samples"] == 20 and manifest["epochs"] == 2 and manifest["batch_size"] == 8
    ckpt = torch.load(out / "train" / "checkpoint.pth", weights_only=True)
    cfg = ckpt["args"]
    assert (cfg["loss_type"], cfg["temperature"], cfg["alpha"]) == ("lo_sl", 3.0, 0.1)
    assert (cfg["sgd"], cfg["learning_rate"], cfg["weight_decay"], cfg["momentum"]) == (True, 0.1, 5e-4, 0.9)
    assert cfg["weight_decay_norms"] and cfg["lr_schedule"] == "multistep"
    again = run_script(SCRIPT, *argv)                        # a rerun resumes: nothing is redone
    assert "0 batch files to write, 6 already done" in again.stdout and "train_FKD_parallel" not in again.stdout


def test_sl_enc_and_a_missing_checkpoint_are_one_line_errors(tmp_path):
    proc = run_script(SCRIPT, "--method", "SL-Enc", "--smart_model", "resnet32", "--result", tmp_path, check=False)
    assert_user_error(proc, "SL-Enc")
    proc = run_script(SCRIPT, "--method", "SL", "--smart_model", "resnet44", "--smart_model_path", tmp_path,
                      "--dataset", "folder", "--data-root", tmp_path, "--result", tmp_path / "r", check=False)
    assert_user_error(proc, "--data-root")
