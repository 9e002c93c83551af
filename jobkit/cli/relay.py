"""Streaming a job's output live, and the exit code a job's status stands for."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, BinaryIO

from jobkit.cli.errors import EXIT_JOB_ERROR

if TYPE_CHECKING:  # `jobkit exec --help` needs neither ssl nor http.client
    from jobkit.client import Client, RemoteFollower
    from jobkit.wire import StatusRecord

__all__ = ["Copier", "copy_to_end", "exit_code", "follow_to_end"]

#: After the first, status checks while following come this much later each time ...
_POLL_FIRST = 0.1
#: ... up to this many seconds apart.
_POLL_MAX = 1.0


def exit_code(job: StatusRecord) -> int:
    """The code a shell would report: the exit status, 128 + the signal, else 127.

    127 is for a job that could not start (``error``), and for any state
    without an exit status or a signal.
    """
    if job.state == "completed" and job.exit_code is not None:
        return job.exit_code
    if job.state == "killed" and job.signal is not None:
        return 128 + job.signal
    return EXIT_JOB_ERROR


class Copier:
    """Copies followers to binary files, one thread each, so every stream is live.

    Each chunk is written and flushed as it arrives.  The caller's thread
    waits in `wait` (where Ctrl-C reaches it) and gets the first error any
    copy met.
    """

    def __init__(self, pairs: Sequence[tuple[RemoteFollower, BinaryIO]]) -> None:
        self._pairs = list(pairs)
        self._changed = threading.Condition()
        self._running = len(self._pairs)
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._copy, args=pair, daemon=True, name="jobkit-copy")
            for pair in self._pairs
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _copy(self, follower: RemoteFollower, out: BinaryIO) -> None:
        try:
            for chunk in follower:
                out.write(chunk)
                out.flush()
                with self._changed:
                    self._changed.notify_all()
        except BaseException as error:  # handed to the waiting thread
            with self._changed:
                self._errors.append(error)
        finally:
            follower.close()
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @property
    def done(self) -> bool:
        with self._changed:
            return self._running == 0

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every copy ended (True) or ``timeout`` passed (False).

        Raises the first error a copy met.
        """
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0 or self._errors, timeout)
            if self._errors:
                raise self._errors[0]
            return self._running == 0

    def wait_for_offsets(self, targets: Sequence[int]) -> None:
        """Wait until each copy ended or copied up to its target offset."""
        def reached() -> bool:
            return self._running == 0 or all(
                follower.offset >= target
                for (follower, _), target in zip(self._pairs, targets)
            )

        with self._changed:
            while not reached() and not self._errors:
                self._changed.wait(_POLL_MAX)
            if self._errors:
                raise self._errors[0]

    def stop(self) -> None:
        """End every copy now and wait for the threads."""
        for follower, _ in self._pairs:
            follower.cancel()
        for thread in self._threads:
            thread.join()


def follow_to_end(client: Client, job_id: str, stdout: BinaryIO,
                  stderr: BinaryIO) -> StatusRecord:
    """Copy the job's stdout and stderr live until it ended; return its final status.

    The streams usually end when the job does.  A background process the job
    left holding them open would keep them open after the job ended, so the
    status is also checked every now and then (0.1 s, backing off to 1 s):
    once the job ended, the copies stop when they have everything its status
    counts, even if the streams stay open.
    """
    out = client.follow(job_id, "stdout")
    try:
        err = client.follow(job_id, "stderr")
    except BaseException:
        out.close()
        raise
    copier = Copier([(out, stdout), (err, stderr)])
    copier.start()
    try:
        delay = _POLL_FIRST
        final: StatusRecord | None = None
        while not copier.wait(delay):
            status = client.status_record(client.status_json(job_id))
            if not status.running:
                final = status
                copier.wait_for_offsets([status.stdout.written, status.stderr.written])
                break
            delay = min(delay * 2, _POLL_MAX)
    finally:
        copier.stop()
    return final if final is not None else client.status_record(client.wait_json(job_id))


def copy_to_end(followers: Sequence[tuple[RemoteFollower, BinaryIO]]) -> None:
    """Copy each follower to its file, all live, until every one ended."""
    copier = Copier(followers)
    copier.start()
    try:
        while not copier.wait(_POLL_MAX):
            pass
    finally:
        copier.stop()

