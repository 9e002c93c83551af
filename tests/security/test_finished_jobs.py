"""A finished job costs the server nothing but its record: 5,000 of them hold no process,
no descriptor and no RAM for their output, and one client's pile of finished jobs never
stops another client from starting jobs, even at a descriptor limit of 256."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.support.api import ApiClient
from tests.support.pki import new_client_folder
from tests.support.processes import server_process
from tests.support.procs import descendants, fd_count
from tests.support.waiting import wait_until

FINISHED = 5000


def client_of(address: tuple[str, int], pki: Path, prefix: str) -> ApiClient:
    name, folder = new_client_folder(pki, prefix)
    return ApiClient(address, folder, name)


def create_many(address: tuple[str, int], client: ApiClient, count: int) -> list[str]:
    """``count`` jobs of ``true``, created by four connections of ``client``'s identity."""
    ids: list[str] = []
    lock = threading.Lock()

    def worker(share: int) -> None:
        mine = ApiClient(address, client.folder, client.name)
        made = [mine.create("true") for _ in range(share)]
        mine.close()
        with lock:
            ids.extend(made)

    threads = [threading.Thread(target=worker, args=(count // 4,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return ids


def test_a_thousand_finished_jobs_hold_no_process_or_descriptor(pki: Path) -> None:
    # The default run's variant: no descriptor limit (nothing can run out), so
    # only what finished jobs keep is measured.
    with server_process(pki, "--max-jobs", "0") as served:
        hoarder = client_of(served.address, pki, "hoarder")
        hoarder.wait(hoarder.create("true"))
        wait_until(lambda: not descendants(served.pid), what="the warm-up job to be reaped")
        baseline = fd_count(served.pid)
        ids = create_many(served.address, hoarder, 1000)
        assert len(set(ids)) == 1000
        wait_until(lambda: not descendants(served.pid), timeout=60,
                   what="every job to be reaped: no zombie per finished job")
        # A few for the server's own needs (a log or coverage file), never one per job.
        wait_until(lambda: fd_count(served.pid) <= baseline + 8, timeout=30,
                   what=f"the server's descriptors back near {baseline}")
        hoarder.close()
        other = client_of(served.address, pki, "other")
        assert other.wait(other.create("true"))["exit_code"] == 0
        other.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_five_thousand_finished_jobs_hold_nothing_and_block_no_one(pki: Path) -> None:
    # At 256 descriptors, a zombie and a pidfd per finished job (as jobkit once
    # kept them) would have stopped every client after about 240 jobs.
    with server_process(pki, "--max-jobs", "0", prefix=["prlimit", "--nofile=256:256"]) as served:
        hoarder = client_of(served.address, pki, "hoarder")
        other = client_of(served.address, pki, "other")
        for client in (hoarder, other):  # each client's pool and database in the baseline
            client.wait(client.create("true"))
        wait_until(lambda: not descendants(served.pid), what="the warm-up jobs to be reaped")
        baseline = fd_count(served.pid)

        ids = create_many(served.address, hoarder, FINISHED)
        assert len(set(ids)) == FINISHED
        wait_until(lambda: not descendants(served.pid), timeout=60,
                   what="every job to be reaped: no zombie per finished job")
        wait_until(lambda: fd_count(served.pid) <= baseline, timeout=30,
                   what=f"the server's descriptors back to {baseline}")
        # Every one is on record, finished, with its status served from disk.  (New
        # connections: the server closed the idle keep-alive ones meanwhile.)
        for client in (hoarder, other):
            client.close()
        # (Finished, not all completed: at 256 descriptors, four creators at once
        # may run out while jobs run, and such a job ends in error, as it should.)
        page = hoarder.get("/jobs?limit=1000&order=newest").json()["jobs"]
        assert len(page) == 1000 and all(job["status"] != "running" for job in page)
        assert hoarder.wait(ids[0])["exit_code"] == 0
        # The other client is unaffected: its jobs start and run.
        job_id = other.create("echo", "unaffected")
        assert other.wait(job_id)["exit_code"] == 0
        assert other.get(f"/jobs/{job_id}/stdout").body == b"unaffected\n"
        for client in (hoarder, other):
            client.close()
