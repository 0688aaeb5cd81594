"""Inspect a soft-label store, check every batch file, or verify its labels against a teacher.

The code is softlabel/commands/info.py; an installed package runs it as `softlabel-info`. See --help."""

from softlabel.commands.info import cli

if __name__ == "__main__":
    cli()
