"""Relabel: the store format, determinism, resume and extension. (Refusals: test_bad_inputs.py;
killed runs: test_faults.py.)"""
from __future__ import annotations

import json

import pytest

import torch
from conftest import ROOT, STORE_ARGS, relabel, run_script, tree_bytes

from softlabel.data import scan_image_folder


def test_batch_files_are_plain_weights_only_lists(cutmix_store):
    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    files = sorted(cutmix_store.glob("epoch_*/batch_*.tar"))
    assert len(files) == manifest["epochs"] * manifest["batches_per_epoch"] == 3 * 3
    sizes = []
    for path in files:
        coords, flip, mix_index, lam, bbox, soft, index = torch.load(path, weights_only=True)
        b = len(index)
        sizes.append(b)
        assert coords.dtype == torch.float32 and coords.shape == (b, 4)
        assert flip.dtype == torch.bool and flip.shape == (b,)
        assert mix_index.dtype == torch.int64 and mix_index.shape == (b,)
        assert isinstance(lam, float) and isinstance(bbox, list) and len(bbox) == 4
        assert soft.dtype == torch.float16 and soft.shape == (b, 10)
        assert index.dtype == torch.int64
        assert float(coords.min()) >= 0 and float(coords.max()) <= 1
    assert sorted(sizes) == [4, 4, 4, 8, 8, 8, 8, 8, 8]  # 20 images in batches of 8


def test_manifest_records_what_a_reader_needs(cutmix_store, demo_data, teacher_ckpt):
    m = json.loads((cutmix_store / "manifest.json").read_text())
    index = scan_image_folder(str(demo_data / "ipc2"), "--data")
    assert m["format_version"] == 1
    assert m["class_names"] == [str(c) for c in range(10)] and m["num_classes"] == 10
    assert (m["batch_size"], m["epochs"], m["batches_per_epoch"], m["num_samples"]) == (8, 3, 3, 20)
    assert (m["input_size"], m["mix_type"], m["use_fp16"], m["fkd_seed"]) == (24, "cutmix", True, 42)
    assert m["dataset_fingerprint"] == index.fingerprint()
    (teacher,) = m["teachers"]
    assert teacher["arch"] == "democnn_small" and teacher["source"] == "private"
    assert m["mean"] == teacher["mean"] == [0.5, 0.4, 0.3]  # the checkpoint's own normalization
    assert len(teacher["weights_sha256"]) == 64
    assert m["args"]["teacher_path"] == str(teacher_ckpt)
    assert {"torch", "torchvision", "numpy", "python"} <= set(m["versions"])


def test_same_seed_gives_identical_files_for_any_worker_count(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    args = list(STORE_ARGS)
    args[args.index("-j") + 1] = 2
    relabel(demo_data / "ipc2", teacher_ckpt, tmp_path / "j2", *args)
    assert tree_bytes(tmp_path / "j2") == tree_bytes(cutmix_store) | {
        "manifest.json": (tmp_path / "j2" / "manifest.json").read_bytes()}
    # the manifests differ only in the arguments that do not change the content
    a = json.loads((tmp_path / "j2" / "manifest.json").read_text())
    b = json.loads((cutmix_store / "manifest.json").read_text())
    diff = {k for k in a["args"] if a["args"][k] != b["args"][k]}
    assert diff == {"workers", "fkd_path"}


def test_two_torchrun_processes_write_the_same_store_as_one(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    store = tmp_path / "ranks2"
    proc = run_script("relabel/generate_soft_label.py", "--data", demo_data / "ipc2", "--teacher-path",
                      teacher_ckpt, "--fkd-path", store, *STORE_ARGS, nproc=2)
    assert "wrote 9 batch files" in proc.stdout
    assert tree_bytes(store) == tree_bytes(cutmix_store) | {"manifest.json": (store / "manifest.json").read_bytes()}


def test_other_seed_gives_other_labels(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    relabel(demo_data / "ipc2", teacher_ckpt, tmp_path / "s7", *STORE_ARGS, "--fkd-seed", 7)
    a = torch.load(tmp_path / "s7" / "epoch_0" / "batch_0.tar", weights_only=True)
    b = torch.load(cutmix_store / "epoch_0" / "batch_0.tar", weights_only=True)
    assert not torch.equal(a[0], b[0])


def test_rerun_skips_finished_files_and_restores_missing_ones(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    store = tmp_path / "store"
    relabel(demo_data / "ipc2", teacher_ckpt, store, *STORE_ARGS)
    (store / "epoch_1" / "batch_2.tar").unlink()
    (store / "epoch_2" / "batch_0.tar").unlink()
    (store / "epoch_0" / ".tmp-999999999-leftover").write_bytes(b"partial")  # a killed writer's file
    proc = relabel(demo_data / "ipc2", teacher_ckpt, store, *STORE_ARGS)
    assert "2 batch files to write, 7 already done" in proc.stdout
    assert "since the process started (start-up to the first batch " in proc.stdout
    assert tree_bytes(store) == tree_bytes(cutmix_store) | {"manifest.json": (store / "manifest.json").read_bytes()}


def test_more_epochs_extend_a_store(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    store = tmp_path / "store"
    args = list(STORE_ARGS)
    relabel(demo_data / "ipc2", teacher_ckpt, store, *args)
    args[args.index("--epochs") + 1] = 4
    proc = relabel(demo_data / "ipc2", teacher_ckpt, store, *args)
    assert "3 batch files to write, 9 already done" in proc.stdout
    assert json.loads((store / "manifest.json").read_text())["epochs"] == 4
    assert (store / "epoch_0" / "batch_0.tar").read_bytes() == (cutmix_store / "epoch_0" / "batch_0.tar").read_bytes()


def test_relabel_flags_are_resolved_once_into_a_frozen_config():
    """Both relabel commands read their settings from one immutable object once the machine- and
    data-dependent defaults are in: no later step can change what the manifest recorded."""
    import argparse
    import dataclasses

    from softlabel.cli import freeze
    cfg = freeze(argparse.Namespace(workers=None, epochs=3), "RelabelConfig", workers=2)
    assert (cfg.workers, cfg.epochs) == (2, 3) and type(cfg).__name__ == "RelabelConfig"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4
    with pytest.raises(ValueError):
        freeze(argparse.Namespace(workers=None), "RelabelConfig", teachers=["resnet18"])  # not a flag
    for module in ("relabel", "relabel_fkd"):
        source = (ROOT / "softlabel" / "commands" / f"{module}.py").read_text()
        assert "freeze(args," in source and "setattr(args" not in source and "args.workers =" not in source


@pytest.mark.parametrize("command", ["relabel", "relabel_fkd"])
def test_a_stores_args_yaml_reruns_it_without_its_workers(command, demo_data, teacher_ckpt, tmp_path, capsys):
    """Both relabel commands write their flags (less -j, which changes no file) into the store as
    args.yaml; --config of it remakes the same files elsewhere, and into the store itself resumes
    it with nothing to write (in this process too: a command releases its store's lock on return)."""
    import yaml

    from softlabel.cli import parse_with_config
    from softlabel.commands import relabel as batch_relabel
    from softlabel.commands import relabel_fkd
    module = batch_relabel if command == "relabel" else relabel_fkd
    out = "--fkd-path" if command == "relabel" else "--save_path"
    first, again = tmp_path / "first", tmp_path / "again"
    argv = (["--data", str(demo_data / "ipc1"), "--epochs", "1", "-b", "10", "--input-size", "16"]
            if command == "relabel" else [str(demo_data / "ipc1"), "--num_crops", "2", "--input_size", "16"])
    argv += ["--teacher-path", str(teacher_ckpt), "--device", "cpu", "-j", "0"]

    def run(*given: str) -> str:
        module.main(parse_with_config(module.get_args_parser(), list(given)))
        return capsys.readouterr().out
    run(*argv, out, str(first))
    written = yaml.safe_load((first / "args.yaml").read_text())
    assert "workers" not in written and written[out.strip("-").replace("-", "_")] == str(first)
    run("--config", str(first / "args.yaml"), out, str(again))
    made = tree_bytes(first)
    if command == "relabel":  # its manifest records the run's arguments, the store's path among them
        assert {k: v for k, v in tree_bytes(again).items() if k != "manifest.json"} == {
            k: v for k, v in made.items() if k != "manifest.json"}
    else:
        assert tree_bytes(again) == made
    said = run("--config", str(first / "args.yaml"), "-j", "1")
    assert (" 0 batch files to write" if command == "relabel" else "0 files to write") in said
    assert tree_bytes(first) == made and yaml.safe_load((first / "args.yaml").read_text()) == written
