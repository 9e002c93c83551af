"""When a pool deletes finished jobs on its own, and what a clean freed."""

from __future__ import annotations

import attrs

from jobkit.core.checks import check_count, check_seconds
from jobkit.core.sizes import parse_size

__all__ = ["CleanResult", "Retention"]


def _seconds(value: object) -> float | None:
    return None if value is None else check_seconds("max_age", value)


def _count(value: object) -> int | None:
    return None if value is None else check_count("max_jobs", value)


def _size(value: object) -> int | None:
    return None if value is None else parse_size("max_bytes", value)


@attrs.frozen
class Retention:
    """Rules that delete a pool's oldest finished jobs; running jobs are never touched.

    The rules are applied when the pool opens, and whenever a job ends.

    Attributes:
        max_age: Delete finished jobs that ended this many seconds ago or more.
        max_jobs: Keep at most this many finished jobs.
        max_bytes: Keep at most this many bytes of finished jobs' output
            (an int or a size such as ``"10G"``).
    """

    max_age: float | None = attrs.field(default=None, converter=_seconds)
    max_jobs: int | None = attrs.field(default=None, converter=_count)
    max_bytes: int | None = attrs.field(default=None, converter=_size)


@attrs.frozen
class CleanResult:
    """What `JobPool.clean` deleted.

    Attributes:
        jobs: How many finished jobs were deleted.
        bytes: How many bytes of output they kept.
    """

    jobs: int
    bytes: int
