"""Packing an image folder and opening the pack, at growing image counts: time and peak memory.

Makes N tiny 8 x 8 PNGs in 1000 class folders (every file the bytes of one encoded image: the
count is what is measured, not decoding), then, each step in a fresh interpreter whose peak
resident memory is taken above its own import baseline:

  pack pixels / pack lmdb   scripts/pack_images.py DIR OUT [--format lmdb] (its main(), --no-progress)
  scan folder               scan_image_folder(DIR): what every tool does with a raw folder
  scan folder + fp          ... and its fingerprint (the stores' check: every file's size)
  open pixels / open lmdb   scan_image_folder(OUT): what every tool does with a pack (read / read_lmdb,
                            the fingerprint and content digest recomputed and checked), its fingerprint,
                            and its first and last images

and reports wall time, peak MB above the baseline, bytes written and the growth exponent of the
peak between consecutive sizes (log ratio of peaks over log ratio of counts: 1.0 is linear).
--repeats runs each scan and open step several times, interleaved over the trees (the median
time, the largest peak): on a busy machine a single run's time moves by a factor of two.
--tree runs the same steps with another checkout's ``softlabel`` (e.g. the previous commit,
``git archive HEAD softlabel | tar -x -C /tmp/before``), interleaved with this one's.

    .venv/bin/python scripts/bench_pack.py --sizes 10000,50000,200000
    .venv/bin/python scripts/bench_pack.py --sizes 10000,50000 --tree before=/tmp/before
    .venv/bin/python scripts/bench_pack.py --sizes 200000 --repeats 5 --steps "scan folder,open pixels,open lmdb"
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile

from benchlib import ROOT, measured_child, tiny_png_folder

from softlabel.errors import UserError, run_main

STEPS = ("pack pixels", "pack lmdb", "scan folder", "scan folder + fp", "open pixels", "open lmdb")
IMPORTS = "from softlabel.commands import pack as m\nfrom softlabel.data import scan_image_folder"


def statement(step: str, src: str, out: dict[str, str]) -> str:
    if step.startswith("pack"):
        fmt = step.split()[1]
        argv = [src, out[fmt], "--format", fmt, "--no-progress"]
        return f"m.main(m.get_args_parser().parse_args({argv!r}))"
    if step.startswith("scan"):
        return f"i = scan_image_folder({src!r}, '--data')" + ("\ni.fingerprint()" if "fp" in step else "")
    return (f"i = scan_image_folder({out[step.split()[1]]!r}, '--data')\ni.fingerprint()\n"
            f"i.load(i.samples[0][0])\ni.load(i.samples[-1][0])")


def tree_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(top, f)) for top, _, fs in os.walk(root) for f in fs)


def measure(args: argparse.Namespace, trees: dict[str, str], n: int) -> list[dict]:
    """Every step on ``n`` images with every tree: the packs first (each tree's own), then the
    scan and open steps, their repeats interleaved over the trees."""
    src = tiny_png_folder(os.path.join(args.work, f"images_{n}"), n, args.classes)
    out = {name: {fmt: os.path.join(args.work, f"{name}_{n}_{fmt}") for fmt in ("pixels", "lmdb")} for name in trees}
    runs: dict[tuple[str, str], list[dict]] = {}
    for name, tree in trees.items():
        for fmt, path in out[name].items():
            shutil.rmtree(path, ignore_errors=True)
            if f"pack {fmt}" in args.steps or f"open {fmt}" in args.steps:
                runs[name, f"pack {fmt}"] = [measured_child(tree, IMPORTS, statement(f"pack {fmt}", src, out[name]))]
                runs[name, f"pack {fmt}"][0]["written"] = tree_bytes(path)
    for _ in range(args.repeats):
        for name, tree in trees.items():
            for step in (s for s in args.steps if not s.startswith("pack")):
                runs.setdefault((name, step), []).append(measured_child(tree, IMPORTS, statement(step, src, out[name])))
    rows = []
    for name in trees:
        for step in args.steps:
            got = runs[name, step]
            rows.append({"n": n, "tree": name, "step": step, "written": got[0].get("written", 0),
                         "wall_s": statistics.median(r["wall_s"] for r in got), "base_mb": got[0]["base_mb"],
                         "peak_mb": max(r["peak_mb"] for r in got)})
            print(f"{n:>8} {name:>8} {step:<18} {rows[-1]['wall_s']:7.2f} s {rows[-1]['peak_mb']:8.1f} MB "
                  f"(baseline {rows[-1]['base_mb']:.0f} MB)", flush=True)
        for path in out[name].values():
            shutil.rmtree(path, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(src)
    return rows


def report(rows: list[dict], sizes: list[int]) -> None:
    print("\n| images | tree | step | wall s | µs / image | peak MB above baseline | B / image | written MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['tree']} | {r['step']} | {r['wall_s']:.2f} | {r['wall_s'] / r['n'] * 1e6:.1f} | "
              f"{r['peak_mb']:.1f} | {r['peak_mb'] * 2**20 / r['n']:.0f} | "
              + (f"{r['written'] / 2**20:.1f} |" if r["written"] else "|"))
    print("\nGrowth exponent of the peak (and of the wall time) between consecutive sizes (1.0: linear):\n")
    print("| tree | step | " + " | ".join(f"{a} -> {b}" for a, b in zip(sizes, sizes[1:])) + " |")
    print("|---|---|" + "---|" * (len(sizes) - 1))
    by = {(r["tree"], r["step"], r["n"]): r for r in rows}
    for tree, step in dict.fromkeys((r["tree"], r["step"]) for r in rows):
        cells = []
        for a, b in zip(sizes, sizes[1:]):
            ra, rb = by[tree, step, a], by[tree, step, b]
            grow = lambda key: math.log(max(rb[key], 1e-3) / max(ra[key], 1e-3)) / math.log(b / a)  # noqa: E731
            cells.append(f"{grow('peak_mb'):.2f} ({grow('wall_s'):.2f})")
        print(f"| {tree} | {step} | " + " | ".join(cells) + " |")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,50000", help="image counts (default: 10000,50000)")
    p.add_argument("--classes", type=int, default=1000, help="class folders (default: 1000)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of: {', '.join(STEPS)}")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each scan and open step: the median time and the largest peak (default: 1)")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=DIR",
                   help="also measure another checkout's softlabel (repeatable)")
    p.add_argument("--work", default=None, help="where the images and packs go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the image folders in --work for a rerun")
    return p


def main(args: argparse.Namespace) -> None:
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not sizes or min(sizes) < args.classes or any(s not in STEPS for s in args.steps) or args.repeats < 1:
        raise UserError(f"--sizes needs counts of at least --classes ({args.classes}); --steps of: {', '.join(STEPS)}; "
                        f"--repeats at least 1")
    trees = {}
    for spec in args.tree:
        name, _, path = spec.partition("=")
        if not os.path.isdir(os.path.join(path, "softlabel")):
            raise UserError(f"--tree {spec}: no softlabel/ folder in {path!r}")
        trees[name] = path
    trees["this"] = ROOT
    temporary = args.work is None
    args.work = tempfile.mkdtemp(prefix="bench_pack_") if temporary else os.path.abspath(args.work)
    os.makedirs(args.work, exist_ok=True)
    try:
        rows = [r for n in sizes for r in measure(args, trees, n)]
    finally:
        if temporary:
            shutil.rmtree(args.work, ignore_errors=True)
    report(rows, sizes)


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
