"""``jobkit list --watch``: the caller's jobs as a table that updates in place.

About once a second the table is fetched again and redrawn where it is
(rich's ``Live``): states in their colours, durations ticking.  ``q`` (read
from the terminal, which is put in cbreak mode meanwhile and restored after)
or Ctrl-C ends it; the last table stays on the screen.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import RenderableType

    from jobkit.wire import StatusRecord

__all__ = ["INTERVAL", "watch"]

#: Seconds between two updates.
INTERVAL = 1.0
#: The keys that end the view.
QUIT_KEYS = frozenset(b"qQ")


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """The terminal's descriptor in cbreak mode (keys one by one, no echo); None if no terminal."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0:
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)  # Ctrl-C still sends SIGINT
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a key; True if it was one of `QUIT_KEYS`."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if fd is None:
            time.sleep(remaining)  # nothing to read: just the pace of the updates
            return False
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 64)
            if not data or QUIT_KEYS.intersection(data):  # q, or the terminal is gone
                return True


def _view(jobs: Sequence[StatusRecord], note: str, now: datetime) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    from jobkit.cli.render import rich_table

    running = sum(job.running for job in jobs)
    local = now.astimezone().strftime("%H:%M:%S")
    head = Text(f"{len(jobs)} jobs, {running} running, at {local}{note}  (q to quit)",
                style="dim")
    return Group(head, rich_table(jobs, now))


def watch(fetch: Callable[[], tuple[list[StatusRecord], bool]],
          console: Any = None) -> None:
    """Show ``fetch()`` (jobs, and whether there are more) live until ``q`` or Ctrl-C.

    Ctrl-C propagates as ``KeyboardInterrupt`` after the terminal is restored.
    """
    from rich.console import Console
    from rich.live import Live

    console = console or Console()

    def render() -> RenderableType:
        jobs, more = fetch()
        return _view(jobs, " (the newest only)" if more else "", datetime.now(timezone.utc))

    with _keys() as fd, Live(render(), console=console, auto_refresh=False,
                             redirect_stdout=False, redirect_stderr=False) as live:
        while not _quit_pressed(fd, INTERVAL):
            live.update(render(), refresh=True)
