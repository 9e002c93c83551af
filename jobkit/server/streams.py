"""Long responses: the bodies of ``GET /jobs/<id>/stdout|stderr`` and ``/output``.

They last as long as the client takes to read them (a follow stream: as
long as the job writes).  None holds a worker thread while it waits (see
`jobkit.server.pump`), but each holds a connection, a buffer and a
follower.  The `StreamRegistry` counts every one of them, follows,
downloads and output documents alike, against a whole-server and a
per-client limit, so that a few clients can never hold them all; it also
ends them at shutdown.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from jobkit.core.stream import Follower
from jobkit.server.errors import ApiError, stopping
from jobkit.server.shares import Shares
from jobkit.server.tls import Peer
from jobkit.wire import ProblemKind

if TYPE_CHECKING:
    from jobkit.server.tenants import TenantLimits

__all__ = [
    "ByteStream",
    "CountedBody",
    "PumpedBody",
    "StreamRegistry",
    "passthrough_file_wrapper",
]

class StreamRegistry:
    """The long responses open now, so that limits and shutdown can see them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open: set[Any] = set()
        self._follows = 0
        # Open streams per caller CN: an admin reading another client's job
        # spends the admin's allowance, not its owner's.
        self._by_caller = Shares()
        self.shutting_down = False

    def add(self, stream: Any, caller: str, limits: TenantLimits, *, follow: bool) -> None:
        """Count ``stream`` for ``caller``; `ApiError` (503, 429) naming the limit if over."""
        with self._lock:
            if self.shutting_down:
                raise stopping()
            if self._by_caller.held_by(caller) >= limits.max_client_streams:
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
            self._by_caller.take(caller)
            self._open.add(stream)
            self._follows += follow

    def remove(self, stream: Any, caller: str, *, follow: bool) -> None:
        """Forget ``stream`` (once; later calls do nothing)."""
        with self._lock:
            if stream in self._open:
                self._open.discard(stream)
                self._follows -= follow
                self._by_caller.give_back(caller)
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
        for stream in stuck:  # waiting for a client that does not read
            stream.abort()


class PumpedBody:
    """What the long bodies below share: bottle hands them to the server untouched.

    Bottle takes a body with ``read`` for a file, and gives it to our
    environ's ``wsgi.file_wrapper`` (`passthrough_file_wrapper`), which lets
    it through as it is; any other body bottle would start iterating itself,
    and the server would then write it with a worker thread held throughout.
    """

    def read(self, size: int = -1) -> bytes:  # bottle's test for a file; never called
        raise io.UnsupportedOperation(f"{type(self).__name__} is written by the server's pump")


class ByteStream(PumpedBody):
    """The body of ``GET /jobs/<id>/stdout|stderr``: raw bytes from a `Follower`.

    A `jobkit.server.pump.Source`: the server writes it in turns and holds no
    thread while it waits.  Without ``follow`` it ends once it has handed out
    what the stream held when the request came (``until``).  With
    ``follow`` it ends when the job's stream ends, when the job is deleted,
    at shutdown, or after ``idle_timeout`` seconds with nothing to send (the
    client resumes from its offset; no heartbeat can be sent instead: it
    would corrupt the raw bytes).

    The body is contiguous from the offset in ``X-Jobkit-Offset``: if the
    backend dropped bytes before they could be sent (``ring``), the response
    ends there instead, and the client, resuming from the offset it reached,
    gets a new response saying where bytes start now.  Unless
    ``chunk_offsets``: then the chunked body says where each chunk starts
    (`jobkit.server.pump.Transfer` writes ``start`` as a chunk extension),
    and skips the dropped bytes without ending.  A transfer that cannot
    frame its body in chunks (HTTP/1.0) turns ``chunk_offsets`` off.
    """

    def __init__(self, follower: Follower, *, until: int | None, peer: Peer | None,
                 on_close: Callable[[ByteStream], None], idle_timeout: float = 0,
                 chunk_offsets: bool = False) -> None:
        self._follower = follower
        #: Each chunk says where it starts, so a gap need not end the body.
        self.chunk_offsets = chunk_offsets
        #: The absolute offset of the first byte the last `take` gave.
        self.start = follower.offset
        self._peer = peer
        self._until = until
        self.follow = until is None
        self._on_close = on_close
        self.idle_timeout = idle_timeout if self.follow else 0
        self._done = False

    def take(self, limit: int) -> bytes | None:
        """The bytes ready now (b"" if none yet), or None at the end."""
        room = self._room(limit)
        if room is None:
            return None
        expected = self._follower.offset
        data = self._follower.read(0, room)
        kept = self._kept(expected, None if data is None else len(data))
        if kept is None or data is None:
            return None
        return data if kept == len(data) else data[:kept]

    def take_into(self, buffer: memoryview) -> int | None:
        """As `take`, into ``buffer`` (a pump's large one): how many bytes; None at the end."""
        room = self._room(len(buffer))
        if room is None:
            return None
        expected = self._follower.offset
        return self._kept(expected, self._follower.read_into(buffer[:room]))

    def _room(self, limit: int) -> int | None:
        """How many bytes the next take may give; None once the body is done."""
        if self._done:
            return None
        if self._until is None:
            return limit
        left = self._until - self._follower.offset
        return min(limit, left) if left > 0 else None

    def _kept(self, expected: int, count: int | None) -> int | None:
        """How many of the ``count`` bytes just read (from ``expected`` on) to hand
        out; None at the end (``count`` None: the follower ended)."""
        if count is None or (self._until is not None and not count):
            return None  # ended, or a download caught up with what the job had written
        if count:
            self.start = self._follower.offset - count
            if self.start != expected and not self.chunk_offsets:
                return None  # a gap: see the class docstring
            if self._until is not None and self.start + count > self._until:
                # Past a gap, the bytes may lie beyond what a download asked for.
                count = self._until - self.start
                return count if count > 0 else None
        return count

    def when_ready(self, wake: Callable[[], None]) -> None:
        self._follower.when_ready(wake)

    def cancel(self) -> None:
        """End the stream at its next turn (from any thread)."""
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


class CountedBody(PumpedBody):
    """A response body of chunks that keeps its place in the registry until it is closed.

    A `jobkit.server.pump.Source` whose chunks are always ready (they are
    read from the job's stored output).
    """

    idle_timeout = 0.0

    def __init__(self, chunks: Iterator[bytes], on_close: Callable[[CountedBody], None],
                 peer: Peer | None = None) -> None:
        self._chunks = chunks
        self._peer = peer
        self._on_close = on_close
        self._cancelled = False
        self._done = False

    def take(self, limit: int) -> bytes | None:
        """The next non-empty chunk, or None at the end (``limit`` is not enforced)."""
        if self._cancelled:
            return None
        for chunk in self._chunks:
            if chunk:
                return chunk
        return None

    def when_ready(self, wake: Callable[[], None]) -> None:
        wake()  # never waits for data

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


def passthrough_file_wrapper(filelike: Any, block_size: int = 1 << 16) -> Any:
    """``wsgi.file_wrapper`` that lets our `PumpedBody` through as it is (to the pump)."""
    if isinstance(filelike, PumpedBody):
        return filelike
    return _iter_file(filelike, block_size)


def _iter_file(filelike: Any, block_size: int) -> Iterator[bytes]:
    try:
        while chunk := filelike.read(block_size):
            yield chunk
    finally:
        if hasattr(filelike, "close"):
            filelike.close()
