"""scripts/score_distilled.py: the random real subset (per-class counts, seeded, drawn from the
real training set only), DD-Ranking's score arithmetic, and a toy run whose rerun skips every
finished arm."""
from __future__ import annotations

import json
import math
import os
import sys

import pytest
from rounding import FLOAT64, within

from softlabel.data import scan_image_folder
from softlabel.errors import UserError


def score_module():
    from softlabel.commands import score
    return score


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


def close(got, want) -> bool:
    """Float64 formulas (an exp and a few products a score) of accuracies in percent, at most 100."""
    return within(got, want, 16, 100.0, FLOAT64)


def test_scores_are_dd_rankings_formulas():
    score = score_module()
    assert close(score.normalized_exp(-1), 0.0) and close(score.normalized_exp(1), 1.0)
    acc = {"full_hard": 90.0, "syn_hard": 40.0, "syn_soft": 70.0, "rand_soft": 60.0, "syn_noaug": 50.0,
           "rand_noaug": 45.0}
    s = score.scores(acc, 0.5, 0.5)
    assert close(s["HLR"], 0.5) and close(s["IOR"], 0.1)
    alpha = 0.5 * 0.1 - 0.5 * 0.5
    assert close(s["LRS"], (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1)))
    beta = 0.5 * 0.1 + 0.5 * 0.05
    assert close(s["ARS"], (math.exp(beta) - math.exp(-1)) / (math.e - math.exp(-1)))
    s2 = score.scores(acc, 1.0, 0.0)  # the weights move the scores as written
    assert close(s2["alpha"], 0.1) and close(s2["beta"], 0.05)


def test_a_toy_run_writes_every_arm_and_a_rerun_skips_them(demo_data, teacher_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    score = score_module()
    argv = ["score_distilled.py", "--syn", str(demo_data / "ipc1"), "--real-train", str(demo_data / "ipc2"),
            "--val", str(demo_data / "ipc2"), "--teacher", "democnn_small", "--teacher-path", str(teacher_ckpt),
            "--model", "mlpnet", "--epochs", "2", "-b", "10", "--input-size", "24", "--seeds", "0,1",
            "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    score.main(score.get_args_parser().parse_args())
    out = tmp_path / "out"
    result = json.loads((out / "scores.json").read_text())
    assert set(result["arms"]) == set(score.ARMS)
    for arm in score.ARMS:  # each arm: ordinary trainer runs, their top-1 in the summary
        runs = [json.loads((out / "runs" / arm / f"seed{s}" / "results.json").read_text()) for s in (0, 1)]
        assert result["arms"][arm]["top1"] == [r["top1"] for r in runs]
    for i in (0, 1):  # per seed, arms paired by seed, then averaged
        acc = {k: v["top1"][i] for k, v in result["arms"].items()}
        for key, value in score.scores(acc, 0.5, 0.5).items():
            assert close(result["scores"][key]["per_seed"][i], value)
    assert close(result["scores"]["LRS"]["mean"], sum(result["scores"]["LRS"]["per_seed"]) / 2)
    assert "| LRS |" in (out / "scores.md").read_text() and result["protocol"] == "fixed"
    for i in (0, 1):  # the package's formulas on the same accuracies, beside ours
        acc = {k: v["top1"][i] for k, v in result["arms"].items()}
        expected = score.ddranking_scores(acc, 0.5, 0.5)["ARS"]
        assert close(result["scores_ddranking"]["ARS"]["per_seed"][i], expected)
    subset = scan_image_folder(str(out / "random_subset"), "x")
    assert len(subset) == 10 and subset.classes == scan_image_folder(str(demo_data / "ipc1"), "x").classes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    capsys.readouterr()
    # the rerun (a fresh process would hold no lock; this one drops it) trains nothing again
    monkeypatch.setattr(score.files, "lock_dir", lambda *a, **k: None)
    score.main(score.get_args_parser().parse_args())
    assert "train:" not in capsys.readouterr().out
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    # a rerun with another student (or teacher, epochs, subset seed...) would mix two settings' runs
    scores_before = (out / "scores.json").read_bytes()
    monkeypatch.setattr(sys, "argv", [a if a != "mlpnet" else "democnn_small" for a in argv])
    with pytest.raises(UserError, match="--out .* other settings .*model 'mlpnet' -> 'democnn_small'"):
        score.main(score.get_args_parser().parse_args())
    assert (out / "scores.json").read_bytes() == scores_before
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}


def test_a_run_without_validation_accuracy_is_one_line(tmp_path):
    score = score_module()
    (tmp_path / "results.json").write_text(json.dumps({"epochs": 20, "train_loss": 0.1}))
    with pytest.raises(UserError, match="--full-hard-run .* no validation top-1"):
        score.checked_result(str(tmp_path / "results.json"), "--full-hard-run")


# ----------------------------------------------------------------------------- ddranking 0.2.0

ACC = [  # two evaluations' accuracies, in percent
    {"full_hard": 56.5, "syn_hard": 20.0, "syn_soft": 45.0, "rand_soft": 44.0, "syn_noaug": 30.0, "rand_noaug": 29.5},
    {"full_hard": 56.5, "syn_hard": 21.0, "syn_soft": 45.5, "rand_soft": 44.8, "syn_noaug": 30.2, "rand_noaug": 29.0},
]


def test_ddranking_numbers_are_the_packages_formulas_by_hand():
    """soft_label.py / aug_robust.py of ddranking 0.2.0: differences in points into the exponent,
    np.mean and np.std (population) over evaluations; ours beside them on fractions, sample std."""
    score = score_module()
    results = {arm: [{"top1": a[arm]} for a in ACC] for arm in score.ARMS}
    d = score.ddranking_seed_scores(results, 0.5, 0.5)
    norm = lambda x: (math.exp(x) - math.exp(-1)) / (math.exp(1) - math.exp(-1))  # noqa: E731
    hlr, ior = [36.5, 35.5], [1.0, 0.7]
    lrs = [norm(0.5 * i - 0.5 * h) for i, h in zip(ior, hlr)]  # alpha = -17.75, -17.4: LRS below 0
    assert close(d["HLR"]["per_seed"], hlr) and close(d["IOR"]["per_seed"], ior)
    assert close(d["HLR"]["mean"], 36.0) and close(d["HLR"]["std"], 0.5)  # population
    assert close(d["IOR"]["std"], 0.15)
    assert close(d["LRS"]["per_seed"], lrs) and all(v < 0 for v in lrs)
    assert close(d["LRS"]["mean"], sum(lrs) / 2)
    assert close(d["LRS"]["std"], abs(lrs[0] - lrs[1]) / 2)
    betas = [0.5 * 1.0 + 0.5 * 0.5, 0.5 * 0.7 + 0.5 * 1.2]
    assert close(d["with_aug"]["per_seed"], [1.0, 0.7])
    assert close(d["without_aug"]["per_seed"], [0.5, 1.2])
    assert close(d["ARS"]["per_seed"], [norm(b) for b in betas])
    assert close(d["ARS"]["std"], abs(norm(betas[0]) - norm(betas[1])) / 2)
    ours = score.seed_scores(results, 0.5, 0.5)  # fractions, sample std
    assert close(ours["HLR"]["mean"], 0.36) and close(ours["HLR"]["std"], 0.01 / math.sqrt(2))
    assert close(ours["LRS"]["per_seed"][0], norm(0.5 * 0.01 - 0.5 * 0.365))
    single = score.ddranking_seed_scores({k: v[:1] for k, v in results.items()}, 0.5, 0.5)
    assert single["HLR"]["std"] == 0.0  # one evaluation: np.std is 0


def plan_args(tmp_path, **kw):
    import argparse
    values = dict(syn="SYN", real_train="REAL", out=str(tmp_path), syn_lr=None, full_hard_run=None,
                  full_hard_top1=None)
    values.update(kw)
    return argparse.Namespace(**values)


def test_the_ddranking_protocol_plan(tmp_path):
    """Per evaluation: its seed and its own random subset; syn_hard, syn_soft, rand_soft, syn_noaug,
    rand_noaug at each of the package's five learning rates; full_hard once at the recipe's."""
    score = score_module()
    runs = score.ddranking_plan(plan_args(tmp_path), [3, 4], ["SUB0", "SUB1"])
    assert score.LR_SEARCH == (0.001, 0.005, 0.01, 0.05, 0.1)
    for i, (seed, subset) in enumerate([(3, "SUB0"), (4, "SUB1")]):
        mine = [r for r in runs if r.evaluation == i]
        assert {r.seed for r in mine} == {seed}
        for arm in ("syn_hard", "syn_soft", "rand_soft", "syn_noaug", "rand_noaug"):
            arm_runs = [r for r in mine if r.arm == arm]
            assert tuple(r.lr for r in arm_runs) == score.LR_SEARCH
            assert {r.data for r in arm_runs} == {subset if arm.startswith("rand") else "SYN"}
            assert {(r.teacher, r.augment) for r in arm_runs} == {(arm != "syn_hard", not arm.endswith("noaug"))}
        (full,) = [r for r in mine if r.arm == "full_hard"]
        assert (full.lr, full.data, full.teacher) == (None, "REAL", False)
    assert len(runs) == 2 * (5 * 5 + 1) and len({r.out for r in runs}) == len(runs)
    runs = score.ddranking_plan(plan_args(tmp_path, syn_lr=0.02, full_hard_run="RUN"), [0], ["SUB0"])
    assert [r.lr for r in runs if r.arm in ("syn_soft", "syn_noaug")] == [0.02, 0.02]  # the package's syn_lr
    assert [r.lr for r in runs if r.arm == "syn_hard"] == list(score.LR_SEARCH)  # always searched
    assert not [r for r in runs if r.arm == "full_hard"]
    assert score.lr_flag("--sgd --cos") == "-lr" and score.lr_flag("--loss-type kl") == "--adamw-lr"


def test_ddranking_picks_the_best_validation_and_the_first_lr_of_a_tie(demo_data, tmp_path):
    score = score_module()
    assert score.pick_lr([(0.001, 50.0), (0.005, 60.0), (0.01, 60.0), (0.05, 10.0)]) == (60.0, 0.005)
    assert score.pick_lr([(0.001, 0.0), (0.005, 0.0)]) == (0.0, 0.0)  # as the package: best_lr stays 0
    rows = [{"epoch": 20, "top1": 40.0}, {"epoch": 25, "top1": 99.0}, {"epoch": 40, "top1": 45.0},
            {"epoch": 50, "top1": 42.0}]  # epoch 25: an end not on its 20-epoch grid, unseen by the package
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert score.best_validation(str(tmp_path / "metrics.jsonl")) == 45.0
    syn, real = scan_image_folder(str(demo_data / "ipc1"), "--syn"), scan_image_folder(str(demo_data / "train"), "x")
    draws = [score.draw_subset(syn, real, 0, i) for i in range(3)]
    assert draws[0] == score.draw_subset(syn, real, 0)  # evaluation 0: the fixed protocol's subset
    assert len({tuple(d) for d in draws}) == 3  # a new subset per evaluation


def test_a_toy_ddranking_protocol_run(demo_data, teacher_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    score = score_module()
    monkeypatch.setattr(score, "LR_SEARCH", (0.05,))  # one of the five, validations every 2 epochs: small
    monkeypatch.setattr(score, "TEST_INTERVAL", 2)
    argv = ["score_distilled.py", "--syn", str(demo_data / "ipc1"), "--real-train", str(demo_data / "ipc2"),
            "--val", str(demo_data / "ipc2"), "--teacher", "democnn_small", "--teacher-path", str(teacher_ckpt),
            "--model", "mlpnet", "--epochs", "5", "-b", "10", "--input-size", "16", "--seeds", "0",
            "--protocol", "ddranking", "--full-hard-top1", "90", "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    score.main(score.get_args_parser().parse_args())
    out = tmp_path / "out"
    result = json.loads((out / "scores.json").read_text())
    assert result["protocol"] == "ddranking" and set(result["scores_ddranking"]) >= {"HLR", "IOR", "LRS", "ARS"}
    for arm in ("syn_soft", "rand_noaug"):
        accs = {lr: score.best_validation(str(out / "ddranking" / "eval0" / arm / f"lr{lr:g}" / "metrics.jsonl"))
                for lr in (0.05,)}
        assert (result["arms"][arm]["top1"][0], result["chosen_lr"][arm][0]) == score.pick_lr(list(accs.items()))
    rows = [json.loads(line) for line in (out / "ddranking" / "eval0" / "syn_soft" / "lr0.05" / "metrics.jsonl")
            .read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [2, 4, 5]  # the trainer's last validation is not the package's
    assert result["arms"]["syn_soft"]["top1"] == [max(r["top1"] for r in rows[:2])]
    args = json.loads((out / "ddranking" / "eval0" / "rand_soft" / "lr0.05" / "results.json").read_text())
    ckpt_args = __import__("torch").load(out / "ddranking" / "eval0" / "rand_soft" / "lr0.05" / "checkpoint.pth",
                                         weights_only=True)["args"]
    assert args["labels"].startswith("online KD from democnn_small") and ckpt_args["adamw_lr"] == 0.05
    assert ckpt_args["train_dir"] == str(out / "random_subsets" / "eval0")
    assert result["arms"]["full_hard"]["top1"] == [90.0] and result["chosen_lr"]["full_hard"] == [None]
    acc = {k: v["top1"][0] for k, v in result["arms"].items()}
    assert close(result["scores_ddranking"]["LRS"]["mean"], score.ddranking_scores(acc, 0.5, 0.5)["LRS"])
    assert "ddranking 0.2.0 formulas" in (out / "scores.md").read_text()


@pytest.mark.parametrize("flags, message", [
    (["--protocol", "ddranking", "--epochs", "10"], "--epochs must be at least 20"),
    (["--syn-lr", "0.01"], "--syn-lr is a positive learning rate for --protocol ddranking"),
    (["--seeds", "0,x"], "--seeds 0,x: integers"),
    (["--full-hard-top1", "156"], "--full-hard-top1 is a top-1 in percent"),
])
def test_protocol_flags_refused_in_one_line(flags, message, tmp_path, monkeypatch):
    score = score_module()
    monkeypatch.setattr(sys, "argv", ["score_distilled.py", "--syn", "S", "--real-train", "R", "--val", "V",
                                      "--teacher", "t", "--teacher-path", "p", "--out", str(tmp_path), *flags])
    with pytest.raises(UserError, match=message):
        score.main(score.get_args_parser().parse_args())


def test_seeds_and_run_results_that_cannot_be_scored_are_one_line(tmp_path):
    score = score_module()
    with pytest.raises(UserError, match="--seeds a: integers"):
        score.parse_seeds("a")
    with pytest.raises(UserError, match="--seeds 0,1,0: seed 0 given twice"):
        score.parse_seeds("0,1,0")
    (tmp_path / "results.json").write_text(json.dumps({"top1": 50.0, "ece": "high"}))
    with pytest.raises(UserError, match="results.json .* ece is not a percentage"):
        score.checked_result(str(tmp_path / "results.json"), "results.json")
