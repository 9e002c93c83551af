"""The README's commands, run exactly as a new user would run them.

The install-and-serve command runs in a copy of the repository with its own
fresh venv and data folder; once the server says it is serving, every
``$ jobkit ...`` line of the tour runs with that venv's ``jobkit`` and its
output is compared with the README's (the `list` table's times excepted).
This is the tour's one test: the CLI's commands each have their own in tests/cli.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", README, re.S)]


def tour() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of the console block."""
    (block,) = re.findall(r"```console\n(.*?)```", README, re.S)
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def test_the_readme_has_exactly_the_two_commands() -> None:
    serve, test = shell_blocks()
    assert serve.endswith("jobkit serve") and "pip install ." in serve
    assert test.endswith("python -m pytest") and "pip install -e '.[test,ray]'" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install --quiet -e '.[test,ray]'" in ci
    assert "\n.venv/bin/python -m pytest\n" in ci  # the same test command


class ReadmeServer:
    """The README's ``jobkit serve``, which the tour stops and starts again."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.command, self.cwd, self.env = command, cwd, env
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["sh", "-c", self.command], cwd=self.cwd, env=self.env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        assert self.process.stdout is not None
        seen = []
        for line in self.process.stdout:  # bounded by the pytest timeout if it never serves
            seen.append(line)
            if line.startswith("Serving on"):
                return
        pytest.fail("the README's serve command ended:\n" + "".join(seen[-30:]))

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop it as a person does in its terminal: Ctrl-C."""
        process = self.process
        if process is None:
            return
        os.killpg(process.pid, sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
        self.process = None


@pytest.fixture(scope="module")
def readme_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict, ReadmeServer]]:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8443)) == 0:
            pytest.skip("something already listens on 127.0.0.1:8443, the README's default")
    checkout = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source, target = ROOT / os.fsdecode(name), checkout / os.fsdecode(name)
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    home = tmp_path_factory.mktemp("home")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "NO_COLOR": "1",
        "COLUMNS": "100",
    }
    # Pip's cache stays shared: the point is the command, not re-downloading.
    if "PIP_CACHE_DIR" in os.environ:
        env["PIP_CACHE_DIR"] = os.environ["PIP_CACHE_DIR"]
    else:
        env["PIP_CACHE_DIR"] = str(Path.home() / ".cache" / "pip")
    serve, _ = shell_blocks()
    server = ReadmeServer(serve, checkout, env)
    try:
        server.start()
        yield checkout, env, server
    finally:
        server.stop(signal.SIGTERM)


@pytest.mark.timeout(600)
def test_the_quick_start_and_the_tour(readme_server: tuple[Path, dict, ReadmeServer]) -> None:
    checkout, env, server = readme_server
    # As for a new user: the server made the default PKI, where the CLI finds it.
    assert (Path(env["XDG_DATA_HOME"]) / "jobkit" / "pki" / "server" / "cert.pem").is_file()
    jobkit = str(checkout / ".venv" / "bin")
    env = {**env, "PATH": jobkit + os.pathsep + env["PATH"]}
    last_code = 0
    for command, expected in tour():
        if command == "echo $?":
            assert [str(last_code)] == expected
            continue
        if command.startswith("# Ctrl-C in the server's terminal"):
            server.stop()  # what the tour then shows must have survived this
            server.start()
            continue
        if command in ("jobkit output 1", "jobkit status 1"):
            # A person types this a moment later; wait for job 1 to end first.
            subprocess.run(
                ["jobkit", "wait", "1"], env=env, timeout=60, check=True, capture_output=True
            )
        run = subprocess.run(
            shlex.split(command), env=env, capture_output=True, text=True, timeout=60
        )
        last_code = run.returncode
        got = (run.stdout + run.stderr).splitlines()
        if command == "jobkit list":
            header, *rows = got
            assert header.split() == expected[0].split()
            assert [r.split()[:5] for r in rows] == [e.split()[:5] for e in expected[1:]]
        elif command == "jobkit status 1":  # what the job used varies from run to run
            (line,) = got
            state, _, used = line.partition(" · ")
            assert state == expected[0].partition(" · ")[0] and used.startswith("cpu "), line
        elif command.startswith("jobkit exec -f"):
            assert run.stdout.splitlines() == expected[:1]
            assert run.stderr.splitlines() == expected[1:]
        else:
            assert got == expected, command
