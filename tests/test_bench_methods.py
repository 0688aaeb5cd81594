"""scripts/bench_methods.py: its label-enhancement recipes, each run end to end (--quick), and the
table and figure it makes of their results. (An unknown recipe: test_bad_inputs.py.)"""
from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
from conftest import ROOT, run_script
from rounding import FLOAT64, between_orders, within
from PIL import Image

RECIPES = ["vanilla", "ls", "kd", "sl", "sl-ens", "sl-kd", "random"]
CELL = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+)$")


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "scripts" / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_methods"] = module  # dataclasses look their module up there
    sys.path.insert(0, str(ROOT / "scripts"))  # as when run: benchlib imports by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


@pytest.mark.slow  # two minutes of CI; each recipe's loss and front-end are tested in test_label_optimization.py
def test_every_recipe_runs_end_to_end_in_quick_mode(demo_data, tmp_path):
    work = tmp_path / "work"
    bench = bench_module()
    proc = run_script("scripts/bench_methods.py", "--quick", "--work", work, "--data", demo_data, timeout=900)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in RECIPES}
    assert sorted(rows) == sorted(RECIPES), proc.stdout
    summary = json.loads((work / "summary.json").read_text())
    assert sorted(summary["cells"]) == sorted(f"{s}/{r}" for s in ("train", "ipc2") for r in RECIPES)
    for name, cells in rows.items():
        assert len(cells) == 6, (name, cells)  # top-1, ECE, confidence - accuracy for each of 2 settings
        for setting, (top1, ece, over) in zip(("train", "ipc2"), (cells[:3], cells[3:])):
            # the table shows what the one seed's run measured: its results.json, and its
            # re-evaluated confidence minus its top-1
            (run,) = [p.parent for p in work.glob(f"{setting}_*/folder/{bench.BY_NAME[name].method}/resnet20*/seed0/"
                                                  f"train/results.json")]
            result = json.loads((run / "results.json").read_text())
            confidence = json.loads((run / "confidence.json").read_text())["confidence"]
            assert 0 <= result["top1"] <= 100 and 0 <= confidence <= 100, (name, setting)
            assert CELL.match(top1) and CELL.match(ece), (name, top1, ece)
            assert (top1, ece) == (f"{result['top1']:.2f} ± 0.00", f"{result['ece']:.2f} ± 0.00"), (name, setting)
            assert over == f"{confidence - result['top1']:+.1f}", (name, setting, over)
            cell = summary["cells"][f"{setting}/{name}"]
            assert (cell["top1"], cell["ece"]) == ([result["top1"]], [result["ece"]]), (name, setting)
            # one float64 difference of percentages (at most 100)
            assert within(cell["overconfidence"], [confidence - result["top1"]], 2, 100.0, FLOAT64), (name, setting)
    assert set(summary["teachers"]) == {"r32", "r44"}
    # the figure: 2 settings x 3 metrics, its height made for the 7 recipes, and not blank
    figure = np.asarray(Image.open(work / "methods.png").convert("RGB"))
    assert figure.shape == (round((2.2 + 0.35 * 7 * 2) * 110), 12 * 110, 3)
    assert len(np.unique(figure.reshape(-1, 3), axis=0)) > 50 and (figure < 128).any()
    # each recipe is the front-end's method, with the study's optimizer and its teachers
    logs = work / "logs"
    kd = (logs / "train-kd-s0.log").read_text()
    assert "--method KD" in kd and "--smart_model resnet32" in kd and "--loss-type lo_kd" in kd
    assert "--lr 0.1 --wd 5e-4" in kd and "--sgd" in kd and "--lr-schedule multistep" in kd
    assert "--teachers resnet32,resnet44 --teacher-path" in (logs / "ipc2-sl-ens-s0.log").read_text()
    assert "--loss-type lo_sl_gt" in (logs / "ipc2-sl-kd-s0.log").read_text()
    assert "random_resnet44_s0.pth" in (logs / "ipc2-random-s0.log").read_text()
    assert "ls 0.1" in (logs / "train-ls-s0.log").read_text()
    # a second run reuses every teacher, store and student
    again = run_script("scripts/bench_methods.py", "--quick", "--work", work, "--data", demo_data, timeout=300)
    assert "0 runs executed now" in again.stdout, again.stdout
    assert "16 taken from" in again.stdout, again.stdout


def test_recipes_are_documented_and_readme_markers_respected(tmp_path):
    bench = bench_module()
    assert [r.name for r in bench.RECIPES] == RECIPES
    text = bench.recipe_table()
    for name in RECIPES:
        assert f"  {name} " in text
    assert "--loss-type lo_kd" in text and "--smart_model resnet32,resnet44" in text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    marks = (bench.MARK_START, bench.MARK_END)
    assert not bench.write_readme("| table |", str(readme), *marks)
    assert readme.read_text() == "intro\n"
    readme.write_text(f"intro\n{bench.MARK_START}\nold\n{bench.MARK_END}\nrest\n")
    assert bench.write_readme("| table |", str(readme), *marks)
    assert readme.read_text() == f"intro\n{bench.MARK_START}\n| table |\n{bench.MARK_END}\nrest\n"


@pytest.mark.slow  # about two minutes: 13 runs; each distiller is tested end to end in test_distillers.py
def test_the_distiller_table_runs_end_to_end_in_quick_mode(demo_data, tmp_path):
    proc = run_script("scripts/bench_distillers.py", "--quick", "--work", tmp_path / "work", "--data", demo_data,
                      timeout=900)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert list(rows)[1:] == ["vanilla", "kd", "fitnet", "at", "sp", "vid", "rkd", "pkt", "ab", "ft", "crd", "kdss"]
    top1 = json.loads((tmp_path / "work" / "distillers.json").read_text())["top1"]
    for name, (acc, gap, seed_gap) in list(rows.items())[1:]:
        # the table prints 2 decimals: half a unit of the last one, and the float64 subtraction
        printed = 0.005 + between_orders(4, 100.0, FLOAT64)
        assert CELL.match(acc) and abs(float(acc.split(" ± ")[0]) - top1[name][0]) <= printed
        if name != "vanilla":  # one seed: the gap is this run's top-1 minus vanilla's
            assert abs(float(gap.split(" ± ")[0]) - (top1[name][0] - top1["vanilla"][0])) <= printed
            assert float(seed_gap) > 0
