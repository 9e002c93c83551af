"""CLI start-up: ``jobkit status ID``, process start to exit, against a running server.

    .venv/bin/python benchmarks/bench_cli.py [--runs N]

Measured in the same run, interleaved (one of each per round, so that noise
from other work on the machine hits all of them alike):

* ``jobkit status ID`` (the installed ``jobkit`` script) against ``jobkit serve``
  on 127.0.0.1, mutual TLS 1.3 with certificates from our PKI;
* ``supervisorctl status`` against ``supervisord`` on a Unix socket (no TLS at
  all), started here with a tiny configuration in a temporary folder;
  ``supervisor`` is pip-installed into this venv if missing;
* ``python -c "import click, rich.console, ssl, http.client"``: what a naive
  click + rich + https CLI pays before doing anything;
* ``python -c pass``: the interpreter alone (the floor).

Prints the median and best times and the ratios.  Target: ``jobkit status``
faster than ``supervisorctl status`` (ratio < 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobkit.pki import init_pki

PYTHON = sys.executable
BIN = Path(PYTHON).parent
START_TIMEOUT = 30.0


def wait_for_line(process: subprocess.Popen[bytes], pattern: re.Pattern[bytes]) -> re.Match[bytes]:
    """Read the process's stdout until ``pattern`` matches, within `START_TIMEOUT`."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    fd = process.stdout.fileno()
    while not (match := pattern.search(seen)):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no {pattern.pattern!r} within {START_TIMEOUT}s: {seen!r}")
        if select.select([fd], [], [], remaining)[0]:
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError(f"exited before {pattern.pattern!r}: {seen!r}")
            seen += data
    return match


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def jobkit_server(folder: Path) -> Iterator[str]:
    init_pki(folder / "pki", clients=["bench"])
    process = subprocess.Popen(
        [str(BIN / "jobkit"), "serve", "--certs", str(folder / "pki"),
         "--listen", "127.0.0.1:0", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    try:
        match = wait_for_line(process, re.compile(rb"Serving on https://([\d.]+:\d+)"))
        yield match.group(1).decode()
    finally:
        stop(process)


def ensure_supervisor() -> None:
    if importlib.util.find_spec("supervisor") is None:
        print("installing supervisor into this venv for the baseline ...", flush=True)
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "supervisor"], check=True,
                       timeout=300)


@contextmanager
def supervisord(folder: Path) -> Iterator[Path]:
    """supervisord with one sleeping program, on a Unix socket; yields its config file."""
    config = folder / "supervisord.conf"
    config.write_text(textwrap.dedent(f"""\
        [unix_http_server]
        file={folder}/supervisor.sock

        [supervisord]
        logfile={folder}/supervisord.log
        pidfile={folder}/supervisord.pid
        childlogdir={folder}
        nodaemon=true

        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

        [supervisorctl]
        serverurl=unix://{folder}/supervisor.sock

        [program:sleeper]
        command=sleep 3600
        startsecs=0
        """))
    process = subprocess.Popen([str(BIN / "supervisord"), "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # ready once supervisorctl sees the program running
            done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(config), "status"],
                                  capture_output=True, timeout=START_TIMEOUT, check=False)
            if b"RUNNING" in done.stdout:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"supervisord did not start: {done.stdout!r}")
            time.sleep(0.05)  # a benchmark's start-up poll, not a test
        yield config
    finally:
        stop(process)


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          timeout=60, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="rounds (default 40)")
    options = parser.parse_args()
    ensure_supervisor()
    if shutil.which("supervisorctl", path=str(BIN)) is None:
        sys.exit("supervisorctl is not in this venv")

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as temp:
        folder = Path(temp)
        with jobkit_server(folder) as address, supervisord(folder) as config:
            env = dict(os.environ, JOBKIT_SERVER=address,
                       JOBKIT_CERTS=str(folder / "pki" / "clients" / "bench"))
            env.pop("NO_COLOR", None)
            # Bytecode for every module, as after `pip install` (which compiles
            # it).  With PYTHONDONTWRITEBYTECODE set and an editable install,
            # every run would compile jobkit's modules from source (and only
            # jobkit's).  The warm-up runs write it, to a cache of our own.
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
            job_id = subprocess.run([str(BIN / "jobkit"), "exec", "true"], env=env,
                                    capture_output=True, text=True, check=True).stdout.strip()
            subprocess.run([str(BIN / "jobkit"), "wait", job_id], env=env, check=True)
            commands = {
                "jobkit status ID": [str(BIN / "jobkit"), "status", job_id],
                "supervisorctl status": [str(BIN / "supervisorctl"), "-c", str(config),
                                         "status"],
                "python -c 'import click, rich.console, ssl, http.client'":
                    [PYTHON, "-c", "import click, rich.console, ssl, http.client"],
                "python -c pass": [PYTHON, "-c", "pass"],
            }
            for command in commands.values():  # warm the page cache, compile .pyc files
                timed(command, env)
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(options.runs):
                for name, command in commands.items():
                    times[name].append(timed(command, env))

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"process start to exit, {options.runs} interleaved rounds, Python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs:")
    width = max(map(len, commands))
    for name, values in times.items():
        print(f"  {name:<{width}}  median {median[name] * 1000:6.1f} ms   "
              f"best {min(values) * 1000:6.1f} ms")
    ours = median["jobkit status ID"]
    supervisor = median["supervisorctl status"]
    imports = median["python -c 'import click, rich.console, ssl, http.client'"]
    print(f"jobkit status / supervisorctl status: {ours / supervisor:.2f}x "
          f"({'faster' if ours < supervisor else 'SLOWER'}; target < 1)")
    print(f"jobkit status / import click, rich.console, ssl, http.client: {ours / imports:.2f}x")
    floor = median["python -c pass"]
    print(f"above the bare interpreter: jobkit status +{(ours - floor) * 1000:.1f} ms, "
          f"supervisorctl +{(supervisor - floor) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
