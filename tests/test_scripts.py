"""The helper scripts a README reader runs."""
from __future__ import annotations

import json

from conftest import assert_user_error, run_script
from PIL import Image


def test_draw_fkd_mix_draws_a_stored_batch(cutmix_store, demo_data, tmp_path):
    out = tmp_path / "fig" / "mix.png"
    run_script("scripts/draw_fkd_mix.py", cutmix_store, "--data", demo_data / "ipc2", "--epoch", 1,
               "--batch", 2, "--samples", 3, "--out", out)
    img = Image.open(out)
    assert img.width > 200 and img.height > 300
    proc = run_script("scripts/draw_fkd_mix.py", cutmix_store, "--data", demo_data / "ipc5", "--out", out, check=False)
    assert_user_error(proc, "--data")


def test_summarize_runs_prints_a_markdown_table(tmp_path):
    for name, top1 in (("a", 91.5), ("b", 60.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(
            {"model": "democnn", "labels": "hard", "train_dir": "/d/ipc2", "steps": 10, "top1": top1}))
    proc = run_script("scripts/summarize_runs.py", tmp_path / "a", tmp_path / "b")
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("| run | student | labels")
    assert "| a | democnn | hard | ipc2 | 10 | 91.5 | - |" in lines
    assert_user_error(run_script("scripts/summarize_runs.py", tmp_path / "none", check=False), "results.json")
