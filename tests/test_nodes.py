"""Two torchrun nodes of one process each, on this machine (c10d rendezvous on 127.0.0.1, gloo),
sharing one output folder: relabel writes the store of one process, the trainer ends with the
weights of a one-node run on as many ranks, and every file of the shared folder is written once,
by the process of global rank 0 where one process writes (never by "local rank 0" of each node).

Each node's processes log, through a Python audit hook, every file they create, open for writing,
rename or remove under the output folder, together with their global rank."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROOT, STORE_ARGS, run_script, script_env, train_in_process, tree_bytes
from rounding import assert_same_weights

RELABEL, TRAIN = "relabel/generate_soft_label.py", "validate/train_FKD_parallel.py"

# Loaded by every interpreter the test starts (launchers and workers) as `sitecustomize`.
AUDIT_HOOK = '''
import os, sys
_root = os.environ.get("AUDIT_ROOT")
if _root:
    _root = os.path.abspath(_root)
    _log = open(os.path.join(os.environ["AUDIT_LOG"], "%d.log" % os.getpid()), "a", buffering=1)
    _who = os.environ.get("RANK", "launcher")
    _writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def _hook(event, args):
        if event == "open":
            path, changes = args[0], isinstance(args[2], int) and args[2] & _writes
        elif event == "os.rename":
            path, changes = args[1], True
        elif event in ("os.mkdir", "os.remove", "os.rmdir"):
            path, changes = args[0], True
        else:
            return
        if changes and isinstance(path, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(path))
            if path.startswith(_root + os.sep):
                _log.write("%s\\t%s\\t%s\\n" % (_who, event, os.path.relpath(path, _root)))
    sys.addaudithook(_hook)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PORT_TAKEN = "EADDRINUSE"  # the rendezvous host's error when its port is in use


def launch_nodes(script: str, args, hook: Path, env: dict, nodes: int, timeout: int,
                 own_folder: Path | None, own_content: Path | None = None) -> list[subprocess.CompletedProcess]:
    """One try of run_nodes on a fresh port. The rendezvous waits for every node as long as the
    test waits for the run (``timeout``): on a busy machine one agent may start long after another."""
    port = free_port()
    procs = []
    for n in range(nodes):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank", str(n),
               "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"test-{port}", "--rdzv-conf", f"join_timeout={timeout},is_host={int(n == 0)}",
               str(ROOT / script), *map(str, args)]
        if own_folder is not None and n > 0:
            fill = f'cp -r "{own_content}/." "$0" && ' if own_content is not None else ""
            cmd = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && ' + fill + 'exec "$@"', str(own_folder),
                   *cmd]
        with open(hook / f"out{n}", "w") as out, open(hook / f"err{n}", "w") as err:  # files: no pipe fills up
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [subprocess.CompletedProcess(p.args, p.returncode, (hook / f"out{n}").read_text(),
                                        (hook / f"err{n}").read_text()) for n, p in enumerate(procs)]


def run_nodes(script: str, *args, audit: Path, root: Path, nodes: int = 2, timeout: int = 300,
              own_folder: Path | None = None, own_content: Path | None = None,
              check: bool = True) -> list[subprocess.CompletedProcess]:
    """``nodes`` concurrent torchrun agents of one process each, as on ``nodes`` machines, meeting
    at a c10d rendezvous that the first hosts; a hang fails the test after ``timeout`` s (every
    node killed). With ``own_folder``, every node but the first sees a folder of its own there (a
    node's own disk rather than a shared one: a tmpfs in a mount namespace of its own), empty or
    holding a copy of ``own_content``."""
    hook = audit / "hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = script_env(AUDIT_ROOT=str(root), AUDIT_LOG=str(audit),
                     PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    for _ in range(5):  # the free port can be taken before the host binds it (other jobs on a busy machine)
        done = launch_nodes(script, args, hook, env, nodes, timeout, own_folder, own_content)
        if not any(PORT_TAKEN in p.stderr for p in done):
            break
    assert not check or all(p.returncode == 0 for p in done), "\n".join(
        f"--- node {n} exited {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}" for n, p in enumerate(done))
    return done


def writes(audit: Path) -> list[tuple[str, str, str]]:
    """(global rank, event, path in the output folder) of every change the processes made there."""
    return [tuple(line.split("\t")) for log in sorted(audit.glob("*.log"))
            for line in log.read_text().splitlines()]


def by_rank(log: list[tuple[str, str, str]], keep=lambda path: True) -> dict[str, set[str]]:
    ranks: dict[str, set[str]] = {}
    for rank, _, path in log:
        if keep(path):
            ranks.setdefault(path, set()).add(rank)
    return ranks


def assert_written_once(log: list[tuple[str, str, str]], root: Path) -> None:
    """Every final file was renamed into place (or, for the lock, opened) by one process, once."""
    renamed = Counter(path for _, event, path in log if event == "os.rename")
    assert all(n == 1 for n in renamed.values()), renamed.most_common(3)
    final = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert final - {".lock"} == set(renamed), (final ^ set(renamed))
    assert by_rank(log, lambda p: p == ".lock") == {".lock": {"0"}}
    assert {rank for rank, _, _ in log} <= {"0", "1"}  # no write from a launcher


def relabel_on_nodes(demo_data, teacher_ckpt, store: Path, audit: Path) -> list[subprocess.CompletedProcess]:
    return run_nodes(RELABEL, "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--fkd-path", store,
                     *STORE_ARGS, audit=audit, root=store)


def assert_store_of_one_process(store: Path, one: Path) -> None:
    """Every file equal to a one-process run's; the manifest differs only in the --fkd-path it records."""
    assert tree_bytes(store).keys() == tree_bytes(one).keys()
    assert {k: v for k, v in tree_bytes(store).items() if k != "manifest.json"} == \
        {k: v for k, v in tree_bytes(one).items() if k != "manifest.json"}
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["args"]["fkd_path"] = str(one)
    assert manifest == json.loads((one / "manifest.json").read_text())


@pytest.mark.slow
def test_relabel_on_two_nodes_writes_the_store_of_one_process_once(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    store, audit = tmp_path / "store", tmp_path / "audit"
    procs = relabel_on_nodes(demo_data, teacher_ckpt, store, audit)
    assert sum("wrote 9 batch files" in p.stdout for p in procs) == 1  # the summary from rank 0 only
    assert_store_of_one_process(store, cutmix_store)
    log = writes(audit)
    assert_written_once(log, store)
    # the manifest and the epoch folders come from global rank 0; both ranks wrote their batches
    rank0 = by_rank(log, lambda p: p == "manifest.json" or "/" not in p and p.startswith("epoch"))
    assert "manifest.json" in rank0 and all(ranks == {"0"} for ranks in rank0.values()), rank0
    assert {r for r, event, p in log if event == "os.rename" and p.startswith("epoch_")} == {"0", "1"}


TRAIN_ARGS = ("--model", "mlpnet", "--loss-type", "kl", "-T", 4, "--cos", "--sgd", "-lr", 0.2, "--epochs", 2,
              "--eval-interval", 1, "--save-interval", 1, "--no-progress")  # no batch norm: see docs/validate.md


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pth", weights_only=True)["model"]


def train_on_nodes(demo_data, store: Path, out: Path, audit: Path) -> list[subprocess.CompletedProcess]:
    return run_nodes(TRAIN, "--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", store,
                     *TRAIN_ARGS, "--output-dir", out, audit=audit, root=out)


def assert_one_writer(log: list[tuple[str, str, str]], out: Path, one: Path) -> None:
    """The trainer's folder: the files of a one-process run, each write made by global rank 0."""
    assert {str(p.relative_to(out)) for p in out.rglob("*")} == {str(p.relative_to(one)) for p in one.rglob("*")}
    assert {rank for rank, _, _ in log} == {"0"}, Counter(log).most_common(5)


def test_trainer_on_two_nodes_writes_once_and_trains_as_one_process(demo_data, cutmix_store, tmp_path):
    out, audit = tmp_path / "nodes", tmp_path / "audit"
    procs = train_on_nodes(demo_data, cutmix_store, out, audit)
    assert sum("on 2 ranks" in p.stdout for p in procs) == 1  # rank 0 reports, once
    train_in_process("--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", cutmix_store,
                     *TRAIN_ARGS, "--output-dir", tmp_path / "one")
    assert_one_writer(writes(audit), out, tmp_path / "one")
    # the global-batch mean, summed in another order: equal up to float rounding (2 epochs of
    # 3 steps of 8 images; mlpnet's fan-in 3 x 64 pooled pixels, each a mean of 9)
    assert_same_weights(weights(out), weights(tmp_path / "one"), 3 * 64 + 9 + 8 + 2 * 6 + 32)


@pytest.mark.slow
def test_trainer_on_two_nodes_ends_as_two_ranks_on_one_node(demo_data, cutmix_store, tmp_path):
    """The weights, losses and accuracies of `torchrun --standalone --nproc_per_node 2`, exactly."""
    out = tmp_path / "nodes"
    train_on_nodes(demo_data, cutmix_store, out, tmp_path / "audit")
    run_script(TRAIN, "--train-dir", demo_data / "ipc2", "--val-dir", demo_data / "val", "--fkd-path", cutmix_store,
               *TRAIN_ARGS, "--output-dir", tmp_path / "ranks", nproc=2)
    wa, wb = weights(out), weights(tmp_path / "ranks")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    def numbers(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in rows]  # not the timings
    assert numbers(out) == numbers(tmp_path / "ranks")


def can_unshare() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare(), reason="needs root to give a node a folder of its own (unshare -m)")
def test_a_folder_not_shared_by_the_nodes_is_refused(demo_data, teacher_ckpt, cutmix_store, tmp_path):
    """A store or an --output-dir on each node's own disk: one line from every node, not a batch
    file missing in the store or ranks resuming from different epochs."""
    own = tmp_path / "own"
    own.mkdir()
    procs = run_nodes(RELABEL, "--data", demo_data / "ipc2", "--teacher-path", teacher_ckpt, "--fkd-path", own / "s",
                      *STORE_ARGS, audit=tmp_path / "a1", root=own, own_folder=own, check=False)
    for p in procs:
        assert p.returncode != 0 and "do not see the manifest.json rank 0 wrote there" in p.stderr, p.stderr
    assert not list((own / "s").rglob("*.tar"))  # refused before any batch
    procs = run_nodes("relabel/generate_soft_label_fkd.py", demo_data / "ipc1", "--teacher-path", teacher_ckpt,
                      "--save_path", own / "fkd", "--num_crops", 2, "--num_seg", 2, "--input_size", 24, "-j", 0,
                      audit=tmp_path / "a0", root=own, own_folder=own, check=False)
    for p in procs:  # FKD's per-image store too
        assert p.returncode != 0 and "do not see the fkd_manifest.json rank 0 wrote there" in p.stderr, p.stderr
    args = ("--train-dir", demo_data / "ipc2", "--fkd-path", cutmix_store, *TRAIN_ARGS)
    # a fresh run trains: only rank 0 writes there (on whichever node the rendezvous made it)
    run_nodes(TRAIN, *args, "--output-dir", own / "fresh", audit=tmp_path / "a2", root=own, own_folder=own)
    # a checkpoint that one node sees and the other does not
    run_script(TRAIN, *args, "--epochs", 1, "--output-dir", own / "run")  # in a process of its own: not its lock
    procs = run_nodes(TRAIN, *args, "--output-dir", own / "run", "--resume", "auto",
                      audit=tmp_path / "a3", root=own, own_folder=own, check=False)
    for p in procs:
        assert p.returncode != 0 and "the ranks resume from different epochs" in p.stderr, p.stderr


def test_nodes_whose_images_differ_under_the_same_names_fail_together_before_writing(demo_data, teacher_ckpt,
                                                                                   cutmix_store, tmp_path):
    """One node's --data holds other images under the same names: relabel and the FKD generator compare
    the manifest each node would write, the trainer each node's images and labels, before anything is
    written: every node exits with one line (no gloo traceback), and the shared store stays empty."""
    own, other = tmp_path / "own", tmp_path / "other"
    shutil.copytree(demo_data / "ipc2", own / "data")
    shutil.copytree(demo_data / "ipc2", other / "data")
    for image in sorted((other / "data").rglob("*.png")):  # another image of its class, under this name
        shutil.copyfile(sorted((demo_data / "ipc5" / image.parent.name).glob("*.png"))[-1], image)
    shared = tmp_path / "shared"
    runs = [(RELABEL, ("--data", own / "data", "--teacher-path", teacher_ckpt, "--fkd-path", shared / "s",
                       *STORE_ARGS), "would write another manifest into --fkd-path"),
            ("relabel/generate_soft_label_fkd.py", (own / "data", "--teacher-path", teacher_ckpt, "--save_path",
                                                    shared / "fkd", "--num_crops", 2, "--num_seg", 2, "--input_size",
                                                    24, "-j", 0), "would write another manifest into --save_path"),
            (TRAIN, ("--train-dir", own / "data", "--model", "democnn_small", "--input-size", 24, "-b", 10,
                     "--epochs", 1, "-j", 0, "--output-dir", shared / "run"), "train on other images")]
    for n, (script, args, said) in enumerate(runs):
        procs = run_nodes(script, *args, audit=tmp_path / f"a{n}", root=shared, own_folder=own, own_content=other,
                          check=False)
        for p in procs:  # torchrun's agent reports its child's exit with a traceback of its own: none of ours
            assert p.returncode != 0 and "softlabel/" not in p.stderr, p.stderr
            errors = [line for line in p.stderr.splitlines() if f"{Path(script).name}: error:" in line]
            assert len(errors) == 1, p.stderr
        assert any(said in line for p in procs for line in p.stderr.splitlines()), said
    assert not [p for p in shared.rglob("*") if p.is_file() and p.name != ".lock"]

