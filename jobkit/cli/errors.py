"""Exit codes and one-line error messages for the client commands, in one place.

Every expected failure is one line on stderr, ``jobkit: error: <message>``,
never a traceback, and an exit code that says what went wrong:

====  ==========================================================================
0     success
1     the server answered with an error (its message is shown), or another failure
2     the command line is wrong (usage), including values the server refused
      (an unknown ``--backend``, a bad ``--env``)
3     no such job (never existed, deleted, or another client's)
4     cannot reach the server, or the connection broke (the address is named)
5     TLS authentication failed: the server refused our certificate, or its
      certificate is not from our CA
6     the certificate folder or one of its files is missing, unreadable or invalid
130   interrupted (Ctrl-C)
141   stdout was closed early (``jobkit output 1 | head``)
====  ==========================================================================

``jobkit exec --follow`` and ``jobkit wait`` instead exit with the job's own
code, as ssh does: the exit status, 128 + N when signal N killed it,
`EXIT_JOB_ERROR` (127) when it could not start.  So that no job status can
be mistaken for a jobkit failure, those two commands exit `EXIT_RELAY_FAILURE`
(255, as ssh) for every failure of jobkit's own once the command line was
accepted (usage errors are still 2).  ``wait --timeout`` exits
`EXIT_WAIT_TIMEOUT` (124, as timeout(1)) when the job is still running.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from jobkit.core.errors import (
    AuthenticationFailed,
    BackendNotFound,
    ConnectionFailed,
    JobkitError,
    JobNotFound,
    ServerError,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_CERTS",
    "EXIT_CODES",
    "EXIT_CONNECTION",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_PIPE",
    "EXIT_RELAY_FAILURE",
    "EXIT_USAGE",
    "EXIT_WAIT_TIMEOUT",
    "CertificatesUnusable",
    "CliError",
    "OneLineCommand",
    "OneLineGroup",
    "handle_errors",
    "one_line_usage",
    "translate",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONNECTION = 4
EXIT_AUTH = 5
EXIT_CERTS = 6
EXIT_WAIT_TIMEOUT = 124
EXIT_JOB_ERROR = 127
EXIT_INTERRUPTED = 130
EXIT_PIPE = 141
EXIT_RELAY_FAILURE = 255

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An expected failure: one ``jobkit: error:`` line on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.set_exit_code(exit_code)

    def set_exit_code(self, code: int) -> None:
        # click declares exit_code on the class; each instance needs its own.
        setattr(self, "exit_code", code)  # noqa: B010

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"jobkit: error: {self.format_message()}", err=True)


class CertificatesUnusable(Exception):
    """The client certificate folder cannot be used; raised while making the client."""


# click >= 8.2 asks for help on a bare group by raising this; click 8.1 prints it itself.
_HELP_REQUEST: tuple[type[click.UsageError], ...] = tuple(
    getattr(click.exceptions, name)
    for name in ("NoArgsIsHelpError",)
    if hasattr(click.exceptions, name)
)


def one_line_usage(error: click.UsageError) -> click.UsageError | CliError:
    """click's multi-line usage error as one ``jobkit: error:`` line, exit code 2."""
    if isinstance(error, _HELP_REQUEST):
        return error
    message = error.format_message().rstrip(".")
    if error.ctx is not None:
        message += f". See '{error.ctx.command_path} --help'."
    return CliError(message, EXIT_USAGE)


class OneLineCommand(click.Command):
    """A click command whose usage errors are one line (see `one_line_usage`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise one_line_usage(error) from error


class OneLineGroup(click.Group):
    """A click group whose usage errors, and its commands', are one line."""

    command_class = OneLineCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise one_line_usage(error) from error

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as error:
            raise one_line_usage(error) from error


#: The exit code of each expected failure, the first match winning (the table
#: of the module docstring).  Server errors arrive as these exceptions, mapped
#: from their problem kind by `jobkit.client.problems`.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (JobNotFound, EXIT_NOT_FOUND),
    (BackendNotFound, EXIT_USAGE),
    (ConnectionFailed, EXIT_CONNECTION),
    (AuthenticationFailed, EXIT_AUTH),
    (ServerError, EXIT_FAILURE),
    (CertificatesUnusable, EXIT_CERTS),
    # Our own checks, or a value the server refused (HTTP 400).
    (ValueError, EXIT_USAGE),
    (TypeError, EXIT_USAGE),
    (JobkitError, EXIT_FAILURE),
)


def translate(error: BaseException) -> CliError | None:
    """The `CliError` for an expected failure, or None for a bug (let it show)."""
    if isinstance(error, CliError):
        return error
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            if isinstance(error, ServerError):
                return CliError(f"the server answered {error.status}: {error}", code)
            return CliError(str(error), code)
    return None


def handle_errors(*, relay: bool = False) -> Callable[[F], F]:
    """Turn what a command callback raises into one line and an exit code.

    With ``relay`` (commands that exit with the job's code), every failure
    of jobkit's own exits `EXIT_RELAY_FAILURE` instead of its usual code.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
            except BrokenPipeError:
                _silence_stdout()
                raise click.exceptions.Exit(EXIT_PIPE) from None
            except click.exceptions.Exit:
                raise
            except Exception as error:
                failure = translate(error)
                if failure is None:
                    raise
                if relay and failure.exit_code != EXIT_USAGE:
                    failure.set_exit_code(EXIT_RELAY_FAILURE)
                raise failure from None

        return wrapper  # type: ignore[return-value]

    return decorate


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would complain about the broken pipe
    # again; point it at /dev/null instead.
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
