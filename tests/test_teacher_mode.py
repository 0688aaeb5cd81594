"""--teacher-mode: an online teacher labels in eval mode (default) or, as WSLD's
train_with_distillation.py does, in train mode (batch norm on the batch's statistics, its running
statistics updated and checkpointed, so that a resumed run continues exactly)."""
from __future__ import annotations

import pytest
import torch
from conftest import train_in_process
from rounding import logits_tolerance

from softlabel import files, replay
from softlabel.errors import UserError
from softlabel.teachers import Ensemble, load_teacher


def ensemble(teacher_ckpt) -> Ensemble:
    return Ensemble([load_teacher(None, str(teacher_ckpt))], "mean", 1.0, torch.device("cpu"))


def running_stats(e: Ensemble) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in e.teachers[0].model.named_buffers()}


def test_train_mode_labels_with_batch_statistics_and_updates_the_running_ones(teacher_ckpt):
    pixels = torch.randint(0, 256, (6, 3, 24, 24), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    e = ensemble(teacher_ckpt)
    before = running_stats(e)
    eval_logits, _ = e(pixels, None, None, None)
    assert all(torch.equal(v, before[k]) for k, v in running_stats(e).items())  # eval: nothing moves
    e.set_mode("train")
    train_logits, _ = e(pixels, None, None, None)
    # the batch's statistics, not the running ones: apart by far more than rounding could explain
    t = e.teachers[0]
    bound = logits_tolerance(t.model, replay.normalize(pixels, t.mean, t.std)).max()
    assert float((eval_logits - train_logits).abs().max()) > float(bound)
    after = running_stats(e)
    moved = [k for k in after if not torch.equal(after[k], before[k])]
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in moved)
    assert not any(p.requires_grad for p in e.teachers[0].model.parameters())  # the weights stay frozen
    again, _ = ensemble(teacher_ckpt)(pixels, None, None, None)  # a fresh teacher is in eval mode
    assert torch.equal(again, eval_logits)


def run(demo_data, teacher_ckpt, out, *extra):
    train_in_process("--train-dir", demo_data / "ipc2", "--model", "mlpnet", "--teacher", "democnn_small",
                     "--teacher-path", teacher_ckpt, "--loss-type", "wsld", "--input-size", 24, "-b", 10,
                     "--epochs", 2, "-j", 0, "--sgd", "-lr", 0.05, "--lr-schedule", "step", "--lr-step-size", 100,
                     "--no-progress", "--output-dir", out, *extra)


def test_train_mode_checkpoints_the_teachers_statistics_and_resumes_exactly(demo_data, teacher_ckpt, tmp_path,
                                                                              monkeypatch):
    # runs in this process: each holds its folder's lock until the process ends (tested elsewhere)
    monkeypatch.setattr(files, "lock_dir", lambda *a, **k: None)
    run(demo_data, teacher_ckpt, tmp_path / "whole", "--teacher-mode", "train")
    run(demo_data, teacher_ckpt, tmp_path / "half", "--teacher-mode", "train", "--epochs", 1)
    run(demo_data, teacher_ckpt, tmp_path / "half", "--teacher-mode", "train", "--resume", "auto")
    run(demo_data, teacher_ckpt, tmp_path / "eval")
    a, b, c = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True) for r in ("whole", "half", "eval"))
    assert a["args"]["teacher_mode"] == "train" and c["args"]["teacher_mode"] == "eval"  # eval unless asked
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (whole,), (half,) = a["teacher_buffers"], b["teacher_buffers"]
    assert all(torch.equal(whole[k], half[k]) for k in whole)
    assert int(whole["features.0.1.num_batches_tracked"]) == 4  # 2 epochs x 2 batches, each one update
    fresh = running_stats(ensemble(teacher_ckpt))
    assert not torch.equal(whole["features.0.1.running_mean"], fresh["features.0.1.running_mean"])
    assert "teacher_buffers" not in c  # eval mode changes nothing of the teacher's
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])  # and labels otherwise
    with pytest.raises(UserError, match="--teacher-mode train"):  # the mode is part of what a resume must match
        run(demo_data, teacher_ckpt, tmp_path / "whole", "--epochs", 3, "--resume", "auto")


def test_train_mode_needs_an_online_teacher(demo_data, tmp_path):
    with pytest.raises(UserError, match="--teacher-mode train applies to an online --teacher"):
        train_in_process("--train-dir", demo_data / "ipc1", "--model", "mlpnet", "--teacher-mode", "train",
                         "--output-dir", tmp_path / "run")
