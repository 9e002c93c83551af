"""One behavioural suite over every built-in backend, plus each one's own rules."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from jobkit import JobPool, State
from jobkit.core.stream import Follower
from tests.support.pools import pool_for
from tests.support.procs import open_fds
from tests.support.waiting import wait_until


@pytest.fixture
def random_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(3 << 20) + b"tail"
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return path, data


def test_output_is_exact(pool: JobPool, random_file) -> None:
    path, data = random_file
    if pool.backend == "ring":
        pytest.skip("ring keeps only the tail; see test_ring_keeps_the_last_bytes")
    job = pool.create("cat", [str(path)])
    status = pool.wait(job, 30)
    assert status.stdout.written == len(data) and status.stdout.dropped == 0
    assert hashlib.sha256(pool.output(job).stdout).digest() == hashlib.sha256(data).digest()


def test_reads_at_any_offset(pool: JobPool) -> None:
    text = b"".join(b"line %05d\n" % i for i in range(3000))
    job = pool.create("printf", ["%s", text.decode()])
    pool.wait(job, 30)
    for offset, size in [(0, 10), (5, 7), (29_990, 10), (29_995, 100), (30_000, 5), (99_999, 1)]:
        assert pool.read(job, "stdout", offset, size) == text[offset : offset + size]
    assert pool.read(job, "stdout", 100) == text[100:]
    assert pool.read(job, "stderr") == b""
    with pytest.raises(ValueError):
        pool.read(job, "stdin")
    with pytest.raises(ValueError):
        pool.read(job, "stdout", -1)
    with pytest.raises(TypeError):
        pool.read(job, "stdout", "0")


def test_followers_see_every_byte_as_it_arrives(pool: JobPool) -> None:
    # The job prints a line, then waits for the follower to answer by file.
    job = pool.create("sh", ["-c", "for i in 1 2 3; do echo $i; sleep 0.05; done; echo end >&2"])
    followers = [pool.follow(job, "stdout") for _ in range(4)]
    late = pool.follow(job, "stdout", offset=2)
    results = [b"".join(f) for f in followers]
    assert results == [b"1\n2\n3\n"] * 4
    assert b"".join(late) == b"2\n3\n"
    assert late.offset == 6
    assert b"".join(pool.follow(job, "stderr")) == b"end\n"


def test_follow_is_incremental(pool: JobPool, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = pool.create(
        "sh", ["-c", f"echo first; while [ ! -e {gate} ]; do sleep 0.01; done; echo second"]
    )
    follower = pool.follow(job, "stdout")
    assert next(follower) == b"first\n"  # arrives while the job still runs
    assert pool.status(job).state is State.RUNNING
    gate.touch()
    assert b"".join(follower) == b"second\n"


def test_follow_from_a_saved_offset_resumes(pool: JobPool) -> None:
    job = pool.create("printf", ["abcdef"])
    pool.wait(job, 10)
    follower = pool.follow(job, "stdout")
    first = next(follower)
    resumed = pool.follow(job, "stdout", offset=3)
    assert first == b"abcdef" and b"".join(resumed) == b"def"


def test_follower_can_be_cancelled_from_another_thread(pool: JobPool) -> None:
    job = pool.create("sleep", ["100"])
    follower = pool.follow(job, "stdout")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(follower))
    reader.start()
    follower.cancel()
    reader.join(10)
    assert not reader.is_alive() and got == []
    assert follower.cancelled


def test_follower_read_with_timeout(pool: JobPool) -> None:
    job = pool.create("sleep", ["100"])
    follower = pool.follow(job, "stdout")
    assert follower.read(timeout=0.01) == b""
    pool.stop(job, "KILL")
    pool.wait(job, 10)
    assert follower.read(timeout=10) is None


def test_delete_ends_followers(pool: JobPool) -> None:
    job = pool.create("sleep", ["100"])
    follower = pool.follow(job, "stdout")
    done = threading.Event()
    threading.Thread(target=lambda: (list(follower), done.set())).start()
    pool.delete(job)
    assert done.wait(10)


def test_output_of_a_finished_job_never_changes(pool: JobPool) -> None:
    job = pool.create("sh", ["-c", "echo a; echo b >&2"])
    pool.wait(job, 10)
    wait_until(lambda: pool.status(job).stdout.closed and pool.status(job).stderr.closed)
    first = pool.output(job)
    assert first.stdout == b"a\n" and first.stderr == b"b\n"
    assert pool.output(job) == first


def test_delete_frees_descriptors(backend: str, tmp_path: Path) -> None:
    with pool_for(backend, tmp_path) as pool:
        warm = pool.create("true")
        pool.wait(warm, 10)
        pool.delete(warm)
        before = open_fds()
        jobs = [pool.create("sh", ["-c", "echo x; sleep 100"]) for _ in range(20)]
        assert open_fds() > before
        for job in jobs:
            pool.delete(job)
        assert open_fds() == before


def test_ring_keeps_the_last_bytes() -> None:
    with JobPool("ring", {"capacity": 1000}) as pool:
        script = "i=0; while [ $i -lt 1000 ]; do echo 123456789; i=$((i+1)); done"
        job = pool.create("sh", ["-c", script])
        status = pool.wait(job, 30)
        wait_until(lambda: pool.status(job).stdout.closed)
        info = pool.status(job).stdout
        assert (info.written, info.dropped) == (10_000, 9_000)
        assert pool.output(job).stdout == b"123456789\n" * 100
        assert pool.read(job, "stdout", 9_990) == b"123456789\n"
        assert pool.read(job, "stdout", 0, 10) == b"123456789\n"  # starts at `dropped`
        follower = pool.follow(job, "stdout")
        assert b"".join(follower) == b"123456789\n" * 100
        assert follower.offset == 10_000
        assert status.exit_code == 0


def test_ring_capacity_zero_counts_but_keeps_nothing() -> None:
    with JobPool("ring", {"capacity": 0}) as pool:
        job = pool.create("echo", ["hello"])
        pool.wait(job, 10)
        wait_until(lambda: pool.status(job).stdout.closed)
        assert pool.status(job).stdout.written == 6
        assert pool.output(job).stdout == b""


def test_per_job_backend_override() -> None:
    with JobPool("memory") as pool:
        job = pool.create("echo", ["hi"], backend="ring", backend_options={"capacity": 2})
        pool.wait(job, 10)
        wait_until(lambda: pool.status(job).stdout.closed)
        assert pool.status(job).backend == "ring"
        assert pool.output(job).stdout == b"i\n"


def test_tempfile_leaves_no_file_behind(tmp_path: Path) -> None:
    with JobPool("tempfile", {"directory": str(tmp_path)}) as pool:
        job = pool.create("echo", ["spooled"])
        pool.wait(job, 10)
        assert list(tmp_path.iterdir()) == []  # unnamed files
        assert pool.output(job).stdout == b"spooled\n"
        assert any(str(tmp_path) in target for target in fd_targets())
        pool.delete(job)
        assert not any(str(tmp_path) in target for target in fd_targets())


def fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass  # the descriptor listdir itself used
    return targets


def test_tempfile_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        JobPool("tempfile", {"directory": str(tmp_path / "nope")})


RSS_SCRIPT = """
import resource, sys
from jobkit import JobPool
with JobPool("tempfile", {"directory": sys.argv[1]}) as pool:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    job = pool.create("head", ["-c", str(1 << 30), "/dev/zero"])
    status = pool.wait(job, 120)
    assert status.stdout.written == 1 << 30, status
    assert pool.read(pool.list()[0], "stdout", (1 << 30) - 4) == bytes(4)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak - base)
"""


def test_tempfile_ram_stays_bounded_for_a_gibibyte(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    grown_kib = int(out.stdout)
    assert grown_kib < 8 * 1024, f"RSS grew by {grown_kib} KiB while spooling 1 GiB"


DISK_FULL_SCRIPT = """
import resource, signal, sys
from jobkit import JobPool, State
from jobkit.core.stream import Follower
# A file size limit makes every write past 64 KiB fail with EFBIG, exactly
# as a full disk makes it fail with ENOSPC: both reach the store as OSError.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
with JobPool("tempfile", {"directory": sys.argv[1]}) as pool:
    job = pool.create("head", ["-c", str(8 << 20), "/dev/zero"])
    status = pool.wait(job, 60)
    print(status.state.value, status.exit_code, status.stdout.written, status.output_error)
"""


def test_tempfile_write_errors_are_recorded_not_raised(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    state, code, written, error = out.stdout.split(" ", 3)
    assert (state, code) == ("completed", "0")  # the job ran to the end, unblocked
    assert int(written) <= 65536
    assert error.startswith("stdout: cannot store output:")


def test_a_capped_memory_store_keeps_the_head_and_says_so() -> None:
    with JobPool("memory", {"max_bytes": "64K"}) as pool:
        job = pool.create("head", ["-c", "1000000", "/dev/zero"])
        pool.wait(job, 10)
        wait_until(lambda: pool.status(job).stdout.closed)
        status = pool.status(job)
        assert status.exit_code == 0  # the job was never blocked by the cap
        assert pool.output(job).stdout == bytes(65536)
        assert status.stdout.written == 65536
        assert status.output_error == (
            "stdout: cannot store output: over the memory backend's cap of 64 KiB"
        )


def test_a_capped_file_store_keeps_the_newest_bytes_at_their_offsets(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(400000): sys.stdout.write(f'{i:07d}\\n')\n"
    with JobPool("file", {"max_bytes": "256K"}, state_dir=tmp_path) as pool:
        job = pool.create(sys.executable, ["-c", script])
        pool.wait(job, 30)
        wait_until(lambda: pool.status(job).stdout.closed)
        info = pool.status(job).stdout
        assert info.written == 3_200_000
        assert info.dropped % 4096 == 0
        assert 256 * 1024 - 4096 < info.written - info.dropped <= 256 * 1024
        kept = pool.read(job, "stdout")
        assert len(kept) == info.written - info.dropped
        # Every kept byte sits at its absolute offset: line n starts at 8 * n.
        first = -(-info.dropped // 8)
        lines = kept[first * 8 - info.dropped :].splitlines()
        assert lines[0] == f"{first:07d}".encode() and lines[-1] == b"0399999"
        on_disk = (tmp_path / "output" / f"{job}.stdout").stat().st_blocks * 512
        assert on_disk <= 256 * 1024 + 4096  # the dropped bytes' space was freed
        # A follower behind the kept window resumes at the first kept byte.
        follower = pool.follow(job, "stdout", 0)
        assert b"".join(follower) == kept and follower.offset == info.written
    with JobPool(state_dir=tmp_path) as pool:  # the file alone says what it holds
        again = pool.status(job).stdout
        assert (again.written, again.dropped) == (info.written, info.dropped)
        assert b"".join(pool.follow(job, "stdout")) == kept


def test_a_live_follower_of_a_capped_file_never_sees_a_punched_byte(tmp_path: Path) -> None:
    # The writer outruns the follower, so holes are punched under its feet:
    # every chunk it gets must still be the bytes written at those offsets.
    script = "import sys\nfor i in range(1500000): sys.stdout.write(f'{i:07d}\\n')\n"
    with JobPool("file", {"max_bytes": "64K"}, state_dir=tmp_path) as pool:
        job = pool.create(sys.executable, ["-c", script])
        follower = pool.follow(job, "stdout")
        # Fall behind for sure: wait until the first bytes are gone from the file.
        wait_until(lambda: pool.status(job).stdout.dropped > 0, what="the first hole")
        got = 0
        for chunk in follower:
            start = follower.offset - len(chunk)
            first = -(-start // 8)  # the first whole line in the chunk
            body = chunk[first * 8 - start :]
            for n, line in enumerate(body[: len(body) - len(body) % 8].split(b"\n")[:-1]):
                assert line == f"{first + n:07d}".encode(), (start, n)
            got += len(chunk)
        assert follower.offset == 12_000_000
        assert 0 < got < 12_000_000, got  # it was told and skipped ahead


def _read_all_into(follower: Follower, size: int) -> list[tuple[int, bytes]]:
    """Every chunk `Follower.read_into` gives, with its offset, waiting with `when_ready`."""
    buffer = memoryview(bytearray(size))
    ready = threading.Event()
    chunks = []
    while True:
        count = follower.read_into(buffer)
        if count is None:
            return chunks
        if count:
            chunks.append((follower.offset - count, bytes(buffer[:count])))
            continue
        ready.clear()
        follower.when_ready(ready.set)
        assert ready.wait(30), "no bytes, and no end, for 30 s"


def test_read_into_gives_what_read_gives(pool: JobPool) -> None:
    text = b"".join(b"line %05d\n" % i for i in range(30000))
    script = "import sys\nfor i in range(30000): sys.stdout.write(f'line {i:05d}\\n')\n"
    job = pool.create(sys.executable, ["-c", script])
    chunks = _read_all_into(pool.follow(job, "stdout", 7), 4093)  # a size no write lines up with
    pool.wait(job, 30)
    kept = pool.read(job, "stdout", 7)
    if pool.backend == "ring":  # the tail it kept, each chunk at its own offset
        assert all(text[start : start + len(data)] == data for start, data in chunks)
        assert chunks[-1][0] + len(chunks[-1][1]) == len(text)
    else:
        assert b"".join(data for _, data in chunks) == kept == text[7:]
        # Each chunk starts where the last ended, from offset 7 (a read of a
        # live job may give less than the buffer holds: what is written yet).
        starts = [start for start, _ in chunks]
        assert starts == [7] + [start + len(data) for start, data in chunks[:-1]]


@pytest.mark.parametrize("options", [("file", {"max_bytes": "64K"}), ("ring", {"capacity": 65536})],
                         ids=["capped file", "ring"])
def test_read_into_a_store_that_drops_gives_each_byte_at_its_offset(
    options: tuple[str, dict[str, object]], tmp_path: Path
) -> None:
    # As test_a_live_follower_of_a_capped_file_never_sees_a_punched_byte, with
    # one reused buffer (the server's large writes).
    script = "import sys\nfor i in range(1500000): sys.stdout.write(f'{i:07d}\\n')\n"
    backend, backend_options = options
    with JobPool(backend, backend_options, state_dir=tmp_path) as pool:
        job = pool.create(sys.executable, ["-c", script])
        follower = pool.follow(job, "stdout")
        wait_until(lambda: pool.status(job).stdout.dropped > 0, what="the first bytes dropped")
        got = 0
        for start, chunk in _read_all_into(follower, 1 << 20):
            first = -(-start // 8)
            body = chunk[first * 8 - start :]
            for n, line in enumerate(body[: len(body) - len(body) % 8].split(b"\n")[:-1]):
                assert line == f"{first + n:07d}".encode(), (start, n)
            got += len(chunk)
        assert follower.offset == 12_000_000
        assert 0 < got < 12_000_000, got
