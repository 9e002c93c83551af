"""Faults at the server level: the disk fills up, the user runs out of processes.

The job-level faults (``kill -9`` from outside, 500 children, stdout closed
early, ``setsid`` escapees, crash recovery) are tested on the library in
tests/core/test_faults.py, test_cgroups.py and test_durable.py; these two need
a whole server, in a subprocess:

* disk full: ``jobkit serve --backend tempfile`` with ``TMPDIR`` on a 1 MiB
  tmpfs mounted by the test (as root; skipped where mounting is refused).  A
  job that writes more gets ``output_error``, runs to its end, and the server
  goes on serving;
* RLIMIT_NPROC: root ignores that limit, so the server runs as ``nobody``
  (``setpriv``) with a copy of its certificates that ``nobody`` may read; the
  server gets a limit of the threads it has at rest plus one (``prlimit``, set
  before the switch to nobody), so a job that keeps the last process slot
  leaves none for the next.  That job is in state ``error``, the server stays
  up, and jobs start again once the slot is free.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.api import ApiClient
from tests.support.processes import ServerProcess, server_process
from tests.support.procs import descendants, process_alive
from tests.support.servers import new_api_client
from tests.support.waiting import wait_until

MIB = 1 << 20
NOBODY = 65534


# -- disk full ----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at a fresh folder, unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs",
                             str(mount_point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and mount rights): "
                    f"{result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_under_the_tempfile_backend(
    pki: Path, small_tmpfs: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "TMPDIR": str(small_tmpfs)}
    with server_process(pki, "--backend", "tempfile", "--allow-backend", "memory",
                        "--state-dir", str(tmp_path / "state"), env=env) as served:
        client = new_api_client(served.address, pki)
        # 4 MiB through a 1 MiB file system.
        job_id = client.create("sh", "-c", "head -c 4194304 /dev/zero; echo done >&2")
        status = client.wait(job_id, timeout=30)
        assert (status["status"], status["exit_code"]) == ("completed", 0), status
        assert status["output_error"], status
        assert "space" in status["output_error"].lower(), status
        # What was kept before the disk filled can still be read.
        kept = client.get(f"/jobs/{job_id}/stdout")
        assert kept.status == 200
        assert len(kept.body) < 4 * MIB and set(kept.body) <= {0}
        # The server is up: other requests, and jobs on another backend, work.
        assert client.get("/jobs").status == 200
        other = client.create("echo", "still here", backend="memory")
        assert client.wait(other)["exit_code"] == 0
        assert client.get(f"/jobs/{other}/output").json()["stdout"] == "still here\n"
        # Deleting the job frees the space: the tempfile backend works again.
        assert client.request("DELETE", f"/jobs/{job_id}").status == 200
        small = client.create("echo", "fits")
        status = client.wait(small)
        assert status["output_error"] is None, status
        assert client.get(f"/jobs/{small}/stdout").body == b"fits\n"
        client.close()
        assert served.alive()


def test_a_full_state_folder_fails_cleanly_and_recovers(pki: Path, small_tmpfs: Path) -> None:
    # The default set-up: records and output (file backend) on one disk, which fills.
    with server_process(pki, "--state-dir", str(small_tmpfs / "state")) as served:
        client = new_api_client(served.address, pki)
        job_id = client.create("sh", "-c", "head -c 4194304 /dev/zero; echo done >&2")
        status = client.wait(job_id, timeout=30)
        assert (status["status"], status["exit_code"]) == ("completed", 0), status
        assert "space" in (status["output_error"] or "").lower(), status
        # Full now: a new job is refused with a clear kind, never a 500; reads still work.
        answers = [client.request("PUT", "/jobs", {"cmd": "true"}) for _ in range(3)]
        assert {a.status for a in answers} <= {201, 507}, answers
        for answer in answers:
            if answer.status == 507:
                assert answer.problem()["type"] == "urn:jobkit:problem:storage-failed"
        assert client.get("/jobs").status == 200
        assert client.get(f"/jobs/{job_id}/status").status == 200
        # Deleting the big job frees the disk: jobs start and keep output again.
        assert client.request("DELETE", f"/jobs/{job_id}").status == 200
        small = client.create("echo", "fits")
        assert client.wait(small)["output_error"] is None
        assert client.get(f"/jobs/{small}/stdout").body == b"fits\n"
        client.close()
        assert served.alive()


# -- RLIMIT_NPROC -------------------------------------------------------------------------


@pytest.fixture
def nobody_certs(pki: Path) -> Iterator[Path]:
    """A copy of the server's certificates, owned by nobody, in a folder nobody can reach."""
    if os.geteuid() != 0:
        pytest.skip("running a server as another user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="jobkit-nobody-"))  # in /tmp: others may traverse
    try:
        certs = folder / "server"
        shutil.copytree(pki / "server", certs)
        for path in [folder, certs, *certs.iterdir()]:
            os.chown(path, NOBODY, NOBODY)
        folder.chmod(0o755)
        yield certs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def user_tasks(uid: int) -> int:
    """Threads and processes of ``uid`` on the machine: what RLIMIT_NPROC counts."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as file:
                for line in file:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            count += len(os.listdir(f"/proc/{entry}/task"))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return count


@contextmanager
def serve_as_nobody(certs: Path, nproc: int | None = None) -> Iterator[ServerProcess]:
    """``jobkit serve`` (4 threads) as nobody, with RLIMIT_NPROC ``nproc`` if given."""
    prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if nproc is not None:
        # Set by root before the switch to nobody (this sandbox, like many,
        # does not let even root change another user's running process).
        prefix = ["prlimit", f"--nproc={nproc}:{nproc}", *prefix]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "LANG": "C.UTF-8"}
    try:
        with server_process(certs, "--threads", "4", env=env, prefix=prefix,
                            cwd="/") as served:
            yield served
    except RuntimeError as error:
        if "exited" in str(error) and "Traceback" not in str(error):
            pytest.skip(f"the server cannot run as nobody here: {error}")
        raise


def warm_up(served: ServerProcess, client: ApiClient) -> None:
    """One job created, finished and deleted: what starts once (the supervisor) runs."""
    job_id = client.create("true")
    assert client.wait(job_id)["exit_code"] == 0
    # A finished job stays a zombie until deleted (its pid cannot be reused meanwhile).
    assert client.request("DELETE", f"/jobs/{job_id}").status == 200
    wait_until(lambda: not descendants(served.pid), what="the warm-up job to be reaped")


@pytest.fixture
def threads_at_rest(pki: Path, nobody_certs: Path) -> int:
    """How many tasks nobody has with the server at rest (measured without a limit).

    RLIMIT_NPROC counts every thread and process of the user, the server's and
    any other's; the limit under test is this plus one.
    """
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    with serve_as_nobody(nobody_certs) as served:
        client = new_api_client(served.address, pki)
        warm_up(served, client)
        client.close()
        return user_tasks(NOBODY)


def kill_if_alive(pid: int | None) -> None:
    """Leave no job behind, even when the server under test did."""
    if pid is not None and process_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def test_rlimit_nproc_reached_gives_a_job_in_error(pki: Path, nobody_certs: Path,
                                                   threads_at_rest: int) -> None:
    holder_pid = None
    with serve_as_nobody(nobody_certs, nproc=threads_at_rest + 1) as served:
        try:
            client = new_api_client(served.address, pki)
            warm_up(served, client)
            assert user_tasks(NOBODY) == threads_at_rest
            # The one process left to the user: a job that keeps it.
            holder = client.create("sleep", "1000")
            holder_pid = client.status(holder)["pid"]
            # The next job cannot fork: it is a job in error, not a failed request.
            response = client.request("PUT", "/jobs", {"cmd": "echo", "args": ["never"]})
            assert response.status == 201, response
            status = client.status(response.json()["id"])
            assert (status["status"], status["pid"]) == ("error", None), status
            assert "process limit" in status["error_msg"], status
            # The server is up and answers everything else.
            listing = client.get("/jobs").json()
            assert listing["ids"] == [holder, response.json()["id"]]
            assert client.status(holder)["status"] == "running"
            # Once the holder is gone, jobs start again.
            assert client.request("DELETE", f"/jobs/{holder}").status == 200
            wait_until(lambda: not descendants(served.pid), what="the holder to be reaped")
            again = client.create("echo", "back")
            assert client.wait(again)["exit_code"] == 0
            assert client.get(f"/jobs/{again}/stdout").body == b"back\n"
            client.close()
            assert served.alive()
            served.process.terminate()
            assert served.process.wait(30) == 0, served.log()
        finally:
            kill_if_alive(holder_pid)


def test_the_server_stops_cleanly_at_the_process_limit(pki: Path, nobody_certs: Path,
                                                       threads_at_rest: int) -> None:
    """SIGTERM while no thread can be started: the server still stops and kills its jobs.

    (Found here: stop() used to start a timer thread, failed, and hung; once
    SIGKILLed, the server left its jobs running.)
    """
    holder_pid = None
    with serve_as_nobody(nobody_certs, nproc=threads_at_rest + 1) as served:
        try:
            client = new_api_client(served.address, pki)
            warm_up(served, client)
            holder = client.create("sleep", "1000")
            holder_pid = client.status(holder)["pid"]
            client.close()
            served.process.terminate()
            try:
                code = served.process.wait(10)
            except subprocess.TimeoutExpired:
                served.process.kill()
                served.process.wait()
                pytest.fail(f"SIGTERM did not stop the server in 10 s: {served.log()[-800:]}")
            assert code == 0, served.log()
            assert not process_alive(holder_pid), "the job outlived the server"
        finally:
            kill_if_alive(holder_pid)
