"""Relabel as the upstream commands run it: the presets of the table (their flags, defaults and
ensemble rule; a new entry is tested with no test edit), upstream flags that run with a note, and ensemble labels replayed exactly: the stored label
is the rule applied to each teacher's logits on the pixels the student will see."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import relabel, run_script
from rounding import UNIT, logits_tolerance

from softlabel.commands.relabel import PRISM_RELABEL, parse_command, teacher_specs
from softlabel.ensemble import RESCALING, combine
from softlabel.errors import UserError
from softlabel.models import create_model
from softlabel.relabel_presets import PRESETS, Preset

UPSTREAM_FLAGS = ("--data", "-a ARCH", "--batch-size", "--workers", "--epochs", "--input-size", "--min-scale-crops",
                  "--max-scale-crops", "--fkd-path", "--use-fp16", "--mode", "--fkd-seed", "--mix-type", "--mixup",
                  "--cutmix", "--candidate-number", "--teachers", "--teacher-path", "--teacher-source", "--ensemble",
                  "--primary-weight", "--multiprocessing-distributed", "--dist-url", "--dist-backend",
                  "--world-size", "--rank", "--gpu", "--seed", "--evaluate", "--class-map", "--min-teacher-acc")


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
    from softlabel.loader import StoreBatches
    from softlabel.stores.batch import Reader
    from softlabel.teachers import load_teacher
    m = json.loads((store / "manifest.json").read_text())
    teachers = [load_teacher(None, str(p)) for p in teacher_paths]
    index = scan_image_folder(str(data), "--train-dir")
    jobs = [(e, b) for e in range(m["epochs"]) for b in range(m["batches_per_epoch"])]
    batches = StoreBatches(Reader(str(store), m), index, jobs)
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


def assert_preset_defaults(args, preset: Preset) -> None:
    """What a preset sets: its name, batch size, ensemble rule and teacher family, and PRISM's command."""
    assert (args.preset, args.batch_size, args.ensemble) == (preset.name, preset.batch_size, preset.ensemble)
    assert {k: getattr(args, k) for k in PRISM_RELABEL} == PRISM_RELABEL
    assert teacher_specs(args, preset)[0] == preset.teachers


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_shows_the_upstream_flags_and_sets_its_defaults(name, capsys):
    with pytest.raises(SystemExit) as shown:
        parse_command(["--preset", name, "--help"])
    out = capsys.readouterr().out
    assert shown.value.code == 0 and f"PRISM {name} preset" in out
    for flag in UPSTREAM_FLAGS:
        assert flag in out, flag
    args, preset = parse_command(["--preset", name, "--data", "d"])
    assert preset is PRESETS[name]
    assert_preset_defaults(args, preset)
    assert vars(args) == vars(parse_command(["--data", "d"], name)[0])  # as its own script, if it has one


def test_a_preset_added_to_the_table_is_a_preset_of_the_command(monkeypatch, tmp_path):
    """--preset, and a --config file's preset key, take a preset from the table as it is when parsed."""
    added = Preset("tiny", ["democnn_small", "mlpnet"], "normmean", 7)
    monkeypatch.setitem(PRESETS, added.name, added)
    args, preset = parse_command(["--preset", "tiny", "--data", "d"])
    assert preset is added
    assert_preset_defaults(args, added)
    config = tmp_path / "relabel.yaml"
    config.write_text("preset: tiny\nepochs: 3\n")
    args, preset = parse_command(["--config", str(config), "-b", "9"])
    assert preset is added and (args.preset, args.ensemble, args.epochs, args.batch_size) == ("tiny", "normmean", 3, 9)
    assert parse_command(["--config", str(config), "--preset", "r18"])[1] is PRESETS["r18"]  # the flag wins
    with pytest.raises(UserError, match="this script is the r18 preset"):
        parse_command(["--preset", "tiny"], "r18")


def one_preset_per_rule() -> dict[str, str]:
    """{ensemble rule: the first preset with it}: a run checks the rule and the shared defaults, so
    another preset of the same rule adds nothing that the parse tests above do not check."""
    chosen: dict[str, str] = {}
    for name, preset in PRESETS.items():
        chosen.setdefault(preset.ensemble, name)
    return chosen


def test_presets_run_with_their_rule_and_defaults(demo_data, teacher_ckpt, tmp_path):
    # What the presets do: each relabels with its ensemble rule and the PRISM command's defaults
    # (cutmix, float16 labels, crops of scale 0.25..1), here with two private teachers instead
    # of the ImageNet family. (r18 with published weights, through its own script: test_teachers.py.)
    other = mlpnet_teacher(tmp_path / "other.pth", 1)
    paths = [teacher_ckpt, other]

    def run(name: str):
        return run_script("relabel/generate_soft_label.py", "--preset", name, "--data", demo_data / "ipc1",
                          "--teachers", "democnn_small,mlpnet", "--teacher-path", f"{teacher_ckpt},{other}",
                          "--fkd-path", tmp_path / name, "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each run mostly imports torch, on one core
        runs = {name: pool.submit(run, name) for name in one_preset_per_rule().values()}
        runs = {name: f.result().stdout for name, f in runs.items()}
    for name, out in runs.items():
        rule = PRESETS[name].ensemble
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        assert (m["ensemble"], m["mix_type"], m["use_fp16"]) == (rule, "cutmix", True), name
        assert (m["min_scale_crops"], m["max_scale_crops"]) == (0.25, 1.0), name
        assert [t["arch"] for t in m["teachers"]] == ["democnn_small", "mlpnet"], name
        assert m["args"]["preset"] == name and f"ensemble {rule}" in out, name
        assert_labels_are_the_rule(tmp_path / name, demo_data / "ipc1", paths, rule)


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
