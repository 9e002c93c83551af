"""``jobkit exec``: run a command as a job; print its id, or follow it like ssh."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from jobkit.cli.connect import connect
from jobkit.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CliError,
    OneLineCommand,
    handle_errors,
    translate,
)
from jobkit.cli.jobs import report_unstarted
from jobkit.cli.relay import exit_code, follow_to_end
from jobkit.core.errors import ClientError

if TYPE_CHECKING:
    from jobkit.core.limits import Limits

__all__ = ["exec_command"]


def _env(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--env: expected KEY=VALUE, not {item!r}", EXIT_USAGE)
        if "\0" in item:
            raise CliError(f"--env: {key!r} must not contain NUL characters", EXIT_USAGE)
        env[key] = value
    return env


#: The limit flags, and the `Limits` field each sets.
_LIMIT_FLAGS = {"cpu": "cpu", "memory": "memory", "pids": "pids", "io_read": "io_read_bps",
                "io_write": "io_write_bps"}


def _limits(values: dict[str, Any], best_effort: bool) -> Limits | None:
    """The `Limits` the flags ask for (None: none); a usage error naming the flag."""
    asked = {_LIMIT_FLAGS[flag]: value for flag, value in values.items() if value is not None}
    if not asked:
        if best_effort:
            raise CliError("--best-effort goes with a limit (--cpu, --memory, ...)", EXIT_USAGE)
        return None
    # Imported only for a job with limits: plain 'jobkit exec' stays lean.
    from jobkit.core.limits import Limits

    for flag, value in values.items():
        if value is not None:
            try:
                Limits(**{_LIMIT_FLAGS[flag]: value})
            except (TypeError, ValueError) as error:
                raise CliError(f"--{flag.replace('_', '-')}: {error}", EXIT_USAGE) from None
    return Limits(**asked, strict=not best_effort)


@click.command(
    "exec",
    cls=OneLineCommand,
    context_settings={
        "help_option_names": ["-h", "--help"],
        # Options stop at CMD: everything after it is the command's, so that
        # `jobkit exec ls -la` runs `ls -la`.
        "allow_interspersed_args": False,
    },
)
@click.option("--follow", "-f", is_flag=True,
              help="Stream the job's stdout and stderr live and exit with its exit code.")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", callback=_env,
              help="Set a variable for the job (repeatable).")
@click.option("--cwd", metavar="DIR", help="The job's working directory, on the server.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop the job after this long (SIGTERM, then SIGKILL).")
@click.option("--backend", metavar="NAME", help="Output backend: memory, tempfile, ring, ...")
@click.option("--cpu", type=float, metavar="CPUS",
              help="Limit the job's whole tree to this many CPUs (0.5: half a core).")
@click.option("--memory", metavar="SIZE",
              help="Limit its memory, without swap (256M, 1G); over it the job is killed "
                   "(out of memory).")
@click.option("--pids", type=int, metavar="N",
              help="Limit its processes and threads at once (a fork bomb stops there).")
@click.option("--io-read", metavar="SIZE",
              help="Limit reads from the disk of its working directory, per second (10M).")
@click.option("--io-write", metavar="SIZE",
              help="Limit writes to that disk, per second (10M).")
@click.option("--best-effort", is_flag=True,
              help="Run even where the server cannot enforce every limit asked for "
                   "(the status lists those it did not).")
@click.option("--no-network", "no_network", is_flag=True,
              help="Run the job with only a loopback interface (no network).")
@click.argument("command", metavar="CMD")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[ARG]...")
@click.pass_context
@handle_errors()
def exec_command(ctx: click.Context, follow: bool, env: dict[str, str], cwd: str | None,
                 timeout: float | None, backend: str | None, cpu: float | None,
                 memory: str | None, pids: int | None, io_read: str | None,
                 io_write: str | None, best_effort: bool, no_network: bool, command: str,
                 args: tuple[str, ...]) -> None:
    """Run CMD with its ARGs as a job; print the job's id alone on stdout.

    Options go before CMD; everything after CMD is passed to it as is
    ('jobkit exec ls -la' runs 'ls -la'). No shell is involved: use
    'jobkit exec sh -c "..."' for pipes and redirections.

    With --follow, the job's stdout and stderr are written live to ours and
    jobkit exits with the job's exit code, as ssh does: 128 + N when signal
    N killed it, 127 when it could not start, 255 when jobkit itself failed.
    Ctrl-C stops following (the job keeps running; exit code 130).

    --cpu, --memory, --pids, --io-read and --io-write limit the job's whole
    process tree, within the server's maxima (docs/limits.md).
    """
    options: dict[str, Any] = {
        "env": env or None, "cwd": cwd, "timeout": timeout, "backend": backend,
        "limits": _limits({"cpu": cpu, "memory": memory, "pids": pids, "io_read": io_read,
                           "io_write": io_write}, best_effort),
    }
    if no_network:
        options["network"] = False
    if follow:
        _create_and_follow(ctx, command, args, options)
        return
    client = connect(ctx)
    job_id = client.create(command, args, **options)
    click.echo(job_id)


@handle_errors(relay=True)
def _create_and_follow(ctx: click.Context, command: str, args: tuple[str, ...],
                       options: dict[str, Any]) -> None:
    client = connect(ctx)
    job_id = client.create(command, args, **options)
    try:
        final = follow_to_end(client, job_id, sys.stdout.buffer, sys.stderr.buffer)
    except ClientError as error:
        # The job runs on: say which, or nobody can find it again.
        failure = translate(error)
        assert failure is not None
        raise CliError(f"job {job_id} was started, but: {failure.message}",
                       failure.exit_code) from None
    except KeyboardInterrupt:
        click.echo(f"\njobkit: stopped following job {job_id}; it may still be running "
                   f"('jobkit stop {job_id}' stops it)", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    report_unstarted(final)
    ctx.exit(exit_code(final))
