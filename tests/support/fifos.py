"""Named pipes that hold a job (``cat FIFO``) until the test lets it go, without sleeping."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.support.waiting import wait_until


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe: ``cat`` it in a job, and the test decides when the job goes on."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def release(fifo: Path, data: bytes = b"go\n") -> None:
    """Write to ``fifo`` once the job opened it for reading (no sleeping)."""
    holder: list[int] = []

    def opened() -> bool:
        try:
            holder.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return False
        return True

    wait_until(opened, what=f"a reader on {fifo}")
    try:
        os.write(holder[0], data)
    finally:
        os.close(holder[0])
