"""Relabel as the upstream commands run it: the PRISM presets (their flags, defaults and ensemble
rule), upstream flags that run with a note, and ensemble labels replayed exactly: the stored label
is the rule applied to each teacher's logits on the pixels the student will see."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from conftest import relabel, run_script
from rounding import UNIT, logits_tolerance

from softlabel.ensemble import RESCALING, combine
from softlabel.models import create_model

PRESETS = {"r18": "normmean", "r50": "primary-weighted", "r101": "primary-weighted"}


def mlpnet_teacher(path: Path, seed: int, mean=None, std=None) -> Path:
    """A second, random-weight teacher of another architecture (and, given, another normalization)."""
    torch.manual_seed(seed)
    ckpt = {"model": create_model("mlpnet", 10).state_dict(), "arch": "mlpnet", "num_classes": 10}
    if mean is not None:
        ckpt.update(mean=mean, std=std)
    torch.save(ckpt, path)
    return path


def rescaling(outs: list[torch.Tensor], rule: str) -> float:
    """How much a combination rule can amplify a move of its inputs: 1 for a mean; for a rule
    that rescales to a mean of norms, 3 times the largest ratio of that mean to a norm."""
    if len(outs) == 1 and rule not in RESCALING or rule == "mean":
        return 1.0
    stacked = torch.stack(outs).float()
    ratios = [n.mean() / n.min() for n in (stacked.flatten(1).norm(dim=1), stacked.sum(0).norm(dim=1))]
    return 3 * float(max(ratios))


def assert_labels_are_the_rule(store: Path, data: Path, teacher_paths: list[Path], rule: str,
                               primary_weight: float = 0.5) -> None:
    """Every stored batch: the label equals ``rule`` applied to each teacher's logits on the
    replayed pixels, each teacher in its own normalization (float16 stores: rounded to half)."""
    from softlabel import replay
    from softlabel.data import scan_image_folder
    from softlabel.stores.batch import StoreBatches
    from softlabel.teachers import load_teacher
    m = json.loads((store / "manifest.json").read_text())
    teachers = [load_teacher(None, str(p)) for p in teacher_paths]
    index = scan_image_folder(str(data), "--train-dir")
    jobs = [(e, b) for e in range(m["epochs"]) for b in range(m["batches_per_epoch"])]
    batches = StoreBatches(str(store), index, m, jobs)
    for i in range(len(jobs)):
        item = batches[i]
        inputs = [replay.model_inputs(item["pixels"], t.mean, t.std, item["mix_index"], item["mix_lam"],
                                      item["mix_bbox"]) for t in teachers]
        with torch.no_grad():
            outs = [t.model(x) for t, x in zip(teachers, inputs)]
        want = combine(outs, rule, primary_weight)
        # each teacher's forward within its rounding bound; a mean moves by no more than their
        # sum, a rule rescaling by a ratio of norms by up to 3 times that ratio more (the vector,
        # its norm and the mean norm each move); plus one float16 step for a float16 store
        tol = sum(logits_tolerance(t.model, x) for t, x in zip(teachers, inputs)) * rescaling(outs, rule) \
            + 2 * UNIT[item["soft_label"].dtype] * want.abs()
        diff = (item["soft_label"].float() - want).abs()
        assert bool((diff <= tol).all()), f"step {i}: differs by {float(diff.max()):.3g}"


def test_presets_show_the_upstream_flags_and_run_with_their_rule_and_defaults(demo_data, teacher_ckpt, tmp_path):
    # What the presets do: each relabels with its ensemble rule and the PRISM command's defaults
    # (cutmix, float16 labels, crops of scale 0.25..1), here with two private teachers instead
    # of the ImageNet family. (r18, normmean, with published weights: test_teachers.py.)
    other = mlpnet_teacher(tmp_path / "other.pth", 1)
    paths = [teacher_ckpt, other]

    def show_help(arch: str):
        return run_script(f"relabel/generate_soft_label_{arch}.py", "--help")

    def run(arch: str):
        return run_script(f"relabel/generate_soft_label_{arch}.py", "--data", demo_data / "ipc1",
                          "--teachers", "democnn_small,mlpnet", "--teacher-path", f"{teacher_ckpt},{other}",
                          "--fkd-path", tmp_path / arch, "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each run mostly imports torch, on one core
        helps = {arch: pool.submit(show_help, arch) for arch in PRESETS}
        runs = {arch: pool.submit(run, arch) for arch in ("r50", "r101")}
        helps = {arch: f.result().stdout for arch, f in helps.items()}
        runs = {arch: f.result().stdout for arch, f in runs.items()}
    for arch, rule in PRESETS.items():
        out = helps[arch]
        for flag in ("--data", "-a ARCH", "--batch-size", "--workers", "--epochs", "--input-size",
                     "--min-scale-crops", "--max-scale-crops", "--fkd-path", "--use-fp16", "--mode",
                     "--fkd-seed", "--mix-type", "--mixup", "--cutmix", "--candidate-number", "--teachers",
                     "--teacher-path", "--teacher-source", "--ensemble", "--primary-weight",
                     "--multiprocessing-distributed", "--dist-url", "--dist-backend", "--world-size",
                     "--rank", "--gpu", "--seed", "--evaluate", "--class-map", "--min-teacher-acc"):
            assert flag in out, (arch, flag)
        assert f"PRISM {arch} preset" in out
        if arch not in runs:
            continue
        m = json.loads((tmp_path / arch / "manifest.json").read_text())
        assert (m["ensemble"], m["mix_type"], m["use_fp16"]) == (rule, "cutmix", True), arch
        assert (m["min_scale_crops"], m["max_scale_crops"]) == (0.25, 1.0), arch
        assert [t["arch"] for t in m["teachers"]] == ["democnn_small", "mlpnet"], arch
        assert f"ensemble {rule}" in runs[arch], arch
        assert_labels_are_the_rule(tmp_path / arch, demo_data / "ipc1", paths, rule)


def test_upstream_flags_run_with_a_note(demo_data, teacher_ckpt, tmp_path):
    proc = relabel(demo_data / "ipc1", teacher_ckpt, tmp_path / "s", "--epochs", 1, "-b", 10, "--input-size", 16,
                   "--multiprocessing-distributed", "--dist-url", "tcp://224.66.41.62:23456", "--dist-backend",
                   "nccl", "--world-size", 1, "--rank", 0, "--seed", 3, "--mix-type", "None", "-j", 0)
    for flag, replacement in (("--multiprocessing-distributed", "torchrun"), ("--dist-url", "torchrun"),
                              ("--dist-backend", "gloo"), ("--world-size", "WORLD_SIZE"), ("--rank", "RANK"),
                              ("--seed", "--fkd-seed")):
        note = [line for line in proc.stderr.splitlines() if line.startswith(f"note: {flag} ")]
        assert note and replacement in note[0], (flag, proc.stderr)
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["mix_type"] == "none"


def test_ensemble_labels_are_the_rule_applied_to_each_teacher_on_the_student_pixels(demo_data, teacher_ckpt, tmp_path):
    """Two teachers with different normalizations, normmean: the stored label equals the rule
    applied to each teacher's logits on the replayed pixels, each in its own normalization."""
    other = mlpnet_teacher(tmp_path / "other.pth", 2, mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    store = tmp_path / "store"
    relabel(demo_data / "ipc2", f"{teacher_ckpt},{other}", store, "--teachers", "democnn_small,mlpnet",
            "--ensemble", "normmean", "--epochs", 2, "-b", 8, "--input-size", 24, "--mix-type", "cutmix", "-j", 0)
    m = json.loads((store / "manifest.json").read_text())
    assert m["ensemble"] == "normmean" and [t["mean"] for t in m["teachers"]] == [[0.5, 0.4, 0.3], [0.1, 0.2, 0.3]]
    assert (m["epochs"], m["batches_per_epoch"]) == (2, 3)
    assert_labels_are_the_rule(store, demo_data / "ipc2", [teacher_ckpt, other], "normmean")
