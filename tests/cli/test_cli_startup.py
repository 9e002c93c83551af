"""Start-up: client commands import only what they use; help and completion import nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobkit import __version__
from tests.support.cli import Jobkit, base_env, imported_modules

#: What no client command may import: the server, the PKI's crypto, the web stack.
SERVER_SIDE = ("jobkit.server", "cryptography", "bottle", "cheroot")


def loaded(modules: set[str], *prefixes: str) -> list[str]:
    return sorted(name for name in modules
                  if any(name == p or name.startswith(p + ".") for p in prefixes))


@pytest.fixture
def job_id(jobkit: Jobkit) -> str:
    job = jobkit("exec", "sh", "-c", "echo hi; exit 3").stdout.strip()
    jobkit("wait", job)
    return job


@pytest.mark.parametrize("args", [
    ["status", "{id}"], ["status", "--json", "{id}"], ["list"], ["list", "--json"],
    ["output", "{id}"], ["wait", "{id}"], ["exec", "true"], ["exec", "-f", "true"],
    ["stop", "{id}"], ["output", "-f", "{id}"], ["status", "404"],
], ids=lambda args: " ".join(args))
def test_client_commands_import_no_server_code_and_no_rich(
        tmp_path: Path, env: dict[str, str], job_id: str, args: list[str]) -> None:
    code, modules = imported_modules(tmp_path, env, *(a.format(id=job_id) for a in args))
    assert code in (0, 3), code
    assert loaded(modules, *SERVER_SIDE) == []
    # Not a terminal: plain text, so rich is not needed at all.
    assert loaded(modules, "rich") == []


def test_errors_import_no_server_code(tmp_path: Path, certs: Path) -> None:
    env = base_env(JOBKIT_SERVER="127.0.0.1:1", JOBKIT_CERTS=str(certs))
    code, modules = imported_modules(tmp_path, env, "status", "1")
    assert code == 4
    assert loaded(modules, *SERVER_SIDE, "rich") == []


def test_status_imports_only_what_it_uses(tmp_path: Path, env: dict[str, str],
                                          job_id: str) -> None:
    # The CLI renders the server's JSON: it needs neither the library nor attrs.
    code, modules = imported_modules(tmp_path, env, "status", job_id)
    assert code == 0
    assert loaded(modules, "jobkit.core.pool", "jobkit.core.supervisor", "jobkit.backends",
                  "jobkit.core.models", "pluggy", "importlib.metadata", "attr", "attrs",
                  "pathlib") == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["exec", "--help"]])
def test_help_and_version_import_no_command_modules(tmp_path: Path, args: list[str]) -> None:
    code, modules = imported_modules(tmp_path, base_env(), *args)
    assert code == 0
    assert loaded(modules, *SERVER_SIDE, "rich", "ssl", "http.client", "jobkit.client",
                  "jobkit.cli.certs", "jobkit.cli.serve") == []
    if args == ["--help"]:
        assert loaded(modules, "jobkit.cli.jobs", "jobkit.cli.exec") == []


def test_help_lists_every_command(jobkit: Jobkit) -> None:
    from jobkit.cli.main import COMMANDS, SHORT_HELP

    assert set(SHORT_HELP) == set(COMMANDS)
    text = jobkit("--help").stdout
    for name, line in SHORT_HELP.items():
        assert f"  {name}" in text
        assert line.split()[0] in text
    for option in ("--server", "--certs", "JOBKIT_SERVER", "JOBKIT_CERTS", "--version"):
        assert option in text


def test_every_command_resolves_and_has_help(jobkit: Jobkit) -> None:
    from jobkit.cli.main import COMMANDS

    for name in COMMANDS:
        run = jobkit(name, "--help")
        assert run.code == 0, run
        assert run.stdout.startswith(f"Usage: jobkit {name}")


def test_version(jobkit: Jobkit) -> None:
    run = jobkit("--version")
    assert (run.code, run.stdout) == (0, f"jobkit, version {__version__}\n")


def complete(env: dict[str, str], words: str, cword: int) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "jobkit"], capture_output=True, text=True, timeout=60,
        env={**env, "_JOBKIT_COMPLETE": "bash_complete", "COMP_WORDS": words,
             "COMP_CWORD": str(cword)}, check=False,
    )
    assert done.returncode == 0, done
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


def test_completion_of_commands_and_options() -> None:
    assert complete(base_env(), "jobkit st", 1) == ["plain,status", "plain,stop"]
    assert "plain,--follow" in complete(base_env(), "jobkit exec --f", 2)
    assert complete(base_env(), "jobkit output --stream s", 3) == ["plain,stdout",
                                                                  "plain,stderr"]


def test_completion_of_job_ids(env: dict[str, str], jobkit: Jobkit) -> None:
    ids = [jobkit("exec", "true").stdout.strip() for _ in range(11)]
    assert complete(env, "jobkit status ", 2) == [f"plain,{job}" for job in ids]
    assert complete(env, "jobkit wait 1", 2) == ["plain,1", "plain,10", "plain,11"]
    # With no server to ask, nothing is offered (and nothing is printed).
    assert complete({**env, "JOBKIT_SERVER": "127.0.0.1:1"}, "jobkit status ", 2) == []


def test_completion_script(jobkit: Jobkit) -> None:
    run = jobkit(_JOBKIT_COMPLETE="bash_source")
    assert run.code == 0
    assert "_JOBKIT_COMPLETE=bash_complete" in run.stdout
    assert "complete " in run.stdout
