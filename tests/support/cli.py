"""The real ``jobkit`` executable, run in a subprocess as a user runs it."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from tests.support.measured import measured


@attrs.frozen
class Run:
    """What one ``jobkit`` process did."""

    args: tuple[str, ...]
    code: int
    out: bytes
    err: bytes

    @property
    def stdout(self) -> str:
        return self.out.decode()

    @property
    def stderr(self) -> str:
        return self.err.decode()

    def error_line(self) -> str:
        """The one error line; fails unless stderr is exactly one ``jobkit:`` line."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self
        assert lines[0].startswith("jobkit: "), self
        assert "Traceback" not in self.stderr
        return lines[0]

    def status_head(self) -> str:
        """``jobkit status``'s one line up to what the job used (`` · cpu ...``, which varies)."""
        lines = self.stdout.splitlines()
        assert len(lines) == 1, self
        return lines[0].split(" · ")[0]


#: ``jobkit(*args, input=None, timeout=60, **extra_env)``: the ``jobkit`` fixture.
Jobkit = Callable[..., Run]


def base_env(**extra: str) -> dict[str, str]:
    """A predictable environment: no colour, a fixed width, no inherited jobkit settings."""
    env = {k: v for k, v in measured().items() if not k.startswith("JOBKIT_")}
    env.update(NO_COLOR="1", COLUMNS="100", TERM="dumb")
    env.update(extra)
    return env


def run_jobkit(*args: str | Path, env: Mapping[str, str], input: bytes | None = None,
               timeout: float = 60) -> Run:
    """Run ``jobkit ARGS...`` to its end."""
    command = [sys.executable, "-m", "jobkit", *map(str, args)]
    done = subprocess.run(command, capture_output=True, input=input, env=dict(env),
                          timeout=timeout, check=False)
    return Run(tuple(map(str, args)), done.returncode, done.stdout, done.stderr)


def read_until(fd: int, wanted: bytes, timeout: float = 20) -> bytes:
    """Read ``fd`` (a running process's pipe) until ``wanted`` arrived; fail at the deadline."""
    deadline = time.monotonic() + timeout
    seen = b""
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"never saw {wanted!r}, only {seen!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 4096)
            assert data, f"closed before {wanted!r}: {seen!r}"
            seen += data
    return seen


# Runs `jobkit ARGS...` and, at exit, writes every imported module's name to a file.
PROBE = """
import atexit, json, sys
modules_file = sys.argv[1]
atexit.register(lambda: json.dump(sorted(sys.modules), open(modules_file, "w")))
sys.argv = ["jobkit", *sys.argv[2:]]
from jobkit.cli.main import main
main()
"""


def imported_modules(folder: Path, env: Mapping[str, str], *args: str,
                     cwd: Path | None = None) -> tuple[int, set[str]]:
    """Run ``jobkit ARGS...``; its exit code and every module it imported.

    The probe runs unmeasured even under .ci/run's coverage: what coverage
    imports (pathlib, json, sqlite3) would count as the command's.
    """
    modules_file = folder / "modules.json"
    unmeasured = {k: v for k, v in env.items() if k != "COVERAGE_PROCESS_START"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(modules_file), *args],
                          capture_output=True, env=unmeasured, timeout=60, check=False, cwd=cwd)
    return done.returncode, set(json.loads(modules_file.read_text()))
