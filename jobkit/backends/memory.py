"""``memory``: keep every byte a job writes in RAM (or the first ``max_bytes``)."""

from __future__ import annotations

import bisect
import errno
import mmap
import os

import attrs

from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl
from jobkit.core.sizes import format_size, parse_size

__all__ = ["MemoryBackend", "MemoryStore"]

_FIRST_BLOCK = 1 << 14
_LAST_BLOCK = 1 << 24
_HUGE_PAGES = 1 << 21


class MemoryStore(OutputStore):
    """Output read straight from the pipe into anonymous memory blocks.

    Blocks double in size from 16 KiB to 16 MiB, so a job that prints one
    line costs little while a job that writes gigabytes fills few, large
    blocks; those of 2 MiB and more ask for transparent huge pages, which
    cuts the page faults of filling them by 512.  ``_starts[i]`` is the
    absolute offset of ``_blocks[i]``; both lists only grow, and
    ``_written`` moves only after the bytes are in place, so a reader that
    looks at ``_written`` first needs no lock.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max = max_bytes
        self._blocks: list[memoryview] = []
        self._starts: list[int] = []
        self._written = 0
        self._room = 0  # free bytes at the end of the last block

    def _grow(self) -> memoryview:
        size = min(_LAST_BLOCK, _FIRST_BLOCK << len(self._blocks))
        block = mmap.mmap(-1, size)
        if size >= _HUGE_PAGES and hasattr(mmap, "MADV_HUGEPAGE"):
            block.madvise(mmap.MADV_HUGEPAGE)
        view = memoryview(block)
        self._starts.append(self._written)
        self._blocks.append(view)
        self._room = size
        return view

    def _tail(self) -> memoryview:
        """The free part of the last block, growing a new one if it is full."""
        block = self._blocks[-1] if self._room else self._grow()
        used = len(block) - self._room
        return block[used:]

    def _check_room(self, wanted: int) -> int:
        """How much of ``wanted`` fits under the cap; raise once it is reached."""
        if self._max is None:
            return wanted
        if self._written >= self._max:
            # Recorded as the job's output_error; the rest of the stream is discarded.
            raise OSError(errno.EFBIG, f"over the memory backend's cap of {format_size(self._max)}")
        return min(wanted, self._max - self._written)

    def fill_from(self, fd: int, limit: int) -> int:
        limit = self._check_room(limit)
        if not self._blocks:
            # Nothing stored yet: most streams end empty or with a line, so
            # map no memory until there is something to keep.
            data = os.read(fd, min(limit, _FIRST_BLOCK))
            if data:
                self.append(data)
            return len(data)
        tail = self._tail()
        count = os.readv(fd, [tail[:limit]])
        self._room -= count
        self._written += count
        return count

    def append(self, data: bytes) -> None:
        view = memoryview(data)[: self._check_room(len(data))]
        while view:
            tail = self._tail()
            count = min(len(tail), len(view))
            tail[:count] = view[:count]
            view = view[count:]
            self._room -= count
            self._written += count

    @property
    def written(self) -> int:
        return self._written

    def read(self, offset: int, size: int) -> bytes:
        end = min(self._written, offset + size)
        blocks, starts = self._blocks, self._starts
        index = bisect.bisect_right(starts, offset) - 1
        parts = []
        position = offset
        while position < end and 0 <= index < len(blocks):
            block, start = blocks[index], starts[index]
            parts.append(block[position - start : min(end, start + len(block)) - start])
            position = start + len(block)
            index += 1
        return b"".join(parts)

    def close(self) -> None:
        # Drop rather than unmap: a reader racing with us may still hold a
        # block, and the memory goes back to the OS with the last reference.
        self._blocks, self._starts, self._room = [], [], 0


def _size(value: object) -> int | None:
    return None if value is None else parse_size("max_bytes", value)


@attrs.define
class MemoryBackend:
    """Keep the output in RAM.

    Attributes:
        max_bytes: Keep only the first this many bytes of each stream (an int
            or a size such as ``"64M"``); past it, the rest of the stream is
            discarded and ``JobStatus.output_error`` says so.  None: no cap.
    """

    max_bytes: int | None = attrs.field(default=None, converter=_size)

    def open_store(self, job_id: str, stream: str) -> MemoryStore:
        return MemoryStore(self.max_bytes)


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("memory", MemoryBackend)
