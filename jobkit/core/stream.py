"""The pool's side of one output stream: the store, end-of-file, and followers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from threading import TIMEOUT_MAX

from jobkit.core.backend import OutputStore
from jobkit.core.models import StreamInfo

__all__ = ["Follower", "OutputStream"]

#: The most a follower hands out at once, so one chunk never needs huge buffers.
FOLLOW_CHUNK = 1 << 20


class OutputStream:
    """Wraps an `OutputStore` with what readers wait on.

    The supervisor thread is the only writer.  ``closed`` is set after the
    final append, under ``changed``'s lock, so a reader that sees ``closed``
    and then reads ``store.written`` has the final size.
    """

    __slots__ = ("changed", "closed", "error", "name", "released", "store", "waiters")

    def __init__(self, name: str, store: OutputStore) -> None:
        self.name = name
        self.store = store
        self.changed = threading.Condition(threading.Lock())
        self.closed = False
        self.released = False
        self.error: str | None = None
        #: Called once at the next change, by follower (see `Follower.when_ready`).
        self.waiters: dict[object, Callable[[], None]] = {}

    def notify(self, only: object = None) -> None:
        """Wake what waits for a change; ``only``: just that follower's `when_ready` call."""
        with self.changed:
            self.changed.notify_all()
            if only is None:
                waiters = self._take_waiters()
            else:
                wake = self.waiters.pop(only, None)
                waiters = [] if wake is None else [wake]
        self._wake(waiters)

    def mark_closed(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()
            waiters = self._take_waiters()
        self._wake(waiters)

    def release(self) -> None:
        """Free the storage and wake every follower (they end)."""
        with self.changed:
            self.closed = self.released = True
            self.changed.notify_all()
            waiters = self._take_waiters()
        self._wake(waiters)
        self.store.close()

    def _take_waiters(self) -> list[Callable[[], None]]:
        waiters = self.waiters
        if not waiters:
            return []
        self.waiters = {}
        return list(waiters.values())

    @staticmethod
    def _wake(waiters: list[Callable[[], None]]) -> None:
        # Outside the lock: a waiter may read the stream at once, from this thread.
        for wake in waiters:
            wake()

    def info(self) -> StreamInfo:
        # In this order, so that dropped <= written even while bytes arrive.
        closed = self.closed
        dropped = self.store.dropped
        return StreamInfo(written=self.store.written, dropped=dropped, closed=closed)

    def read(self, offset: int, size: int | None) -> tuple[int, bytes]:
        """Return ``(start, data)``: up to ``size`` bytes from ``offset``.

        ``start`` is ``offset`` unless those bytes were dropped, in which case
        the data starts at the first byte still kept.
        """
        while not self.released:
            start = max(offset, self.store.dropped)
            written = self.store.written
            end = written if size is None else min(written, start + size)
            if end <= start:
                return start, b""
            data = self.store.read(start, end - start)
            # A store that drops data answers b"" once `start` is gone: retry.
            if data or self.store.dropped <= start:
                return start, data
        return offset, b""


    def read_into(self, offset: int, buffer: memoryview) -> tuple[int, int]:
        """As `read`, into ``buffer``: ``(start, count)`` of the bytes put there."""
        while not self.released:
            start = max(offset, self.store.dropped)
            end = min(self.store.written, start + len(buffer))
            if end <= start:
                return start, 0
            count = self.store.read_into(start, buffer[: end - start])
            if count or self.store.dropped <= start:
                return start, count
        return offset, 0


class Follower(Iterator[bytes]):
    """Yields a stream's bytes from ``offset`` on, as they arrive.

    Iteration ends once the stream is closed and every byte was handed out,
    when the job is deleted, or after `cancel` (which any thread may call).
    ``offset`` is always the absolute position of the next byte to come, so a
    reader can resume from it later.  With the ``ring`` backend, bytes already
    dropped are skipped: the next chunk then starts at ``StreamInfo.dropped``.
    """

    def __init__(self, stream: OutputStream, offset: int) -> None:
        self._stream = stream
        self.offset = offset
        self._cancelled = False

    def cancel(self) -> None:
        """End the iteration, waking the follower if it is waiting."""
        self._cancelled = True
        self._stream.notify(only=self)  # its own reader; other followers' are not concerned

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __next__(self) -> bytes:
        data = self.read()
        if data is None:
            raise StopIteration
        return data

    def when_ready(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` once `read` with no wait may give something new.

        That is: bytes past `offset`, the end of the stream, or `cancel`.
        ``wake`` is called at once, from this thread, if that is so already;
        else later from the thread that wrote the bytes, which it must not
        hold up: it should only schedule the read.  This is how a reader
        waits for a quiet job without a thread of its own (the server's
        follow streams do).
        """
        stream = self._stream
        with stream.changed:
            ready = (self._cancelled or stream.released or stream.closed
                     or self.offset < stream.store.written)
            if not ready:
                stream.waiters[self] = wake
        if ready:
            wake()

    def read(self, timeout: float | None = None, limit: int = FOLLOW_CHUNK) -> bytes | None:
        """Return the next bytes; ``b""`` if ``timeout`` passed first; None at the end.

        At most ``limit`` bytes come at once.
        """
        stream = self._stream
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with stream.changed:
                while True:
                    if self._cancelled or stream.released:
                        return None
                    closed = stream.closed  # before `written`: see OutputStream
                    written = stream.store.written
                    if self.offset < written:
                        break
                    if closed:
                        return None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return b""
                    stream.changed.wait(None if remaining is None else min(remaining, TIMEOUT_MAX))
            start, data = stream.read(self.offset, min(written - self.offset, limit))
            if data:
                self.offset = start + len(data)
                return data
            if stream.released:
                return None
            # All of it was dropped before we came (``ring``): wait for more.
            self.offset = max(self.offset, start)

    def read_into(self, buffer: memoryview) -> int | None:
        """As ``read(timeout=0)``, into ``buffer``: how many bytes it put there; None at the end.

        ``0``: none yet.  The first byte put there is at ``offset - count``
        (past a gap, with ``ring``).  For a reader that reuses one buffer.
        """
        stream = self._stream
        while True:
            with stream.changed:
                if self._cancelled or stream.released:
                    return None
                closed = stream.closed  # before `written`: see OutputStream
                written = stream.store.written
                if self.offset >= written:
                    return None if closed else 0
            start, count = stream.read_into(self.offset, buffer[: written - self.offset])
            if count:
                self.offset = start + count
                return count
            if stream.released:
                return None
            self.offset = max(self.offset, start)  # all of it dropped (``ring``): look again
