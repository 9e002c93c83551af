"""What only a cluster offers: a pool reopened on its ``state_dir`` takes over jobs still running.

And what a cluster out of reach does to the library: a clear error, nothing created.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from jobkit import ExecutorUnavailable, JobPool, State
from tests.support.executors import JOB_WAIT
from tests.support.ray import RayCluster, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.ray

#: A job that writes a line, waits for a file to appear, then writes another.
WAIT_FOR_FLAG = 'echo first; echo oops >&2; while [ ! -e "$1" ]; do sleep 0.05; done; echo second'


def test_a_reopened_pool_reattaches_and_the_output_continues(ray_cluster: RayCluster,
                                                             tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    options = {"address": ray_cluster.address}
    flag = tmp_path / "flag"
    state = tmp_path / "state"
    with JobPool(state_dir=state, executor="ray", executor_options=options,
                 owner="alice") as first:
        job = first.create("sh", ["-c", WAIT_FOR_FLAG, "sh", str(flag)])
        handle = first.status(job).handle
        wait_until(lambda: first.read(job, "stdout") == b"first\n", timeout=JOB_WAIT,
                   what="the first line")
    # The pool is closed; the job runs on, on the cluster.
    ray = JobSubmissionClient(ray_cluster.address)
    info = ray.get_job_info(handle)
    assert str(info.status) == "RUNNING"
    assert info.metadata["jobkit_owner"] == "alice"
    assert info.metadata["jobkit_job"] == job

    with JobPool(state_dir=state, executor="ray", executor_options=options,
                 owner="alice") as second:
        assert second.reattached == (job,)
        assert second.recovered == ()
        assert second.status(job).running
        flag.touch()
        status = second.wait(job, timeout=JOB_WAIT)
        assert (status.state, status.exit_code) == (State.COMPLETED, 0)
        # Every byte once: what the first pool kept, then the rest.
        assert second.output(job).stdout == b"first\nsecond\n"
        assert second.output(job).stderr == b"oops\n"
        assert second.status(job).handle == handle
        next_job = second.create("true")
        assert int(next_job) > int(job)
        second.delete(job)
    wait_until(lambda: _gone(ray, handle), timeout=JOB_WAIT, what="the Ray job deleted")


def test_a_job_whose_handle_was_never_recorded_is_found_again(ray_cluster: RayCluster,
                                                               tmp_path: Path) -> None:
    options = {"address": ray_cluster.address}
    flag = tmp_path / "flag"
    state = tmp_path / "state"
    with JobPool(state_dir=state, executor="ray", executor_options=options) as first:
        job = first.create("sh", ["-c", WAIT_FOR_FLAG, "sh", str(flag)])
        handle = first.status(job).handle
        wait_until(lambda: first.read(job, "stdout") == b"first\n", timeout=JOB_WAIT,
                   what="the first line")
    # As if the pool had died between submitting the job and recording its handle.
    with sqlite3.connect(state / "jobs.db") as db:
        db.execute("UPDATE jobs SET handle = NULL WHERE id = ?", (int(job),))
    with JobPool(state_dir=state, executor="ray", executor_options=options) as second:
        assert second.reattached == (job,)
        assert second.status(job).handle == handle
        flag.touch()
        assert second.wait(job, timeout=JOB_WAIT).state is State.COMPLETED
        assert second.output(job).stdout == b"first\nsecond\n"


def _gone(ray: object, handle: str) -> bool:
    try:
        ray.get_job_info(handle)  # type: ignore[attr-defined]
    except RuntimeError as error:
        return "404" in str(error)
    return False


def test_a_local_pool_marks_a_ray_job_lost_and_leaves_it_running(ray_cluster: RayCluster,
                                                                 tmp_path: Path) -> None:
    options = {"address": ray_cluster.address}
    flag = tmp_path / "flag"
    with JobPool(state_dir=tmp_path / "state", executor="ray", executor_options=options) as pool:
        job = pool.create("sh", ["-c", WAIT_FOR_FLAG, "sh", str(flag)])
        wait_until(lambda: pool.read(job, "stdout") == b"first\n", timeout=JOB_WAIT,
                   what="the first line")
    with JobPool(state_dir=tmp_path / "state") as local:
        assert local.recovered == (job,)
        status = local.status(job)
        assert status.state is State.LOST
        assert status.error is not None and "executor 'ray'" in status.error
    # Left running on the cluster: let it end.
    flag.touch()


def test_a_cluster_out_of_reach_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("ray.job_submission")
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ExecutorUnavailable, match=f"cannot reach the Ray cluster at {address}"):
        JobPool(state_dir=tmp_path / "state", executor="ray",
                executor_options={"address": address})
    # Nothing held: the folder can be opened again at once.
    with JobPool(state_dir=tmp_path / "state") as pool:
        assert pool.list() == []
