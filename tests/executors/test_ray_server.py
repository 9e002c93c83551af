"""``jobkit serve --executor ray``: the same API, client and CLI, with jobs on a Ray cluster.

Real processes throughout: a Ray cluster, ``jobkit serve`` with mutual TLS
in a subprocess, the Python client and the ``jobkit`` command.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobkit import JobNotFound, ServerError, State
from jobkit.client import Client
from tests.support.cli import base_env, run_jobkit
from tests.support.executors import JOB_WAIT
from tests.support.forwarder import Forwarder
from tests.support.processes import ServerProcess, make_pki, server_process
from tests.support.ray import RayCluster, free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def ray_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("ray-pki") / "pki")


@pytest.fixture(scope="module")
def ray_server(ray_cluster: RayCluster, ray_pki: Path) -> Iterator[ServerProcess]:
    """``jobkit serve`` in front of the session's cluster."""
    with server_process(ray_pki, "--executor", "ray", "--ray-address",
                        ray_cluster.address) as served:
        yield served


def _client(server: ServerProcess, pki: Path, name: str) -> Client:
    return Client(server.host_port, pki / "clients" / name, timeout=JOB_WAIT)


def _cli_env(server: ServerProcess, pki: Path, name: str) -> dict[str, str]:
    return base_env(JOBKIT_SERVER=server.host_port, JOBKIT_CERTS=str(pki / "clients" / name))


def test_the_cli_works_unchanged(ray_server: ServerProcess, ray_pki: Path) -> None:
    env = _cli_env(ray_server, ray_pki, "alice")
    followed = run_jobkit("exec", "-f", "sh", "-c", "echo out; echo err >&2; exit 3", env=env)
    assert (followed.code, followed.stdout, followed.stderr) == (3, "out\n", "err\n")
    job = run_jobkit("exec", "sleep", "600", env=env).stdout.strip()
    wait_until(lambda: run_jobkit("status", job, env=env).stdout == "running\n",
               timeout=JOB_WAIT, what="the job running on the cluster")
    listed = run_jobkit("list", env=env).stdout
    assert "sleep 600" in listed and "completed" in listed
    assert run_jobkit("stop", job, env=env).code == 0
    waited = run_jobkit("wait", job, env=env)
    assert waited.code == 128 + signal.SIGTERM
    assert run_jobkit("status", job, env=env).status_head() == "killed, signal: SIGTERM"
    jobs = json.loads(run_jobkit("list", "--json", env=env).stdout)["jobs"]
    followed_id = next(job["id"] for job in jobs if job["args"][-1].startswith("echo out"))
    assert run_jobkit("output", followed_id, env=env).stdout == "out\n"
    assert run_jobkit("delete", job, env=env).code == 0
    gone = run_jobkit("status", job, env=env)
    assert gone.code != 0 and "no such job" in gone.error_line()


def test_two_clients_are_apart(ray_server: ServerProcess, ray_pki: Path,
                               ray_cluster: RayCluster) -> None:
    from ray.job_submission import JobSubmissionClient

    alice, bob = (_client(ray_server, ray_pki, name) for name in ("alice", "bob"))
    mine = alice.create("sh", ["-c", "echo alice"])
    theirs = bob.create("sh", ["-c", "echo bob"])
    assert alice.wait(mine).state is State.COMPLETED
    assert bob.wait(theirs).state is State.COMPLETED
    assert alice.output(mine).stdout == b"alice\n"
    assert bob.output(theirs).stdout == b"bob\n"
    bob_ids = bob.list()
    assert theirs in bob_ids
    assert mine in alice.list()
    for job_id in alice.list():
        if job_id not in bob_ids:
            with pytest.raises(JobNotFound):
                bob.status(job_id)
            with pytest.raises(JobNotFound):
                bob.delete(job_id)
    # On the cluster, each job is its owner's, under a name of its own pool's.
    ray = JobSubmissionClient(ray_cluster.address)
    handles = {"alice": alice.status(mine).handle, "bob": bob.status(theirs).handle}
    assert None not in handles.values() and handles["alice"] != handles["bob"]
    for owner, handle in handles.items():
        assert ray.get_job_info(handle).metadata["jobkit_owner"] == owner


def test_a_restarted_server_takes_its_jobs_over(ray_cluster: RayCluster, ray_pki: Path,
                                                tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    options = ("--executor", "ray", "--ray-address", ray_cluster.address,
               "--state-dir", str(tmp_path / "state"))
    script = 'echo first; while [ ! -e "$1" ]; do sleep 0.05; done; echo second'
    with server_process(ray_pki, *options) as first:
        alice = _client(first, ray_pki, "alice")
        job = alice.create("sh", ["-c", script, "sh", str(flag)])
        wait_until(lambda: alice.status(job).stdout.written == len(b"first\n"),
                   timeout=JOB_WAIT, what="the first line")
    with server_process(ray_pki, *options) as second:
        assert f"Running jobs on the ray cluster at {ray_cluster.address}\n" in second.printed
        alice = _client(second, ray_pki, "alice")
        assert alice.status(job).running
        flag.touch()
        status = alice.wait(job)
        assert (status.state, status.exit_code) == (State.COMPLETED, 0)
        assert alice.output(job).stdout == b"first\nsecond\n"


def test_a_cluster_out_of_reach_is_a_clear_error(ray_cluster: RayCluster, ray_pki: Path,
                                                 tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    refused = run_jobkit("serve", "--listen", "127.0.0.1:0", "--certs", ray_pki,
                         "--state-dir", tmp_path / "dead", "--executor", "ray",
                         "--ray-address", dead, env=base_env())
    assert refused.code != 0
    assert f"cannot reach the Ray cluster at {dead}" in refused.error_line()
    # A cluster that goes away while the server runs: requests get a problem answer.
    host, _, port = ray_cluster.address.removeprefix("http://").partition(":")
    forwarder = Forwarder((host, int(port)))
    try:
        with server_process(ray_pki, "--executor", "ray", "--ray-address",
                            f"http://127.0.0.1:{forwarder.port}") as served:
            alice = _client(served, ray_pki, "alice")
            assert alice.wait(alice.create("true")).state is State.COMPLETED
            forwarder.close()
            with pytest.raises(ServerError) as caught:
                alice.create("true")
            assert (caught.value.status, caught.value.kind) == (503, "executor-unavailable")
            assert "cannot be reached" in str(caught.value)
            run = run_jobkit("exec", "true", env=_cli_env(served, ray_pki, "alice"))
            assert run.code != 0
            assert "cannot be reached" in run.error_line()
            assert "cannot reach the Ray cluster" in served.log()  # the address: in the log
    finally:
        forwarder.close()
