"""Long response bodies, written without holding a worker thread while they wait.

A follow stream waits for its job to write; a download or an ``/output``
document waits for a client that reads slowly, or not at all.  Were a
worker thread to wait with each, a few clients could hold every thread of
the server (issue 11).  So a long body is a `Transfer`, and a worker only
ever moves bytes that are ready to go:

* a worker takes a turn at a transfer: it sends, without blocking, what the
  body has now, up to `TURN_BYTES` (then the transfer queues again behind
  the requests waiting, so one fast stream cannot crowd them out);
* when the socket's send buffer is full, the transfer is parked in the
  `ResponsePump`'s epoll until the client has read some of it;
* when the body has nothing more yet (a quiet job), it is parked with its
  source, which wakes it when the job writes (`Follower.when_ready`);
* a woken transfer goes back on cheroot's queue of connections with work to
  do, and the next free worker takes its next turn.

Each transfer keeps at most one buffer while it waits: `CHUNK` bytes (plus
the framing), or one of the pump's few reused `LARGE_CHUNK` buffers, earned
by a bulk stream whose client keeps up and filled in place (`LargeBuffers`).
The pump's one thread watches the parked transfers: it ends a follow stream
idle for its ``idle_timeout`` (cleanly: the client resumes at its offset),
and cuts a transfer whose client has read nothing for ``write_timeout``
seconds or has gone away.

This module knows nothing of cheroot: `jobkit.server.connection` creates the
transfers, runs their turns in cheroot's workers and hands them to the pump.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from jobkit.server.shares import Shares
from jobkit.wire import CHUNK_OFFSET_EXTENSION

__all__ = ["CHUNK", "TURN_BYTES", "LargeBuffers", "ResponsePump", "Source", "Transfer", "Wait"]

log = logging.getLogger("jobkit.server")

#: The most a transfer takes from its body at once: its one buffer.
CHUNK = 64 << 10
#: What a transfer whose client keeps up, and whose source filled its last buffer,
#: may take at once instead, while one of the pump's `LARGE_BUFFERS` is free: fewer,
#: larger writes cost less CPU per byte.
LARGE_CHUNK = 1 << 20
#: Room before a large buffer's bytes for their chunk's size line (up to 14 hex
#: digits, an offset extension of up to 19 digits, CRLF), and after them for its
#: CRLF: the chunk is framed in place.
_ROOM, _TAIL = 48, 2
#: How many large buffers a pump keeps for reuse while none holds them.
LARGE_SPARES = 4
#: How many transfers of one pump may hold a `LARGE_CHUNK` buffer at once...
LARGE_BUFFERS = 32
#: ... and how many of them one client's.
LARGE_BUFFERS_PER_CLIENT = 4
#: The most a worker sends for one transfer before it lets others have a turn.
TURN_BYTES = 4 << 20
#: How long a worker waits for room in the socket of a client that is reading.
BRIEF_WAIT_MS = 2
#: How often the pump looks for idle, stalled and abandoned transfers.
SWEEP_INTERVAL = 0.5

_CHUNK_END = b"0\r\n\r\n"
_OFFSET_EXTENSION = CHUNK_OFFSET_EXTENSION.encode()


@runtime_checkable
class Source(Protocol):
    """A response body a `Transfer` can write: it hands out bytes without blocking."""

    #: Seconds it may have nothing to send before it is ended cleanly; 0: never.
    idle_timeout: float

    def take(self, limit: int) -> bytes | None:
        """Up to ``limit`` bytes available now; ``b""`` if none yet; None at the end."""

    def when_ready(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` once `take` may give something new (at once if it may now)."""

    # Optional: ``take_into(buffer: memoryview) -> int | None``, as `take` but
    # copying the bytes into ``buffer`` (the count; 0: none yet; None: the
    # end).  A source that has it fills the pump's large buffers in place: no
    # allocation, no copy for the framing.
    #
    # Optional: ``chunk_offsets: bool`` and ``start: int``: if true, each
    # chunk says where its bytes start (``start`` after the `take`), as the
    # chunk extension ``;offset=N`` (`jobkit.wire.CHUNK_OFFSET_EXTENSION`).
    # A transfer that does not frame in chunks sets it false.


class LargeBuffers:
    """Who may fill a `LARGE_CHUNK` buffer now: a few streams, a few per client.

    A large buffer saves CPU per byte for a client that keeps up; a client
    that stops reading keeps its buffer until it is cut off, so no client
    may hold more than its share.  The buffers themselves are reused
    (`LARGE_SPARES` of them kept while free): a fresh megabyte costs page
    faults and zeroing on every fill.
    """

    def __init__(self, total: int = LARGE_BUFFERS,
                 per_client: int = LARGE_BUFFERS_PER_CLIENT) -> None:
        self._total = total
        self._per_client = per_client
        self._held = Shares()
        self._spares: list[bytearray] = []
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        with self._lock:
            return self._total - self._held.total

    def held_by(self, client: str) -> int:
        with self._lock:
            return self._held.held_by(client)

    def take(self, client: str) -> bool:
        """One for ``client``, if there is one free and it is within its share."""
        with self._lock:
            if (self._held.held_by(client) >= self._per_client
                    or self._held.total >= self._total):
                return False
            self._held.take(client)
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            self._held.give_back(client)

    def buffer(self) -> bytearray:
        """A buffer for a `take` granted: `LARGE_CHUNK` bytes and room for the framing."""
        with self._lock:
            if self._spares:
                return self._spares.pop()
        return bytearray(_ROOM + LARGE_CHUNK + _TAIL)

    def recycle(self, buffer: bytearray) -> None:
        """``buffer`` (from `buffer`) is no longer used: keep it for the next."""
        with self._lock:
            if len(self._spares) < LARGE_SPARES:
                self._spares.append(buffer)


class Wait(Enum):
    """What a transfer that is not done waits for."""

    TURN = "turn"  # nothing: it used up its turn, and queues again
    WRITABLE = "writable"  # the client to read, so the socket takes more
    READABLE = "readable"  # TLS needs to read first (rare: a key update)
    DATA = "data"  # its source to have more


class Transfer:
    """One long response body on its way to a client.

    Args:
        sock: The connection's socket (non-blocking while the transfer runs).
        source: Where the bytes come from.
        head: The status line and headers, not sent yet: they leave with the
            first bytes of the body (one TLS record for a small download).
        chunked: Frame the body in HTTP/1.1 chunks (else it ends with the
            connection).
        keep_alive: The connection serves more requests afterwards.
        count: Told how many body bytes were taken (the access log's count).
        close: Called once, when the transfer is over, whole or not: it
            releases the source (the WSGI response's ``close``).
        large_buffers: Shared by a pump's transfers: taking one lets a transfer
            whose client keeps up fill a `LARGE_CHUNK` buffer (None: never).
        client: Whose transfer it is (its share of ``large_buffers``).
    """

    def __init__(self, sock: socket.socket, source: Source, *, head: bytes, chunked: bool,
                 keep_alive: bool, count: Callable[[int], None],
                 close: Callable[[], None],
                 large_buffers: LargeBuffers | None = None, client: str = "-") -> None:
        self.sock = sock
        self._large_buffers = large_buffers
        self._client = client
        self._large = False  # holds one of them
        self._buffer: bytearray | None = None  # the large buffer, while it holds one
        self._take_into: Callable[[memoryview], int | None] | None = getattr(
            source, "take_into", None)
        # The last write did not have to wait: a large buffer is earned by a
        # chunk sent whole, so a client that reads nothing never holds one.
        self._keeping_up = False
        # The last chunk filled its buffer: the source has bytes to spare, so a
        # large buffer would not hold a megabyte for a trickle of output.
        self._full = False
        self.source = source
        self._head = head
        self._chunked = chunked
        if not chunked and getattr(source, "chunk_offsets", False):
            source.chunk_offsets = False  # type: ignore[attr-defined]  # no chunk to say it
        self._chunk_offsets: bool = chunked and getattr(source, "chunk_offsets", False)
        self.keep_alive = keep_alive
        self._count = count
        self._close: Callable[[], None] | None = close
        self._pending: memoryview | bytes = b""
        self._source_done = False
        #: Why the transfer must end now without sending the rest (the client
        #: is gone or stalled; set by the pump), or None.
        self.failure: str | None = None
        #: Set by the pump: the source was idle too long; end the body cleanly.
        self.expired = False
        self.done = False
        self.waiting: Wait = Wait.TURN
        #: When a byte last moved (``time.monotonic()``).
        self.moved_at = time.monotonic()
        # The pump's: is it parked, since when, and its socket's registration.
        self._armed = False
        self._parked_for = Wait.TURN
        self.watched_fd = -1
        #: The pump gave it this turn (it must hear when the turn is over).
        self.dispatched = False
        self.parked_at = 0.0
        self._claim_lock = threading.Lock()

    def turn(self) -> None:
        """Send what is ready, up to `TURN_BYTES`, without blocking; set `waiting` or `done`.

        Run by one worker thread at a time.  Never raises: a failure ends
        the transfer and its connection.
        """
        if self.failure is not None:
            self._end(keep_alive=False)
            return
        sent = 0
        try:
            while True:
                if not self._pending:
                    if self._source_done:
                        if not self.keep_alive:
                            self._close_notify()
                        self._end(keep_alive=self.keep_alive)
                        return
                    if not self._fill():
                        self.waiting = Wait.DATA
                        return
                try:
                    count = self.sock.send(self._pending)
                except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                    self._keeping_up = False
                    if sent and self._writable_soon():
                        continue
                    self.waiting = Wait.WRITABLE
                    return
                except ssl.SSLWantReadError:
                    self.waiting = Wait.READABLE
                    return
                self._pending = memoryview(self._pending)[count:]
                self.moved_at = time.monotonic()
                sent += count
                if not self._pending:
                    self._keeping_up = True
                    self._release_large()
                if sent >= TURN_BYTES:
                    self.waiting = Wait.TURN
                    return
        except OSError:  # the client went away (reset, broken pipe, TLS EOF)
            self._end(keep_alive=False)
        except Exception:  # a broken backend: cut this response, not the server
            log.exception("writing a response body failed")
            self._end(keep_alive=False)

    def _close_notify(self) -> None:
        """Say the body is whole with TLS's close_notify, before the connection closes.

        A body that ends with its connection (HTTP/1.0) is otherwise
        indistinguishable, to the client, from one cut short in between.
        Non-blocking: the alert is sent if there is room; the client's
        answer is not waited for.
        """
        unwrap = getattr(self.sock, "unwrap", None)
        if unwrap is not None:
            try:
                unwrap()
            except (OSError, ValueError):  # ssl.SSLWantReadError: the peer's is not awaited
                pass

    def _writable_soon(self) -> bool:
        """Wait up to `BRIEF_WAIT` for a client that is reading to make room.

        Parking and waking a transfer costs two thread hand-offs; a client
        that just took bytes usually takes more within a millisecond.
        """
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLOUT)
        return bool(poller.poll(BRIEF_WAIT_MS))

    def _release_large(self) -> None:
        if self._large:
            self._large = False
            assert self._large_buffers is not None
            self._large_buffers.give_back(self._client)
            buffer, self._buffer = self._buffer, None
            if buffer is not None:
                self._pending = b""  # it may be empty, but it must not look into the buffer
                self._large_buffers.recycle(buffer)

    def _fill(self) -> bool:
        """Put the next bytes to send in the buffer; False if the source has none yet."""
        earned = self._keeping_up and self._full and self._large_buffers is not None
        if (earned and self._take_into is not None and not self._head and not self.expired
                and self._large_buffers is not None and self._large_buffers.take(self._client)):
            return self._fill_large(self._take_into, self._large_buffers)
        limit = CHUNK
        if earned and self._large_buffers is not None and self._large_buffers.take(self._client):
            self._large = True
            limit = LARGE_CHUNK
        data = None if self.expired else self.source.take(limit)
        self._full = data is not None and len(data) >= limit
        head, self._head = self._head, b""
        if not data:
            self._release_large()
        if data is None:
            self._source_done = True
            self._pending = head + _CHUNK_END if self._chunked else head
            return True
        if data:
            self._count(len(data))
            if self._chunked:
                self._pending = b"".join((head, self._size_line(len(data)), data, b"\r\n"))
            else:
                self._pending = head + data if head else data
            return True
        if head:  # nothing yet: send the headers now, a follow's client waits for them
            self._pending = head
            return True
        return False

    def _fill_large(self, take_into: Callable[[memoryview], int | None],
                    large_buffers: LargeBuffers) -> bool:
        """`_fill` with a large buffer (granted), filled in place and framed around."""
        self._large = True
        buffer = self._buffer = large_buffers.buffer()
        view = memoryview(buffer)
        count = take_into(view[_ROOM : _ROOM + LARGE_CHUNK])
        self._full = count == LARGE_CHUNK
        if not count:
            self._release_large()
            if count is None:
                self._source_done = True
                self._pending = _CHUNK_END if self._chunked else b""
                return True
            return False
        self._count(count)
        end = _ROOM + count
        if not self._chunked:
            self._pending = view[_ROOM:end]
            return True
        size = self._size_line(count)
        start = _ROOM - len(size)
        buffer[start:_ROOM] = size
        buffer[end : end + _TAIL] = b"\r\n"
        self._pending = view[start : end + _TAIL]
        return True

    def _size_line(self, count: int) -> bytes:
        if self._chunk_offsets:
            return b"%x;%s=%d\r\n" % (count, _OFFSET_EXTENSION, self.source.start)  # type: ignore[attr-defined]
        return b"%x\r\n" % count

    def _end(self, *, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.done = True
        self._pending = b""
        self._release_large()
        self.abandon()

    def abandon(self) -> None:
        """Release the body (once), whatever was sent."""
        close, self._close = self._close, None
        if close is not None:
            close()

    # -- the pump's side ----------------------------------------------------

    def arm(self) -> None:
        with self._claim_lock:
            self._armed = True
            self._parked_for = self.waiting
            self.parked_at = time.monotonic()

    def claim(self, waiting_for: Wait | None = None) -> bool:
        """Take the parked transfer out of its wait: True for exactly one caller.

        ``waiting_for``: only if it is parked for that (the sweep's checks
        must not act on a transfer that has moved on since it looked).
        """
        with self._claim_lock:
            if waiting_for is not None and self._parked_for is not waiting_for:
                return False
            armed, self._armed = self._armed, False
            return armed


class ResponsePump:
    """Holds the transfers that wait, and hands each back to a worker when it can go on.

    Args:
        dispatch: Queues a woken transfer's connection for a worker
            (cheroot's ``process_conn``); must not block.
        write_timeout: Seconds a client may read nothing before its transfer is cut.
        peer_gone: True if the transfer's client went away (checked while its
            body waits for data, when no write would notice).
        max_turns: The most transfers queued for or in a worker's turn at
            once; the rest wait their turn here, in the order they woke.  Half
            the workers at most, so that requests always find one soon
            however many streams have bytes to send.
    """

    def __init__(self, dispatch: Callable[[Any], None], *, write_timeout: float,
                 peer_gone: Callable[[Transfer], bool], max_turns: int) -> None:
        self._dispatch = dispatch
        self._max_turns = max(1, max_turns)
        self._turns = 0  # dispatched and not over
        self._waiting_turn: collections.deque[Transfer] = collections.deque()
        self._write_timeout = write_timeout
        self._peer_gone = peer_gone
        self._lock = threading.Lock()
        #: What lets a transfer fill a large buffer (see `Transfer`).
        self.large_buffers = LargeBuffers()
        self._connections: dict[Transfer, Any] = {}
        self._watched: dict[int, Transfer] = {}  # fd -> transfer registered with epoll
        self._epoll: select.epoll | None = None
        self._wakeup = -1
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __len__(self) -> int:
        """How many transfers are live (parked, queued or in a turn)."""
        with self._lock:
            return len(self._connections)

    def start(self) -> None:
        """Start the pump's thread (with the server: its cost is fixed, not per stream)."""
        with self._lock:
            if self._thread is None and not self._stopping:
                self._epoll = select.epoll()
                # Written by `stop`, so that the thread ends at once, between polls or in one.
                self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._epoll.register(self._wakeup, select.EPOLLIN)
                self._thread = threading.Thread(target=self._run, name="jobkit-response-pump",
                                                daemon=True)
                self._thread.start()

    def park(self, transfer: Transfer, connection: Any) -> bool:
        """Wait with ``transfer`` until it can go on; False if the pump is not running."""
        with self._lock:
            if self._stopping or self._thread is None:
                return False
            self._connections[transfer] = connection
        transfer.arm()
        if transfer.waiting is Wait.TURN:
            self._wake(transfer)
        elif transfer.waiting is Wait.DATA:
            transfer.source.when_ready(lambda: self._wake(transfer))
        else:
            events = select.EPOLLOUT if transfer.waiting is Wait.WRITABLE else select.EPOLLIN
            self._watch(transfer, events | select.EPOLLONESHOT)
        return True

    def forget(self, transfer: Transfer) -> None:
        """``transfer`` is done: stop watching its socket (before it is closed)."""
        with self._lock:
            self._connections.pop(transfer, None)
            fd, transfer.watched_fd = transfer.watched_fd, -1
            if fd >= 0 and self._watched.get(fd) is transfer:
                del self._watched[fd]
                assert self._epoll is not None
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass

    def _watch(self, transfer: Transfer, events: int) -> None:
        fd = transfer.sock.fileno()
        with self._lock:
            epoll = self._epoll
            assert epoll is not None
            try:
                if transfer.watched_fd == fd:
                    epoll.modify(fd, events)
                else:
                    epoll.register(fd, events)
                    transfer.watched_fd = fd
                    self._watched[fd] = transfer
                fd = 0
            except (OSError, ValueError):  # closed under us: a turn will find out
                fd = -1
        if fd < 0:
            self._wake(transfer)

    def _wake(self, transfer: Transfer) -> None:
        if transfer.claim():
            self._requeue(transfer)

    def _requeue(self, transfer: Transfer) -> None:
        """Give the claimed ``transfer`` a worker's turn, now or when one is over."""
        with self._lock:
            connection = self._connections.get(transfer)
            if connection is None:
                return
            if self._turns >= self._max_turns:
                self._waiting_turn.append(transfer)
                return
            self._turns += 1
        transfer.dispatched = True
        self._dispatch(connection)

    def turn_over(self, transfer: Transfer) -> None:
        """A worker's turn at ``transfer``, which the pump gave it, is over: give the next one."""
        transfer.dispatched = False
        with self._lock:
            while self._waiting_turn:
                following = self._waiting_turn.popleft()
                connection = self._connections.get(following)
                if connection is not None:
                    break
            else:
                self._turns -= 1
                return
        following.dispatched = True
        self._dispatch(connection)

    def _run(self) -> None:
        epoll = self._epoll
        assert epoll is not None
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        while not self._stopping:
            try:
                ready = epoll.poll(SWEEP_INTERVAL)
            except (OSError, ValueError):  # closed: stop() only does so after this thread ended
                return
            for fd, _events in ready:
                with self._lock:
                    transfer = self._watched.get(fd)
                if transfer is not None:
                    self._wake(transfer)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL
                try:
                    self._sweep(now)
                except Exception:  # the pump must outlive any one transfer's trouble
                    log.exception("checking waiting responses failed")

    def _sweep(self, now: float) -> None:
        """End what waited too long: idle follows cleanly, stalled or orphaned ones not."""
        with self._lock:
            transfers = list(self._connections)
        for transfer in transfers:
            waiting = transfer.waiting
            if waiting is Wait.DATA:
                idle = transfer.source.idle_timeout
                if idle and now - transfer.moved_at > idle:
                    if transfer.claim(Wait.DATA):
                        transfer.expired = True
                        self._requeue(transfer)
                elif self._peer_gone(transfer) and transfer.claim(Wait.DATA):
                    transfer.failure = "the client went away"
                    self._requeue(transfer)
            elif (waiting in (Wait.WRITABLE, Wait.READABLE)
                    and now - transfer.parked_at > self._write_timeout
                    and transfer.claim(waiting)):
                transfer.failure = f"the client read nothing for {self._write_timeout:g} s"
                self._requeue(transfer)

    def stop(self) -> list[Any]:
        """Stop; return the connections of the transfers still live, for the caller to close.

        Call it once no worker runs any more: their transfers are released here.
        """
        with self._lock:
            self._stopping = True
            live = list(self._connections.items())
            self._connections.clear()
            self._watched.clear()
            self._waiting_turn.clear()
            # Taken once: a second stop (cheroot's, after a failed start) finds none.
            epoll, thread, wakeup = self._epoll, self._thread, self._wakeup
            self._epoll, self._thread, self._wakeup = None, None, -1
        if thread is not None:
            os.eventfd_write(wakeup, 1)
            thread.join()
        if wakeup >= 0:
            os.close(wakeup)
        if epoll is not None:
            epoll.close()
        for transfer, _connection in live:
            try:
                transfer.abandon()
            except Exception:
                log.exception("releasing a response body at shutdown failed")
        return [connection for _transfer, connection in live]
