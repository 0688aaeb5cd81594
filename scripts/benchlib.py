"""What the bench_*.py scripts share (a module, not a script): the demo inputs they build, the
figures they measure, the job runner of the label-optimization front end, and the tables they write.
The scripts import it from their own folder (Python puts a script's folder on sys.path)."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from softlabel import replay
from softlabel.data import IMAGENET_MEAN, IMAGENET_STD, scan_image_folder
from softlabel.errors import UserError
from softlabel.models import create_model
from softlabel.stores import batch as store
from softlabel.stores import create_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


# ----------------------------------------------------------------------------- demo inputs

def demo_images(work: str) -> str:
    """The demo's training images (IPC1), made once in ``work``."""
    data = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(data, "train")):
        subprocess.run([PY, os.path.join(ROOT, "scripts", "make_demo_data.py"), "--out", data, "--ipc", "1"],
                       check=True, capture_output=True)
    return os.path.join(data, "train")


def demo_store(work: str, epochs: int) -> tuple[str, str, str]:
    """The demo's training images, a random resnet18 teacher, and a store of ``epochs`` epochs
    relabelled by it (64 px crops, batch 20), made once in ``work``."""
    train = demo_images(work)
    torch.manual_seed(1)
    teacher = os.path.join(work, "resnet18_teacher.pth")
    torch.save({"model": create_model("resnet18", 10).state_dict(), "arch": "resnet18", "num_classes": 10}, teacher)
    store = os.path.join(work, "store" if epochs == 1 else f"store_e{epochs}")
    if not os.path.isdir(os.path.join(store, "epoch_0")):
        subprocess.run([PY, os.path.join(ROOT, "relabel", "generate_soft_label.py"), "--data", train, "--teacher-path",
                        teacher, "--fkd-path", store, "--epochs", str(epochs), "-b", "20", "--input-size", "64",
                        "--print-freq", "1000"], check=True, capture_output=True, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    return train, teacher, store


# ----------------------------------------------------------------------------- an ImageNet-shaped synthetic set


SIZE, CLASSES = 224, 1000


def textured(rng: np.random.Generator) -> np.ndarray:
    """A 224 x 224 RGB image with structure at every scale: an upsampled coarse colour field,
    mid-frequency blobs and pixel noise (a flat or pure-noise image decodes faster or slower
    than a photograph)."""
    coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.float32)
    base = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC), np.float32)
    mid = rng.normal(0, 40, (SIZE // 8, SIZE // 8, 3)).astype(np.float32)
    mid = np.asarray(Image.fromarray(np.clip(mid + 128, 0, 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR),
                     np.float32) - 128
    fine = rng.normal(0, 12, (SIZE, SIZE, 3)).astype(np.float32)
    return np.clip(base + mid + fine, 0, 255).astype(np.uint8)


def make_set(root: str, ipc: int, fmt: str) -> str:
    """1000 class folders x ``ipc`` images, seeded; kept when already there."""
    done = os.path.join(root, ".complete")
    if os.path.isfile(done):
        return root
    rng = np.random.default_rng(ipc)
    for c in range(CLASSES):
        folder = os.path.join(root, f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(ipc):
            img = Image.fromarray(textured(rng))
            if fmt == "jpeg":
                img.save(os.path.join(folder, f"{i}.jpg"), quality=90)
            else:
                img.save(os.path.join(folder, f"{i}.png"))
    open(done, "w").close()
    return root


def make_store(path: str, data: str, batch: int, epochs: int) -> str:
    """A packed top-5 store of ``data``'s images: crops and flips sampled as relabel samples
    them (the same functions; every image is 224 px, so no image is decoded), random logits."""
    index = scan_image_folder(data, "--data")
    per_epoch = replay.batches_per_epoch(len(index), batch)
    names = index.classes
    manifest = {**store.container_of("topk"), "label_keep": 1.0, "fkd_seed": 42, "batch_size": batch,
                "epochs": epochs, "batches_per_epoch": per_epoch, "num_samples": len(index), "num_classes": CLASSES,
                "class_names": names, "class_to_index": {n: i for i, n in enumerate(names)}, "input_size": SIZE,
                "min_scale_crops": 0.08, "max_scale_crops": 1.0, "mix_type": "none", "mixup": None, "cutmix": None,
                "use_fp16": True, "label_format": "topk", "topk": 5, "topk_fill": "residual",
                "topk_fill_temperature": 1.0, "temperature": 1.0, "teachers": [], "ensemble": None,
                "primary_weight": None, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "dataset_fingerprint": index.fingerprint(), "created_by": "scripts/bench_loader.py"}
    writer = create_store(path, manifest, flag="bench")
    g = torch.Generator().manual_seed(0)
    for e, b in replay.epoch_jobs(0, epochs, per_epoch):
        if writer.exists(e, b):
            continue
        idx = replay.epoch_order(42, e, len(index))[replay.batch_slice(batch, b)]
        coords, flips = replay.sample_crops_and_flips(replay.batch_rng(42, e, b), [(SIZE, SIZE)] * len(idx),
                                                      (0.08, 1.0))
        writer.write(e, b, store.BatchRecord(coords, flips, None, None, None, torch.randn(len(idx), CLASSES, generator=g),
                                             torch.from_numpy(idx.astype(np.int64))))
    writer.finish()
    return path


def tiny_png_folder(root: str, images: int, classes: int) -> str:
    """``images`` 8 x 8 PNGs spread over ``classes`` class folders, made once in ``root``: every
    file holds the bytes of one encoded image (many files fast; what is measured is their count)."""
    done = os.path.join(root, ".complete")
    if os.path.isfile(done):
        return root
    import io
    buf = io.BytesIO()
    Image.fromarray(np.arange(192, dtype=np.uint8).reshape(8, 8, 3)).save(buf, "PNG")
    data = buf.getvalue()
    for n in range(images):
        folder = os.path.join(root, f"n{n % classes:08d}")
        if n < classes:
            os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{n // classes:07d}.png"), "wb") as f:
            f.write(data)
    open(done, "w").close()
    return root


# ----------------------------------------------------------------------------- measured rates


STEADY = re.compile(r"then ([\d.]+) img/s")


# A child interpreter that runs ``setup`` (its imports: the baseline), then ``stmt``, and prints its
# wall time and its peak resident memory above the baseline (VmHWM reset after the imports).
_MEASURED = r"""
import json, re, sys, time
sys.path.insert(0, sys.argv[1])
exec(sys.argv[2])
def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) / 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base, start = status("VmRSS"), time.perf_counter()
exec(sys.argv[3])
wall = time.perf_counter() - start
print("\nMEASURED " + json.dumps({"wall_s": wall, "base_mb": base, "peak_mb": status("VmHWM") - base}))
"""


def measured_child(tree: str, setup: str, stmt: str) -> dict:
    """Wall seconds and peak RSS (MB above the interpreter after ``setup``) of ``stmt`` run in a
    fresh interpreter with ``tree``'s ``softlabel`` (a checkout: compare two versions in one run)."""
    proc = subprocess.run([PY, "-c", _MEASURED, os.path.abspath(tree), setup, stmt], cwd=tree,
                          capture_output=True, text=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("MEASURED ")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"measured child failed ({tree}: {stmt}):\n{proc.stderr[-2000:]}")
    return json.loads(line[-1][len("MEASURED "):])


def in_memory_bound(steps: int, batch: int, size: int, classes: int = 10, *, amp: Optional[torch.dtype] = None,
                    channels_last: bool = False, sgd: bool = False, temperature: float = 3.0) -> float:
    """Images/s of forward + KL + backward + AdamW (or SGD) on tensors already in memory, on the
    device the trainer would use, under the given autocast and memory format."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the trainer runs too
    model = create_model("resnet18", classes).train().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4) if sgd
           else torch.optim.AdamW(model.parameters(), lr=1e-3))
    t = torch.randn(batch, classes, device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x).float()
        loss = F.kl_div(F.log_softmax(logits / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
        loss.backward()
        opt.step()

    step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps - 1):
        step()
    sync()
    return (steps - 1) * batch / (time.perf_counter() - start)


def trainer_rate(args: list[str]) -> float:
    out = args[args.index("--output-dir") + 1]
    shutil.rmtree(out, ignore_errors=True)  # each repeat is a new run (the trainer keeps a finished one)
    cmd = [PY, os.path.join(ROOT, "validate", "train_FKD_parallel.py"), *args, "--no-progress",
           "--eval-interval", "1000", "--save-interval", "1000"]
    # CUDA left visible: the trainer must run on the device the bound runs on
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed:\n{proc.stderr[-2000:]}")
    m = STEADY.search(proc.stdout)
    if not m:
        raise SystemExit(f"no steady-state figure in:\n{proc.stdout[-2000:]}")
    return float(m.group(1))


# ----------------------------------------------------------------------------- the label-optimization front end's runs


FRONT_END = "validate/label_optimization.py"


# Teachers, by role: trained by the front-end's Vanilla (the study's run_vanilla.bash) on the full split.
TEACHERS = {"r32": "resnet32", "r44": "resnet44"}


# The study's optimizer (its README's command): SGD lr 0.1, weight decay 5e-4, momentum 0.9.
STUDY = ("--lr", "0.1", "--wd", "5e-4")


@dataclass
class Job:
    name: str
    argv: list[str]
    done_file: str
    cost: float                        # rough work, for the order jobs start in
    deps: list[str] = field(default_factory=list)
    log: str = ""
    marker: Optional[str] = None       # written when the job succeeds (stores)

    def done(self) -> bool:
        return os.path.isfile(self.marker or self.done_file)


def teacher_dir(args, role: str) -> str:
    return os.path.join(args.work, f"teachers_{args.train_subset}_e{args.teacher_epochs}_b{args.batch}")


def teacher_run(args, role: str) -> str:
    return os.path.join(teacher_dir(args, role), "folder", "Vanilla", TEACHERS[role], f"seed{args.teacher_seed}", "train")


def data_root(args, s_key: str, subset: str) -> str:
    """A --dataset folder root for the front-end: train/ -> the setting's images, val/ -> the val split."""
    root = os.path.join(args.work, "roots", s_key)
    os.makedirs(root, exist_ok=True)
    for name, target in (("train", subset), ("val", args.val_subset)):
        link = os.path.join(root, name)
        if os.path.islink(link) and os.readlink(link) != os.path.join(args.data_dir, target):
            os.remove(link)
        if not os.path.lexists(link):
            os.symlink(os.path.join(args.data_dir, target), link)
    return root


@dataclass(frozen=True)
class Schedule:
    """How a front-end run trains: its batch size, epochs and seed."""
    batch: int
    epochs: int
    seed: int


def front_end(args, root: str, student: str, method: str, schedule: Schedule, out: str,
              smart: tuple[str, ...] = ()) -> list[str]:
    s = schedule
    argv = [PY, FRONT_END, "--dataset", "folder", "--data-root", root, "--n_class", str(args.num_classes),
            "--student_model", student, "--method", method, "--batch_size", str(s.batch),
            "--epochs", str(s.epochs), *STUDY, "--seed", str(s.seed), "--eval-interval", str(s.epochs),
            "--result", out, "--no-progress"]
    if smart:
        argv += ["--smart_model", ",".join(TEACHERS[t] for t in smart)]
        if method != "random":
            argv += ["--smart_model_path", ",".join(os.path.join(teacher_run(args, t), "checkpoint.pth") for t in smart)]
    return argv


def run_jobs(jobs: list[Job], workers: int, threads: int) -> dict[str, float]:
    """Run the jobs not yet done, at most ``workers`` at a time (each with ``threads`` torch
    threads), a job once its dependencies are done, the ready job on the costliest chain first."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # priority: a job's own cost plus the costliest chain of jobs waiting on it (critical path first)
    rank: dict[str, float] = {}

    def chain(job: Job) -> float:
        if job.name not in rank:
            rank[job.name] = job.cost + max((chain(j) for j in jobs if job.name in j.deps), default=0.0)
        return rank[job.name]
    pending = {j.name: j for j in jobs if not j.done()}
    finished = {j.name for j in jobs if j.done()}
    if pending:
        print(f"{len(finished)} of {len(jobs)} runs cached; running {len(pending)} ({workers} at a time, "
              f"{threads} thread(s) each)", flush=True)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    times: dict[str, float] = {}
    failed: list[str] = []
    while pending or running:
        ready = sorted((j for j in pending.values() if all(d in finished for d in j.deps)),
                       key=lambda j: -chain(j))
        while ready and len(running) < workers and not failed:
            job = ready.pop(0)
            del pending[job.name]
            os.makedirs(os.path.dirname(job.log), exist_ok=True)
            log = open(job.log, "w")
            log.write("$ " + " ".join(shlex.quote(a) for a in job.argv) + "\n")
            log.flush()
            running[job.name] = (subprocess.Popen(job.argv, cwd=ROOT, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT), time.time(), log)
        if not running:
            if failed:
                break
            raise UserError(f"jobs wait for dependencies that never finish: {', '.join(pending)}")
        time.sleep(0.2)
        for name, (proc, start, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.time() - start
            job = next(j for j in jobs if j.name == name)
            if proc.returncode != 0:
                failed.append(name)
                with open(job.log) as f:
                    tail = f.read()[-1500:]
                print(f"FAILED {name} (exit {proc.returncode}); log {job.log}:\n{tail}", flush=True)
                continue
            if job.marker:
                with open(job.marker, "w") as f:
                    f.write("done\n")
            finished.add(name)
            print(f"  done {name:28s} {times[name]:7.1f} s  ({len(finished)}/{len(jobs)})", flush=True)
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)} (logs in {os.path.dirname(jobs[0].log)})")
    return times


def read_result(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}"


def this_command() -> str:
    """The command line that runs this benchmark as it was run, as the docs cite it."""
    words = [".venv/bin/python", f"scripts/{os.path.basename(sys.argv[0])}", *sys.argv[1:]]
    return " ".join(shlex.quote(w) for w in words)


def write_readme(block: str, readme: str, start: str, end: str) -> bool:
    """Put ``block`` between the ``start`` and ``end`` markers of ``readme``."""
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    if start not in text or end not in text:
        print(f"{readme}: no {start} ... {end} markers; README left as it is")
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(readme, "w", encoding="utf-8") as f:
        f.write(head + start + "\n" + block.strip() + "\n" + end + tail)
    print(f"wrote the table into {readme}")
    return True


def settle(args: argparse.Namespace) -> None:
    """Check --seeds, apply --quick, make the demo data if needed and count the images."""
    args.seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    if not args.seeds:
        raise UserError("--seeds needs at least one entry")
    if args.quick and args.write_readme:
        raise UserError("--quick is a smoke test: its numbers do not belong in the README (drop --write-readme)")
    args.train_subset, args.val_subset, args.teacher_seed = "train", "val", 0
    if args.quick:  # every run end to end, at the least cost: start-up dominates
        args.seeds = args.seeds[:1]
        args.train_subset, args.teacher_epochs, args.train_epochs, args.ipc_steps, args.batch = "ipc5", 1, 1, 2, 16
        args.val_subset = "ipc2"
    args.work = os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    args.data_dir = os.path.abspath(args.data) if args.data else os.path.join(args.work, "data")
    if not args.data and not all(os.path.isdir(os.path.join(args.data_dir, d)) for d in ("train", "val", "ipc5")):
        proc = subprocess.run([PY, "scripts/make_demo_data.py", "--out", args.data_dir, "--ipc", "5"], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise UserError(f"make_demo_data.py failed:\n{proc.stderr[-2000:]}")
    for sub in (args.train_subset, args.val_subset, "ipc2"):
        if not os.path.isdir(os.path.join(args.data_dir, sub)):
            raise UserError(f"--data {args.data_dir}: no {sub}/ folder (make it with scripts/make_demo_data.py)")
    count = lambda sub: sum(len(fs) for _, _, fs in os.walk(os.path.join(args.data_dir, sub)))  # noqa: E731
    args.train_images, args.val_images = count(args.train_subset), count(args.val_subset)
    args.num_classes = len([d for d in os.listdir(os.path.join(args.data_dir, args.train_subset))
                            if os.path.isdir(os.path.join(args.data_dir, args.train_subset, d))])


# ----------------------------------------------------------------------------- growth with scale


def run_measured(argv: list[str], log: str, env: Optional[dict] = None,
                 stop: Optional[Callable[[], bool]] = None) -> dict:
    """Run ``argv`` (output to ``log``); its wall and CPU seconds, exit code and peak resident
    memory in MB, three ways: ``peak_mb``, the largest anonymous resident memory (heap, arrays:
    what grows with the data) seen every 0.05 s while it runs; ``hwm_mb``, its high-water mark
    (VmHWM, library pages included) as last seen; ``maxrss_mb``, ``os.wait4``'s rusage at its end,
    which also counts the interpreter's exit (library pages it touches can add 100 MB) and the
    largest descendant it waited for. ``stop``, polled as often, ends the child with SIGTERM once
    it returns True (``stopped`` says so)."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        stopped, anon, hwm = False, 0.0, 0.0
        while True:
            now = _resident_mb(proc.pid)
            anon, hwm = max(anon, now.get("RssAnon", 0.0)), max(hwm, now.get("VmHWM", 0.0))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if stop is not None and not stopped and stop():
                proc.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.05)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rc": proc.returncode, "stopped": stopped,
            "peak_mb": anon, "hwm_mb": hwm, "maxrss_mb": usage.ru_maxrss / 1024}


def _resident_mb(pid: int) -> dict[str, float]:
    """A running process's RssAnon and VmHWM in MB (empty once it has exited, or off Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return {}
    return {key: int(kb) / 1024 for key, kb in re.findall(r"(RssAnon|VmHWM):\s+(\d+)", text)}


def tree_size(root: str) -> tuple[int, int]:
    """(files, bytes) under ``root`` (0, 0 when it does not exist)."""
    count = size = 0
    for top, _, names in os.walk(root):
        for name in names:
            count += 1
            size += os.path.getsize(os.path.join(top, name))
    return count, size


def growth_exponent(n1: float, v1: float, n2: float, v2: float) -> Optional[float]:
    """k in v = c n^k through (n1, v1) and (n2, v2): 1.0 is linear growth; None without two
    positive values at two sizes."""
    if v1 <= 0 or v2 <= 0 or n1 <= 0 or n2 <= 0 or n1 == n2:
        return None
    return math.log(v2 / v1) / math.log(n2 / n1)


def extrapolate(n1: float, v1: float, n2: float, v2: float, n: float) -> Optional[float]:
    """v at size ``n`` on the power law through (n1, v1) and (n2, v2)."""
    k = growth_exponent(n1, v1, n2, v2)
    return None if k is None else v2 * (n / n2) ** k


def extend_store(path: str, epochs: int, leave: int, image_size: tuple[int, int]) -> int:
    """Grow the batch store at ``path`` (made by relabel, without a mix) to ``epochs`` epochs:
    every step not yet written except the last ``leave`` gets crops and flips sampled as relabel
    samples them (every image ``image_size``) and random logits, through the store's writer.
    Returns the steps written. The store then reads as one that relabel left ``leave`` steps short."""
    manifest = store.read_manifest(path)
    if manifest.get("mix_type", "none") != "none":
        raise UserError(f"{path}: a store without a mix is extended here (this one: {manifest['mix_type']})")
    manifest = {**manifest, "epochs": max(epochs, int(manifest["epochs"]))}
    writer = create_store(path, manifest)
    seed, batch, count = manifest["fkd_seed"], manifest["batch_size"], manifest["num_samples"]
    scale = (manifest["min_scale_crops"], manifest["max_scale_crops"])
    jobs = replay.epoch_jobs(0, manifest["epochs"], manifest["batches_per_epoch"])
    g, written, order = torch.Generator().manual_seed(0), 0, (None, None)
    for e, b in jobs[:len(jobs) - leave]:
        if writer.exists(e, b):
            continue
        if order[0] != e:
            order = (e, replay.epoch_order(seed, e, count))
        idx = order[1][replay.batch_slice(batch, b)]
        coords, flips = replay.sample_crops_and_flips(replay.batch_rng(seed, e, b), [image_size] * len(idx), scale)
        logits = torch.randn(len(idx), manifest["num_classes"], generator=g)
        writer.write(e, b, store.BatchRecord(coords, flips, None, None, None,
                                             logits.half() if manifest["use_fp16"] else logits,
                                             torch.from_numpy(idx.astype(np.int64))))
        written += 1
    writer.finish()
    return written
