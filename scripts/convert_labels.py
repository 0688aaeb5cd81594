"""Convert any readable soft-label store into ours, optionally into the compact top-k format.

The code is softlabel/commands/convert.py; an installed package runs it as `softlabel-convert`. See --help."""

from softlabel.commands.convert import cli

if __name__ == "__main__":
    cli()
