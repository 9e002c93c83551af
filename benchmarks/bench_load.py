"""Load benchmark: N clients with their own certificates drive jobs on one ``jobkit serve``.

    .venv/bin/python benchmarks/bench_load.py [--seconds 30] [--clients 32] [--backend tempfile]

The same driver as tests/security/test_load.py (`tests.security.load`): each
client creates a job that writes known bytes, follows it, polls its status,
reads both streams raw and as JSON, lists, deletes; every byte is checked by
SHA-256.  Prints requests, jobs, bytes, errors and duration, and the server's
descriptors, threads and children before, at their peak, and after.  On the
2-core machine the clients, the server and the jobs share the cores: the
rates say what the whole machine does, not the server alone.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

# The driver lives with the tests that also use it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobkit.pki import init_pki, issue_client
from tests.security.conftest import (
    descendants,
    fd_count,
    new_api_client,
    server_process,
    task_count,
)
from tests.security.load import report, run_load


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--backend", default="tempfile")
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--max-size", type=int, default=128 << 10,
                        help="largest job output (bytes of randomness; stdout is twice that)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        pki = init_pki(Path(folder) / "pki", clients=[])
        identities = [(f"load-{i}", issue_client(pki, f"load-{i}"))
                      for i in range(options.clients)]
        with server_process(pki, "--backend", options.backend,
                            "--threads", str(options.threads)) as served:
            warm = new_api_client(served.address, pki, "warm")
            job_id = warm.create("true")
            warm.wait(job_id)
            warm.request("DELETE", f"/jobs/{job_id}")
            warm.close()
            while descendants(served.pid):  # the warm-up job's reaping, bounded below
                time.sleep(0.01)
            pid = served.pid
            baseline = {"fds": fd_count(pid), "threads": task_count(pid)}
            peak = {**baseline, "children": 0}

            def sample() -> None:
                peak["fds"] = max(peak["fds"], fd_count(pid))
                peak["threads"] = max(peak["threads"], task_count(pid))
                peak["children"] = max(peak["children"], len(descendants(pid)))

            figures = run_load(served.address, identities, options.seconds,
                               sizes=(1 << 10, options.max_size), sample=sample)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                    descendants(pid) or fd_count(pid) > baseline["fds"]):
                time.sleep(0.05)
            after = {"fds": fd_count(pid), "threads": task_count(pid),
                     "children": len(descendants(pid))}
            print(f"server: backend {options.backend}, {options.threads} threads, "
                  f"peak RSS {peak_rss_kib(pid) / 1024:.0f} MiB")
            print(report(figures, {"baseline": baseline, "peak": peak, "after": after}))
    return 1 if figures.errors else 0


if __name__ == "__main__":
    sys.exit(main())
