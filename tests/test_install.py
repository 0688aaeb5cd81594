"""The package as `pip install .` gives it: a wheel holding the whole toolkit, only `softlabel`
importable, and console commands that are the checkout's scripts."""
from __future__ import annotations

import importlib.util
import json
import shutil
import site
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, relabel, script_env, tree_bytes

COMMANDS = {  # console command -> the checkout's script it must equal
    "softlabel-relabel": "relabel/generate_soft_label.py",
    "softlabel-relabel-fkd": "relabel/generate_soft_label_fkd.py",
    "softlabel-train": "validate/train_FKD_parallel.py",
    "softlabel-train-student": "validate/train_student.py",
    "softlabel-info": "scripts/fkd_info.py",
    "softlabel-convert": "scripts/convert_labels.py",
    "softlabel-pack": "scripts/pack_images.py",
    "softlabel-score": "scripts/score_distilled.py",
}


def test_pyproject_names_every_command_and_finds_every_subpackage():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)
    for command, script in COMMANDS.items():
        module = scripts[command].split(":")[0]
        # the checkout's script is the thin caller of the very module the command runs
        assert f"from {module} import cli" in (ROOT / script).read_text()
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["softlabel*"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel .` builds, from a copy of the checkout: an in-tree build would leave
    build/ and *.egg-info in it (and reuse a stale build/ next time)."""
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "demo", "runs", "wandb"))
    # with setuptools at hand, build with it (no registry needed); otherwise pip fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
             *isolation, "-w", str(out), str(source)]
    subprocess.run(build, check=True, capture_output=True, text=True, timeout=300, cwd=out)
    (path,) = out.glob("softlabel-*.whl")
    return path


def test_the_wheel_holds_every_subpackage_and_only_softlabel(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"softlabel"}
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "softlabel").rglob("__init__.py")}
    assert {"softlabel/distill", "softlabel/stores", "softlabel/commands", "softlabel/training"} <= packages
    for package in packages:
        for module in (ROOT / package).glob("*.py"):
            assert module.relative_to(ROOT).as_posix() in names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment holding the wheel; it sees the test environment's dependencies
    through a path entry, but not the checkout (the editable install's finder is not run)."""
    env_dir = tmp_path_factory.mktemp("env") / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    (Path(own) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, capture_output=True, text=True,
                   timeout=300)
    return env_dir / "bin"


def run_installed(bin_dir: Path, command: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(bin_dir / command), *map(str, args)], cwd=cwd, env=script_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
    return proc


def test_only_the_installed_softlabel_is_imported(installed, tmp_path):
    proc = subprocess.run([str(installed / "python"), "-c",
                           "import softlabel, importlib.util as u; print(softlabel.__file__);"
                           "print(u.find_spec('validate'), u.find_spec('relabel'))"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    where, missing = proc.stdout.splitlines()
    assert where.startswith(str(installed.parent)) and missing == "None None"


HELP_OF_EVERY_COMMAND = """
import importlib.metadata, json
helps = {}
for ep in importlib.metadata.entry_points(group="console_scripts"):
    if ep.name.startswith("softlabel-"):
        parser = importlib.import_module(ep.module).get_args_parser()
        parser.prog = "PROG"
        helps[ep.name] = (ep.value, parser.format_help())
print(json.dumps(helps))
"""


def test_every_command_is_the_checkout_script(installed, tmp_path):
    """Each console command of the installed package runs the parser of the checkout script named
    beside it (one interpreter reads them all; three commands run end to end below)."""
    proc = subprocess.run([str(installed / "python"), "-c", HELP_OF_EVERY_COMMAND], cwd=tmp_path,
                          capture_output=True, text=True, check=True, env=script_env())
    helps = json.loads(proc.stdout)
    assert set(helps) == set(COMMANDS)
    for command, script in COMMANDS.items():
        module = helps[command][0].split(":")[0]
        assert f"from {module} import cli" in (ROOT / script).read_text()
        parser = importlib.import_module(module).get_args_parser()
        parser.prog = "PROG"
        assert helps[command][1] == parser.format_help(), command


def test_installed_commands_relabel_and_train_outside_the_checkout(installed, demo_data, teacher_ckpt, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    args = ("--epochs", 2, "-b", 10, "--input-size", 24, "--mix-type", "cutmix", "-j", 0)
    run_installed(installed, "softlabel-relabel", "--data", demo_data / "ipc1", "--teacher-path", teacher_ckpt,
                  "--fkd-path", work / "store", *args, cwd=work)
    relabel(demo_data / "ipc1", teacher_ckpt, tmp_path / "checkout_store", *args)
    installed_store, checkout_store = tree_bytes(work / "store"), tree_bytes(tmp_path / "checkout_store")
    assert installed_store.keys() == checkout_store.keys()
    for name, content in installed_store.items():  # the manifest records the store's own path
        if name == "manifest.json":
            content = content.replace(str(work / "store").encode(), str(tmp_path / "checkout_store").encode())
        assert content == checkout_store[name], name
    run_installed(installed, "softlabel-info", work / "store", "--check", cwd=work)
    proc = run_installed(installed, "softlabel-train", "--train-dir", demo_data / "ipc1", "--fkd-path",
                         work / "store", "--model", "democnn_small", "-j", 0, "--output-dir", work / "run",
                         cwd=work)
    results = json.loads((work / "run" / "results.json").read_text())
    assert (work / "run" / "checkpoint.pth").is_file() and results["epoch"] == 2 and "epochs 0..2" in proc.stdout


@pytest.mark.parametrize("module, extra, flags", [
    ("lmdb", "lmdb", ["--format", "lmdb"]),
])
def test_a_missing_extra_is_one_line_naming_it(module, extra, flags, demo_data, tmp_path, monkeypatch):
    from softlabel.commands import pack
    from softlabel.errors import UserError, optional_import
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    with pytest.raises(UserError, match=rf'--format lmdb needs the lmdb package: pip install "softlabel\[{extra}\]"'):
        pack.main(pack.get_args_parser().parse_args([str(demo_data / "ipc1"), str(tmp_path / "p"), *flags]))
    assert not (tmp_path / "p").exists()
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(UserError, match=r'pip install "softlabel\[demo\]" \(or pip install scikit-learn\)'):
        optional_import("sklearn.datasets", "demo", "the demo data")
