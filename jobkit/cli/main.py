"""The ``jobkit`` command.

Sub-commands live in their own modules and are imported only when run, so
that ``jobkit status`` never pays for importing the server or the PKI code.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from jobkit._version import __version__

#: Sub-command name -> "module:attribute" of its click command.
COMMANDS = {
    "serve": "jobkit.cli.serve:serve",
    "certs": "jobkit.cli.certs:certs",
}


class LazyGroup(click.Group):
    """A click group that imports a sub-command's module only when it runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attribute = target.partition(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="jobkit")
def cli() -> None:
    """Run commands as jobs, locally or on a jobkit server over mutual TLS."""


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="jobkit")


if __name__ == "__main__":
    sys.exit(main())
