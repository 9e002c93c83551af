"""Where a server keeps its state by default: one home for the server and the CLI.

Standard library only: ``jobkit audit`` finds the default audit log (in the
state folder) without importing the server, and ``jobkit serve`` picks the
same folder.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_state_dir"]


def default_state_dir(host: str, port: int) -> Path | None:
    """``$XDG_STATE_HOME/jobkit/serve-HOST-PORT``: one state folder per listen address.

    ``~/.local/state`` stands in for ``XDG_STATE_HOME`` when it is unset or
    not an absolute path (as the XDG spec asks).  Two live servers cannot
    listen on one address, so they never share a folder; a server restarted
    on the same address finds its predecessor's jobs.  None for port 0,
    whose address changes every run.
    """
    if port == 0:
        return None
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return root / "jobkit" / f"serve-{safe_host}-{port}"
