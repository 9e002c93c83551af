"""The live-job limit counts running jobs only: an ended job lets its place go as the
pool reports its end, so a PUT does not read statuses to find out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.tenants import Tenant
from tests.support.servers import running_server
from tests.support.waiting import wait_until


def test_ended_jobs_free_their_place_without_a_status_read(
    pki: Path, make_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    running = Tenant._running

    def counted_read(tenant: Tenant, job_id: str) -> bool:
        read.append(job_id)
        return running(tenant, job_id)

    monkeypatch.setattr(Tenant, "_running", counted_read)
    with running_server(pki, max_jobs=3, threads=4) as server:
        client = make_client(target=server)

        def none_running() -> bool:
            return server.metrics.registry.get_sample_value("jobkit_jobs_running") == 0

        for _ in range(3):  # each round fills the limit with jobs that end
            for job_id in [client.create("true") for _ in range(3)]:
                assert client.wait(job_id)["status"] == "completed"
            wait_until(none_running, what="every job's end reported")
        assert read == []  # never at the limit with ended jobs counted
        # Running jobs still count: the limit holds.
        for _ in range(3):
            client.create("sleep", "30")
        response = client.request("PUT", "/jobs", {"cmd": "true"})
        assert response.status == 429, response
