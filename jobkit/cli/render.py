"""What people read: status lines, colours and the job table.

Everything here renders statuses as the wire module decodes the server's
documents (`jobkit.wire.StatusRecord`, from ``GET /jobs/<id>/status`` and the
summaries of ``GET /jobs``): ``--json`` and the human output come from one
source, and the CLI never needs the library's attrs classes, which keeps
``jobkit status`` quick to start (see docs/cli.md).  A state this version
does not know is shown by its name.

Colour and the rich table are only for a terminal: when stdout is not a
terminal, or ``NO_COLOR`` is set (https://no-color.org), output is plain text
and rich is not even imported (it costs more start-up time than the whole
``jobkit status`` request).  The status line's colour is a plain ANSI style
(click's), for the same reason.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import click

from jobkit.core.sizes import format_size
from jobkit.wire import StatusRecord

if TYPE_CHECKING:
    from datetime import datetime

    from rich.table import Table

__all__ = [
    "COLUMNS",
    "cpu_cell",
    "exit_cell",
    "format_duration",
    "memory_cell",
    "plain_table",
    "rich_table",
    "status_colour",
    "status_line",
    "styled_status_line",
    "usage_text",
    "wants_colour",
    "wants_table",
]

#: The job table's columns.
COLUMNS = ("ID", "COMMAND", "STATE", "EXIT", "STARTED", "DURATION", "CPU", "MEM")


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


def _signal(job: StatusRecord) -> str:
    return job.signal_name or str(job.signal if job.signal is not None else "?")


def status_line(job: StatusRecord) -> str:
    """``completed, exit status: 0``, ``killed, signal: SIGKILL``, ``error: <why>``...

    Any other state (``running``, ``pending``, or one this version does not
    know) is its name.
    """
    state = job.state
    if state == "completed":
        return f"completed, exit status: {job.exit_code}"
    if state == "killed":
        line = "killed"
        if job.signal is not None:
            line += f", signal: {_signal(job)}"
        if job.timed_out:
            line += " (timed out)"
        if job.oom_killed:
            # The library's reason names the limit: "out of memory (limit 64 MiB)".
            line += f", {job.error or 'out of memory'}"
        return line
    if state == "error":
        return f"error: {job.error or 'the job could not start'}"
    return state


#: How the status line names each `UsageRecord.source`.
_SOURCES = {"cgroup": "cgroup", "rusage": "rusage of the main process"}


def usage_text(job: StatusRecord) -> str:
    """What the job used, after its status line; ``""`` while nothing is known yet.

    `` · cpu 1.23 s (user 1.01, system 0.22) · peak mem 41 MiB · io read 0 B,
    written 8 MiB · from cgroup``: CPU seconds (user and system together, then
    each), the most memory it held at once, bytes it read from and wrote to
    block devices, and where the figures come from (``cgroup``: the job's
    whole tree; ``rusage of the main process``: ``wait4`` of the main process,
    known once it has ended).  Figures the source cannot tell (peak memory
    below the server's own, io outside a blkio group) are left out.
    """
    usage = job.usage
    if usage is None:
        return ""
    text = (f" · cpu {usage.cpu_s:.2f} s (user {usage.cpu_user_s:.2f},"
            f" system {usage.cpu_system_s:.2f})")
    if usage.peak_memory is not None:
        text += f" · peak mem {format_size(usage.peak_memory)}"
    if usage.io_read_bytes is not None or usage.io_write_bytes is not None:
        read = "?" if usage.io_read_bytes is None else format_size(usage.io_read_bytes)
        written = "?" if usage.io_write_bytes is None else format_size(usage.io_write_bytes)
        text += f" · io read {read}, written {written}"
    return text + f" · from {_SOURCES.get(usage.source, usage.source)}"


def status_colour(job: StatusRecord) -> str:
    """Running yellow; pending cyan; completed with 0 green; killed magenta; anything else red."""
    state = job.state
    if state == "running":
        return "yellow"
    if state == "pending":
        return "cyan"
    if state == "killed":
        return "magenta"
    if state == "completed" and job.exit_code == 0:
        return "green"
    return "red"


def styled_status_line(job: StatusRecord, colour: bool) -> str:
    """`status_line` in the state's colour, then `usage_text` uncoloured."""
    line = status_line(job)
    return (click.style(line, fg=status_colour(job)) if colour else line) + usage_text(job)


def exit_cell(job: StatusRecord) -> str:
    """The table's EXIT column: the exit status, the signal's name, or ``-``."""
    if job.exit_code is not None:
        return str(job.exit_code)
    if job.signal is not None:
        return _signal(job)
    return "-"


def cpu_cell(job: StatusRecord) -> str:
    """The table's CPU column: CPU seconds used (user and system), or ``-``."""
    return "-" if job.usage is None else f"{job.usage.cpu_s:.2f}s"


def memory_cell(job: StatusRecord) -> str:
    """The table's MEM column: peak memory, ``OOM`` after an OOM kill, or ``-``."""
    if job.oom_killed:
        return "OOM"
    if job.usage is None or job.usage.peak_memory is None:
        return "-"
    return format_size(job.usage.peak_memory).replace(" ", "")


def command_cell(job: StatusRecord) -> str:
    """The command line, quoted as a shell would need, on one safe line.

    Control characters (a newline, ESC starting a terminal escape sequence)
    are shown as ``\\n``, ``\\x1b``: a job's arguments must never move the
    cursor, retitle the terminal, or break a table row.
    """
    import shlex

    line = shlex.join([job.command, *job.args])
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else _escape(c) for c in line)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def started_cell(job: StatusRecord, now: datetime) -> str:
    """Local time; the date too unless it was today."""
    local = job.created_at.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def duration_cell(job: StatusRecord, now: datetime) -> str:
    end = job.ended_at or (now if job.running else None)
    if end is None:
        return "-"
    return format_duration((end - job.created_at).total_seconds())


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


def rows(jobs: Sequence[StatusRecord], now: datetime | None = None) -> list[tuple[str, ...]]:
    """One tuple of cells per job, in `COLUMNS` order."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc) if now is None else now
    return [
        (job.id, command_cell(job), job.state, exit_cell(job),
         started_cell(job, now), duration_cell(job, now), cpu_cell(job), memory_cell(job))
        for job in jobs
    ]


def plain_table(jobs: Sequence[StatusRecord], now: datetime | None = None) -> str:
    """The table as aligned plain text, for pipes and ``NO_COLOR``: one line per job.

    Commands are never cut short; the column is as wide as the longest.
    """
    table = [COLUMNS, *rows(jobs, now)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def rich_table(jobs: Sequence[StatusRecord], now: datetime | None = None) -> Table:
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
    table.add_column("CPU", justify="right", no_wrap=True)
    table.add_column("MEM", justify="right", no_wrap=True)
    for job, row in zip(jobs, rows(jobs, now)):
        job_id, command, state, exit_code, started, duration, cpu, memory = row
        # Text, not markup: a command may well contain "[red]".
        table.add_row(job_id, Text(command), Text(state, style=status_colour(job)),
                      exit_code, started, duration, cpu, memory)
    return table
