"""The README's one-minute tour, run for real against ``jobkit serve`` with no flags.

Like a new user: the server makes the default PKI on first start (under
XDG_DATA_HOME, here a temporary folder), and the CLI finds the same
certificates without --certs.  Only the port differs from the default, so
that the test never collides with a server already running on 8443.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import State
from jobkit.client import Client
from tests.cli.conftest import Run, base_env, run_jobkit
from tests.client.live_server import serving
from tests.conftest import wait_until

#: The tour, command by command, as the README shows it.
TOUR = [
    "jobkit exec echo hi",
    "jobkit status 1",
    "jobkit output 1",
    "jobkit list",
    "jobkit exec -f sh -c 'echo out; echo err >&2; exit 3'",
]


@pytest.fixture(scope="module")
def fresh_machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data_home = tmp_path_factory.mktemp("data")
    env = base_env(XDG_DATA_HOME=str(data_home))
    with serving(None, env=env) as address:
        yield {**env, "JOBKIT_SERVER": address}


def tour(env: dict[str, str], line: str) -> Run:
    program, *args = shlex.split(line)
    assert program == "jobkit"
    return run_jobkit(*args, env=env)


def test_the_tour(fresh_machine: dict[str, str]) -> None:
    env = fresh_machine
    data_home = Path(env["XDG_DATA_HOME"])
    assert (data_home / "jobkit" / "pki" / "server" / "cert.pem").is_file()

    run = tour(env, TOUR[0])
    assert (run.code, run.stdout, run.stderr) == (0, "1\n", "")

    # A person types the next command a second later; the test waits for the job.
    (user_folder,) = (data_home / "jobkit" / "pki" / "clients").iterdir()
    with Client(env["JOBKIT_SERVER"], user_folder) as client:
        wait_until(lambda: client.status("1").state is State.COMPLETED, what="echo hi")

    run = tour(env, TOUR[1])
    assert (run.code, run.stdout, run.stderr) == (0, "completed, exit status: 0\n", "")

    run = tour(env, TOUR[2])
    assert (run.code, run.stdout, run.stderr) == (0, "hi\n", "")

    run = tour(env, TOUR[3])
    assert run.code == 0
    header, row = run.stdout.splitlines()
    assert header == "ID  COMMAND  STATE      EXIT  STARTED   DURATION"
    assert re.fullmatch(r"1   echo hi  completed  0     \d\d:\d\d:\d\d  \d\.\d\ds", row), row

    run = tour(env, TOUR[4])
    assert (run.code, run.stdout, run.stderr) == (3, "out\n", "err\n")
