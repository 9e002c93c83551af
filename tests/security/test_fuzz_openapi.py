"""Fuzzing the API from its own description: schemathesis against ``GET /openapi.json``.

schemathesis reads the document the running server serves (with a client
certificate) and generates requests for every operation, valid ones and
invalid ones; each response must not be a 5xx and must match the document:
a documented status, the documented content type, a body that validates
against the documented schema, documented headers.

Generation is seeded and derandomized (the same requests every run) and
bounded: `FAST_EXAMPLES` per operation in the default run, `SLOW_EXAMPLES` in
the slow tier (``pytest -m slow``).

Nothing generated is ever run: a command the fuzzer makes up is replaced by
``/bin/true`` (or by a path that does not exist) before the request is sent,
keeping its type, so the server still sees a string where the fuzzer put one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[test]'")
requests = pytest.importorskip("requests")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobkit.server.openapi import openapi_document  # noqa: E402
from jobkit.server.serve import JobServer  # noqa: E402
from tests.support.api import ApiClient  # noqa: E402
from tests.support.pki import new_client_folder  # noqa: E402

FAST_EXAMPLES = 50
SLOW_EXAMPLES = 400
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Every operation shares one server and one client across examples, on purpose.
SUPPRESSED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
              HealthCheck.filter_too_much]
# No shrinking: a failure's first example is reported as it was (and shrinking
# could send thousands more requests).
PHASES = [Phase.explicit, Phase.generate]


class Fuzzer:
    """A client identity with a few finished jobs, and a requests session that speaks as it."""

    def __init__(self, server: JobServer, pki: Path) -> None:
        self.server = server
        self.name, self.folder = new_client_folder(pki, "fuzz")
        self.session = requests.Session()
        self.session.cert = (str(self.folder / "cert.pem"), str(self.folder / "key.pem"))
        self.session.verify = str(self.folder / "ca.pem")
        self.base_url = server.url

    def seed_jobs(self) -> list[str]:
        """Make sure a few finished jobs exist (a follow on them ends); return their ids.

        The fuzzer's made-up ids rarely name a job; these do, so that the
        answers about real jobs (200 with a status, output, bytes) are checked
        as well.  Finished jobs only: a follow on a running one would not end.
        """
        client = ApiClient(self.server.address, self.folder, self.name)
        ids = []
        for _ in range(3):
            job_id = client.create("sh", "-c", "echo out; printf 'err\\377' >&2; exit 3")
            client.wait(job_id)
            ids.append(job_id)
        client.close()
        return ids

    def close(self) -> None:
        self.session.close()


@pytest.fixture(scope="module")
def fuzzer(server: JobServer, pki: Path) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(server, pki)
    yield fuzzer
    fuzzer.close()


@pytest.fixture(scope="module")
def api_schema(fuzzer: Fuzzer) -> Any:
    """The document as the server serves it, loaded over mutual TLS."""
    return schemathesis.openapi.from_url(
        f"{fuzzer.base_url}/openapi.json", cert=fuzzer.session.cert, verify=fuzzer.session.verify,
        timeout=10,
    )


def cases() -> list[Any]:
    """(path, method, mode) for every operation; negative only where there is input to spoil."""
    params = []
    for path, item in openapi_document()["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            has_input = bool(item.get("parameters") or operation.get("parameters")
                             or operation.get("requestBody"))
            for mode in MODES if has_input else MODES[:1]:
                case_id = f"{method.upper()} {path} {mode.value}"
                params.append(pytest.param(path, method.upper(), mode, id=case_id))
    return params


MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
CASES = cases()


def defuse(case: Any) -> None:
    """Never run what the fuzzer invents: keep the type of ``cmd``, change its value."""
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return
    if isinstance(body.get("cmd"), str):
        digest = hashlib.sha256(body["cmd"].encode("utf-8", "surrogatepass")).digest()
        body["cmd"] = "/bin/true" if digest[0] % 2 else "/nonexistent/jobkit-fuzz"


def fuzz(fuzzer: Fuzzer, api_schema: Any, path: str, method: str, mode: GenerationMode,
         examples: int) -> None:
    """Send ``examples`` generated requests for one operation; check every response."""
    # schemathesis' own pytest integration (schema.parametrize) cannot run
    # under pytest 9.2 (it reads Function._nodeid, gone from pytest): drive
    # its strategies with hypothesis directly instead.
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{id}" in path:
        strategy = st.one_of(strategy, *(
            operation.as_strategy(generation_mode=mode, path_parameters={"id": job_id})
            for job_id in fuzzer.seed_jobs()))

    @settings(max_examples=examples, derandomize=True, deadline=None,
              suppress_health_check=SUPPRESSED, database=None, phases=PHASES)
    @given(case=strategy)
    def run(case: Any) -> None:
        defuse(case)
        # verify= and cert= again: schemathesis sets its own (verify=True) on every call.
        response = case.call(base_url=fuzzer.base_url, session=fuzzer.session, timeout=30,
                             verify=fuzzer.session.verify, cert=fuzzer.session.cert)
        case.validate_response(response, checks=CHECKS)

    run()


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_api_conforms_to_its_document(fuzzer: Fuzzer, api_schema: Any, path: str,
                                      method: str, mode: GenerationMode) -> None:
    fuzz(fuzzer, api_schema, path, method, mode, FAST_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize(("path", "method", "mode"), CASES)
def test_api_conforms_to_its_document_at_length(fuzzer: Fuzzer, api_schema: Any, path: str,
                                                method: str, mode: GenerationMode) -> None:
    fuzz(fuzzer, api_schema, path, method, mode, SLOW_EXAMPLES)


def test_the_server_is_still_whole_after_the_fuzzing(fuzzer: Fuzzer, server: JobServer) -> None:
    """Whatever was sent, the fuzzer's own pool still runs, reaps and reports jobs."""
    client = ApiClient(server.address, fuzzer.folder, fuzzer.name)
    job_id = client.create("sh", "-c", "echo alive")
    assert client.wait(job_id)["exit_code"] == 0
    assert client.get(f"/jobs/{job_id}/output").json() == {"stdout": "alive\n", "stderr": ""}
    client.close()
