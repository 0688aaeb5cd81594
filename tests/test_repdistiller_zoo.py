"""RepDistiller's CIFAR model zoo (softlabel/zoo) and its teacher files."""
from __future__ import annotations

import argparse
import os

import pytest
import torch
from torch import nn

from softlabel import zoo
from softlabel.distill.features import FeatureTap, stage_modules
from softlabel.errors import UserError
from softlabel.models import create_model, default_normalization, model_source
from softlabel.teachers import load_teacher

# Per model at 100 classes, as RepDistiller builds it (models/resnet.py, resnetv2.py, wrn.py,
# vgg.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py of HobbitLong/RepDistiller): parameter
# count, number of state_dict entries, a few entries' shapes, and the shape of each stage feature
# its forward(is_feat=True) returns (features[1:-1]) for a 32x32 input.
R56 = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
VGG = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
RESNET_B = {"layer2.0.downsample.0.weight": (32, 16, 1, 1), "fc.weight": (100, 64)}
REFERENCE = {
    "resnet8_b": (83892, 56, RESNET_B, R56),
    "resnet14_b": (181108, 92, RESNET_B, R56),
    "resnet20_b": (278324, 128, RESNET_B, R56),
    "resnet32_b": (472756, 200, RESNET_B, R56),
    "resnet44_b": (667188, 272, RESNET_B, R56),
    "resnet56_b": (861620, 344, RESNET_B, R56),
    "resnet110_b": (1736564, 668, RESNET_B, R56),
    "resnet8x4": (1233540, 62, {"layer1.0.downsample.0.weight": (64, 32, 1, 1), "fc.weight": (100, 256)},
                  [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "resnet32x4": (7433860, 206, {"layer1.0.downsample.0.weight": (64, 32, 1, 1), "fc.weight": (100, 256)},
                   [(64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "ResNet18": (11220132, 122, {"layer2.0.shortcut.0.weight": (128, 64, 1, 1), "linear.weight": (100, 512)},
                 [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    "ResNet34": (21328292, 218, {"layer2.0.shortcut.0.weight": (128, 64, 1, 1), "linear.weight": (100, 512)},
                 [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]),
    "ResNet50": (23705252, 320, {"layer1.0.shortcut.0.weight": (256, 64, 1, 1), "linear.weight": (100, 2048)},
                 [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]),
    "wrn_16_1": (180916, 82, {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 64)}, R56),
    "wrn_16_2": (703284, 83, {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 128)},
                 [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn_40_1": (569780, 226, {"block2.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 64)}, R56),
    "wrn_40_2": (2255156, 227, {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "fc.weight": (100, 128)},
                 [(32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "vgg8_cifar": (3965028, 37, {"block1.0.bias": (128,), "classifier.weight": (100, 512)}, VGG),
    "vgg11_cifar": (9277284, 58, {"block2.3.weight": (256, 256, 3, 3), "classifier.weight": (100, 512)}, VGG),
    "vgg13_cifar": (9462180, 72, {"block0.4.running_var": (64,), "classifier.weight": (100, 512)}, VGG),
    "vgg16_cifar": (14774436, 93, {"block4.6.weight": (512, 512, 3, 3), "classifier.weight": (100, 512)}, VGG),
    "vgg19_cifar": (20086692, 114, {"block3.10.bias": (512,), "classifier.weight": (100, 512)}, VGG),
    "MobileNetV2": (812836, 320, {"blocks.6.0.conv.6.weight": (160, 480, 1, 1), "classifier.0.weight": (100, 1280)},
                    [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
    "ShuffleV1": (949258, 296, {"layer1.0.conv1.weight": (54, 24, 1, 1), "linear.weight": (100, 960)},
                  [(240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    "ShuffleV2": (1355528, 338, {"layer1.0.conv5.weight": (58, 58, 1, 1), "linear.weight": (100, 1024)},
                  [(116, 16, 16), (232, 8, 8), (464, 4, 4)]),
}


def test_the_zoo_is_repdistillers_model_dict():
    assert set(REFERENCE) == set(zoo.MODELS)
    rd_names = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4",
                "resnet32x4", "ResNet50", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13",
                "vgg16", "vgg19", "MobileNetV2", "ShuffleV1", "ShuffleV2"]
    assert all(zoo.from_repdistiller(n) in REFERENCE for n in rd_names)
    # ours and torchvision's keep their names: the option-A CIFAR ResNets, the ImageNet VGGs and ResNets
    assert "downsample" not in str(list(create_model("resnet20", 10).state_dict()))
    assert [model_source(n) for n in ("resnet20", "vgg13", "resnet50", "ResNet50")] == \
           ["local", "torchvision", "torchvision", "local"]


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_model_has_repdistillers_weights_and_stages(name):
    count, entries, shapes, stages = REFERENCE[name]
    with torch.device("meta"):  # shapes only: the tests below run real forwards of a few of them
        model = create_model(name, 100).eval()
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == count
    assert len(state) == entries
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    modules = stage_modules(model, None)
    named = dict(model.named_modules())
    assert modules == [named[n] for n in model.feature_stages]
    tap = FeatureTap(modules)
    with torch.no_grad():
        assert model(torch.empty(2, 3, 32, 32, device="meta")).shape == (2, 100)
    assert [tuple(f.shape[1:]) for f in tap.take().stages] == stages
    assert default_normalization(name) == ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])


def sgd_state(model: nn.Module, step: bool = False) -> dict:
    """An optimizer state as train_teacher.py saves it: SGD with momentum (``step``: after one
    step, so it holds momentum buffers)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    if step:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        opt.step()
    return opt.state_dict()


def write_repdistiller_file(path: str, model: nn.Module, legacy: bool = False, step: bool = False) -> None:
    """train_teacher.py's ckpt_epoch_N.pth (legacy: torch's pre-1.6 format, as its published files)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    optimizer = sgd_state(model, step)  # first: the file holds the weights after the step
    ckpt = {"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(73.5), "optimizer": optimizer}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_repdistiller_teacher_file_loads_by_its_folder_name(tmp_path, legacy):
    torch.manual_seed(0)
    model = create_model("resnet8x4", 100)
    for m in model.modules():  # running statistics far from a fresh model's
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path / "save" / "models" / "resnet8x4_vanilla" / "ckpt_epoch_240.pth")
    write_repdistiller_file(path, model, legacy, step=True)
    teacher = load_teacher(None, path)
    assert (teacher.arch, teacher.num_classes, teacher.builder) == ("resnet8x4", 100, "local")
    assert (teacher.mean, teacher.std) == ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher.model(x), model.eval()(x))  # the same operations on the same weights


def test_folder_names_as_repdistiller_reads_them(tmp_path):
    cases = {"wrn_40_2_vanilla": "wrn_40_2", "resnet56_cifar100_lr_0.05_decay_0.0005_trial_0": "resnet56_b",
             "vgg13_vanilla": "vgg13_cifar", "ResNet50_vanilla": "ResNet50", "MobileNetV2_vanilla": "MobileNetV2",
             "resnet32x4_vanilla": "resnet32x4", "teachers": None, "resnet50_vanilla": None}
    for folder, arch in cases.items():
        assert zoo.arch_from_folder(os.path.join("save", "models", folder, "ckpt_epoch_240.pth")) == arch, folder


def test_last_file_with_its_flags_loads_safely(tmp_path):
    model = create_model("wrn_16_1", 100)
    path = tmp_path / "wrn_16_1_cifar100_lr_0.05_decay_0.0005_trial_0" / "wrn_16_1_last.pth"
    path.parent.mkdir()
    flags = argparse.Namespace(model="wrn_16_1", dataset="cifar100", lr_decay_epochs=[150, 180, 210])
    torch.save({"opt": flags, "model": model.state_dict(), "optimizer": sgd_state(model)}, path)
    assert load_teacher(None, str(path)).arch == "wrn_16_1"


def one_line_error(*args) -> str:
    with pytest.raises(UserError) as exc:
        load_teacher(*args)
    message = str(exc.value)
    assert "\n" not in message and "unexpected keys" not in message and "missing keys" not in message, message
    return message


def test_option_a_and_option_b_are_told_apart_in_one_line(tmp_path):
    path = str(tmp_path / "resnet20_vanilla" / "ckpt_epoch_240.pth")
    write_repdistiller_file(path, create_model("resnet20_b", 100))
    assert "name the model resnet20_b" in one_line_error("resnet20", path)
    plain = str(tmp_path / "option_a.pth")
    torch.save(create_model("resnet20", 10).state_dict(), plain)
    assert "name the model resnet20" in one_line_error("resnet20_b", plain)
    with pytest.raises(UserError, match="RepDistiller's resnet8 is 'resnet8_b' here"):
        model_source("resnet8")


def test_a_folder_name_that_does_not_fit_says_where_the_model_came_from(tmp_path):
    path = str(tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth")
    write_repdistiller_file(path, create_model("resnet14_b", 100))
    with pytest.raises(UserError, match="its folder's name gives"):
        load_teacher(None, path)
    assert load_teacher("resnet14_b", path).arch == "resnet14_b"  # -a overrides the folder


@pytest.mark.parametrize("name, takes", [("resnet8_b", True), ("vgg8_cifar", True), ("ShuffleV1", True),
                                         ("wrn_16_1", False), ("MobileNetV2", False), ("ShuffleV2", False)])
def test_ab_preactivations_where_hooks_can_take_them(name, takes):
    model = create_model(name, 10).eval()
    try:
        tap = FeatureTap(stage_modules(model, None), preact=True)
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        tap.check_preact(tap.take())
    except UserError:
        assert not takes
    else:
        assert takes
