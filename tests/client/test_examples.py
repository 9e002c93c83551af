"""The examples run, and the remote one prints exactly what the local one does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done
    assert done.stderr == ""
    return done.stdout


def test_the_same_script_runs_on_a_pool_and_on_a_server(server: str, certs: Path) -> None:
    local = run("local_pool.py")
    assert local.startswith("job 1: completed, exit status 3\n")
    assert "job 3: killed, signal 15\n" in local
    assert local.endswith("after delete: no such job: '1'\n")
    assert run("remote_client.py", server, str(certs)) == local
