"""``jobkit exec``: run a command as a job; print its id, or follow it like ssh."""

from __future__ import annotations

import sys

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
@click.argument("command", metavar="CMD")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[ARG]...")
@click.pass_context
@handle_errors()
def exec_command(ctx: click.Context, follow: bool, env: dict[str, str], cwd: str | None,
                 timeout: float | None, backend: str | None, command: str,
                 args: tuple[str, ...]) -> None:
    """Run CMD with its ARGs as a job; print the job's id alone on stdout.

    Options go before CMD; everything after CMD is passed to it as is
    ('jobkit exec ls -la' runs 'ls -la'). No shell is involved: use
    'jobkit exec sh -c "..."' for pipes and redirections.

    With --follow, the job's stdout and stderr are written live to ours and
    jobkit exits with the job's exit code, as ssh does: 128 + N when signal
    N killed it, 127 when it could not start, 255 when jobkit itself failed.
    Ctrl-C stops following (the job keeps running; exit code 130).
    """
    if follow:
        _create_and_follow(ctx, command, args, env, cwd, timeout, backend)
        return
    client = connect(ctx)
    job_id = client.create(command, args, env=env or None, cwd=cwd, timeout=timeout,
                           backend=backend)
    click.echo(job_id)


@handle_errors(relay=True)
def _create_and_follow(ctx: click.Context, command: str, args: tuple[str, ...],
                       env: dict[str, str], cwd: str | None, timeout: float | None,
                       backend: str | None) -> None:
    client = connect(ctx)
    job_id = client.create(command, args, env=env or None, cwd=cwd, timeout=timeout,
                           backend=backend)
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
