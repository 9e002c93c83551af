"""Server benchmarks: every figure next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_server.py [--quick]

1. ``GET /jobs/<id>/status`` of a running job over one keep-alive mutual-TLS
   connection, against a bare cheroot + TLS 1.3 WSGI app returning a constant JSON body
   (cheroot's own ``BuiltinSSLAdapter``, same certificates, same client code), in
   interleaved rounds.  Target >= 0.85x.
2. ``PUT /jobs`` of ``true``: jobs/s over the API, against ``JobPool.create`` called in
   this process, in interleaved rounds, with two pools: the in-memory pool of earlier
   runs, and a pool like each of the server's (a state folder: the ``file`` backend and
   jobs recorded in SQLite).  Target >= 0.8x.  Also against a bare cheroot + TLS 1.3
   WSGI app whose ``PUT`` calls ``JobPool.create`` on a pool like the server's (no
   routing, checks, audit, access log or metrics): what the same HTTP round trip costs
   without jobkit's server, so that its ratio to the library is the most any
   cheroot-based server could reach with this client.
3. Following a job that writes 1 GiB (``head -c 1G /dev/zero``) with ``?follow=true``,
   with the tempfile and ring backends (targets: 1 GB/s, and 300 MB/s of the bytes the
   ring kept), read as a client that knows ``?chunk_offsets=true`` does (so a ring's gap
   does not cost a new request) and through ``jobkit.client``, against a bare TLS 1.3
   server sending the bytes of the same job from its pipe (and from memory, without a
   job: the ceiling of TLS on this machine), in interleaved rounds; each
   server's and the client's CPU seconds per GiB, and the servers' peak RSS (bounded:
   far below the 1 GiB that went through).

Servers run in subprocesses (``jobkit serve`` with its access log on, to a file) so
that client and server do not share a GIL.  On a 2-core machine shared with other work
the client, the server and the job compete for the cores, so figures vary by 20-30%
from run to run: the ratios are of paired rounds, given as the median and the range.
Each server's CPU time per request (from ``/proc/PID/stat``) is printed too: it varies
less than the rates.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from jobkit import JobPool
from jobkit.pki import init_pki

GIB = 1 << 30
PYTHON = sys.executable

#: The end of each bare server's script: serve its ``app`` with cheroot's own TLS
#: adapter (TLS 1.3, client certificates required) from the certificates in ``folder``.
SERVE_APP = textwrap.dedent(
    """
    adapter = BuiltinSSLAdapter(f"{folder}/cert.pem", f"{folder}/key.pem",
                                f"{folder}/ca.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")
    context.load_verify_locations(cafile=f"{folder}/ca.pem")
    adapter.context = context
    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=64, max=64)
    server.ssl_adapter = adapter
    server.prepare()
    print(f"Serving on https://127.0.0.1:{server.bind_addr[1]}", flush=True)
    server.serve()
    """
)

BARE_SERVER = textwrap.dedent(
    """
    import ssl, sys
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    folder = sys.argv[1]
    BODY = b'{"id":"1","status":"running","cmd":"sleep","args":["60"],"pid":1234}'

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(BODY)))])
        return [BODY]

    """
) + SERVE_APP


def client_context(client: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(client / "ca.pem"))
    context.load_cert_chain(str(client / "cert.pem"), str(client / "key.pem"))
    return context


@contextmanager
def server_process(argv: list[str], log: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    with open(log, "w") as log_file:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = re.search(r"Serving on https://[^:]+:(\d+)", line)
            if match:
                yield proc, int(match.group(1))
                break
        else:
            raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
    finally:
        proc.terminate()
        proc.wait(30)


def jobkit_server(certs: Path, log: Path, *extra: str
                  ) -> AbstractContextManager[tuple[subprocess.Popen[str], int]]:
    argv = [PYTHON, "-m", "jobkit", "serve", "--certs", str(certs),
            "--listen", "127.0.0.1:0", *extra]
    return server_process(argv, log)


def request(conn: http.client.HTTPSConnection, method: str, path: str,
            body: object = None) -> tuple[int, bytes]:
    headers = {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_per_second(port: int, context: ssl.SSLContext, path: str, seconds: float,
                        pid: int) -> tuple[float, float]:
    """Requests/s of ``GET path`` on one keep-alive connection, and the server's CPU µs each."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    for _ in range(50):  # warm up: handshake, caches
        request(conn, "GET", path)
    count = 0
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            status, _ = request(conn, "GET", path)
            assert status == 200, status
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            break
    cpu = cpu_seconds(pid) - cpu
    conn.close()
    return count / (now - start), cpu / count * 1e6


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def spread(values: list[float]) -> str:
    """``median (min-max)`` of ``values``."""
    ordered = sorted(values)
    return f"{median(values):.2f}x ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def bench_status(certs: Path, workdir: Path, seconds: float, rounds: int) -> None:
    context = client_context(certs / "clients" / "bench")
    bare: list[tuple[float, float]] = []
    ours: list[tuple[float, float]] = []
    script = workdir / "bare_server.py"
    script.write_text(BARE_SERVER)
    with server_process([PYTHON, str(script), str(certs / "server")],
                        workdir / "bare.log") as (bare_proc, bare_port), \
         jobkit_server(certs, workdir / "status.log") as (proc, port):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        status, body = request(conn, "PUT", "/jobs", {"cmd": "sleep", "args": ["600"]})
        assert status == 201, body
        path = f"/jobs/{json.loads(body)['id']}/status"
        for _ in range(rounds):  # interleaved, so drift affects both alike
            bare.append(requests_per_second(bare_port, context, "/", seconds, bare_proc.pid))
            ours.append(requests_per_second(port, context, path, seconds, proc.pid))
    ratios = [o[0] / b[0] for o, b in zip(ours, bare, strict=True)]
    median_cpu = sorted(c for _, c in ours)[rounds // 2], sorted(c for _, c in bare)[rounds // 2]
    print(f"status: bare cheroot+TLS1.3 {max(r for r, _ in bare):,.0f} req/s | jobkit GET "
          f"/status {max(r for r, _ in ours):,.0f} req/s (best rounds) | ratio of {rounds} "
          f"paired rounds {spread(ratios)} (target >= 0.85x) | server CPU per request "
          f"{median_cpu[0]:,.0f} us vs {median_cpu[1]:,.0f} us (medians)")


BARE_CREATE_SERVER = textwrap.dedent(
    """
    import json, ssl, sys
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter
    from jobkit import JobPool

    folder, state = sys.argv[1], sys.argv[2]
    pool = JobPool(cgroups=None, state_dir=state)  # as each of jobkit serve's pools

    def app(environ, start_response):
        body = b"{}"
        status = "200 OK"
        if environ["REQUEST_METHOD"] == "PUT":
            asked = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            body = json.dumps({"id": pool.create(asked["cmd"], asked.get("args", []))}).encode()
            status = "201 Created"
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body)))])
        return [body]

    """
) + SERVE_APP


def library_rate(pool: JobPool, count: int) -> float:
    """Jobs/s of ``pool.create("true")``, ``count`` times (waited for afterwards, untimed)."""
    start = time.perf_counter()
    ids = [pool.create("true") for _ in range(count)]
    rate = count / (time.perf_counter() - start)
    for job_id in ids:
        pool.wait(job_id)
    return rate


def api_rate(port: int, context: ssl.SSLContext, count: int, pid: int) -> tuple[float, float]:
    """Jobs/s of ``PUT /jobs`` of ``true`` on one keep-alive connection, and the server's
    CPU µs for each."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
    request(conn, "GET", "/jobs")
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    for _ in range(count):
        status, body = request(conn, "PUT", "/jobs", {"cmd": "true"})
        assert status == 201, body
    rate = count / (time.perf_counter() - start)
    cpu = cpu_seconds(pid) - cpu
    conn.close()
    return rate, cpu / count * 1e6


def bench_create(certs: Path, workdir: Path, count: int, rounds: int) -> None:
    context = client_context(certs / "clients" / "bench")
    memory: list[float] = []
    durable: list[float] = []
    api: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    script = workdir / "bare_create_server.py"
    script.write_text(BARE_CREATE_SERVER)
    # The server's pool options: a cgroup per job where possible; each client's
    # pool has a state folder (the file backend, jobs recorded in SQLite).
    with JobPool(cgroups=None) as memory_pool, \
         JobPool(cgroups=None, state_dir=workdir / "library-state") as durable_pool, \
         server_process([PYTHON, str(script), str(certs / "server"), str(workdir / "bare-state")],
                        workdir / "bare-create.log") as (bare_proc, bare_port), \
         jobkit_server(certs, workdir / "create.log", "--max-jobs", "0") as (proc, port):
        api_rate(port, context, 20, proc.pid)  # warm up: the client's pool is made
        api_rate(bare_port, context, 20, bare_proc.pid)
        for _ in range(rounds):  # interleaved, so drift affects all alike
            memory.append(library_rate(memory_pool, count))
            durable.append(library_rate(durable_pool, count))
            bare.append(api_rate(bare_port, context, count, bare_proc.pid))
            api.append(api_rate(port, context, count, proc.pid))
    rates = [rate for rate, _ in api]
    bare_rates = [rate for rate, _ in bare]
    print(f"create: JobPool.create {max(memory):,.0f} jobs/s in memory, {max(durable):,.0f} "
          f"jobs/s with a state folder | PUT /jobs {max(rates):,.0f} jobs/s (best rounds, one "
          f"client thread) | ratio of {rounds} paired rounds: to the in-memory pool "
          f"{spread([a / m for a, m in zip(rates, memory, strict=True)])}, to the pool like "
          f"the server's {spread([a / d for a, d in zip(rates, durable, strict=True)])} "
          f"(target >= 0.8x) | server CPU per request "
          f"{sorted(c for _, c in api)[rounds // 2]:,.0f} us (median)")
    print(f"create, bare: cheroot+TLS1.3 app calling JobPool.create {max(bare_rates):,.0f} "
          f"jobs/s (best round) | its ratio to the pool like the server's "
          f"{spread([b / d for b, d in zip(bare_rates, durable, strict=True)])} | jobkit PUT "
          f"/jobs to it {spread([a / b for a, b in zip(rates, bare_rates, strict=True)])} | "
          f"its CPU per request {sorted(c for _, c in bare)[rounds // 2]:,.0f} us (median)")


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


BARE_FOLLOW_SERVER = textwrap.dedent(
    """
    import os, socket, ssl, subprocess, sys

    folder = sys.argv[1]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(f"{folder}/cert.pem", f"{folder}/key.pem")
    context.load_verify_locations(cafile=f"{folder}/ca.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"Serving on https://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while True:
        sock, _ = listener.accept()
        with context.wrap_socket(sock, server_side=True) as tls:
            asked = tls.recv(64)
            size = int(asked.lstrip(b"m"))
            if asked.startswith(b"m"):  # from memory: the TLS ceiling
                while size > 0:
                    tls.sendall(view[: min(size, len(view))])
                    size -= len(view)
                continue
            job = subprocess.Popen(["head", "-c", str(size), "/dev/zero"],
                                   stdout=subprocess.PIPE)
            fd = job.stdout.fileno()
            while count := os.readv(fd, [buffer]):
                tls.sendall(view[:count])
            job.wait()
    """
)


def bare_follow(port: int, context: ssl.SSLContext, size: int, *, memory: bool = False) -> int:
    """Read ``size`` bytes a bare TLS server sends from its job's pipe (or from
    memory: no job); bytes received."""
    with socket.create_connection(("127.0.0.1", port)) as plain, \
         context.wrap_socket(plain, server_hostname="localhost") as sock:
        sock.sendall(b"m%d" % size if memory else b"%d" % size)
        view = memoryview(bytearray(1 << 20))
        received = 0
        while count := sock.recv_into(view):
            received += count
    return received


def follow_with_chunk_offsets(conn: http.client.HTTPSConnection, job_id: str) -> tuple[int, int]:
    """Follow ``job_id``'s stdout as a client that reads ``;offset=`` chunk extensions:
    (bytes received, responses).  Every chunk's offset is checked: none overlaps or goes back."""
    view = memoryview(bytearray(1 << 20))
    received = offset = responses = 0
    while True:
        conn.request("GET", f"/jobs/{job_id}/stdout?follow=true&chunk_offsets=true"
                     f"&offset={offset}")
        response = conn.getresponse()
        responses += 1
        assert response.status == 200
        offset = int(response.headers["X-Jobkit-Offset"])
        reader = response.fp
        assert reader is not None and response.chunked
        while True:
            size_text, _, extension = reader.readline().partition(b";")
            size = int(size_text, 16)
            if not size:
                reader.readline()
                break
            # A server that does not know chunk offsets sends none (and ends at a gap).
            start = int(extension.split(b"=")[1]) if extension else offset
            assert start >= offset, (start, offset)
            offset = start + size
            while size:
                count = reader.readinto(view[: min(size, len(view))])
                if not count:
                    raise ConnectionError("the body ended in a chunk")
                size -= count
                received += count
            reader.readline()
        response.close()  # read to its end: the connection serves the next request
        _, body = request(conn, "GET", f"/jobs/{job_id}/status")
        info = json.loads(body)["stdout"]
        if info["closed"] and offset >= info["written"]:
            return received, responses


def follow_with_client(port: int, certs: Path, job_id: str) -> int:
    """Follow ``job_id``'s stdout with `jobkit.client.Client.follow`; bytes received."""
    from jobkit.client import Client

    with Client(f"127.0.0.1:{port}", certs) as client:
        return sum(len(chunk) for chunk in client.follow(job_id, "stdout"))


def bench_follow(certs: Path, workdir: Path, size: int, rounds: int) -> None:
    """MB/s of kept bytes received, for the bare baseline and each backend, in
    interleaved rounds; each server's and the client's CPU seconds per GiB received."""
    client_certs = certs / "clients" / "bench"
    context = client_context(client_certs)
    script = workdir / "bare_follow_server.py"
    script.write_text(BARE_FOLLOW_SERVER)
    rates: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
    client_cpu: dict[str, list[float]] = {}
    notes: dict[str, str] = {}

    def record(name: str, received: int, seconds: float, server: float, client: float) -> None:
        gib = received / GIB
        rates.setdefault(name, []).append(received / seconds / 1e6)
        server_cpu.setdefault(name, []).append(server / gib)
        client_cpu.setdefault(name, []).append(client / gib)

    def timed(pid: int, run: Callable[[], int]) -> tuple[int, float, float, float]:
        server, client, start = cpu_seconds(pid), time.process_time(), time.perf_counter()
        received = run()
        return (received, time.perf_counter() - start, cpu_seconds(pid) - server,
                time.process_time() - client)

    with server_process([PYTHON, str(script), str(certs / "server")],
                        workdir / "bare-follow.log") as (bare_proc, bare_port), \
         jobkit_server(certs, workdir / "follow-tempfile.log", "--backend",
                       "tempfile") as (tempfile_proc, tempfile_port), \
         jobkit_server(certs, workdir / "follow-ring.log", "--backend",
                       "ring") as (ring_proc, ring_port):
        rss_before = {name: peak_rss_mib(proc.pid)
                      for name, proc in (("tempfile", tempfile_proc), ("ring", ring_proc))}
        bare_follow(bare_port, context, 1 << 20)  # warm up
        for _ in range(rounds):  # interleaved, so drift affects all alike
            received, *times = timed(bare_proc.pid, lambda: bare_follow(
                bare_port, context, size, memory=True))
            record("bare, from memory", received, *times)
            received, *times = timed(bare_proc.pid, lambda: bare_follow(bare_port, context, size))
            record("bare", received, *times)
            for backend, proc, port in (("tempfile", tempfile_proc, tempfile_port),
                                        ("ring", ring_proc, ring_port)):
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
                status, body = request(conn, "PUT", "/jobs", {
                    "cmd": "head", "args": ["-c", str(size), "/dev/zero"]})
                assert status == 201, body
                job_id = json.loads(body)["id"]
                responses = 0

                def run(conn: http.client.HTTPSConnection = conn, job_id: str = job_id) -> int:
                    nonlocal responses
                    received, responses = follow_with_chunk_offsets(conn, job_id)
                    return received

                received, *times = timed(proc.pid, run)
                record(backend, received, *times)
                notes[backend] = f"{responses} response(s)"
                # Deleted at once: a gibibyte of page cache per round kept
                # would make each round slower than the one before it here.
                request(conn, "DELETE", f"/jobs/{job_id}")
                # The same, through jobkit's own client (a job of its own).
                status, body = request(conn, "PUT", "/jobs", {
                    "cmd": "head", "args": ["-c", str(size), "/dev/zero"]})
                conn.close()
                job_id = json.loads(body)["id"]
                received, *times = timed(
                    proc.pid, lambda port=port, job_id=job_id: follow_with_client(
                        port, client_certs, job_id))
                record(f"{backend} (jobkit.client)", received, *times)
                conn = http.client.HTTPSConnection("127.0.0.1", port, context=context)
                request(conn, "DELETE", f"/jobs/{job_id}")
                conn.close()
        rss_after = {name: peak_rss_mib(proc.pid)
                     for name, proc in (("tempfile", tempfile_proc), ("ring", ring_proc))}
    bare = rates["bare"]
    print(f"follow {size / 2**20:,.0f} MiB, {rounds} interleaved rounds; MB/s of bytes "
          "received (kept bytes for ring) median (min-max); CPU s per GiB received, medians")
    for name, values in rates.items():
        ordered = sorted(values)
        line = f"  {name:24} {median(values):6,.0f} MB/s ({ordered[0]:,.0f}-{ordered[-1]:,.0f})"
        if name != "bare":
            line += f" | {spread([v / b for v, b in zip(values, bare, strict=True)])} of bare"
        line += (f" | server CPU {median(server_cpu[name]):.2f} s/GiB, client "
                 f"{median(client_cpu[name]):.2f} s/GiB")
        backend = name.split()[0]
        if name in notes:
            line += f" | {notes[name]} in the last round"
        if name == backend and backend in rss_before:
            line += (f" | server peak RSS {rss_before[backend]:,.0f} -> "
                     f"{rss_after[backend]:,.0f} MiB")
        print(line)
    print("  targets: tempfile >= 1,000 MB/s; ring >= 300 MB/s of kept bytes. The bare "
          "server sends its job's pipe over TLS 1.3 (same certificates) from a 1 MiB buffer, "
          "no HTTP (from memory: the same bytes with no job, the TLS ceiling of this "
          "machine). No server's CPU includes its job's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, 256 MiB follow")
    parser.add_argument("--only", choices=("status", "create", "follow"),
                        help="run this benchmark only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        certs = init_pki(workdir / "pki", clients=["bench"])
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        if args.only in (None, "status"):
            bench_status(certs, workdir, seconds=1.0 if args.quick else 1.5,
                         rounds=5 if args.quick else 9)
        if args.only in (None, "create"):
            bench_create(certs, workdir, count=200 if args.quick else 500,
                         rounds=3 if args.quick else 5)
        if args.only in (None, "follow"):
            bench_follow(certs, workdir, GIB // 4 if args.quick else GIB,
                         rounds=2 if args.quick else 3)


if __name__ == "__main__":
    main()
