"""Running a job without network: a new network namespace with only loopback.

Python 3.11 has no ``os.unshare``; libc's ``unshare(2)`` is called through
ctypes.  Namespaces belong to threads, and a child starts in its forking
thread's: the job is spawned from a short-lived thread moved into a fresh
namespace, which ends with it, so no thread of ours ever has to move back.
A new namespace's loopback interface is down; it is brought up before the
job starts, so that the job can still talk to itself over 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["NetworkUnavailable", "in_new_namespace"]

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
#: struct ifreq: a 16-byte name, then (here) the 16-bit flags, padded to 40 bytes.
_IFREQ = struct.Struct("16sH22x")


class NetworkUnavailable(Exception):
    """A new network namespace could not be made; the message says why."""


def _unshare_network() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        hint = " (it needs CAP_SYS_ADMIN: run as root)" if code == 1 else ""
        raise NetworkUnavailable(
            f"network=False: cannot make a network namespace: {os.strerror(code)}{hint}"
        )


def _loopback_up() -> None:
    # A socket made now belongs to the new namespace, and so does its "lo".
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(b"lo", 0)
        flags = _IFREQ.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def in_new_namespace(start: Callable[[], T]) -> T:
    """Run ``start`` in a thread of its own inside a new network namespace; return its result.

    Raise `NetworkUnavailable` if the namespace cannot be made, and
    whatever ``start`` raised.
    """
    box: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            _unshare_network()
            try:
                _loopback_up()
            except OSError as exc:
                raise NetworkUnavailable(
                    f"network=False: cannot bring up loopback: {exc.strerror or exc}"
                ) from None
            box.append((True, start()))
        except BaseException as exc:  # handed to the caller's thread
            box.append((False, exc))

    thread = threading.Thread(target=run, name="jobkit-netns", daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:  # no thread to be had: the process limit
        raise NetworkUnavailable(f"network=False: cannot start a thread: {exc}") from None
    thread.join()
    ok, value = box[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
