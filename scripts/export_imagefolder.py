"""Write CIFAR-10, CIFAR-100 or STL-10, as torchvision keeps them on disk, in the ImageFolder
layout every tool here reads: OUT/train/<class>/<n>.png and OUT/val/<class>/<n>.png.

The code is softlabel/commands/export_imagefolder.py. See --help."""

from softlabel.commands.export_imagefolder import cli

if __name__ == "__main__":
    cli()
