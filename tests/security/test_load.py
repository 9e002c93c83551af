"""Load: 32 clients with different CNs create, follow, poll, read and delete jobs at once.

The server is a real ``jobkit serve`` (default settings: 64 threads, so 32
follow streams at once) in a subprocess, so that its own threads, descriptors
and children can be read from ``/proc``.  Every byte each job wrote is checked
by SHA-256 as received through the follow stream, the raw streams and
``/output`` (see `tests.support.load`).  Afterwards: zero errors, no process
left under the server, and its descriptors and threads back to their baseline.

The figures are printed (``pytest -s`` shows them); docs/security.md has the
last run's.  The fast tier runs for `FAST_SECONDS`, the slow tier
(``pytest -m slow``) for `SLOW_SECONDS`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jobkit.core import cgroups
from tests.support.api import ApiClient
from tests.support.load import report, run_load
from tests.support.pki import new_client_folder
from tests.support.processes import ServerProcess, server_process
from tests.support.procs import descendants, fd_count, task_count
from tests.support.waiting import wait_until

CLIENTS = 32
FAST_SECONDS = 4.0
SLOW_SECONDS = 60.0


def warm_up(served: ServerProcess, identities: list[tuple[str, Path]]) -> None:
    """One job per client through the server first, so that what it starts once (the
    supervisor thread, its worker threads, each client's pool and database) is in the
    baseline: the descriptors a client's pool holds grow with clients, not with jobs."""
    for name, folder in identities:
        client = ApiClient(served.address, folder, name)
        job_id = client.create("true")
        client.wait(job_id)
        assert client.request("DELETE", f"/jobs/{job_id}").status == 200
        client.close()


def job_cgroups(pid: int) -> list[Path]:
    """The job cgroups that server ``pid`` has now (``.../jobkit-<pid>/job-*``)."""
    tree = cgroups.detect()
    if tree is None:  # none here; then the server makes none either
        return []
    return sorted((tree.base.parent / f"jobkit-{pid}").glob("job-*"))


def run_and_check(pki: Path, seconds: float) -> None:
    identities = [new_client_folder(pki, "load") for _ in range(CLIENTS)]
    with server_process(pki) as served:
        warm_up(served, identities)
        wait_until(lambda: not descendants(served.pid), what="the warm-up job to be reaped")
        baseline = {"fds": fd_count(served.pid), "threads": task_count(served.pid)}
        peak = {**baseline, "children": 0, "cgroups": 0}

        def sample() -> None:
            peak["fds"] = max(peak["fds"], fd_count(served.pid))
            peak["threads"] = max(peak["threads"], task_count(served.pid))
            peak["children"] = max(peak["children"], len(descendants(served.pid)))
            peak["cgroups"] = max(peak["cgroups"], len(job_cgroups(served.pid)))

        figures = run_load(served.address, identities, seconds, sample=sample)
        after: dict[str, object] = {}
        try:
            wait_until(lambda: not descendants(served.pid), timeout=30,
                       what="every job process to be gone")
            wait_until(lambda: fd_count(served.pid) <= baseline["fds"], timeout=30,
                       what=f"the server's descriptors back to {baseline['fds']}")
            wait_until(lambda: task_count(served.pid) <= baseline["threads"], timeout=30,
                       what=f"the server's threads back to {baseline['threads']}")
        finally:
            after = {"fds": fd_count(served.pid), "threads": task_count(served.pid),
                     "children": len(descendants(served.pid))}
            print()
            print(report(figures, {"baseline": baseline, "peak": peak, "after": after}))
        assert served.alive()
        # Groups left are spares kept for reuse: empty, and no more than the
        # tree keeps (they do not grow with the number of jobs).
        kept = job_cgroups(served.pid)
        assert [group for group in kept if (group / "cgroup.procs").read_text().strip()] == []
        assert len(kept) <= cgroups.CgroupTree.MAX_SPARES
        assert not figures.errors, report(figures)
        assert figures.jobs >= CLIENTS, report(figures)


def test_32_clients_for_a_few_seconds(pki: Path) -> None:
    run_and_check(pki, FAST_SECONDS)


@pytest.mark.slow
def test_32_clients_for_a_minute(pki: Path) -> None:
    run_and_check(pki, SLOW_SECONDS)
