"""Status lines and job tables, rendered in-process from fixed server documents."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from textwrap import dedent

import pytest
from rich.console import Console

from jobkit import JobStatus, State
from jobkit.cli import render
from jobkit.core.signals import signal_name
from jobkit.wire import StatusRecord, status_from_json, status_to_json

NOW = datetime(2026, 5, 4, 12, 0, 0, tzinfo=timezone.utc)


def job(job_id: str, state: State, *, command: str = "sh", args: tuple[str, ...] = (),
        age: float = 5.0, ran: float | None = 1.5, **fields: object) -> StatusRecord:
    """A job as the CLI reads it: the server's JSON, made and decoded by the wire's code."""
    created = NOW - timedelta(seconds=age)
    ended = None if ran is None else created + timedelta(seconds=ran)
    status = JobStatus(id=job_id, state=state, command=command, args=args, pid=100,
                       created_at=created, ended_at=ended, backend="memory",
                       **fields)  # type: ignore[arg-type]
    return status_from_json(status_to_json(status, signal_name=signal_name))


JOBS = [
    job("1", State.COMPLETED, command="echo", args=("hi",), exit_code=0, ran=0.004),
    job("2", State.COMPLETED, args=("-c", "echo out; echo err >&2; exit 3"), exit_code=3),
    job("3", State.KILLED, command="sleep", args=("60",), signal=9, ran=75),
    job("4", State.ERROR, command="nope", error="command not found: 'nope'", ran=0.001),
    job("10", State.RUNNING, command="make", args=("-j4", "[bold]x[/]"), age=7300, ran=None),
    job("11", State.COMPLETED, command="old", exit_code=0, age=3 * 86400),
]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_status_lines() -> None:
    assert [render.status_line(status) for status in JOBS] == [
        "completed, exit status: 0",
        "completed, exit status: 3",
        "killed, signal: SIGKILL",
        "error: command not found: 'nope'",
        "running",
        "completed, exit status: 0",
    ]
    timed_out = job("5", State.KILLED, signal=15, timed_out=True)
    assert render.status_line(timed_out) == "killed, signal: SIGTERM (timed out)"


def test_status_colours() -> None:
    assert [render.status_colour(status) for status in JOBS] == [
        "green", "red", "magenta", "red", "yellow", "green"]
    assert render.styled_status_line(JOBS[0], colour=False) == "completed, exit status: 0"
    assert render.styled_status_line(JOBS[0], colour=True) == \
        "\x1b[32mcompleted, exit status: 0\x1b[0m"


def test_what_a_job_used_follows_its_status_line_with_where_it_comes_from() -> None:
    from jobkit import Limits, Usage

    cgroup = job("6", State.COMPLETED, exit_code=0, limits=Limits(memory="64M"),
                 usage=Usage("cgroup", 1.014, 0.218, 41 << 20, 0, 8 << 20))
    assert render.styled_status_line(cgroup, colour=False) == (
        "completed, exit status: 0 · cpu 1.23 s (user 1.01, system 0.22) · peak mem 41 MiB"
        " · io read 0 B, written 8 MiB · from cgroup")
    # No limits: the same; a source that cannot tell the peak or the io leaves them out.
    rusage = job("7", State.COMPLETED, exit_code=0, usage=Usage("rusage", 0.004, 0.0))
    assert render.styled_status_line(rusage, colour=True) == (
        "\x1b[32mcompleted, exit status: 0\x1b[0m · cpu 0.00 s (user 0.00, system 0.00)"
        " · from rusage of the main process")
    live = job("8", State.RUNNING, ran=None, usage=Usage("cgroup", 2.5, 0.5, 1536))
    assert render.styled_status_line(live, colour=False) == (
        "running · cpu 3.00 s (user 2.50, system 0.50) · peak mem 1.5 KiB · from cgroup")
    assert (render.cpu_cell(live), render.memory_cell(live)) == ("3.00s", "1.5KiB")


def test_durations() -> None:
    assert [render.format_duration(s) for s in (0, 0.004, 9.994, 42.04, 187, 7500, -1)] == [
        "0.00s", "0.00s", "9.99s", "42.0s", "3m07s", "2h05m", "0.00s"]


def test_plain_table() -> None:
    assert render.plain_table(JOBS, NOW) == dedent("""\
ID  COMMAND                                 STATE      EXIT     STARTED           DURATION  CPU  MEM
1   echo hi                                 completed  0        11:59:55          0.00s     -    -
2   sh -c 'echo out; echo err >&2; exit 3'  completed  3        11:59:55          1.50s     -    -
3   sleep 60                                killed     SIGKILL  11:59:55          1m15s     -    -
4   nope                                    error      -        11:59:55          0.00s     -    -
10  make -j4 '[bold]x[/]'                   running    -        09:58:20          2h01m     -    -
11  old                                     completed  0        2026-05-01 12:00  1.50s     -    -
    """)


def test_rich_table_without_colour_at_a_fixed_width() -> None:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(render.rich_table(JOBS, NOW))
    assert out.getvalue() == dedent("""\
ID  COMMAND                                 STATE         EXIT  STARTED           DURATION  CPU  MEM
 1  echo hi                                 completed        0  11:59:55             0.00s    -    -
 2  sh -c 'echo out; echo err >&2; exit 3'  completed        3  11:59:55             1.50s    -    -
 3  sleep 60                                killed     SIGKILL  11:59:55             1m15s    -    -
 4  nope                                    error            -  11:59:55             0.00s    -    -
10  make -j4 '[bold]x[/]'                   running          -  09:58:20             2h01m    -    -
11  old                                     completed        0  2026-05-01 12:00     1.50s    -    -
    """)


def test_rich_table_folds_long_commands_to_the_width() -> None:
    long = job("1", State.COMPLETED, command="echo", args=("word " * 40,), exit_code=0)
    out = io.StringIO()
    Console(file=out, width=60, color_system=None).print(render.rich_table([long], NOW))
    lines = out.getvalue().splitlines()
    assert len(lines) > 2
    assert all(len(line) <= 60 for line in lines)
    assert "completed" in lines[1]


def test_rich_table_colours_states() -> None:
    out = io.StringIO()
    Console(file=out, width=100, color_system="standard").print(render.rich_table(JOBS, NOW))
    text = out.getvalue()
    assert "\x1b[32mcompleted" in text
    assert "\x1b[31mcompleted" in text
    assert "\x1b[35mkilled" in text
    assert "\x1b[31merror" in text
    assert "\x1b[33mrunning" in text


def test_a_state_this_version_does_not_know_is_shown_by_its_name() -> None:
    later = JOBS[0]._replace(state="hibernating", exit_code=None)
    assert render.status_line(later) == "hibernating"
    assert render.status_colour(later) == "red"
    assert render.rows([later], NOW)[0][2] == "hibernating"
