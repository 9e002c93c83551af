"""``jobkit status / output / list / stop / delete / wait``: acting on existing jobs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from jobkit.cli.connect import complete_job_ids, connect
from jobkit.cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXIT_WAIT_TIMEOUT,
    CliError,
    OneLineCommand,
    handle_errors,
    translate,
)
from jobkit.cli.render import (
    plain_table,
    rich_table,
    styled_status_line,
    wants_colour,
    wants_table,
)

if TYPE_CHECKING:
    from jobkit.wire import StatusRecord

__all__ = ["DEFAULT_LIST_LIMIT", "clean", "delete", "list_jobs", "output", "status", "stop", "wait"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}

F = TypeVar("F", bound=Callable[..., Any])


def _job_id() -> Callable[[F], F]:
    return click.argument("job_id", metavar="ID", shell_complete=complete_job_ids)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@_job_id()
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON status instead.")
@click.pass_context
@handle_errors()
def status(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Print the status of job ID and what it used, e.g. 'completed, exit status: 0 · cpu ...'.

    \b
    running                      yellow
    pending                      cyan (waiting for a cluster)
    completed, exit status: 0    green (another exit status: red)
    killed, signal: SIGKILL      magenta
    error: <why it could not start>   red

    \b
    Then what it used, where known: cpu seconds (user, system), peak mem, io,
    and where the figures come from (cgroup, or rusage of the main process).
    """
    client = connect(ctx)
    document = client.status_json(job_id)
    if as_json:
        _print_json(document)
        return
    click.echo(styled_status_line(client.status_record(document), wants_colour()))


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@_job_id()
@click.option("--follow", "-f", is_flag=True,
              help="Keep writing output as it comes until the job ends; exit with its "
                   "exit code.")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]),
              help="Only this stream, written to stdout.")
@click.pass_context
@handle_errors()
def output(ctx: click.Context, job_id: str, follow: bool, stream: str | None) -> None:
    """Write job ID's stdout to stdout and its stderr to stderr, byte for byte.

    With --stream, only that stream is written, to stdout, so it can be piped.
    With --follow, what the job writes next follows live, from its start or
    from where it is (a job already running, or one that ended), and jobkit
    exits with the job's exit code, like 'jobkit wait': 128 + N when signal
    N killed it, 127 when it could not start, 255 when jobkit itself failed.
    Ctrl-C stops following (the job keeps running; exit code 130).
    """
    if follow:
        _follow_output(ctx, job_id, stream)
        return
    client = connect(ctx)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    wanted = [(stream, stdout)] if stream else [("stdout", stdout), ("stderr", stderr)]
    for name, out in wanted:
        with client.chunks(job_id, name) as chunks:
            for chunk in chunks:
                out.write(chunk)
        out.flush()


@handle_errors(relay=True)
def _follow_output(ctx: click.Context, job_id: str, stream: str | None) -> None:
    from jobkit.cli.relay import copy_to_end, exit_code, follow_to_end
    from jobkit.core.errors import ClientError

    client = connect(ctx)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    try:
        if stream is None:
            final = follow_to_end(client, job_id, stdout, stderr)
        else:
            copy_to_end([(client.follow(job_id, stream), stdout)])
            final = client.status_record(client.wait_json(job_id))
    except ClientError as error:
        failure = translate(error)
        assert failure is not None
        raise CliError(failure.message, failure.exit_code) from None
    except KeyboardInterrupt:
        click.echo(f"\njobkit: stopped following job {job_id}; it may still be running",
                   err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    report_unstarted(final)
    ctx.exit(exit_code(final))


#: Jobs `jobkit list` shows without --limit or --all: the newest page.
DEFAULT_LIST_LIMIT = 50


@click.command("list", cls=OneLineCommand, context_settings=_CONTEXT)
@click.option("--limit", "-n", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"Show the newest N jobs [default: {DEFAULT_LIST_LIMIT}].")
@click.option("--all", "everything", is_flag=True, help="Show every job (page after page).")
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON job list instead.")
@click.option("--watch", "-w", is_flag=True,
              help="Keep the table on screen, updated every second, until q or Ctrl-C.")
@click.pass_context
@handle_errors()
def list_jobs(ctx: click.Context, limit: int | None, everything: bool, as_json: bool,
              watch: bool) -> None:
    """List your newest jobs, oldest of them first: id, command, state, exit
    code or signal, start time and duration.

    A table in a terminal; aligned plain text (one line per job, after a
    header line) when stdout is not a terminal or NO_COLOR is set.  When
    there are more jobs than shown, a note on stderr says so.

    With --watch, in a terminal, the table stays on screen and is updated
    about once a second (durations tick, states change colour) until q or
    Ctrl-C; when stdout is not a terminal it is printed once, as without it.
    """
    if everything and limit is not None:
        raise CliError("give --limit or --all, not both", EXIT_USAGE)
    if watch and as_json:
        raise CliError("give --watch or --json, not both", EXIT_USAGE)
    client = connect(ctx)
    if watch and sys.stdout.isatty():
        from jobkit.cli.watch import watch as watch_live

        def fetch() -> tuple[list[StatusRecord], bool]:
            if everything:
                return [client.status_record(job) for job in client.jobs_json()], False
            page = client.list_json(limit=limit or DEFAULT_LIST_LIMIT, newest_first=True)
            jobs = [client.status_record(job) for job in page["jobs"][::-1]]
            return jobs, page.get("next") is not None

        try:
            watch_live(fetch)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        return
    cursor = None  # where the newest-first listing would go on, if it were cut
    if everything:
        documents = client.jobs_json()
    else:
        page = client.list_json(limit=limit or DEFAULT_LIST_LIMIT, newest_first=True)
        documents, cursor = page["jobs"][::-1], page.get("next")
    more = cursor is not None
    if as_json:
        _print_json({"ids": [job["id"] for job in documents], "jobs": documents,
                     "next": cursor})
        return
    jobs = [client.status_record(job) for job in documents]
    if wants_table():
        from rich.console import Console

        Console().print(rich_table(jobs))
    else:
        click.echo(plain_table(jobs), nl=False)
    if more:
        click.echo(f"(the newest {len(jobs)} jobs; --all shows every job, --limit N more)",
                   err=True)


def _older_than(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from jobkit.core.durations import parse_duration

    try:
        return None if value is None else parse_duration("--older-than", value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@click.option("--older-than", callback=_older_than, metavar="DURATION",
              help="Only jobs that ended at least this long ago (90s, 15m, 2h, 7d).")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["completed", "error", "killed", "lost"]),
              help="Only jobs in this state (repeatable).")
@click.pass_context
@handle_errors()
def clean(ctx: click.Context, older_than: float | None, states: tuple[str, ...]) -> None:
    """Delete your finished jobs and their output; running jobs are never touched.

    Prints how many jobs it deleted and how much output they kept.
    """
    from jobkit.core.sizes import format_size

    result = connect(ctx).clean(older_than=older_than, states=states or None)
    noun = "job" if result.jobs == 1 else "jobs"
    click.echo(f"Deleted {result.jobs} finished {noun}, freeing {format_size(result.bytes)}")


def _signal(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from jobkit.core.signals import parse_signal

    try:
        return parse_signal(value)
    except ValueError as error:
        raise CliError(f"--signal: {error}", EXIT_USAGE) from None


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@_job_id()
@click.option("--signal", "-s", "signum", default="TERM", show_default=True, metavar="SIGNAL",
              callback=_signal, help="A name (TERM, SIGINT) or a number.")
@click.pass_context
@handle_errors()
def stop(ctx: click.Context, job_id: str, signum: int) -> None:
    """Send SIGNAL to job ID's whole process group. The job stays listed."""
    connect(ctx).stop(job_id, signum)


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@_job_id()
@click.pass_context
@handle_errors()
def delete(ctx: click.Context, job_id: str) -> None:
    """Kill job ID's process group (SIGKILL), free its output and forget it."""
    connect(ctx).delete(job_id)


@click.command(cls=OneLineCommand, context_settings=_CONTEXT)
@_job_id()
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Give up after this long (exit code 124).")
@click.pass_context
@handle_errors(relay=True)
def wait(ctx: click.Context, job_id: str, timeout: float | None) -> None:
    """Wait until job ID ends; exit with its exit code, like a shell.

    128 + N when signal N killed it, 127 when it could not start, 124 when
    --timeout passed first, 255 when jobkit itself failed (see the message).
    """
    from jobkit.cli.relay import exit_code

    client = connect(ctx)
    try:
        final = client.status_record(client.wait_json(job_id, timeout))
    except TimeoutError:
        click.echo(f"jobkit: job {job_id} is still running after {timeout:g} s", err=True)
        raise click.exceptions.Exit(EXIT_WAIT_TIMEOUT) from None
    report_unstarted(final)
    ctx.exit(exit_code(final))


def report_unstarted(final: StatusRecord) -> None:
    """Say why a job in error state never ran (its exit code alone says little)."""
    if final.state == "error":
        click.echo(f"jobkit: job {final.id} could not start: {final.error}", err=True)
