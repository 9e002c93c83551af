"""What people read: status lines, colours and the job table.

Colour and the rich table are only for a terminal: when stdout is not a
terminal, or ``NO_COLOR`` is set (https://no-color.org), output is plain text
and rich is not even imported (it costs more start-up time than the whole
``jobkit status`` request).  The status line's colour is a plain ANSI style
(click's), for the same reason.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

import click

from jobkit.core.models import JobStatus, State
from jobkit.core.signals import signal_name

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "COLUMNS",
    "exit_cell",
    "plain_table",
    "rich_table",
    "status_colour",
    "status_line",
    "wants_colour",
    "wants_table",
]

#: The job table's columns.
COLUMNS = ("ID", "COMMAND", "STATE", "EXIT", "STARTED", "DURATION")


def wants_table(stream: TextIO | None = None) -> bool:
    """True when ``stream`` (stdout) is a terminal and ``NO_COLOR`` is not set."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and not os.environ.get("NO_COLOR")


def wants_colour(stream: TextIO | None = None) -> bool:
    """`wants_table`, and a terminal that can show colour (``TERM`` is not ``dumb``)."""
    return wants_table(stream) and os.environ.get("TERM", "") not in ("dumb", "unknown")


def status_line(status: JobStatus) -> str:
    """``completed, exit status: 0``, ``killed, signal: SIGKILL``, ``error: <why>``..."""
    if status.state is State.COMPLETED:
        return f"completed, exit status: {status.exit_code}"
    if status.state is State.KILLED:
        line = "killed"
        if status.signal is not None:
            line += f", signal: {signal_name(status.signal)}"
        if status.timed_out:
            line += " (timed out)"
        return line
    if status.state is State.ERROR:
        return f"error: {status.error or 'the job could not start'}"
    return "running"


def status_colour(status: JobStatus) -> str:
    """Running yellow; completed with 0 green; other exits and errors red; killed magenta."""
    if status.state is State.RUNNING:
        return "yellow"
    if status.state is State.KILLED:
        return "magenta"
    if status.state is State.COMPLETED and status.exit_code == 0:
        return "green"
    return "red"


def styled_status_line(status: JobStatus, colour: bool) -> str:
    line = status_line(status)
    return click.style(line, fg=status_colour(status)) if colour else line


def exit_cell(status: JobStatus) -> str:
    """The table's EXIT column: the exit status, the signal's name, or ``-``."""
    if status.exit_code is not None:
        return str(status.exit_code)
    if status.signal is not None:
        return signal_name(status.signal)
    return "-"


def command_cell(status: JobStatus) -> str:
    return shlex.join([status.command, *status.args])


def started_cell(status: JobStatus, now: datetime) -> str:
    """Local time; the date too unless it was today."""
    local = status.created_at.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def duration_cell(status: JobStatus, now: datetime) -> str:
    end = status.ended_at or (now if status.running else None)
    if end is None:
        return "-"
    return format_duration((end - status.created_at).total_seconds())


def format_duration(seconds: float) -> str:
    """``0.25s``, ``42.0s``, ``3m07s``, ``2h05m``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def rows(statuses: Sequence[JobStatus], now: datetime | None = None) -> list[tuple[str, ...]]:
    """One tuple of cells per job, in `COLUMNS` order."""
    now = datetime.now(timezone.utc) if now is None else now
    return [
        (status.id, command_cell(status), status.state.value, exit_cell(status),
         started_cell(status, now), duration_cell(status, now))
        for status in statuses
    ]


def plain_table(statuses: Sequence[JobStatus], now: datetime | None = None) -> str:
    """The table as aligned plain text, for pipes and ``NO_COLOR``: one line per job.

    Commands are never cut short; the column is as wide as the longest.
    """
    table = [COLUMNS, *rows(statuses, now)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def rich_table(statuses: Sequence[JobStatus], now: datetime | None = None) -> Table:
    """The table for a terminal: states in their colours, long commands folded."""
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("ID", justify="right", no_wrap=True)
    table.add_column("COMMAND", overflow="fold", ratio=1)
    table.add_column("STATE", no_wrap=True)
    table.add_column("EXIT", justify="right", no_wrap=True)
    table.add_column("STARTED", no_wrap=True)
    table.add_column("DURATION", justify="right", no_wrap=True)
    for status, row in zip(statuses, rows(statuses, now)):
        job_id, command, state, exit_code, started, duration = row
        # Text, not markup: a command may well contain "[red]".
        table.add_row(job_id, Text(command), Text(state, style=status_colour(status)),
                      exit_code, started, duration)
    return table
