"""One behavioural suite over every executor: ``local`` and ``ray`` (a real cluster).

What a user sees must not depend on where a job ran: exit codes, separate
and byte-exact streams, followers, stop reaching the whole tree, timeouts,
start failures.  Ray's jobs run on this machine (a one-node cluster), so
the tests can look at their processes in /proc.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from pathlib import Path

import pytest

from jobkit import JobPool, Limits, State
from tests.support.executors import JOB_WAIT, MakePool
from tests.support.procs import descendants, process_alive, process_stats
from tests.support.waiting import wait_until


def test_exit_code_and_separate_streams(make_pool: MakePool) -> None:
    pool = make_pool()
    job = pool.create("sh", ["-c", "echo out; echo err >&2; exit 3"])
    status = pool.wait(job, timeout=JOB_WAIT)
    assert (status.state, status.exit_code, status.signal) == (State.COMPLETED, 3, None)
    assert pool.output(job).stdout == b"out\n"
    assert pool.output(job).stderr == b"err\n"
    assert status.stdout.closed and status.stderr.closed


def test_binary_output_is_byte_exact(make_pool: MakePool, tmp_path: Path) -> None:
    # Every byte value (NUL, CR, invalid UTF-8), then enough random bytes to
    # cross every chunk and frame boundary on the way.
    data = bytes(range(256)) * 64 + os.urandom(300_000)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    pool = make_pool()
    job = pool.create("sh", ["-c", 'cat "$1"; cat "$1" >&2; printf "\\r\\n\\r"', "sh",
                             str(source)])
    assert pool.wait(job, timeout=JOB_WAIT).exit_code == 0
    output = pool.output(job)
    assert output.stdout == data + b"\r\n\r"
    assert output.stderr == data
    assert pool.read(job, "stdout", offset=len(data) - 10) == data[-10:] + b"\r\n\r"


def test_two_followers_from_byte_zero_see_the_same_bytes(make_pool: MakePool) -> None:
    pool = make_pool()
    # The job takes its time, so the followers wait for bytes that come later.
    job = pool.create("sh", ["-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done"])
    seen: list[bytes] = [b"", b""]

    def follow(slot: int) -> None:
        seen[slot] = b"".join(pool.follow(job, "stdout"))

    threads = [threading.Thread(target=follow, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOB_WAIT)
    expected = b"".join(b"line %d\n" % i for i in range(1, 6))
    assert seen == [expected, expected]
    assert pool.output(job).stdout == expected


def _marked(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker``, and everything below them."""
    found = []
    for pid, fields in process_stats():
        if fields[0] == b"Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if marker.encode() in file.read():
                    found.append(pid)
        except OSError:
            continue  # gone meanwhile
    return sorted({*found, *(child for pid in found for child in descendants(pid))})


def test_stop_kills_every_process_of_the_job(make_pool: MakePool) -> None:
    pool = make_pool()
    marker = f"jobkit-tree-{secrets.token_hex(4)}"
    # A shell with two children that each have a child: `; true` keeps each
    # inner shell from becoming its sleep, so the marker is in three processes.
    inner = "sleep 600; true"
    job = pool.create("sh", ["-c", f'sh -c "{inner}" {marker} & sh -c "{inner}" {marker} & wait',
                             marker])
    wait_until(lambda: len(_marked(marker)) >= 5, timeout=JOB_WAIT, what="the job's tree")
    tree = _marked(marker)
    pool.stop(job)
    status = pool.wait(job, timeout=JOB_WAIT)
    assert status.state is State.KILLED
    assert status.signal == signal.SIGTERM
    wait_until(lambda: not any(process_alive(pid) for pid in tree), timeout=JOB_WAIT,
               what=f"every process of the job gone: {tree}")
    assert _marked(marker) == []


def test_timeout_stops_the_job(make_pool: MakePool) -> None:
    pool = make_pool(kill_after=1.0)
    job = pool.create("sleep", ["600"], timeout=0.5)
    status = pool.wait(job, timeout=JOB_WAIT)
    assert (status.state, status.signal, status.timed_out) == (State.KILLED, signal.SIGTERM, True)


def test_a_command_that_cannot_start_is_an_error_job(make_pool: MakePool) -> None:
    pool = make_pool()
    job = pool.create("no-such-command-for-jobkit")
    status = pool.wait(job, timeout=JOB_WAIT)
    assert status.state is State.ERROR
    assert status.error == "command not found: 'no-such-command-for-jobkit' (not in PATH)"
    assert pool.output(job).stdout == b""


def test_env_and_cwd(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool()
    merged = pool.create("sh", ["-c", 'echo "$JOBKIT_T:$(pwd)"'], env={"JOBKIT_T": "a b"},
                         cwd=tmp_path)
    alone = pool.create("env", env={"JOBKIT_T": "only"}, replace_env=True)
    assert pool.wait(merged, timeout=JOB_WAIT).exit_code == 0
    assert pool.output(merged).stdout == f"a b:{tmp_path}\n".encode()
    assert pool.wait(alone, timeout=JOB_WAIT).exit_code == 0
    assert pool.output(alone).stdout == b"JOBKIT_T=only\n"


def test_only_a_cluster_job_is_ever_pending(make_pool: MakePool, executor: str) -> None:
    pool = make_pool()
    # More CPUs, or more memory, than the one-node cluster has: Ray keeps it waiting.
    big = pool.create("true", limits=Limits(cpu=64, strict=False))
    huge = pool.create("true", limits=Limits(memory="64T", strict=False))
    small = pool.create("true")
    if executor == "local":
        assert pool.status(big).state is not State.PENDING
        assert pool.status(small).state is not State.PENDING
        return
    assert pool.status(big).state is State.PENDING
    assert pool.status(big).running  # not final
    assert pool.wait(small, timeout=JOB_WAIT).state is State.COMPLETED
    # The small job ran and ended meanwhile; the big one still waits.
    assert pool.status(big).state is State.PENDING
    assert pool.status(huge).state is State.PENDING
    # Resources to place it by, not limits: nothing enforces them.
    assert pool.status(big).unenforced == ("cpu",)
    assert pool.status(huge).enforced_by == "none"
    pool.delete(big)
    pool.delete(huge)
    assert huge not in pool.list()
    assert big not in pool.list()


def test_limits_nothing_can_place_are_refused(make_pool: MakePool, executor: str) -> None:
    if executor == "local":
        pytest.skip("local jobs enforce pids with cgroups (tests/core/test_limits.py)")
    pool = make_pool()
    job = pool.create("true", limits=Limits(pids=10))
    status = pool.wait(job, timeout=JOB_WAIT)
    assert status.state is State.ERROR
    assert status.error is not None and "cannot enforce pids" in status.error
    offline = pool.create("true", network=False)
    assert pool.wait(offline, timeout=JOB_WAIT).state is State.ERROR


def test_a_pool_that_ends_leaves_no_job_running(executor: str,
                                                executor_options: dict[str, object] | None
                                                ) -> None:
    marker = f"jobkit-close-{secrets.token_hex(4)}"
    with JobPool(executor=executor, executor_options=executor_options) as pool:
        job = pool.create("sh", ["-c", "sleep 600; true", marker])
        wait_until(lambda: _marked(marker), timeout=JOB_WAIT, what="the job running")
        tree = _marked(marker)
    # Without a state_dir, nothing could take the job over: the close stopped it.
    wait_until(lambda: not any(process_alive(pid) for pid in tree), timeout=JOB_WAIT,
               what="the job gone after the close")
    assert job == "1"
