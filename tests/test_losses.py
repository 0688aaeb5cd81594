"""Every loss and metric against a direct, loop-level formula, and the trainer reporting each
loss as that formula on the replayed store pixels."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_user_error, run_script, train_in_process
from rounding import FLOAT64, between_orders

from softlabel.training.losses import LOSSES, keep_topk
from softlabel.training.metrics import SplitMetrics, classification_metrics, expected_calibration_error

T = 3.0


def logits(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64) * 2,
            torch.tensor([0, 1, 2, 3, 4, 0]))


def softmax(row, temp=1.0):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


# Float64 on both sides (torch here, Python's math in the references): sums of at most 6 samples
# and 5 classes, exp and log within 3.5 ulp each (counted as 4 roundings) and a few more
# operations a term: 64 roundings bound them. The magnitudes below bound the absolute size of
# what each formula sums, from its inputs.
DEPTH = 64


def log_prob_size(*rows: torch.Tensor, temp: float = T) -> float:
    """A bound of |log softmax(x / T)| over the rows: |x / T| + |logsumexp(x / T)| <= 2 max|x| / T + log C."""
    return max(2 * float(r.abs().max()) / temp + math.log(r.shape[-1]) for r in rows)


def near(got: float, want: float, magnitude: float) -> bool:
    return abs(got - want) <= between_orders(DEPTH, magnitude, FLOAT64)


def call(name, s, t, y, **kw):
    kw = {"temperature": T, "alpha": 2.5} | ({} if name == "kd" else {"ce_weight": 0.3}) | kw
    return float(LOSSES[name](s, t, y, **kw))


def ce_row(row, label, temp=1.0):
    return -math.log(softmax(row, temp)[label])


def test_kl():
    s, t, y = logits()
    want = sum(sum(q * (math.log(q) - math.log(p)) for q, p in zip(softmax(tr, T), softmax(sr, T)))
               for sr, tr in zip(s.tolist(), t.tolist())) / len(s)
    assert near(call("kl", s, t, y), want, 2 * log_prob_size(s, t))  # q |log q| + q |log p|
    assert near(call("kl", t, t, y), 0.0, 2 * log_prob_size(t))


def test_soft_ce():
    s, t, y = logits()
    want = sum(-sum(q * math.log(p) for q, p in zip(softmax(tr, T), softmax(sr, T)))
               for sr, tr in zip(s.tolist(), t.tolist())) / len(s)
    assert near(call("soft_ce", s, t, y), want, log_prob_size(s))


def test_ce_ignores_the_teacher():
    s, t, y = logits()
    want = sum(ce_row(r, label) for r, label in zip(s.tolist(), y.tolist())) / len(s)
    assert near(call("ce", s, t, y), want, log_prob_size(s, temp=1.0))
    assert call("ce", s, t * 0, y) == call("ce", s, t, y)


@pytest.mark.parametrize("name, dist", [("mse_gt", lambda a, b: (a - b) ** 2), ("mae_gt", lambda a, b: abs(a - b))])
def test_regression_losses_with_ground_truth(name, dist):
    s, t, y = logits()
    elems = [dist(a, b) for sr, tr in zip(s.tolist(), t.tolist()) for a, b in zip(sr, tr)]
    ce = sum(ce_row(r, label) for r, label in zip(s.tolist(), y.tolist())) / len(s)
    size = (float(s.abs().max()) + float(t.abs().max())) ** 2 + 1 + 0.3 * log_prob_size(s, temp=1.0)
    assert near(call(name, s, t, y, ce_weight=0.3), sum(elems) / len(elems) + 0.3 * ce, size)


@pytest.mark.parametrize("name, dist", [("mse_gt", lambda a, b: (a - b) ** 2), ("mae_gt", lambda a, b: abs(a - b))])
def test_regression_losses_on_top_k_labels_fit_only_the_stored_logits(name, dist):
    s, t, y = logits()
    t = keep_topk(t, 2)  # what a --label-format topk store gives: the rest is -inf
    per_sample = [sum(dist(a, b) for a, b in zip(sr, tr) if b != float("-inf")) / 2
                  for sr, tr in zip(s.tolist(), t.tolist())]
    ce = sum(ce_row(r, label) for r, label in zip(s.tolist(), y.tolist())) / len(s)
    size = (float(s.abs().max()) + float(t[t.isfinite()].abs().max())) ** 2 + 1 + 0.3 * log_prob_size(s, temp=1.0)
    assert near(call(name, s, t, y, ce_weight=0.3), sum(per_sample) / len(s) + 0.3 * ce, size)
    s.requires_grad_(True)
    LOSSES[name](s, t, y, temperature=1.0, ce_weight=0.3).backward()
    assert torch.isfinite(s.grad).all()


def pearson(a, b, eps=1e-5):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    da, db = [x - ma for x in a], [x - mb for x in b]
    return sum(x * z for x, z in zip(da, db)) / (math.sqrt(sum(x * x for x in da)) * math.sqrt(sum(z * z for z in db)) + eps)


def test_dist():
    s, t, y = logits()
    ps = [softmax(r, T) for r in s.tolist()]
    pt = [softmax(r, T) for r in t.tolist()]
    inter = 1 - sum(pearson(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols = range(len(ps[0]))
    intra = 1 - sum(pearson([r[c] for r in ps], [r[c] for r in pt]) for c in cols) / len(cols)
    # a correlation sums products of deviations from a mean: rounding is relative to the
    # probabilities (<= 1) while the result is relative to the deviations' norms
    spread = min(float((x - x.mean(d, keepdim=True)).norm(dim=d).min())
                 for x in (torch.tensor(ps), torch.tensor(pt)) for d in (0, 1))
    assert near(call("dist", s, t, y), T * T * (2 * inter + 2 * intra), 4 * T * T * 5 / spread ** 2)


def wsld_size(s, t, y) -> float:
    """The weight divides two cross-entropies (the teacher's may be small): its rounding grows
    with their ratio."""
    ratio = max(ce_row(sr, label) / (ce_row(tr, label) + 1e-7) for sr, tr, label in zip(s.tolist(), t.tolist(), y.tolist()))
    return log_prob_size(s, temp=1.0) + 2.5 * 4.0 * log_prob_size(s, t, temp=2.0) * (1 + ratio)


def test_wsld():
    s, t, y = logits()
    total = 0.0
    for sr, tr, label in zip(s.tolist(), t.tolist(), y.tolist()):
        w = 1 - math.exp(-max(ce_row(sr, label) / (ce_row(tr, label) + 1e-7), 0.0))
        total += w * -sum(q * math.log(p) for q, p in zip(softmax(tr, 2.0), softmax(sr, 2.0)))
    ce = sum(ce_row(r, label) for r, label in zip(s.tolist(), y.tolist())) / len(s)
    want = ce + 2.5 * 4.0 * total / len(s)
    assert near(call("wsld", s, t, y, temperature=2.0, alpha=2.5), want, wsld_size(s, t, y))


def test_kd():
    """Hinton KD: (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t/T) || softmax(s/T)), per-sample mean."""
    s, t, y = logits()
    total = 0.0
    for sr, tr, label in zip(s.tolist(), t.tolist(), y.tolist()):
        kl = sum(q * (math.log(q) - math.log(p)) for q, p in zip(softmax(tr, 4.0), softmax(sr, 4.0)))
        total += 0.1 * ce_row(sr, label) + 0.9 * 16.0 * kl
    size = 0.1 * log_prob_size(s, temp=1.0) + 0.9 * 16.0 * 2 * log_prob_size(s, t, temp=4.0)
    assert near(call("kd", s, t, y, temperature=4.0, alpha=0.9), total / len(s), size)
    # alpha = 0 is plain cross-entropy; alpha = 1 is T^2 x the kl loss: the same operations
    assert call("kd", s, t, y, alpha=0.0) == call("ce", s, t, y)
    assert near(call("kd", s, t, y, alpha=1.0), T * T * call("kl", s, t, y), T * T * 2 * log_prob_size(s, t))
    # RepDistiller's -r 0.1 -a 0.9 and its CRD+KD -r 1 -a 1: independent weights of CE and KD
    for gamma, a in ((0.1, 0.9), (1.0, 1.0)):
        want = gamma * call("ce", s, t, y) + a * 16.0 * call("kl", s, t, y, temperature=4.0)
        assert near(call("kd", s, t, y, temperature=4.0, alpha=a, ce_weight=gamma), want, size)


def test_kd_defaults():
    from softlabel.training.losses import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, PROBABILITY_LOSSES
    assert (DEFAULT_TEMPERATURE["kd"], DEFAULT_ALPHA["kd"]) == (4.0, 0.9)
    assert "kd" in PROBABILITY_LOSSES


def test_wsld_weight_has_no_gradient():
    s, t, y = logits()
    s.requires_grad_(True)
    LOSSES["wsld"](s, t, y, temperature=2.0, ce_weight=0.0, alpha=2.5).backward()
    assert torch.isfinite(s.grad).all()


def test_keep_topk_masks_all_but_the_top_k():
    t = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 1.0, 2.0]])
    masked = keep_topk(t, 2)
    assert masked[0].tolist() == [float("-inf"), 5.0, float("-inf"), 4.0]
    assert masked[1].tolist() == [9.0, float("-inf"), float("-inf"), 2.0]
    s = torch.randn(2, 4)
    # KL against the top-k teacher == KL against its distribution renormalized over the top k
    kl = LOSSES["kl"](s, masked, None, temperature=1.0)
    q = torch.softmax(masked, 1)
    want = (q * (torch.log(q.clamp_min(1e-30)) - torch.log_softmax(s, 1))).where(q > 0, torch.zeros(())).sum(1).mean()
    # float32 sums of 4 classes and 2 samples, two log-softmaxes on the way
    assert abs(float(kl) - float(want)) <= between_orders(3 * 4 + 2 + 12, 2 * log_prob_size(s, masked[masked.isfinite()], temp=1.0))
    for name in ("kl", "soft_ce", "dist", "wsld", "kd"):
        assert torch.isfinite(LOSSES[name](s, masked, torch.tensor([1, 0]), temperature=2.0, ce_weight=0.1, alpha=2.5))


def test_losses_are_sample_means_that_recombine():
    """A batch split in two, each part weighed by its share, gives the whole batch's loss:
    what lets ranks and micro-batches train exactly like one big step."""
    s, t, y = logits()
    for name in ("kl", "soft_ce", "ce", "mse_gt", "mae_gt", "wsld", "kd"):
        whole = call(name, s, t, y)
        parts = call(name, s[:2], t[:2], y[:2]) * 2 / 6 + call(name, s[2:], t[2:], y[2:]) * 4 / 6
        size = wsld_size(s, t, y) if name == "wsld" else \
            (float(s.abs().max()) + float(t.abs().max())) ** 2 + (1 + 2.5 * T * T) * 2 * log_prob_size(s, t, temp=1.0)
        assert near(parts, whole, size), name


# ----------------------------------------------------------------------------- metrics

def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.3 -> max 0.4 (wrong) with 3 bins
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    targets = torch.tensor([0, 1, 0, 0])
    # bins (0, 1/3], (1/3, 2/3], (2/3, 1]: {} ; {0.6 right, 0.4 wrong} ; {0.9 right, 0.9 wrong}
    # ECE = 2/4 * |0.5 - 0.5| + 2/4 * |0.5 - 0.9| = 0.2
    # float32 confidences (exp of their log: within 4 roundings) averaged over 4 samples
    assert abs(expected_calibration_error(probs.log(), targets, n_bins=3) - 0.2) <= between_orders(4 + 4 + 4, 1.0)


def test_ece_perfectly_calibrated_is_near_zero_and_overconfident_is_large():
    g = torch.Generator().manual_seed(0)
    n, c = 20000, 10
    # Calibrated by construction: draw each label from the softmax the model predicts.
    logits_ = torch.randn(n, c, generator=g) * 2
    labels = torch.multinomial(torch.softmax(logits_, 1), 1, generator=g).squeeze(1)
    assert expected_calibration_error(logits_, labels) < 0.02
    # The same predictions made ten times sharper: confident, not more often right.
    assert expected_calibration_error(logits_ * 10, labels) > 0.15


def test_classification_metrics():
    logits_ = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 2, 0, 0, 0], [0, 0, 0, 0, 0, 3.0]])
    targets = torch.tensor([0, 2, 1])
    m = classification_metrics(logits_, targets)
    # percentages of counts (a division and a product); the nll is a float32 mean of 3 log-softmaxes
    assert abs(m["top1"] - 100 / 3) <= between_orders(2, 100) and abs(m["top5"] - 200 / 3) <= between_orders(2, 100)
    assert abs(m["nll"] - float(F.cross_entropy(logits_, targets))) <= between_orders(3 + 6 + 8, log_prob_size(logits_, temp=1.0))
    assert 0 <= m["ece"] <= 100


def test_metrics_batch_by_batch_equal_the_whole_split():
    """Evaluation accumulates per batch (no logit kept per image): the same numbers as the split at once."""
    g = torch.Generator().manual_seed(1)
    logits_, targets = torch.randn(300, 7, generator=g) * 3, torch.randint(0, 7, (300,), generator=g)
    whole = classification_metrics(logits_, targets)
    parts = SplitMetrics()
    for chunk in range(0, 300, 64):
        parts.update(logits_[chunk:chunk + 64], targets[chunk:chunk + 64])
    got = parts.result()
    assert got["top1"] == whole["top1"] and got["top5"] == whole["top5"]
    # float64 sums of 300 float32 terms in two orders: the nll (per-image log-softmax of 7 terms) and ECE
    assert abs(got["nll"] - whole["nll"]) <= between_orders(300 + 16, 300 * log_prob_size(logits_, temp=1.0)) / 300
    assert abs(got["ece"] - whole["ece"]) <= between_orders(300 + 8, 100.0 * 2)


# ----------------------------------------------------------------------------- through the trainer

def test_the_trainer_reports_every_loss_type_as_its_formula(cutmix_store, demo_data, tmp_path):
    """Every --loss-type trains one epoch of the store at learning rate 0, so the student stays at
    its (checkpointed) initialisation and each step can be recomputed: the reported train loss is
    the loss above, with the defaults --help gives (T 3; wsld T 2, alpha 2.5; kd T 4, alpha 0.9;
    --ce-weight 0.1), on the student's logits for the replayed store pixels and the stored labels
    (their top 3 under --keep-topk 3), averaged over the epoch's 20 samples."""
    from softlabel import replay
    from softlabel.data import scan_image_folder
    from softlabel.loader import StoreBatches
    from softlabel.stores.batch import Reader
    from softlabel.models import create_model
    train = "validate/train_FKD_parallel.py"
    manifest = json.loads((cutmix_store / "manifest.json").read_text())
    index = scan_image_folder(str(demo_data / "ipc2"), "--train-dir")
    jobs = [(0, b) for b in range(manifest["batches_per_epoch"])]
    items = [StoreBatches(Reader(str(cutmix_store), manifest), index, jobs)[i] for i in range(len(jobs))]
    assert sum(len(item["target"]) for item in items) == manifest["num_samples"] == 20
    for loss in sorted(LOSSES):
        out = tmp_path / loss
        topk = 3 if loss in ("kl", "wsld") else None
        train_in_process("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path",
                         cutmix_store, "--model", "mlpnet", "--loss-type", loss, "--epochs", 1, "--adamw-lr", 0,
                         "--no-progress", "--output-dir", out, *(["--keep-topk", topk] if topk else []))
        result = json.loads((out / "results.json").read_text())
        assert result["labels"] == f"soft ({loss})" and result["steps"] == 3, loss
        assert {"top1", "top5", "nll", "ece"} <= set(result)
        ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
        student = create_model("mlpnet", 10)
        student.load_state_dict(ckpt["model"])
        temperature, alpha = {"wsld": (2.0, 2.5), "kd": (4.0, 0.9), "lo_kd": (3.0, 0.1), "lo_sl": (3.0, 0.1),
                              "lo_sl_gt": (3.0, 0.1)}.get(loss, (3.0, 1.0))
        total = magnitude = 0.0
        with torch.no_grad():
            for item in items:
                x = replay.slice_inputs(item["pixels"], item["partners"], manifest["mean"], manifest["std"],
                                        item["mix_lam"], item["mix_bbox"])
                soft = item["soft_label"].float()
                value = LOSSES[loss](student(x), keep_topk(soft, topk) if topk else soft, item["target"],
                                     temperature=temperature, ce_weight=0.1, alpha=alpha)
                total += float(value) * len(item["target"])
                magnitude += abs(float(value)) * len(item["target"])
        # the same float32 losses on the same batches; only the epoch's mean of its 3 step losses
        # (each weighted by its batch) is summed in another order: 2 roundings a step and 2 more
        assert abs(result["train_loss"] - total / 20) <= between_orders(2 * 3 + 2, magnitude / 20), loss
    assert_user_error(run_script(train, "--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, "--model",
                                 "mlpnet", "--loss-type", "mse_gt", "--keep-topk", 3, "--no-progress",
                                 "--output-dir", tmp_path / "y", check=False),
                      "--keep-topk", "mse_gt")
