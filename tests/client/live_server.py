"""A real ``jobkit serve`` in a subprocess, on 127.0.0.1, with certificates from our PKI.

Shared by tests/client and tests/cli, whose conftests import its fixtures.
"""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from jobkit import pki

_SERVING = re.compile(rb"Serving on https://(\S+?):(\d+) ")
_names = itertools.count(1)


@pytest.fixture(scope="module")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("live-pki") / "pki")


# Module scope, not session: the server is our child process, and other
# tests (tests/core) check that the test process has no children left.
@pytest.fixture(scope="module")
def server(pki_root: Path) -> Iterator[str]:
    """``jobkit serve`` in a subprocess; its address, ``"127.0.0.1:PORT"``.

    Clients may choose ``ring`` besides the default ``file``; nothing else.
    """
    with serving(pki_root, extra=("--allow-backend", "ring")) as address:
        yield address


@pytest.fixture
def certs(pki_root: Path) -> Path:
    """A client folder for a CN no other test uses: an empty pool on the server."""
    return new_client(pki_root)


def make_pki(root: Path) -> Path:
    """A PKI with clients alice and bob (made in-process: fast)."""
    return pki.init_pki(root, clients=["alice", "bob"])


def new_client(root: Path, prefix: str = "t") -> Path:
    """A fresh client identity: its own, empty, job pool on the server."""
    return pki.issue_client(root, f"{prefix}{os.getpid()}-{next(_names)}")


@contextmanager
def serving(certs: Path | None, *, env: Mapping[str, str] | None = None,
            extra: tuple[str, ...] = (), timeout: float = 30.0) -> Iterator[str]:
    """Run ``jobkit serve`` on a free port; yield ``"127.0.0.1:PORT"`` once it listens."""
    command = [sys.executable, "-m", "jobkit", "serve", "--listen", "127.0.0.1:0", "-q", *extra]
    if certs is not None:
        command += ["--certs", str(certs)]
    # stderr to a file: a full pipe nobody reads would block the server.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log,
            env=None if env is None else dict(env),
        )
        try:
            host, port = wait_for_address(process, log, timeout)
            yield f"{host}:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()


def wait_for_address(process: subprocess.Popen[bytes], log: IO[bytes],
                     timeout: float) -> tuple[str, int]:
    """Read ``jobkit serve``'s stdout until it says where it listens; fail if it exits."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    fd = process.stdout.fileno()
    while True:
        match = _SERVING.search(seen)
        if match:
            return match.group(1).decode(), int(match.group(2))
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
