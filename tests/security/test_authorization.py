"""Authorization: a client never reaches another client's job, whatever it puts in the URL.

The matrix: every endpoint of the OpenAPI document, with every method, with
ids that are another client's, shaped like paths (``..%2F3``), padded or
spelled in other digits (``03``, ``%EF%BC%93``, a fullwidth 3), very long (10 kB),
non-ASCII, empty, with NUL, plus ``client=`` query tricks.  The answer is always
a JSON error (400, 403, 404, 405 or 414), never a 2xx or a 5xx, and never holds
the victim's output, name or pid; and the victim's job is untouched: still
running, same pid, same output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobkit.server.openapi import openapi_document
from jobkit.server.serve import JobServer
from tests.support.api import ApiClient, problem_document, raw_tls, read_until_closed
from tests.support.pki import new_client_folder
from tests.support.procs import process_alive
from tests.support.waiting import wait_until

SECRET = "s3cr3t-0f-the-v1ct1m"
METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]
REFUSALS = {400, 403, 404, 405, 414}


class Tenants:
    """The victim, with a running job "3" that wrote a secret; the attacker, with job "1" only."""

    def __init__(self, server: JobServer, pki: Path) -> None:
        victim, folder = new_client_folder(pki, "victim")
        self.victim = ApiClient(server.address, folder, victim)
        attacker, folder = new_client_folder(pki, "attacker")
        self.attacker = ApiClient(server.address, folder, attacker)
        self.victim.create("true")
        self.victim.create("true")
        self.target = self.victim.create(
            "sh", "-c", f"echo {SECRET}; echo {SECRET} >&2; exec sleep 600")
        assert self.target == "3"
        assert self.attacker.create("true") == "1"
        wait_until(lambda: self._written() == (len(SECRET) + 1, len(SECRET) + 1),
                   what="the victim's output")
        self.status = self.victim.status(self.target)
        self.pid = self.status["pid"]
        self.listing = self.victim.get("/jobs").json()

    def _written(self) -> tuple[int, int]:
        status = self.victim.status(self.target)
        return status["stdout"]["written"], status["stderr"]["written"]

    def assert_victim_untouched(self) -> None:
        assert self.victim.status(self.target) == self.status
        assert process_alive(self.pid)
        assert self.victim.get(f"/jobs/{self.target}/output").json() == {
            "stdout": f"{SECRET}\n", "stderr": f"{SECRET}\n"}
        assert self.victim.get("/jobs").json() == self.listing

    def leaks(self, body: bytes) -> list[str]:
        text = body.decode("utf-8", "replace")
        return [word for word in (SECRET, self.victim.name, f'"pid":{self.pid}') if word in text]

    def close(self) -> None:
        self.victim.close()
        self.attacker.close()


@pytest.fixture(scope="module")
def tenants(server: JobServer, pki: Path) -> Iterator[Tenants]:
    tenants = Tenants(server, pki)
    yield tenants
    tenants.victim.request("DELETE", f"/jobs/{tenants.target}")
    tenants.close()


def id_paths() -> list[str]:
    """Every path of the OpenAPI document that takes a job id, with ``{id}`` in it."""
    paths = [path for path in openapi_document()["paths"] if "{id}" in path]
    # If the API grows an endpoint, this matrix must grow with it.
    assert sorted(paths) == sorted([
        "/jobs/{id}", "/jobs/{id}/status", "/jobs/{id}/output", "/jobs/{id}/stdout",
        "/jobs/{id}/stderr", "/jobs/{id}/stop",
    ]), paths
    return paths


def body_for(method: str, path: str) -> bytes | None:
    if method == "PUT":
        return json.dumps({"cmd": "true"}).encode()
    if method == "POST" and path.endswith("/stop"):
        return json.dumps({"signal": "KILL"}).encode()
    return None


def ask(client: ApiClient, method: str, path: str, body: bytes | None) -> Any:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return client.request(method, path, body=body, headers=headers)


def assert_refused(tenants: Tenants, response: Any, method: str, path: str) -> None:
    where = f"{method} {path[:120]}"
    assert response.status in REFUSALS, (where, response)
    assert not tenants.leaks(response.body), (where, response)
    if method != "HEAD":
        problem_document(response.status, response.headers["Content-Type"], response.body)


# Path segments as sent (already percent-encoded): none of them is the attacker's "1".
IDS = {
    "other-clients-id": "3",
    "dotdot-slash-encoded": "..%2F3",
    "dotdot-all-encoded": "%2e%2e%2f3",
    "dotdot-twice": "..%2F..%2Fjobs%2F3",
    "dotdot-alone": "%2e%2e",
    "dot": ".",
    "backslash": "..%5C3",
    "padded": "03",
    "plus": "%2B3",
    "space": "3%20",
    "float": "3.0",
    "negative": "-3",
    "hex": "0x3",
    "fullwidth-digit": "%EF%BC%93",
    "arabic-indic-digit": "%D9%A3",
    "non-ascii": "%C3%A9t%C3%A9",
    "rtl-override": "%E2%80%AE3",
    "invalid-utf8": "%FF%FE",
    "nul": "3%00",
    "nul-alone": "%00",
    "newline": "3%0D%0AX-Injected:%201",
    "long-10kB": "3" * 10_000,
    "long-encoded": "%41" * 3_000,
    "json": "%7B%22id%22%3A%223%22%7D",
    "victim-cn-shaped": "victim-1%2F3",
}


@pytest.mark.parametrize("job_id", list(IDS.values()), ids=list(IDS))
def test_no_endpoint_reaches_another_clients_job(tenants: Tenants, job_id: str) -> None:
    for template in id_paths():
        for method in METHODS:
            path = template.replace("{id}", job_id)
            for query in ("", "?follow=true", "?offset=0&follow=1"):
                if query and not template.endswith(("stdout", "stderr")):
                    continue
                response = ask(tenants.attacker, method, path + query, body_for(method, path))
                assert_refused(tenants, response, method, path + query)
    tenants.assert_victim_untouched()


SHAPES = [
    "/jobs//status",                 # empty id
    "/jobs//",
    "/jobs/1/../3/status",           # traversal that a normalising proxy would resolve
    "/jobs/./3/status",
    "/jobs/%2e%2e/3/status",
    "/jobs/3/status/",
    "/jobs/3/status/..",
    "//jobs/3/status",
    "/jobs/3%2Fstatus",
    "/jobs/3;client=x/status",
    "/./jobs/3/output",
    "/jobs/3/output#fragment",
    "/JOBS/3/status",
    "/jobs/3/STATUS",
]


@pytest.mark.parametrize("path", SHAPES)
def test_paths_that_are_not_single_ids_reach_nothing(tenants: Tenants, path: str) -> None:
    for method in METHODS:
        response = ask(tenants.attacker, method, path, body_for(method, path))
        assert_refused(tenants, response, method, path)
    tenants.assert_victim_untouched()


def test_raw_non_ascii_and_control_bytes_in_the_path(tenants: Tenants) -> None:
    """Bytes http.client would refuse to send: raw UTF-8, latin-1, tab, DEL."""
    for raw_id in [b"\xc3\xa9", b"\xff", b"3\t", b"\x7f3", b"\xd9\xa3"]:
        request = (b"GET /jobs/" + raw_id + b"/status HTTP/1.1\r\nHost: x\r\n"
                   b"Connection: close\r\n\r\n")
        with raw_tls(tenants.attacker.address, tenants.attacker.context) as sock:
            sock.sendall(request)
            reply = read_until_closed(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert status in REFUSALS, (raw_id, reply)
        assert not tenants.leaks(reply), reply
        content_type = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-type:"))
        problem_document(status, content_type, body)
    tenants.assert_victim_untouched()


CLIENT_QUERIES = {
    "named": "client={victim}",
    "named-last": "client={me}&client={victim}",
    "encoded-key": "cl%69ent={victim}",
    "encoded-value": "client=%76{victim_tail}",
    "with-nul": "client={victim}%00",
    "all": "all=true",
    "all-and-named": "all=1&client={victim}",
}


@pytest.mark.parametrize("query", list(CLIENT_QUERIES.values()), ids=list(CLIENT_QUERIES))
def test_naming_the_victim_in_the_query_is_refused(tenants: Tenants, query: str) -> None:
    names_victim = "{victim" in query
    query = query.format(victim=tenants.victim.name, me=tenants.attacker.name,
                         victim_tail=tenants.victim.name[1:])
    for template in ["/jobs", *id_paths()]:
        for method in METHODS:
            path = template.replace("{id}", tenants.target) + "?" + query
            response = ask(tenants.attacker, method, path, body_for(method, path))
            if (method, template, names_victim) == ("PUT", "/jobs", False):
                # all=true means nothing to PUT: the job is the attacker's own.
                assert response.status == 201, response
                job_id = response.json()["id"]
                assert tenants.attacker.get("/jobs").json()["ids"] == ["1", job_id]
                tenants.attacker.request("DELETE", f"/jobs/{job_id}")
                continue
            assert_refused(tenants, response, method, path)
            if names_victim and response.status != 405 and method != "HEAD":
                # Not a 404 that would tell whether the job exists: the name is refused.
                assert response.status in (400, 403), (method, path, response)
    tenants.assert_victim_untouched()


def test_the_attacker_lists_only_its_own_jobs(tenants: Tenants) -> None:
    listing = tenants.attacker.get("/jobs")
    assert listing.status == 200
    assert listing.json()["ids"] == ["1"]
    assert not tenants.leaks(listing.body)
    assert {job["client"] for job in listing.json()["jobs"]} == {tenants.attacker.name}


def test_a_job_body_cannot_name_another_pool(tenants: Tenants) -> None:
    for extra in [{"client": tenants.victim.name}, {"id": "3"}, {"owner": tenants.victim.name}]:
        response = tenants.attacker.request("PUT", "/jobs", {"cmd": "true", **extra})
        assert_refused(tenants, response, "PUT", f"/jobs {extra}")
    assert tenants.attacker.get("/jobs").json()["ids"] == ["1"]
    tenants.assert_victim_untouched()


def test_the_victim_still_owns_its_job(tenants: Tenants) -> None:
    """The control: the same requests from the victim do reach the job."""
    assert tenants.victim.get(f"/jobs/{tenants.target}/stdout").body == f"{SECRET}\n".encode()
    assert tenants.victim.get(f"/jobs/{tenants.target}/status?client="
                              f"{tenants.victim.name}").status == 200
