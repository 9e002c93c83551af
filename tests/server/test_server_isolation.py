"""Per-client isolation: another client's job is exactly a job that never existed.

The matrix: for every endpoint, client B acting on client A's job gets the very
answer a client with no jobs at all gets (404, same body), and A's job is untouched.
Admins (``--admin``) address other clients' jobs with ``?client=CN``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit.pki import issue_client
from jobkit.server.serve import JobServer
from jobkit.wire import PROBLEM_MEDIA_TYPE, ProblemKind, problem_json
from tests.support.api import ApiClient
from tests.support.procs import process_alive
from tests.support.waiting import wait_until

# (method, path, JSON body) with {id} for the job id.
ENDPOINTS = [
    ("GET", "/jobs/{id}/status", None),
    ("GET", "/jobs/{id}/output", None),
    ("GET", "/jobs/{id}/stdout", None),
    ("GET", "/jobs/{id}/stderr", None),
    ("GET", "/jobs/{id}/stdout?offset=2", None),
    ("GET", "/jobs/{id}/stdout?follow=true", None),
    ("GET", "/jobs/{id}/stderr?offset=0&follow=1", None),
    ("POST", "/jobs/{id}/stop", None),
    ("POST", "/jobs/{id}/stop", {"signal": "KILL"}),
    ("DELETE", "/jobs/{id}", None),
]


_counter = itertools.count()


class Tenants:
    """A with a running job that has output; B with a job of its own; C with none."""

    def __init__(self, server: JobServer, pki: Path, prefix: str) -> None:
        def client(name: str) -> ApiClient:
            issue_client(pki, name)
            return ApiClient(server.address, pki / "clients" / name, name)

        self.a, self.b, self.c = (client(f"{prefix}-{x}") for x in "abc")
        self.a.create("true")
        self.a.create("true")
        self.target = self.a.create("sh", "-c", "echo secret; echo secret >&2; exec sleep 600")
        self.b.create("true")  # B has a pool (and a job "1"), but no job "3"
        assert self.target == "3"
        wait_until(lambda: self.a.status(self.target)["stdout"]["written"] == 7
                   and self.a.status(self.target)["stderr"]["written"] == 7,
                   what="the target's output")
        self.pid = self.a.status(self.target)["pid"]
        self.a_listing = self.a.get("/jobs").json()

    def assert_target_untouched(self) -> None:
        status = self.a.status(self.target)
        assert status["status"] == "running" and status["pid"] == self.pid
        assert process_alive(self.pid)
        assert self.a.get(f"/jobs/{self.target}/output").json() == {
            "stdout": "secret\n", "stderr": "secret\n"}
        listing = self.a.get("/jobs").json()
        assert listing["ids"] == self.a_listing["ids"]

    def close(self) -> None:
        for client in (self.a, self.b, self.c):
            client.close()


@pytest.fixture(scope="module")
def tenants(server: JobServer, pki: Path) -> Iterator[Tenants]:
    tenants = Tenants(server, pki, "iso")
    yield tenants
    tenants.close()


def no_such_job(job_id: str) -> dict[str, Any]:
    """The answer for a job this client does not have, whether it exists or not."""
    return problem_json(ProblemKind.NO_SUCH_JOB, f"no such job: {job_id!r}", job_id=job_id)


def _ask(client: ApiClient, method: str, path: str, body: object) -> tuple[int, str, Any]:
    response = client.request(method, path, body)
    return response.status, response.headers["Content-Type"], response.json()


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS,
                         ids=[f"{m} {p}{'+body' if b else ''}" for m, p, b in ENDPOINTS])
def test_another_clients_job_is_a_job_that_never_existed(
    tenants: Tenants, method: str, path: str, body: object
) -> None:
    target = path.format(id=tenants.target)
    from_b = _ask(tenants.b, method, target, body)
    from_c = _ask(tenants.c, method, target, body)  # C has no pool at all
    assert from_b == from_c == (404, PROBLEM_MEDIA_TYPE, no_such_job("3"))
    # ... and an id that exists nowhere looks the same to B.
    assert _ask(tenants.b, method, path.format(id="3000"), body) == (
        404, PROBLEM_MEDIA_TYPE, no_such_job("3000"))
    tenants.assert_target_untouched()


def test_other_clients_jobs_are_not_listed(tenants: Tenants) -> None:
    assert tenants.b.get("/jobs").json()["ids"] == ["1"]
    assert tenants.c.get("/jobs").json() == {"ids": [], "jobs": [], "next": None}
    assert all(job["client"] == tenants.a.name for job in tenants.a.get("/jobs").json()["jobs"])


def test_clients_number_their_jobs_independently(tenants: Tenants) -> None:
    # B's job "1" and A's job "1" are different jobs.
    assert tenants.b.status("1")["cmd"] == "true"
    assert tenants.a.status("1")["cmd"] == "true"
    tenants.b.request("DELETE", "/jobs/1")
    assert tenants.a.status("1")["id"] == "1"
    tenants.b.create("true")


# -- admins -----------------------------------------------------------------------------


@pytest.fixture
def fresh(server: JobServer, pki: Path) -> Iterator[Tenants]:
    tenants = Tenants(server, pki, f"adm{next(_counter)}")
    yield tenants
    tenants.close()


def test_an_admin_reads_another_clients_job_with_client(admin: ApiClient,
                                                        fresh: Tenants) -> None:
    name, job_id = fresh.a.name, fresh.target
    assert admin.get(f"/jobs/{job_id}/status").status == 404  # without client=: its own pool
    status = admin.status(job_id, f"?client={name}")
    assert status["pid"] == fresh.pid
    output = admin.get(f"/jobs/{job_id}/output?client={name}").json()
    assert output == {"stdout": "secret\n", "stderr": "secret\n"}
    raw = admin.get(f"/jobs/{job_id}/stderr?client={name}&offset=3")
    assert raw.status == 200 and raw.body == b"ret\n"
    listing = admin.get(f"/jobs?client={name}").json()
    assert listing["ids"] == fresh.a_listing["ids"]
    assert {job["client"] for job in listing["jobs"]} == {name}
    fresh.assert_target_untouched()


def test_an_admin_stops_and_deletes_another_clients_job(admin: ApiClient,
                                                        fresh: Tenants) -> None:
    name, job_id = fresh.a.name, fresh.target
    response = admin.request("POST", f"/jobs/{job_id}/stop?client={name}", {"signal": "KILL"})
    assert response.status == 200
    assert fresh.a.wait(job_id)["signal_name"] == "SIGKILL"
    assert admin.request("DELETE", f"/jobs/{job_id}?client={name}").status == 200
    assert fresh.a.get(f"/jobs/{job_id}/status").status == 404


def test_an_admin_lists_everyone_with_all(admin: ApiClient, fresh: Tenants) -> None:
    listing = admin.get("/jobs?all=true").json()
    assert len(listing["ids"]) == len(listing["jobs"])
    pairs = {(job["client"], job["id"]) for job in listing["jobs"]}
    assert {(fresh.a.name, job_id) for job_id in fresh.a_listing["ids"]} <= pairs
    assert (fresh.b.name, "1") in pairs
    assert [job["id"] for job in listing["jobs"]] == listing["ids"]


def test_an_admin_follows_another_clients_job(admin: ApiClient, fresh: Tenants) -> None:
    conn = admin.connect()
    conn.request("GET", f"/jobs/{fresh.target}/stdout?follow=true&client={fresh.a.name}")
    response = conn.getresponse()
    assert response.status == 200
    assert response.read1(100) == b"secret\n"
    conn.close()


def test_an_unknown_client_is_an_empty_pool_to_an_admin(admin: ApiClient) -> None:
    assert admin.get("/jobs?client=nobody-at-all").json() == {"ids": [], "jobs": [], "next": None}
    response = admin.get("/jobs/1/status?client=nobody-at-all")
    assert (response.status, response.json()) == (404, no_such_job("1"))


def test_an_admin_creates_jobs_only_in_its_own_pool(admin: ApiClient, fresh: Tenants) -> None:
    response = admin.request("PUT", f"/jobs?client={fresh.a.name}", {"cmd": "true"})
    assert response.status == 400 and "client" in response.problem()["detail"]
    assert fresh.a.get("/jobs").json()["ids"] == fresh.a_listing["ids"]
