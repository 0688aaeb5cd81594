"""Train a student network: from a soft-label store, from hard labels, or distilled online.

The code is softlabel/commands/train.py; an installed package runs it as `softlabel-train`. See --help."""

from softlabel.commands.train import cli

if __name__ == "__main__":
    cli()
