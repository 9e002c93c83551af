"""Durable pools: each figure next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_durable.py [--quick]

1. create + wait of `true` on a durable pool (state_dir, `file` backend), against raw
   `subprocess.Popen(["true"]).wait()` and against an in-memory pool.
2. Capturing 1 GiB of stdout with the `file` backend (uncapped, and capped at 64 MiB by
   punching holes), against `head -c 1G /dev/zero > file` in the same folder.
3. 100,000 finished jobs on record: a page of 100 ids and statuses against the same with
   10 jobs; the pool's RSS against an empty pool; the time to reopen the store.  The
   records are written through the store's own API (`JobRecords.add` and `.finished`),
   without spawning 100,000 processes.
4. The same through `jobkit serve` (mTLS, keep-alive): `GET /jobs?limit=100` with
   100,000 finished jobs against 10, and the server's RSS against a server with 10.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_core import GIB, rss_kib  # run as a script: benchmarks/ is on sys.path

from jobkit import JobPool
from jobkit.core.job import utcnow
from jobkit.core.models import JobStatus, State, StreamInfo
from jobkit.core.records import JobRecords


def bench_spawn(n: int, folder: Path) -> None:
    raw = memory = durable = 0.0
    with JobPool() as mem_pool, JobPool(state_dir=folder / "spawn") as disk_pool:
        for pool in (mem_pool, disk_pool):
            pool.wait(pool.create("true"))  # warm up
        for _ in range(5):  # interleaved, so a busy moment hits every side alike
            start = time.perf_counter()
            for _ in range(n // 5):
                subprocess.Popen(["true"]).wait()
            raw += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n // 5):
                mem_pool.wait(mem_pool.create("true"))
            memory += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n // 5):
                disk_pool.wait(disk_pool.create("true"))
            durable += time.perf_counter() - start
    print(
        f"spawn: Popen+wait {n / raw:,.0f}/s | in-memory pool {n / memory:,.0f}/s"
        f" ({raw / memory:.2f}x) | durable pool {n / durable:,.0f}/s"
        f" ({raw / durable:.2f}x Popen, target >= 0.7x)"
    )


def bench_capture(size: int, folder: Path) -> None:
    target = folder / "baseline.bin"
    start = time.perf_counter()
    with open(target, "wb") as out:
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=out, check=True)
    ceiling = size / (time.perf_counter() - start)
    target.unlink()
    print(f"capture of {size >> 20} MiB: `head > file` in {folder}: {ceiling / 1e9:.2f} GB/s")
    for label, options in (("uncapped", {}), ("max_bytes=64M", {"max_bytes": "64M"})):
        state = folder / f"capture-{len(options)}"
        with JobPool("file", options, state_dir=state) as pool:
            rss_before = rss_kib()
            start = time.perf_counter()
            status = pool.wait(pool.create("head", ["-c", str(size), "/dev/zero"]))
            speed = size / (time.perf_counter() - start)
            grown = (rss_kib() - rss_before) // 1024
            assert status.stdout.written == size, status
            disk = sum(p.stat().st_blocks * 512 for p in (state / "output").iterdir())
        print(
            f"  file backend, {label:14s} {speed / 1e9:5.2f} GB/s ({speed / ceiling:.2f}x"
            f" `head > file`) | RSS +{grown} MiB | on disk {disk >> 20} MiB"
        )


def fill(folder: Path, count: int) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    records = JobRecords(folder / "jobs.db")
    done = StreamInfo(written=100, dropped=0, closed=True)
    for _ in range(count):
        now = utcnow()
        job_id = records.add("echo", ["hello"], None, None, "file", now)
        records.finished(JobStatus(
            id=job_id, state=State.COMPLETED, command="echo", args=("hello",), pid=None,
            created_at=now, backend="file", exit_code=0, ended_at=now, stdout=done, stderr=done,
        ))
    records.close()


def page_cost(pool: JobPool, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        for job in pool.list(limit=100, newest_first=True):
            pool.status(job)
    return (time.perf_counter() - start) / rounds


def bench_many_finished(count: int, folder: Path) -> None:
    fill(folder / "ten", 10)
    fill(folder / "hundred", 100)  # one full page: the like-for-like baseline
    start = time.perf_counter()
    fill(folder / "large", count)
    print(f"{count:,} finished jobs: recorded at {count / (time.perf_counter() - start):,.0f}/s")
    # RSS in fresh processes, so that neither figure carries the other's garbage.
    for name in ("ten", "hundred", "large"):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(folder / name)],
            capture_output=True, text=True, check=True,
        )
        print(f"  {name:7s}: {out.stdout.strip()}")


def measure(folder: Path) -> None:
    base = rss_kib()
    start = time.perf_counter()
    pool = JobPool(state_dir=folder)
    opened = time.perf_counter() - start
    cost = page_cost(pool, 20)
    print(
        f"{len(pool.list()):,} jobs | reopen {opened * 1000:.0f} ms (target < 1 s)"
        f" | a page of 100 ids + statuses {cost * 1000:.2f} ms"
        f" | RSS +{(rss_kib() - base) / 1024:.1f} MiB over the empty process"
    )
    pool.close()


def bench_server(count: int, folder: Path) -> None:
    from jobkit.client import Client
    from jobkit.pki import init_pki
    from jobkit.server.state import ServerState

    certs = init_pki(folder / "pki", clients=["bench"])
    figures = {}
    for label, jobs in (("10 jobs", 10), ("100 jobs", 100), (f"{count:,} jobs", count)):
        state = folder / f"server-{jobs}"
        ServerState(state).close()  # the layout, made as the server makes it
        fill(state / "clients" / "bench", jobs)
        server = subprocess.Popen(
            [sys.executable, "-m", "jobkit", "serve", "-q", "--certs", str(certs),
             "--listen", "127.0.0.1:0", "--state-dir", str(state)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            assert server.stdout is not None
            address = next(line.split("https://")[1].split()[0] for line in server.stdout
                           if line.startswith("Serving on"))
            with Client(address, certs / "clients" / "bench") as client:
                client.list_json(limit=100, newest_first=True)  # warm up
                rounds = 200
                start = time.perf_counter()
                for _ in range(rounds):
                    client.list_json(limit=100, newest_first=True)
                per_page = (time.perf_counter() - start) / rounds
            with open(f"/proc/{server.pid}/status") as status:
                rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
            figures[label] = (per_page, rss)
        finally:
            server.terminate()
            server.wait(30)
    (ten, (ten_page, ten_rss)), (full, (full_page, _)), (large, (large_page, large_rss)) = (
        figures.items()
    )
    print(
        f"jobkit serve, GET /jobs?limit=100&order=newest: {ten} {ten_page * 1000:.2f} ms,"
        f" {full} {full_page * 1000:.2f} ms, {large} {large_page * 1000:.2f} ms"
        f" ({large_page / full_page:.2f}x a full page of 100)"
        f" | server RSS {ten_rss / 1024:.1f} MiB with 10 jobs, {large_rss / 1024:.1f} MiB with"
        f" {large} (+{(large_rss - ten_rss) / 1024:.1f} MiB, target <= 20 MiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--dir", help="where the state folders go (default: a temporary one)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(Path(args.measure))
        return
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="jobkit-bench-") as tmp:
        folder = Path(tmp)
        bench_spawn(200 if args.quick else 1000, folder)
        bench_capture(GIB // 16 if args.quick else GIB, folder)
        bench_many_finished(5_000 if args.quick else 100_000, folder)
        bench_server(5_000 if args.quick else 100_000, folder)
        os.sync()


if __name__ == "__main__":
    main()
