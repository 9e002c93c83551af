"""``jobkit list --watch`` in a real terminal (tmux), and ``jobkit output -f`` of a running job."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import Jobkit
from tests.support.fifos import release
from tests.support.waiting import wait_until

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run "
                                                                      "installs it)")


class Terminal:
    """A tmux session of its own (its own server socket), 100 columns wide."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"jobkit-test-{uuid.uuid4().hex[:8]}"
        self.env = env

    def tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10, check=True, env=self.env)
        return done.stdout

    def start(self, *command: str) -> None:
        """Run ``command`` in the terminal; bash prints its exit status after it
        (``exit status: N``: tmux's own record of it is not always there)."""
        env = [f"{name}={value}" for name, value in self.env.items()
               if name.startswith(("JOBKIT_", "NO_COLOR"))]
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "t")
        # Keep the pane after the command exits, to read its last screen.
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")
        script = f'{shlex.join(["env", *env, *command])}; echo "exit status: $?"'
        self.tmux("respawn-pane", "-k", "-t", "t", shlex.join(["bash", "-c", script]))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def exited(self) -> int | None:
        """The command's exit status once it ended, else None."""
        found = re.findall(r"^exit status: (\d+)$", self.screen(), re.M)
        return int(found[-1]) if found else None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10, check=False)


@pytest.fixture
def terminal(env: dict[str, str]) -> Iterator[Terminal]:
    term = Terminal({**env, "TERM": "xterm-256color"})
    yield term
    term.close()


def job_line(screen: str, job_id: str) -> str:
    """The table's row of ``job_id`` (its ID cell, then the column gap)."""
    rows = [line for line in screen.splitlines() if re.match(rf"\s*{job_id}\s\s", line)]
    return rows[0] if rows else ""


@needs_tmux
def test_the_live_table_shows_a_job_ending_then_q_quits(jobkit: Jobkit, terminal: Terminal,
                                                        fifo: Path) -> None:
    job_id = jobkit("exec", "cat", str(fifo)).stdout.strip()
    terminal.start(sys.executable, "-m", "jobkit", "list", "--watch")
    wait_until(lambda: "running" in job_line(terminal.screen(), job_id), timeout=20,
               what="the job running on screen")
    assert "q to quit" in terminal.screen()
    release(fifo)  # the job ends
    wait_until(lambda: "completed" in job_line(terminal.screen(), job_id), timeout=20,
               what="the job's new state on screen")
    assert "running" not in job_line(terminal.screen(), job_id)
    terminal.keys("q")
    wait_until(lambda: terminal.exited() is not None, what="list --watch to exit on q")
    assert terminal.exited() == 0
    assert "completed" in job_line(terminal.screen(), job_id)  # the last table stays


@needs_tmux
def test_ctrl_c_ends_the_live_table(jobkit: Jobkit, terminal: Terminal) -> None:
    job_id = jobkit("exec", "true").stdout.strip()
    terminal.start(sys.executable, "-m", "jobkit", "list", "--watch")
    wait_until(lambda: job_id in terminal.screen(), timeout=20, what="the table")
    terminal.keys("C-c")
    wait_until(lambda: terminal.exited() is not None, what="list --watch to exit on Ctrl-C")
    assert terminal.exited() == 130
    assert "Traceback" not in terminal.screen()


def test_watch_prints_once_when_stdout_is_not_a_terminal(jobkit: Jobkit) -> None:
    job_id = jobkit("exec", "true").stdout.strip()
    done = jobkit("list", "--watch", timeout=20)
    assert done.code == 0, done
    assert done.stdout.splitlines()[0].split()[:3] == ["ID", "COMMAND", "STATE"]
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [job_id]
    assert jobkit("list", "--watch", "--json").code == 2


def test_output_follow_of_a_running_job_exits_with_its_code(jobkit: Jobkit, env: dict[str, str],
                                                           fifo: Path) -> None:
    job_id = jobkit("exec", "sh", "-c", f"echo before; cat {fifo}; echo after >&2; exit 7"
                    ).stdout.strip()
    wait_until(lambda: "before" in jobkit("output", job_id).stdout, what="the first line")
    follower = subprocess.Popen([sys.executable, "-m", "jobkit", "output", "-f", job_id],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        release(fifo, b"middle\n")
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 7
    assert out == b"before\nmiddle\n" and err == b"after\n"


def test_output_follow_of_one_stream_and_of_a_finished_job(jobkit: Jobkit) -> None:
    job_id = jobkit("exec", "sh", "-c", "echo out; echo err >&2; kill -TERM $$").stdout.strip()
    assert jobkit("wait", job_id).code == 128 + 15
    done = jobkit("output", "-f", "--stream", "stderr", job_id)
    assert (done.code, done.out, done.err) == (128 + 15, b"err\n", b"")
    missing = jobkit("output", "-f", "424242")
    assert missing.code == 255 and "no such job" in missing.error_line()
