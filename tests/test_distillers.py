"""Feature-based distillers (softlabel/distill, the trainer's --distiller): each loss against a
value computed by hand on tiny tensors, features taken by hooks at the stages, every method
trained end to end, trained parts optimized, checkpointed and resumed exactly, two gloo ranks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from rounding import between_orders

from softlabel import files, models
from softlabel.distill import DISTILLERS, Features, FeatureTap, stage_modules
from softlabel.errors import UserError
from softlabel.commands.train import get_args_parser, main

TRAIN = "validate/train_FKD_parallel.py"


# float32 losses against float64 references on tiny tensors: sums of at most 48 terms, norms,
# square roots and a few element-wise operations a term, so 64 roundings bound each; every
# reference also returns the absolute size of what it sums (the magnitude of the bound).
DEPTH = 64


def near(got: float, want: float, magnitude: float, n: int = DEPTH) -> bool:
    return abs(got - want) <= between_orders(n, magnitude)


def feats(*shapes, seed=0) -> Features:
    g = torch.Generator().manual_seed(seed)
    return Features([torch.randn(*s, generator=g) for s in shapes])


def test_attention_transfer_by_hand():
    s, t = feats((2, 3, 2, 2), (2, 2, 1, 1), seed=1), feats((2, 4, 2, 2), (2, 5, 1, 1), seed=2)
    want = size = 0.0
    for fs, ft in zip(s.stages, t.stages):
        a = [np.asarray((f ** 2).mean(1).reshape(2, -1)) for f in (fs, ft)]
        a = [x / np.linalg.norm(x, axis=1, keepdims=True) for x in a]
        want += float(((a[0] - a[1]) ** 2).mean())
        size += float(((abs(a[0]) + abs(a[1])) ** 2).mean())
    assert near(float(DISTILLERS["at"](s, t)(s, t)), want, size)


def test_similarity_preserving_by_hand():
    s, t = feats((3, 2, 2, 2), seed=3), feats((3, 5, 1, 1), seed=4)
    g = []
    for f in (s.stages[-1], t.stages[-1]):
        x = np.asarray(f.reshape(3, -1), dtype=np.float64)
        m = x @ x.T
        g.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    want = float(((g[1] - g[0]) ** 2).sum() / 9)
    assert near(float(DISTILLERS["sp"](s, t)(s, t)), want, float(((abs(g[1]) + abs(g[0])) ** 2).sum() / 9))


def test_pkt_by_hand():
    s, t = feats((3, 4, 2, 2), seed=5), feats((3, 6, 2, 2), seed=6)

    def cond(f):
        e = np.asarray(f.mean(axis=(2, 3)), dtype=np.float64)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)
    ps, pt = cond(s.stages[-1]), cond(t.stages[-1])
    want = float(np.mean([pt[i, j] * math.log(pt[i, j] / ps[i, j]) for i in range(3) for j in range(3)]))
    size = float(np.mean(pt * (abs(np.log(pt)) + abs(np.log(ps)))))
    assert near(float(DISTILLERS["pkt"](s, t)(s, t)), want, size)


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
        # differences of embeddings carry the embeddings' rounding: relative to the smallest one
        gap = min(np.linalg.norm(e[i] - e[j]) for i in range(4) for j in range(4) if i != j)
        return d, np.array(ang), 2 * float(np.abs(e).max()) / gap
    (ds, as_, cs), (dt, at, ct) = parts(s.stages[-1]), parts(t.stages[-1])
    want = 25 * smooth_l1(ds, dt) + 50 * smooth_l1(as_, at)
    # smooth L1 moves by at most what its argument moves: the distances' and angles' sizes count
    size = (25 * float(np.mean(abs(ds) + abs(dt))) + 50 * float(np.mean(abs(as_) + abs(at)))) * max(cs, ct)
    assert near(float(DISTILLERS["rkd"](s, t)(s, t)), want, size)


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
    size = float(((abs(pred) + abs(np.asarray(t.stages[1]))) ** 2).mean())
    assert near(float(d(s, t).detach()), want, size)
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
    assert near(float(d(s, t).detach()), want, want)  # every term positive
    assert {n for n, _ in d.named_parameters()} >= {"stages.0.log_scale"}


def test_crd_contrasts_against_memory_banks_of_other_classes():
    from softlabel.distill.crd import nce_loss
    x = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    noise = 2 / 50
    want = -sum(math.log(r[0] / (r[0] + noise + 1e-7)) + sum(math.log(noise / (v + noise + 1e-7)) for v in r[1:])
                for r in x.tolist()) / 2
    assert near(float(nce_loss(x, 50)), want, want)  # every term's log is negative
    targets = torch.arange(40) % 4
    s, t = feats((8, 3, 2, 2), seed=14), feats((8, 5, 2, 2), seed=15)
    d = DISTILLERS["crd"](s, t, num_samples=40, targets=targets)
    index = torch.tensor([0, 5, 10, 15, 20, 25, 30, 35])
    neg = d.negatives(index)
    assert neg.shape == (8, 16384) and not bool((targets[neg] == targets[index][:, None]).any())  # other classes only
    before = d.memory_s.clone()
    loss = d(s, t, index)
    assert torch.isfinite(loss) and float(d.z[0]) > 0 and float(d.z[1]) > 0  # constants fixed at the first step
    moved = d.memory_s[index]
    width = moved.shape[1]  # the batch's rows moved and renormalized: a norm of width squares
    assert float((moved.norm(dim=1) - 1).abs().max()) <= between_orders(width + 4, 1.0)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(d.memory_s[untouched], before[untouched])
    loss.backward()
    assert d.embed_s.weight.grad is not None and d.embed_t.weight.grad is not None


def test_crd_draws_negatives_as_repdistiller():
    """RepDistiller's CIFAR100InstanceSample: K negatives from the other classes' samples, distinct
    where that pool holds at least K, with replacement only where it holds fewer; the draw follows
    torch's generator (reseeded every epoch by the trainer)."""
    targets = torch.tensor([2, 0, 1, 1, 3, 0, 2, 2, 1, 0, 3, 1, 2, 0, 1, 1])  # unbalanced, unsorted
    s = feats((4, 3, 2, 2), seed=14)
    d = DISTILLERS["crd"](s, s, num_samples=16, targets=targets)
    index = torch.tensor([0, 1, 2, 4])
    pools = [int((targets != targets[i]).sum()) for i in index]  # 11, 12, 10, 14
    for k, distinct in ((10, True), (13, None), (15, False)):
        d.k = k
        torch.manual_seed(0)
        neg = d.negatives(index)
        torch.manual_seed(0)
        assert torch.equal(neg, d.negatives(index))  # the seeded generator decides
        assert neg.shape == (4, k) and not bool((targets[neg] == targets[index][:, None]).any())
        for row, pool in zip(neg, pools):
            assert (len(set(row.tolist())) == k) == (pool >= k)  # repeats exactly where the pool is short
        if distinct:  # every other-class sample can be drawn
            hits = torch.cat([d.negatives(index) for _ in range(30)])
            assert set(hits[0::4].flatten().tolist()) == set(torch.nonzero(targets != 2).flatten().tolist())
    with pytest.raises(ValueError, match="only one"):
        DISTILLERS["crd"](s, s, num_samples=4, targets=torch.zeros(4, dtype=torch.long))


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


def test_activation_boundaries_by_hand():
    s, t = feats((2, 3, 2, 2), (2, 4, 1, 1), seed=16), feats((2, 3, 2, 2), (2, 4, 1, 1), seed=17)
    d = DISTILLERS["ab"](s, t)
    assert all(isinstance(c, torch.nn.Identity) for c in d.connectors)  # equal shapes: no connector
    want = 0.0
    for i, (fs, ft) in enumerate(zip(s.stages, t.stages)):
        x, y = np.asarray(fs, dtype=np.float64), np.asarray(ft, dtype=np.float64)
        per = np.where((x > -1) & (y <= 0), (x + 1) ** 2, 0) + np.where((x <= 1) & (y > 0), (x - 1) ** 2, 0)
        want += 2.0 ** (i - 1) * per.sum()  # stage i of 2 weighted 2^(i - 2 + 1)
    assert near(float(d.init_loss(s, t)), want / 2 * 3 / 1000, want / 2 * 3 / 1000)  # a sum of squares
    assert float(d(s, t)) == 0.0  # after the init stage AB adds nothing (RepDistiller's loss_kd = 0)
    other = DISTILLERS["ab"](feats((2, 3, 4, 4), seed=18), feats((2, 5, 2, 2), seed=19))
    conv, bn = other.connectors[0]  # a shape change: conv + batch norm, no ReLU
    assert conv.stride == (2, 2) and conv.out_channels == 5 and isinstance(bn, torch.nn.BatchNorm2d)
    assert [p.requires_grad for p in other.parameters()] and other.init_parts() == [other.connectors]
    assert DISTILLERS["ab"].init_epochs == DISTILLERS["ft"].init_epochs == 30  # RepDistiller's --init_epochs


def test_factor_transfer_by_hand():
    s, t = feats((2, 3, 4, 4), (2, 4, 2, 2), seed=20), feats((2, 3, 4, 4), (2, 6, 2, 2), seed=21)
    d = DISTILLERS["ft"](s, t)
    enc = d.paraphraser.encoder
    assert [m.out_channels for m in enc if isinstance(m, torch.nn.Conv2d)] == [6, 3, 3]  # half the channels
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.paraphraser.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.translator.modules()) == 3
    ft = t.stages[-1]
    rebuilt = d.paraphraser.decoder(enc(ft))
    want_init = float(((rebuilt - ft) ** 2).mean())
    assert near(float(d.init_loss(None, t)), want_init, float(((rebuilt.abs() + ft.abs()) ** 2).mean()))
    with torch.no_grad():
        a, b = (np.asarray(x, dtype=np.float64) for x in (d.translator(s.stages[-1]), enc(ft)))
        fa, fb = ((x ** 2).mean(1).reshape(2, -1) for x in (a, b))
        fa, fb = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in (fa, fb))
        assert near(float(d(s, t)), float(np.abs(fa - fb).mean()), float((abs(fa) + abs(fb)).mean()))
    assert d.init_parts() == [d.paraphraser]
    assert d.init_lr("resnet20", 0.05) == 0.01 and d.init_lr("resnet18", 0.05) == 0.05  # RepDistiller's rule


def test_kdss_by_hand():
    """SSKD's losses: the rotated copies' cosine similarities to the originals (self-supervision
    heads), KL at T 0.5 over the rows the teacher's filter keeps, plus KD at T 4 on the copies."""
    from softlabel.distill import kdss
    n = 3
    s, t = feats((4 * n, 5, 2, 2), seed=22), feats((4 * n, 6, 1, 1), seed=23)
    s.logits, t.logits = torch.randn(4 * n, 4, generator=torch.Generator().manual_seed(24)), \
        torch.randn(4 * n, 4, generator=torch.Generator().manual_seed(25))
    targets = torch.tensor([0, 1, 2, 3, 1, 2])
    d = DISTILLERS["kdss"](s, t, num_samples=6, targets=targets)
    assert d.init_parts() == [d.teacher_head] and d.views == 4 and d.init_epochs == 60
    index = torch.tensor([4, 0, 3])

    def sims(head, f):
        with torch.no_grad():
            rep = np.asarray(head(f.mean(dim=(2, 3))), dtype=np.float64)
        rep /= np.linalg.norm(rep, axis=1, keepdims=True)
        return rep[n:] @ rep[:n].T  # (3n, n): copy against original

    def kl(a, b, rows, temp, size=False):  # size: the absolute size of its terms instead
        pa = np.exp(a / temp) / np.exp(a / temp).sum(1, keepdims=True)
        pb = np.exp(b / temp) / np.exp(b / temp).sum(1, keepdims=True)
        term = (lambda i: pb[i] * (abs(np.log(pb[i])) + abs(np.log(pa[i])))) if size else \
            (lambda i: pb[i] * np.log(pb[i] / pa[i]))
        return sum(term(i).sum() for i in rows) / len(rows) * temp ** 2

    def keep(scores, target, ratio):
        rank = np.array([(row > row[c]).sum() for row, c in zip(scores, target)])
        wrong = int((rank > 0).sum())
        return sorted(np.argsort(rank, kind="stable")[:len(rank) - wrong + int(wrong * ratio)])
    ss_s, ss_t = sims(d.student_head, s.stages[-1]), sims(d.teacher_head, t.stages[-1])
    orig = np.tile(np.arange(n), 3)
    want = 10 * kl(ss_s, ss_t, keep(ss_t, orig, 0.75), 0.5)
    ls, lt = np.asarray(s.logits[n:], dtype=np.float64), np.asarray(t.logits[n:], dtype=np.float64)
    want += 2.7 * kl(ls, lt, range(3 * n), 4.0)  # ratio 1.0: every copy
    size = 10 * kl(ss_s, ss_t, keep(ss_t, orig, 0.75), 0.5, True) + 2.7 * kl(ls, lt, range(3 * n), 4.0, True)
    assert near(float(d(s, t, index).detach()), want, size)
    rank = torch.tensor([0, 2, 0, 1, 3])
    assert kdss.kept(rank, 0.75).tolist() == [0, 1, 2, 3] and kdss.kept(rank, 0.0).tolist() == [0, 2]
    ce = float(torch.nn.functional.cross_entropy(torch.from_numpy(ss_t), torch.from_numpy(orig)))
    # find each copy's original: a cross-entropy of similarities in [-1, 1] over n classes
    assert near(float(d.init_loss(None, t).detach()), ce, 2 + math.log(n))


def kdss_batches(demo_data, workers: int, crop: str, mix: str = "none") -> tuple:
    """The training images (ipc1) and epoch 1's batches of the trainer's loader under --distiller kdss."""
    from types import SimpleNamespace
    from softlabel.training.epochs import hard_label_epochs
    from softlabel.data import scan_image_folder
    from softlabel.distributed import DistInfo
    cfg = SimpleNamespace(distiller="kdss", input_size=32, train_crop=crop, min_scale_crops=0.5, max_scale_crops=1.0,
                          batch_size=4, seed=3, workers=workers, drop_last=False, mix_type=mix, mixup=0.8, cutmix=1.0)
    index = scan_image_folder(str(demo_data / "ipc1"), "--train-dir")
    epochs = hard_label_epochs(cfg, index, range(1, 2), DistInfo(0, 1, 0, torch.device("cpu")), False)
    return index, [batch for _, batches in epochs for batch in batches]


def test_kdss_views_are_sskds_flip_then_a_crop_per_rotation(demo_data):
    """Every image comes as SSKD's cifar.py makes it: one flip, then its four rotations (np.rot90),
    each cropped by its own RandomCrop(32, padding=4) draw; view-major in the batch, view 0 first.
    Recomputed here from the image and the draws of (--seed, stream, epoch, image)."""
    from softlabel import streams
    from softlabel.streams import Stream
    index, batches = kdss_batches(demo_data, 0, "padded")
    differs = False
    for batch in batches:
        n = len(batch["target"])
        assert batch["pixels"].shape == (4 * n, 3, 32, 32) and batch["batch_size"] == n
        for j, i in enumerate(batch["index"].tolist()):
            rng = streams.rng(3, Stream.TRAIN_EPOCH, 1, i)
            image = np.asarray(index.load(index.samples[i][0]))
            if rng.random() < 0.5:
                image = image[:, ::-1]
            for k in range(4):
                turned = np.pad(np.rot90(image, k), ((4, 4), (4, 4), (0, 0)))  # zeros, as RandomCrop's padding
                top, left = (int(rng.integers(0, side - 32 + 1)) for side in turned.shape[:2])
                want = torch.from_numpy(turned[top:top + 32, left:left + 32].transpose(2, 0, 1).copy())
                got = batch["pixels"][k * n + j]
                assert torch.equal(got, want), (i, k)
                differs |= not torch.equal(got, torch.rot90(batch["pixels"][j], k, dims=(1, 2)))
    assert differs  # not rotations of one crop


def test_kdss_views_do_not_depend_on_the_workers_and_mix_view_by_view(demo_data):
    """-j 0 and -j 2 give the same views (resized crops here); with cutmix each view of an image is
    mixed with the same partner's same view."""
    batches = [kdss_batches(demo_data, workers, "resized", "cutmix")[1] for workers in (0, 2)]
    assert len(batches[0]) == len(batches[1]) == 3
    for a, b in zip(*batches):
        assert all(torch.equal(a[key], b[key]) for key in ("pixels", "partners", "index", "target"))
        n, pixels, partners = len(a["target"]), a["pixels"], a["partners"]
        for j in range(n):
            m = [r for r in range(n) if torch.equal(partners[j], pixels[r])]
            assert m and all(torch.equal(partners[k * n + j], pixels[k * n + m[0]]) for k in range(4)), j


def test_kdss_head_stage_milestones_scale_with_its_epochs():
    """SSKD's --t-milestones 30 45 of --t-epoch 60, scaled to --distill-init-epochs (halves up);
    RepDistiller's init stages keep one rate."""
    from softlabel.training.distillation import init_milestones
    assert [init_milestones(DISTILLERS["kdss"], e) for e in (60, 4, 3, 1)] == [[30, 45], [2, 3], [2, 2], [1, 1]]
    assert all(init_milestones(DISTILLERS[n], 30) == [] for n in ("ab", "fsp", "ft"))


def test_correlation_congruence_by_hand():
    """CC: both embeddings through linear maps of their own to 128 dimensions; with d_i = |e_s - e_t|
    of sample i, the mean over neighbouring samples of sum_k d_i[k] d_(i+1)[k]."""
    s, t = feats((3, 4, 2, 2), seed=26), feats((3, 6, 1, 1), seed=27)
    d = DISTILLERS["cc"](s, t)
    assert (d.embed_s.in_features, d.embed_s.out_features, d.embed_t.in_features) == (4, 128, 6)

    def embed(linear, f):
        x = np.asarray(f.mean(dim=(2, 3)), dtype=np.float64)
        w, b = (np.asarray(p.detach(), dtype=np.float64) for p in (linear.weight, linear.bias))
        return x @ w.T + b, abs(x) @ abs(w).T + abs(b)
    (es, ms), (et, mt) = embed(d.embed_s, s.stages[-1]), embed(d.embed_t, t.stages[-1])
    delta, mag = abs(es - et), ms + mt
    want = float(np.mean([(delta[i] * delta[i + 1]).sum() for i in range(2)]))
    size = float(np.mean([(mag[i] * mag[i + 1]).sum() for i in range(2)]))  # each delta's terms, in absolute value
    loss = d(s, t)
    assert near(float(loss.detach()), want, size)
    loss.backward()
    assert d.embed_s.weight.grad is not None and d.embed_t.weight.grad is not None
    one = Features([s.stages[-1][:1]]), Features([t.stages[-1][:1]])
    assert float(d(*one).detach()) == 0.0  # one sample has no neighbour


def pooled(x: np.ndarray, side: int) -> np.ndarray:
    """Average-pooled to side x side (the side divides the map's)."""
    b, c, h, w = x.shape
    return x.reshape(b, c, side, h // side, side, w // side).mean(axis=(3, 5))


def test_neuron_selectivity_by_hand():
    """NST: per stage, each channel's map L2-normalized; squared MMD under k(a, b) = (a . b)^2."""
    s, t = feats((2, 3, 4, 4), (2, 2, 2, 2), seed=28), feats((2, 5, 2, 2), (2, 4, 2, 2), seed=29)
    want = size = 0.0
    for fs, ft in zip(s.stages, t.stages):
        side = min(fs.shape[2], ft.shape[2])
        a, b = (pooled(np.asarray(f, dtype=np.float64), side).reshape(2, f.shape[1], -1) for f in (fs, ft))
        a, b = (x / np.linalg.norm(x, axis=2, keepdims=True) for x in (a, b))

        def k(x, y):
            return np.mean([(x[n, i] @ y[n, j]) ** 2 for n in range(2) for i in range(len(x[n]))
                            for j in range(len(y[n]))])
        want += k(b, b) + k(a, a) - 2 * k(a, b)
        size += k(b, b) + k(a, a) + 2 * k(a, b)  # unit vectors: each term in [0, 1]
    s.stages = [f.requires_grad_() for f in s.stages]
    loss = DISTILLERS["nst"](s, t)(s, t)
    assert near(float(loss.detach()), want, size)
    loss.backward()
    assert all(f.grad is not None and bool(f.grad.abs().sum() > 0) for f in s.stages)


def test_flow_of_solution_by_hand():
    """FSP: G[j, i] = mean over positions of top[j] x bottom[i] for consecutive stages (the larger map
    pooled to the smaller), mean squared difference summed over pairs, in the init stage only."""
    s, t = feats((2, 3, 4, 4), (2, 4, 2, 2), (2, 2, 1, 1), seed=30), feats((2, 3, 2, 2), (2, 4, 2, 2), (2, 2, 2, 2),
                                                                        seed=31)

    def grams(stages):
        out = []
        for bottom, top in zip(stages[:-1], stages[1:]):
            side = min(bottom.shape[2], top.shape[2])
            x, y = (pooled(np.asarray(f.detach(), dtype=np.float64), side) for f in (bottom, top))
            g = np.zeros((2, y.shape[1], x.shape[1]))
            m = np.zeros_like(g)
            for n in range(2):
                for j in range(y.shape[1]):
                    for i in range(x.shape[1]):
                        g[n, j, i] = (y[n, j] * x[n, i]).mean()
                        m[n, j, i] = abs(y[n, j] * x[n, i]).mean()
            out.append((g, m))
        return out
    want = size = 0.0
    for (gs, ms), (gt, mt) in zip(grams(s.stages), grams(t.stages)):
        want += float(((gs - gt) ** 2).mean())
        size += float(((ms + mt) ** 2).mean())
    d = DISTILLERS["fsp"](s, t)
    s.stages = [f.requires_grad_() for f in s.stages]
    loss = d.init_loss(s, t)
    assert near(float(loss.detach()), want, size)
    loss.backward()
    assert all(bool(f.grad.abs().sum() > 0) for f in s.stages)
    assert float(d(s, t)) == 0.0  # after the init stage FSP adds nothing (RepDistiller's loss_kd = 0)
    assert (d.init_epochs, d.init_trains_student, d.distills, d.init_parts()) == (30, True, False, [])
    assert d.stage_problem(0, torch.Size((2, 3, 4, 4)), torch.Size((2, 3, 2, 2))) is None
    assert "3 channels against 5" in DISTILLERS["fsp"].stage_problem(0, torch.Size((2, 3, 4, 4)),
                                                                      torch.Size((2, 5, 4, 4)))


def test_singular_vector_distillation_by_hand():
    """KDSVD: per stage and sample, the right singular vectors of the (positions x channels) map; the
    student's of its first four closest to the teacher's first (|cosine|), signed to agree; RBFs
    exp(-(v_i[c] - v_(i-1)[c'])^2 / 8) between consecutive stages, squared differences summed / B."""
    from softlabel.distill import kdsvd
    s, t = feats((2, 3, 4, 4), (2, 4, 2, 2), seed=32), feats((2, 3, 3, 3), (2, 4, 3, 3), seed=33)
    d = DISTILLERS["kdsvd"](s, t)
    vs, vt, kappa = [], [], 1.0
    for fs, ft in zip(s.stages, t.stages):
        # singular vectors are defined up to sign: the teacher's is the decomposition's choice, so it
        # is taken from the implementation's decomposition; everything else is computed here
        _, v_impl = kdsvd.singular(ft, 1)
        per_s, per_t = [], []
        for n in range(2):
            xs, xt = (np.asarray(f[n], dtype=np.float64).reshape(f.shape[1], -1).T for f in (fs, ft))
            _, sig_t, vh_t = np.linalg.svd(xt, full_matrices=False)
            _, sig_s, vh_s = np.linalg.svd(xs, full_matrices=False)
            v_t = vh_t[0] * np.sign(vh_t[0] @ np.asarray(v_impl[n, :, 0], dtype=np.float64))
            cos = vh_s[:4] @ v_t
            best = int(np.argmax(abs(cos)))
            scale = sig_t[0] / abs(sig_t[0])  # the teacher's first singular value, normalized: 1
            per_s.append(vh_s[best] * np.sign(cos[best]) * scale)
            per_t.append(v_t * scale)
            # a float32 singular vector j moves by about u sigma_1 / (the gap to its neighbours) (Wedin)
            for sig, j in ((sig_s, best), (sig_t, 0)):
                kappa = max(kappa, sig[0] / min(abs(sig[j] - sig[k]) for k in range(len(sig)) if k != j))
        vs.append(np.array(per_s))
        vt.append(np.array(per_t))

    def rbf(v, before):
        return np.exp(-(v[:, :, None] - before[:, None, :]) ** 2 / 8)
    rs, rt = rbf(vs[1], vs[0]), rbf(vt[1], vt[0])
    want = float(((rs - rt) ** 2).sum() / 2)
    # each RBF carries its vectors' relative error (x kappa); a square moves by 2 |rs - rt| times it
    size = float((2 * abs(rs - rt) * (rs + rt)).sum() / 2) * kappa
    s.stages = [f.requires_grad_() for f in s.stages]
    loss = d(s, t)
    assert near(float(loss.detach()), want, size)
    loss.backward()
    assert all(f.grad is not None and bool(torch.isfinite(f.grad).all()) for f in s.stages)
    assert bool(s.stages[1].grad.abs().sum() > 0)
    assert d.stage_problem(1, torch.Size((2, 4, 2, 2)), torch.Size((2, 8, 2, 2))) is not None


def test_repdistillers_methods_are_registered_with_its_weights():
    """RepDistiller's -b of each (scripts/run_cifar_distill.sh; KDSVD has none there: 1)."""
    assert {n: DISTILLERS[n].weight for n in ("cc", "fsp", "nst", "kdsvd")} == \
        {"cc": 0.02, "fsp": 50.0, "nst": 50.0, "kdsvd": 1.0}
    assert [n for n in sorted(DISTILLERS) if DISTILLERS[n].init_epochs] == ["ab", "fsp", "ft", "kdss"]


def test_pre_activations_are_taken_by_hooks():
    """AB's features: the input of each stage's last ReLU, also where that ReLU works in place
    (torchvision's blocks), and the stage's output is its ReLU."""
    for name in ("resnet20", "resnet18"):
        model = models.create_model(name, 10).eval()
        stages = stage_modules(model, None)
        pre, post = FeatureTap(stages, preact=True), FeatureTap(stages)
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        fp, fo = pre.take(), post.take()
        pre.check_preact(fp)
        for a, b in zip(fp.stages, fo.stages):
            assert bool((a < 0).any()) and torch.equal(torch.relu(a), b)
    flat = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sigmoid())
    with pytest.raises(UserError, match="no ReLU"):
        FeatureTap([flat], preact=True)


def test_distilling_steps_take_no_features_for_a_method_with_no_loss_after_its_init_stage():
    """AB and FSP add nothing once their init stage is over: the steps then run without their hooks
    (AB's clone every stage's pre-activation on torchvision models); other methods keep theirs."""
    from softlabel.training.distillation import DistillRun, distilling
    student, teacher = models.create_model("resnet20", 10), models.create_model("resnet32", 10)
    for name, kept in (("ab", False), ("fsp", False), ("at", True)):
        taps = [FeatureTap(stage_modules(m, None), DISTILLERS[name].preact) for m in (student, teacher)]
        with torch.no_grad():
            student(torch.zeros(2, 3, 32, 32))
            teacher(torch.zeros(2, 3, 32, 32))
        fs, ft = taps[0].take(), taps[1].take()
        run = DistillRun(DISTILLERS[name](fs, ft, num_samples=4, targets=torch.zeros(4, dtype=torch.long)),
                         *taps, 1.0)
        assert (distilling(run) is run) == kept
        with torch.no_grad():
            student(torch.zeros(2, 3, 32, 32))
        assert all(o is not None for o in taps[0].outputs) == kept
    assert distilling(None) is None


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, demo_data) -> Path:
    """A resnet32 teacher checkpoint: random weights, batch-norm statistics of the demo images
    (so its features have a trained network's scale; their values do not matter here)."""
    from softlabel.data import scan_image_folder
    path = tmp_path_factory.mktemp("distill") / "resnet32.pth"
    torch.manual_seed(0)
    model = models.create_model("resnet32", 10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the calibration batches
    index = scan_image_folder(str(demo_data / "ipc2"), "--data")
    mean, std = models.default_normalization("resnet32", model)
    images = torch.stack([torch.from_numpy(np.asarray(index.load(p).resize((32, 32))).copy())
                          .permute(2, 0, 1).float() / 255 for p, _ in index.samples])
    with torch.no_grad():
        model((images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.save({"model": model.state_dict(), "arch": "resnet32", "num_classes": 10}, path)
    return path


def train_args(demo_data, teacher, out, *extra) -> list[str]:
    return [str(a) for a in ("--train-dir", demo_data / "ipc2", "--model", "resnet20", "--teacher", "resnet32",
                             "--teacher-path", teacher, "--input-size", 32, "-b", 10, "--epochs", 2, "-j", 0,
                             "--sgd", "-lr", 0.05, "--no-progress", "--output-dir", out, *extra)]


# CI runs these one epoch each (test_repdistillers_other_methods_train_one_epoch); their two-epoch and
# resume runs are slow ones
ONE_EPOCH_IN_CI = ("cc", "fsp", "kdsvd", "nst")
EVERY = [pytest.param(n, marks=pytest.mark.slow) if n in ONE_EPOCH_IN_CI else n for n in sorted(DISTILLERS)]


@pytest.mark.parametrize("name", EVERY)
def test_every_distiller_trains_end_to_end(name, demo_data, teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    epochs = (4 if name == "kdss" else 3) if DISTILLERS[name].init_epochs else 0  # default 30: RepDistiller's
    init = ["--distill-init-epochs", epochs] if epochs else []
    main(get_args_parser().parse_args(train_args(demo_data, teacher, tmp_path / "run", "--distiller", name, *init)))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert "distiller" in ckpt and ckpt["args"]["distiller"] == name
    assert ckpt["args"]["loss_type"] == DISTILLERS[name].loss_type == ("kd" if name == "kdss" else "ce")
    assert ckpt["args"]["distill_init_epochs"] == epochs
    assert (tmp_path / "run" / "results.json").is_file()
    captured = capsys.readouterr()
    rates = [float(line.rsplit(" lr ", 1)[1]) for line in captured.out.splitlines()
             if line.startswith(f"distill init ({name}) epoch ")]
    # KDSS: SSKD's x0.1 at 30 and 45 of 60 init epochs, here 2 and 3 of 4; the others: one rate throughout
    assert (rates == [0.05, 0.05, 0.005, 0.0005] if name == "kdss" else
            len(rates) == epochs and len(set(rates)) <= 1), rates
    if name == "crd":  # 20 images: each class's pool of negatives (18) is short of K = 16384, said once
        warnings = [line for line in captured.err.splitlines() if "warning:" in line]
        assert len(warnings) == 1 and "--distiller crd: 16384 negatives per sample, but the other classes hold " \
            "only 18 samples (for 10 of 10 classes): negatives are drawn from them with replacement, never from " \
            "the sample's own class" in warnings[0], warnings


@pytest.mark.parametrize("name", EVERY)
def test_every_distiller_resumes_exactly(name, demo_data, teacher, tmp_path, monkeypatch):
    """A run stopped after epoch 1 and resumed ends with the uninterrupted run's very weights,
    student and distiller (AB and FT after a 1-epoch init stage)."""
    # runs in this process: each holds its folder's lock until the process ends (tested elsewhere)
    monkeypatch.setattr(files, "lock_dir", lambda *a, **k: None)
    init = ["--distill-init-epochs", 1] if DISTILLERS[name].init_epochs else []
    run = lambda out, *extra: main(get_args_parser().parse_args(train_args(  # noqa: E731
        demo_data, teacher, out, "--distiller", name, "--lr-schedule", "step", "--lr-step-size", 100, *init, *extra)))
    run(tmp_path / "whole")
    run(tmp_path / "half", "--epochs", 1)
    run(tmp_path / "half", "--resume", "auto")
    a, b = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True) for r in ("whole", "half"))
    for part in ("model", "distiller"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    if name == "vid":  # its trained parts are optimized
        fresh = DISTILLERS["vid"](*(feats((2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)),) * 2)
        assert not torch.equal(a["distiller"]["stages.0.log_scale"], fresh.stages[0].log_scale.detach())
        with pytest.raises(UserError, match="distiller"):  # another distiller cannot continue this run
            main(get_args_parser().parse_args(train_args(demo_data, teacher, tmp_path / "whole", "--distiller",
                                                         "fitnet", "--lr-schedule", "step", "--lr-step-size", "100",
                                                         "--resume", "auto")))


@pytest.mark.parametrize("name", ONE_EPOCH_IN_CI)
def test_repdistillers_other_methods_train_one_epoch(name, demo_data, teacher, tmp_path, monkeypatch, capsys):
    """CC (trained embeddings), FSP (the student trained in the init stage, nothing added after it),
    NST and KDSVD (every stage) through the trainer: one epoch each, after FSP's one init epoch."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    init = ["--distill-init-epochs", 1] if DISTILLERS[name].init_epochs else []
    main(get_args_parser().parse_args(train_args(demo_data, teacher, tmp_path / "run", "--distiller", name,
                                                 "--epochs", 1, *init)))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["args"]["distiller"] == name and ckpt["args"]["loss_type"] == "ce"
    assert sorted(ckpt["distiller"]) == (["embed_s.bias", "embed_s.weight", "embed_t.bias", "embed_t.weight"]
                                         if name == "cc" else [])
    out = capsys.readouterr().out
    assert ("distill init (fsp) epoch 1/1" in out) == (name == "fsp")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["train_loss"]) for r in rows)


@pytest.mark.slow  # a torchrun launch per method; CRD and AB (their own test below) run in CI
@pytest.mark.parametrize("name", sorted(set(DISTILLERS) - {"crd", "ab"}))
def test_every_distiller_runs_on_two_ranks(name, demo_data, teacher, tmp_path):
    init = ["--distill-init-epochs", 1] if DISTILLERS[name].init_epochs else []
    proc = run_script(TRAIN, *train_args(demo_data, teacher, tmp_path / "ranks", "--distiller", name, *init), nproc=2)
    assert "on 2 ranks" in proc.stdout
    assert torch.load(tmp_path / "ranks" / "checkpoint.pth", weights_only=True)["epoch"] == 2


def test_a_distiller_with_trained_parts_runs_on_two_ranks(demo_data, teacher, tmp_path):
    """CRD on two gloo ranks: its embeddings train under DDP, and every rank applies every rank's
    memory updates (rank 0's saved banks hold all 20 images' updates, not only its own 10)."""
    proc = run_script(TRAIN, *train_args(demo_data, teacher, tmp_path / "ranks", "--distiller", "crd"), nproc=2)
    assert "on 2 ranks" in proc.stdout
    ckpt = torch.load(tmp_path / "ranks" / "checkpoint.pth", weights_only=True)["distiller"]
    assert "embed_s.weight" in ckpt and float(ckpt["z"].min()) > 0
    for bank in ("memory_s", "memory_t"):  # updated rows are unit vectors (a norm of width squares)
        width = ckpt[bank].shape[1]
        assert float((ckpt[bank].norm(dim=1) - 1).abs().max()) <= between_orders(width + 4, 1.0), bank


def test_init_stage_trains_its_parts_then_freezes_them_and_resumes_after_it(demo_data, teacher, tmp_path,
                                                                           monkeypatch):
    """FT: the paraphraser trains in the init stage only; a run stopped right after the init stage
    (its checkpoint at epoch 0) resumes to the uninterrupted run's weights."""
    from softlabel.training import loop as trainer
    monkeypatch.setattr(files, "lock_dir", lambda *a, **k: None)
    args = lambda out, *extra: train_args(demo_data, teacher, out, "--distiller", "ft",  # noqa: E731
                                          "--distill-init-epochs", 2, *extra)
    main(get_args_parser().parse_args(args(tmp_path / "whole")))

    def stop(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(trainer, "train_one_epoch", stop)
        with pytest.raises(KeyboardInterrupt):
            main(get_args_parser().parse_args(args(tmp_path / "cut")))
    after_init = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=True)
    assert after_init["epoch"] == 0
    main(get_args_parser().parse_args(args(tmp_path / "cut", "--resume", "auto")))
    a, b = (torch.load(tmp_path / r / "checkpoint.pth", weights_only=True) for r in ("whole", "cut"))
    for part in ("model", "distiller"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    fresh = DISTILLERS["ft"](feats((2, 64, 8, 8)), feats((2, 64, 8, 8)))
    trained = {k: v for k, v in a["distiller"].items() if k.startswith("paraphraser.")}
    assert not torch.equal(trained["paraphraser.encoder.0.weight"], fresh.paraphraser.encoder[0].weight.detach())
    assert all(torch.equal(v, after_init["distiller"][k]) for k, v in trained.items())  # frozen while distilling
    assert not torch.equal(a["distiller"]["translator.0.weight"], after_init["distiller"]["translator.0.weight"])


def test_activation_boundaries_init_stage_on_two_ranks(demo_data, teacher, tmp_path):
    """AB's init stage trains the student itself: its gradients are averaged over the ranks by hand."""
    proc = run_script(TRAIN, *train_args(demo_data, teacher, tmp_path / "ranks", "--distiller", "ab",
                                         "--distill-init-epochs", 1, "--epochs", 1), nproc=2)
    assert "on 2 ranks" in proc.stdout and "distill init (ab) epoch 1/1" in proc.stdout
    assert torch.load(tmp_path / "ranks" / "checkpoint.pth", weights_only=True)["epoch"] == 1


def test_distiller_flags_that_cannot_work_are_one_line(demo_data, teacher, tmp_path):
    for extra, needle in ((["--distiller", "at", "--teacher", "resnet32,resnet32"], "one"),
                          (["--distill-weight", 5], "apply to --distiller"),
                          (["--distiller", "fitnet", "--distill-init-epochs", 3], "init stage: ab, fsp, ft, kdss"),
                          (["--distiller", "ab", "--distill-init-lr", 0], "--distill-init-lr must be in"),
                          (["--distiller", "kdss", "--distill-init-epochs", 0], "self-supervision head")):
        args = train_args(demo_data, teacher, tmp_path / "x", *map(str, extra))
        with pytest.raises(UserError, match=needle):
            main(get_args_parser().parse_args(args))


SLOW = pytest.mark.slow  # the same check as the case above it, on another distiller or side


@pytest.mark.parametrize("name, extra, needles", [
    ("at", ["--feat-layers", "layer3,fc"], ["the student's fc (--feat-layers) gives a (2, 10) tensor", "at needs a 4-D"]),
    pytest.param("vid", ["--feat-layers", "layer2,layer3", "--teacher-feat-layers", "layer2,fc"],
                 ["the teacher's fc (--teacher-feat-layers) gives a (2, 10) tensor", "vid needs a 4-D"], marks=SLOW),
    pytest.param("ft", ["--feat-layers", "layer2,fc"], ["the student's fc", "(2, 10)", "ft needs a 4-D"], marks=SLOW),
    ("fitnet", ["--feat-layers", "layer3"], ["the student's layers layer3 (--feat-layers) are 1 stage", "at least 2"]),
    pytest.param("fitnet", ["--feat-layers", "layer1,fc"], ["the student's fc", "(2, 10)", "fitnet needs a 4-D"],
                 marks=SLOW),
    ("fitnet", ["--feat-layers", "layer1,layer3", "--teacher-feat-layers", "layer3,layer1"],
     ["the student's layer3 (2, 64, 8, 8) against the teacher's layer1 (2, 16, 32, 32)", "smaller"]),
    ("ab", ["--feat-layers", "layer3,fc"], ["fc (Linear): no ReLU module"]),
    pytest.param("ab", ["--feat-layers", "layer1,layer3", "--teacher-feat-layers", "layer3,layer1"],
                 ["the student's layer3 (2, 64, 8, 8) against the teacher's layer1"], marks=SLOW),
    ("fsp", ["--feat-layers", "layer1,layer2", "--teacher-feat-layers", "layer2,layer3"],
     ["the student's layer1 (2, 16, 32, 32) against the teacher's layer2 (2, 32, 16, 16): 16 channels against 32"]),
    pytest.param("kdsvd", ["--feat-layers", "layer1,layer2", "--teacher-feat-layers", "layer2,layer3"],
                 ["16 channels against 32"], marks=SLOW),
])
def test_a_distiller_whose_layers_do_not_give_what_it_needs_is_one_line_at_the_probe(
        name, extra, needles, demo_data, teacher, tmp_path):
    """AT, VID, AB, NST, FSP and KDSVD need 4-D maps at every stage (FSP and KDSVD with the same
    channels on both sides), FT at its last, FitNet two stages and a map at its hint one that its regressor can
    map: anything else is refused naming the layer."""
    args = train_args(demo_data, teacher, tmp_path / "x", "--distiller", name, *extra)
    with pytest.raises(UserError) as err:
        main(get_args_parser().parse_args(args))
    message = str(err.value)
    assert message.startswith(f"--distiller {name}") and "\n" not in message
    for needle in needles:
        assert needle in message, message
    assert not (tmp_path / "x" / "checkpoint.pth").exists()


def test_what_each_distiller_needs_of_its_layers():
    """Only AT, VID, AB, NST, FSP, KDSVD (every stage), FT (the last) and FitNet (the second, of two or
    more) need 4-D maps; the others take any batch-first output, e.g. the logits of a Linear layer."""
    from softlabel.training.distillation import check_stages
    flat = feats((2, 16, 8, 8), (2, 10))
    for name, method in DISTILLERS.items():
        needs_map = name in ("at", "vid", "ab", "ft", "fitnet", "nst", "fsp", "kdsvd")
        if needs_map:
            with pytest.raises(UserError, match=f"teacher's fc .* gives a \\(2, 10\\) tensor .* {name} needs a 4-D"):
                check_stages(name, method, "teacher", flat, ["layer3", "fc"], "--teacher-feat-layers", 2)
        else:
            check_stages(name, method, "student", flat, ["layer3", "fc"], "--feat-layers", 2)
            with pytest.raises(UserError, match="gives a \\(10,\\) tensor .* a tensor with the batch first"):
                check_stages(name, method, "student", feats((10,)), ["fc"], "--feat-layers", 2)



@pytest.fixture()
def loud_teacher(teacher, tmp_path) -> Path:
    """The teacher with its last block's branch scaled up: layer3 features of mean square ~500."""
    ckpt = torch.load(teacher, weights_only=True)
    for k in ("layer3.4.bn2.weight", "layer3.4.bn2.bias"):
        ckpt["model"][k] = ckpt["model"][k] * 30
    torch.save(ckpt, tmp_path / "loud.pth")
    return tmp_path / "loud.pth"


def test_factor_transfer_init_stays_finite_on_large_teacher_features(demo_data, loud_teacher, tmp_path, monkeypatch,
                                                                    capsys):
    """The paraphraser's MSE steps grow with the square of the teacher features' scale: RepDistiller's
    lr 0.01 blows up on features of mean square 8 or more (a teacher trained briefly on a few images
    gives such). --distill-init-lr auto caps it at 0.02 / their mean square."""
    from softlabel.distill.ft import LR_TIMES_SCALE
    f = feats((2, 64, 8, 8))
    d = DISTILLERS["ft"](f, f)
    # a mean of positive squares: relative error within gamma of their count
    want = LR_TIMES_SCALE / float(f.stages[0].pow(2).mean())
    assert near(d.init_lr_limit(f), want, want, n=f.stages[0].numel() + 4)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    main(get_args_parser().parse_args(train_args(demo_data, loud_teacher, tmp_path / "run", "--distiller", "ft",
                                                 "--distill-init-epochs", 3, "--epochs", 1,
                                                 "--distill-init-lr", "auto")))
    out = capsys.readouterr().out
    assert "distill init (ft): lr " in out and "not 0.01" in out
    assert torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["epoch"] == 1


@pytest.mark.slow
def test_factor_transfer_init_at_repdistillers_rate_diverges_on_large_features(demo_data, loud_teacher, tmp_path):
    """What the cap prevents: RepDistiller's 0.01, the default, on the same features; the line names the cap."""
    with pytest.raises(UserError, match="init stage diverged .* at lr 0.01; --distill-init-lr auto caps the rate"):
        main(get_args_parser().parse_args(train_args(demo_data, loud_teacher, tmp_path / "run", "--distiller", "ft",
                                                     "--distill-init-epochs", 6, "--epochs", 1)))


def test_crd_on_one_class_is_refused(demo_data, teacher, tmp_path):
    """CRD's negatives come from other classes only: a one-class set has none."""
    import shutil
    one = tmp_path / "one"
    first = sorted(p for p in (demo_data / "ipc2").iterdir() if p.is_dir())[0]
    shutil.copytree(first, one / first.name)
    args = train_args(demo_data, teacher, tmp_path / "x", "--distiller", "crd", "--num-classes", 10)
    args[args.index("--train-dir") + 1] = str(one)
    with pytest.raises(UserError, match="--distiller crd: CRD draws its negatives from other classes: the "
                                        "training set has only one"):
        main(get_args_parser().parse_args(args))
