"""Core library benchmarks: each figure is printed next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_core.py [--quick]

1. create + wait of `true`, against raw `subprocess.Popen(["true"]).wait()`.
2. Capturing 1 GiB of stdout with each backend, against `subprocess.run(capture_output=True)`,
   an `os.read` loop on a pipe enlarged to 1 MiB, and `head -c 1G /dev/zero | cat >/dev/null`.
3. 2,000 concurrent sleeping jobs: threads and RSS per job (output excluded).
"""

from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import resource
import subprocess
import tempfile
import threading
import time

from jobkit import JobPool

GIB = 1 << 30


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rate(count: int, seconds: float) -> float:
    return count / seconds


def bench_spawn(n: int) -> None:
    # Interleave rounds so a busy moment of the machine hits both sides alike.
    raw_time = {False: 0.0, None: 0.0}
    ours_time = {False: 0.0, None: 0.0}
    contained = False
    pools = {flag: JobPool(cgroups=flag) for flag in (False, None)}
    try:
        for _ in range(5):
            for flag, pool in pools.items():
                start = time.perf_counter()
                for _ in range(n // 5):
                    subprocess.Popen(["true"]).wait()
                raw_time[flag] += time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(n // 5):
                    pool.wait(pool.create("true"))
                ours_time[flag] += time.perf_counter() - start
        contained = pools[None]._contain
    finally:
        for pool in pools.values():
            pool.close()
    for flag in (False, None):
        raw, ours = n / raw_time[flag], n / ours_time[flag]
        label = (
            "process group only"
            if flag is False
            else ("cgroups=None: cgroups per job" if contained else "no cgroups here")
        )
        print(
            f"spawn: Popen+wait {raw:,.0f}/s | create+wait, {label}: {ours:,.0f}/s "
            f"| ratio {ours / raw:.2f}x (target >= 0.8x)"
        )


def capture_baselines(size: int) -> dict[str, float]:
    head = ["head", "-c", str(size), "/dev/zero"]
    results = {}
    start = time.perf_counter()
    out = subprocess.run(head, capture_output=True, check=True)
    results["subprocess.run"] = len(out.stdout) / (time.perf_counter() - start)
    del out
    read_end, write_end = os.pipe()
    fcntl.fcntl(read_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    start = time.perf_counter()
    proc = subprocess.Popen(head, stdout=write_end)
    os.close(write_end)
    total = 0
    while chunk := os.read(read_end, 1 << 20):
        total += len(chunk)
    proc.wait()
    os.close(read_end)
    results["os.read loop"] = total / (time.perf_counter() - start)
    start = time.perf_counter()
    subprocess.run(["sh", "-c", f"head -c {size} /dev/zero | cat >/dev/null"], check=True)
    results["cat pipe"] = size / (time.perf_counter() - start)
    return results


def warm_memory(size: int) -> None:
    """Touch and free ``size`` bytes of RAM once, before anything is timed.

    In a VM whose host backs guest memory lazily (this one), the first touch
    of each guest page costs several times a normal page fault; whoever runs
    first would pay for everybody.  Once touched and freed, pages come back
    from the guest kernel's free lists at native speed, as on bare metal.
    """
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    block.close()


def file_write_speed(size: int, directory: str) -> float:
    """The ceiling for `tempfile`: `head` writing straight into a file there."""
    with tempfile.TemporaryFile(dir=directory) as target:
        start = time.perf_counter()
        subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=target, check=True)
        return size / (time.perf_counter() - start)


def bench_capture(size: int, warm: bool) -> None:
    if warm:
        warm_memory(3 * size)
    base = capture_baselines(size)
    print(f"capture of {size >> 20} MiB of stdout:")
    for name, value in base.items():
        print(f"  baseline {name:15s} {value / 1e9:6.2f} GB/s")
    runs: list[tuple[str, dict[str, str]]] = [("memory", {}), ("ring", {})]
    for directory in (tempfile.gettempdir(), "/dev/shm"):
        if os.path.isdir(directory):
            runs.append(("tempfile", {"directory": directory}))
    for backend, options in runs:
        with JobPool(backend, options) as pool:
            rss_before = rss_kib()
            start = time.perf_counter()
            job = pool.create("head", ["-c", str(size), "/dev/zero"])
            status = pool.wait(job)
            seconds = time.perf_counter() - start
            assert status.stdout.written == size, status
            speed = size / seconds
            grown = (rss_kib() - rss_before) // 1024
        where = ""
        if options:
            ceiling = file_write_speed(size, options["directory"])
            where = f" in {options['directory']} ({speed / ceiling:.2f}x `head > file` there)"
        print(
            f"  jobkit {backend:9s} {speed / 1e9:6.2f} GB/s | "
            f"x{speed / base['subprocess.run']:.1f} subprocess.run | "
            f"{speed / base['cat pipe']:.2f}x cat pipe | "
            f"{speed / base['os.read loop']:.2f}x os.read loop | RSS +{grown} MiB{where}"
        )


def bench_many(n: int) -> None:
    threads_before = threading.active_count()
    with JobPool() as pool:
        pool.wait(pool.create("true"))  # warm up: the supervisor and imports
        rss_before = rss_kib()
        start = time.perf_counter()
        jobs = [pool.create("sleep", ["1000"]) for _ in range(n)]
        seconds = time.perf_counter() - start
        running = sum(pool.status(j).running for j in jobs)
        rss_after = rss_kib()
        threads = threading.active_count()
    per_job = (rss_after - rss_before) * 1024 / n
    print(
        f"{n} sleeping jobs: {running} running, created at {n / seconds:,.0f}/s, "
        f"threads {threads_before} -> {threads}, RSS +{(rss_after - rss_before) // 1024} MiB, "
        f"{per_job / 1024:.1f} KiB per job (target <= 50 KiB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--no-warm", action="store_true", help="do not pre-touch RAM (see warm_memory)"
    )
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    bench_spawn(200 if args.quick else 1000)
    bench_capture(GIB // 16 if args.quick else GIB, warm=not args.no_warm)
    bench_many(200 if args.quick else 2000)


if __name__ == "__main__":
    main()
