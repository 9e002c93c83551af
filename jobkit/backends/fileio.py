"""What the stores that keep output in a file share: splicing in, reading back."""

from __future__ import annotations

import errno
import os

__all__ = ["pread_all", "pread_into", "splice_into"]

_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def splice_into(source: int, target: int, limit: int) -> int | None:
    """Move up to ``limit`` bytes from pipe ``source`` to file ``target`` in the kernel.

    The bytes never pass through Python.  Returns the count (0 at end of
    file), or None where the file system cannot splice (then copy instead);
    lets ``BlockingIOError`` through when the pipe is empty.
    """
    if _SPLICE is None:
        return None
    try:
        count: int = _SPLICE(source, target, limit, flags=_SPLICE_FLAGS)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: this file system cannot splice
            raise
        return None
    return count


def pread_all(fd: int, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes of ``fd`` from ``offset`` (fewer only at the end of the file)."""
    parts = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        parts.append(data)
        offset += len(data)
        size -= len(data)
    return b"".join(parts)


def pread_into(fd: int, offset: int, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``fd`` at ``offset``; the count (short only at the end of the file)."""
    filled = 0
    while filled < len(buffer):
        count = os.preadv(fd, [buffer[filled:]], offset + filled)
        if not count:
            break
        filled += count
    return filled
