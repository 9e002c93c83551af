"""Long responses: the bodies of ``GET /jobs/<id>/stdout|stderr`` and ``/output``.

Each holds a worker thread while it is written, for as long as the client
takes to read it (a follow stream: as long as the job writes).  The
`StreamRegistry` counts every one of them, follows, downloads and output
documents alike, against a whole-server and a per-client limit, so that a
few clients can never hold every thread; it also ends them at shutdown
(cheroot's ``stop()`` would otherwise wait for them for ever).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from jobkit.core.stream import Follower
from jobkit.server.errors import ApiError, stopping
from jobkit.server.tls import Peer
from jobkit.wire import ProblemKind

if TYPE_CHECKING:
    from jobkit.server.tenants import TenantLimits

__all__ = [
    "FOLLOW_POLL_INTERVAL",
    "ByteStream",
    "CountedBody",
    "StreamRegistry",
    "passthrough_file_wrapper",
]

#: How often an idle follow stream wakes up to notice shutdown or a dead client.
FOLLOW_POLL_INTERVAL = 0.5


class StreamRegistry:
    """The long responses open now, so that limits and shutdown can see them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open: set[Any] = set()
        self._follows = 0
        # Open streams per caller CN: an admin reading another client's job
        # spends the admin's allowance, not its owner's.
        self._by_caller: dict[str, int] = {}
        self.shutting_down = False

    def add(self, stream: Any, caller: str, limits: TenantLimits, *, follow: bool) -> None:
        """Count ``stream`` for ``caller``; `ApiError` (503, 429) naming the limit if over."""
        with self._lock:
            if self.shutting_down:
                raise stopping()
            if self._by_caller.get(caller, 0) >= limits.max_client_streams:
                raise ApiError(ProblemKind.QUOTA_EXCEEDED,
                               f"too many output streams open for client {caller!r} "
                               f"(limit {limits.max_client_streams} follows, downloads and "
                               f"/output documents together); close one first")
            if len(self._open) >= limits.max_streams:
                raise ApiError(ProblemKind.SERVER_BUSY,
                               f"too many output streams open on this server (limit "
                               f"{limits.max_streams} follows, downloads and /output "
                               f"documents together); try again later",
                               {"Retry-After": "1"})
            self._by_caller[caller] = self._by_caller.get(caller, 0) + 1
            self._open.add(stream)
            self._follows += follow

    def remove(self, stream: Any, caller: str, *, follow: bool) -> None:
        """Forget ``stream`` (once; later calls do nothing)."""
        with self._lock:
            if stream in self._open:
                self._open.discard(stream)
                self._follows -= follow
                left = self._by_caller[caller] - 1
                if left:
                    self._by_caller[caller] = left
                else:
                    del self._by_caller[caller]
                self._lock.notify_all()

    def count_follows(self) -> int:
        """How many follow streams are open now."""
        with self._lock:
            return self._follows

    def count(self) -> int:
        """How many streams of any kind are open now."""
        with self._lock:
            return len(self._open)

    def shutdown(self, grace: float) -> None:
        """End every stream: cancel followers, then abort connections still open after ``grace``."""
        with self._lock:
            self.shutting_down = True
            streams = list(self._open)
        for stream in streams:
            stream.cancel()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            stuck = list(self._open)
        for stream in stuck:  # blocked writing to a client that does not read
            stream.abort()


class ByteStream:
    """The body of ``GET /jobs/<id>/stdout|stderr``: raw bytes from a `Follower`.

    Without ``follow`` it ends once it has handed out what the stream held
    when the request came (``until``).  With ``follow`` it ends when the
    job's stream ends, when the job is deleted, at shutdown, or when the
    client goes away; it wakes up every `FOLLOW_POLL_INTERVAL` seconds to
    notice the last two, since nothing is written while the job is quiet
    (and no heartbeat can be: it would corrupt the raw bytes).

    It looks like a file to bottle (it has ``read``) and our environ's
    ``wsgi.file_wrapper`` hands it to cheroot untouched, so bottle does not
    block the response headers waiting for the first chunk.
    """

    def __init__(self, follower: Follower, *, until: int | None, peer: Peer | None,
                 on_close: Callable[[ByteStream], None], idle_timeout: float = 0) -> None:
        self._follower = follower
        self._until = until
        self.follow = until is None
        self._peer = peer
        self._on_close = on_close
        self._idle_timeout = idle_timeout
        self._moved = time.monotonic()
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.read()
        if not data:
            raise StopIteration
        return data

    def read(self, size: int = -1) -> bytes:
        """The next chunk; ``b""`` at the end (``size`` is ignored).

        The body is contiguous from the offset in ``X-Jobkit-Offset``: if the
        backend dropped bytes before we could send them (``ring``), the
        response ends there instead, and the client, resuming from the
        offset it reached, gets a new response saying where bytes start now.
        """
        follower = self._follower
        while not self._done:
            expected = follower.offset
            if self._until is not None:
                if expected >= self._until:
                    break
                data = follower.read(0)
                if not data:  # caught up (b"") or ended (None)
                    break
            else:
                data = follower.read(FOLLOW_POLL_INTERVAL)
                if data is None:
                    break
                if not data:
                    if self._peer is not None and self._peer.connection_gone():
                        break
                    if (self._idle_timeout
                            and time.monotonic() - self._moved > self._idle_timeout):
                        # Quiet for too long: end cleanly, freeing the thread and
                        # the slot; a client resumes from its offset when it likes.
                        break
                    continue
            if follower.offset - len(data) != expected:
                break  # a gap: see the docstring
            self._moved = time.monotonic()
            return data
        self.close()
        return b""

    def cancel(self) -> None:
        """End the stream at its next wake-up (from any thread)."""
        self._follower.cancel()

    def abort(self) -> None:
        """End the stream and cut its connection (a client that stopped reading)."""
        self._follower.cancel()
        if self._peer is not None:
            self._peer.abort()

    def close(self) -> None:
        """Done: release the follower and the stream's place in the registry."""
        if not self._done:
            self._done = True
            self._follower.cancel()
            self._on_close(self)


class CountedBody:
    """A response body of chunks that keeps its place in the registry until it is closed."""

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[CountedBody], None],
                 peer: Peer | None = None) -> None:
        self._chunks = chunks
        self._on_close = on_close
        self._peer = peer
        self._cancelled = False
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        try:
            if self._cancelled:
                raise StopIteration
            return next(self._chunks)
        except StopIteration:
            self.close()
            raise

    def cancel(self) -> None:
        """End the body before its next chunk (from any thread: at shutdown)."""
        self._cancelled = True

    def abort(self) -> None:
        """End the body and cut its connection (a client that stopped reading)."""
        self._cancelled = True
        if self._peer is not None:
            self._peer.abort()

    def close(self) -> None:
        if not self._done:
            self._done = True
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self._on_close(self)


def passthrough_file_wrapper(filelike: Any, block_size: int = 1 << 16) -> Iterable[bytes]:
    """``wsgi.file_wrapper`` that lets our `ByteStream` through as it is."""
    if isinstance(filelike, ByteStream):
        return filelike
    return _iter_file(filelike, block_size)


def _iter_file(filelike: Any, block_size: int) -> Iterator[bytes]:
    try:
        while chunk := filelike.read(block_size):
            yield chunk
    finally:
        if hasattr(filelike, "close"):
            filelike.close()
