"""scripts/score_distilled.py: the random real subset (per-class counts, seeded, drawn from the
real training set only), DD-Ranking's score arithmetic, and a toy run whose rerun skips every
finished arm."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest
from conftest import ROOT

from softlabel.data import scan_image_folder
from softlabel.errors import UserError


def score_module():
    spec = importlib.util.spec_from_file_location("score_distilled", ROOT / "scripts" / "score_distilled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_random_subset_matches_the_distilled_set_per_class(demo_data):
    score = score_module()
    syn, real = scan_image_folder(str(demo_data / "ipc1"), "--syn"), scan_image_folder(str(demo_data / "train"), "x")
    a, b, other = (score.draw_subset(syn, real, s) for s in (0, 0, 1))
    assert a == b and a != other  # seeded
    per_class = lambda chosen: [sum(1 for _, c in chosen if c == k) for k in range(len(syn.classes))]  # noqa: E731
    assert per_class(a) == [sum(1 for _, t in syn.samples if t == k) for k in range(len(syn.classes))]
    real_paths = {p for p, _ in real.samples}
    assert all(p in real_paths for p, _ in a) and len({p for p, _ in a}) == len(a)  # real train only, no repeats
    for path, c in a:  # each image from its own class
        assert os.path.basename(os.path.dirname(path)) == syn.classes[c]
    val = {os.path.realpath(p) for p, _ in scan_image_folder(str(demo_data / "val"), "--val").samples}
    assert not val & {os.path.realpath(p) for p, _ in a}  # nothing from the validation set
    with pytest.raises(UserError, match="only"):
        score.draw_subset(real, syn, 0)  # more images per class than the pool holds


def test_scores_are_dd_rankings_formulas():
    score = score_module()
    assert score.normalized_exp(-1) == pytest.approx(0.0) and score.normalized_exp(1) == pytest.approx(1.0)
    acc = {"full_hard": 90.0, "syn_hard": 40.0, "syn_soft": 70.0, "rand_soft": 60.0, "syn_noaug": 50.0,
           "rand_noaug": 45.0}
    s = score.scores(acc, 0.5, 0.5)
    assert s["HLR"] == pytest.approx(0.5) and s["IOR"] == pytest.approx(0.1)
    alpha = 0.5 * 0.1 - 0.5 * 0.5
    assert s["LRS"] == pytest.approx((math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    beta = 0.5 * 0.1 + 0.5 * 0.05
    assert s["ARS"] == pytest.approx((math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))
    s2 = score.scores(acc, 1.0, 0.0)  # the weights move the scores as written
    assert s2["alpha"] == pytest.approx(0.1) and s2["beta"] == pytest.approx(0.05)


def test_a_toy_run_writes_every_arm_and_a_rerun_skips_them(demo_data, teacher_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    score = score_module()
    argv = ["score_distilled.py", "--syn", str(demo_data / "ipc1"), "--real-train", str(demo_data / "ipc2"),
            "--val", str(demo_data / "ipc2"), "--teacher", "democnn_small", "--teacher-path", str(teacher_ckpt),
            "--model", "mlpnet", "--epochs", "2", "-b", "10", "--input-size", "24", "--seeds", "0,1",
            "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    score.main()
    out = tmp_path / "out"
    result = json.loads((out / "scores.json").read_text())
    assert set(result["arms"]) == set(score.ARMS)
    for arm in score.ARMS:  # each arm: ordinary trainer runs, their top-1 in the summary
        runs = [json.loads((out / "runs" / arm / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert result["arms"][arm]["top1"] == [r["top1"] for r in runs]
    for i in (0, 1):  # per seed, arms paired by seed, then averaged
        acc = {k: v["top1"][i] for k, v in result["arms"].items()}
        for key, value in score.scores(acc, 0.5, 0.5).items():
            assert result["scores"][key]["per_seed"][i] == pytest.approx(value)
    assert result["scores"]["LRS"]["mean"] == pytest.approx(sum(result["scores"]["LRS"]["per_seed"]) / 2)
    assert "| LRS |" in (out / "scores.md").read_text()
    subset = scan_image_folder(str(out / "random_subset"), "x")
    assert len(subset) == 10 and subset.classes == scan_image_folder(str(demo_data / "ipc1"), "x").classes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    capsys.readouterr()
    # the rerun (a fresh process would hold no lock; this one drops it) trains nothing again
    monkeypatch.setattr(score.files, "lock_dir", lambda *a, **k: None)
    score.main()
    assert "train:" not in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}


def test_a_run_without_validation_accuracy_is_one_line(tmp_path):
    score = score_module()
    (tmp_path / "results.json").write_text(json.dumps({"epochs": 20, "train_loss": 0.1}))
    with pytest.raises(UserError, match="--full-hard-run .* no validation top-1"):
        score.checked_result(str(tmp_path / "results.json"), "--full-hard-run")
