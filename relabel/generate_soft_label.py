"""Relabel a (distilled) image folder with one teacher or an ensemble: for every epoch and
batch, sample the crops, flips and mix, run the teachers on exactly those pixels, and store
the parameters with the combined logits (store format v1, see softlabel/stores/batch.py).

The code is softlabel/commands/relabel.py; an installed package runs it as `softlabel-relabel`. See --help."""

from softlabel.commands.relabel import cli

if __name__ == "__main__":
    cli()
