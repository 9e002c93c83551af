"""Limits benchmark: what a job's limits cost, and what each way of starting a job inside
its cgroup costs, each next to its baselines in the same run.

    .venv/bin/python benchmarks/bench_limits.py [--quick]

Needs root (or a delegated cgroup subtree).

1. create + wait of `true`: raw `Popen` + `wait`, jobkit without limits, jobkit with
   `Limits(memory=...)`, with cpu + memory + pids, every job in cgroups without limits
   (`cgroups=None`), and `network=False`.  Target: limits cost at most 0.5 ms per job.
2. Start steps: `Popen(["true"]).wait()` into one cgroup, by each way tried to be in it
   before the command's first instruction (and the one that is not: moving it after exec).
3. io limits: `dd` writing and reading with O_DIRECT (`oflag=direct`, `iflag=direct`) in a
   folder on the block device of the working directory, unthrottled and under
   `io_write_bps` / `io_read_bps`: the rate dd achieved against the limit, as a ratio.
4. Tree ends: how long a job whose main process exited is still `running` after the last
   process of its tree is gone (jobkit polls the tree: cgroup v1 sends no event), when
   that process exits by itself and when `stop` kills it.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jobkit import JobPool, Limits, State
from jobkit.core import cgroups, hierarchies
from jobkit.core.models import Usage


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children: what a job costs the machine."""
    ours = resource.getrusage(resource.RUSAGE_SELF)
    theirs = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ours.ru_utime + ours.ru_stime + theirs.ru_utime + theirs.ru_stime


def interleaved(
    runs: dict[str, Callable[[], None]], n: int, rounds: int
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per call of each run, rounds interleaved so that
    noise hits all alike.  CPU time barely moves with other work on the machine."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start, used = time.perf_counter(), cpu_seconds()
            for _ in range(n):
                run()
            times[name].append(((time.perf_counter() - start) / n, (cpu_seconds() - used) / n))
    return {
        name: (statistics.median(w for w, _ in values), statistics.median(c for _, c in values))
        for name, values in times.items()
    }


def bench_jobs(n: int, rounds: int) -> None:
    tree = cgroups.detect()
    plain, contained = JobPool(), JobPool(cgroups=None)
    memory = Limits(memory="256M")
    several = Limits(cpu=1, memory="256M", pids=100)

    def job(pool: JobPool, **options: object) -> Callable[[], None]:
        return lambda: pool.wait(pool.create("true", **options))  # type: ignore[arg-type]

    runs: dict[str, Callable[[], None]] = {
        "Popen + wait": lambda: subprocess.Popen(["true"]).wait(),
        "jobkit, no limits": job(plain),
        "jobkit, memory limit": job(plain, limits=memory),
        "jobkit, cpu + memory + pids": job(plain, limits=several),
        "jobkit, cgroups=None, no limits": job(contained),
    }
    if os.geteuid() == 0:
        runs["jobkit, network=False"] = job(plain, network=False)
    try:
        for run in runs.values():  # warm up: imports, the supervisor, the first cgroups
            run()
        medians = interleaved(runs, n, rounds)
    finally:
        plain.close()
        contained.close()
    where = "none" if tree is None else ", ".join(
        sorted({f"{name}: {by}" for name, by in tree.enforcement().items()})
    )
    print(f"create + wait of `true`, {rounds} rounds of {n} (enforcement here: {where})")
    base, base_cpu = medians["jobkit, no limits"]
    for name, (seconds, cpu) in medians.items():
        extra = ""
        if name.startswith("jobkit") and name != "jobkit, no limits":
            extra = (f" | {1e3 * (seconds - base):+.3f} ms wall, {1e3 * (cpu - base_cpu):+.3f} ms"
                     " CPU vs no limits")
            if "limit" in name and "no limits" not in name:
                extra += " (target <= 0.5 ms)"
        print(f"  {name:32s} {1e3 * seconds:6.3f} ms per job ({1e3 * cpu:.3f} ms CPU){extra}")


def bench_start_steps(n: int, rounds: int) -> None:
    group = _test_group()
    if group is None:
        print("start steps: no writable cgroup here, skipped")
        return
    folder, version = group
    procs = folder / "cgroup.procs"
    print(f"start steps into one existing cgroup ({version}: {folder}), {rounds} rounds of {n}:")

    def none() -> None:
        subprocess.Popen(["true"]).wait()

    def after_exec() -> None:  # the window: `true` may have run before the move
        process = subprocess.Popen(["true"])
        try:
            procs.write_text(str(process.pid))
        except OSError:
            pass  # it has exited already
        process.wait()

    def preexec() -> None:  # Python in the child: fork instead of vfork
        def join() -> None:
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)

        subprocess.Popen(["true"], preexec_fn=join).wait()

    def sh_step() -> None:  # jobkit's v2 start step
        subprocess.Popen(["/bin/sh", "-c", 'echo $$ >"$0" || exit 125; exec "$@"',
                          str(procs), "true"]).wait()

    def held_on_pipe() -> None:  # parent moves the child, then lets it exec
        read_end, write_end = os.pipe()
        process = subprocess.Popen(
            ["/bin/sh", "-c", 'read x <&3; exec 3<&-; exec "$@"', "sh", "true"],
            pass_fds=(read_end,),
        )
        os.close(read_end)
        procs.write_text(str(process.pid))
        os.write(write_end, b"\n")
        os.close(write_end)
        process.wait()

    runs = {"none (not in the cgroup)": none, "move after exec (a window)": after_exec,
            "preexec_fn (fork, no vfork)": preexec, "sh start step (v2 way)": sh_step,
            "child held on a pipe": held_on_pipe}
    if version == "cgroup v1":
        tasks = folder / "tasks"

        def thread_move() -> None:  # jobkit's v1 way: the spawning thread joins, forks, leaves
            tid = str(threading.get_native_id())
            origin = Path(str(folder.parent))  # back to where the thread came from
            tasks.write_text(tid)
            try:
                process = subprocess.Popen(["true"])
            finally:
                (origin / "tasks").write_text(tid)
            process.wait()

        runs["spawning thread moved (v1 way)"] = thread_move
    try:
        medians = interleaved(runs, n, rounds)
    finally:
        folder.rmdir()
    base, base_cpu = medians["none (not in the cgroup)"]
    for name, (seconds, cpu) in medians.items():
        print(f"  {name:32s} {1e3 * seconds:6.3f} ms per job | {1e3 * (seconds - base):+.3f} ms"
              f" wall, {1e3 * (cpu - base_cpu):+.3f} ms CPU")


#: dd's last line: "268435456 bytes (268 MB, 256 MiB) copied, 0.151262 s, 1.8 GB/s".
_DD_DONE = re.compile(rb"^(\d+) bytes .* copied, ([\d.]+) s,", re.M)
MIB = 1 << 20


def _dd(pool: JobPool, folder: str, direction: str, size: int,
        limits: Limits | None) -> tuple[float, Usage | None]:
    """Run dd in a job with O_DIRECT; the rate it reports (bytes/s) and the job's usage."""
    count = size // MIB
    if direction == "write":
        args = ["if=/dev/zero", "of=data", "bs=1M", f"count={count}", "oflag=direct"]
    else:
        args = ["if=data", "of=/dev/null", "bs=1M", f"count={count}", "iflag=direct"]
    job = pool.create("dd", args, cwd=folder, limits=limits)
    status = pool.wait(job, 600)
    report = pool.output(job).stderr
    done = _DD_DONE.search(report)
    if status.state is not State.COMPLETED or status.exit_code != 0 or done is None:
        raise RuntimeError(f"dd {direction} failed: {status.state.value} {status.error or ''}"
                           f" {report.decode(errors='replace').strip()}")
    pool.delete(job)
    return int(done[1]) / float(done[2]), status.usage


def bench_io(rounds: int, seconds: float) -> None:
    tree = cgroups.detect()
    enforced = {} if tree is None else tree.enforcement()
    # tempfile's folder if on a disk, else one next to ours: the device of the job's cwd.
    where = tempfile.gettempdir()
    if cgroups.block_device(where) is None:
        where = os.getcwd()
    device = cgroups.block_device(where)
    if device is None or "io_write_bps" not in enforced:
        print("io limits: no block device behind the working directory, or no blkio/io"
              " controller for jobkit here: skipped")
        return
    with tempfile.TemporaryDirectory(dir=where, prefix="jobkit-bench-io-") as folder, \
            JobPool() as pool:
        # Unthrottled baseline first: it also makes the file the reads read.
        size = 256 * MIB
        baseline = {d: _dd(pool, folder, d, size, None)[0] for d in ("write", "read")}
        # A limit the disk can well exceed, so that only the throttle sets the pace.
        limit = min(32 * MIB, int(min(baseline.values()) / 4) // MIB * MIB)
        size = max(MIB, int(limit * seconds) // MIB * MIB)
        print(f"io limits ({enforced['io_write_bps']}, device {device[0]}:{device[1]} of {where}),"
              f" dd of {size // MIB} MiB with O_DIRECT under {limit // MIB} MiB/s,"
              f" {rounds} rounds:")
        for direction, name in (("write", "io_write_bps"), ("read", "io_read_bps")):
            limits = Limits(**{name: limit})  # type: ignore[arg-type]
            ratios, unthrottled, counted = [], [], []
            for _ in range(rounds):  # interleaved with the baseline, as noise comes
                unthrottled.append(_dd(pool, folder, direction, 64 * MIB, None)[0])
                rate, usage = _dd(pool, folder, direction, size, limits)
                ratios.append(rate / limit)
                if usage is not None:
                    done = usage.io_write_bytes if direction == "write" else usage.io_read_bytes
                    counted.append(done)
            low, high = min(ratios), max(ratios)
            print(f"  {direction:5s} {name:13s} achieved/limit {statistics.median(ratios):.3f}"
                  f" (range {low:.3f}-{high:.3f}); unthrottled"
                  f" {statistics.median(unthrottled) / MIB:.0f} MiB/s"
                  f" = {statistics.median(unthrottled) / limit:.0f}x the limit;"
                  f" counted by the job's cgroup: {_counted(counted, size)}")


def _counted(counted: list[int | None], size: int) -> str:
    if not counted or None in counted:
        return "not known"
    return f"{min(counted) / size:.2f}-{max(counted) / size:.2f} of the bytes dd moved"


def bench_tree_ends(jobs: int) -> None:
    if cgroups.detect() is None:
        print("tree ends: no writable cgroup here, skipped")
        return
    print(f"tree ends: a job's end after the last process of its tree, {jobs} jobs at once:")
    with JobPool(cgroups=True) as pool:
        for linger in (0.3, 2.0):
            # The main process exits at once; its child prints when it exits, then is gone.
            script = f"(sleep {linger}; date +%s.%N) & exit 0"
            started = [pool.create("sh", ["-c", script]) for _ in range(jobs)]
            lags = []
            for job in started:
                status = pool.wait(job, 60)
                gone = float(pool.output(job).stdout)
                assert status.ended_at is not None
                lags.append(status.ended_at.timestamp() - gone)
                pool.delete(job)
            print(f"  {f'tree left for {linger:g} s:':32s} {_spread(lags)}")
        started = [pool.create("sh", ["-c", "sleep 1000 & echo up; exit 0"]) for _ in range(jobs)]
        for job in started:
            next(iter(pool.follow(job, "stdout")))
        time.sleep(1.5)  # the benchmark's own pace: let the checks back off to their slowest
        lags = []
        for job in started:
            begin = time.monotonic()
            pool.stop(job, "KILL")
            pool.wait(job, 60)
            lags.append(time.monotonic() - begin)
            pool.delete(job)
        print(f"  {'stop KILL to the job ended:':32s} {_spread(lags)}")


def _spread(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return (f"median {1e3 * statistics.median(ordered):6.1f} ms, p90 {1e3 * p90:6.1f} ms,"
            f" max {1e3 * ordered[-1]:6.1f} ms")


def _test_group() -> tuple[Path, str] | None:
    """An empty cgroup next to ours: in v1 memory if writable, else in v2."""
    found = hierarchies.current()
    ordered = [h for h in found if "memory" in h.controllers and h.version == 1]
    ordered += [h for h in found if h.version == 2]
    for hierarchy in ordered:
        folder = hierarchy.own / f"jobkit-bench-{os.getpid()}"
        try:
            folder.mkdir()
        except OSError:
            continue
        return folder, f"cgroup v{hierarchy.version}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, for a smoke run")
    parser.add_argument("--only", choices=("jobs", "steps", "io", "trees"),
                        help="run one part only")
    args = parser.parse_args()
    n, rounds = (50, 3) if args.quick else (200, 7)
    if args.only in (None, "jobs"):
        bench_jobs(n, rounds)
    if args.only in (None, "steps"):
        bench_start_steps(n, rounds)
    if args.only in (None, "io"):
        bench_io(rounds=2 if args.quick else 3, seconds=1.0 if args.quick else 3.0)
    if args.only in (None, "trees"):
        bench_tree_ends(20 if args.quick else 100)


if __name__ == "__main__":
    main()
