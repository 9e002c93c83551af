"""``memory``: keep every byte a job writes in RAM."""

from __future__ import annotations

import bisect
import mmap
import os

import attrs

from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl

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

    def __init__(self) -> None:
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

    def fill_from(self, fd: int, limit: int) -> int:
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
        view = memoryview(data)
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


@attrs.define
class MemoryBackend:
    """Keep the whole output in RAM. Takes no options."""

    def open_store(self, job_id: str, stream: str) -> MemoryStore:
        return MemoryStore()


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("memory", MemoryBackend)
