"""Prometheus metrics: scraped from a real server, counters moving by exactly what was done."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobkit.server.serve import JobServer
from jobkit.server.tenants import StoragePolicy
from tests.support.api import ApiClient
from tests.support.servers import running_server
from tests.support.waiting import wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def server(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JobServer]:
    state = tmp_path_factory.mktemp("metrics") / "state"
    with running_server(pki, threads=8, state_dir=state, max_jobs=2,
                        metrics_listen=("127.0.0.1", 0),
                        storage=StoragePolicy(max_output=64 * 1024)) as running:
        yield running


def scrape(server: JobServer) -> Samples:
    assert server.metrics_address is not None
    host, port = server.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def test_the_listener_is_plain_http_on_the_address_asked(server: JobServer) -> None:
    assert server.metrics_address is not None
    assert server.metrics_address[0] == "127.0.0.1"
    assert server.config["metrics_listen"] == "{}:{}".format(*server.metrics_address)
    samples = scrape(server)
    # prometheus_client's process collector: CPU, memory, descriptors.
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert ("process_cpu_seconds_total", frozenset()) in samples


def test_jobs_started_finished_and_running(server: JobServer, client: ApiClient) -> None:
    before = scrape(server)
    done = [client.create("true"), client.create("sh", "-c", "exit 3")]
    for job in done:
        client.wait(job)
    running = client.create("sleep", "1000")
    wait_until(lambda: value(scrape(server), "jobkit_jobs_finished_total", state="completed")
               == value(before, "jobkit_jobs_finished_total", state="completed") + 2,
               what="two finished jobs counted")
    after = scrape(server)
    assert value(after, "jobkit_jobs_started_total") == value(
        before, "jobkit_jobs_started_total") + 3
    assert value(after, "jobkit_jobs_running") == value(before, "jobkit_jobs_running") + 1
    assert value(after, "jobkit_job_spawn_seconds_count") == value(
        before, "jobkit_job_spawn_seconds_count") + 3
    assert client.request("DELETE", f"/jobs/{running}").status == 200
    wait_until(lambda: value(scrape(server), "jobkit_jobs_running")
               == value(before, "jobkit_jobs_running"), what="the running gauge back")
    final = scrape(server)
    assert value(final, "jobkit_jobs_finished_total", state="killed") == value(
        before, "jobkit_jobs_finished_total", state="killed") + 1


def test_output_bytes_stored_and_dropped(server: JobServer, client: ApiClient) -> None:
    before = scrape(server)
    small = client.create("sh", "-c", "printf hello; printf oops >&2")
    big = client.create("head", "-c", "300000", "/dev/zero")  # over the 64 KiB cap
    for job in (small, big):
        client.wait(job)
    statuses = [client.status(job) for job in (small, big)]
    wait_until(lambda: value(scrape(server), "jobkit_jobs_finished_total", state="completed")
               == value(before, "jobkit_jobs_finished_total", state="completed") + 2,
               what="both jobs counted")
    after = scrape(server)

    def moved(name: str, stream: str) -> float:
        return value(after, name, stream=stream) - value(before, name, stream=stream)

    stdout_kept = sum(s["stdout"]["written"] - s["stdout"]["dropped"] for s in statuses)
    stdout_dropped = sum(s["stdout"]["dropped"] for s in statuses)
    assert stdout_dropped > 0
    assert moved("jobkit_output_stored_bytes_total", "stdout") == stdout_kept
    assert moved("jobkit_output_dropped_bytes_total", "stdout") == stdout_dropped
    assert stdout_kept + stdout_dropped == 5 + 300000
    assert moved("jobkit_output_stored_bytes_total", "stderr") == 4
    assert moved("jobkit_output_dropped_bytes_total", "stderr") == 0


def test_follow_streams_and_quota_refusals(server: JobServer, client: ApiClient) -> None:
    before = scrape(server)
    job = client.create("sleep", "1000")
    follow = client.connect()
    follow.request("GET", f"/jobs/{job}/stdout?follow=true")
    response = follow.getresponse()
    assert response.status == 200
    wait_until(lambda: value(scrape(server), "jobkit_follow_streams")
               == value(before, "jobkit_follow_streams") + 1, what="the follow counted")
    client.create("sleep", "1000")
    refused = client.request("PUT", "/jobs", {"cmd": "true"})  # a third live job: max_jobs 2
    assert refused.status == 429
    assert value(scrape(server), "jobkit_quota_refusals_total", quota="live_jobs") == value(
        before, "jobkit_quota_refusals_total", quota="live_jobs") + 1
    client.request("DELETE", f"/jobs/{job}")  # ends the follow stream
    response.read()
    follow.close()
    wait_until(lambda: value(scrape(server), "jobkit_follow_streams")
               == value(before, "jobkit_follow_streams"), what="the follow gone")


def test_http_requests_by_route_template_and_status(server: JobServer,
                                                    client: ApiClient) -> None:
    before = scrape(server)
    for job_id in ("404404", "505505", "../x"):
        assert client.get(f"/jobs/{job_id}/status").status == 404
    assert client.get("/nowhere").status == 404
    labels = {"method": "GET", "route": "/jobs/<job_id>/status", "status": "404"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}

    def moved(samples: Samples, which: dict[str, str]) -> float:
        return (value(samples, "jobkit_http_requests_total", **which)
                - value(before, "jobkit_http_requests_total", **which))

    # A request is counted once its answer was sent: the count may trail the client a little.
    wait_until(lambda: moved(scrape(server), unmatched) >= 2, what="the requests counted")
    after = scrape(server)
    assert moved(after, labels) == 2  # "../x" is no route
    assert moved(after, unmatched) == 2
    timing = {"method": "GET", "route": "/jobs/<job_id>/status"}
    assert value(after, "jobkit_http_request_duration_seconds_count", **timing) >= value(
        before, "jobkit_http_request_duration_seconds_count", **timing) + 2
    # No label holds an id or a path a client chose.
    assert not [key for key in after if any("404404" in v or "nowhere" in v for _, v in key[1])]


def test_refused_handshakes_by_reason(server: JobServer, pki: Path) -> None:
    reason = "peer did not return a certificate"
    before = value(scrape(server), "jobkit_tls_handshakes_refused_total", reason=reason)
    context = ssl.create_default_context(cafile=str(pki / "server" / "ca.pem"))  # no cert
    with socket.create_connection(server.address, timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls, \
            pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls.recv(1)
    wait_until(lambda: value(scrape(server), "jobkit_tls_handshakes_refused_total",
                             reason=reason) == before + 1, what="the refusal counted")


def test_admins_read_the_metrics_over_mutual_tls(server: JobServer, admin: ApiClient,
                                                 client: ApiClient) -> None:
    response = admin.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert ("jobkit_jobs_running", frozenset()) in parse(response.body.decode())
    assert client.get("/metrics").status == 403


def test_a_label_per_client_only_when_asked(pki: Path, tmp_path: Path) -> None:
    with running_server(pki, threads=4, state_dir=tmp_path / "state",
                        metrics_per_client=True) as server:
        api = ApiClient(server.address, pki / "clients" / "bob", "bob")
        api.wait(api.create("true"))
        api.close()
        wait_until(lambda: value(parse(server.metrics.exposition()[0].decode()),
                                 "jobkit_jobs_finished_total", client="bob",
                                 state="completed") == 1, what="bob's job counted")
        assert server.metrics_address is None
