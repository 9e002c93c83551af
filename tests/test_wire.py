"""The wire module: addresses, times, statuses and problems, as both ends read them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from jobkit import JobStatus, State, StreamInfo
from jobkit.core.models import STREAMS as CORE_STREAMS
from jobkit.core.signals import signal_name
from jobkit.wire import (
    DEFAULT_PORT,
    STREAMS,
    ProblemKind,
    StatusRecord,
    format_time,
    parse_address,
    parse_time,
    problem_from_json,
    problem_json,
    status_from_json,
    status_to_json,
)

T0 = datetime(2026, 5, 4, 12, 0, 0, 250_000, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("build-box:9000", ("build-box", 9000)),
    ("build-box", ("build-box", DEFAULT_PORT)),
    ("[::1]:8443", ("::1", 8443)),
    ("[::1]", ("::1", DEFAULT_PORT)),
    (" localhost:1 ", ("localhost", 1)),
])
def test_a_server_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", [
    "", ":8443", "host:", "host:port", "host:0", "host:65536", "::1:8443", "[::1", "[]:1",
    "[::1]x", "[::1]:", "host:\uff18\uff14\uff14\uff13",  # full-width digits
])
def test_a_bad_server_address(text: str) -> None:
    with pytest.raises(ValueError, match="bad server address"):
        parse_address(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:8443", ("127.0.0.1", 8443)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    (":9000", ("127.0.0.1", 9000)),
    ("9000", ("127.0.0.1", 9000)),
    ("[::1]:8443", ("::1", 8443)),
])
def test_a_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, listen=True) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("localhost", "port must be a number from 0 to 65535"),
    ("::1:80", "brackets"),
    ("127.0.0.1:70000", "0 to 65535"),
    ("[::1]", "port must be a number"),
    ("", "port must be a number"),
])
def test_a_bad_listen_address(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad listen address") as caught:
        parse_address(text, listen=True)
    assert why in str(caught.value)


def test_an_address_must_be_text() -> None:
    with pytest.raises(TypeError):
        parse_address(8443)  # type: ignore[arg-type]


def test_times_are_utc_with_a_z_and_read_back() -> None:
    assert format_time(T0) == "2026-05-04T12:00:00.250000Z"
    assert parse_time(format_time(T0)) == T0
    assert parse_time("2026-05-04T14:00:00.250000+02:00") == T0
    for bad in ("yesterday", 3):
        with pytest.raises(ValueError):
            parse_time(bad)  # type: ignore[arg-type]


def test_the_stream_names_are_the_cores() -> None:
    assert STREAMS == CORE_STREAMS


def _status(**fields: object) -> JobStatus:
    values: dict[str, object] = {
        "id": "7", "state": State.KILLED, "command": "sh", "args": ("-c", "kill $$"),
        "pid": 42, "created_at": T0, "ended_at": T0 + timedelta(seconds=1), "backend": "ring",
        "signal": 15, "timed_out": True,
        "stdout": StreamInfo(written=10, dropped=4, closed=True), "stderr": StreamInfo(),
    }
    values.update(fields)
    return JobStatus(**values)  # type: ignore[arg-type]


def test_a_status_goes_to_json_and_back() -> None:
    status = _status()
    document = status_to_json(status, signal_name=signal_name)
    assert list(document) == ["id", "status", "cmd", "args", "pid", "created_at", "ended_at",
                              "timed_out", "backend", "output_error", "stdout", "stderr",
                              "executor", "handle", "limits", "network", "enforced_by",
                              "unenforced", "oom_killed", "usage", "signal", "signal_name"]
    assert document["status"] == "killed" and document["signal_name"] == "SIGTERM"
    record = status_from_json(document)
    assert record.signal_name == "SIGTERM" and record.client is None
    # Every attribute the library's status has, the record has with the same value.
    for name in ("id", "command", "args", "pid", "created_at", "ended_at", "backend",
                 "exit_code", "signal", "error", "timed_out", "output_error", "executor",
                 "handle"):
        assert getattr(record, name) == getattr(status, name), name
    assert record.state == status.state.value
    assert tuple(record.stdout) == (10, 4, True) and tuple(record.stderr) == (0, 0, False)
    assert record.stream("stdout") is record.stdout
    assert not record.running


def test_every_field_of_the_library_status_is_on_the_wire() -> None:
    # The wire's records mirror the library's values field for field (see the
    # comment above UsageRecord in jobkit/wire.py): this holds them together.
    import attrs

    from jobkit.core.limits import Limits
    from jobkit.core.models import Usage
    from jobkit.wire import LimitsRecord, UsageRecord

    library = {field.name for field in attrs.fields(JobStatus)}
    assert library <= set(StatusRecord._fields)
    for value, record in ((Usage, UsageRecord), (Limits, LimitsRecord)):
        fields = [(f.name, f.default) for f in attrs.fields(value)]
        assert fields == [(name, record._field_defaults.get(name, attrs.NOTHING))
                          for name in record._fields], record


def test_limits_and_usage_go_to_json_and_back() -> None:
    from jobkit.core.limits import Limits
    from jobkit.core.models import Usage

    limits = Limits(cpu=0.5, memory="256M", pids=100, strict=False)
    usage = Usage("cgroup", cpu_user_s=1.0, cpu_system_s=0.25, peak_memory=41 << 20)
    status = _status(limits=limits, network=False, enforced_by="cgroup1",
                     unenforced=("io_read_bps",), oom_killed=True, usage=usage)
    document = json.loads(json.dumps(status_to_json(status, signal_name=signal_name)))
    assert document["limits"]["memory"] == 256 << 20 and document["usage"]["source"] == "cgroup"
    record = status_from_json(document)
    assert Limits(**record.limits._asdict()) == limits  # type: ignore[union-attr]
    assert Usage(**record.usage._asdict()) == usage  # type: ignore[union-attr]
    assert record.usage is not None and record.usage.cpu_s == 1.25
    for name in ("network", "enforced_by", "unenforced", "oom_killed"):
        assert getattr(record, name) == getattr(status, name), name
    # A server that predates limits sends none of these keys.
    for key in ("limits", "network", "enforced_by", "unenforced", "oom_killed", "usage"):
        del document[key]
    old = status_from_json(document)
    assert (old.limits, old.network, old.usage, old.oom_killed) == (None, True, None, False)
    with pytest.raises(ValueError):
        status_from_json({**document, "limits": {"memory": "lots"}})


def test_optional_keys_appear_only_when_they_apply() -> None:
    running = status_to_json(_status(state=State.RUNNING, signal=None, ended_at=None,
                                     timed_out=False), signal_name=signal_name)
    assert {"error_msg", "exit_code", "signal", "signal_name"}.isdisjoint(running)
    failed = status_to_json(_status(state=State.ERROR, signal=None, error="nope"),
                            signal_name=signal_name)
    assert failed["error_msg"] == "nope"
    assert status_from_json(failed).error == "nope"


def test_any_state_is_read_by_its_value() -> None:
    document = status_to_json(_status(), signal_name=signal_name)
    for state in [*State, "some-later-state"]:
        value = getattr(state, "value", state)
        assert status_from_json({**document, "status": value}).state == value
    assert status_from_json({**document, "status": "running"}).running


@pytest.mark.parametrize("broken", [
    [], "x", {}, {"id": "1"},
    {"id": 1, "status": "running", "cmd": "x", "created_at": "2026-01-01T00:00:00Z"},
    {"id": "1", "status": "running", "cmd": "x", "created_at": "soon"},
    {"id": "1", "status": "running", "cmd": "x", "created_at": "2026-01-01T00:00:00Z",
     "pid": "42"},
    {"id": "1", "status": "running", "cmd": "x", "created_at": "2026-01-01T00:00:00Z",
     "exit_code": True},
])
def test_what_is_not_a_status_is_a_value_error(broken: object) -> None:
    with pytest.raises(ValueError):
        status_from_json(broken)


def test_every_kind_has_a_distinct_type_and_a_fitting_status() -> None:
    types = [kind.type_uri for kind in ProblemKind]
    assert len(set(types)) == len(types)
    for kind in ProblemKind:
        assert ProblemKind.from_type(kind.type_uri) is kind
        if kind is not ProblemKind.GENERIC:
            assert kind.type_uri.startswith("urn:jobkit:problem:")
            assert 400 <= kind.status < 600 and kind.title
    assert ProblemKind.GENERIC.type_uri == "about:blank"
    assert ProblemKind.from_type("urn:jobkit:problem:from-the-future") is ProblemKind.GENERIC
    assert ProblemKind.from_type(None) is ProblemKind.GENERIC


def test_a_status_alone_names_the_kinds_cheroot_answers_with() -> None:
    for status in (400, 405, 408, 413, 500, 501, 503):
        assert ProblemKind.for_status(status).status == status
    assert ProblemKind.for_status(505) is ProblemKind.GENERIC


def test_a_problem_goes_to_json_and_back() -> None:
    import json

    body = problem_json(ProblemKind.NO_SUCH_JOB, "no such job: '3'", job_id="3")
    assert body == {"type": "urn:jobkit:problem:no-such-job", "title": "No such job",
                    "status": 404, "detail": "no such job: '3'", "job_id": "3"}
    problem = problem_from_json(404, json.dumps(body).encode())
    assert problem.kind is ProblemKind.NO_SUCH_JOB
    assert (problem.status, problem.detail, dict(problem.members)) == (
        404, "no such job: '3'", {"job_id": "3"})
    generic = problem_json(ProblemKind.GENERIC, "too long", status=414)
    assert (generic["type"], generic["title"], generic["status"]) == (
        "about:blank", "Request-URI Too Long", 414)


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"", b"[]", b"\xff", b'{"detail": 3}'])
def test_an_answer_that_is_not_a_problem_says_its_status(body: bytes) -> None:
    problem = problem_from_json(502, body)
    assert problem.kind is ProblemKind.GENERIC
    assert (problem.status, problem.detail) == (502, "HTTP 502 from the server")
