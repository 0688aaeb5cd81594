"""Score a distilled dataset against a random real subset of the same size, with one recipe.

The code is softlabel/commands/score.py; an installed package runs it as `softlabel-score`. See --help."""

from softlabel.commands.score import cli

if __name__ == "__main__":
    cli()
