"""How a job without limits is started (jobkit.core.spawn's posix_spawn path).

Each test checks the fast path actually ran, so that none of them passes
on the ``Popen`` path alone.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit import JobPool, State
from jobkit.core import spawn
from tests.support.procs import children, open_fds


@pytest.fixture
def fast_pids(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int | None]]:
    """What each call of the posix_spawn path returned (None: it fell back to Popen)."""
    fast = spawn._fast
    if fast is None:
        pytest.skip("no glibc posix_spawn with closefrom and chdir here")
    results: list[int | None] = []
    original = fast.spawn

    def recorded(*args: Any) -> int | None:
        results.append(original(*args))
        return results[-1]

    monkeypatch.setattr(fast, "spawn", recorded)
    yield results


def _run(pool: JobPool, command: str, args: list[str], **kwargs: Any) -> tuple[str, str]:
    job = pool.create(command, args, **kwargs)
    status = pool.wait(job, timeout=10)
    assert status.state is State.COMPLETED, status
    out = pool.output(job)
    return out.stdout.decode(), out.stderr.decode()


def test_a_job_inherits_no_descriptor_even_one_left_inheritable(
    fast_pids: list[int | None],
) -> None:
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # what close_fds=True protects against
    try:
        with JobPool() as pool:
            out, _ = _run(pool, "sh", ["-c", "ls /proc/$$/fd"])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert out.split() == ["0", "1", "2"]
    assert fast_pids and all(fast_pids)


def test_signal_dispositions_session_and_stdin_are_those_of_popen(
    fast_pids: list[int | None],
) -> None:
    script = "grep -E '^Sig(Blk|Ign)' /proc/self/status; ps -o pid=,pgid=,sid= -p $$; cat"
    with JobPool() as pool:
        out, _ = _run(pool, "sh", ["-c", script])
    popen = subprocess.run(["sh", "-c", script], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, start_new_session=True, check=True)
    ours, theirs = out.splitlines(), popen.stdout.splitlines()
    assert ours[:2] == theirs[:2]  # nothing ignored nor blocked that Popen resets
    pid, pgid, sid = ours[2].split()
    assert pid == pgid == sid  # a session and group of its own
    assert len(ours) == 3  # stdin is /dev/null: cat read nothing
    assert fast_pids and all(fast_pids)


def test_cwd_env_and_the_jobs_own_path(tmp_path: Path, fast_pids: list[int | None]) -> None:
    # The first match in the job's PATH is not executable: like execvpe,
    # the search goes on to the next one.
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "tool").write_text("#!/bin/sh\necho wrong\n")
    (tmp_path / "second").mkdir()
    tool = tmp_path / "second" / "tool"
    tool.write_text("#!/bin/sh\necho \"$GREETING from $(pwd)\"\n")
    tool.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    path = f"{tmp_path / 'first'}:{tmp_path / 'second'}:/usr/bin:/bin"
    with JobPool() as pool:
        out, _ = _run(pool, "tool", [], env={"PATH": path, "GREETING": "hi"}, cwd=str(work))
    assert out == f"hi from {work}\n"
    assert fast_pids and all(fast_pids)


def test_start_failures_fall_back_and_say_what_popen_says(
    tmp_path: Path, fast_pids: list[int | None],
) -> None:
    before = (sorted(children()), open_fds())
    with JobPool() as pool:
        bad_cwd = pool.wait(pool.create("true", cwd=str(tmp_path / "nowhere")), 10)
        missing = pool.wait(pool.create(str(tmp_path / "missing")), 10)
        unknown = pool.wait(pool.create("no-such-command-for-jobkit"), 10)
    assert bad_cwd.state is State.ERROR and bad_cwd.error is not None
    assert bad_cwd.error.startswith("cannot use working directory")
    assert missing.state is State.ERROR and missing.error is not None
    assert missing.error.startswith("no such file")
    assert unknown.state is State.ERROR
    assert unknown.error == "command not found: 'no-such-command-for-jobkit' (not in PATH)"
    # Each was tried on the fast path first, and nothing of them was left:
    # no child (glibc reaps one whose exec failed), no descriptor.
    assert fast_pids == [None, None, None]
    assert (sorted(children()), open_fds()) == before


def test_the_path_searched_is_the_one_popen_would_search(
    tmp_path: Path, fast_pids: list[int | None], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for folder, word in (("ours", "right"), ("c-level", "wrong")):
        (tmp_path / folder).mkdir()
        tool = tmp_path / folder / "tool"
        tool.write_text(f"#!/bin/sh\necho {word}\n")
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'ours'}:/usr/bin:/bin")
    # os.putenv changes what glibc's posix_spawnp would search, not os.environ.
    os.putenv("PATH", f"{tmp_path / 'c-level'}:/usr/bin:/bin")
    try:
        with JobPool() as pool:
            out, _ = _run(pool, "tool", [])
    finally:
        os.putenv("PATH", os.environ["PATH"])
    assert out == "right\n"
    assert fast_pids and all(fast_pids)
