"""Which subprocesses line coverage measures when .ci/run sets COVERAGE_PROCESS_START.

The pytest process is measured from its start (coverage's .pth start-up hook).
Importing this module (tests/conftest.py does, first) takes the variable out of
the process's environment again, so that what tests start on their own (jobs,
start-up import probes, other interpreters) runs exactly as it would for a
user; `measured` gives it back to the jobkit processes the helpers start:
``jobkit serve`` (`tests.support.processes`) and the CLI (`tests.support.cli`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_START = os.environ.pop("COVERAGE_PROCESS_START", None)


def measured(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's), measured by coverage when the run is."""
    result = dict(os.environ if env is None else env)
    if _START is not None:
        result["COVERAGE_PROCESS_START"] = _START
    return result
