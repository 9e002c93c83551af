"""``ring``: keep only the last ``capacity`` bytes of each stream."""

from __future__ import annotations

import collections
import threading

import attrs

from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl

__all__ = ["DEFAULT_CAPACITY", "RingBackend", "RingStore"]

DEFAULT_CAPACITY = 1 << 20


class RingStore(OutputStore):
    """A deque of chunks trimmed from the left once over capacity.

    Trimming only moves ``_head`` (how much of the first chunk is dropped)
    and pops whole chunks, so an append never copies what it keeps.  Appends
    and reads share a lock, held for at most a copy of ``capacity`` bytes.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head = 0  # bytes of _chunks[0] already dropped
        self._held = 0  # bytes kept: sum of the chunks' lengths less _head
        self._written = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        total = len(data)
        if total > self._capacity:  # only the tail of this chunk can survive
            data = data[total - self._capacity :] if self._capacity else b""
        with self._lock:
            if data:
                self._chunks.append(data)
                self._held += len(data)
            excess = self._held - self._capacity
            while excess > 0:
                left = len(self._chunks[0]) - self._head
                if left <= excess:
                    self._chunks.popleft()
                    self._head = 0
                    self._held -= left
                    excess -= left
                else:
                    self._head += excess
                    self._held -= excess
                    excess = 0
            self._written += total

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._written - self._held

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            start = self._written - self._held
            if offset < start:
                return b""  # dropped meanwhile: the pool retries from `dropped`
            end = min(self._written, offset + size)
            parts = []
            position = start - self._head  # where _chunks[0] would begin
            for chunk in self._chunks:
                chunk_end = position + len(chunk)
                if chunk_end > offset and position < end:
                    parts.append(chunk[max(0, offset - position) : end - position])
                if chunk_end >= end:
                    break
                position = chunk_end
            return b"".join(parts)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        # As `read`, copying each chunk's part straight into the buffer.
        with self._lock:
            start = self._written - self._held
            if offset < start:
                return 0
            end = min(self._written, offset + len(buffer))
            filled = 0
            position = start - self._head
            for chunk in self._chunks:
                chunk_end = position + len(chunk)
                if chunk_end > offset and position < end:
                    part = memoryview(chunk)[max(0, offset - position) : end - position]
                    buffer[filled : filled + len(part)] = part
                    filled += len(part)
                if chunk_end >= end:
                    break
                position = chunk_end
            return filled

    def close(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._head = self._held = 0


@attrs.define
class RingBackend:
    """Keep the last ``capacity`` bytes (default 1 MiB) of each stream in RAM.

    Attributes:
        capacity: Bytes kept per stream; 0 keeps nothing but still counts.
    """

    capacity: int = DEFAULT_CAPACITY

    def __attrs_post_init__(self) -> None:
        if isinstance(self.capacity, bool) or not isinstance(self.capacity, int):
            raise TypeError(f"ring capacity must be an int, not {type(self.capacity).__name__}")
        if self.capacity < 0:
            raise ValueError(f"ring capacity must be >= 0, not {self.capacity}")

    def open_store(self, job_id: str, stream: str) -> RingStore:
        return RingStore(self.capacity)


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("ring", RingBackend)
