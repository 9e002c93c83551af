"""The ``ray`` executor: jobs run on a Ray cluster, through Ray's Job Submission API.

``JobPool(executor="ray", executor_options={"address": "http://HEAD:8265"})``.
Each job is submitted as a Ray job whose entrypoint is jobkit's wrapper
(`jobkit.executors.ray_entry`), named ``jobkit-<pool id>-<job id>`` (its
submission id, the job's handle), with the pool, the job and the owner in
its metadata.  The wrapper frames the command's stdout and stderr into Ray's
log (`jobkit.executors.frames`); the executor reads that log as Ray serves
it and hands the bytes to the pool, which stores them in its own backend.

One thread (``jobkit-ray``, an asyncio loop) serves every job of every
``ray`` executor of the process: per job, one websocket on its log, and a
few looks at its state in its first seconds (`RayExecutor._early_end`: Ray's
log tail tells a short job's end two seconds late); a long job costs Ray's
dashboard nothing more.  docs/executors.md tells what maps to what, what the
cluster needs, and what differs from ``local``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal as signals
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import attrs

from jobkit.core.errors import ExecutorUnavailable
from jobkit.core.executor import (
    CannotRun,
    Ending,
    Executor,
    ExecutorContext,
    JobSink,
    JobSpec,
    Submission,
)
from jobkit.core.models import State, Usage
from jobkit.executors.frames import Frame, FrameReader
from jobkit.executors.ray_client import JobGone, RayJob, RayJobs, RayRefused
from jobkit.executors.ray_entry import encode_spec

__all__ = ["DEFAULT_PYTHON", "RayExecutor", "submission_id"]

log = logging.getLogger("jobkit.ray")

T = TypeVar("T")

#: The Python that runs the wrapper on Ray's nodes (it needs jobkit installed).
DEFAULT_PYTHON = "python3"
#: How long `RayExecutor.delete` waits for a stopped job to end on the cluster.
_DELETE_WAIT = 30.0
#: How long a stopped job may stay pending before `RayExecutor.delete` leaves it
#: to Ray (it is stopped once placed) and forgets it once it has ended.
_PENDING_STOP = 2.0
#: Looking again whether a job left to end on its own has: first after this
#: many seconds, then twice as long each time, up to the last.
_FORGET_FIRST, _FORGET_LAST = 1.0, 60.0
#: Reconnecting to the log: first after this many seconds, then twice as long, up to the last.
_RETRY_FIRST, _RETRY_LAST = 0.5, 10.0
#: The limits Ray can place a job by (as resources); it enforces none.
_SCHEDULED = ("cpu", "memory")
#: The early looks at a job's state (`RayExecutor._early_end`): while it is
#: pending, every so many seconds for so long at most; once it runs, the first
#: after this many seconds, then twice as long each time, up to the last.
_EARLY_PENDING_EVERY, _EARLY_PENDING = 0.5, 30.0
_EARLY_FIRST, _EARLY_LAST = 0.25, 2.0
#: How much of Ray's message a job's error keeps.
_MESSAGE_KEPT = 2000


def submission_id(pool_id: str, job_id: str) -> str:
    """The Ray submission id of a pool's job: its handle."""
    return f"jobkit-{pool_id}-{job_id}"


class _Loop:
    """The process's ``jobkit-ray`` thread and its asyncio loop, shared by every
    ``ray`` executor; started by the first and stopped by the last."""

    _lock = threading.Lock()
    _shared: _Loop | None = None
    _users = 0

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jobkit-ray",
                                       daemon=True)
        self.thread.start()

    @classmethod
    def acquire(cls) -> _Loop:
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls()
            cls._users += 1
            return cls._shared

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users > 0 or cls._shared is None:
                return
            shared, cls._shared = cls._shared, None
        shared.loop.call_soon_threadsafe(shared.loop.stop)
        if threading.current_thread() is not shared.thread:
            shared.thread.join()
            shared.loop.close()

    @classmethod
    def forget_after_fork(cls) -> None:
        # The thread does not survive a fork; a child starts afresh.
        cls._lock, cls._shared, cls._users = threading.Lock(), None, 0

    def here(self) -> bool:
        """True in the loop's own thread."""
        return threading.current_thread() is self.thread

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` in the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


os.register_at_fork(after_in_child=_Loop.forget_after_fork)


class RayExecutor(Executor):
    """Runs jobs on the Ray cluster whose dashboard listens at ``address``.

    Args:
        address: The cluster's Job Submission address, e.g.
            ``http://127.0.0.1:8265``.
        python: The Python on Ray's nodes that runs jobkit's wrapper
            (jobkit must be installed for it); looked up in the ``PATH``
            of Ray's job processes.

    Raises `ExecutorUnavailable` at once when Ray is not installed or the
    cluster cannot be reached.
    """

    def __init__(self, address: str, python: str = DEFAULT_PYTHON) -> None:
        if not isinstance(address, str) or not address:
            raise TypeError(f"address must be a non-empty string such as "
                            f"'http://127.0.0.1:8265', not {address!r}")
        if not isinstance(python, str) or not python:
            raise TypeError(f"python must be a non-empty string, not {python!r}")
        self._ray = RayJobs(address)
        self._python = python
        #: Handles this executor submitted: known to be ours, and pending.
        self._submitted: set[str] = set()
        self._context = ExecutorContext("", None, durable=False)
        self._shared = _Loop.acquire()
        #: The watching task of each job, touched only in the loop's thread.
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: Tasks that delete jobs on the cluster once they have ended.
        self._forgetting: set[asyncio.Task[None]] = set()
        self._closed = False

    def open(self, context: ExecutorContext) -> None:
        self._context = context

    # -- the pool's calls ---------------------------------------------------

    def submit(self, spec: JobSpec) -> Submission:
        asked = () if spec.limits is None else spec.limits.asked()
        unschedulable = [name for name in asked if name not in _SCHEDULED]
        if unschedulable and spec.limits is not None and spec.limits.strict:
            raise CannotRun(
                f"the ray executor cannot enforce {', '.join(unschedulable)}: Ray places"
                f" jobs by cpu and memory and limits nothing (Limits(strict=False) runs"
                f" the job without them)")
        if not spec.network:
            raise CannotRun("the ray executor cannot run a job without network (network=False)")
        handle = submission_id(self._context.pool_id, spec.job_id)
        wrapper: dict[str, Any] = {"command": spec.command, "args": list(spec.args),
                                   "cwd": spec.cwd, "timeout": spec.timeout,
                                   "kill_after": spec.kill_after}
        if spec.replace_env:
            wrapper.update(replace_env=True, keep=sorted(spec.env))
        entrypoint = shlex.join([self._python, "-m", "jobkit.executors.ray_entry",
                                 encode_spec(wrapper)])
        limits = spec.limits
        try:
            self._ray.submit(
                handle, entrypoint, metadata=self._metadata(spec.job_id), env=spec.env,
                cpus=None if limits is None else limits.cpu,
                memory=None if limits is None else limits.memory,
            )
        except RayRefused as error:
            raise CannotRun(f"the Ray cluster refused the job: {error}") from None
        self._submitted.add(handle)
        return Submission(handle, State.PENDING, "none" if asked else None, asked)

    def watch(self, handle: str, sink: JobSink) -> None:
        self._shared.loop.call_soon_threadsafe(self._begin, handle, sink)

    def find(self, job_id: str) -> str | None:
        handle = submission_id(self._context.pool_id, job_id)
        try:
            job = self._ray.info(handle)
        except (JobGone, RayRefused):
            return None
        return handle if job.metadata.get("jobkit_pool") == self._context.pool_id else None

    def stop(self, handle: str, signal: int) -> None:
        # Ray's stop_job: SIGTERM to the whole tree, then SIGKILL (see ray_entry).
        try:
            self._ray.stop(handle)
        except (JobGone, RayRefused) as error:
            log.info("job %s: not stopped on the Ray cluster: %s", handle, error)

    def delete(self, handle: str) -> None:
        self._submitted.discard(handle)
        self.detach(handle)
        if self._shared.here():
            # Only finished jobs are deleted from the loop's thread (retention,
            # through a sink call): forget them without blocking the loop.
            self._forget_when_ended(handle)
            return
        try:
            if not self._ray.info(handle).terminal and not self._stop_and_wait(handle):
                # Never placed: Ray stops it the moment it is; nothing of it runs.
                self._shared.loop.call_soon_threadsafe(self._forget_when_ended, handle)
                return
            self._ray.delete(handle)
        except JobGone:
            pass
        except RayRefused as error:
            log.warning("job %s: not deleted on the Ray cluster: %s", handle, error)

    def _stop_and_wait(self, handle: str) -> bool:
        """Stop the job and wait until Ray says it has ended: True.

        False for a job still pending a moment after the stop: Ray's stop
        reaches a job's supervisor, which a job waiting for resources does
        not have yet (it stops as soon as it is placed).
        """
        self._ray.stop(handle)
        asked = time.monotonic()
        while True:
            job = self._ray.info(handle)
            if job.terminal:
                return True
            waited = time.monotonic() - asked
            if job.status == "PENDING" and waited > _PENDING_STOP:
                return False
            if waited > _DELETE_WAIT:
                raise ExecutorUnavailable(
                    f"the Ray job {handle} did not stop within {_DELETE_WAIT:g} s")
            time.sleep(0.05)

    def detach(self, handle: str) -> None:
        if self._shared.here():
            task = self._tasks.pop(handle, None)
            if task is not None:
                task.cancel()
        else:
            self._shared.run(self._end(handle))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._shared.here():
            self._shared.run(self._end_all())
        _Loop.release()

    # -- the loop's thread --------------------------------------------------

    def _metadata(self, job_id: str) -> dict[str, str]:
        return {"jobkit_pool": self._context.pool_id, "jobkit_job": job_id,
                "jobkit_owner": self._context.owner or ""}

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    def _begin(self, handle: str, sink: JobSink) -> None:
        if self._closed:
            return
        task = self._shared.loop.create_task(self._follow(handle, sink))
        self._tasks[handle] = task

        def done(_: object) -> None:  # a job that has ended holds nothing here
            if self._tasks.get(handle) is task:
                del self._tasks[handle]

        task.add_done_callback(done)

    async def _end(self, handle: str) -> None:
        task = self._tasks.pop(handle, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _end_all(self) -> None:
        tasks = [*self._tasks.values(), *self._forgetting]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _forget_when_ended(self, handle: str) -> None:
        if self._closed:
            return
        task = self._shared.loop.create_task(self._forget_later(handle))
        self._forgetting.add(task)
        task.add_done_callback(self._forgetting.discard)

    async def _forget_later(self, handle: str) -> None:
        """Delete the job on the cluster once it has ended (while this executor lives)."""
        delay = _FORGET_FIRST
        try:
            while not (await self._info(handle)).terminal:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _FORGET_LAST)
            await self._blocking(self._ray.delete, handle)
        except (JobGone, RayRefused, ExecutorUnavailable) as error:
            log.info("job %s: not deleted on the Ray cluster: %s", handle, error)

    async def _follow(self, handle: str, sink: JobSink) -> None:
        """Hand the job's output, state and end to ``sink`` until it ends."""
        try:
            ending = await self._run(handle, sink)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug must not leave the job running forever here
            log.exception("job %s: watching it on the Ray cluster failed", sink.job_id)
            ending = Ending(State.LOST, error=f"jobkit lost track of it on the Ray cluster: "
                                              f"{error}")
        sink.ended(ending)

    async def _run(self, handle: str, sink: JobSink) -> Ending:
        seen = _Seen()
        if handle in self._submitted:  # just submitted: ours, and pending
            self._submitted.discard(handle)
        else:  # taken over from an earlier pool: see what Ray says first
            first = await self._first_look(handle)
            if isinstance(first, Ending):
                return first
            if first.status != "PENDING":
                seen.running = True
                sink.state(State.RUNNING)
            else:
                sink.state(State.PENDING)
        loop = asyncio.get_running_loop()
        tail = loop.create_task(self._read_log(handle, sink, seen))
        early = loop.create_task(self._early_end(handle, sink, seen))
        try:
            done, _ = await asyncio.wait({tail, early}, return_when=asyncio.FIRST_COMPLETED)
            if early in done and early.result() is not None:
                ending = early.result()
                assert ending is not None
                return ending
            return await tail
        finally:
            tail.cancel()
            early.cancel()

    async def _info(self, handle: str) -> RayJob:
        """Ray's word on the job, as soon as the cluster answers; `JobGone` if it has none."""
        delay = _RETRY_FIRST
        while True:
            try:
                job: RayJob = await self._blocking(self._ray.info, handle)
                return job
            except (ExecutorUnavailable, RayRefused) as error:
                log.warning("job %s: %s; asking again in %g s", handle, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_LAST)

    async def _first_look(self, handle: str) -> RayJob | Ending:
        """Ray's word on the job; an `Ending` if it is gone or not ours to follow."""
        try:
            job = await self._info(handle)
        except JobGone:
            return _gone(handle)
        mine = {key: job.metadata.get(key) for key in ("jobkit_pool", "jobkit_owner")}
        expected = self._metadata("")
        if mine != {key: expected[key] for key in mine}:
            return Ending(State.LOST, error=f"the Ray job {handle} belongs to another"
                                            f" pool or owner: not followed")
        return job

    async def _read_log(self, handle: str, sink: JobSink, seen: _Seen) -> Ending:
        """Follow the log to the ``end`` frame (or the log's end), reconnecting as needed."""
        reader = FrameReader()
        delay = _RETRY_FIRST
        while True:
            reader.reset()  # a new read starts at the top; the sink drops what it has
            try:
                async for text in self._ray.tail(handle):
                    for frame in reader.feed(text):
                        ending = self._take(frame, sink, seen)
                        if ending is not None:
                            return ending
                # The log's end without an end frame: Ray has the last word.
                job = await self._info(handle)
                if job.terminal:
                    return _ending_without_frame(job, seen.framed)
            except JobGone:
                return _gone(handle)
            except ExecutorUnavailable as error:
                log.warning("job %s: %s; reading its log again in %g s", handle, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_LAST)

    async def _early_end(self, handle: str, sink: JobSink, seen: _Seen) -> Ending | None:
        """Ask Ray how the job is in its first seconds; its `Ending` if it is over by then.

        Ray's log tail looks at the file once a second and waits as long
        again between checks of the job's state, so a short job's end
        reaches the tail about two seconds after Ray knows it.  Asking Ray
        every `_EARLY_PENDING_EVERY` seconds while it is pending (for
        `_EARLY_PENDING` seconds at most), then 0.25, 0.75, 1.75 and 3.75 s
        after it started, and reading its whole (short) log at once when it
        is over, takes most of that away.  Past that the tail is as quick,
        and the job is not asked again: a long job costs Ray's dashboard
        nothing.  None when it gave up.
        """
        loop = asyncio.get_running_loop()
        pending_until = loop.time() + _EARLY_PENDING
        delay = _EARLY_FIRST
        while True:
            if seen.running:
                if delay > _EARLY_LAST:
                    return None
                await asyncio.sleep(delay)
                delay *= 2
            elif loop.time() > pending_until:
                return None
            else:
                await asyncio.sleep(_EARLY_PENDING_EVERY)
            try:
                job = await self._blocking(self._ray.info, handle)
            except (JobGone, RayRefused, ExecutorUnavailable):
                continue  # the tail tells
            if job.status == "RUNNING" and not seen.running:
                seen.running = True
                sink.state(State.RUNNING)
            if job.terminal:
                return await self._ending_from_whole_log(handle, job, sink, seen)

    async def _ending_from_whole_log(self, handle: str, job: RayJob, sink: JobSink,
                                     seen: _Seen) -> Ending | None:
        """Hand over the whole log of a job that has ended; its `Ending` (None if unread)."""
        try:
            text: str = await self._blocking(self._ray.logs, handle)
        except (JobGone, RayRefused, ExecutorUnavailable):
            return None  # the tail tells
        for frame in FrameReader().feed(text):
            ending = self._take(frame, sink, seen)
            if ending is not None:
                return ending
        return _ending_without_frame(job, seen.framed)

    @staticmethod
    def _take(frame: Frame, sink: JobSink, seen: _Seen) -> Ending | None:
        """Hand one frame to the sink; the job's `Ending` if it says how it ended."""
        seen.framed = True
        if not seen.running and frame.kind in ("stdout", "stderr", "start"):
            seen.running = True
            sink.state(State.RUNNING)
        if frame.kind in ("stdout", "stderr"):
            sink.output(frame.kind, frame.offset, frame.data)
        elif frame.kind == "end":
            return _ending(frame.fields)
        elif frame.kind == "error":
            return Ending(State.ERROR, error=str(frame.fields.get("message", "")))
        return None


@attrs.define
class _Seen:
    """What is known of one job while it is followed (in the loop's thread only)."""

    #: The sink was told it runs.
    running: bool = False
    #: A frame of its wrapper was read: the wrapper ran.
    framed: bool = False


def _gone(handle: str) -> Ending:
    return Ending(State.LOST, error=f"the Ray cluster no longer knows the job {handle}"
                                    f" (deleted, or the cluster was restarted)")


def _ending(fields: Mapping[str, Any]) -> Ending:
    """The `Ending` an ``end`` frame tells."""
    exit_code, signal = fields.get("exit_code"), fields.get("signal")
    used = fields.get("usage") or {}
    usage = Usage("rusage", float(used.get("cpu_user_s") or 0),
                  float(used.get("cpu_system_s") or 0), used.get("peak_memory"),
                  used.get("io_read_bytes"), used.get("io_write_bytes"))
    if isinstance(exit_code, int):
        return Ending(State.COMPLETED, exit_code=exit_code,
                      timed_out=bool(fields.get("timed_out")), usage=usage)
    return Ending(State.KILLED, signal=signal if isinstance(signal, int) else None,
                  timed_out=bool(fields.get("timed_out")), usage=usage)


def _ending_without_frame(job: RayJob, started: bool) -> Ending:
    """How a job ended that wrote no ``end`` frame: Ray's word for it."""
    message = job.message[-_MESSAGE_KEPT:]
    if job.status == "SUCCEEDED":
        return Ending(State.COMPLETED, exit_code=0)
    if job.status == "STOPPED":
        if not started:
            return Ending(State.KILLED, error="stopped on the Ray cluster before it started")
        # Past its wrapper's grace: Ray's SIGKILL took the wrapper with it.
        return Ending(State.KILLED, signal=signals.SIGKILL, error="stopped on the Ray cluster")
    if job.exit_code is not None and job.exit_code < 0:
        return Ending(State.KILLED, signal=-job.exit_code,
                      error=f"killed on the Ray cluster: {message}")
    return Ending(State.ERROR, error=f"the job failed on the Ray cluster before jobkit's"
                                     f" wrapper could run it: {message}")
