"""Feature-based distillers (softlabel/distill, the trainer's --distiller): each loss against a
value computed by hand on tiny tensors, features taken by hooks at the stages, every method
trained end to end, trained parts optimized, checkpointed and resumed exactly, two gloo ranks."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script

from softlabel import files, models
from softlabel.distill import DISTILLERS, Features, FeatureTap, stage_modules
from softlabel.errors import UserError
from validate.train_FKD_parallel import get_args_parser, main

TRAIN = "validate/train_FKD_parallel.py"


def feats(*shapes, seed=0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features([torch.randn(*s, generator=g) for s in shapes])


def test_attention_transfer_by_hand():
    s, t = feats((2, 3, 2, 2), (2, 2, 1, 1), seed=1), feats((2, 4, 2, 2), (2, 5, 1, 1), seed=2)
    want = 0.0
    for fs, ft in zip(s.stages, t.stages):
        a = [np.asarray((f ** 2).mean(1).reshape(2, -1)) for f in (fs, ft)]
        a = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in a]
        want += float(((a[0] - a[1]) ** 2).mean())
    assert float(DISTILLERS["at"](s, t)(s, t)) == pytest.approx(want, rel=1e-5)


def test_similarity_preserving_by_hand():
    s, t = feats((3, 2, 2, 2), seed=3), feats((3, 5, 1, 1), seed=4)
    g = []
    for f in (s.stages[-1], t.stages[-1]):
        x = np.asarray(f.reshape(3, -1), dtype=np.float64)
        m = x @ x.T
        g.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    want = float(((g[1] - g[0]) ** 2).sum() / 9)
    assert float(DISTILLERS["sp"](s, t)(s, t)) == pytest.approx(want, rel=1e-5)


def test_pkt_by_hand():
    s, t = feats((3, 4, 2, 2), seed=5), feats((3, 6, 2, 2), seed=6)

    def cond(f):
        e = np.asarray(f.mean(axis=(2, 3)), dtype=np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)
    ps, pt = cond(s.stages[-1]), cond(t.stages[-1])
    want = float(np.mean([pt[i, j] * math.log(pt[i, j] / ps[i, j]) for i in range(3) for j in range(3)]))
    assert float(DISTILLERS["pkt"](s, t)(s, t)) == pytest.approx(want, rel=1e-4)


def test_rkd_by_hand():
    s, t = feats((4, 3, 1, 1), seed=7), feats((4, 2, 1, 1), seed=8)

    def smooth_l1(a, b):
        d = np.abs(a - b)
        return float(np.mean(np.where(d < 1, 0.5 * d ** 2, d - 0.5)))

    def parts(f):
        e = np.asarray(f.flatten(1), dtype=np.float64)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(4)] for i in range(4)])
        d = d / d[d > 0].mean()
        ang = []
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    u, v = e[i] - e[j], e[k] - e[j]  # the angle at j between i and k
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    ang.append(0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv)))
        return d, np.array(ang)
    (ds, as_), (dt, at) = parts(s.stages[-1]), parts(t.stages[-1])
    want = 25 * smooth_l1(ds, dt) + 50 * smooth_l1(as_, at)
    assert float(DISTILLERS["rkd"](s, t)(s, t)) == pytest.approx(want, rel=1e-4)


def test_fitnet_regresses_the_second_stage_through_its_regressor():
    s, t = feats((2, 3, 4, 4), (2, 4, 2, 2), seed=9), feats((2, 3, 4, 4), (2, 6, 2, 2), seed=10)
    d = DISTILLERS["fitnet"](s, t).eval()  # batch norm at its initial statistics: x / sqrt(1 + eps)
    conv = d.regressor[0]
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1) and conv.out_channels == 6
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:4, :4, 0, 0] = torch.eye(4)
        conv.bias.zero_()
    x = np.asarray(s.stages[1]).copy()
    pred = np.concatenate([x, np.zeros((2, 2, 2, 2))], 1) / math.sqrt(1 + 1e-5)
    want = float(((np.maximum(pred, 0) - np.asarray(t.stages[1])) ** 2).mean())
    assert float(d(s, t).detach()) == pytest.approx(want, rel=1e-5)
    # a student map twice the teacher's side goes through a stride-2 convolution
    big = feats((2, 3, 4, 4), (2, 4, 4, 4), seed=11)
    assert DISTILLERS["fitnet"](big, t).regressor[0].stride == (2, 2)


def test_vid_is_a_gaussian_negative_log_likelihood_with_trained_variance():
    s, t = feats((2, 3, 2, 2), seed=12), feats((2, 5, 2, 2), seed=13)
    d = DISTILLERS["vid"](s, t)
    with torch.no_grad():
        d.stages[0].regressor[-1].weight.zero_()  # predicted mean 0
    var = 5.0  # softplus(log_scale) + eps at initialization
    want = float(np.mean(0.5 * (np.asarray(t.stages[0]) ** 2 / var + math.log(var))))
    assert float(d(s, t)) == pytest.approx(want, rel=1e-5)
    assert {n for n, _ in d.named_parameters()} >= {"stages.0.log_scale"}


def test_crd_contrasts_against_memory_banks_of_other_classes():
    from softlabel.distill.crd import nce_loss
    x = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    noise = 2 / 50
    want = -sum(math.log(r[0] / (r[0] + noise + 1e-7)) + sum(math.log(noise / (v + noise + 1e-7)) for v in r[1:])
                for r in x.tolist()) / 2
    assert float(nce_loss(x, 50)) == pytest.approx(want, rel=1e-6)
    targets = torch.arange(40) % 4
    s, t = feats((8, 3, 2, 2), seed=14), feats((8, 5, 2, 2), seed=15)
    d = DISTILLERS["crd"](s, t, num_samples=40, targets=targets)
    index = torch.tensor([0, 5, 10, 15, 20, 25, 30, 35])
    neg = d.negatives(index)
    assert neg.shape == (8, 39) and not bool((targets[neg] == targets[index][:, None]).any())  # other classes only
    before = d.memory_s.clone()
    loss = d(s, t, index)
    assert torch.isfinite(loss) and float(d.z[0]) > 0 and float(d.z[1]) > 0  # constants fixed at the first step
    moved = d.memory_s[index]
    assert torch.allclose(moved.norm(dim=1), torch.ones(8))  # the batch's rows moved and renormalized
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(d.memory_s[untouched], before[untouched])
    loss.backward()
    assert d.embed_s.weight.grad is not None and d.embed_t.weight.grad is not None


def test_features_come_from_forward_hooks_at_the_stages():
    for name, n in (("resnet20", 3), ("resnet18", 4)):
        model = models.create_model(name, 10).eval()
        tap = FeatureTap(stage_modules(model, None))
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 32, 32))
        f = tap.take()
        assert len(f.stages) == n and out.shape == (2, 10)
        assert f.embedding.shape == (2, f.stages[-1].shape[1])
        tap.remove()
    with pytest.raises(UserError, match="--feat-layers"):
        stage_modules(models.create_model("mlpnet", 10), None)
    with pytest.raises(UserError, match="no module nope"):
        stage_modules(models.create_model("resnet20", 10), ["layer1", "nope"])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A resnet32 teacher checkpoint (its weights do not matter to the mechanics tested here)."""
    path = tmp_path_factory.mktemp("distill") / "resnet32.pth"
    torch.manual_seed(0)
    torch.save({"model": models.create_model("resnet32", 10).state_dict(), "arch": "resnet32", "num_classes": 10},
               path)
    return path


def train_args(demo_data, teacher, out, *extra) -> list[str]:
    return [str(a) for a in ("--train-dir", demo_data / "ipc2", "--model", "resnet20", "--teacher", "resnet32",
                             "--teacher-path", teacher, "--input-size", 32, "-b", 10, "--epochs", 2, "-j", 0,
                             "--sgd", "-lr", 0.05, "--no-progress", "--output-dir", out, *extra)]


@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_every_distiller_trains_end_to_end(name, demo_data, teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    main(get_args_parser().parse_args(train_args(demo_data, teacher, tmp_path / "run", "--distiller", name)))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert "distiller" in ckpt and ckpt["args"]["distiller"] == name and ckpt["args"]["loss_type"] == "ce"
    assert (tmp_path / "run" / "results.json").is_file()


def test_trained_parts_are_optimized_and_resumed_exactly(demo_data, teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    # runs in this process: each holds its folder's lock until the process ends (tested elsewhere)
    monkeypatch.setattr(files, "lock_dir", lambda *a, **k: None)
    run = lambda out, *extra: main(get_args_parser().parse_args(train_args(  # noqa: E731
        demo_data, teacher, out, "--distiller", "vid", "--lr-schedule", "step", "--lr-step-size", 100, *extra)))
    run(tmp_path / "whole")
    run(tmp_path / "half", "--epochs", 1)
    run(tmp_path / "half", "--resume", "auto")
    a, b = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True) for r in ("whole", "half"))
    for part in ("model", "distiller"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    init = DISTILLERS["vid"](*(feats((2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)),) * 2)
    assert not torch.equal(a["distiller"]["stages.0.log_scale"], init.stages[0].log_scale.detach())  # it trained
    with pytest.raises(UserError, match="distiller"):  # another distiller cannot continue this run
        main(get_args_parser().parse_args(train_args(demo_data, teacher, tmp_path / "whole", "--distiller", "fitnet",
                                                     "--lr-schedule", "step", "--lr-step-size", "100",
                                                     "--resume", "auto")))


def test_a_distiller_with_trained_parts_runs_on_two_ranks(demo_data, teacher, tmp_path):
    """CRD on two gloo ranks: its embeddings train under DDP, and every rank applies every rank's
    memory updates (rank 0's saved banks hold all 20 images' updates, not only its own 10)."""
    proc = run_script(TRAIN, *train_args(demo_data, teacher, tmp_path / "ranks", "--distiller", "crd"), nproc=2)
    assert "on 2 ranks" in proc.stdout
    ckpt = torch.load(tmp_path / "ranks" / "checkpoint.pth", weights_only=True)["distiller"]
    assert "embed_s.weight" in ckpt and float(ckpt["z"].min()) > 0
    for bank in ("memory_s", "memory_t"):  # updated rows are unit vectors; initial ones are not
        torch.testing.assert_close(ckpt[bank].norm(dim=1), torch.ones(20))


def test_distiller_flags_that_cannot_work_are_one_line(demo_data, teacher, tmp_path):
    for extra, needle in ((["--distiller", "at", "--teacher", "resnet32,resnet32"], "one"),
                          (["--distill-weight", 5], "apply to --distiller")):
        args = train_args(demo_data, teacher, tmp_path / "x", *map(str, extra))
        with pytest.raises(UserError, match=needle):
            main(get_args_parser().parse_args(args))
