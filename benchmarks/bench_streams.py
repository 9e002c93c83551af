"""Stream load (issue 11): many long responses at once, and another client's latency meanwhile.

    .venv/bin/python benchmarks/bench_streams.py [--quick] [--only follows|unread]

Against a real ``jobkit serve --threads 16`` in a subprocess (a fresh PKI, one
certificate per client, ``--admin`` for the metrics):

1. **Follows.**  50 clients create 2 jobs each that write known bytes (256 KiB of
   seeded randomness, 8 KiB every 0.125 s: about 4 s) once released, and follow each
   10 times: 1,000 follow streams.  The jobs are released only when the server's
   ``jobkit_follow_streams`` gauge counts all 1,000, so every stream is a live follow
   throughout.  Every stream's bytes are checked by SHA-256.  A 51st client times
   ``GET /jobs`` on one keep-alive connection: with no load, while the streams open,
   while the bytes flow, and with no load again; p50/p99 and ratios to the no-load
   figures.  Server RSS before the streams open, with all open (per stream), and its
   peak while they flow.  The streams are read by threads in worker processes
   (``--processes``, default 2: both cores), each thread one ``http.client``
   connection.
2. **Unread downloads.**  200 clients each run ``head -c 16M /dev/zero`` and start a
   plain ``GET /jobs/ID/stdout`` of it, read the answer's head and nothing more
   (16 MiB is more than the socket buffers and the server's one buffer take).  The
   same timed client, before and while they are held.  The server cuts a client
   that reads nothing for its connection timeout (10 s): the measurement ends before
   the first download opened is that old.

The machine has 2 cores shared by the server, the client processes and the jobs: the
latency figures include waiting for a core.  Nothing here is a test:
tests/security/test_stream_load.py checks the same loads for correctness.
"""

from __future__ import annotations

import argparse
import array
import fcntl
import http.client
import multiprocessing
import resource
import subprocess
import sys
import tempfile
import termios
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

# The drivers live with the tests that also use them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobkit.pki import init_pki, issue_client
from tests.support.api import ApiClient
from tests.support.pki import ADMIN
from tests.support.processes import ServerProcess, server_process
from tests.support.procs import cpu_seconds, memory_kib, raise_fd_limit, task_count
from tests.support.stream_load import (
    FollowLoad,
    LatencyProbe,
    Pacing,
    StreamResult,
    follow_all,
    follow_streams,
    open_unread,
    percentile,
)

#: The checkout measured.
ROOT = Path(__file__).resolve().parents[1]
#: The server's connection timeout (`jobkit.server.serve.CONNECTION_TIMEOUT`): a
#: client that reads nothing for this long is cut.
CUT_AFTER = 10.0
#: Latency target of issue 11 for the timed client while the load runs.
TARGET_P99 = 0.2


def commit() -> str:
    """The commit measured, and whether the server's code differs from it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "jobkit/server", "jobkit/core/stream.py"],
                           capture_output=True, text=True).stdout.split("\n")
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else "")


def latency(label: str, times: list[float], baseline: list[float] | None = None) -> str:
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    line = (f"  {label:<34} {len(times):>6} requests  p50 {p50 * 1000:7.1f} ms  "
            f"p99 {p99 * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms")
    if baseline:
        line += (f"  | p99 {p99 / percentile(baseline, 0.99):5.1f}x no-load"
                 f"{'' if p99 < TARGET_P99 else '  (over the 0.2 s target)'}")
    return line


class Every:
    """True at most once per ``seconds``: how often the gauge is scraped while probing."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


def bench_follows(served: ServerProcess, pki: Path, probe: LatencyProbe, admin: ApiClient,
                  workdir: Path, options: argparse.Namespace) -> bool:
    pid = served.pid
    pacing = Pacing(size=options.size, chunk=options.chunk, pause=options.pause)
    identities = [(f"follow-{i}", issue_client(pki, f"follow-{i}"))
                  for i in range(options.clients)]
    load = FollowLoad.create(served.address, identities, jobs_per_client=options.jobs,
                             follows_per_job=options.follows // options.jobs, pacing=pacing,
                             gates=workdir / "gates")
    streams = load.streams
    print(f"follows: {options.clients} clients x {options.follows} follows = {streams} "
          f"streams of {len(load.jobs)} jobs, each writing {pacing.size >> 10} KiB in "
          f"{pacing.chunk >> 10} KiB pieces {pacing.pause} s apart (~{pacing.seconds():.0f} s); "
          f"read by {options.processes} processes")
    before = probe.run(options.baseline)
    rss_before, cpu_before = memory_kib(pid), cpu_seconds(pid)
    threads_before = task_count(pid)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = usage.ru_utime + usage.ru_stime
    chunks = [load.plans[i::options.processes] for i in range(options.processes)]
    with ProcessPoolExecutor(options.processes,
                             mp_context=multiprocessing.get_context("spawn")) as workers:
        started = time.monotonic()
        futures: list[Future[list[StreamResult]]] = [
            workers.submit(follow_all, served.address, chunk, options.timeout)
            for chunk in chunks]
        scrape = Every(0.25)
        opened = [0]

        def all_open() -> bool:
            if any(future.done() for future in futures):
                raise RuntimeError(f"a reader ended before the jobs were released: "
                                   f"{[f.exception() for f in futures if f.done()]}")
            if scrape():
                opened[0] = follow_streams(admin)
            return opened[0] >= streams

        probe.run_until(all_open)
        open_at = time.monotonic()
        rss_open, threads_open = memory_kib(pid), task_count(pid)
        load.release()
        released = time.monotonic()
        peak = [rss_open]

        def finished() -> bool:
            peak[0] = max(peak[0], memory_kib(pid))
            return all(future.done() for future in futures)

        probe.run_until(finished)
        ended = time.monotonic()
        results = [result for future in futures for result in future.result()]
    cpu_used = cpu_seconds(pid) - cpu_before
    # The worker processes have ended (the jobs are the server's children, not ours).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = usage.ru_utime + usage.ru_stime - children_cpu
    after = probe.run(options.baseline)
    problems = load.problems(results)
    received = sum(result.received for result in results)
    resumes = sum(result.resumes for result in results)
    print(f"  opened {streams} follows in {open_at - started:.1f} s; the jobs wrote for "
          f"{ended - released:.1f} s; {received / (1 << 20):.0f} MiB received "
          f"({received / (1 << 20) / (ended - released):.0f} MiB/s), "
          f"{streams - len(problems)} of {streams} streams every byte (SHA-256), "
          f"{resumes} resumes")
    for problem in problems[:5]:
        print(f"  error: {problem}")
    print(latency("GET /jobs, no load (before)", before))
    print(latency("GET /jobs while the streams open", probe.between(started, open_at), before))
    print(latency("GET /jobs while the bytes flow", probe.between(released, ended), before))
    print(latency("GET /jobs, no load (after)", after, before))
    per_stream = (rss_open - rss_before) / streams
    print(f"  server RSS {rss_before / 1024:.0f} MiB before, {rss_open / 1024:.0f} MiB with "
          f"{streams} open ({per_stream:.1f} KiB per stream), peak {peak[0] / 1024:.0f} MiB "
          f"while they flow ({(peak[0] - rss_before) / streams:.1f} KiB per stream); threads "
          f"{threads_before} -> {threads_open}; CPU over {ended - started:.1f} s: server "
          f"{cpu_used:.1f} s, client processes {client_cpu:.1f} s")
    return not problems


def bench_unread(served: ServerProcess, pki: Path, probe: LatencyProbe,
                 options: argparse.Namespace) -> None:
    pid = served.pid
    size = options.download_size
    print(f"unread downloads: {options.unread} clients (one certificate each) start a "
          f"download of {size >> 20} MiB and stop reading")
    hoarders = [ApiClient(served.address, issue_client(pki, f"unread-{i}"), f"unread-{i}")
                for i in range(options.unread)]
    jobs = []
    for hoarder in hoarders:
        jobs.append(hoarder.create("head", "-c", str(size), "/dev/zero"))
        hoarder.close()  # not left idle for the server to close
    for hoarder, job in zip(hoarders, jobs, strict=True):
        assert hoarder.wait(job, timeout=300)["exit_code"] == 0
        hoarder.close()
    before = probe.run(options.baseline)
    rss_before, threads_before = memory_kib(pid), task_count(pid)
    first = time.monotonic()
    held = [open_unread(hoarder, f"/jobs/{job}/stdout")
            for hoarder, job in zip(hoarders, jobs, strict=True)]
    opened = time.monotonic()
    # Until the first download opened is nearly as old as the connection timeout.
    stop = min(opened + options.hold, first + CUT_AFTER - 1)
    during = probe.run_until(lambda: time.monotonic() >= stop, least=50)
    rss_held, threads_held = memory_kib(pid), task_count(pid)
    arrived = [queued(conn) for conn in held]
    for conn in held:
        conn.close()
    for hoarder in hoarders:
        hoarder.close()
    after = probe.run(options.baseline)
    print(f"  opened {len(held)} in {opened - first:.1f} s, held {time.monotonic() - opened:.1f}"
          f" s; then {min(arrived) >> 10}-{max(arrived) >> 10} KiB (TLS records) waited "
          f"unread in each client's socket, of a {size >> 20} MiB body")
    print(latency("GET /jobs, no load (before)", before))
    print(latency(f"GET /jobs, {len(held)} unread downloads", during, before))
    print(latency("GET /jobs, no load (after)", after, before))
    print(f"  server RSS {rss_before / 1024:.0f} MiB before, {rss_held / 1024:.0f} MiB held "
          f"({(rss_held - rss_before) / len(held):.1f} KiB per download); threads "
          f"{threads_before} -> {threads_held}")


def queued(conn: http.client.HTTPSConnection) -> int:
    """Bytes waiting unread in a held download's socket (FIONREAD: nothing is read, so
    the server is not let to send more)."""
    if conn.sock is None:
        return 0
    count = array.array("i", [0])
    fcntl.ioctl(conn.sock.fileno(), termios.FIONREAD, count)
    return count[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 clients x 10 follows, 24 unread downloads")
    parser.add_argument("--only", choices=("follows", "unread"))
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--follows", type=int, default=20, help="follows per client")
    parser.add_argument("--jobs", type=int, default=2, help="jobs per client")
    parser.add_argument("--size", type=int, default=256 << 10, help="bytes per job")
    parser.add_argument("--chunk", type=int, default=8 << 10)
    parser.add_argument("--pause", type=float, default=0.125)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--unread", type=int, default=200, help="clients not reading")
    parser.add_argument("--download-size", type=int, default=16 << 20)
    parser.add_argument("--hold", type=float, default=6.0,
                        help="seconds the unread downloads are held while measuring")
    parser.add_argument("--baseline", type=int, default=1000,
                        help="requests of each no-load measurement")
    parser.add_argument("--timeout", type=float, default=300.0)
    options = parser.parse_args()
    if options.quick:
        options.clients, options.follows, options.jobs, options.unread = 10, 10, 1, 24
        options.baseline = 300
    raise_fd_limit(4 * (options.clients * options.follows + options.unread) + 1024)
    ok = True
    print(f"jobkit at {commit()}; jobkit serve --threads {options.threads}")
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        pki = init_pki(workdir / "pki", clients=[ADMIN, "probe"])
        with server_process(pki, "--threads", str(options.threads), "--admin", ADMIN) as served:
            admin = ApiClient(served.address, pki / "clients" / ADMIN, ADMIN)
            probe = LatencyProbe(ApiClient(served.address, pki / "clients" / "probe", "probe"))
            probe.client.wait(probe.client.create("true"))  # one job to list
            probe.run(50)  # warm up: handshake, the tenant's pool
            if options.only in (None, "follows"):
                ok = bench_follows(served, pki, probe, admin, workdir, options)
            if options.only in (None, "unread"):
                bench_unread(served, pki, probe, options)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
