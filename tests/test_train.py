"""The trainer: store mode end to end, hard-label mode, online distillation and AMP, wandb.
(Refusals: test_bad_inputs.py; losses: test_losses.py; ranks: test_train_distributed.py.)"""
from __future__ import annotations

import json
import time

import torch
from conftest import relabel, run_script

from softlabel import tracking

TRAIN = "validate/train_FKD_parallel.py"


def train(*args, check=True):
    return run_script(TRAIN, *args, "--no-progress", check=check)


def test_trains_from_a_store_end_to_end(cutmix_store, demo_data, tmp_path):
    out = tmp_path / "run"
    proc = train("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", cutmix_store,
                 "--model", "democnn_small", "--loss-type", "kl", "-T", 4, "--cos", "-j", 2,
                 "--eval-interval", 2, "--save-best", "--print-freq", 2, "--output-dir", out)
    assert "soft (kl) labels, epochs 0..3, batch 8, input 24px" in proc.stdout
    assert "since the process started (start-up to the first step " in proc.stdout
    assert [line.split(":")[0] for line in proc.stdout.splitlines() if " step " in line and "loss" in line] == \
        [f"epoch {e} step 2" for e in (1, 2, 3)]  # --print-freq 2: every second of each epoch's 3 steps
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [2, 3]  # every 2 epochs and at the end
    assert rows[-1]["step"] == 9  # 3 epochs x 3 stored batches
    for r in rows:
        assert {"train_loss", "top1", "top5", "nll", "ece", "lr"} <= set(r)
        assert 0 <= r["top1"] <= 100 and r["train_loss"] > 0
        assert min(r["data_wait_s"], r["compute_s"]) >= 0
        assert r["data_wait_s"] + r["compute_s"] <= r["train_s"] + 0.002  # each rounded to 1 ms
        assert f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} | data wait {r['data_wait_s']:.2f}s" in proc.stdout
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 3 and ckpt["arch"] == "democnn_small"
    assert ckpt["mean"] == [0.5, 0.4, 0.3]  # the student uses the teacher's normalization
    results = json.loads((out / "results.json").read_text())
    assert results["top1"] == rows[-1]["top1"] and results["labels"] == "soft (kl)"
    assert results["startup_since"] == "the process started" and results["startup_s"] > 0
    assert abs(results["data_wait_s"] - sum(r["data_wait_s"] for r in rows)) <= 0.01  # the whole run's
    # both numbers, named: PRISM's trainer (this command's upstream) keeps the best top-1
    best = max(rows, key=lambda r: r["top1"])  # the first of equals, as upstream's is_best = top1 > best
    assert (results["top1_last"], results["epoch_last"]) == (rows[-1]["top1"], 3)
    assert (results["top1_best"], results["epoch_best"]) == (best["top1"], best["epoch"])
    assert results["reported"] == {"top1": best["top1"], "epoch": best["epoch"], "which": "best",
                                   "as": "PRISM's train_FKD_parallel.py"}
    assert f"{best['top1']:.2f}% best (epoch {best['epoch']}): PRISM's train_FKD_parallel.py reports the best" in proc.stdout
    assert torch.load(out / "model_best.pth", weights_only=True)["epoch"] == best["epoch"]


def test_throughput_splits_data_wait_from_compute():
    """Time in the loader's next() is data wait, time in the loop's body compute; the first step is
    start-up, not steady state. Only lower bounds: a sleep lasts at least as long as asked."""
    def slow_loader():
        for n in range(3):
            time.sleep(0.02)
            yield n
    speed = tracking.Throughput(tracking.StartUp.of_main())
    for _ in speed.timed(slow_loader()):
        time.sleep(0.01)
        speed.step_done(5)
    speed.epoch_done()
    assert speed.wait >= 0.06 and speed.compute >= 0.03 and speed.images == 10
    times = speed.lap()
    assert times["data_wait_s"] + times["compute_s"] <= times["train_s"] + 0.002
    assert speed.startup() >= 0.03 and speed.rate() > 0
    assert speed.lap() == {"train_s": 0.0, "data_wait_s": 0.0, "compute_s": 0.0}  # nothing since the last lap


def test_worker_count_does_not_change_training(cutmix_store, demo_data, tmp_path):
    states = []
    for workers in (0, 2):
        out = tmp_path / f"j{workers}"
        train("--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model", "democnn_small",
              "--epochs", 2, "-j", workers, "--output-dir", out)
        states.append(torch.load(out / "checkpoint.pth", weights_only=True)["model"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_mse_gt_loss_and_fewer_epochs_than_stored(mixup_store, demo_data, tmp_path):
    out = tmp_path / "run"
    train("--train-dir", demo_data / "ipc2", "--fkd-path", mixup_store, "--model", "mlpnet",
          "--loss-type", "mse_gt", "--ce-weight", 0.5, "--epochs", 1, "-j", 0, "--output-dir", out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 1 and rows[-1]["step"] == 4  # ceil(20 / 6) batches
    assert "top1" not in rows[-1]  # no --val-dir, no accuracy


def test_hard_label_training_and_its_checkpoint_as_a_teacher(demo_data, tmp_path):
    """The demo's chain in miniature: a teacher trained by the trainer relabels a subset and
    a student trains from that store."""
    teacher = tmp_path / "teacher"
    train("--train-dir", demo_data / "ipc5", "--val-dir", demo_data / "val", "--model", "democnn_small",
          "--input-size", 32, "--min-scale-crops", 0.5, "-b", 25, "--epochs", 2, "--label-smoothing", 0.1,
          "--mix-type", "cutmix", "--crop-pct", 1.0, "-j", 0, "--output-dir", teacher)
    results = json.loads((teacher / "results.json").read_text())
    assert results["labels"] == "hard (ls 0.1)" and results["steps"] == 4
    store = tmp_path / "store"
    relabel(demo_data / "ipc1", teacher / "checkpoint.pth", store, "--epochs", 2, "-b", 10,
            "--input-size", 32, "-j", 0)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["teachers"][0]["arch"] == "democnn_small"  # read from the checkpoint, no -a needed
    student = tmp_path / "student"
    train("--train-dir", demo_data / "ipc1", "--val-dir", demo_data / "val", "--fkd-path", store,
          "--model", "democnn_small", "-j", 0, "--output-dir", student)
    assert json.loads((student / "results.json").read_text())["steps"] == 2


def test_wandb_offline_needs_no_key(demo_data, tmp_path):
    out = tmp_path / "run"
    train("--train-dir", demo_data / "ipc1", "--model", "mlpnet", "--input-size", 16, "-b", 10,
          "--epochs", 1, "-j", 0, "--wandb-mode", "offline", "--output-dir", out)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


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


def test_online_crops_padded_and_last_partial_batch_dropped(demo_data, tmp_path):
    """--drop-last (WSLD's loader) leaves out an epoch's short batch; --train-crop padded (RepDistiller's
    RandomCrop(32, padding=4)) keeps the image size; neither applies to a store."""
    from conftest import train_in_process
    from softlabel.errors import UserError
    for drop, steps in ((False, 3), (True, 2)):  # 10 images at -b 4: 4, 4 and 2
        out = tmp_path / f"run{drop}"
        train_in_process("--train-dir", demo_data / "ipc1", "--model", "democnn_small", "--input-size", 32, "-b", 4,
                         "--epochs", 1, "-j", 0, "--train-crop", "padded", *(["--drop-last"] if drop else []),
                         "--output-dir", out, "--no-progress")
        assert json.loads((out / "results.json").read_text())["steps"] == steps
    for flag in (["--train-crop", "padded"], ["--drop-last"]):
        try:
            train_in_process("--train-dir", demo_data / "ipc1", "--fkd-path", tmp_path / "store", *flag,
                             "--output-dir", tmp_path / "r")
        except UserError as exc:
            assert flag[0] in str(exc) and "store" in str(exc)
        else:
            raise AssertionError(f"{flag} with a store was accepted")



def test_evaluation_batch_and_workers_do_not_change_the_numbers(demo_data, tmp_path):
    from conftest import train_in_process
    top1 = []
    for n, extra in enumerate(((), ("--val-batch-size", 7, "--val-workers", 0))):
        out = tmp_path / f"run{n}"
        train_in_process("--train-dir", demo_data / "ipc1", "--val-dir", demo_data / "val", "--model", "mlpnet",
                         "--input-size", 16, "-b", 10, "--epochs", 1, "-j", 0, *extra, "--output-dir", out,
                         "--no-progress")
        top1.append(json.loads((out / "results.json").read_text())["top1"])
    assert top1[0] == top1[1]


def test_args_yaml_reruns_the_run_and_flags_override_a_config(demo_data, tmp_path):
    """Every run writes its flags to args.yaml (timm's habit); --config of it trains the same weights,
    a flag given beside it wins, and a config naming no flag of the command is one line."""
    import yaml

    from softlabel.cli import parse_with_config
    from softlabel.commands import relabel
    from softlabel.commands.train import get_args_parser, main
    from softlabel.errors import UserError
    first = tmp_path / "first"
    main(parse_with_config(get_args_parser(), [
        "--train-dir", str(demo_data / "ipc1"), "--model", "mlpnet", "--input-size", "16", "-b", "5", "--epochs", "1",
        "-j", "0", "--lr-schedule", "cosine", "--mix-type", "cutmix", "--no-progress", "--output-dir", str(first)]))
    written = yaml.safe_load((first / "args.yaml").read_text())
    assert written["mix_type"] == "cutmix" and written["batch_size"] == 5 and "wandb_api_key" not in written
    again = tmp_path / "again"
    main(parse_with_config(get_args_parser(), ["--config", str(first / "args.yaml"), "--output-dir", str(again)]))
    one, two = (torch.load(p / "checkpoint.pth", weights_only=True)["model"] for p in (first, again))
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert yaml.safe_load((again / "args.yaml").read_text()) == written | {"output_dir": str(again)}
    (tmp_path / "bad.yaml").write_text("epochs: 2\nno_such_flag: 1\n")
    try:
        parse_with_config(relabel.get_args_parser(), ["--config", str(tmp_path / "bad.yaml")])
    except UserError as exc:
        assert "'no_such_flag' is not a flag of this command" in str(exc)
    else:
        raise AssertionError("a config key that is no flag was accepted")
    (tmp_path / "relabel.yaml").write_text("mix-type: mixup\nbatch_size: 7\nuse_fp16: true\n")
    args = parse_with_config(relabel.get_args_parser(), ["--config", str(tmp_path / "relabel.yaml"), "-b", "9"])
    assert (args.mix_type, args.batch_size, args.use_fp16) == ("mixup", 9, True)
