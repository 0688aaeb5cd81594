"""FKD soft-label generation (the per-image layout of szq0214/FKD, FKD_SLG): for every image,
``--num_crops`` random-resized crops with flips, the teacher's softmax on each, quantized by
``--label_type``, one file per image under ``--save_path`` (format: softlabel/stores/per_image.py).

The code is softlabel/commands/relabel_fkd.py; an installed package runs it as `softlabel-relabel-fkd`. See --help."""

from softlabel.commands.relabel_fkd import cli

if __name__ == "__main__":
    cli()
