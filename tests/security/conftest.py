"""The security suite attacks servers as ``jobkit serve`` makes them (no option loosened).

Two kinds of server, both from `tests.support`:

* `JobServer` in this process (the ``server`` fixture, `start_server`), for
  requests whose answers are what matters;
* ``jobkit serve`` in a subprocess (`server_process`), when the server's own
  process is looked at (its threads, descriptors and children in ``/proc``),
  when it must run as another user, or with another environment (``TMPDIR``).

The names below are re-exported only for modules written against the old
``tests.security.conftest`` path (benchmarks/bench_load.py).
"""

from __future__ import annotations

from tests.support.api import ApiClient
from tests.support.pki import ADMIN, forge, new_client_folder
from tests.support.processes import ServerProcess, server_process
from tests.support.procs import descendants, fd_count, proc_stat, raise_fd_limit, task_count
from tests.support.servers import all_jobs, new_api_client, start_server

__all__ = [
    "ADMIN",
    "ApiClient",
    "ServerProcess",
    "all_jobs",
    "descendants",
    "fd_count",
    "forge",
    "new_api_client",
    "new_client_folder",
    "proc_stat",
    "raise_fd_limit",
    "server_process",
    "start_server",
    "task_count",
]
