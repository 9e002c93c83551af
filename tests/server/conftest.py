"""The contract suite's servers let clients choose every built-in backend.

Its fixtures (``pki``, ``server``, ``make_client``, ``client``, ``admin``) come
from `tests.support.servers`; helpers are imported from `tests.support`.  The
names below are re-exported only for modules written against the old
``tests.server.conftest`` path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobkit.server.serve import JobServer
from tests.support.api import (
    ApiClient,
    Response,
    client_context,
    problem_document,
    raw_tls,
    read_until_closed,
)
from tests.support.pki import ADMIN
from tests.support.servers import ALL_BACKENDS
from tests.support.servers import start_server as _start_server

__all__ = [
    "ADMIN",
    "ALL_BACKENDS",
    "ApiClient",
    "Response",
    "client_context",
    "problem_document",
    "raw_tls",
    "read_until_closed",
    "start_server",
]


def start_server(pki: Path, **options: Any) -> JobServer:
    """The old ``tests.server.conftest.start_server``: every backend may be chosen."""
    options.setdefault("storage", ALL_BACKENDS)
    return _start_server(pki, **options)


@pytest.fixture(scope="module")
def server_options() -> dict[str, Any]:
    """Every backend may be chosen, so that each one's contract can be checked."""
    return {"storage": ALL_BACKENDS}
