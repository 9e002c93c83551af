"""A real ``jobkit serve`` in a subprocess, on 127.0.0.1, with certificates from our PKI.

Shared by tests/client and tests/cli (the latter loads this file by path).
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

from jobkit.server import pki

_SERVING = re.compile(rb"Serving on https://(\S+?):(\d+) ")
_names = itertools.count(1)


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
            yield _wait_for_address(process, log, timeout)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()


def _wait_for_address(process: subprocess.Popen[bytes], log: IO[bytes], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    fd = process.stdout.fileno()
    while True:
        match = _SERVING.search(seen)
        if match:
            return f"{match.group(1).decode()}:{match.group(2).decode()}"
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
