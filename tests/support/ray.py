"""A real one-node Ray cluster for the session (``ray_cluster``), on free loopback ports.

Started on first use with ``ray start --head --num-cpus=2`` and the
object store at 100 MB (about 1 GiB of RAM, 5-10 s), in a session of its
own and a temporary folder of its own; stopped at the end by killing that
session's processes and what they started (not ``ray stop --force``, which
would kill every Ray process on the machine, other test runs' clusters
included).  Where Ray is not installed or the cluster cannot start, tests
that need it skip with the reason (``-rs`` prints it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import process_stats

#: How long a cluster may take to start on a busy 2-core machine.
START_TIMEOUT = 120.0


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RayCluster:
    """A running one-node cluster.

    Attributes:
        address: Its job submission address, ``http://127.0.0.1:PORT``.
        folder: Its temporary folder (logs, sockets).
        env: The environment it was started with (PATH leads to this Python).
    """

    def __init__(self, address: str, folder: Path, session: int, env: dict[str, str]) -> None:
        self.address = address
        self.folder = folder
        self.env = env
        self._session = session

    @classmethod
    def start(cls) -> RayCluster:
        """Start one; raise ``RuntimeError`` with the reason if it cannot start."""
        ray = Path(sys.executable).with_name("ray")
        if not ray.exists():
            raise RuntimeError(f"no {ray}: install the extra, pip install -e '.[ray]'")
        folder = Path(tempfile.mkdtemp(prefix="jobkit-ray-"))
        dashboard = free_port()
        ports = {name: free_port() for name in (
            "port", "ray-client-server-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
            "node-manager-port", "object-manager-port")}
        # Jobs run `python3 -m jobkit...` from PATH: this Python, with jobkit.  Not
        # measured by coverage (.ci/run): its start-up hook in each of Ray's many
        # Python processes would slow the cluster; tests/executors/test_ray_entry.py
        # runs the wrapper itself, measured.
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        env.pop("COVERAGE_PROCESS_START", None)
        command = [str(ray), "start", "--head", "--num-cpus=2", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={dashboard}", "--object-store-memory=100000000",
                   "--disable-usage-stats", "--min-worker-port=0", "--max-worker-port=0",
                   f"--temp-dir={folder}",
                   *(f"--{name}={port}" for name, port in ports.items())]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        cluster = cls(f"http://127.0.0.1:{dashboard}", folder, process.pid, env)
        try:
            out, _ = process.communicate(timeout=START_TIMEOUT)
            if process.returncode != 0:
                raise RuntimeError(f"ray start failed ({process.returncode}): "
                                   f"{out.decode(errors='replace')[-1500:]}")
            cluster._wait_for_jobs_api()
        except BaseException:
            process.kill()
            cluster.stop()
            raise
        return cluster

    def _wait_for_jobs_api(self) -> None:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                JobSubmissionClient(self.address)
                return
            except (ConnectionError, RuntimeError) as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray's jobs API never answered: {error}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill every process of the cluster and what they started; remove its folder."""
        deadline = time.monotonic() + 30
        while True:
            doomed = self._processes()
            if not doomed:
                break
            for pid in doomed:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray processes survive SIGKILL: {doomed}")
            time.sleep(0.05)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _processes(self) -> list[int]:
        """Live processes of the cluster's session, and everything below them."""
        stats = {pid: fields for pid, fields in process_stats() if fields[0] != b"Z"}
        found = {pid for pid, fields in stats.items() if int(fields[3]) == self._session}
        while True:
            below = {pid for pid, fields in stats.items() if int(fields[1]) in found} - found
            if not below:
                return sorted(found)
            found |= below


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """The session's Ray cluster (skips the test, with the reason, if none can run)."""
    try:
        import ray.job_submission  # noqa: F401
    except ImportError as error:
        pytest.skip(f"Ray is not installed (pip install -e '.[test,ray]'): {error}")
    try:
        cluster = RayCluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot start a Ray cluster here: {error}")
    try:
        yield cluster
    finally:
        cluster.stop()
