"""The label-optimization study's ``main.py`` (qwer343/id_8285), with its own flags, run by our tools.

The code is softlabel/commands/label_optimization.py. See --help."""

from softlabel.commands.label_optimization import cli

if __name__ == "__main__":
    cli()
