"""Every error is a problem document (RFC 9457) with the right status; nothing a client
sends gets a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobkit.server.serve import JobServer
from tests.support.api import ApiClient, problem_document, raw_tls, read_until_closed
from tests.support.servers import running_server

MIB = 1 << 20
# The client fixture is one client for all examples: exactly what these tests want.
FIXTURE_REUSE = HealthCheck.function_scoped_fixture


def assert_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status == status, response
    detail = str(response.problem()["detail"])
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    return detail


# -- 400: malformed requests name what is wrong ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"cmd": 3}, ["'cmd'", "string", "number"]),
        ({"cmd": None}, ["'cmd'", "null"]),
        ({"cmd": ["ls"]}, ["'cmd'", "array"]),
        ({"cmd": "ls", "args": "-l"}, ["'args'", "array of strings"]),
        ({"cmd": "ls", "args": ["-l", 2]}, ["'args[1]'", "string", "number"]),
        ({"cmd": "ls", "args": {"a": 1}}, ["'args'", "object"]),
        ({"cmd": "ls", "args": [["x"]]}, ["'args[0]'", "string", "array"]),
        ({"cmd": "ls", "env": ["A=1"]}, ["'env'", "object"]),
        ({"cmd": "ls", "env": {"A": 1}}, ["env['A']", "string"]),
        ({"cmd": "ls", "env": {"A=B": "1"}}, ["="]),
        ({"cmd": "ls", "env": {"": "1"}}, ["env"]),
        ({"cmd": "ls", "cwd": 7}, ["'cwd'", "string"]),
        ({"cmd": "ls", "cwd": ""}, ["cwd"]),
        ({"cmd": "ls", "timeout": "10"}, ["'timeout'", "number"]),
        ({"cmd": "ls", "timeout": True}, ["'timeout'", "boolean"]),
        ({"cmd": "ls", "timeout": -1}, ["'timeout'", "positive"]),
        ({"cmd": "ls", "timeout": 0}, ["'timeout'", "positive"]),
        ({"cmd": "ls", "timeout": -1e-300}, ["'timeout'", "positive"]),
        ({"cmd": "ls", "timeout": float("nan")}, ["'timeout'", "positive", "nan"]),
        ({"cmd": "ls", "timeout": float("inf")}, ["'timeout'", "positive", "inf"]),
        ({"cmd": "ls", "backend": 1}, ["'backend'", "string"]),
        ({"cmd": "ls", "backend": "nope"}, ["'backend'", "unknown output backend 'nope'"]),
        ({"cmd": ""}, ["command", "empty"]),
        ({"cmd": "a\u0000b"}, ["'cmd'", "NUL"]),
        ({"cmd": "ls", "args": ["a\u0000"]}, ["'args[0]'", "NUL"]),
        ({"cmd": "ls", "env": {"A\u0000B": "1"}}, ["'env key'", "NUL"]),
        ({"cmd": "ls", "env": {"A": "1\u0000"}}, ["env['A']", "NUL"]),
        ({"cmd": "ls", "cwd": "/tmp\u0000/x"}, ["'cwd'", "NUL"]),
        ({"cmd": "ls", "backend": "memory\u0000"}, ["'backend'", "NUL"]),
        ({"args": ["x"]}, ["'cmd'", "required"]),
        ({"cmd": "ls", "shell": True}, ["unknown field 'shell'"]),
        ([], ["JSON object", "array"]),
        ("ls", ["JSON object", "string"]),
    ],
    ids=lambda value: json.dumps(value)[:40] if not isinstance(value, list) else None,
)
def test_bad_create_fields_get_400_naming_the_field(client: ApiClient, body: object,
                                                    fragments: list[str]) -> None:
    assert_error(client.request("PUT", "/jobs", body), 400, *fragments)
    assert client.get("/jobs").json()["ids"] == []  # nothing was created


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cmd": "\udc80x"}, "cmd"),
        ({"cmd": "echo", "args": ["ok", "\udc80"]}, "args[1]"),
        ({"cmd": "echo", "env": {"A": "\ud800"}}, "env['A']"),
        ({"cmd": "echo", "env": {"\udc80": "x"}}, "env key"),
        ({"cmd": "echo", "cwd": "/tmp/\udc80"}, "cwd"),
    ],
)
def test_lone_surrogates_are_refused_naming_the_field(
    client: ApiClient, fields: dict[str, object], field: str
) -> None:
    # json.dumps writes them as \\udc80 escapes, which JSON allows and UTF-8 cannot carry.
    response = client.request("PUT", "/jobs", fields)
    assert response.status == 400
    assert response.problem()["detail"] == (
        f"field {field!r} must be valid Unicode (it has a lone surrogate)"
    )
    listing = client.get("/jobs")  # nothing half-created that would break the listing
    assert listing.status == 200 and listing.json()["ids"] == []


def test_a_huge_integer_timeout_is_a_400(client: ApiClient) -> None:
    body = b'{"cmd": "true", "timeout": 1' + b"0" * 400 + b"}"
    response = client.request("PUT", "/jobs", body=body,
                              headers={"Content-Type": "application/json"})
    assert (response.status, response.problem()["detail"]) == (400, "field 'timeout' is too large")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "malformed JSON"),
        (b'{"cmd": "ls",}', "malformed JSON"),
        (b"{'cmd': 'true'}", "malformed JSON"),
        (b'{"cmd": "true"}{"cmd": "true"}', "malformed JSON"),
        (b"\xff\xfe{}", "malformed JSON"),
        (b'{"cmd": "caf\xe9"}', "malformed JSON"),
        (b"\xef\xbb\xbf\xff{}", "malformed JSON"),
        (b'{"cmd": "tr\x00ue"}', "malformed JSON"),  # control characters must be escaped
        (b'{"cmd": "tr\x01ue"}', "malformed JSON"),
        (b'{"cmd": NaN}', "'cmd'"),  # Python's JSON reads NaN: a number, not a string
        (b"null", "JSON object"),
        (b'["true"]', "JSON object"),
        (b'"true"', "JSON object"),
        (b"42", "JSON object"),
    ],
    ids=["truncated", "trailing-comma", "single-quotes", "two-documents", "not-utf8",
         "not-utf8-in-a-string", "utf8-bom-garbage", "nul-byte-raw", "control-char-raw",
         "nan-literal-cmd", "null", "array", "string", "number"],
)
def test_malformed_json_gets_400(client: ApiClient, raw: bytes, fragment: str) -> None:
    response = client.request("PUT", "/jobs", body=raw,
                              headers={"Content-Type": "application/json"})
    assert_error(response, 400, fragment)
    assert client.get("/jobs").json()["ids"] == []  # nothing was created


def test_an_empty_create_body_gets_400(client: ApiClient) -> None:
    response = client.request("PUT", "/jobs", body=b"",
                              headers={"Content-Type": "application/json"})
    assert_error(response, 400, "JSON object")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"signal": "SIGNOPE"}, 400, "unknown signal"),
        ({"signal": 999}, 400, "unknown signal"),
        ({"signal": -1}, 400, "unknown signal"),
        ({"signal": 0}, 400, "unknown signal"),
        ({"signal": ""}, 400, "unknown signal"),
        ({"signal": "KILL\0"}, 400, "unknown signal"),
        ({"signal": 9.5}, 400, "'signal'"),
        ({"signal": None}, 400, "'signal'"),
        ({"signal": True}, 400, "'signal'"),
        ({"signal": ["TERM"]}, 400, "'signal'"),
        ({"signal": "TERM", "force": 1}, 400, "unknown field 'force'"),
    ],
)
def test_bad_stop_requests_get_400(client: ApiClient, body: object, status: int,
                                   fragment: str) -> None:
    job_id = client.create("sleep", "30")
    assert_error(client.request("POST", f"/jobs/{job_id}/stop", body), status, fragment)
    assert client.status(job_id)["status"] == "running"
    client.request("DELETE", f"/jobs/{job_id}")


@pytest.mark.parametrize(
    "query",
    ["offset=-1", "offset=abc", "offset=1.5", "offset=%C2%B2", "offset=1e3", "offset=0x10",
     "offset=%EF%BC%91", "offset=1&offset=-1", "follow=maybe"],
)
def test_bad_query_parameters_get_400(client: ApiClient, query: str) -> None:
    job_id = client.create("true")
    name = query.split("=")[0]
    assert_error(client.get(f"/jobs/{job_id}/stdout?{query}"), 400, f"'{name}'")


def test_bad_all_flag_gets_400(client: ApiClient) -> None:
    assert_error(client.get("/jobs?all=perhaps"), 400, "'all'")


# -- 404, 405 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/jobs/12345/status"), ("GET", "/jobs/12345/output"),
     ("GET", "/jobs/12345/stdout"), ("GET", "/jobs/12345/stderr?follow=true"),
     ("POST", "/jobs/12345/stop"), ("DELETE", "/jobs/12345"),
     ("GET", "/jobs/..%2F..%2Fetc%2Fpasswd/status"), ("GET", "/jobs/%00/status")],
)
def test_unknown_jobs_get_404(client: ApiClient, method: str, path: str) -> None:
    client.create("true")  # the client has a pool: still 404
    assert_error(client.request(method, path), 404, "no such job")


@pytest.mark.parametrize("path", ["/", "/job", "/jobs/", "/jobs/1/nothing", "/jobs/1/status/x",
                                  "/openapi.yaml", "/%ff"])
def test_unknown_paths_get_404(client: ApiClient, path: str) -> None:
    assert_error(client.get(path), 404, "no such endpoint")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/jobs", "GET,PUT"), ("DELETE", "/jobs", "GET,PUT"),
     ("GET", "/jobs/1", "DELETE"), ("PUT", "/jobs/1/status", "GET"),
     ("GET", "/jobs/1/stop", "POST"), ("PATCH", "/openapi.json", "GET")],
)
def test_wrong_methods_get_405_with_allow(client: ApiClient, method: str, path: str,
                                          allowed: str) -> None:
    response = client.request(method, path)
    assert_error(response, 405, method, "not allowed")
    assert set(response.headers["Allow"].split(",")) >= set(allowed.split(","))


# -- 413, 415 ---------------------------------------------------------------------------


def test_a_body_over_1_mib_gets_413(client: ApiClient) -> None:
    body = json.dumps({"cmd": "echo", "args": ["x" * MIB]}).encode()
    response = client.request("PUT", "/jobs", body=body,
                              headers={"Content-Type": "application/json"})
    assert_error(response, 413, "larger than 1048576 bytes")
    assert client.request("PUT", "/jobs", {"cmd": "true"}).status == 201  # reconnects


def test_a_chunked_body_over_1_mib_gets_413(client: ApiClient) -> None:
    conn = client.connect()
    chunk = b" " * (64 * 1024)
    conn.request("PUT", "/jobs", body=iter([b'{"cmd": "true"', *[chunk] * 20, b"}"]),
                 headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert "larger than" in json.loads(response.read())["detail"]
    conn.close()


def test_a_body_of_exactly_1_mib_is_accepted(client: ApiClient) -> None:
    prefix = b'{"cmd": "true", "args": ["'
    suffix = b'"]}'
    body = prefix + b"x" * (MIB - len(prefix) - len(suffix)) + suffix
    assert len(body) == MIB
    response = client.request("PUT", "/jobs", body=body,
                              headers={"Content-Type": "application/json"})
    assert response.status == 201, response


@pytest.mark.parametrize("content_type", [
    None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/jsonx", "application/json-patch+json", "text/json", "*/*",
])
def test_a_body_that_is_not_json_gets_415(client: ApiClient, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.request("PUT", "/jobs", body=b'{"cmd": "true"}', headers=headers)
    assert_error(response, 415, "application/json")
    job_id = client.create("sleep", "30")
    response = client.request("POST", f"/jobs/{job_id}/stop", body=b"signal=KILL",
                              headers=headers)
    assert_error(response, 415)
    client.request("DELETE", f"/jobs/{job_id}")


def test_json_with_a_charset_is_json(client: ApiClient) -> None:
    response = client.request("PUT", "/jobs", body=b'{"cmd": "true"}',
                              headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert response.status == 201, response


# -- 403 for non-admins ------------------------------------------------------------------


def test_non_admins_cannot_look_at_others(client: ApiClient) -> None:
    assert_error(client.get("/jobs?all=true"), 403, "admin")
    assert_error(client.get("/jobs?client=alice"), 403, "admin")
    assert_error(client.get("/jobs/1/status?client=alice"), 403, "admin")
    # Naming oneself is fine.
    assert client.get(f"/jobs?client={client.name}").status == 200


# -- 429: the live-job limit ---------------------------------------------------------------


@pytest.fixture(scope="module")
def limited_server(pki: Path) -> Iterator[JobServer]:
    with running_server(pki, max_jobs=2, threads=4) as server:
        yield server


def test_over_the_live_job_limit_gets_429(make_client: Any, limited_server: JobServer) -> None:
    client = make_client(target=limited_server)
    other = make_client(target=limited_server)
    first = client.create("sleep", "30")
    client.create("sleep", "30")
    assert_error(client.request("PUT", "/jobs", {"cmd": "true"}), 429, "limit 2")
    other.create("true")  # the limit is per client
    # Finished, stopped or deleted jobs free their place.
    client.request("POST", f"/jobs/{first}/stop", {"signal": "KILL"})
    client.wait(first)
    third = client.create("sleep", "30")
    assert_error(client.request("PUT", "/jobs", {"cmd": "true"}), 429)
    client.request("DELETE", f"/jobs/{third}")
    done = client.create("true")
    client.wait(done)
    client.create("sleep", "30")
    for job_id in client.get("/jobs").json()["ids"]:
        client.request("DELETE", f"/jobs/{job_id}")


# -- never a 500, never HTML ------------------------------------------------------------------


def test_junk_requests_get_json_or_a_closed_connection(server: JobServer,
                                                       client: ApiClient) -> None:
    close = b"Connection: close\r\n"
    junk = [
        b"GET /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n" + close + b"\r\n",
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n" + close
        + b"Content-Type: application/json\r\n\r\nzz\r\n",
        b"PUT /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n" + close + b"\r\n",
        b"BREW /pot HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n",
        b"GET /jobs?" + b"a=1&" * 100 + b" HTTP/1.1\r\nHost: x\r\n" + close + b"\r\n",
        b"GET /jobs HTTP/1.1\r\nHost: x\r\n" + close + b"Content-Length: 5\r\n\r\nab",
    ]
    statuses = []
    for request in junk:
        with raw_tls(server.address, client.context) as sock:
            sock.sendall(request)
            reply = read_until_closed(sock)
        head, _, body = reply.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in header_lines)
        status = int(status_line.split()[1])
        statuses.append(status)
        assert status < 500 or status == 501, (request, reply)
        if status >= 400:
            problem_document(status, headers["Content-Type"], body)
        else:
            assert headers["Content-Type"] == "application/json", (request, reply)
    assert statuses == [400, 400, 501, 404, 400, 200]
    assert client.get("/jobs").status == 200


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                      max_size=4),
    max_leaves=12,
)
create_bodies = st.fixed_dictionaries(
    {},
    optional={"cmd": json_values, "args": json_values, "env": json_values,
              "cwd": json_values, "timeout": json_values, "backend": json_values},
) | json_values


@settings(max_examples=60, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(body=create_bodies)
def test_any_json_body_gets_201_or_a_json_400(client: ApiClient, body: object) -> None:
    if isinstance(body, dict) and isinstance(body.get("cmd"), str):
        body["cmd"] = "/nonexistent/jobkit-fuzz"  # never run anything real
    response = client.request("PUT", "/jobs", body)
    if response.status == 201:
        assert set(response.json()) == {"id"}
    else:
        assert_error(response, 400)


@settings(max_examples=60, deadline=None, suppress_health_check=[FIXTURE_REUSE])
@given(path=st.text(alphabet=st.characters(codec="ascii", exclude_characters="?#"), max_size=30),
       method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH", "OPTIONS"]))
def test_any_path_gets_a_json_answer(client: ApiClient, path: str, method: str) -> None:
    from urllib.parse import quote

    response = client.request(method, "/" + quote(path))
    assert response.status in {200, 400, 404, 405, 415}, response
    response.json()


def test_requests_cheroot_refuses_say_the_connection_closes(client: ApiClient) -> None:
    # cheroot answers these itself and closes the connection; without
    # "Connection: close" a keep-alive client's next request would be lost.
    response = client.get("//example.com/jobs")
    assert_error(response, 400, "Absolute URI")
    assert response.headers["Connection"] == "close"
    assert client.get("/jobs").status == 200  # http.client saw it and reconnected


def test_a_malformed_chunked_body_closes_the_connection(server: JobServer,
                                                        client: ApiClient) -> None:
    request = (b"PUT /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"cmd\r\nzz\r\n")
    with raw_tls(server.address, client.context) as sock:
        sock.sendall(request)
        reply = read_until_closed(sock)  # returns: the server closes after answering
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head.split(b"\r\n")
