"""``jobkit exec``, with and without --follow, run for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobkit.server.serve import JobServer
from tests.support.cli import Jobkit, base_env, read_until, run_jobkit
from tests.support.fifos import release
from tests.support.pki import new_client


def test_exec_prints_the_id_alone(jobkit: Jobkit) -> None:
    first = jobkit("exec", "true")
    second = jobkit("exec", "true")
    assert (first.code, first.stdout, first.stderr) == (0, "1\n", "")
    assert second.stdout == "2\n"


def test_everything_after_cmd_is_the_commands(jobkit: Jobkit, tmp_path: Path) -> None:
    (tmp_path / ".hidden").write_text("")
    job_id = jobkit("exec", "ls", "-la", "--", tmp_path).stdout.strip()
    assert jobkit("wait", job_id).code == 0
    listing = jobkit("output", job_id).stdout
    assert ".hidden" in listing  # -a reached ls
    assert "total" in listing  # and so did -l
    # Options that look like ours, after CMD, are the command's too.
    job_id = jobkit("exec", "echo", "-f", "--env", "X=1", "--help").stdout.strip()
    jobkit("wait", job_id)
    assert jobkit("output", job_id).stdout == "-f --env X=1 --help\n"


def test_unknown_option_before_cmd_is_a_usage_error(jobkit: Jobkit) -> None:
    run = jobkit("exec", "--bogus", "ls")
    assert run.code == 2
    assert run.out == b""
    assert "--bogus" in run.error_line()
    assert jobkit("list", "--json").stdout.count('"id"') == 0  # nothing ran


def test_env_cwd_timeout_backend(jobkit: Jobkit, tmp_path: Path) -> None:
    run = jobkit("exec", "-f", "--env", "JK_A=1", "-e", "JK_B=x=y", "--env", "JK_C=",
                 "--cwd", tmp_path, "sh", "-c", 'echo "$JK_A|$JK_B|$JK_C"; pwd')
    assert (run.code, run.stdout) == (0, f"1|x=y|\n{tmp_path}\n")
    run = jobkit("exec", "-f", "--timeout", "0.2", "sleep", "30")
    assert run.code == 128 + signal.SIGTERM
    job_id = jobkit("exec", "--backend", "ring", "echo", "ringed").stdout.strip()
    jobkit("wait", job_id)
    status = jobkit("status", "--json", job_id).stdout
    assert '"backend": "ring"' in status
    refused = jobkit("exec", "--backend", "memory", "echo", "no")  # not --allow-backend'ed
    assert refused.code != 0 and "backend 'memory' is not allowed on this server" in (
        refused.error_line()
    )


@pytest.mark.parametrize(("args", "words"), [
    (["--env", "NOEQUALS", "true"], ["--env", "KEY=VALUE", "NOEQUALS"]),
    (["--env", "=x", "true"], ["--env"]),
    (["--timeout", "0", "true"], ["--timeout"]),
    (["--timeout", "soon", "true"], ["--timeout"]),
    (["--backend", "no-such-backend", "true"], ["no-such-backend"]),
    ([], ["CMD"]),
], ids=["env-no-equals", "env-no-key", "timeout-zero", "timeout-text", "backend", "no-cmd"])
def test_exec_usage_errors(jobkit: Jobkit, args: list[str], words: list[str]) -> None:
    for follow in ([], ["-f"]):
        run = jobkit("exec", *follow, *args)
        assert run.code == 2, run
        assert run.out == b""
        line = run.error_line()
        for word in words:
            assert word in line


def test_non_utf8_arguments_are_a_usage_error(jobkit: Jobkit) -> None:
    run = jobkit("exec", "echo", os.fsdecode(b"\xff\xfe"))
    assert run.code == 2
    assert "not valid UTF-8" in run.error_line()
    assert jobkit("list", "--json").code == 0  # and nothing was created that breaks it


@pytest.mark.parametrize(("script", "code"), [
    ("exit 0", 0),
    ("exit 3", 3),
    ("exit 255", 255),
    ("kill -TERM $$", 128 + signal.SIGTERM),
    ("kill -KILL $$", 128 + signal.SIGKILL),
])
def test_follow_exits_with_the_jobs_code(jobkit: Jobkit, script: str, code: int) -> None:
    run = jobkit("exec", "-f", "sh", "-c", script)
    assert run.code == code
    assert (run.out, run.err) == (b"", b"")


def test_follow_a_job_that_cannot_start(jobkit: Jobkit) -> None:
    run = jobkit("exec", "-f", "/no/such/command")
    assert run.code == 127
    assert run.out == b""
    line = run.error_line()
    assert "could not start" in line
    assert "/no/such/command" in line


def test_follow_keeps_stdout_and_stderr_apart(jobkit: Jobkit) -> None:
    run = jobkit("exec", "-f", "sh", "-c", "echo out; echo err >&2; echo out2; exit 3")
    assert run.code == 3
    assert run.stdout == "out\nout2\n"
    assert run.stderr == "err\n"


def test_follow_binary_output_byte_for_byte(jobkit: Jobkit) -> None:
    code = ("import sys; sys.stdout.buffer.write(bytes(range(256)) * 4000); "
            "sys.stderr.buffer.write(b'\\x00\\xff' * 1000)")
    run = jobkit("exec", "-f", sys.executable, "-c", code)
    assert run.code == 0
    assert run.out == bytes(range(256)) * 4000
    assert run.err == b"\x00\xff" * 1000


def test_follow_streams_both_live(env: dict[str, str], fifo: Path) -> None:
    script = f"echo out1; echo err1 >&2; cat {fifo}; echo out2; echo err2 >&2; exit 5"
    process = subprocess.Popen(
        [sys.executable, "-m", "jobkit", "exec", "-f", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        # Both arrive while the job is still blocked on the fifo.
        assert read_until(process.stdout.fileno(), b"out1\n") == b"out1\n"
        assert read_until(process.stderr.fileno(), b"err1\n") == b"err1\n"
        assert process.poll() is None
        release(fifo, b"")
        assert process.wait(30) == 5
        assert process.stdout.read() == b"out2\n"
        assert process.stderr.read() == b"err2\n"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_follow_ends_when_the_whole_job_does(jobkit: Jobkit) -> None:
    # A child holding the pipes is part of the job: with a cgroup per job (as
    # jobkit serve runs them where it can), the job runs until its whole tree
    # is gone; the follow then ends with the main process's exit code.
    run = jobkit("exec", "-f", "sh", "-c", "sleep 1 & echo done; exit 7")
    assert run.code == 7
    assert run.stdout == "done\n"
    status = jobkit("status", "--json", "1").stdout
    assert '"exit_code": 7' in status and '"status": "completed"' in status


def test_ctrl_c_stops_following_and_leaves_the_job(env: dict[str, str], jobkit: Jobkit) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jobkit", "exec", "-f", "sh", "-c", "echo started; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        read_until(process.stdout.fileno(), b"started\n")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 130
        error = process.stderr.read().decode()
        assert "stopped following job 1" in error
        assert "Traceback" not in error
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert jobkit("status", "1").status_head() == "running"
    jobkit("delete", "1")


def test_exec_follow_names_the_job_it_started_when_following_fails(pki_root: Path) -> None:
    # One output stream per client: exec -f follows stdout and stderr at once.
    server = JobServer(pki_root / "server", port=0, threads=4, max_client_streams=1)
    server.start()
    try:
        host, port = server.address
        env = base_env(JOBKIT_SERVER=f"{host}:{port}", JOBKIT_CERTS=str(new_client(pki_root)))
        run = run_jobkit("exec", "-f", "sleep", "1000", env=env)
        assert run.code == 255
        assert run.error_line().startswith("jobkit: error: job 1 was started, but: ")
        assert run_jobkit("status", "1", env=env).stdout.startswith("running")
    finally:
        server.stop()
