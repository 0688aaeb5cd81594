"""Every command line the README and docs/ show runs past its script's parser: each flag it uses is
one that script accepts, spelled in full (not a prefix argparse might later find ambiguous), and a
literal value given to a flag with fixed choices is one of them. In-process and fast: nothing is
trained, only the parsers are built."""
from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from functools import lru_cache

import pytest
from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

# a script of the checkout (or a console command of the package) at a word boundary
SCRIPT = re.compile(r"(?:^|\s)((?:relabel|validate|scripts)/[\w.]+\.(?:py|sh)|softlabel-[a-z-]+)(?=\s|$)")
CONSOLE = {"softlabel-relabel": "relabel/generate_soft_label.py",
           "softlabel-relabel-fkd": "relabel/generate_soft_label_fkd.py",
           "softlabel-train": "validate/train_FKD_parallel.py",
           "softlabel-train-student": "validate/train_student.py",
           "softlabel-info": "scripts/fkd_info.py",
           "softlabel-convert": "scripts/convert_labels.py",
           "softlabel-pack": "scripts/pack_images.py",
           "softlabel-score": "scripts/score_distilled.py"}

def parses_flags(command: str) -> bool:
    match = SCRIPT.search(command)
    return bool(match) and not re.fullmatch(r"scripts/.*\.sh", match.group(1))


def code_block_commands(path) -> list[tuple[str, str]]:
    """(where, command) for each command line of the file's fenced code blocks, continuation lines
    (ending in a backslash) joined and comments dropped, and for each inline code span that runs a
    script with flags (scripts/*.sh parse no flags of their own)."""
    found, block, pending = [], False, ""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            block, pending = not block, ""
            continue
        if not block:  # prose: its inline code spans that run a script with flags
            found += [(f"{path.name}:{number}", span) for span in re.findall(r"`([^`]+)`", line)
                      if parses_flags(span) and re.search(r"\s--?[A-Za-z]", span)]
            continue
        line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command, pending = pending + line, ""
        if parses_flags(command):
            found.append((f"{path.name}:{number}", command))
    return found


def _script_parser(script: str) -> argparse.ArgumentParser:
    """The parser of a tool of scripts/: its get_args_parser(), as torchvision's references name it."""
    name = f"doc_{script.replace('/', '_')[:-3]}"
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(ROOT / "scripts"))  # as when run: benchlib imports by name
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module.get_args_parser()


@lru_cache(maxsize=None)
def parser_of(script: str) -> argparse.ArgumentParser:
    script = CONSOLE.get(script, script)
    from softlabel.relabel_presets import PRESETS
    preset = re.fullmatch(r"relabel/(?:generate_soft_label_|relabel_)(\w+)\.(?:py|sh)", script)
    if preset and preset.group(1) in PRESETS:  # a preset's own scripts
        from softlabel.commands.relabel import get_args_parser
        return get_args_parser(PRESETS[preset.group(1)])
    if script.startswith("validate/") and script.endswith(".sh"):
        script = "validate/train_FKD_parallel.py"  # each passes its arguments on to the trainer
    command = re.search(r"^from (softlabel\.commands\.\w+) import cli$", (ROOT / script).read_text(), re.M)
    if command:  # a checkout script over a command of the package
        return importlib.import_module(command.group(1)).get_args_parser()
    return _script_parser(script)


def problems(command: str) -> list[str]:
    """What the script's parser would refuse in ``command``'s flags."""
    match = SCRIPT.search(command)
    script = match.group(1)
    parser = parser_of(script)
    options = parser._option_string_actions
    tokens = shlex.split(command[match.end():].replace("...", " "))
    found = []
    for i, token in enumerate(tokens):
        if token in ("--", "|", "&&", ";") or token.startswith((">", "2>")):
            break  # what follows is another command's
        if not re.match(r"--?[A-Za-z]", token):
            continue
        flag, _, inline = token.partition("=")
        action = options.get(flag)
        if action is None:
            found.append(f"{script}: {flag} is not one of its flags")
            continue
        value = inline or (tokens[i + 1] if i + 1 < len(tokens) and action.nargs != 0 else "")
        literal = value and not re.search(r"[$A-Z]", value) and not value.startswith("-")
        if action.choices is not None and literal and value not in action.choices:
            found.append(f"{script}: {flag} {value} is not one of {sorted(action.choices)}")
    return found


ALL = [c for path in DOCS if path.exists() for c in code_block_commands(path)]


def test_the_docs_show_commands():
    """The extraction finds the commands (a broken pattern would pass every file vacuously)."""
    scripts = {SCRIPT.search(command).group(1) for _, command in ALL}
    assert {"relabel/generate_soft_label.py", "validate/train_FKD_parallel.py"} <= scripts, scripts
    assert len(ALL) > 20


@pytest.mark.parametrize("where,command", ALL, ids=[where for where, _ in ALL])
def test_every_flag_the_docs_show_is_accepted(where, command):
    assert not problems(command), f"{where}: {command.strip()}\n" + "\n".join(problems(command))


def test_the_loss_table_lists_every_loss_and_keep_topk_its_losses():
    """docs/validate.md's table has a row for every --loss-type, and its --keep-topk paragraph names
    exactly the losses the trainer accepts it with."""
    from softlabel.training.losses import LOSSES, PROBABILITY_LOSSES
    text = (ROOT / "docs" / "validate.md").read_text()
    rows = {name for line in text.splitlines() if line.startswith("| `")
            for name in re.findall(r"`(\w+)`", line.split("|")[1])}
    assert set(LOSSES) <= rows, set(LOSSES) - rows
    paragraph = text[text.index("`--keep-topk K`"):].split("\n\n")[0]
    applies, refused = paragraph.split("refused")
    assert set(re.findall(r"`(\w+)`", applies)) == set(PROBABILITY_LOSSES)
    assert set(re.findall(r"`(\w+)`", refused)) == set(LOSSES) - set(PROBABILITY_LOSSES)


def test_the_presets_table_is_the_presets():
    """docs/relabel.md's presets table has one row per entry of PRESETS, with its teachers, ensemble
    rule and batch size."""
    from softlabel.relabel_presets import PRESETS
    text = (ROOT / "docs" / "relabel.md").read_text()
    lines = text[text.index("| preset |"):].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in
            lines[2:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]]
    assert [row[0] for row in rows] == list(PRESETS)
    for name, teachers, ensemble, batch_size in rows:
        preset = PRESETS[name]
        assert (teachers.split(", "), ensemble, int(batch_size)) == (preset.teachers, preset.ensemble, preset.batch_size)
