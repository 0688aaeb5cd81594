"""The trainer (and relabel) called from Python: train_args(**values) gives the flags the command
line gives, checked the same way, and main() returns the run's results."""
from __future__ import annotations

import json

import pytest
from conftest import train_in_process

from softlabel.errors import UserError


def test_train_args_refuses_unknown_names_and_bad_values():
    from softlabel.commands.relabel import relabel_args
    from softlabel.commands.train import train_args
    with pytest.raises(TypeError, match="unexpected keyword argument 'train_dri'; did you mean 'train_dir'"):
        train_args(train_dri="x")
    with pytest.raises(TypeError, match="relabel_args.* 'no_such_flag'"):
        relabel_args(no_such_flag=1)
    for bad, needle in (({"mix_type": "sideways"}, "mix_type: 'sideways' is not one of"),
                        ({"epochs": 1.5}, "epochs: 1.5 is not a valid value"),
                        ({"no_progress": "yes"}, "no_progress: expected true or false"),
                        ({"schedule": 120}, "schedule: expected a list")):
        with pytest.raises(UserError, match=needle):
            train_args(**bad)
    args = train_args(mix_type="None", schedule=(120, 240), learning_rate=1)  # converted as their flags are
    assert (args.mix_type, args.schedule, args.learning_rate) == ("none", [120, 240], 1.0)


def test_keywords_train_as_the_command_line_and_main_returns_the_results(demo_data, tmp_path):
    from softlabel.commands.train import main, train_args
    out = tmp_path / "run"
    train_in_process("--train-dir", demo_data / "ipc1", "--val-dir", demo_data / "ipc1", "--model", "mlpnet",
                     "--epochs", 2, "-b", 10, "--input-size", 16, "--min-scale-crops", 0.5, "--mix-type", "None",
                     "--sgd", "--lr", 0.05, "--weight-decay-norms", "-j", 0, "--no-progress", "--eval-interval", 1,
                     "--output-dir", out)
    from_argv = (out / "args.yaml").read_bytes(), json.loads((out / "results.json").read_text())
    out.rename(tmp_path / "run_argv")  # the same --output-dir again: the lock is released as main returns
    results = main(train_args(train_dir=demo_data / "ipc1", val_dir=demo_data / "ipc1", model="mlpnet", epochs=2,
                              batch_size=10, input_size=16, min_scale_crops=0.5, mix_type="None", sgd=True,
                              learning_rate=0.05, weight_decay_norms=True, workers=0, no_progress=True,
                              eval_interval=1, output_dir=out))
    assert results == json.loads((out / "results.json").read_text())
    assert (out / "args.yaml").read_bytes() == from_argv[0]
    assert (results["top1"], results["train_loss"]) == (from_argv[1]["top1"], from_argv[1]["train_loss"])
    with pytest.raises(UserError, match="already finished epoch 2"):  # not "another run is training" here
        main(train_args(config=out / "args.yaml", resume="auto"))
