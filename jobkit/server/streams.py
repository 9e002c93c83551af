"""Raw output responses: the body of ``GET /jobs/<id>/stdout|stderr`` and the open follows.

A follow stream is a response that lasts as long as the job writes: the
`FollowRegistry` counts them against the limits and ends them at shutdown
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

__all__ = ["FOLLOW_POLL_INTERVAL", "ByteStream", "FollowRegistry", "passthrough_file_wrapper"]

#: How often an idle follow stream wakes up to notice shutdown or a dead client.
FOLLOW_POLL_INTERVAL = 0.5


class FollowRegistry:
    """The follow streams open now, so that limits and shutdown can see them."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open: set[ByteStream] = set()
        # Open follow streams per caller CN: an admin following another
        # client's job spends the admin's allowance, not its owner's.
        self._by_caller: dict[str, int] = {}
        self.shutting_down = False

    def add(self, stream: ByteStream, caller: str | None, limits: TenantLimits) -> None:
        """Count ``stream`` for ``caller``; `ApiError` (503, 429) if over a limit."""
        with self._lock:
            if self.shutting_down:
                raise stopping()
            if len(self._open) >= limits.max_follows:
                raise ApiError(ProblemKind.SERVER_BUSY,
                               f"too many follow streams open on this server "
                               f"(limit {limits.max_follows}); try again later",
                               {"Retry-After": "1"})
            if caller is not None:
                if self._by_caller.get(caller, 0) >= limits.max_client_follows:
                    raise ApiError(ProblemKind.QUOTA_EXCEEDED,
                                   f"too many follow streams open for client "
                                   f"{caller!r} (limit {limits.max_client_follows})")
                self._by_caller[caller] = self._by_caller.get(caller, 0) + 1
            self._open.add(stream)

    def remove(self, stream: ByteStream, caller: str | None) -> None:
        """Forget ``stream`` (once; later calls do nothing)."""
        with self._lock:
            if stream in self._open:
                self._open.discard(stream)
                if caller is not None:
                    left = self._by_caller[caller] - 1
                    if left:
                        self._by_caller[caller] = left
                    else:
                        del self._by_caller[caller]
                self._lock.notify_all()

    def count(self) -> int:
        """How many follow streams are open now."""
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
                 on_close: Callable[[ByteStream], None]) -> None:
        self._follower = follower
        self._until = until
        self.follow = until is None
        self._peer = peer
        self._on_close = on_close
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
                    continue
            if follower.offset - len(data) != expected:
                break  # a gap: see the docstring
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
