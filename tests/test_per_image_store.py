"""FKD per-image soft labels: generation (relabel/generate_soft_label_fkd.py), the format and
its quantization (softlabel/stores/per_image.py), and training from it (--fkd-layout per-image)."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_script, script_env, tree_bytes
from rounding import between_orders

from softlabel import replay
from softlabel.data import scan_image_folder
from softlabel.errors import UserError
from softlabel.stores import StepPlan, open_store, per_image
from softlabel.teachers import load_teacher
from softlabel.threads import running_on
from softlabel.training.losses import kl, soft_ce

GEN = "relabel/generate_soft_label_fkd.py"
# 10 images (ipc1) x 8 crops, two teacher forwards of 4 crops per image, 24 px crops of 32 px images
CROPS = ("--num_crops", 8, "--num_seg", 4, "--input_size", 24, "--min_scale_crops", 0.3, "-j", 0)


def generate(data, teacher, out, *extra, check=True):
    return run_script(GEN, data, "--teacher-path", teacher, "--save_path", out, *CROPS, *extra, check=check)


def in_process(module: str, *argv) -> None:
    """A script's main() in this process (saves a fresh interpreter's imports; the command line
    itself is tested through run_script elsewhere in this file)."""
    import importlib
    saved = sys.argv
    sys.argv = [module, *map(str, argv)]
    try:
        script = importlib.import_module(module)
        script.main(script.get_args_parser().parse_args())
    finally:
        sys.argv = saved


def generate_in_process(data, teacher, out, *extra) -> None:
    in_process("softlabel.commands.relabel_fkd", data, "--teacher-path", teacher, "--save_path", out, *CROPS,
               "--device", "cpu", *extra)


def k5_args():
    return ("--label_type", "marginal_smoothing_k5", "--use_fp16")


@pytest.fixture(scope="module")
def stores(demo_data, teacher_ckpt, tmp_path_factory):
    """One store per label type (marginal_smoothing_k5 in fp16, the others in fp32)."""
    root = tmp_path_factory.mktemp("fkd")
    out = {}
    for label_type in per_image.LABEL_TYPES:
        extra = k5_args() if label_type == "marginal_smoothing_k5" else ("--label_type", label_type)
        generate_in_process(demo_data / "ipc1", teacher_ckpt, root / label_type, *extra)
        out[label_type] = root / label_type
    return out


def teacher_probs(teacher, manifest, image, coords, flips):
    """The teacher's softmax on crops re-rendered from the image at the stored boxes and flips,
    in the generator's segments of 4 crops."""
    pixels = replay.render_batch([image] * len(coords), coords, flips, manifest["input_size"])
    with torch.inference_mode():
        logits = torch.cat([teacher.model(replay.normalize(pixels[k:k + 4], teacher.mean, teacher.std))
                            for k in range(0, len(pixels), 4)])
    return F.softmax(logits.float() / manifest["temperature"], dim=1)


def load_image(index, i):
    from softlabel.data import load_rgb
    return load_rgb(index.samples[i][0])


def test_every_label_type_round_trips_the_teachers_probabilities(stores, demo_data, teacher_ckpt):
    teacher = load_teacher(None, str(teacher_ckpt))
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    for label_type, root in stores.items():
        manifest = json.loads((root / per_image.MANIFEST).read_text())
        assert (manifest["label_type"], manifest["num_crops"], manifest["num_classes"]) == (label_type, 8, 10)
        files = sorted(root.rglob("*.tar"))
        assert len(files) == 10 and {f.parent.name for f in files} == set(index.classes)
        for i in (0, 5, 9):
            coords, flips, classes, values = torch.load(per_image.label_path(str(root), index, i), weights_only=True)
            assert coords.dtype == torch.float32 and coords.shape == (8, 4) and flips.dtype == torch.bool
            assert classes.dtype == torch.uint8
            p = teacher_probs(teacher, manifest, load_image(index, i), coords, flips)
            got = per_image.recover(classes, values, label_type, 10)
            # probabilities of 10 classes (a softmax: a sum of 10 exps, then a division) added up again
            assert float((got.sum(1) - 1).abs().max()) <= between_orders(2 * 10 + 4, 1.0), label_type
            top = p.topk(5, dim=1)
            assert torch.equal(classes[:, 0].long(), p.argmax(1)), label_type
            if label_type == "hard":
                assert values is None and torch.equal(got, F.one_hot(p.argmax(1), 10).float())
            elif label_type == "smoothing":
                assert values.dtype == torch.float32 and values.shape == (8, 1)
                # the generator's softmax in its segments of 4 crops, as here: the same operations
                assert torch.equal(values[:, 0], top.values[:, 0])
                rest = (1 - values[:, :1]) / 9
                assert torch.equal(got, rest.expand(8, 10).clone().scatter_(1, classes.long(), values))
            elif label_type == "marginal_smoothing_k5":
                assert values.dtype == torch.float16 and classes.shape == (8, 5)
                assert torch.equal(values, top.values.half()) and torch.equal(classes.long(), top.indices)
                kept = got.gather(1, classes.long())
                assert torch.equal(kept, values.float())  # the top-5 exactly as stored
                others = got.scatter(1, classes.long(), -1.0)
                expected = (1 - values.float().sum(1, keepdim=True)) / 5
                assert float((others[others >= 0].view(8, 5) - expected).abs().max()) <= between_orders(5 + 2, 1.0)
            elif label_type == "marginal_smoothing_k10":  # 10 classes: every probability kept
                assert classes.shape == (8, 10)
                assert torch.equal(got, p)
            else:  # marginal_renorm
                assert classes.shape == (8, 5)
                renorm = top.values / top.values.sum(1, keepdim=True)
                assert float((got.gather(1, top.indices) - renorm).abs().max()) <= between_orders(5 + 2, 1.0)
                assert int((got > 0).sum()) == 8 * 5


def test_stored_crops_are_the_pixels_the_teacher_labelled_and_derive_from_seed_and_image(stores, demo_data,
                                                                                         teacher_ckpt):
    teacher = load_teacher(None, str(teacher_ckpt))
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    root = stores["marginal_smoothing_k10"]  # all 10 probabilities stored, float32
    manifest = json.loads((root / per_image.MANIFEST).read_text())
    for i in range(len(index)):
        coords, flips, classes, values = torch.load(per_image.label_path(str(root), index, i), weights_only=True)
        image = load_image(index, i)
        expected = per_image.sample_crops(42, i, 8, image.width, image.height, (0.3, 0.936))
        assert torch.equal(coords, expected[0]) and torch.equal(flips, expected[1])
        p = teacher_probs(teacher, manifest, image, coords, flips)
        stored = torch.zeros(8, 10).scatter_(1, classes.long(), values)
        assert torch.equal(stored.argmax(1), p.argmax(1))
        assert torch.equal(stored, p)  # the generator's operations, in its segments of 4 crops
    # the same crops under every label type (they depend on seed and image only)
    for other in stores.values():
        for i in (0, 9):
            a = torch.load(per_image.label_path(str(other), index, i), weights_only=True)
            b = torch.load(per_image.label_path(str(root), index, i), weights_only=True)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rerun_resumes_to_the_same_bytes_and_concurrent_runs_agree(stores, demo_data, teacher_ckpt, tmp_path):
    reference = tree_bytes(stores["marginal_smoothing_k5"])
    store = tmp_path / "resumed"
    shutil.copytree(stores["marginal_smoothing_k5"], store)
    for name in ("0", "4", "9"):
        next((store / name).glob("*.tar")).unlink()
    (store / "3" / ".tmp-999999999-leftover").write_bytes(b"partial")  # a killed writer's file
    proc = generate(demo_data / "ipc1", teacher_ckpt, store, *k5_args(), "-b", 2)
    assert "3 files to write, 7 already done" in proc.stdout
    assert tree_bytes(store) == reference

    # two runs at once on one new --save_path (other -b and -j): the tree of one run
    shared = tmp_path / "shared"
    cmd = [sys.executable, str(ROOT / GEN), str(demo_data / "ipc1"), "--teacher-path", str(teacher_ckpt),
           "--save_path", str(shared), *map(str, CROPS), *k5_args()]
    procs = [subprocess.Popen(cmd + extra, cwd=ROOT, env=script_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for extra in (["-b", "3"], ["-j", "1"])]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert tree_bytes(shared) == reference


class TimesThreads(torch.nn.Module):
    """Scales its input by the intra-op thread count it runs on: a result that depends on the threads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.get_num_threads()


def fewer_threads_faster(label, give_up=math.inf):
    """relabel_fkd.timed, as if every thread fewer were faster: the search goes down to one thread."""
    return float(torch.get_num_threads()), label()


@pytest.fixture
def two_threads():
    """Torch's default is two intra-op threads (so there are fewer to try on any machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def test_teacher_modules_whose_results_depend_on_the_threads_keep_the_default(two_threads, monkeypatch):
    from softlabel.commands import relabel_fkd
    from softlabel.teachers import Ensemble, Teacher
    torch.manual_seed(0)
    sensitive = TimesThreads()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5), sensitive).eval()
    ens = Ensemble([Teacher("t", model, [0.5] * 3, [0.25] * 3, 5, "private", "local", "-")], "mean", 0.5,
                   torch.device("cpu"))
    pixels = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    label = lambda: relabel_fkd.label_crops(ens, pixels, 2, 1.0)  # noqa: E731
    reference = label()
    keep = relabel_fkd.differing_modules(model, label, 2, 1)
    assert sensitive in keep
    with running_on(1, default=2):
        assert not torch.equal(label(), reference)  # all on one thread: other results
    with running_on(1, keep, default=2):
        assert torch.get_num_threads() == 1 and torch.equal(label(), reference)
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(relabel_fkd, "timed", fewer_threads_faster)
    threads, keep = relabel_fkd.labelling_threads(ens, 4, 2, 4, 1.0)
    assert threads == 1 and sensitive in keep and torch.get_num_threads() == 2


def test_labelling_on_fewer_threads_writes_the_bytes_of_the_default_threads(demo_data, teacher_ckpt, tmp_path,
                                                                            two_threads, monkeypatch, capsys):
    """Each file equals, byte for byte, the one the teacher's plain forward passes on torch's default
    threads give (image by image, in segments of --num_seg crops): a conv net with batch norm."""
    from softlabel.commands import relabel_fkd
    monkeypatch.setattr(relabel_fkd, "timed", fewer_threads_faster)
    generate_in_process(demo_data / "ipc1", teacher_ckpt, tmp_path / "s", *k5_args())
    assert "the teacher runs on 1 of 2 CPU threads" in capsys.readouterr().out
    assert torch.get_num_threads() == 2  # the caller's setting again
    teacher = load_teacher(None, str(teacher_ckpt))
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    manifest = json.loads((tmp_path / "s" / per_image.MANIFEST).read_text())
    for i in range(len(index)):
        image = load_image(index, i)
        coords, flips = per_image.sample_crops(42, i, 8, image.width, image.height, (0.3, 0.936))
        probs = teacher_probs(teacher, manifest, image, coords, flips)
        want = per_image.file_bytes(coords, flips, *per_image.quantize(probs, "marginal_smoothing_k5", True))
        assert open(per_image.label_path(str(tmp_path / "s"), index, i), "rb").read() == want, i
    # a rerun with every file written times nothing: its start-up does not grow with a choice it does not need
    generate_in_process(demo_data / "ipc1", teacher_ckpt, tmp_path / "s", *k5_args())
    out = capsys.readouterr().out
    assert "0 files to write" in out and "the teacher runs on" not in out


def test_a_write_that_fails_is_one_error_line(demo_data, tmp_path):
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    writer = per_image.PerImageWriter(str(tmp_path / "gone"), index)  # its class folders were never made
    coords, flips = per_image.sample_crops(42, 0, 2, 32, 32, (0.3, 0.936))
    writer.write(0, coords, flips, *per_image.quantize(torch.rand(2, 10), "hard", False))
    with pytest.raises(UserError, match="cannot write .*gone"):
        writer.finish()


def test_other_settings_or_other_images_are_refused_before_any_work(stores, demo_data, teacher_ckpt, tmp_path):
    """(--num_crops not a multiple of --num_seg: test_bad_inputs.py.)"""
    # a rerun with other settings is refused, and nothing changes
    before = tree_bytes(stores["hard"])
    with pytest.raises(UserError, match="--save_path .*label_type: the store has 'hard', this run has 'smoothing'"):
        generate_in_process(demo_data / "ipc1", teacher_ckpt, stores["hard"], "--label_type", "smoothing")
    assert tree_bytes(stores["hard"]) == before
    with pytest.raises(UserError, match="--reference_path .* other images"):
        generate_in_process(demo_data / "ipc2", teacher_ckpt, tmp_path / "s", "--reference_path", stores["hard"])
    assert not (tmp_path / "s").exists()


def test_reference_path_reuses_the_crops_for_a_second_teacher(stores, demo_data, tmp_path):
    from softlabel.models import create_model
    torch.manual_seed(1)
    second = tmp_path / "teacher2.pth"
    torch.save({"model": create_model("democnn_small", 10).state_dict(), "arch": "democnn_small",
                "num_classes": 10, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, second)
    ref = stores["marginal_smoothing_k10"]
    out = tmp_path / "second"
    in_process("softlabel.commands.relabel_fkd", demo_data / "ipc1", "--teacher-path", second, "--save_path", out,
               "--reference_path", ref, "--num_crops", 6, "--num_seg", 3, "--input_size", 16,
               "--label_type", "marginal_renorm", "-j", 0, "--device", "cpu")
    m, m_ref = (json.loads((d / per_image.MANIFEST).read_text()) for d in (out, ref))
    assert (m["fkd_seed"], m["min_scale_crops"], m["max_scale_crops"]) == (42, 0.3, 0.936)
    assert m["teacher"]["weights_sha256"] != m_ref["teacher"]["weights_sha256"]
    teacher = load_teacher(None, str(second))
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    for i in range(len(index)):
        coords, flips, classes, values = torch.load(per_image.label_path(str(out), index, i), weights_only=True)
        ref_coords, ref_flips, _, _ = torch.load(per_image.label_path(str(ref), index, i), weights_only=True)
        assert torch.equal(coords, ref_coords[:6]) and torch.equal(flips, ref_flips[:6])
        p = teacher_probs(teacher, m, load_image(index, i), coords, flips)
        assert torch.equal(classes.long(), p.topk(5, dim=1).indices)  # the second teacher's labels


def test_recovered_labels_feed_the_losses_exactly_at_t1():
    torch.manual_seed(0)
    probs = F.softmax(torch.randn(6, 10) * 3, dim=1)
    student = torch.randn(6, 10, requires_grad=True)
    q = F.log_softmax(student, dim=1)
    for label_type in per_image.LABEL_TYPES:
        p = per_image.recover(*per_image.quantize(probs, label_type, False), label_type, 10)
        t = per_image.log_probs(p)
        want_ce = -(p * q).sum(1).mean()
        want_kl = (torch.xlogy(p, p) - p * q).sum(1).mean()
        # sums over 10 classes of p |log p| and p |q|, each through two log-softmaxes (10 exps)
        size = float((torch.xlogy(p, p).abs() + (p * q).abs()).sum(1).mean())
        tol = between_orders(2 * 10 + 10 + 6 + 12, size)
        assert abs(float(soft_ce(student, t, None, temperature=1.0)) - float(want_ce)) <= tol, label_type
        loss = kl(student, t, None, temperature=1.0)
        assert abs(float(loss) - float(want_kl)) <= tol, label_type
        (grad,) = torch.autograd.grad(loss, student)
        assert bool(torch.isfinite(grad).all()), label_type
    # unquantized, log-probabilities act as logits at any temperature
    full = per_image.log_probs(probs)
    logits = probs.log() + 5.0
    size = 2 * (2 * float(logits.abs().max()) / 4.0 + math.log(10))  # |log softmax| <= 2 max|x| / T + log C
    got, want = kl(student, full, None, temperature=4.0), kl(student, logits, None, temperature=4.0)
    assert abs(float(got) - float(want)) <= between_orders(2 * 10 + 10 + 6 + 12, size)


def test_training_steps_take_unused_crops_and_ranks_split_every_step(stores, demo_data):
    # every crop once before any repeats: 8 stored, 2 per epoch -> epochs 0..3 use all 8
    used = [c for e in range(4) for c in per_image.crops_for(0, 5, e, 2, 8)]
    assert sorted(used) == list(range(8))
    root = stores["smoothing"]
    manifest = json.loads((root / per_image.MANIFEST).read_text())
    index = scan_image_folder(str(demo_data / "ipc1"), "--data")
    targets = torch.tensor(index.targets)
    read = open_store(str(root), layout="per-image").reader(index)
    plan = StepPlan(0, 4, 2, targets=targets)
    one = per_image.PerImageSteps(read, manifest, index, [(1, 2)], plan)[0]
    assert one["batch_size"] == 4 and one["pixels"].shape == (4, 3, 24, 24)  # 10 = 4+4+2 images
    parts = [per_image.PerImageSteps(read, manifest, index, [(1, 2)], plan, rank=r, world=3)[0]
             for r in range(3)]
    for key in ("pixels", "soft_label", "target", "index"):
        assert torch.equal(torch.cat([p[key] for p in parts]), one[key]), key


def test_trainer_trains_from_a_per_image_store(stores, demo_data, tmp_path):
    out = tmp_path / "run"
    proc = run_script("validate/train_FKD_parallel.py", "--train-dir", demo_data / "ipc1", "--val-dir",
                      demo_data / "val", "--fkd-path", stores["marginal_smoothing_k5"], "--fkd-layout", "per-image",
                      "--num-crops", 2, "-b", 4, "--epochs", 2, "--model", "democnn_small", "--loss-type", "soft_ce",
                      "-T", 1, "-j", 0, "--eval-interval", 1, "--no-progress", "--output-dir", out)
    assert "FKD marginal_smoothing_k5) labels, epochs 0..2, batch 4 images x 2 crops, input 24px" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]  # ceil(10 / 4) steps per epoch
    assert all(r["train_loss"] > 0 for r in rows) and rows[1]["train_loss"] < rows[0]["train_loss"]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 6 and "top1" in results
    # a per-image store read as a batch store: told what to pass; more crops than stored: refused
    train = ("softlabel.commands.train", "--train-dir", demo_data / "ipc1", "--fkd-path", stores["hard"],
             "--output-dir", tmp_path / "o", "--device", "cpu")
    with pytest.raises(UserError, match="holds FKD per-image labels; pass --fkd-layout per-image"):
        in_process(*train)
    with pytest.raises(UserError, match="--num-crops 9 is more than the 8 crops"):
        in_process(*train, "--fkd-layout", "per-image", "--num-crops", 9, "--epochs", 1)


def test_fkd_flag_spellings_train_the_same_student(stores, demo_data, tmp_path):
    """FKD's train_FKD.py spellings (--softlabel_path, --soft_label_type, --num_crops, --temp) run
    the same training as ours when --recipe ours keeps our recipe (--softlabel_path alone brings
    train_FKD.py's: tests/test_fkd_train_command.py); a label type the store does not hold is refused."""
    common = ("--train-dir", demo_data / "ipc1", "-b", 4, "--epochs", 1, "--model", "democnn_small",
              "--loss-type", "soft_ce", "-j", 0, "--no-progress", "--device", "cpu")
    path = stores["marginal_smoothing_k5"]
    in_process("softlabel.commands.train", *common, "--fkd-path", path, "--fkd-layout", "per-image",
               "--num-crops", 2, "-T", 1, "--output-dir", tmp_path / "ours")
    in_process("softlabel.commands.train", *common, "--softlabel_path", path, "--soft_label_type",
               "marginal_smoothing_k5", "--num_crops", 2, "--temp", 1, "--recipe", "ours", "--output-dir", tmp_path / "fkd")
    ours, theirs = (torch.load(tmp_path / d / "checkpoint.pth", weights_only=True)["model"] for d in ("ours", "fkd"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(UserError, match="--soft_label_type hard: the FKD store .* holds marginal_smoothing_k5"):
        in_process("softlabel.commands.train", *common, "--softlabel_path", path, "--soft_label_type", "hard",
                   "--output-dir", tmp_path / "bad")
    with pytest.raises(UserError, match="--softlabel_path .* and --fkd-path .* name two stores"):
        in_process("softlabel.commands.train", *common, "--softlabel_path", path, "--fkd-path", stores["hard"],
                   "--output-dir", tmp_path / "bad")
