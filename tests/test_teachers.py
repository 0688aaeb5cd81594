"""Teachers: ensemble rules, published weights from local caches only (a missing one: test_bad_inputs.py),
class maps, and the checks of their accuracy (chance-level warning, --min-teacher-acc, --evaluate)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, relabel, run_script, script_env
from rounding import within

from softlabel import classmap
from softlabel.ensemble import combine
from softlabel.errors import UserError
from softlabel.models import create_model
from softlabel.teachers import file_sha256

# ----------------------------------------------------------------------------- ensemble rules


def test_mean_rule():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert torch.equal(combine([a, b], "mean"), torch.tensor([[2.0, 1.0], [2.0, 2.0]]))  # exact in binary


def test_normmean_rule_by_hand():
    # Frobenius norms 5 and 10, mean 7.5: a is scaled by 1.5, b by 0.75, then averaged.
    a = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    expected = (a * 1.5 + b * 0.75) / 2
    assert torch.equal(expected, torch.tensor([[2.25, 3.0], [2.25, 3.0]]))  # exact in binary
    # norms of 4 squares, their mean, a ratio, a product and a mean of 2
    assert within(combine([a, b], "normmean"), expected, 4 + 2 + 6, expected.abs())


def test_primary_weighted_rule_by_hand():
    t1 = torch.tensor([[4.0, 0.0], [0.0, 2.0]])
    t2 = torch.tensor([[0.0, 4.0], [2.0, 0.0]])
    t3 = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    # weights 0.5, 0.25, 0.25 -> rows [2, 1] and [1, 1.5]
    combined = torch.tensor([[2.0, 1.0], [1.0, 1.5]])
    norms = torch.tensor([5.0 ** 0.5, 3.25 ** 0.5])
    expected = combined * (norms.mean() / norms)[:, None]
    out = combine([t1, t2, t3], "primary-weighted", 0.5)
    # a weighted sum of 3, a norm of 2 squares, their mean of 2, a ratio and a product (each side)
    assert within(out, expected, 3 + 3 + 2 + 6, expected.abs())
    assert within(out.norm(dim=1), torch.full((2,), float(norms.mean())), 3 + 3 + 2 + 6 + 3, out.norm(dim=1))
    # another primary weight moves the mix
    w = combine([t1, t2, t3], "primary-weighted", 0.8)
    assert float(w[0, 0]) > float(out[0, 0])


def test_one_teacher_is_passed_through_unless_the_rule_rescales():
    a = torch.randn(3, 5)
    for rule in ("mean", "normmean"):
        assert torch.equal(combine([a], rule), a)
    # PRISM r50/r101 rescale even one candidate's logits (tests/test_upstream_commands.py)
    norms = a.norm(dim=1)
    rescaled = combine([a], "primary-weighted").norm(dim=1)  # norms of 5 squares, their mean of 3, a ratio
    assert within(rescaled, torch.full((3,), float(norms.mean())), 2 * (5 + 3 + 3) + 3, rescaled)


# ----------------------------------------------------------------------------- weight caches

def fake_torchvision_cache(torch_home: Path, names: list[str], weights: str = "IMAGENET1K_V1") -> None:
    """Random weights under the file names of torchvision's published weights ``weights``."""
    import torchvision.models
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        url = torchvision.models.get_model_weights(name)[weights].url
        torch.manual_seed(0)
        torch.save(create_model(name, 1000, "torchvision").state_dict(), folder / os.path.basename(url))


def fake_timm_cache(hf_home: Path, name: str) -> None:
    """Random weights where the Hugging Face cache keeps timm's published checkpoint."""
    import timm.models
    from safetensors.torch import save_file
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    model = create_model(name, 1000, "timm")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(base / "snapshots" / commit / "model.safetensors"))


def test_preset_with_published_torchvision_weights(demo_data, tmp_path, monkeypatch, capsys):
    """The r18 preset, its first two teachers, weights from a (fake) torch hub cache."""
    fake_torchvision_cache(tmp_path / "torch", ["resnet18", "mobilenet_v2"])
    env = script_env(TORCH_HOME=str(tmp_path / "torch"))
    store = tmp_path / "store"
    proc = run_script("relabel/generate_soft_label_r18.py", "--data", demo_data / "ipc1", "--fkd-path", store,
                      "--candidate-number", 2, "--epochs", 1, "-b", 10, "--input-size", 32, "-j", 0, env=env)
    m = json.loads((store / "manifest.json").read_text())
    assert [t["arch"] for t in m["teachers"]] == ["resnet18", "mobilenet_v2"]
    assert {t["source"] for t in m["teachers"]} == {"torchvision"}
    assert m["ensemble"] == "normmean" and m["mix_type"] == "cutmix" and m["use_fp16"] is True
    assert m["num_classes"] == 1000 and m["class_mapping"] == "identity"
    assert m["teachers"][0]["mean"] == [0.485, 0.456, 0.406]  # from torchvision's weights metadata
    assert "normmean" in proc.stdout
    # Upstream's pretrained=True weights (IMAGENET1K_V1: mobilenet_v2's is not torchvision's DEFAULT,
    # and only V1 files are in the cache), in float32 (no autocast), each file's sha256 recorded.
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    files = [cache / "resnet18-f37072fd.pth", cache / "mobilenet_v2-b0353104.pth"]
    assert [t["weights"] for t in m["teachers"]] == ["IMAGENET1K_V1", "IMAGENET1K_V1"]
    assert [t["weights_sha256"] for t in m["teachers"]] == [file_sha256(str(f)) for f in files]
    assert m["amp"] is None and m["args"]["amp"] == "off"

    # fkd_info shows them, and --verify-weights compares the files with the record
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    info = fkd_info_in_process(monkeypatch, capsys, store, "--verify-weights")
    assert "resnet18 (torchvision, IMAGENET1K_V1, sha256" in info and info.count(": same file:") == 2
    torch.manual_seed(1)
    torch.save(create_model("mobilenet_v2", 1000, "torchvision").state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="1 of 2 teacher file"):
        fkd_info_in_process(monkeypatch, capsys, store, "--verify-weights", f",{tmp_path / 'other.pth'}")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("): ")[1].split(":")[0] for line in lines if re.match(r"teacher \d \S+ \(", line)] == \
        ["same file", "DIFFERENT file"]
    os.replace(tmp_path / "other.pth", files[1])  # the cache's file changed since the store was made
    with pytest.raises(UserError, match="1 of 2 teacher file"):
        fkd_info_in_process(monkeypatch, capsys, store, "--verify-weights")
    assert "teacher 1 mobilenet_v2 (IMAGENET1K_V1): DIFFERENT file" in capsys.readouterr().out


def fkd_info_in_process(monkeypatch, capsys, *args) -> str:
    """scripts/fkd_info.py's main() on these arguments in this process; its output."""
    from softlabel.commands import info
    info.main(info.get_args_parser().parse_args(list(map(str, args))))
    return capsys.readouterr().out


def test_published_weights_by_name_and_their_defaults(tmp_path, monkeypatch):
    """Every preset teacher defaults to IMAGENET1K_V1 (upstream's pretrained=True), whatever
    torchvision's DEFAULT; --teacher-weights names others; a file is --teacher-path's."""
    import torchvision.models
    from softlabel.commands.relabel import get_args_parser, teacher_specs
    from softlabel.commands.relabel_fkd import get_args_parser as fkd_parser
    from softlabel.commands.relabel_fkd import teacher_source
    from softlabel.relabel_presets import PRESETS
    PRESET = PRESETS["r50"]
    from softlabel.models import torchvision_weights
    from softlabel.teachers import load_teacher, weight_names
    for arch in ("resnet18", "resnet50", "resnet101", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5", "resnet34"):
        assert torchvision_weights(arch).name == "IMAGENET1K_V1", arch
    assert torchvision.models.get_model_weights("resnet50").DEFAULT.name == "IMAGENET1K_V2"  # why it matters
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"'resnet50' \(torchvision IMAGENET1K_V1\).*resnet50-0676ba61\.pth"):
        load_teacher("resnet50", None)
    with pytest.raises(UserError, match=r"IMAGENET1K_V2.*resnet50-11ad3fa6\.pth"):
        load_teacher("resnet50", None, weights="DEFAULT")
    args = get_args_parser(PRESET).parse_args(["--teacher-weights", "IMAGENET1K_V2,,", "--candidate-number", "3"])
    assert teacher_specs(args, PRESET)[2] == ["IMAGENET1K_V2", None, None]
    assert weight_names("DEFAULT", ["a", "b"], [None, "b.pth"]) == ["DEFAULT", None]  # one for all: not the file's
    for bad, needle in (("IMAGENET1K_V1,IMAGENET1K_V1", "2 names for 3 teachers"), ("w/x.pth", "--teacher-path")):
        with pytest.raises(UserError, match=needle):
            weight_names(bad, ["a", "b", "c"], [None] * 3)
    with pytest.raises(UserError, match="has weights IMAGENET1K_V1, DEFAULT"):
        torchvision_weights("resnet18", "IMAGENET1K_V2")
    with pytest.raises(UserError, match="leave its --teacher-weights item empty"):
        load_teacher("resnet18", "t.pth", weights="IMAGENET1K_V1")
    from softlabel.models import timm_name, timm_tag
    assert timm_name("resnet50", "a1_in1k") == "resnet50.a1_in1k" and timm_tag("resnet50") == "a1_in1k"
    with pytest.raises(UserError, match="already names timm tag 'a1_in1k'"):
        timm_name("resnet50.a1_in1k", "a2_in1k")
    # FKD_SLG: --teacher_source timm by default (timm.create_model(arch, pretrained=True))
    parse = fkd_parser().parse_args
    assert teacher_source(parse(["D", "-a", "resnet50"])) == "timm"
    assert teacher_source(parse(["D", "-a", "mobilenet_v2"])) is None  # timm has no such name: torchvision
    assert teacher_source(parse(["D", "-a", "resnet50", "--teacher_source", "pytorch"])) == "torchvision"
    assert teacher_source(parse(["D", "-a", "resnet50", "--teacher-path", "t.pth"])) is None


def test_older_manifests_without_weight_names_still_match():
    from softlabel.stores.schema import as_recorded_teachers
    old = {"teachers": [{"arch": "resnet18", "weights_sha256": "ab"}], "teacher": {"arch": "r", "weights_sha256": "c"}}
    new = {"teachers": [{"arch": "resnet18", "weights": "IMAGENET1K_V1", "weights_sha256": "ab"}],
           "teacher": {"arch": "r", "weights": None, "weights_sha256": "c"}}
    assert as_recorded_teachers(new, old) == old
    assert as_recorded_teachers(new, new) == new


def test_timm_teacher_from_the_hugging_face_cache(demo_data, tmp_path):
    name = "mobilenetv3_small_050.lamb_in1k"
    fake_timm_cache(tmp_path / "hf", name)
    env = script_env(HF_HOME=str(tmp_path / "hf"))
    store = tmp_path / "store"
    run_script("relabel/generate_soft_label.py", "--data", demo_data / "ipc1", "--teachers", name,
               "--teacher-source", "timm", "--fkd-path", store, "--epochs", 1, "-b", 10, "--input-size", 32,
               "-j", 0, env=env)
    (teacher,) = json.loads((store / "manifest.json").read_text())["teachers"]
    assert teacher["arch"] == name and teacher["source"] == "timm" and teacher["builder"] == "timm"
    assert len(teacher["weights_sha256"]) == 64


# ----------------------------------------------------------------------------- class maps

def test_class_map_resolution(tmp_path):
    classes = ["cat", "dog"]
    assert classmap.resolve(classes, 10, None) == ([0, 1], "identity")
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"cat": 7, "dog": 3}))
    assert classmap.resolve(classes, 10, str(path)) == ([7, 3], "class-map")
    path.write_text(json.dumps({"cat": 7}))
    with pytest.raises(UserError, match="dog"):
        classmap.resolve(classes, 10, str(path))
    path.write_text(json.dumps({"cat": 7, "dog": 10}))
    with pytest.raises(UserError, match="10"):
        classmap.resolve(classes, 10, str(path))
    wnids = ["n01443537", "n01440764"]  # goldfish, tench: ImageNet indices 1 and 0
    assert classmap.resolve(wnids, 1000, None) == ([1, 0], "imagenet-wnid")
    with pytest.raises(UserError, match="n99999999"):
        classmap.resolve(["n99999999"], 1000, None)
    with pytest.raises(UserError, match="--class-map"):
        classmap.resolve([str(i) for i in range(12)], 10, None)


def test_class_map_reaches_the_student(demo_data, teacher_ckpt, tmp_path):
    """Folders numbered differently from the teacher: the map is recorded and the student's
    hard targets and validation labels follow it."""
    mapping = {str(c): (c + 3) % 10 for c in range(10)}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    store = tmp_path / "store"
    relabel(demo_data / "ipc1", teacher_ckpt, store, "--class-map", tmp_path / "map.json", "--epochs", 1,
            "-b", 10, "--input-size", 16, "-j", 0)
    m = json.loads((store / "manifest.json").read_text())
    assert m["class_to_index"] == mapping and m["class_mapping"] == "class-map"
    from softlabel.data import scan_image_folder
    from softlabel.loader import StoreBatches
    from softlabel.stores.batch import Reader
    index = scan_image_folder(str(demo_data / "ipc1"), "--train-dir")
    item = StoreBatches(Reader(str(store), m), index, [(0, 0)])[0]
    folder = torch.tensor([index.samples[k][1] for k in item["index"].tolist()])
    assert torch.equal(item["target"], (folder + 3) % 10)


def test_wnid_folders_map_to_imagenet_classes(demo_data, tmp_path):
    data = tmp_path / "wnid"
    wnids = classmap.imagenet_wnids()
    for c in range(10):
        (data / wnids[100 + c]).mkdir(parents=True)
        for src in (demo_data / "ipc1" / str(c)).glob("*.png"):
            (data / wnids[100 + c] / src.name).write_bytes(src.read_bytes())
    torch.manual_seed(0)
    ckpt = tmp_path / "t1000.pth"
    torch.save({"model": create_model("democnn_small", 1000).state_dict(), "arch": "democnn_small"}, ckpt)
    relabel(data, ckpt, tmp_path / "store", "--epochs", 1, "-b", 10, "--input-size", 16, "-j", 0)
    m = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert m["class_mapping"] == "imagenet-wnid"
    assert [m["class_to_index"][w] for w in sorted(m["class_to_index"])] == list(range(100, 110))


# ----------------------------------------------------------------------------- accuracy checks

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
