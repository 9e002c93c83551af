"""JobPool behaviour: creation, states, errors, signals, timeouts, threads."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobkit import JobkitError, JobNotFound, JobPool, PoolClosed, State
from tests.conftest import group_members, process_alive, wait_until


def test_echo_completes_with_output(memory_pool: JobPool) -> None:
    job = memory_pool.create("echo", ["hi"])
    status = memory_pool.wait(job, timeout=10)
    assert status.state is State.COMPLETED
    assert status.exit_code == 0
    assert status.signal is None and status.error is None
    assert status.command == "echo" and status.args == ("hi",)
    assert status.pid and status.ended_at and status.ended_at >= status.created_at
    out = memory_pool.output(job)
    assert (out.stdout, out.stderr) == (b"hi\n", b"")


def test_ids_are_short_sequential_and_never_reused(memory_pool: JobPool) -> None:
    first = memory_pool.create("true")
    second = memory_pool.create("true")
    assert (first, second) == ("1", "2")
    memory_pool.delete(second)
    assert memory_pool.create("true") == "3"
    assert memory_pool.list() == ["1", "3"]


def test_unknown_and_deleted_ids_raise_job_not_found(memory_pool: JobPool) -> None:
    job = memory_pool.create("true")
    memory_pool.delete(job)
    for call in (
        memory_pool.status,
        memory_pool.output,
        memory_pool.delete,
        memory_pool.stop,
        memory_pool.wait,
        lambda j: memory_pool.read(j, "stdout"),
        lambda j: memory_pool.follow(j, "stdout"),
    ):
        for bad in (job, "42", "../1", ""):
            with pytest.raises(JobNotFound) as info:
                call(bad)
            assert isinstance(info.value, (JobkitError, LookupError))


def test_nonzero_exit_and_separate_streams(memory_pool: JobPool) -> None:
    job = memory_pool.create("sh", ["-c", "echo out; echo err >&2; exit 3"])
    status = memory_pool.wait(job, 10)
    assert (status.state, status.exit_code) == (State.COMPLETED, 3)
    out = memory_pool.output(job)
    assert (out.stdout, out.stderr) == (b"out\n", b"err\n")


def test_no_shell_is_involved(memory_pool: JobPool) -> None:
    job = memory_pool.create("echo", ["$HOME;", "`id`", "|", "*"])
    memory_pool.wait(job, 10)
    assert memory_pool.output(job).stdout == b"$HOME; `id` | *\n"


def test_stdin_is_dev_null(memory_pool: JobPool) -> None:
    job = memory_pool.create("cat")
    assert memory_pool.wait(job, 10).exit_code == 0
    assert memory_pool.output(job).stdout == b""


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: "no-such-command-xyz", "command not found: 'no-such-command-xyz'"),
        (lambda tmp: str(tmp / "missing"), "no such file"),
        (lambda tmp: str(tmp), "directory"),
    ],
    ids=["not-in-path", "missing-path", "directory"],
)
def test_spawn_failures_become_error_jobs(
    memory_pool: JobPool, tmp_path: Path, make, message
) -> None:
    job = memory_pool.create(make(tmp_path))
    status = memory_pool.status(job)
    assert status.state is State.ERROR
    assert message in status.error
    assert status.pid is None and status.ended_at is not None
    assert memory_pool.output(job).stdout == b""
    assert memory_pool.wait(job, 1).state is State.ERROR


def test_not_executable_and_bad_format(memory_pool: JobPool, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01\x02 not a program")
    garbage.chmod(stat.S_IRWXU)
    denied = memory_pool.status(memory_pool.create(str(plain)))
    assert denied.state is State.ERROR and "permission denied" in denied.error
    bad = memory_pool.status(memory_pool.create(str(garbage)))
    assert bad.state is State.ERROR and "cannot execute" in bad.error


def test_bad_working_directory(memory_pool: JobPool, tmp_path: Path) -> None:
    status = memory_pool.status(memory_pool.create("true", cwd=str(tmp_path / "nope")))
    assert status.state is State.ERROR
    assert "working directory" in status.error


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"command": 1}, TypeError),
        ({"command": b"echo"}, TypeError),
        ({"command": ""}, ValueError),
        ({"command": "ec\0ho"}, ValueError),
        ({"command": "echo", "args": "hi"}, TypeError),
        ({"command": "echo", "args": [1]}, TypeError),
        ({"command": "echo", "args": ["a\0b"]}, ValueError),
        ({"command": "echo", "env": {"A": 1}}, TypeError),
        ({"command": "echo", "env": {"A=B": "x"}}, ValueError),
        ({"command": "echo", "env": {"A": "x\0y"}}, ValueError),
        ({"command": "echo", "env": ["A"]}, TypeError),
        ({"command": "echo", "cwd": 3}, TypeError),
        ({"command": "echo", "timeout": -1}, ValueError),
        ({"command": "echo", "timeout": float("nan")}, ValueError),
        ({"command": "echo", "timeout": True}, TypeError),
        ({"command": "echo", "timeout": "1"}, TypeError),
        ({"command": "echo", "backend": "nope"}, LookupError),
        ({"command": "echo", "backend": "ring", "backend_options": {"capacity": -1}}, ValueError),
        ({"command": "echo", "backend": "ring", "backend_options": {"bogus": 1}}, TypeError),
    ],
)
def test_bad_arguments_raise_and_create_nothing(memory_pool: JobPool, kwargs, error) -> None:
    with pytest.raises(error):
        memory_pool.create(**kwargs)
    assert memory_pool.list() == []


def test_env_is_merged_or_replaced(memory_pool: JobPool, tmp_path: Path) -> None:
    merged = memory_pool.create("sh", ["-c", 'echo "$JOBKIT_T:$PATH"'], env={"JOBKIT_T": "x"})
    memory_pool.wait(merged, 10)
    assert memory_pool.output(merged).stdout == f"x:{os.environ['PATH']}\n".encode()
    replaced = memory_pool.create("/usr/bin/env", env={"ONLY": "1"}, replace_env=True)
    memory_pool.wait(replaced, 10)
    assert memory_pool.output(replaced).stdout == b"ONLY=1\n"


def test_pool_env_is_the_base(tmp_path: Path) -> None:
    with JobPool(env={"BASE": "b", "PATH": os.environ["PATH"]}) as pool:
        job = pool.create("/usr/bin/env", env={"EXTRA": "e"})
        pool.wait(job, 10)
        lines = sorted(pool.output(job).stdout.decode().splitlines())
        assert lines == sorted(["BASE=b", "EXTRA=e", f"PATH={os.environ['PATH']}"])


def test_cwd(memory_pool: JobPool, tmp_path: Path) -> None:
    job = memory_pool.create("pwd", cwd=tmp_path)
    memory_pool.wait(job, 10)
    assert memory_pool.output(job).stdout == f"{tmp_path}\n".encode()


def test_stop_sends_sigterm_to_the_group_and_keeps_the_job(memory_pool: JobPool) -> None:
    job = memory_pool.create("sleep", ["100"])
    memory_pool.stop(job)
    status = memory_pool.wait(job, 10)
    assert (status.state, status.signal, status.exit_code) == (State.KILLED, signal.SIGTERM, None)
    assert job in memory_pool.list()
    memory_pool.stop(job)  # stopping a finished job is not an error


@pytest.mark.parametrize("sig", ["INT", "SIGHUP", 9, "10", signal.SIGUSR2])
def test_stop_with_other_signals(memory_pool: JobPool, sig) -> None:
    job = memory_pool.create("sleep", ["100"])
    memory_pool.stop(job, sig)
    expected = (
        signal.Signals[sig if str(sig).startswith("SIG") else f"SIG{sig}"]
        if isinstance(sig, str) and not sig.isdigit()
        else int(sig)
    )
    assert memory_pool.wait(job, 10).signal == expected


@pytest.mark.parametrize("sig", ["NOPE", 0.5, -1, 999, True])
def test_stop_with_a_bad_signal(memory_pool: JobPool, sig) -> None:
    job = memory_pool.create("sleep", ["100"])
    with pytest.raises((ValueError, TypeError)):
        memory_pool.stop(job, sig)
    assert memory_pool.status(job).state is State.RUNNING


def test_a_signal_from_outside_is_killed_with_its_number(memory_pool: JobPool) -> None:
    job = memory_pool.create("sleep", ["100"])
    os.kill(memory_pool.status(job).pid, signal.SIGKILL)
    status = memory_pool.wait(job, 10)
    assert (status.state, status.signal) == (State.KILLED, 9)


def test_timeout_sends_sigterm(memory_pool: JobPool) -> None:
    job = memory_pool.create("sleep", ["100"], timeout=0.2)
    status = memory_pool.wait(job, 10)
    assert (status.state, status.signal, status.timed_out) == (State.KILLED, 15, True)


def test_timeout_escalates_to_sigkill() -> None:
    with JobPool(kill_after=0.2) as pool:
        job = pool.create("sh", ["-c", "trap '' TERM; echo ready; sleep 100"], timeout=0.2)
        status = pool.wait(job, 10)
        assert (status.state, status.signal, status.timed_out) == (State.KILLED, 9, True)


def test_a_job_within_its_timeout_is_not_timed_out(memory_pool: JobPool) -> None:
    status = memory_pool.wait(memory_pool.create("true", timeout=30), 10)
    assert (status.state, status.timed_out) == (State.COMPLETED, False)


def test_wait_times_out(memory_pool: JobPool) -> None:
    job = memory_pool.create("sleep", ["100"])
    with pytest.raises(TimeoutError):
        memory_pool.wait(job, 0.05)


def test_delete_kills_the_whole_tree(memory_pool: JobPool) -> None:
    job = memory_pool.create("sh", ["-c", "sleep 1000 & sleep 1000 & echo up; wait"])
    next(iter(memory_pool.follow(job, "stdout")))  # the children exist now
    pgid = memory_pool.status(job).pid
    assert len(group_members(pgid)) == 3
    memory_pool.delete(job)
    wait_until(lambda: group_members(pgid) == [], what="the process group to die")
    assert job not in memory_pool.list()


def test_stop_reaches_grandchildren(memory_pool: JobPool) -> None:
    job = memory_pool.create("sh", ["-c", "sleep 1000 & echo up; wait"])
    next(iter(memory_pool.follow(job, "stdout")))
    pgid = memory_pool.status(job).pid
    memory_pool.stop(job, "KILL")
    assert memory_pool.wait(job, 10).signal == 9
    wait_until(lambda: group_members(pgid) == [], what="the process group to die")


def test_state_follows_the_main_process_not_its_pipes(memory_pool: JobPool) -> None:
    # The grandchild keeps stdout open for 1000 s; the job is done anyway.
    job = memory_pool.create("sh", ["-c", "sleep 1000 & echo parent done"])
    status = memory_pool.wait(job, 10)
    assert (status.state, status.exit_code) == (State.COMPLETED, 0)
    assert memory_pool.output(job).stdout == b"parent done\n"
    assert not status.stdout.closed  # the grandchild still holds it
    pgid = status.pid
    memory_pool.delete(job)
    wait_until(lambda: group_members(pgid) == [], what="the grandchild to die")


def test_large_output_never_blocks_the_job(pool: JobPool) -> None:
    job = pool.create("head", ["-c", str(64 << 20), "/dev/zero"])
    status = pool.wait(job, 60)
    assert status.exit_code == 0 and status.stdout.written == 64 << 20


def test_many_threads_at_once(memory_pool: JobPool) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(20):
                job = memory_pool.create("echo", ["x"])
                assert memory_pool.wait(job, 30).exit_code == 0
                assert memory_pool.output(job).stdout == b"x\n"
                memory_pool.status(job)
                memory_pool.list()
                with lock:
                    ids.append(job)
                if int(job) % 2:
                    memory_pool.delete(job)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(ids)) == 160
    assert memory_pool.list() == sorted((i for i in ids if int(i) % 2 == 0), key=int)


def test_closed_pool_refuses_calls_and_killed_its_jobs() -> None:
    pool = JobPool()
    job = pool.create("sleep", ["1000"])
    pid = pool.status(job).pid
    pool.close()
    assert not process_alive(pid)
    with pytest.raises(PoolClosed):
        pool.create("true")
    with pytest.raises(PoolClosed):
        pool.status(job)
    pool.close()  # idempotent


def test_interpreter_exit_kills_jobs_of_unclosed_pools() -> None:
    code = (
        "from jobkit import JobPool\n"
        "pool = JobPool()\n"
        "job = pool.create('sh', ['-c', 'sleep 1000 & sleep 1000'])\n"
        "print(pool.status(job).pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    pgid = int(out.stdout)
    wait_until(lambda: group_members(pgid) == [], what="the orphaned jobs to die")


def test_big_reads_and_idle_followers_do_not_block_other_jobs(pool: JobPool) -> None:
    big = pool.create("head", ["-c", str(32 << 20), "/dev/zero"])
    idle = pool.follow(big, "stdout")  # never read from: must not hold anything back
    pool.wait(big, 60)
    stop = threading.Event()
    reads: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            reads.append(len(pool.read(big, "stdout")))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            job = pool.create("echo", ["other"])
            assert pool.wait(job, 30).exit_code == 0
            assert pool.output(job).stdout == b"other\n"
    finally:
        stop.set()
        thread.join(30)
    held = pool.status(big).stdout
    assert reads and set(reads) <= {held.written - held.dropped}
    idle.cancel()
