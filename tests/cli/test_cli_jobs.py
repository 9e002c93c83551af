"""``jobkit status / output / list / stop / delete / wait``, run for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import Jobkit, read_until
from tests.support.fifos import release

BINARY = ("import sys; sys.stdout.buffer.write(bytes(range(256)) * 3); "
          "sys.stderr.buffer.write(b'\\xfe\\x00\\r\\n')")


def start(jobkit: Jobkit, *command: str | Path) -> str:
    run = jobkit("exec", *command)
    assert run.code == 0, run
    return run.stdout.strip()


def finished(jobkit: Jobkit, *command: str | Path) -> str:
    job_id = start(jobkit, *command)
    jobkit("wait", job_id)
    return job_id


# -- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "line"), [
    (["true"], "completed, exit status: 0"),
    (["sh", "-c", "exit 3"], "completed, exit status: 3"),
    (["sh", "-c", "kill -KILL $$"], "killed, signal: SIGKILL"),
    (["/no/such/command"], "error: "),
])
def test_status_line(jobkit: Jobkit, command: list[str], line: str) -> None:
    job_id = finished(jobkit, *command)
    run = jobkit("status", job_id)
    assert run.code == 0
    assert run.stdout.startswith(line)
    assert run.stdout.count("\n") == 1
    assert run.err == b""


def test_status_running_and_timed_out(jobkit: Jobkit) -> None:
    job_id = start(jobkit, "sleep", "60")
    assert jobkit("status", job_id).status_head() == "running"
    jobkit("delete", job_id)
    job_id = start(jobkit, "--timeout", "0.1", "sleep", "60")
    jobkit("wait", job_id)
    assert jobkit("status", job_id).status_head() == "killed, signal: SIGTERM (timed out)"


def test_status_json_is_the_servers(jobkit: Jobkit) -> None:
    job_id = finished(jobkit, "sh", "-c", "exit 4")
    data = json.loads(jobkit("status", "--json", job_id).stdout)
    assert data["id"] == job_id
    assert data["status"] == "completed"
    assert data["exit_code"] == 4
    assert data["cmd"] == "sh"
    assert data["args"] == ["-c", "exit 4"]
    assert data["stdout"] == {"written": 0, "dropped": 0, "closed": True}


def test_status_colours_only_on_a_terminal(env: dict[str, str]) -> None:
    # Checked through a pseudo-terminal, the way a person sees it.
    import pty

    from tests.support.cli import run_jobkit

    job_ids = {}
    for name, command in [("ok", "exit 0"), ("bad", "exit 1"), ("killed", "kill -9 $$")]:
        job_ids[name] = run_jobkit("exec", "sh", "-c", command, env=env).stdout.strip()
        run_jobkit("wait", job_ids[name], env=env)
    running = run_jobkit("exec", "sleep", "60", env=env).stdout.strip()
    colours = {"ok": "32", "bad": "31", "killed": "35"}
    tty_env = {**env, "TERM": "xterm-256color"}
    tty_env.pop("NO_COLOR")
    for name, job_id in [*job_ids.items(), ("running", running)]:
        main, child = pty.openpty()
        process = subprocess.run([sys.executable, "-m", "jobkit", "status", job_id],
                                 stdout=child, stderr=subprocess.PIPE, env=tty_env,
                                 timeout=60, check=False)
        os.close(child)
        shown = os.read(main, 4096).decode()
        os.close(main)
        assert process.returncode == 0
        assert f"\x1b[{colours.get(name, '33')}m" in shown, (name, shown)
    run_jobkit("delete", running, env=env)


# -- output -----------------------------------------------------------------------------------


def test_output_byte_for_byte(jobkit: Jobkit) -> None:
    job_id = finished(jobkit, sys.executable, "-c", BINARY)
    run = jobkit("output", job_id)
    assert run.code == 0
    assert run.out == bytes(range(256)) * 3
    assert run.err == b"\xfe\x00\r\n"


def test_output_one_stream_goes_to_stdout(jobkit: Jobkit) -> None:
    job_id = finished(jobkit, sys.executable, "-c", BINARY)
    run = jobkit("output", "--stream", "stderr", job_id)
    assert (run.out, run.err) == (b"\xfe\x00\r\n", b"")
    run = jobkit("output", "--stream", "stdout", job_id)
    assert (run.out, run.err) == (bytes(range(256)) * 3, b"")
    run = jobkit("output", "--stream", "stdin", job_id)
    assert run.code == 2
    assert "stdin" in run.error_line()


def test_output_large(jobkit: Jobkit) -> None:
    code = "import sys; sys.stdout.buffer.write(b'x' * (8 << 20))"
    job_id = finished(jobkit, sys.executable, "-c", code)
    run = jobkit("output", job_id)
    assert run.out == b"x" * (8 << 20)


def test_output_follow(env: dict[str, str], jobkit: Jobkit, fifo: Path) -> None:
    job_id = start(jobkit, "sh", "-c", f"echo one; echo e1 >&2; cat {fifo}; echo two")
    process = subprocess.Popen([sys.executable, "-m", "jobkit", "output", "-f", job_id],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert process.stdout is not None and process.stderr is not None
        assert read_until(process.stdout.fileno(), b"one\n") == b"one\n"
        assert read_until(process.stderr.fileno(), b"e1\n") == b"e1\n"
        release(fifo, b"")
        assert process.wait(30) == 0
        assert process.stdout.read() == b"two\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # --follow of a finished job writes everything and ends.
    run = jobkit("output", "--follow", "--stream", "stdout", job_id)
    assert (run.code, run.out) == (0, b"one\ntwo\n")


def test_output_into_a_closed_pipe(env: dict[str, str], jobkit: Jobkit) -> None:
    job_id = finished(jobkit, sys.executable, "-c", "print('x' * 10_000_000)")
    process = subprocess.Popen([sys.executable, "-m", "jobkit", "output", job_id],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(10) == b"x" * 10
    process.stdout.close()
    assert process.wait(30) == 141
    assert b"Traceback" not in process.stderr.read()
    process.stderr.close()


# -- list ---------------------------------------------------------------------------------------


def test_list_plain_oldest_first(jobkit: Jobkit) -> None:
    assert jobkit("list").stdout.splitlines() == [
        "ID  COMMAND  STATE  EXIT  STARTED  DURATION  CPU  MEM"]
    finished(jobkit, "true")
    finished(jobkit, "sh", "-c", "exit 3")
    finished(jobkit, "sh", "-c", "kill -TERM $$")
    finished(jobkit, "/no/such/command")
    running = start(jobkit, "sleep", "60")
    run = jobkit("list")
    assert run.code == 0
    lines = run.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["ID", "COMMAND", "STATE", "EXIT", "STARTED",
                                             "DURATION", "CPU", "MEM"]
    time = r"\d\d:\d\d:\d\d"
    duration = r"\d+\.\d\ds"
    used = r"(\d+\.\d\ds|-)\s+(\d+(\.\d)?[KMG]?i?B|-)"  # CPU and MEM, where known
    expected = [
        rf"1\s+true\s+completed\s+0\s+{time}\s+{duration}\s+{used}",
        rf"2\s+sh -c 'exit 3'\s+completed\s+3\s+{time}\s+{duration}\s+{used}",
        rf"3\s+sh -c 'kill -TERM \$\$'\s+killed\s+SIGTERM\s+{time}\s+{duration}\s+{used}",
        rf"4\s+/no/such/command\s+error\s+-\s+{time}\s+{duration}\s+{used}",
        rf"{running}\s+sleep 60\s+running\s+-\s+{time}\s+{duration}\s+{used}",
    ]
    assert len(lines) == 1 + len(expected)
    for line, pattern in zip(lines[1:], expected):
        assert re.fullmatch(pattern, line), (line, pattern)
    # Columns line up: each header starts where its values do.
    start_of_state = lines[0].index("STATE")
    assert all(line[start_of_state - 2:start_of_state] == "  " for line in lines[1:])
    jobkit("delete", running)


def test_list_shows_control_characters_escaped_on_one_line(jobkit: Jobkit) -> None:
    assert jobkit("exec", "echo", "\x1b[31mRED\x1b]0;title\x07", "two\nlines").code == 0
    listing = jobkit("list")
    assert listing.code == 0
    rows = listing.stdout.splitlines()
    assert len(rows) == 2  # the header and one row
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    assert "\\x1b[31mRED\\x1b]0;title\\x07" in rows[1] and "two\\nlines" in rows[1]


def test_list_plain_when_not_a_terminal_even_with_colour_allowed(jobkit: Jobkit) -> None:
    finished(jobkit, "true")
    run = jobkit("list", NO_COLOR="", TERM="xterm-256color")
    assert "\x1b[" not in run.stdout
    assert run.stdout.startswith("ID  COMMAND")


def test_list_json(jobkit: Jobkit) -> None:
    first = finished(jobkit, "echo", "a")
    second = finished(jobkit, "sh", "-c", "exit 2")
    data = json.loads(jobkit("list", "--json").stdout)
    assert data["ids"] == [first, second]
    assert [job["exit_code"] for job in data["jobs"]] == [0, 2]
    assert data["jobs"][0]["args"] == ["a"]


def test_list_table_on_a_terminal(env: dict[str, str], jobkit: Jobkit) -> None:
    import pty

    finished(jobkit, "echo", "[red]not markup[/red]")
    finished(jobkit, "sh", "-c", "exit 9")
    tty_env = {**env, "TERM": "dumb", "COLUMNS": "100", "LINES": "40"}
    tty_env.pop("NO_COLOR")
    main, child = pty.openpty()
    process = subprocess.run([sys.executable, "-m", "jobkit", "list"], stdout=child,
                             stderr=subprocess.PIPE, env=tty_env, timeout=60, check=False)
    os.close(child)
    shown = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the terminal's other end is gone and all was read
            break
        if not data:
            break
        shown += data
    os.close(main)
    assert process.returncode == 0, process.stderr
    text = shown.decode().replace("\r\n", "\n")
    assert "\x1b[" not in text  # TERM=dumb: no colour
    lines = text.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == ["ID", "COMMAND", "STATE", "EXIT",
                                                    "STARTED", "DURATION", "CPU", "MEM"]
    assert "echo '[red]not markup[/red]'" in lines[1]
    assert re.search(r"sh -c 'exit 9'\s+completed\s+9", lines[2])
    assert all(len(line) <= 100 for line in lines)
    # NO_COLOR on a terminal: the plain text, as for a pipe.
    main, child = pty.openpty()
    subprocess.run([sys.executable, "-m", "jobkit", "list"], stdout=child, stderr=subprocess.PIPE,
                   env={**tty_env, "NO_COLOR": "1"}, timeout=60, check=True)
    os.close(child)
    plain = os.read(main, 65536).decode().replace("\r\n", "\n")
    os.close(main)
    assert plain.startswith("ID  COMMAND  ")
    assert plain.splitlines()[1].startswith("1   echo")  # left-aligned ids: not rich's table


# -- stop, delete, wait ---------------------------------------------------------------------------


def test_stop_with_signals(jobkit: Jobkit) -> None:
    job_id = start(jobkit, "sleep", "60")
    run = jobkit("stop", job_id)
    assert (run.code, run.out, run.err) == (0, b"", b"")
    assert jobkit("wait", job_id).code == 128 + signal.SIGTERM
    for name, number in [("KILL", signal.SIGKILL), ("SIGINT", signal.SIGINT), ("1", 1)]:
        job_id = start(jobkit, "sleep", "60")
        assert jobkit("stop", "--signal", name, job_id).code == 0
        assert jobkit("wait", job_id).code == 128 + number
    assert jobkit("status", job_id).status_head() == "killed, signal: SIGHUP"


def test_stop_unknown_signal(jobkit: Jobkit) -> None:
    job_id = start(jobkit, "sleep", "60")
    run = jobkit("stop", "-s", "BOGUS", job_id)
    assert run.code == 2
    assert "BOGUS" in run.error_line()
    assert jobkit("status", job_id).status_head() == "running"
    jobkit("delete", job_id)


def test_delete(jobkit: Jobkit) -> None:
    job_id = start(jobkit, "sleep", "60")
    assert jobkit("delete", job_id).code == 0
    run = jobkit("status", job_id)
    assert run.code == 3
    assert run.error_line() == f"jobkit: error: no such job: '{job_id}'"
    assert jobkit("delete", job_id).code == 3


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 42", 42),
                                              ("kill -USR1 $$", 128 + signal.SIGUSR1)])
def test_wait_exits_with_the_jobs_code(jobkit: Jobkit, script: str, code: int) -> None:
    job_id = start(jobkit, "sh", "-c", script)
    run = jobkit("wait", job_id)
    assert (run.code, run.out, run.err) == (code, b"", b"")


def test_wait_errors(jobkit: Jobkit) -> None:
    job_id = start(jobkit, "/no/such/command")
    run = jobkit("wait", job_id)
    assert run.code == 127
    assert "could not start" in run.error_line()
    run = jobkit("wait", "404")
    assert run.code == 255  # jobkit's own failure, as ssh: never a job's code
    assert run.error_line() == "jobkit: error: no such job: '404'"
    job_id = start(jobkit, "sleep", "60")
    run = jobkit("wait", "--timeout", "0.2", job_id)
    assert run.code == 124
    assert "still running" in run.error_line()
    jobkit("delete", job_id)


@pytest.mark.parametrize("command", [["status"], ["output"], ["stop"], ["delete"]])
def test_unknown_job(jobkit: Jobkit, command: list[str]) -> None:
    run = jobkit(*command, "77")
    assert run.code == 3
    assert run.out == b""
    assert run.error_line() == "jobkit: error: no such job: '77'"
