"""The trainer at full strength: torchrun DDP, accumulation, exact resume, every loss, online
distillation, secrets, curves."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, assert_user_error, run_script, script_env

from validate.losses import LOSSES

TRAIN = "validate/train_FKD_parallel.py"


def train(*args, check=True, nproc=0):
    return run_script(TRAIN, *args, "--no-progress", check=check, nproc=nproc)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


def assert_same_weights(a, b, exact: bool) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_two_ranks_and_accumulation_match_one_process(cutmix_store, demo_data, tmp_path):
    """mlpnet has no batch norm: a batch split across 2 ranks (each decoding its slice and its
    cutmix partners) or into 3 micro-batches must give the one-process, one-step weights."""
    base = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet", "--loss-type", "kl",
            "-T", 4, "--cos", "--eval-interval", 100, "--sgd", "-lr", 0.2]  # Adam would amplify rounding
    train(*base, "--output-dir", tmp_path / "one")
    proc = train(*base, "--output-dir", tmp_path / "ranks", nproc=2)
    assert "on 2 ranks" in proc.stdout
    train(*base, "--gradient-accumulation-steps", 3, "--output-dir", tmp_path / "accum")
    assert_same_weights(tmp_path / "one", tmp_path / "ranks", exact=False)
    assert_same_weights(tmp_path / "one", tmp_path / "accum", exact=False)
    # and the loss is reported the same: a mean over the global batch
    losses = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
              for r in ("one", "ranks", "accum")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)


def kill_after_checkpoint(args, out, epoch: int) -> None:
    proc = subprocess.Popen([sys.executable, str(ROOT / TRAIN), *map(str, args), "--output-dir", str(out),
                             "--no-progress"], cwd=ROOT, env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    ckpt, deadline = out / "checkpoint.pth", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if torch.load(ckpt, weights_only=True)["epoch"] >= epoch:
                    break
            except Exception:  # being replaced this very moment: look again
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["epoch"] < int(args[args.index("--epochs") + 1]), "finished too early"


@pytest.mark.parametrize("mode", ["store", "hard"])
def test_killed_then_resumed_ends_with_the_uninterrupted_weights(mode, cutmix_store, demo_data, tmp_path):
    if mode == "store":
        args = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "democnn_small",
                "--epochs", 3, "--loss-type", "dist", "--cos"]
    else:  # random crops, flips, cutmix and batch norm: every source of randomness
        args = ["--train-dir", demo_data / "ipc5", "--model", "democnn_small", "--input-size", 24, "-b", 10,
                "--epochs", 12, "--mix-type", "cutmix", "--label-smoothing", 0.1, "--warmup-epochs", 2]
    train(*args, "--output-dir", tmp_path / "full")
    kill_after_checkpoint(args, tmp_path / "killed", epoch=1)
    proc = train(*args, "--output-dir", tmp_path / "killed", "--resume", "auto")
    assert "epochs 1.." in proc.stdout or "epochs 2.." in proc.stdout or "epochs 3.." in proc.stdout
    assert_same_weights(tmp_path / "full", tmp_path / "killed", exact=True)
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "args", "rng"} <= set(ckpt)


def test_resume_refuses_other_hyperparameters(cutmix_store, demo_data, tmp_path):
    base = ["--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet", "--epochs", 2]
    train(*base, "--output-dir", tmp_path / "run")
    proc = train(*base, "--epochs", 3, "--adamw-lr", 0.01, "--output-dir", tmp_path / "run", "--resume", "auto",
                 check=False)
    assert_user_error(proc, "--resume", "--adamw-lr")
    assert_user_error(train(*base, "--output-dir", tmp_path / "x", "--resume", tmp_path / "none.pth", check=False),
                      "--resume", "none.pth")


def test_every_loss_type_trains(cutmix_store, demo_data, tmp_path):
    for loss in sorted(LOSSES):
        out = tmp_path / loss
        train("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", cutmix_store,
              "--model", "mlpnet", "--loss-type", loss, "--epochs", 1, "--output-dir", out,
              *(["--keep-topk", 3] if loss in ("kl", "wsld") else []))
        result = json.loads((out / "results.json").read_text())
        assert result["labels"] == f"soft ({loss})" and math_ok(result["train_loss"]), loss
        assert {"top1", "top5", "nll", "ece"} <= set(result)
    assert_user_error(train("--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "mlpnet",
                            "--loss-type", "mse_gt", "--keep-topk", 3, "--output-dir", tmp_path / "y", check=False),
                      "--keep-topk", "mse_gt")


def math_ok(x: float) -> bool:
    return x == x and abs(x) < 1e6


def test_online_distillation_and_amp(demo_data, teacher_ckpt, tmp_path):
    out = tmp_path / "kd"
    proc = train("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--model", "mlpnet",
                 "--teacher", "democnn_small", "--teacher-path", teacher_ckpt, "--loss-type", "kl", "--kd-t2",
                 "--input-size", 24, "-b", 10, "--epochs", 2, "--mix-type", "mixup", "--amp", "bf16",
                 "--channels-last", "--output-dir", out)
    assert "online KD from democnn_small (kl)" in proc.stdout
    assert json.loads((out / "results.json").read_text())["steps"] == 4


def test_wandb_key_is_never_written(demo_data, tmp_path):
    out = tmp_path / "run"
    secret = "0123456789abcdef0123456789abcdef01234567"
    train("--train-dir", demo_data / "ipc1", "--model", "mlpnet", "--input-size", 16, "-b", 10, "--epochs", 1,
          "--wandb-mode", "offline", "--wandb-api-key", secret, "--output-dir", out)
    assert list((out / "wandb").glob("offline-run-*"))
    for path in out.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_plot_metrics_draws_runs(cutmix_store, demo_data, tmp_path):
    for name in ("a", "b"):
        train("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", cutmix_store,
              "--model", "mlpnet", "--eval-interval", 1, "--output-dir", tmp_path / name)
    run_script("scripts/plot_metrics.py", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "img" / "c.png")
    from PIL import Image
    assert Image.open(tmp_path / "img" / "c.png").width > 400
    assert_user_error(run_script("scripts/plot_metrics.py", tmp_path / "none", check=False), "metrics.jsonl")
