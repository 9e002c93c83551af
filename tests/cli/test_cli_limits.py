"""Limits from the command line: ``exec``'s flags, ``status`` and ``list``, ``serve``'s policy.

The real ``jobkit`` executable against ``jobkit serve`` in a subprocess, with
the kernel's limits (cgroup v1 here); tests that need them skip where this
process may not create cgroups, or may not make a network namespace.
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

import pytest

from jobkit.core.cgroups import block_device as cgroups_block_device
from tests.support.cli import Jobkit, Run, base_env, run_jobkit
from tests.support.pki import new_client_folder
from tests.support.processes import server_process, serving

#: A program whose first act is to take 1 GiB (and touch it).
ALLOCATE_1G = (sys.executable, "-c", "b = bytearray(1 << 30)")


def _cannot_limit() -> str | None:
    from jobkit.core import cgroups

    enforced = cgroups.detect().enforcement()
    missing = [name for name in ("cpu", "memory", "pids") if enforced.get(name) in (None, "none")]
    return f"this machine cannot enforce {', '.join(missing)}" if missing else None


needs_cgroups = pytest.mark.skipif(_cannot_limit() is not None, reason=str(_cannot_limit()))


def _started(jobkit: Jobkit, *args: str) -> str:
    run = jobkit("exec", *args)
    assert run.code == 0, run
    return run.stdout.strip()


def _finished(jobkit: Jobkit, *args: str) -> str:
    job = _started(jobkit, *args)
    assert jobkit("wait", job).code < 255, job  # wait exits with the job's code
    return job


@needs_cgroups
def test_exec_with_limits_and_the_status_shows_what_it_used(jobkit: Jobkit) -> None:
    # The issue's own syntax: limits, then "--", then the command.
    job = _finished(jobkit, "--cpu", "0.5", "--memory", "256M", "--pids", "100", "--",
                    "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
    line = jobkit("status", job).stdout
    assert re.fullmatch(r"completed, exit status: 0 · cpu \d+\.\d\d s \(user \d+\.\d\d,"
                        r" system \d+\.\d\d\) · peak mem [\d.]+ [KM]iB · from cgroup\n", line), line
    document = json.loads(jobkit("status", "--json", job).stdout)
    assert document["limits"] == {"cpu": 0.5, "memory": 256 << 20, "pids": 100,
                                  "io_read_bps": None, "io_write_bps": None, "strict": True}
    assert document["usage"]["source"] == "cgroup"


#: A known workload: 0.3 s of CPU, 64 MiB more than the server ever held
#: (rusage cannot tell a job's peak below the server's own), 4 MiB written
#: past the page cache (so that the kernel counts it as the job's).
WORKLOAD = ("import os, resource, time\n"
            "block = bytearray({size}); block[::4096] = b'x' * (len(block) // 4096)\n"
            "with open('out', 'wb', buffering=0) as f:\n"
            "    f.write(os.urandom(4 << 20)); os.fsync(f.fileno())\n"
            "while time.process_time() < 0.3:\n"
            "    pass\n")


def _usage_shown(jobkit: Jobkit, cwd: Path, size: int) -> tuple[str, dict[str, object]]:
    job = _finished(jobkit, "--cwd", str(cwd), sys.executable, "-c",
                    WORKLOAD.format(size=size))
    document = json.loads(jobkit("status", "--json", job).stdout)
    assert document["status"] == "completed" and document["exit_code"] == 0, document
    return jobkit("status", job).stdout, document["usage"]


def _peak_memory(pid: int) -> int:
    """The most memory process ``pid`` has held (its VmHWM), in bytes."""
    found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert found, pid
    return int(found[1]) << 10


@needs_cgroups
def test_every_jobs_status_shows_what_it_used_from_its_cgroup(jobkit: Jobkit,
                                                              tmp_path: Path) -> None:
    # No limits asked: a server that may use cgroups puts every job in them.
    line, usage = _usage_shown(jobkit, tmp_path, 64 << 20)
    assert usage["source"] == "cgroup", usage
    assert 0.3 <= usage["cpu_user_s"] + usage["cpu_system_s"] <= 3, usage  # type: ignore[operator]
    assert 64 << 20 <= usage["peak_memory"] <= 1 << 30, usage  # type: ignore[operator]
    match = re.fullmatch(r"completed, exit status: 0 · cpu (\d+\.\d\d) s \(user (\d+\.\d\d),"
                         r" system (\d+\.\d\d)\) · peak mem ([\d.]+) MiB · from cgroup\n", line)
    assert match, line
    assert float(match[1]) == round(usage["cpu_user_s"] + usage["cpu_system_s"], 2)  # type: ignore[operator]
    assert float(match[4]) == round(usage["peak_memory"] / (1 << 20), 1)  # type: ignore[operator]


def test_every_jobs_status_shows_what_it_used_from_rusage(pki_root: Path,
                                                          tmp_path: Path) -> None:
    if cgroups_block_device(str(tmp_path)) is None:
        pytest.skip(f"{tmp_path} is on no block device: nothing would count the writes")
    with server_process(pki_root, "--no-cgroups") as served:
        env = base_env(JOBKIT_SERVER=served.host_port,
                       JOBKIT_CERTS=str(new_client_folder(pki_root)[1]))

        def jobkit(*args: str) -> Run:
            return run_jobkit(*args, env=env)

        size = _peak_memory(served.pid) + (64 << 20)
        line, usage = _usage_shown(jobkit, tmp_path, size)
        assert usage["source"] == "rusage", usage
        assert 0.3 <= usage["cpu_user_s"] + usage["cpu_system_s"] <= 3, usage  # type: ignore[operator]
        assert size <= usage["peak_memory"] <= size + (256 << 20), usage  # type: ignore[operator]
        assert usage["io_write_bytes"] >= 4 << 20, usage  # type: ignore[operator]
        assert re.fullmatch(
            r"completed, exit status: 0 · cpu \d+\.\d\d s \(user \d+\.\d\d, system \d+\.\d\d\)"
            r" · peak mem [\d.]+ MiB · io read [\d.]+ [KM]?i?B, written [\d.]+ MiB"
            r" · from rusage of the main process\n", line), line
        # A small job's peak is hidden below the server's own: left out, never made up.
        small = _finished(jobkit, "true")
        assert re.fullmatch(r"completed, exit status: 0 · cpu \d+\.\d\d s \(user \d+\.\d\d,"
                            r" system \d+\.\d\d\) · io read [\d.]+ [KM]?i?B,"
                            r" written [\d.]+ [KM]?i?B · from rusage of the main process\n",
                            jobkit("status", small).stdout)
        # The list's columns: CPU for both, MEM only where known.
        table = jobkit("list").stdout.splitlines()
        assert table[0].split()[-2:] == ["CPU", "MEM"]
        (big_row, small_row) = (line.split() for line in table[1:])
        assert re.fullmatch(r"\d+\.\d\ds", big_row[-2]) and big_row[-1].endswith("MiB")
        assert float(big_row[-1].removesuffix("MiB")) == round(
            usage["peak_memory"] / (1 << 20), 1)  # type: ignore[operator]
        assert re.fullmatch(r"\d+\.\d\ds", small_row[-2]) and small_row[-1] == "-"


@needs_cgroups
def test_an_oom_kill_is_shown_as_such(jobkit: Jobkit) -> None:
    job = _finished(jobkit, "--memory", "64M", *ALLOCATE_1G)
    line = jobkit("status", job).stdout
    assert line.startswith("killed, signal: SIGKILL, out of memory (limit 64 MiB) · cpu "), line
    # ... and not like a kill -9 from anyone else.
    other = _finished(jobkit, "--memory", "64M", "sh", "-c", "kill -KILL $$")
    assert jobkit("status", other).stdout.startswith("killed, signal: SIGKILL · cpu ")
    table = jobkit("list").stdout.splitlines()
    assert table[0].split() == ["ID", "COMMAND", "STATE", "EXIT", "STARTED", "DURATION",
                                "CPU", "MEM"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows[job][-1] == "OOM"
    assert re.fullmatch(r"\d+\.\d\ds", rows[other][-2]) and rows[other][-1].endswith("iB")


@pytest.mark.parametrize(("flags", "named"), [
    (["--memory", "lots"], "--memory"),
    (["--memory", "0"], "--memory"),
    (["--cpu", "0"], "--cpu"),
    (["--pids", "0"], "--pids"),
    (["--io-read", "-1"], "--io-read"),
    (["--best-effort"], "--best-effort"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_bad_limit_flags_are_one_line_naming_the_flag(jobkit: Jobkit, flags: list[str],
                                                      named: str) -> None:
    run = jobkit("exec", *flags, "true")
    assert run.code == 2, run
    assert named in run.error_line()
    assert jobkit("list", "--json").stdout.count('"id"') == 0  # nothing was started


@pytest.fixture
def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock  # type: ignore[misc]
    sock.close()


def _connects(jobkit: Jobkit, port: int, *flags: str) -> int:
    code = (f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); "
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "socket.create_connection(s.getsockname(), timeout=5)")
    return jobkit("exec", "-f", *flags, sys.executable, "-c", code).code


def test_no_network_cannot_reach_the_host(jobkit: Jobkit, listener: socket.socket) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root (CAP_SYS_ADMIN)")
    port = listener.getsockname()[1]
    assert _connects(jobkit, port) == 0
    assert _connects(jobkit, port, "--no-network") != 0
    job = _finished(jobkit, "--no-network", sys.executable, "-c",
                    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
                    "s.listen(); socket.create_connection(s.getsockname(), timeout=5)")
    document = json.loads(jobkit("status", "--json", job).stdout)
    assert document["network"] is False and document["status"] == "completed", document
    assert document["exit_code"] == 0  # loopback inside the job works


@needs_cgroups
def test_serve_flags_set_defaults_and_maxima(pki_root: Path) -> None:
    extra = ("--default-limits", "pids=64", "--max-limits", "memory=128M,cpu=1",
             "--max-memory", "256M")
    with serving(pki_root, extra=extra) as address:
        env = base_env(JOBKIT_SERVER=address, JOBKIT_CERTS=str(new_client_folder(pki_root)[1]))
        over = run_jobkit("exec", "--memory", "1G", "true", env=env)
        assert over.code != 0 and "memory" in over.error_line()
        assert "maximum" in over.error_line()
        job = run_jobkit("exec", "true", env=env).stdout.strip()
        run_jobkit("wait", job, env=env)
        limits = json.loads(run_jobkit("status", "--json", job, env=env).stdout)["limits"]
        assert (limits["pids"], limits["memory"], limits["cpu"]) == (64, 128 << 20, 1.0)
        sleepers = [run_jobkit("exec", "sleep", "60", env=env) for _ in range(3)]
        assert [run.code for run in sleepers[:2]] == [0, 0]
        assert sleepers[2].code != 0 and "memory quota" in sleepers[2].error_line()


def test_serve_reads_a_config_file_with_per_client_overrides(pki_root: Path,
                                                             tmp_path: Path) -> None:
    special, folder = new_client_folder(pki_root, "special")
    config = tmp_path / "policy.toml"
    config.write_text(f'max-jobs = 1\n[clients."{special}"]\nmax-jobs = 2\n')
    with serving(pki_root, extra=("--config", str(config))) as address:
        everyone = base_env(JOBKIT_SERVER=address,
                            JOBKIT_CERTS=str(new_client_folder(pki_root)[1]))
        own = base_env(JOBKIT_SERVER=address, JOBKIT_CERTS=str(folder))
        assert [run_jobkit("exec", "sleep", "60", env=own).code for _ in range(2)] == [0, 0]
        assert run_jobkit("exec", "sleep", "60", env=everyone).code == 0
        refused = run_jobkit("exec", "sleep", "60", env=everyone)
        assert refused.code != 0 and "live jobs" in refused.error_line()
    # Flags win over the file.
    with serving(pki_root, extra=("--config", str(config), "--max-jobs", "3")) as address:
        everyone = base_env(JOBKIT_SERVER=address,
                            JOBKIT_CERTS=str(new_client_folder(pki_root)[1]))
        assert [run_jobkit("exec", "sleep", "60", env=everyone).code
                for _ in range(3)] == [0, 0, 0]


@pytest.mark.parametrize(("options", "message"), [
    (["--config", "{missing}"], "cannot read --config"),
    (["--config", "{bad}"], "unknown setting 'max-job'"),
    (["--max-limits", "memory=lots"], "memory"),
    (["--default-limits", "swap=1G"], "swap"),
    (["--default-limits", "memory=2G", "--max-limits", "memory=1G"], "over the maximum"),
], ids=lambda value: " ".join(value) if isinstance(value, list) else value)
def test_serve_refuses_a_bad_policy_in_one_line(tmp_path: Path, options: list[str],
                                                message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("max-job = 3\n")
    args = [o.format(missing=tmp_path / "nope.toml", bad=bad) for o in options]
    run = run_jobkit("serve", "--listen", "127.0.0.1:0", "--state-dir", tmp_path / "state",
                     "--certs", tmp_path / "no-certs", *args, env=base_env(), timeout=30)
    assert run.code == 2, run
    assert message in run.error_line()
