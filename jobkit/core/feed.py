"""`JobFeed`: the pool's `JobSink` for one job of a cluster executor (not a `ProcessExecutor`).

What the executor hands over goes where a local job's bytes go: into the
job's `OutputStream`s (its output backend's stores), so ``read``,
``follow`` and ``output`` work the same whoever ran the job.  Bytes come
with their absolute offset; the feed keeps the ones it does not have yet, so
an executor may hand a stream over again from byte 0 (after a restart of
the pool, or a reconnect) and nothing is stored twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from jobkit.core.executor import Ending, JobSink
from jobkit.core.job import Job, Outcome, utcnow
from jobkit.core.models import STREAMS, State

__all__ = ["JobFeed"]

log = logging.getLogger("jobkit.pool")


class JobFeed(JobSink):
    """Feeds one job's `OutputStream`s and outcome from its executor.

    Args:
        job: The pool's job.
        settle: Called once the job has ended (the pool's ``_drained``).

    A job the pool let go of (``job.forgotten``: deleted, or its pool
    closed) takes nothing more; ``job.lock`` orders that with `ended`, so a
    job is finished once, by its executor or by the pool.
    """

    def __init__(self, job: Job, settle: Callable[[Job], None]) -> None:
        self._job = job
        self._settle = settle
        #: Where the next new byte of each stream goes: what the store held
        #: when the feed began, then past every byte taken (kept or not).
        self._next = {name: job.streams[name].store.written for name in STREAMS}

    @property
    def job_id(self) -> str:
        return self._job.id

    def written(self, stream: str) -> int:
        return self._next[stream]

    def output(self, stream: str, offset: int, data: bytes) -> None:
        job = self._job
        if job.forgotten or job.outcome is not None:
            return
        have = self._next[stream]
        if offset + len(data) <= have:
            return  # handed over again: kept already
        if offset < have:
            data = data[have - offset:]
        elif offset > have:
            log.warning("job %s %s: bytes %d to %d never arrived from its executor",
                        job.id, stream, have, offset)
        self._next[stream] = offset + len(data) if offset > have else have + len(data)
        out = job.streams[stream]
        if out.error is None:
            try:
                out.store.append(data)
            except Exception as exc:  # disk full, or a broken plugin: drop the rest
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                out.error = f"cannot store output: {reason}"
                log.warning("job %s %s: %s", job.id, stream, out.error)
        out.notify()

    def state(self, state: State) -> None:
        if state in (State.PENDING, State.RUNNING) and self._job.outcome is None:
            self._job.pending = state is State.PENDING

    def ended(self, ending: Ending) -> None:
        job = self._job
        with job.lock:
            if job.forgotten or job.outcome is not None:
                return
            job.timed_out = ending.timed_out
            job.pending = False
            for out in job.streams.values():
                out.mark_closed()
            job.finish(Outcome(ending.state, utcnow(), ending.exit_code, ending.signal,
                               ending.error, ending.usage))
        self._settle(job)
