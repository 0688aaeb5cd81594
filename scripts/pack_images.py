"""Decode an image folder once into one memory-mappable file of uint8 pixels plus an index.

The code is softlabel/commands/pack.py; an installed package runs it as `softlabel-pack`. See --help."""

from softlabel.commands.pack import cli

if __name__ == "__main__":
    cli()
