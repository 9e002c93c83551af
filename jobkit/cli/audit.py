"""``jobkit audit``: check and read the server's audit log, on the server's machine.

Commands::

    jobkit audit verify [FILE]... [--listen HOST:PORT]
    jobkit audit show [FILE]... [--client CN] [--since 1h] [--json] [--listen HOST:PORT]

Without FILE both read the default audit log of the server listening on
``--listen`` (default 127.0.0.1:8443), with the files rotated out of it,
oldest first (`jobkit.audit.default_audit_file`, `jobkit.audit.chain_files`).
Neither talks to a server, so the global ``--server``/``--certs`` do not apply.

Exit codes: 0 done (``verify``: the chain is intact); 1 the chain is broken
(``verify`` names the first bad ``FILE:LINE``) or a file cannot be read;
2 the command line is wrong.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import click

from jobkit import audit as audit_log
from jobkit.cli.errors import EXIT_FAILURE, EXIT_USAGE, CliError, OneLineGroup
from jobkit.cli.tables import Column, echo_table
from jobkit.wire import DEFAULT_SERVER, parse_address, parse_time

__all__ = ["audit"]

F = TypeVar("F", bound=Callable[..., Any])

_CONTEXT = {"help_option_names": ["-h", "--help"]}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_AGO = re.compile(r"(\d+)([smhdw])")


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_address(value, listen=True)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def parse_since(text: str, now: datetime) -> datetime:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w`` before ``now``, or an ISO 8601 time or date.

    A time without an offset is local time.  Raises ``ValueError``.
    """
    ago = _AGO.fullmatch(text.strip())
    if ago:
        return now - timedelta(seconds=int(ago.group(1)) * _UNITS[ago.group(2)])
    try:
        moment = parse_time(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (90s, 15m, 1h, 2d, 1w) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value, datetime.now(timezone.utc))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _files(given: Sequence[str], listen: tuple[str, int]) -> list[str]:
    if given:
        return list(given)
    default = audit_log.default_audit_file(*listen)
    if default is None:
        raise CliError("a server on port 0 has no default audit log: name the FILE", EXIT_USAGE)
    files = audit_log.chain_files(default)
    if not files:
        raise CliError(
            f"no audit log at {default} (name the FILE, or give --listen for a server "
            f"on another address)", EXIT_FAILURE,
        )
    return files


def _read_errors(function: F) -> F:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except OSError as error:
            where = f" {error.filename}" if error.filename else ""
            raise CliError(f"cannot read{where}: {error.strerror or error}") from None

    return wrapper  # type: ignore[return-value]


_FILES = click.argument("files", nargs=-1, metavar="[FILE]...")
_LISTEN = click.option(
    "--listen", default=DEFAULT_SERVER, show_default=True, metavar="HOST:PORT",
    callback=_listen, help="Without FILE: read the default audit log of the server "
                           "listening there ('jobkit serve --listen').",
)


@click.group(cls=OneLineGroup, context_settings=_CONTEXT)
def audit() -> None:
    """Check and read the server's audit log (on the server's machine).

    The log is JSON lines, each carrying the SHA-256 of the line before: see
    'docs/operations.md'.
    """


@audit.command("verify")
@_FILES
@_LISTEN
@_read_errors
def verify(files: tuple[str, ...], listen: tuple[str, int]) -> None:
    """Check the hash chain of FILE... (oldest first): exit 1 naming the first bad line.

    A line changed, removed, repeated or moved is reported as FILE:LINE.
    Lines cut off the end cannot be seen: compare the last line's hash,
    printed here, with one you kept.  Without FILE: the default log and its
    rotated files.
    """
    paths = _files(files, listen)
    report = audit_log.check_chain(paths)
    if report.bad is not None:
        raise CliError(f"the audit log is not intact: {report.bad}")
    count = f"{report.lines} line(s) in {len(paths)} file(s)"
    if report.lines:
        count += f", seq {report.first_seq} to {report.last_seq}"
    click.echo(f"intact: {count}")
    if report.continues is not None:
        click.echo(f"starts at seq {report.first_seq}, continuing {report.continues} "
                   f"(not given, not checked)")
    click.echo(f"last line's hash: {report.last_hash}")


def _matches(record: dict[str, Any], client: str | None, since: datetime | None) -> bool:
    if client is not None and client not in (record.get("cn"), record.get("owner")):
        return False
    if since is not None:
        try:
            return parse_time(record["time"]) >= since
        except ValueError:
            return False
    return True


def _text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(_text, value))
    if value is None:
        return "-"
    return str(value)


def _pairs(record: dict[str, Any], names: Sequence[str]) -> str:
    return " ".join(f"{name}={_text(record[name])}" for name in names if name in record)


def details(record: dict[str, Any]) -> str:
    """The DETAILS cell: the event's own fields, the command line as a shell would read it."""
    event = record["event"]
    job = f"job {record['job']}" if "job" in record else ""
    owner = f" (owner {record['owner']})" if "owner" in record else ""
    if event == "job.created":
        line = shlex.join([str(record.get("command", "")), *map(str, record.get("args", ()))])
        extra = _pairs(record, ("cwd", "backend"))
        limits = record.get("limits")
        if isinstance(limits, dict) and limits:
            extra += " limits=" + ",".join(f"{k}:{_text(v)}" for k, v in limits.items())
        return f"{job}: {line}" + (f"  {extra.strip()}" if extra.strip() else "")
    if event == "job.stopped":
        return f"{job}: signal {_text(record.get('signal'))}{owner}"
    if event == "job.deleted":
        return f"{job}{owner}"
    if event == "job.finished":
        return f"{job}: {record.get('state')} " + _pairs(record, ("exit_code", "signal", "reason"))
    if event == "admin.acted":
        return f"{record.get('action')} {job} of {record.get('owner')}"
    if event == "auth.refused":
        return _text(record.get("reason", ""))
    if event == "authz.refused":
        return " ".join(filter(None, (f"{record.get('method')} {record.get('route')}", job,
                                      _text(record.get("reason", "")))))
    if event == "certs.reloaded":
        result = "ok" if record.get("ok") else f"failed: {record.get('reason', '?')}"
        return f"{record.get('trigger')}: {result}"
    if event == audit_log.ROTATED:
        return f"continues {record.get('previous_file')}"
    known = {*audit_log.LINE_FIELDS, "cn", "peer"}
    config = record.get("config")
    rest = [name for name in record if name not in known and name != "config"]
    text = _pairs(record, rest)
    if isinstance(config, dict):
        text = " ".join(filter(None, (text, _pairs(config, list(config)))))
    return text


#: Row styles in a terminal: refusals red, admins' acts magenta, the server's own cyan.
_STYLES = {"auth.refused": "red", "authz.refused": "red", "admin.acted": "magenta",
           "server.started": "cyan", "server.stopped": "cyan", "certs.reloaded": "cyan",
           audit_log.ROTATED: "dim"}

_COLUMNS = (Column("TIME"), Column("EVENT"), Column("CLIENT"), Column("PEER"),
            Column("DETAILS", wide=True))


def _time_cell(text: str) -> str:
    try:
        return parse_time(text).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


@audit.command("show")
@_FILES
@click.option("--client", metavar="CN", help="Only events of this client (its own acts, "
                                             "and admins' acts on its jobs).")
@click.option("--since", metavar="WHEN", callback=_since,
              help="Only events since WHEN: 90s, 15m, 1h, 2d, 1w ago, or an ISO 8601 time.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the matching lines as they are in the file (JSON lines).")
@_LISTEN
@_read_errors
def show(files: tuple[str, ...], client: str | None, since: datetime | None,
         as_json: bool, listen: tuple[str, int]) -> None:
    """Show the audit log as a table: time (local), event, client, peer, details.

    Without FILE: the default log and its rotated files, oldest first.  This
    does not check the chain: use 'jobkit audit verify'.
    """
    paths = _files(files, listen)
    rows: list[tuple[str, ...]] = []
    styles: list[str | None] = []
    for entry in audit_log.read_entries(paths):
        record = entry.record
        if record is None:
            click.echo(f"jobkit: warning: {entry.path}:{entry.line} is not an audit record "
                       f"(see 'jobkit audit verify')", err=True)
            continue
        if not _matches(record, client, since):
            continue
        if as_json:
            click.echo(entry.raw.decode("ascii", "backslashreplace"))
            continue
        rows.append((_time_cell(record["time"]), record["event"], _text(record.get("cn", "")),
                     _text(record.get("peer", "")), details(record)))
        styles.append(_STYLES.get(record["event"]))
    if not as_json:
        echo_table(_COLUMNS, rows, styles)
