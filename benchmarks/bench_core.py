"""Core library benchmarks: each figure is printed next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_core.py [--quick]

1. create + wait of `true`, against raw `subprocess.Popen(["true"]).wait()`,
   `os.posix_spawn` + `os.waitpid`, and the hand-off alone (`HandOff`: `os.posix_spawn`,
   its pidfd reaped by another thread waiting in epoll, which wakes the caller
   through a `threading.Event`: a supervisor with no pool around it); then, in a
   separate instrumented run, where a job's time goes: spawn, the rest of `create`,
   the process's life, the supervisor (from its first look at the job to the job's
   end), recording the end, the wake-up.
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
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import jobkit.core.pool
import jobkit.core.spawn
from jobkit import JobPool
from jobkit.core.job import Job
from jobkit.core.supervisor import Supervisor

GIB = 1 << 30


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def rate(count: int, seconds: float) -> float:
    return count / seconds


def posix_spawn_wait() -> None:
    os.waitpid(os.posix_spawn(TRUE, ["true"], os.environ, setsid=True), 0)


class HandOff:
    """The least a supervisor thread costs: spawn, another thread sees the pidfd
    in epoll and reaps, the caller is woken by an Event.  No pipes, no pool."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._stop = os.eventfd(0, os.EFD_CLOEXEC)
        self._epoll.register(self._stop, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                if fd == self._stop:
                    return
                self._handlers[fd]()

    def close(self) -> None:
        os.eventfd_write(self._stop, 1)
        self._thread.join()
        self._epoll.close()
        os.close(self._stop)

    def spawn_wait(self) -> None:
        pid = os.posix_spawn(TRUE, ["true"], os.environ, setsid=True)
        pidfd = os.pidfd_open(pid)
        done = threading.Event()

        def reap() -> None:
            self._epoll.unregister(pidfd)
            del self._handlers[pidfd]
            os.close(pidfd)
            os.waitpid(pid, 0)
            done.set()

        self._handlers[pidfd] = reap
        self._epoll.register(pidfd, select.EPOLLIN)
        done.wait()


TRUE = next(path for path in ("/usr/bin/true", "/bin/true") if os.path.exists(path))


def bench_spawn(n: int) -> None:
    # Interleave rounds so a busy moment of the machine hits every side alike.
    raw_time = {False: 0.0, None: 0.0}
    ours_time = {False: 0.0, None: 0.0}
    bare_time = handoff_time = 0.0
    handoff = HandOff()
    contained = False
    pools = {flag: JobPool(cgroups=flag) for flag in (False, None)}
    try:
        for pool in pools.values():
            pool.wait(pool.create("true"))  # warm up
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
            start = time.perf_counter()
            for _ in range(n // 5):
                posix_spawn_wait()
            bare_time += time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(n // 5):
                handoff.spawn_wait()
            handoff_time += time.perf_counter() - start
        contained = pools[None]._contain if hasattr(pools[None], "_contain") else (
            pools[None]._executor._contain  # type: ignore[attr-defined]
        )
    finally:
        handoff.close()
        for pool in pools.values():
            pool.close()
    for flag in (False, None):
        raw, ours = n / raw_time[flag], n / ours_time[flag]
        label = (
            "process group only"
            if flag is False
            else ("cgroups=None: cgroups per job" if contained else "no cgroups here")
        )
        target = "target >= 1.0x" if flag is False else "no target"
        print(
            f"spawn: Popen+wait {raw:,.0f}/s | create+wait, {label}: {ours:,.0f}/s "
            f"| ratio {ours / raw:.2f}x ({target})"
        )
    bare, handed = n / bare_time, n / handoff_time
    print(f"  os.posix_spawn+waitpid {bare:,.0f}/s ({bare * raw_time[False] / n:.2f}x Popen+wait)"
          f" | the hand-off alone {handed:,.0f}/s ({handed * raw_time[False] / n:.2f}x)")
    breakdown(n)


def breakdown(n: int) -> None:
    """Where one create + wait of `true` spends its time (process group only).

    Timestamps from wrappers around `spawn`, the supervisor's first handler
    of the job, `Job.finish` and the pool's recording of the end; the
    wrappers cost a few microseconds each, so this run is slower than the
    one above, and its medians do not add up to its mean.
    """
    stamps: dict[str, int] = {}
    now = time.perf_counter_ns
    restore: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        restore.append((owner, name, original))
        setattr(owner, name, make(original))

    def timed_spawn(original: Any) -> Any:
        def spawn(*args: Any, **kwargs: Any) -> Any:
            stamps["spawn"] = now()
            try:
                return original(*args, **kwargs)
            finally:
                stamps["spawned"] = now()
        return spawn

    def first_look(original: Any) -> Any:
        def handler(self: Supervisor, job: Job, *args: Any) -> Any:
            stamps.setdefault("looked", now())
            return original(self, job, *args)
        return handler

    def timed_finish(original: Any) -> Any:
        def finish(self: Job, outcome: Any, later: Any = None) -> None:
            stamps["finish"] = now()
            on_end = self.on_end
            if on_end is not None:
                def recorded(job: Job) -> None:
                    on_end(job)
                    stamps["recorded"] = now()
                self.on_end = recorded
            original(self, outcome, later)
        return finish

    # Wherever the pool's executor took `spawn` from (the pool, or `local`).
    for module in (jobkit.core.pool, sys.modules.get("jobkit.executors.local")):
        if getattr(module, "spawn", None) is jobkit.core.spawn.spawn:
            wrap(module, "spawn", timed_spawn)
    wrap(Supervisor, "_drain", first_look)
    wrap(Supervisor, "_reap", first_look)
    wrap(Job, "finish", timed_finish)
    parts: dict[str, list[int]] = {
        key: [] for key in ("spawn", "rest of create", "process runs", "supervisor",
                            "recording the end", "wake-up", "total")
    }
    try:
        with JobPool(cgroups=False) as pool:
            pool.wait(pool.create("true"))
            for _ in range(n):
                stamps.clear()
                start = now()
                job = pool.create("true")
                created = now()
                pool.wait(job)
                woken = now()
                deadline = time.monotonic() + 5  # the end is recorded after the wake-up
                while "recorded" not in stamps and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if "recorded" not in stamps or "spawn" not in stamps:
                    continue
                parts["spawn"].append(stamps["spawned"] - stamps["spawn"])
                parts["rest of create"].append(created - start - parts["spawn"][-1])
                parts["process runs"].append(stamps["looked"] - created)
                parts["supervisor"].append(stamps["finish"] - stamps["looked"])
                parts["recording the end"].append(stamps["recorded"] - stamps["finish"])
                parts["wake-up"].append(woken - stamps["finish"])
                parts["total"].append(woken - start)
    finally:
        for owner, name, original in reversed(restore):
            setattr(owner, name, original)
    if not parts["total"]:
        print("  breakdown: nothing measured (spawn not found to wrap)")
        return
    print(f"  where a create+wait goes ({len(parts['total'])} jobs, instrumented; median us):")
    print("    " + " | ".join(
        f"{key} {statistics.median(values) / 1000:.0f}" for key, values in parts.items()
    ))
    print("    (process runs: from create's return to the supervisor's first look at the job;"
          " wake-up: from the outcome set to wait's return, which includes recording the"
          " end while it holds the GIL)")


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
