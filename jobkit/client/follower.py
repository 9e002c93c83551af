"""`RemoteFollower`: a job's output stream, read from a chunked HTTPS response.

It asks for ``?chunk_offsets=true`` (see `jobkit.wire.CHUNK_OFFSETS_PARAMETER`)
and reads the chunked framing itself: ``http.client`` drops chunk extensions,
and each chunk's says where its bytes start, past a ring's gap too.
"""

from __future__ import annotations

import collections
import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Literal

from jobkit.client.transport import Reply, Transport, translate_error
from jobkit.core.errors import ClientError, JobNotFound
from jobkit.wire import CHUNK_OFFSET_EXTENSION, OFFSET_HEADER

__all__ = ["RemoteFollower"]

#: The most bytes one read hands out.
CHUNK = 1 << 16
#: Chunks the background reader (see `RemoteFollower.read`) may hold unread.
_BUFFERED_CHUNKS = 16
#: Times in a row a broken follow stream is reopened before giving up.
MAX_RESUMES = 3

# A chunk with the absolute offset of its first byte; None at the end; or an error.
_Item = tuple[int, bytes] | None | ClientError
#: The longest chunk-size line (with its extensions) or trailer line accepted.
_MAX_LINE = 1024
_OFFSET = b";" + CHUNK_OFFSET_EXTENSION.encode() + b"="


class RemoteFollower(Iterator[bytes]):
    """Yields one stream of a remote job, from an offset on, as the server sends it.

    The remote twin of the library's `Follower`, with the same interface:
    iterate it, or call `read` with a timeout; `cancel` ends it from any
    thread; ``offset`` is the absolute offset of the next byte to come.  It
    ends when the server ends the response: when the job's stream is closed
    and drained (or, for a plain read, when it has sent what the stream held
    when asked), when the job is deleted, or when the server stops.

    A follow stream whose connection breaks is reopened from the offset
    reached (up to three times in a row without progress), so a reader never
    sees a byte twice or misses one; the server also cuts followers that stop
    reading for its idle timeout, and this is how they carry on.

    It holds its own connection until it ends; the connection goes back to
    the client's keep-alive pool if the response was read to its end.  Use it
    as a context manager, or call `close`, when you stop reading early.

    Iteration reads the response in the calling thread.  The first `read`
    with a timeout starts a reader thread that reads ahead (at most 16
    chunks), since a blocking TLS read cannot be abandoned half-way; from then
    on every read goes through it.

    Raises `ConnectionFailed` if the connection breaks and cannot be reopened.
    """

    def __init__(self, transport: Transport, reply: Reply, offset: int,
                 reopen: Callable[[int], Reply] | None = None,
                 ended_at: Callable[[int], bool] | None = None) -> None:
        self._transport = transport
        self._reply = reply
        self._reopen = reopen
        self._ended_at = ended_at
        #: The absolute offset of the next byte to come.
        self.offset = _start(reply, offset)
        self._received = self.offset  # the next byte to come off the network
        self._chunk_left = 0  # bytes of the current chunk still to read (own framing)
        self._cancelled = False
        self._ended = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._buffer: collections.deque[_Item] = collections.deque()
        self._reader: threading.Thread | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data = self.read()
        if data is None:
            raise StopIteration
        return data

    def __enter__(self) -> RemoteFollower:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def read(self, timeout: float | None = None) -> bytes | None:
        """The next bytes; ``b""`` if ``timeout`` seconds passed first; None at the end."""
        if timeout is None and self._reader is None:
            item = self._next_chunk()
        else:
            item = self._take(timeout)
        if isinstance(item, ClientError):
            raise item
        if item is None:
            return None
        start, data = item
        self.offset = start + len(data)
        return data

    def cancel(self) -> None:
        """End the stream now, from any thread; a blocked reader wakes up with the end."""
        with self._lock:
            self._cancelled = True
            self._changed.notify_all()
        connection = self._reply.connection
        sock = None if connection is None else connection.sock
        if sock is not None:
            try:
                # The TCP socket's shutdown, not SSLSocket's: it only wakes the
                # reading thread, without touching TLS state under its feet.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Stop reading and release the connection (kept for reuse only if fully read).

        Call it from the thread that reads (or after it stopped); `cancel` is
        the one to call from elsewhere.
        """
        if not self._ended:
            self.cancel()
        if self._reader is not None:
            self._reader.join()
        self._end(reusable=False)

    # -- reading ------------------------------------------------------------------

    def _next_chunk(self) -> _Item:
        """Read the next chunk from the network (in whatever thread calls it)."""
        resumes = 0
        while True:
            if self._ended or self._cancelled:
                self._end(reusable=False)
                return None
            response = self._reply.response
            if response is None:
                return None
            try:
                data = self._read_body(response)
            except Exception as error:
                self._end(reusable=False)
                if self._cancelled:
                    return None
                if self._reopen is None or resumes >= MAX_RESUMES:
                    return translate_error(error, self._transport.address, reading=True)
                resumes += 1
                ended = self._resume()
                if ended is not True:
                    return ended
                continue
            if not data:
                self._end(reusable=not self._cancelled)
                if self._cancelled or self._reopen is None or self._ended_at is None:
                    return None
                # The server ended the response: the stream's end, or the
                # server stopping?  Ask; carry on where we are if not the end.
                try:
                    if self._ended_at(self._received):
                        return None
                except ClientError as error:
                    return error
                # Not the end (a quiet stream the server ended after its idle
                # timeout, say): carry on, for as long as the job writes.  Only
                # broken connections count against MAX_RESUMES.
                ended = self._resume()
                if ended is not True:
                    return ended
                continue
            start = self._received
            self._received += len(data)
            return start, data

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        """The next bytes of the body (b"" at its end), framing read here if chunked.

        A chunk's ``;offset=N`` moves `_received` to ``N``; the chunks of a
        response never overlap and never go back.
        """
        reader = response.fp
        if not response.chunked or reader is None:
            return response.read1(CHUNK)
        if not self._chunk_left:
            line = reader.readline(_MAX_LINE)
            if not line.endswith(b"\n"):
                raise http.client.IncompleteRead(line)
            size_text, _, extensions = line.partition(b";")
            size = int(size_text, 16)  # ValueError for junk: the stream broke
            if not size:
                while reader.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: none are sent
                response.close()  # read to its end: the connection can be reused
                return b""
            start = _chunk_offset(b";" + extensions)
            if start is not None:
                if start < self._received:
                    raise ValueError(f"a chunk goes back from {self._received} to {start}")
                self._received = start
            self._chunk_left = size
        data = reader.read1(min(self._chunk_left, CHUNK))
        if not data:
            raise http.client.IncompleteRead(b"")
        self._chunk_left -= len(data)
        if not self._chunk_left and reader.read(2) != b"\r\n":
            raise ValueError("a chunk does not end with CRLF")
        return data

    def _resume(self) -> Literal[True] | ClientError | None:
        """Reopen the follow stream where it broke: True, or how the stream ends."""
        assert self._reopen is not None
        try:
            reply = self._reopen(self._received)
        except JobNotFound:
            return None  # deleted meanwhile: a follower of a deleted job just ends
        except ClientError as error:
            return error
        with self._lock:
            self._reply = reply
            self._ended = False
        self._received = _start(reply, self._received)
        self._chunk_left = 0
        if self._cancelled:  # cancelled while we reconnected: do not leak it
            self._end(reusable=False)
        return True

    def _end(self, *, reusable: bool) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
        self._transport.finish(self._reply, reusable=reusable)

    def _take(self, timeout: float | None) -> _Item:
        with self._lock:
            if self._reader is None:
                self._reader = threading.Thread(target=self._read_ahead, daemon=True,
                                                name="jobkit-follower")
                self._reader.start()
            if not self._changed.wait_for(lambda: self._buffer or self._cancelled, timeout):
                return (self.offset, b"")
            if not self._buffer:
                return None  # cancelled
            item = self._buffer.popleft()
            if not isinstance(item, tuple):
                self._buffer.appendleft(None)  # the end stays the end
            self._changed.notify_all()
            return item

    def _read_ahead(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(
                    lambda: len(self._buffer) < _BUFFERED_CHUNKS or self._cancelled
                )
            item = self._next_chunk()
            with self._lock:
                self._buffer.append(item)
                self._changed.notify_all()
            if not isinstance(item, tuple):
                return


def _chunk_offset(extensions: bytes) -> int | None:
    """The ``offset`` a chunk's extensions (``;name=value...``) give, if any."""
    at = extensions.find(_OFFSET)
    if at < 0:
        return None
    value = extensions[at + len(_OFFSET) :].split(b";", 1)[0].strip()
    return int(value) if value.isdigit() else None


def _start(reply: Reply, offset: int) -> int:
    """Where the reply's bytes start: ``offset``, or later if the server dropped some."""
    start = reply.headers.get(OFFSET_HEADER)
    return max(offset, int(start)) if start and start.isdigit() else offset
