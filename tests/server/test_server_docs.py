"""docs/server.md's curl session, run for real against a server: the docs do not lie."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from jobkit.pki import init_pki
from tests.support.servers import ALL_BACKENDS, start_server

DOC = Path(__file__).parents[2] / "docs" / "server.md"
#: Values that differ from run to run: only their type is compared.
#: "usage": its figures change from run to run (its keys are checked by test_wire).
VOLATILE = {"pid", "created_at", "ended_at", "usage"}


def curl_session() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the console block after the curl-session marker."""
    text = DOC.read_text()
    block = text[text.index("<!-- curl-session"):]
    block = block[block.index("```console\n") + len("```console\n"):]
    block = block[:block.index("\n```")]
    session: list[tuple[str, str]] = []
    for line in block.split("\n"):
        if line.startswith("$ "):
            session.append((line[2:], ""))
        else:
            command, output = session[-1]
            session[-1] = (command, output + line + "\n")
    return session


def same_shape(expected: Any, actual: Any, key: str = "") -> bool:
    if key in VOLATILE:
        return (expected is None and actual is None) or (
            expected is not None and type(expected) is type(actual))
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and list(expected) == list(actual)
                and all(same_shape(expected[k], actual[k], k) for k in expected))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(same_shape(e, a, key) for e, a in zip(expected, actual, strict=True)))
    return bool(expected == actual)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_session_in_the_docs(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", clients=["me"])
    server = start_server(pki, storage=ALL_BACKENDS, threads=4)
    try:
        session = curl_session()
        assert session[0][0].startswith("D=")
        script = [f"D={pki / 'clients' / 'me'} JOBKIT={server.url}"]
        for index, (command, _) in enumerate(session[1:]):
            script += [f"echo '@@@ {index}'", command]
            if "echo hello" in command:  # let job 1 finish before the docs show its status
                script.append('for i in $(seq 1000); do jk "$JOBKIT/jobs/1/status" '
                              '| grep -q \'"running"\' || break; done >/dev/null')
            if "trap" in command:  # job 2 ignores SIGINT only once it said so
                script.append('for i in $(seq 1000); do jk "$JOBKIT/jobs/2/stdout" '
                              '| grep -q ready && break; done >/dev/null')
        result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True,
                                text=True, timeout=60)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    outputs = re.split(r"^@@@ \d+\n", result.stdout, flags=re.M)[1:]
    assert len(outputs) == len(session) - 1
    for (command, expected), actual in zip(session[1:], outputs, strict=True):
        try:
            document = json.loads(expected)
        except ValueError:
            assert actual == expected, command
        else:
            assert same_shape(document, json.loads(actual)), (command, actual)
