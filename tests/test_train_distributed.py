"""The trainer split across torchrun ranks (DDP, gloo on CPU) or into micro-batches (gradient
accumulation): the same weights and the same reported loss as one process taking one step.
(Killed and resumed runs: test_faults.py; every loss through the trainer: test_losses.py.)"""
from __future__ import annotations

import json

import torch
from conftest import run_script
from rounding import assert_same_weights as same_up_to_rounding
from rounding import between_orders, kl_magnitude

TRAIN = "validate/train_FKD_parallel.py"


def train(*args, check=True, nproc=0):
    return run_script(TRAIN, *args, "--no-progress", check=check, nproc=nproc)


def weights(run) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


# cutmix_store: 20 images of 10 classes, batches of 8 (3 steps an epoch), 3 epochs
CLASSES, BATCH, STEPS = 10, 8, 9
# roundings along the widest sum of an mlpnet weight: its fan-in (3 x 64 pooled pixels, each a
# mean of 9), the batch, momentum and the update at every step, and 32 for the element-wise
# operations of the loss and its gradient
WEIGHT_DEPTH = 3 * 64 + 9 + BATCH + 2 * STEPS + 32
# roundings of one loss term: its two log-softmaxes (a sum of C exps each), the class sum, the
# batch mean, the mean over the ranks or micro-batches and the epoch's mean over its 3 steps,
# and 12 element-wise operations (division by T, exp, log, difference, product, divisions)
LOSS_DEPTH = 2 * CLASSES + CLASSES + BATCH + 3 + 3 + 12


def assert_same_weights(a, b) -> None:
    """Equal up to float rounding (the sums are taken in another order)."""
    same_up_to_rounding(weights(a), weights(b), WEIGHT_DEPTH)


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
    # the KL sums terms p (log p - log q) whose absolute values add up to at most 2 log C + KL per
    # sample (mlpnet has no batch norm, so nothing but the order of these sums differs)
    tol = between_orders(LOSS_DEPTH, kl_magnitude(CLASSES, losses[0]))
    assert abs(losses[1] - losses[0]) <= tol and abs(losses[2] - losses[0]) <= tol, (losses, tol)


def test_evaluation_is_sharded_over_the_ranks_and_reports_one_process_numbers(demo_data, tmp_path):
    """Each rank evaluates its contiguous share of --val-dir and the counts are summed: the same top-1
    and top-5 as one process (learning rate 0: both evaluate the same weights)."""
    base = ["--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--model", "mlpnet", "--input-size",
            16, "-b", 10, "--epochs", 1, "-j", 0, "--sgd", "-lr", 0, "--val-batch-size", 64]
    train(*base, "--output-dir", tmp_path / "one")
    train(*base, "--output-dir", tmp_path / "ranks", nproc=2)
    one, ranks = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("one", "ranks"))
    assert (ranks["top1"], ranks["top5"]) == (one["top1"], one["top5"])
    # NLL and ECE: sums of 450 per-image float32 terms, in another order on two ranks
    assert abs(ranks["nll"] - one["nll"]) <= between_orders(450 + 32, 450 * (2 * 16 + 3)) / 450
