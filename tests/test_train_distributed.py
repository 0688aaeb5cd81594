"""The trainer split across torchrun ranks (DDP, gloo on CPU) or into micro-batches (gradient
accumulation): the same weights and the same reported loss as one process taking one step.
(Killed and resumed runs: test_faults.py; every loss through the trainer: test_losses.py.)"""
from __future__ import annotations

import json

import pytest
import torch
from conftest import run_script

TRAIN = "validate/train_FKD_parallel.py"


def train(*args, check=True, nproc=0):
    return run_script(TRAIN, *args, "--no-progress", check=check, nproc=nproc)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


def assert_same_weights(a, b) -> None:
    """Equal up to float rounding (the sums are taken in another order)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
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
    assert_same_weights(tmp_path / "one", tmp_path / "ranks")
    assert_same_weights(tmp_path / "one", tmp_path / "accum")
    # and the loss is reported the same: a mean over the global batch
    losses = [json.loads((tmp_path / r / "metrics.jsonl").read_text().splitlines()[-1])["train_loss"]
              for r in ("one", "ranks", "accum")]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5) and losses[2] == pytest.approx(losses[0], rel=1e-5)
