"""Executors come from plugins, ``local`` included: found by name through the same hook a
third-party executor uses, and what it does is open to others through the documented
contract (`ProcessExecutor`)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import jobkit
from jobkit import JobPool, State
from jobkit.backends.file import FileStore
from jobkit.backends.tempfile import TempfileStore
from jobkit.core import plugins
from jobkit.core.executor import (
    ExecutorContext,
    JobSpec,
    Process,
    ProcessExecutor,
    Started,
)
from jobkit.core.feed import JobFeed
from jobkit.core.hookspecs import RegisterExecutor
from jobkit.core.job import Job
from jobkit.core.leftovers import boot_id, boot_ticks
from jobkit.core.pool import LOST_MESSAGE
from jobkit.executors.local import LocalExecutor
from tests.support.imports import ALL, imports, within
from tests.support.procs import group_members
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_local_is_registered_through_the_hook_like_any_other() -> None:
    plugins.executor_names()  # the first lookup loads the built-in plugins
    found: list[tuple[str, Callable[..., Any]]] = []
    plugins.pm.hook.jobkit_register_executors(
        register=lambda name, factory: found.append((name, factory)))
    assert ("local", LocalExecutor) in found
    assert "ray" in dict(found)
    local_plugin = plugins.pm.get_plugin("jobkit.executors.local")
    assert local_plugin is not None
    assert [impl.plugin for impl in plugins.pm.hook.jobkit_register_executors.get_hookimpls()
            if impl.plugin is local_plugin]
    assert plugins.executor_factory("local") is LocalExecutor
    assert {"local", "ray"} <= set(plugins.executor_names())


@pytest.mark.parametrize("name", [n for n in ALL if within(n, "jobkit.core", "jobkit.backends")])
def test_the_core_never_names_a_built_in_executor(name: str) -> None:
    # The pool finds `local` by name through the plugins, as it finds `ray`.
    assert not {m for m in imports(name, ALL[name]) if within(m, "jobkit.executors")}


class Counting(ProcessExecutor):
    """A plugin's executor that wraps ``local``, found by name, and counts its calls."""

    def __init__(self) -> None:
        inner = plugins.executor_factory("local")()
        assert isinstance(inner, ProcessExecutor)
        self.inner = inner
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def open(self, context: ExecutorContext) -> None:
        self.context = context
        self.inner.open(context)

    def close(self) -> None:
        self._count("close")
        self.inner.close()

    def start(self, spec: JobSpec) -> Started:
        self._count("start")
        return self.inner.start(spec)

    def run(self, job: Job, started: Started) -> None:
        self._count("run")
        self.inner.run(job, started)

    def discard(self, started: Started) -> None:
        self._count("discard")
        self.inner.discard(started)

    def signal(self, job: Job, signal: int) -> None:
        self._count("signal")
        self.inner.signal(job, signal)

    def kill(self, job: Job) -> None:
        self._count("kill")
        self.inner.kill(job)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.inner.call_soon(fn)


def _token(started: Started) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    return cast("tuple[subprocess.Popen[bytes], dict[str, int]]", started.token)


class ThreadPerJob(ProcessExecutor):
    """A `ProcessExecutor` written from scratch on the documented contract alone: no
    supervisor, no spawn module; a thread per job moves its pipes into its stores."""

    def __init__(self) -> None:
        self.threads: dict[str, threading.Thread] = {}

    def start(self, spec: JobSpec) -> Started:
        env = dict(spec.env) if spec.replace_env else {**os.environ, **spec.env}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        before = boot_ticks()
        try:
            process = subprocess.Popen([spec.command, *spec.args], stdin=subprocess.DEVNULL,
                                       stdout=out_w, stderr=err_w, env=env, cwd=spec.cwd,
                                       start_new_session=True)
        except OSError as exc:
            for fd in (out_r, out_w, err_r, err_w):
                os.close(fd)
            return Started(None, f"cannot start {spec.command!r}: {exc.strerror}")
        finally:
            after = boot_ticks()
        os.close(out_w)
        os.close(err_w)
        return Started(Process(process.pid, (int(before), int(after) + 1), boot_id()),
                       token=(process, {"stdout": out_r, "stderr": err_r}))

    def run(self, job: Job, started: Started) -> None:
        process, fds = _token(started)
        job.process = process  # its pid in the job's status
        thread = threading.Thread(target=self._serve, args=(job, process, fds))
        self.threads[job.id] = thread
        thread.start()

    def _serve(self, job: Job, process: subprocess.Popen[bytes], fds: dict[str, int]) -> None:
        with selectors.DefaultSelector() as selector:
            for name, fd in fds.items():
                selector.register(fd, selectors.EVENT_READ, name)
            while selector.get_map():
                for key, _ in selector.select():
                    stream = job.streams[key.data]
                    if stream.store.fill_from(key.fd, 1 << 16) == 0:
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        stream.mark_closed()
                    else:
                        stream.notify()
        job.finish_with_returncode(process.wait())
        assert job.on_drained is not None
        job.on_drained(job)

    def discard(self, started: Started) -> None:
        process, fds = _token(started)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        for fd in fds.values():
            os.close(fd)

    def signal(self, job: Job, signal: int) -> None:
        if job.running and job.process is not None:
            try:
                os.killpg(job.process.pid, signal)
            except ProcessLookupError:
                pass

    def kill(self, job: Job) -> None:
        self.signal(job, signal.SIGKILL)
        self.threads[job.id].join(10)


class ExecutorPlugin:
    """Registers both test executors, as an installed package would."""

    @jobkit.hookimpl
    def jobkit_register_executors(self, register: RegisterExecutor) -> None:
        register("counting", Counting)
        register("thread-per-job", ThreadPerJob)


@pytest.fixture
def executor_plugin() -> Iterator[None]:
    plugin = ExecutorPlugin()
    plugins.pm.register(plugin, "executor-test")
    plugins.reset()
    yield
    plugins.pm.unregister(plugin)
    plugins.reset()


@pytest.mark.usefixtures("executor_plugin")
def test_a_plugin_wrapping_local_by_name_runs_every_kind_of_call(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with JobPool(executor="counting", state_dir=state, env={"PATH": os.environ["PATH"]},
                 cgroups=None) as pool:
        assert pool.executor == "counting"
        executor = pool._executor
        assert isinstance(executor, Counting)
        assert executor.context.env == {"PATH": os.environ["PATH"]}
        assert executor.context.cgroups is None and executor.context.durable
        done = pool.create("sh", ["-c", "echo out; echo err >&2; exit 3"])
        status = pool.wait(done, 10)
        assert (status.state, status.exit_code, status.executor, status.handle) == (
            State.COMPLETED, 3, "counting", None)
        assert status.pid
        assert pool.output(done).stdout == b"out\n" and pool.output(done).stderr == b"err\n"
        stopped = pool.create("sleep", ["30"])
        pool.stop(stopped)
        assert pool.wait(stopped, 10).signal == signal.SIGTERM
        deleted = pool.create("sleep", ["30"])
        pid = pool.status(deleted).pid
        assert pid
        pool.delete(deleted)
        assert group_members(pid) == []  # nothing of it runs once delete returned
        failed = pool.create("/nonexistent/jobkit-test")
        assert pool.status(failed).state is State.ERROR
        left = pool.create("sleep", ["30"])
        assert executor.calls == {"start": 5, "run": 4, "signal": 1, "kill": 1}
    # The close killed what still ran (and whatever had not settled yet), then closed it.
    assert executor.calls["close"] == 1 and executor.calls["kill"] >= 2
    with JobPool(executor="counting", state_dir=state) as pool:
        status = pool.status(left)
        assert status.state is State.KILLED and status.error == "killed when its pool was closed"
        assert pool.output(done).stdout == b"out\n"
        assert pool.recovered == ()


@pytest.mark.usefixtures("executor_plugin")
def test_a_process_executor_from_scratch_does_what_local_does(tmp_path: Path) -> None:
    state = tmp_path / "state"
    data = os.urandom(200_000)
    (tmp_path / "data").write_bytes(data)
    with JobPool(executor="thread-per-job", state_dir=state) as pool:
        done = pool.create("sh", ["-c", 'cat "$1"; echo err >&2; exit 3', "sh",
                                  str(tmp_path / "data")])
        status = pool.wait(done, 10)
        assert (status.state, status.exit_code, status.executor) == (
            State.COMPLETED, 3, "thread-per-job")
        wait_until(lambda: pool.status(done).stdout.closed, what="stdout to close")
        assert pool.output(done).stdout == data and pool.output(done).stderr == b"err\n"
        stopped = pool.create("sleep", ["30"])
        assert pool.stop(stopped).pid
        assert pool.wait(stopped, 10).signal == signal.SIGTERM
        deleted = pool.create("sleep", ["30"])
        pool.delete(deleted)
        assert deleted not in pool.list()
        failed = pool.create("/nonexistent/jobkit-test")
        assert "cannot start" in (pool.status(failed).error or "")
        left = pool.create("sleep", ["30"])
        pid = pool.status(left).pid
        assert pid
    assert group_members(pid) == []
    with JobPool(executor="thread-per-job", state_dir=state) as pool:
        status = pool.status(left)
        assert status.state is State.KILLED and status.error == "killed when its pool was closed"
        assert pool.output(done).stdout == data


@pytest.mark.parametrize("backend", ["tempfile", "file"])
def test_local_output_goes_straight_from_the_pipe_to_the_store(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sink, and no bytes through Python: both stores splice, so append is never called.
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a local job's output went through Python")

    monkeypatch.setattr(JobFeed, "__init__", never)
    monkeypatch.setattr(TempfileStore, "append", never)
    monkeypatch.setattr(FileStore, "append", never)
    data = os.urandom(300_000)
    (tmp_path / "data").write_bytes(data)
    with JobPool(backend, state_dir=tmp_path / "state") as pool:
        job = pool.create("sh", ["-c", 'cat "$1"; cat "$1" >&2', "sh", str(tmp_path / "data")])
        status = pool.wait(job, 10)
        wait_until(lambda: pool.status(job).stderr.closed, what="the pipes to close")
        assert status.exit_code == 0 and pool.status(job).output_error is None
        assert pool.output(job).stdout == data and pool.output(job).stderr == data


# A pool on a plugin's process executor dies without closing, a job still running.
CRASHING_OWNER = """
import os, signal, sys
from jobkit import JobPool
from jobkit.core import plugins
from tests.core.test_executor import ExecutorPlugin
plugins.pm.register(ExecutorPlugin(), "executor-test")
pool = JobPool(executor=sys.argv[2], state_dir=sys.argv[1])
job = pool.create("sh", ["-c", "sleep 1000 & echo up; wait"])
next(iter(pool.follow(job, "stdout")))
print(job, pool.status(job).pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no close: a crash
"""


@pytest.mark.parametrize("executor", ["counting", "thread-per-job"])
def test_what_a_dead_pool_left_is_killed_from_its_recorded_process(
    executor: str, tmp_path: Path
) -> None:
    # Whichever executor ran it, the next pool (here on `local`) kills what is left
    # from the recorded Process, and records the job lost.
    out = subprocess.run([sys.executable, "-c", CRASHING_OWNER, str(tmp_path), executor],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == -signal.SIGKILL, out.stderr
    job, pid = out.stdout.split()
    assert group_members(int(pid))  # the job outlived its pool
    with JobPool(state_dir=tmp_path) as pool:
        assert pool.recovered == (job,)
        status = pool.status(job)
        assert status.state is State.LOST and status.executor == executor
        assert status.error == LOST_MESSAGE
        assert pool.output(job).stdout == b"up\n"
    wait_until(lambda: group_members(int(pid)) == [], what="the leftover to be killed")
