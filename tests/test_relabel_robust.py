"""Relabel under stress: killed and rerun, two runs on one store, presets, teacher checks,
ensembles replayed exactly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, assert_user_error, relabel, run_script, script_env, tree_bytes

from softlabel.ensemble import combine
from softlabel.models import create_model

LONG_RUN = ("--epochs", 24, "-b", 5, "--input-size", 16, "--mix-type", "mixup", "-j", 0, "--print-freq", 100)


def start_relabel(data, teacher, store, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "relabel" / "generate_soft_label.py"), "--data", str(data),
                             "--teacher-path", str(teacher), "--fkd-path", str(store), *map(str, args)],
                            cwd=ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_files(store, count: int, proc: subprocess.Popen, timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = len(list(store.glob("epoch_*/batch_*.tar")))
        if n >= count or proc.poll() is not None:
            return n
        time.sleep(0.01)
    raise AssertionError(f"no {count} files after {timeout}s")


def content(store) -> dict[str, bytes]:
    """Everything but the manifest's record of the command line (its --fkd-path differs)."""
    files = tree_bytes(store)
    manifest = json.loads(files.pop("manifest.json"))
    manifest.pop("args")
    files["manifest"] = json.dumps(manifest, sort_keys=True).encode()
    return files


@pytest.fixture(scope="module")
def long_reference(demo_data, teacher_ckpt, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "store"
    relabel(demo_data / "ipc5", teacher_ckpt, store, *LONG_RUN)
    return store


def test_killed_at_any_moment_then_rerun_gives_the_identical_store(demo_data, teacher_ckpt, long_reference, tmp_path):
    store = tmp_path / "store"
    total = len(list(long_reference.glob("epoch_*/batch_*.tar")))
    assert total == 240
    killed_at = []
    for target in (1, 90, 200):  # early, mid-run, near the end
        proc = start_relabel(demo_data / "ipc5", teacher_ckpt, store, *LONG_RUN)
        killed_at.append(wait_for_files(store, target, proc))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for path in store.glob("epoch_*/batch_*.tar"):  # no partial file under a final name
            assert len(torch.load(path, weights_only=True)) == 7, path
    assert killed_at[-1] < total, "the run finished before it could be killed; make LONG_RUN longer"
    proc = relabel(demo_data / "ipc5", teacher_ckpt, store, *LONG_RUN)
    assert "already done" in proc.stdout
    assert content(store) == content(long_reference)
    assert not [p for p in store.rglob(".tmp-*")]


def test_a_second_run_on_the_same_store_is_refused(demo_data, teacher_ckpt, tmp_path):
    store = tmp_path / "store"
    run = ("--epochs", 8, "-b", 5, "--input-size", 16, "-j", 0, "--print-freq", 1000)  # 80 files
    first = start_relabel(demo_data / "ipc5", teacher_ckpt, store, *run)
    wait_for_files(store, 1, first)
    first.send_signal(signal.SIGSTOP)  # holding the lock, mid-run, for as long as the check takes
    try:
        second = relabel(demo_data / "ipc5", teacher_ckpt, store, *run, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert_user_error(second, "--fkd-path", "another run is writing")
    assert "wrote 80 batch files" in first_out  # the refused run wrote none of them
    assert len(list(store.glob("epoch_*/batch_*.tar"))) == 80


def test_presets_show_the_upstream_flags():
    for arch in ("r18", "r50", "r101"):
        out = run_script(f"relabel/generate_soft_label_{arch}.py", "--help").stdout
        for flag in ("--data", "-a ARCH", "--batch-size", "--workers", "--epochs", "--input-size",
                     "--min-scale-crops", "--max-scale-crops", "--fkd-path", "--use-fp16", "--mode",
                     "--fkd-seed", "--mix-type", "--mixup", "--cutmix", "--candidate-number", "--teachers",
                     "--teacher-path", "--teacher-source", "--ensemble", "--primary-weight",
                     "--multiprocessing-distributed", "--dist-url", "--dist-backend", "--world-size",
                     "--rank", "--gpu", "--seed", "--evaluate", "--class-map", "--min-teacher-acc"):
            assert flag in out, (arch, flag)
        assert f"PRISM {arch} preset" in out
    assert "normmean" in (ROOT / "relabel" / "generate_soft_label_r18.py").read_text()
    assert "primary-weighted" in (ROOT / "relabel" / "generate_soft_label_r50.py").read_text()


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


def test_teachers_at_chance_warn_and_min_teacher_acc_stops_before_writing(demo_data, teacher_ckpt, tmp_path):
    # The random-weight teacher of the test suite labels at about chance.
    proc = relabel(demo_data / "ipc5", teacher_ckpt, tmp_path / "warn", "--epochs", 1, "-b", 50, "--input-size", 16,
                   "-j", 0)
    assert "WARNING" in proc.stderr and "class order" in proc.stderr and "--class-map" in proc.stderr
    proc = relabel(demo_data / "ipc5", teacher_ckpt, tmp_path / "stop", "--epochs", 3, "-b", 25, "--input-size", 16,
                   "--min-teacher-acc", 50, "-j", 0, check=False)
    assert_user_error(proc, "--min-teacher-acc 50", "class order")
    assert not list((tmp_path / "stop").glob("epoch_*/batch_*.tar"))


def test_evaluate_reports_each_teacher_and_the_ensemble(demo_data, teacher_ckpt, tmp_path):
    torch.manual_seed(1)
    other = tmp_path / "other.pth"
    torch.save({"model": create_model("mlpnet", 10).state_dict(), "arch": "mlpnet", "num_classes": 10}, other)
    proc = relabel(demo_data / "ipc1", f"{teacher_ckpt},{other}", tmp_path / "s", "--teachers", "democnn_small,mlpnet",
                   "--evaluate", "--val-dir", demo_data / "val", "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    line = [x for x in proc.stdout.splitlines() if x.startswith("evaluate:")][0]
    assert "(450 images)" in line and "ensemble" in line and "democnn_small" in line and "mlpnet" in line
    proc = relabel(demo_data / "ipc1", teacher_ckpt, tmp_path / "s2", "--evaluate", "--epochs", 1, check=False)
    assert_user_error(proc, "--evaluate", "--val-dir")


def test_ensemble_labels_are_the_rule_applied_to_each_teacher_on_the_student_pixels(demo_data, teacher_ckpt, tmp_path):
    """Two teachers with different normalizations, normmean: the stored label equals the rule
    applied to each teacher's logits on the replayed pixels, each in its own normalization."""
    from softlabel import replay
    from softlabel.data import scan_image_folder
    from softlabel.loader import StoreBatches
    from softlabel.teachers import load_teacher
    torch.manual_seed(2)
    other = tmp_path / "other.pth"
    torch.save({"model": create_model("mlpnet", 10).state_dict(), "arch": "mlpnet", "num_classes": 10,
                "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]}, other)
    store = tmp_path / "store"
    relabel(demo_data / "ipc2", f"{teacher_ckpt},{other}", store, "--teachers", "democnn_small,mlpnet",
            "--ensemble", "normmean", "--epochs", 2, "-b", 8, "--input-size", 24, "--mix-type", "cutmix", "-j", 0)
    m = json.loads((store / "manifest.json").read_text())
    assert m["ensemble"] == "normmean" and [t["mean"] for t in m["teachers"]] == [[0.5, 0.4, 0.3], [0.1, 0.2, 0.3]]
    teachers = [load_teacher(None, str(teacher_ckpt)), load_teacher(None, str(other))]
    index = scan_image_folder(str(demo_data / "ipc2"), "--train-dir")
    jobs = [(e, b) for e in range(2) for b in range(3)]
    batches = StoreBatches(str(store), index, m, jobs)
    for i in range(len(jobs)):
        item = batches[i]
        with torch.no_grad():
            outs = [t.model(replay.model_inputs(item["pixels"], t.mean, t.std, item["mix_index"], item["mix_lam"],
                                                item["mix_bbox"])) for t in teachers]
        torch.testing.assert_close(item["soft_label"], combine(outs, "normmean"), rtol=1e-4, atol=1e-4)
