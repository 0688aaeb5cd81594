"""RepDistiller's train_student.py (HobbitLong/RepDistiller): its flags and recipe on our trainer.

The code is softlabel/commands/train_student.py; an installed package runs it as `softlabel-train-student`.
See --help."""

from softlabel.commands.train_student import cli

if __name__ == "__main__":
    cli()
