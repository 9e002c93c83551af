"""``jobkit serve`` in a subprocess, on a free port of 127.0.0.1.

For what only a real process shows: its exit, its signals, what it prints, its
threads and descriptors in ``/proc``, a SIGKILL, another user or environment.
tests/client and tests/cli use one per module (``live_server``), with a PKI
of their own (``pki_root``) and a fresh identity per test (``certs``).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from jobkit import pki as jobkit_pki
from tests.support.measured import measured
from tests.support.pki import new_client

_SERVING = re.compile(rb"Serving on https://(\S+?):(\d+) ")


class ServerProcess:
    """A running ``jobkit serve`` (`start` it, then `stop` it).

    Attributes:
        process: The ``jobkit serve`` process (stdout is a pipe nobody reads
            once it serves: ``-q`` keeps it quiet).
        address: ``(host, port)`` where it listens.
        printed: What it printed before it served, line by line.
    """

    def __init__(self, process: subprocess.Popen[bytes], address: tuple[str, int],
                 printed: list[str], log: IO[bytes]) -> None:
        self.process = process
        self.address = address
        self.printed = printed
        self._log = log

    @classmethod
    def start(cls, certs: Path | None, *options: str, env: Mapping[str, str] | None = None,
              prefix: Sequence[str] = (), cwd: str | None = None,
              timeout: float = 30.0) -> ServerProcess:
        """Run ``jobkit serve -q OPTIONS...`` (``--certs`` unless None) and wait till it serves.

        ``prefix`` goes before the Python command (``setpriv ...``, ``prlimit ...``).
        """
        command = [*prefix, sys.executable, "-m", "jobkit", "serve", "--listen", "127.0.0.1:0",
                   "-q", *options]
        if certs is not None:
            command += ["--certs", str(certs)]
        # stderr to a file: a full pipe nobody reads would block the server.  The
        # file lives as long as the server does: `stop` closes it.
        log = tempfile.TemporaryFile()  # noqa: SIM115
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                   env=measured(env), cwd=cwd)
        try:
            address, printed = wait_for_address(process, log, timeout)
        except BaseException:
            cls(process, ("", 0), [], log).stop(timeout=timeout)
            raise
        return cls(process, address, printed, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def host_port(self) -> str:
        """Where it listens, as ``--server`` and `jobkit.client.Client` take it."""
        host, port = self.address
        return f"{host}:{port}"

    def log(self) -> str:
        """What it wrote on stderr so far."""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` unless it has ended; wait for it (SIGKILL after ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()
        self._log.close()
        return self.process.returncode


def wait_for_address(process: subprocess.Popen[bytes], log: IO[bytes],
                     timeout: float) -> tuple[tuple[str, int], list[str]]:
    """Read ``jobkit serve``'s stdout until it says where it listens; fail if it exits.

    Returns the address and what it printed until then, line by line.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    fd = process.stdout.fileno()
    while True:
        match = _SERVING.search(seen)
        if match:
            printed = seen.decode(errors="replace").splitlines(keepends=True)
            return (match.group(1).decode(), int(match.group(2))), printed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"jobkit serve did not start in {timeout}s: {seen!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            process.wait(timeout)
            log.seek(0)
            error = log.read().decode(errors="replace")
            raise RuntimeError(f"jobkit serve exited ({process.returncode}): {seen!r} {error}")
        seen += data


@contextmanager
def server_process(certs: Path | None, *options: str, env: Mapping[str, str] | None = None,
                   prefix: Sequence[str] = (), timeout: float = 30.0,
                   cwd: str | None = None) -> Iterator[ServerProcess]:
    """`ServerProcess.start` for the length of a block (then SIGTERM, SIGKILL if need be)."""
    served = ServerProcess.start(certs, *options, env=env, prefix=prefix, cwd=cwd,
                                 timeout=timeout)
    try:
        yield served
    finally:
        served.stop(timeout=timeout)


@contextmanager
def serving(certs: Path | None, *, env: Mapping[str, str] | None = None,
            extra: tuple[str, ...] = (), timeout: float = 30.0) -> Iterator[str]:
    """`server_process`, as the ``"127.0.0.1:PORT"`` a client is given."""
    with server_process(certs, *extra, env=env, timeout=timeout) as served:
        yield served.host_port


def make_pki(root: Path) -> Path:
    """A PKI with clients alice and bob (made in-process: fast)."""
    return jobkit_pki.init_pki(root, clients=["alice", "bob"])


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PKI of the module's ``live_server``."""
    return make_pki(tmp_path_factory.mktemp("live-pki") / "pki")


# Module scope, not session: the server is our child process, and other
# tests (tests/core) check that the test process has no children left.
@pytest.fixture(scope="module")
def live_server(pki_root: Path) -> Iterator[str]:
    """``jobkit serve`` in a subprocess; its address, ``"127.0.0.1:PORT"``.

    Clients may choose ``ring`` besides the default ``file``; nothing else.
    """
    with serving(pki_root, extra=("--allow-backend", "ring")) as address:
        yield address


@pytest.fixture
def certs(pki_root: Path) -> Path:
    """A client folder for a CN no other test uses: an empty pool on ``live_server``."""
    return new_client(pki_root)
