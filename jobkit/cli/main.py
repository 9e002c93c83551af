"""The ``jobkit`` command.

Sub-commands live in their own modules and are imported only when run, so
that ``jobkit status`` never pays for importing the server or the PKI code;
``jobkit --help`` and shell completion list them from `COMMANDS` and
`SHORT_HELP` without importing any.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

import click

from jobkit._version import __version__
from jobkit.cli.connect import ClientOptions
from jobkit.cli.errors import OneLineGroup
from jobkit.wire import DEFAULT_SERVER

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

#: Sub-command name -> "module:attribute" of its click command.
COMMANDS = {
    "audit": "jobkit.cli.audit:audit",
    "certs": "jobkit.cli.certs:certs",
    "clean": "jobkit.cli.jobs:clean",
    "delete": "jobkit.cli.jobs:delete",
    "exec": "jobkit.cli.exec:exec_command",
    "list": "jobkit.cli.jobs:list_jobs",
    "output": "jobkit.cli.jobs:output",
    "serve": "jobkit.cli.serve:serve",
    "status": "jobkit.cli.jobs:status",
    "stop": "jobkit.cli.jobs:stop",
    "wait": "jobkit.cli.jobs:wait",
}

#: One line per sub-command for ``jobkit --help`` and completion (no import needed).
SHORT_HELP = {
    "audit": "Check and read the server's audit log.",
    "certs": "Make the CA, server and client certificates for mutual TLS.",
    "clean": "Delete your finished jobs (--older-than 2h, --state completed).",
    "delete": "Kill a job (SIGKILL) and forget it.",
    "exec": "Run a command as a job and print its id (-f: stream it).",
    "list": "List your newest jobs (--all: every job).",
    "output": "Write a job's stdout and stderr, byte for byte.",
    "serve": "Serve the jobkit HTTPS API with mutual TLS 1.3.",
    "status": "Print a job's status, e.g. 'completed, exit status: 0'.",
    "stop": "Send a job a signal (default SIGTERM).",
    "wait": "Wait for a job to end; exit with its exit code.",
}


class LazyGroup(OneLineGroup):
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

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        from click.shell_completion import CompletionItem

        names = [
            CompletionItem(name, help=SHORT_HELP.get(name))
            for name in self.list_commands(ctx)
            if name.startswith(incomplete)
        ]
        options = click.Command.shell_complete(self, ctx, incomplete)
        return names + options



@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server", envvar="JOBKIT_SERVER", metavar="HOST:PORT",
    help=f"The jobkit server to talk to [env JOBKIT_SERVER; default {DEFAULT_SERVER}].",
)
@click.option(
    "--certs", envvar="JOBKIT_CERTS", metavar="DIR",
    help="Client certificate folder with ca.pem, cert.pem, key.pem [env JOBKIT_CERTS; "
         "default: the one 'jobkit serve' made for you, "
         "$XDG_DATA_HOME/jobkit/pki/clients/$USER].",
)
@click.version_option(__version__, "-V", "--version", prog_name="jobkit")
@click.pass_context
def cli(ctx: click.Context, server: str | None, certs: str | None) -> None:
    """Run commands as jobs, locally or on a jobkit server over mutual TLS.

    On one machine, 'jobkit serve' in one terminal and 'jobkit exec echo hi'
    in another just work: both use the same default certificates and address.
    Exit codes: see 'docs/cli.md' (3: no such job, 4: cannot connect,
    5: TLS refused, 6: certificates missing).
    """
    ctx.obj = ClientOptions(server, certs)


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="jobkit")


if __name__ == "__main__":
    sys.exit(main())
