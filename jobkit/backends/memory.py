"""``memory``: keep every byte a job writes in RAM."""

from __future__ import annotations

import bisect

import attrs

from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl

__all__ = ["MemoryBackend", "MemoryStore"]


class MemoryStore(OutputStore):
    """Chunks exactly as read from the pipe, never copied on the way in.

    ``_starts[i]`` is the absolute offset of ``_chunks[i]``.  Both lists only
    grow, and ``_written`` moves after a chunk is in place, so a reader that
    snapshots ``_written`` first needs no lock.
    """

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._starts: list[int] = []
        self._written = 0

    def append(self, data: bytes) -> None:
        self._starts.append(self._written)
        self._chunks.append(data)
        self._written += len(data)

    @property
    def written(self) -> int:
        return self._written

    def read(self, offset: int, size: int) -> bytes:
        end = min(self._written, offset + size)
        chunks, starts = self._chunks, self._starts
        index = bisect.bisect_right(starts, offset) - 1
        parts = []
        position = offset
        while position < end and 0 <= index < len(chunks):
            chunk, start = chunks[index], starts[index]
            parts.append(chunk[position - start : end - start])
            position = start + len(chunk)
            index += 1
        if len(parts) == 1 and len(parts[0]) == len(chunks[index - 1]):
            return parts[0]  # a whole chunk: hand it out without a copy
        return b"".join(parts)

    def close(self) -> None:
        # Replace rather than clear: a reader racing with us keeps its own
        # references and ends early instead of seeing shifted indices.
        self._chunks, self._starts = [], []


@attrs.define
class MemoryBackend:
    """Keep the whole output in RAM. Takes no options."""

    def open_store(self, job_id: str, stream: str) -> MemoryStore:
        return MemoryStore()


@hookimpl
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("memory", MemoryBackend)
