"""Draw what a store holds for a few samples of one batch: the original image with the stored
crop box, the exact input the teacher saw (replayed crop, flip and mix, with the cutmix box
outlined) and the teacher's top soft labels.

    python scripts/draw_fkd_mix.py STORE --data DIR --epoch 0 --batch 0 --out img/fkd_mix.png
"""
from __future__ import annotations

import argparse
import os

import torch
from PIL import Image, ImageDraw

from softlabel import replay
from softlabel.data import scan_image_folder
from softlabel.errors import UserError, run_main
from softlabel.files import ensure_dir
from softlabel.stores import open_store, store_class

CELL = 112  # pixels per drawn image
TEXT_W = 150


def to_image(x: torch.Tensor, mean, std) -> Image.Image:
    """A normalized (3, H, W) tensor back to a viewable image."""
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    arr = ((x * s + m).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(arr, "RGB")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", metavar="STORE", help="soft-label store (--fkd-path of relabel)")
    p.add_argument("--data", required=True, metavar="DIR", help="the image folder the store was made from")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--samples", type=int, default=4, help="rows to draw (default: 4)")
    p.add_argument("--topk", type=int, default=3, help="soft labels to list per sample (default: 3)")
    p.add_argument("--out", default="img/fkd_mix.png", help="PNG to write (default: img/fkd_mix.png)")
    return p


def main(args: argparse.Namespace) -> None:
    if store_class(args.store, "STORE").layout != "batch":
        raise UserError(f"STORE {args.store} holds per-image labels (FKD's layout), not stored steps; this draws "
                        f"the steps of a batch store")
    index = scan_image_folder(args.data, "--data")
    opened = open_store(args.store, index, flag="STORE", data_arg="--data")
    s = opened.settings
    if not (0 <= args.epoch < s.epochs and 0 <= args.batch < s.batches_per_epoch):
        raise UserError(f"--epoch/--batch: the store holds epochs 0..{s.epochs - 1} and batches "
                        f"0..{s.batches_per_epoch - 1}")
    item = opened.stored_steps(index, [(args.epoch, args.batch)])[0]
    record = opened.reader().read(args.epoch, args.batch)
    inputs = replay.model_inputs(item["pixels"], s.mean, s.std, item["mix_index"], item["mix_lam"], item["mix_bbox"])
    probs = torch.softmax(item["soft_label"].float(), dim=1)
    names = s.class_names
    rows = min(args.samples, len(item["index"]))

    sheet = Image.new("RGB", (2 * CELL + TEXT_W + 20, rows * (CELL + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for r in range(rows):
        y = 10 + r * (CELL + 10)
        k = int(item["index"][r])
        original = index.load(index.samples[k][0])
        left, top, right, bottom = replay.crop_box(record.coords[r].tolist(), *original.size)
        sx, sy = CELL / original.width, CELL / original.height
        shown = original.resize((CELL, CELL), Image.NEAREST)
        ImageDraw.Draw(shown).rectangle([left * sx, top * sy, right * sx - 1, bottom * sy - 1],
                                        outline=(255, 60, 60), width=2)
        sheet.paste(shown, (5, y))
        seen = to_image(inputs[r], s.mean, s.std).resize((CELL, CELL), Image.NEAREST)
        if item["mix_bbox"] is not None:
            x1, y1, x2, y2 = item["mix_bbox"]  # rows x1:x2, columns y1:y2 (upstream convention)
            f = CELL / s.input_size
            ImageDraw.Draw(seen).rectangle([y1 * f, x1 * f, y2 * f - 1, x2 * f - 1], outline=(60, 160, 255), width=2)
        sheet.paste(seen, (CELL + 10, y))
        top_p, top_c = probs[r].topk(min(args.topk, probs.shape[1]))
        lines = [f"true: {names[index.samples[k][1]]}" + (" (flipped)" if record.flip[r] else "")]
        if item["mix_index"] is not None:
            partner = int(item["index"][int(item["mix_index"][r])])
            lines.append(f"mixed with: {names[index.samples[partner][1]]}, lam {item['mix_lam']:.2f}")
        lines += [f"{names[int(c)]}: {float(q):.2f}" for q, c in zip(top_p, top_c)]
        draw.multiline_text((2 * CELL + 20, y + 4), "\n".join(lines), fill="black", spacing=4)
    ensure_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    sheet.save(args.out)
    print(f"wrote {args.out}: {rows} samples of epoch {args.epoch} batch {args.batch}")


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()))
