"""The server's Prometheus metrics (``prometheus_client``), and their own HTTP listener.

Names follow Prometheus's conventions: the ``jobkit_`` prefix, base units
(seconds, bytes) in the name, ``_total`` on counters.  No label ever holds a
job id, a path or anything a client chooses: every label has a small, fixed
set of values (a route *template*, a state, a stream, an HTTP status, an
OpenSSL reason).  A ``client`` label (the CN) is added to the per-job
counters only when asked (``per_client``, ``jobkit serve
--metrics-per-client``), for a known, small set of clients.

Each server has its own registry (two servers in one process, as in the
tests, never mix their counts), with ``prometheus_client``'s process
collector (CPU seconds, memory, open descriptors: ``process_*``).

Served two ways: ``GET /metrics`` on the mTLS listener, to ``--admin`` CNs;
and, with ``--metrics-listen HOST:PORT``, on a plain-HTTP listener of its
own (`MetricsListener`), meant for loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from jobkit.core.models import JobStatus

__all__ = ["DEFAULT_METRICS_PORT", "HTTP_METHODS", "MetricsListener", "ServerMetrics"]

log = logging.getLogger("jobkit.server")

#: The port the docs suggest for ``--metrics-listen`` (Prometheus's exporter
#: registry has none for jobkit; 9464 is the OpenTelemetry exporter's).
DEFAULT_METRICS_PORT = 9464
#: HTTP methods counted by name; anything else a client sends is ``other``.
HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})
#: The route label of a request no route matched (unknown path, refused before routing).
UNMATCHED = "unmatched"

_SPAWN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    """Every metric one server keeps, in its own registry.

    Args:
        per_client: Add a ``client`` label (the CN) to the per-job counters.
    """

    def __init__(self, *, per_client: bool = False) -> None:
        self.per_client = per_client
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        registry = self.registry
        client: tuple[str, ...] = ("client",) if per_client else ()
        self.jobs_started = Counter(
            "jobkit_jobs_started", "Jobs created (those that could not start included).",
            client, registry=registry)
        self.jobs_finished = Counter(
            "jobkit_jobs_finished", "Jobs that ended, by final state.",
            (*client, "state"), registry=registry)
        self.jobs_running = Gauge(
            "jobkit_jobs_running", "Jobs running now.", registry=registry)
        self.spawn_seconds = Histogram(
            "jobkit_job_spawn_seconds",
            "Time to create a job: from the request's checks to its process started.",
            buckets=_SPAWN_BUCKETS, registry=registry)
        self.output_stored = Counter(
            "jobkit_output_stored_bytes",
            "Output bytes kept by finished jobs' backends, by stream.",
            (*client, "stream"), registry=registry)
        self.output_dropped = Counter(
            "jobkit_output_dropped_bytes",
            "Output bytes finished jobs' backends dropped (a ring, a capped stream), by stream.",
            (*client, "stream"), registry=registry)
        self.follow_streams = Gauge(
            "jobkit_follow_streams", "Follow streams open now.", registry=registry)
        self.http_requests = Counter(
            "jobkit_http_requests", "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"), registry=registry)
        self.http_seconds = Histogram(
            "jobkit_http_request_duration_seconds",
            "Time from a request's start to its response's last byte (a follow stream's "
            "whole length), by method and route template.",
            ("method", "route"), registry=registry)
        self.handshakes_refused = Counter(
            "jobkit_tls_handshakes_refused",
            "Connections refused at the TLS handshake, or for their certificate's CN, "
            "by reason.", ("reason",), registry=registry)
        self.quota_refusals = Counter(
            "jobkit_quota_refusals",
            "Requests refused for a per-client quota (429), by quota.",
            (*client, "quota"), registry=registry)
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # `labels` takes a lock and checks every label on each call; the per-job
        # counters' children are kept here (states and streams are few, and a
        # CN is a key only with per_client, whose clients are known and few).
        self._children: dict[tuple[int, str, str], Any] = {}
        self.certificate_reloads = Counter(
            "jobkit_certificate_reloads", "Reloads of the certificates and CRL, by result.",
            ("result",), registry=registry)

    def _labels(self, metric: Any, client: str, **labels: str) -> Any:
        if self.per_client:
            labels["client"] = client
        return metric.labels(**labels) if labels else metric

    def _child(self, metric: Any, client: str, label: str, value: str) -> Any:
        """``_labels(metric, client, label=value)``, kept: every job's end asks for it."""
        key = (id(metric), client if self.per_client else "", value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._labels(metric, client, **{label: value})
        return child

    def count_follow_streams(self, count: Callable[[], int]) -> None:
        """Read the open follow streams from ``count`` at each scrape."""
        self.follow_streams.set_function(count)

    def job_started(self, client: str, seconds: float) -> None:
        """A job was created in ``seconds``."""
        self._labels(self.jobs_started, client).inc()
        self.jobs_running.inc()
        self.spawn_seconds.observe(seconds)

    def job_finished(self, client: str, status: JobStatus) -> None:
        """A job ended (`JobPool`'s ``on_finished``)."""
        self._child(self.jobs_finished, client, "state", status.state.value).inc()
        self.jobs_running.dec()
        for stream, info in (("stdout", status.stdout), ("stderr", status.stderr)):
            if info.written > info.dropped:
                self._child(self.output_stored, client, "stream", stream).inc(
                    info.written - info.dropped)
            if info.dropped:
                self._child(self.output_dropped, client, "stream", stream).inc(info.dropped)

    def quota_refused(self, client: str, quota: str) -> None:
        """A request of ``client`` went over ``quota`` (``live_jobs``, ``output_streams``)."""
        self._labels(self.quota_refusals, client, quota=quota).inc()

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request was answered."""
        children = self._request_children.get((method, route, status))
        if children is None:
            children = self._request_children_for(method, route, status)
        requests, duration = children
        requests.inc()
        duration.observe(seconds)

    def _request_children_for(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        # `labels` looks its child up under a lock and checks every label on
        # each call; the few combinations a server sees are kept here instead
        # (every label value comes from a small fixed set, so this stays small).
        label = method if method in HTTP_METHODS else "other"
        children = (self.http_requests.labels(method=label, route=route, status=str(status)),
                    self.http_seconds.labels(method=label, route=route))
        if method in HTTP_METHODS:  # any other method is one "other": keep it out
            self._request_children[(method, route, status)] = children
        return children

    def handshake_refused(self, reason: str) -> None:
        """A connection was refused at its handshake (or for its CN)."""
        self.handshakes_refused.labels(reason=reason).inc()

    def certificates_reloaded(self, ok: bool) -> None:
        self.certificate_reloads.labels(result="ok" if ok else "failed").inc()

    def exposition(self) -> tuple[bytes, str]:
        """The registry in Prometheus's text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class MetricsListener:
    """``prometheus_client``'s plain-HTTP server for one registry, on its own thread.

    Args:
        metrics: What to serve (every path answers the metrics).
        host, port: Where to listen (port 0: a free one, see `address`).
    """

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, host, registry=metrics.registry)
        self._stopped = threading.Event()
        if not _loopback(host):
            log.warning("the metrics listener on %s:%d is plain HTTP with no authentication, "
                        "and not on a loopback address: anyone who reaches it reads the "
                        "metrics", host, self.address[1])

    @property
    def address(self) -> tuple[str, int]:
        """The address listened on."""
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Stop serving and close the socket (once)."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
