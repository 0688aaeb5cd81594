"""The helper scripts a README reader runs: the store figure, the training curves, the results table."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_user_error, run_script
from PIL import Image

RED, BLUE = (255, 60, 60), (60, 160, 255)  # draw_fkd_mix.py's crop box and cutmix box


def script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_only_an_outline_differs(panel: np.ndarray, expected: np.ndarray, color, box) -> int:
    """``panel`` is ``expected`` but for pixels of ``color`` on the border (2 px wide, a pixel of
    rounding either way) of ``box`` = (x0, y0, x1, y1); returns how many pixels differ."""
    rows, cols = np.nonzero((panel != expected).any(axis=2))
    assert (panel[rows, cols] == color).all(), "pixels other than the outline differ"
    x0, y0, x1, y1 = box
    inside = (cols >= x0 - 1) & (cols <= x1 + 1) & (rows >= y0 - 1) & (rows <= y1 + 1)
    on_border = (cols <= x0 + 3) | (cols >= x1 - 3) | (rows <= y0 + 3) | (rows >= y1 - 3)
    assert (inside & on_border).all(), "outline pixels away from the box's border"
    return len(rows)


def test_draw_fkd_mix_draws_the_stored_crops_and_mix(cutmix_store, demo_data, tmp_path):
    """Each row: the original image with the stored crop box in red, and the crop exactly as the
    store's loader renders it for the student (cutmix partner pasted in), its cutmix box in blue."""
    import torchvision

    from softlabel.data import scan_image_folder
    from softlabel.loader import StoreBatches
    from softlabel.stores.batch import Reader
    out = tmp_path / "fig" / "mix.png"
    proc = run_script("scripts/draw_fkd_mix.py", cutmix_store, "--data", demo_data / "ipc2", "--epoch", 1,
                      "--batch", 2, "--samples", 3, "--out", out)
    assert "3 samples of epoch 1 batch 2" in proc.stdout
    cell, text_w = (lambda m: (m.CELL, m.TEXT_W))(script_module("draw_fkd_mix"))
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (3 * (cell + 10) + 10, 2 * cell + text_w + 20, 3)  # 3 rows: --samples 3

    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    size = manifest["input_size"]
    coords, flip, mix_index, lam, (x1, y1, x2, y2), _, index = torch.load(
        cutmix_store / "epoch_1" / "batch_2.tar", weights_only=True)
    item = StoreBatches(Reader(str(cutmix_store), manifest), scan_image_folder(str(demo_data / "ipc2"), "--data"),
                        [(1, 2)])[0]
    pixels = item["pixels"].permute(0, 2, 3, 1).numpy()  # the uint8 crops the student sees, before the mix
    mixed = pixels.copy()
    mixed[:, x1:x2, y1:y2] = pixels[mix_index.numpy(), x1:x2, y1:y2]  # rows x1:x2, columns y1:y2 (upstream)
    files = torchvision.datasets.ImageFolder(str(demo_data / "ipc2")).samples
    f = cell / size
    for r in range(3):
        y = 10 + r * (cell + 10)
        # the original, its stored crop box outlined
        original = Image.open(files[int(index[r])][0]).convert("RGB")
        width, height = original.size
        top, left, h, w = coords[r].tolist()
        box = (round(left * width), round(top * height), round((left + w) * width), round((top + h) * height))
        sx, sy = cell / width, cell / height
        panel = sheet[y:y + cell, 5:5 + cell]
        shown = np.asarray(original.resize((cell, cell), Image.NEAREST))
        outline = (box[0] * sx, box[1] * sy, box[2] * sx - 1, box[3] * sy - 1)
        assert assert_only_an_outline_differs(panel, shown, RED, outline) > 0, r
        # the input the teacher saw and the student sees: crop, flip and cutmix
        panel = sheet[y:y + cell, cell + 10:2 * cell + 10]
        seen = np.asarray(Image.fromarray(mixed[r]).resize((cell, cell), Image.NEAREST))
        drawn = assert_only_an_outline_differs(panel, seen, BLUE, (y1 * f, x1 * f, y2 * f - 1, x2 * f - 1))
        assert drawn > 0 or x1 == x2 or y1 == y2, r
        # and a column of text beside them
        assert (sheet[y:y + cell, 2 * cell + 20:] < 128).any(), r
    proc = run_script("scripts/draw_fkd_mix.py", cutmix_store, "--data", demo_data / "ipc5", "--out", out, check=False)
    assert_user_error(proc, "--data")


def test_draw_fkd_mix_refuses_a_per_image_store_in_one_line(demo_data, tmp_path):
    """A per-image store holds no stored steps to draw: one error, before its manifest is read."""
    from softlabel.errors import UserError
    (tmp_path / "fkd_manifest.json").write_text("{}")
    module = script_module("draw_fkd_mix")
    args = module.get_args_parser().parse_args([str(tmp_path), "--data", str(demo_data / "ipc2")])
    with pytest.raises(UserError, match="per-image labels"):
        module.main(args)


def test_plot_metrics_draws_a_panel_per_metric_and_a_curve_per_run(cutmix_store, demo_data, tmp_path):
    for name, seed in (("a", 0), ("b", 1)):  # two seeds: two different curves
        run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val",
                   "--fkd-path", cutmix_store, "--model", "mlpnet", "--eval-interval", 1, "--seed", seed,
                   "--no-progress", "--output-dir", tmp_path / name)
    proc = run_script("scripts/plot_metrics.py", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "img" / "c.png")
    assert "2 runs, panels top1, train_loss, nll, ece" in proc.stdout
    img = np.asarray(Image.open(tmp_path / "img" / "c.png").convert("RGB"))
    assert img.shape == (352, 4 * 440, 3)  # 4 panels of 4 x 3.2 inches at 110 dpi
    for k in range(4):  # each panel draws both runs, in matplotlib's first two colours
        panel = img[:, k * 440:(k + 1) * 440].astype(int)
        for color in ((31, 119, 180), (255, 127, 14)):
            assert (np.abs(panel - color).sum(axis=2) <= 6).sum() >= 20, (k, color)
    assert_user_error(run_script("scripts/plot_metrics.py", tmp_path / "none", check=False), "metrics.jsonl")


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
