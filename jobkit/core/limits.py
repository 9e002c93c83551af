"""`Limits`: what one job may use of the machine (CPU, memory, processes, disk IO).

A plain value: it says nothing of how the limits are enforced (that is
`jobkit.core.cgroups`), so that a client can build and check one without the
library's machinery.  Sizes take the units of `jobkit.core.sizes.parse_size`
(``"256M"``, ``"1.5GiB"``, or bytes as an int).
"""

from __future__ import annotations

import math

import attrs

from jobkit.core.sizes import format_size, parse_size

__all__ = ["MIN_MEMORY", "Limits"]

#: The smallest memory limit: below it, not even ``true`` can be loaded.
MIN_MEMORY = 1 << 20
#: The smallest CPU share: the kernel's smallest quota is 1 ms per 100 ms period.
MIN_CPU = 0.01
#: The largest CPU count a limit may name (more than any machine jobkit runs on).
MAX_CPU = 4096.0


def _cpu(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"cpu must be a number of CPUs such as 0.5, not {type(value).__name__}")
    if not math.isfinite(value) or not MIN_CPU <= value <= MAX_CPU:
        raise ValueError(f"cpu must be between {MIN_CPU} and {MAX_CPU:g} CPUs, not {value}")
    return float(value)


def _size(what: str, value: object, minimum: int) -> int | None:
    if value is None:
        return None
    size = parse_size(what, value)
    if size < minimum:
        raise ValueError(f"{what} must be at least {format_size(minimum)}, not {value!r}")
    return size


def _memory(value: object) -> int | None:
    return _size("memory", value, MIN_MEMORY)


def _io_read(value: object) -> int | None:
    return _size("io_read_bps", value, 1)


def _io_write(value: object) -> int | None:
    return _size("io_write_bps", value, 1)


def _pids(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"pids must be a whole number of processes, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"pids must be at least 1, not {value}")
    if value > 1 << 22:  # the kernel's PID_MAX_LIMIT
        raise ValueError(f"pids must be at most {1 << 22}, not {value}")
    return value


def _strict(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"strict must be True or False, not {type(value).__name__}")
    return value


@attrs.frozen
class Limits:
    """What one job may use, for its whole process tree; None means no limit.

    Refuses nonsense when made: wrong types raise ``TypeError``, impossible
    values (zero, negative, not finite, a fraction of a byte) ``ValueError``.

    Attributes:
        cpu: CPUs, e.g. 0.5 for half a core: a quota of CPU time per period
            (0.01 to 4096).  A job over it waits, it is not killed.
        memory: Bytes of RAM (``"256M"``), without swap; at least 1 MiB.
            A job over it is killed by the kernel's OOM killer, and its
            status says so.
        pids: Processes and threads the job's tree may have at once; a
            ``fork`` past it fails (a fork bomb stops there).
        io_read_bps: Bytes per second read from the block device behind the
            job's working directory (``"10M"`` = 10 MiB/s).
        io_write_bps: Bytes per second written to that device.
        strict: True (default): a job whose limits this machine cannot
            enforce does not run; it ends in ``error`` naming what is
            missing.  False: it runs with the limits that can be enforced,
            and its status lists the others.
    """

    cpu: float | None = attrs.field(default=None, converter=_cpu)
    memory: int | None = attrs.field(default=None, converter=_memory)
    pids: int | None = attrs.field(default=None, converter=_pids)
    io_read_bps: int | None = attrs.field(default=None, converter=_io_read)
    io_write_bps: int | None = attrs.field(default=None, converter=_io_write)
    strict: bool = attrs.field(default=True, converter=_strict)

    #: The names of the limits, in the order they are shown.
    NAMES = ("cpu", "memory", "pids", "io_read_bps", "io_write_bps")

    def asked(self) -> tuple[str, ...]:
        """The names of the limits that are set."""
        return tuple(name for name in self.NAMES if getattr(self, name) is not None)

    def describe(self) -> str:
        """For people: ``cpu 0.5, memory 256 MiB, pids 100, io read 10 MiB/s``."""
        words = {
            "cpu": lambda v: f"cpu {v:g}",
            "memory": lambda v: f"memory {format_size(v)}",
            "pids": lambda v: f"pids {v}",
            "io_read_bps": lambda v: f"io read {format_size(v)}/s",
            "io_write_bps": lambda v: f"io write {format_size(v)}/s",
        }
        parts = [words[name](getattr(self, name)) for name in self.asked()]
        if parts and not self.strict:
            parts.append("best effort")
        return ", ".join(parts) or "no limits"

    def to_dict(self) -> dict[str, object]:
        """Plain values, for JSON (`from_dict` reads them back)."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> Limits:
        """A `Limits` from `to_dict`'s form; unknown keys raise ``ValueError``."""
        if not isinstance(data, dict):
            raise TypeError(f"limits must be an object, not {type(data).__name__}")
        unknown = sorted(set(data) - {*cls.NAMES, "strict"})
        if unknown:
            expected = ", ".join(cls.NAMES)
            raise ValueError(f"unknown limit {unknown[0]!r}: expected one of {expected}")
        return cls(**data)
