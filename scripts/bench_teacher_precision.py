"""What running the teachers under bf16/fp16 autocast changes in their logits, against float32.

    python scripts/bench_teacher_precision.py --demo-data DIR/val --demo-teacher CKPT
    python scripts/bench_teacher_precision.py --archs resnet18,mobilenet_v2 --images 16

For each teacher and each autocast dtype that runs on --device: top-1 agreement with float32
(the share of inputs whose argmax is unchanged) and max |logit - float32 logit| (with the
largest |float32 logit| beside it, for scale). Teachers: a checkpoint on the demo images (as
relabel feeds it: its own normalization, --demo-size px), and torchvision architectures with
random-init weights (seeded; no published weights are needed) on random 224 px inputs, in eval
mode after one pass in train mode to give BatchNorm statistics of the inputs. A dtype that does
not run on the device (fp16 convolutions on some CPUs) is reported as such. Speed is not measured.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Optional

import torch
import torch.nn as nn

from softlabel.errors import UserError, run_main

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRESET_ARCHS = "resnet18,resnet50,resnet101,mobilenet_v2,alexnet,shufflenet_v2_x0_5"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default=PRESET_ARCHS, metavar="A,B",
                   help=f"torchvision architectures, random-init (default: the presets' teachers, {PRESET_ARCHS}; "
                        f"'' for none)")
    p.add_argument("--images", type=int, default=32, metavar="N", help="random 224 px inputs per architecture (32)")
    p.add_argument("--demo-data", metavar="DIR", default=None, help="image folder for --demo-teacher")
    p.add_argument("--demo-teacher", metavar="CKPT", default=None, help="a teacher checkpoint (ours or a state_dict)")
    p.add_argument("--demo-size", type=int, default=32, metavar="S", help="--demo-data images resized to S px (32)")
    p.add_argument("--dtypes", default="bf16,fp16", metavar="D,D", help="autocast dtypes to compare (bf16,fp16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    return p


def logits_under(model: nn.Module, x: torch.Tensor, dtype: Optional[torch.dtype], device: torch.device,
                 batch: int = 16) -> torch.Tensor:
    """float32 logits of ``model`` on ``x`` under autocast ``dtype`` (None: float32), as relabel's Ensemble."""
    out = []
    with torch.inference_mode():
        for k in range(0, len(x), batch):
            ctx = (torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
            with ctx:
                out.append(model(x[k:k + batch].to(device)).float().cpu())
    return torch.cat(out)


def compare(name: str, model: nn.Module, x: torch.Tensor, dtypes: list[str], device: torch.device) -> list[list[str]]:
    ref = logits_under(model, x, None, device)
    rows = []
    for d in dtypes:
        try:
            got = logits_under(model, x, DTYPES[d], device)
        except (RuntimeError, NotImplementedError) as exc:
            rows.append([name, d, "does not run", f"({str(exc).splitlines()[0][:60]})", "", ""])
            continue
        agree = (got.argmax(1) == ref.argmax(1)).float().mean().item()
        delta = (got - ref).abs().max().item()
        rows.append([name, d, f"{100 * agree:.1f}%", f"{delta:.3g}", f"{ref.abs().max().item():.3g}",
                     f"{len(x)}"])
    return rows


def demo_inputs(folder: str, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    from softlabel.data import scan_image_folder
    from softlabel import replay
    index = scan_image_folder(folder, "--demo-data")
    imgs = [index.load(p) for p, _ in index.samples]
    coords = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * len(imgs))
    pixels = replay.render_batch(imgs, coords, torch.zeros(len(imgs), dtype=torch.bool), size, "bilinear")
    return replay.slice_inputs(pixels, None, mean, std, None, None)


def random_init(arch: str, x: torch.Tensor) -> nn.Module:
    """A random-init torchvision model whose BatchNorm statistics are those of ``x`` (one pass in
    train mode), in eval mode: its activations have the scale a trained model's have."""
    from softlabel.models import create_model
    model = create_model(arch, 1000, "torchvision")
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average: the pass's own statistics
        model(x[:16])
    return model.eval()


def main(args: argparse.Namespace) -> None:
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if any(d not in DTYPES for d in dtypes):
        raise UserError(f"--dtypes {args.dtypes}: each of {', '.join(DTYPES)}")
    if bool(args.demo_data) != bool(args.demo_teacher):
        raise UserError("--demo-data and --demo-teacher go together")
    device = torch.device(args.device)
    rows: list[list[str]] = []
    if args.demo_teacher:
        from softlabel.teachers import load_teacher
        t = load_teacher(None, args.demo_teacher)
        x = demo_inputs(args.demo_data, args.demo_size, t.mean, t.std)
        rows += compare(f"{t.arch} (demo, {args.demo_size}px)", t.model.to(device), x, dtypes, device)
    torch.manual_seed(args.seed)
    x = torch.randn(args.images, 3, 224, 224)
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        torch.manual_seed(args.seed)
        rows += compare(f"{arch} (random init, 224px)", random_init(arch, x).to(device), x, dtypes, device)
        print(f"done {arch}", flush=True)
    head = ["teacher", "autocast", "top-1 agreement with float32", "max |Δ logit|", "max |float32 logit|", "inputs"]
    print(f"device {device}, torch {torch.__version__}")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
