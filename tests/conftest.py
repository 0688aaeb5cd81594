"""Shared fixtures: the demo data, a teacher checkpoint and small stores, built once per
test session by the real scripts, exactly as a user runs them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def script_env(**extra: str) -> dict[str, str]:
    """CPU only, no wandb account, and weight caches that hold only what a test puts there."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", WANDB_MODE="disabled", PYTHONHASHSEED="0",
               HF_HUB_OFFLINE="1")
    env.pop("WANDB_API_KEY", None)
    env.update(extra)
    return env


def run_script(script: str, *args, check: bool = True, timeout: int = 600,
               nproc: int = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of our scripts in a fresh interpreter (under torchrun with ``nproc``
    processes, gloo on CPU, a free port picked by --standalone); returns the finished process."""
    env = env or script_env()
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run([*launcher, str(ROOT / script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}"
                             f"\n--- stderr\n{proc.stderr[-3000:]}")
    return proc


def train_in_process(*args) -> None:
    """The trainer's main() on these flags in this process: what the CLI runs, without the start-up
    of a new interpreter (each run's --output-dir must be its own: a run holds its folder's lock)."""
    from softlabel.commands.train import get_args_parser, main
    os.environ["WANDB_MODE"] = "disabled"
    main(get_args_parser().parse_args([str(a) for a in args]))


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """A user mistake: non-zero exit, one error line naming the culprit, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes, but args.yaml: the flags of the command that wrote
    them, paths included, as a manifest's ``args`` (test_relabel checks what it holds)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "args.yaml"}


@pytest.fixture(scope="session", autouse=True)
def empty_weight_caches(tmp_path_factory):
    """Point the torch hub and Hugging Face caches at empty folders: no test may find (or
    fetch) published weights it did not put there itself."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["HF_HOME"] = str(root / "hf")
    yield


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    run_script("scripts/make_demo_data.py", "--out", out, "--ipc", 5)
    return out


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A small random-weight teacher in our checkpoint format (labels need not be good to test
    that they are replayed exactly)."""
    from softlabel.models import create_model
    torch.manual_seed(0)
    model = create_model("democnn_small", 10).eval()
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    torch.save({"model": model.state_dict(), "arch": "democnn_small", "num_classes": 10,
                "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.3]}, path)
    return path


def relabel(data: Path, teacher: Path, store: Path, *extra, check: bool = True) -> subprocess.CompletedProcess:
    return run_script("relabel/generate_soft_label.py", "--data", data, "--teacher-path", teacher,
                      "--fkd-path", store, *extra, check=check)


# A store exercising the awkward cases: a short last batch (20 = 8 + 8 + 4), crops resized
# to a size unlike the images' (24 from 32), cutmix and fp16 labels.
STORE_ARGS = ("--epochs", 3, "-b", 8, "--input-size", 24, "--min-scale-crops", 0.3,
              "--mix-type", "cutmix", "--use-fp16", "-j", 0)


@pytest.fixture(scope="session")
def cutmix_store(demo_data, teacher_ckpt, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("stores") / "cutmix"
    relabel(demo_data / "ipc2", teacher_ckpt, store, *STORE_ARGS)
    return store


@pytest.fixture(scope="session")
def mixup_store(demo_data, teacher_ckpt, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("stores") / "mixup"
    relabel(demo_data / "ipc2", teacher_ckpt, store, "--epochs", 2, "-b", 6, "--input-size", 40,
            "--mix-type", "mixup", "-j", 0)
    return store
