"""JobPool(on_finished=...): one call per job with its final status, however it ended."""

from __future__ import annotations

import threading
from pathlib import Path

from jobkit import JobPool, JobStatus, State
from tests.support.waiting import wait_until


def test_on_finished_is_called_once_per_job_with_its_final_status(tmp_path: Path) -> None:
    seen: list[JobStatus] = []
    lock = threading.Lock()

    def finished(status: JobStatus) -> None:
        with lock:
            seen.append(status)

    def states() -> dict[str, tuple[State, int | None]]:
        with lock:
            return {s.id: (s.state, s.exit_code) for s in seen}

    with JobPool(state_dir=tmp_path / "state", on_finished=finished) as pool:
        done = pool.create("sh", ["-c", "exit 3"])
        failed = pool.create("/no/such/program")
        deleted = pool.create("sleep", ["1000"])
        closed = pool.create("sleep", ["1000"])
        pool.wait(done)
        pool.delete(deleted)
        wait_until(lambda: {done, failed, deleted} <= set(states()), what="three ends")
        assert closed not in states()
    assert states()[done] == (State.COMPLETED, 3)
    assert states()[failed][0] is State.ERROR
    assert states()[deleted][0] is State.KILLED
    assert states()[closed][0] is State.KILLED  # killed by the close
    assert len(seen) == 4


def test_a_failing_callback_is_logged_and_the_job_still_ends(tmp_path: Path) -> None:
    def broken(status: JobStatus) -> None:
        raise RuntimeError("boom")

    with JobPool(on_finished=broken) as pool:
        job = pool.create("true")
        assert pool.wait(job, timeout=10).state is State.COMPLETED
