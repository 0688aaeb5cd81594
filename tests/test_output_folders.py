"""A run's output folder belongs to one run: locked while a trainer writes it,
never overwritten by another command, and resumed only on the labels it was trained on."""
from __future__ import annotations

import hashlib

from conftest import assert_user_error, run_script

from softlabel import files

TRAIN = "validate/train_FKD_parallel.py"


def train(data, out, *extra):
    return run_script(TRAIN, "--train-dir", data, "--model", "mlpnet", "--output-dir", out, "--no-progress",
                      "-j", 0, *extra, check=False)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_refuses_other_labels(demo_data, cutmix_store, mixup_store, tmp_path):
    data, out = demo_data / "ipc2", tmp_path / "run"
    first = train(data, out, "--fkd-path", cutmix_store, "--epochs", 1)
    assert first.returncode == 0, first.stderr
    kept = digest(out / "checkpoint.pth")
    for other, needle in ((("--fkd-path", mixup_store), "this run on batch store"),
                          (("--input-size", 24, "-b", 8, "--min-scale-crops", 0.3), "this run on hard labels")):
        proc = train(data, out, *other, "--epochs", 2, "--resume", "auto")
        line = assert_user_error(proc, "--resume", "the checkpoint was trained on batch store", needle)
        assert "could not continue exactly" in line
    assert digest(out / "checkpoint.pth") == kept
    again = train(data, out, "--fkd-path", cutmix_store, "--epochs", 3, "--resume", "auto")
    assert again.returncode == 0, again.stderr


def test_another_command_does_not_overwrite_a_finished_run(demo_data, cutmix_store, tmp_path):
    data, out = demo_data / "ipc2", tmp_path / "run"
    assert train(data, out, "--fkd-path", cutmix_store, "--epochs", 1).returncode == 0
    kept = digest(out / "checkpoint.pth")
    for command in (("--fkd-path", cutmix_store, "--epochs", 1),            # the same run again, no --resume
                    ("--input-size", 24, "-b", 8, "--epochs", 1)):         # another run in its folder
        proc = train(data, out, *command)
        assert_user_error(proc, "--output-dir", "holds the checkpoint of another run", "--resume auto")
    assert digest(out / "checkpoint.pth") == kept


def test_two_trainers_cannot_share_an_output_folder(demo_data, cutmix_store, tmp_path):
    out = tmp_path / "run"
    files.lock_dir(str(out), "--output-dir", "held by this test")   # a trainer already writing there
    proc = train(demo_data / "ipc2", out, "--fkd-path", cutmix_store, "--epochs", 1)
    assert_user_error(proc, "--output-dir", "another run is training into this folder")
    assert not (out / "checkpoint.pth").exists() and not (out / "metrics.jsonl").exists()


CRAFTED = {
    "no scheduler": (lambda c: c.pop("scheduler"), "entry 'scheduler' is missing"),
    "epoch a string": (lambda c: c.__setitem__("epoch", "1"), "entry 'epoch' is missing or not a int"),
    "weights of another shape": (lambda c: c["model"].update({k: v[:1] for k, v in c["model"].items()}),
                                 "its state does not fit this run"),
    "an optimizer of garbage": (lambda c: c.__setitem__("optimizer", {"state": 5, "param_groups": "x"}),
                                "its state does not fit this run"),
}


def test_crafted_resume_checkpoints_are_one_line(demo_data, cutmix_store, tmp_path):
    import torch
    data, out = demo_data / "ipc2", tmp_path / "run"
    assert train(data, out, "--fkd-path", cutmix_store, "--epochs", 1).returncode == 0
    good = torch.load(out / "checkpoint.pth", weights_only=True)
    for name, (spoil, needle) in CRAFTED.items():
        ckpt = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        spoil(ckpt)
        path = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(ckpt, path)
        proc = train(data, tmp_path / name.replace(" ", "_"), "--fkd-path", cutmix_store, "--epochs", 2,
                     "--resume", path)
        assert_user_error(proc, "--resume", needle)
