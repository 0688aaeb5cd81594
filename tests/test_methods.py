"""The label-enhancement recipes of scripts/bench_methods.py, each run end to end (--quick)."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import sys


from tests.conftest import ROOT, run_script

RECIPES = ["vanilla", "ls", "kd", "sl", "sl-ens", "sl-kd", "wsld"]
CELL = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+)$")


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "scripts" / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_methods"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_recipe_runs_end_to_end_in_quick_mode(demo_data, tmp_path):
    work = tmp_path / "work"
    proc = run_script("scripts/bench_methods.py", "--quick", "--work", work, "--data", demo_data, timeout=900)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in proc.stdout.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in RECIPES}
    assert sorted(rows) == sorted(RECIPES), proc.stdout
    for name, cells in rows.items():
        assert len(cells) == 6, (name, cells)  # top-1, ECE, confidence - accuracy for each of 2 settings
        for k, cell in enumerate(cells):
            if k % 3 == 2:
                assert math.isfinite(float(cell)) and abs(float(cell)) <= 100, (name, cell)
                continue
            m = CELL.match(cell)
            assert m, (name, cell)
            assert math.isfinite(float(m.group(1))) and 0 <= float(m.group(1)) <= 100, (name, cell)
    summary = json.loads((work / "summary.json").read_text())
    assert sorted(summary["cells"]) == sorted(f"{s}/{r}" for s in ("train", "ipc2") for r in RECIPES)
    for cell in summary["cells"].values():
        values = cell["top1"] + cell["ece"] + cell["overconfidence"]
        assert len(cell["top1"]) == 1 and all(math.isfinite(v) for v in values)
    assert set(summary["teachers"]) == {"r32", "r44"}
    assert (work / "methods.png").stat().st_size > 1000
    # each recipe really used its labels: online teacher, stores (an ensemble for sl-ens), losses
    logs = work / "logs"
    assert "--teacher resnet32" in (logs / "train-kd-s0.log").read_text()
    assert "--loss-type wsld" in (logs / "ipc2-wsld-s0.log").read_text()
    assert "--ensemble mean" in (logs / "ipc2-store-ens-s0.log").read_text()
    assert "soft (kd) labels" in (logs / "ipc2-sl-kd-s0.log").read_text()
    assert "ls 0.1" in (logs / "train-ls-s0.log").read_text()
    # a second run reuses every teacher, store and student
    again = run_script("scripts/bench_methods.py", "--quick", "--work", work, "--data", demo_data, timeout=300)
    assert "0 runs executed now" in again.stdout, again.stdout
    assert "20 taken from" in again.stdout, again.stdout


def test_recipes_are_documented_and_readme_markers_respected(tmp_path):
    bench = bench_module()
    assert [r.name for r in bench.RECIPES] == RECIPES
    text = bench.recipe_table()
    for name in RECIPES:
        assert f"  {name} " in text
    assert "--loss-type kd -T 4 --alpha 0.9" in text and "--ensemble mean" in text
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    assert not bench.write_readme("| table |", str(readme))
    assert readme.read_text() == "intro\n"
    readme.write_text(f"intro\n{bench.MARK_START}\nold\n{bench.MARK_END}\nrest\n")
    assert bench.write_readme("| table |", str(readme))
    assert readme.read_text() == f"intro\n{bench.MARK_START}\n| table |\n{bench.MARK_END}\nrest\n"


def test_unknown_recipe_is_one_error_line(tmp_path):
    proc = run_script("scripts/bench_methods.py", "--quick", "--work", tmp_path, "--recipes", "vanilla,mixup",
                      check=False)
    assert proc.returncode == 2 and "unknown mixup" in proc.stderr and "Traceback" not in proc.stderr
