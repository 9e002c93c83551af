"""jobkit.audit: the hash-chained audit log, written and checked for real in tmp_path."""

from __future__ import annotations

import errno
import itertools
import json
import os
import stat
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from jobkit import audit
from jobkit.audit import GENESIS, ROTATED, AuditLog, check_chain, line_hash, verify

SECRET = "s3cr3t-env-value-9f8e7d"


def created(log: AuditLog, job: str = "1", **extra: Any) -> None:
    log.record("job.created", cn="alice", job=job, command="echo", args=["hi", job],
               peer="127.0.0.1:5555", **extra)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "audit.log"


@pytest.fixture
def log(path: Path) -> Iterator[AuditLog]:
    with AuditLog(path) as writer:
        yield writer


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


def write_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


def ten_events(path: Path) -> list[bytes]:
    with AuditLog(path) as log:
        for number in range(10):
            created(log, str(number + 1))
    return lines(path)


# -- the format ---------------------------------------------------------------------------


def test_each_line_is_a_json_object_chained_to_the_one_before(log: AuditLog, path: Path) -> None:
    created(log, limits={"memory": 1024, "cpu": 0.5}, cwd="/tmp")
    log.record("job.finished", cn="alice", job="1", state="completed", exit_code=0)
    log.record("auth.refused", reason="certificate revoked", peer="10.0.0.9:4000")
    first, second, third = records(path)
    assert first["seq"] == 1 and first["prev"] == GENESIS
    assert first["event"] == "job.created"
    assert (first["cn"], first["job"], first["command"], first["args"]) == (
        "alice", "1", "echo", ["hi", "1"])
    assert first["limits"] == {"memory": 1024, "cpu": 0.5} and first["cwd"] == "/tmp"
    raw = lines(path)
    assert second["seq"] == 2 and second["prev"] == line_hash(raw[0])
    assert third["seq"] == 3 and third["prev"] == line_hash(raw[1])
    assert third == {"seq": 3, "time": third["time"], "event": "auth.refused",
                     "prev": third["prev"], "reason": "certificate revoked",
                     "peer": "10.0.0.9:4000"}
    moment = datetime.fromisoformat(third["time"].replace("Z", "+00:00"))
    assert abs(moment - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert verify([path]) is None


def test_lines_are_ascii_whatever_the_fields_hold(log: AuditLog, path: Path) -> None:
    log.record("job.created", cn="zoë", job="1", command="printf", args=["\x1b[31m\n", "日本"],
               peer="[::1]:5")
    data = path.read_bytes()
    assert data.isascii() and data.count(b"\n") == 1
    assert records(path)[0]["args"] == ["\x1b[31m\n", "日本"]


@pytest.mark.parametrize("umask", [0, 0o077, 0o777])
def test_the_file_is_private_and_its_folder_too(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with AuditLog(tmp_path / "new" / "audit.log") as log:
            created(log)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "audit.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


def test_an_existing_loose_file_is_made_private(path: Path) -> None:
    path.parent.mkdir()
    path.touch(mode=0o644)
    path.chmod(0o644)
    AuditLog(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlink_at_the_path_is_refused(path: Path, tmp_path: Path) -> None:
    path.parent.mkdir()
    target = tmp_path / "elsewhere"
    path.symlink_to(target)
    with pytest.raises(OSError) as raised:
        AuditLog(path)
    assert raised.value.errno == errno.ELOOP
    assert not target.exists()


def test_every_event_is_in_the_file_when_record_returns(log: AuditLog, path: Path) -> None:
    # Appended with one write() per event: another reader sees it at once, no close needed.
    for number in range(1, 4):
        created(log, str(number))
        assert len(lines(path)) == number
        assert records(path)[-1]["job"] == str(number)


def test_fsync_mode_writes_too(path: Path) -> None:
    with AuditLog(path, fsync=True) as log:
        created(log)
    assert verify([path]) is None and len(lines(path)) == 1


def test_a_closed_log_refuses_events(path: Path) -> None:
    log = AuditLog(path)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        created(log)


def test_reopening_continues_the_chain(path: Path) -> None:
    with AuditLog(path) as log:
        created(log, "1")
    with AuditLog(path) as log:
        created(log, "2")
    second = records(path)[1]
    assert second["seq"] == 2 and second["prev"] == line_hash(lines(path)[0])
    assert verify([path]) is None


def test_threads_never_interleave_or_break_the_chain(log: AuditLog, path: Path) -> None:
    threads, each = 8, 50
    start = threading.Barrier(threads)

    def work(name: int) -> None:
        start.wait()
        for number in range(each):
            created(log, f"{name}-{number}")

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    report = check_chain([path])
    assert report.bad is None
    assert (report.lines, report.first_seq, report.last_seq) == (400, 1, 400)
    assert sorted(r["job"] for r in records(path)) == sorted(
        f"{n}-{m}" for n in range(threads) for m in range(each))


# -- what is refused ---------------------------------------------------------------------


def test_every_event_of_the_vocabulary_is_accepted(log: AuditLog, path: Path) -> None:
    values = {"action": "stop", "args": ["a"], "backend": "ring", "cn": "alice",
              "command": "ls", "config": {"listen": "127.0.0.1:8443", "admins": ["root"],
                                          "max_jobs": 10, "cgroups": None},
              "cwd": None, "exit_code": 3, "files": ["/x/cert.pem"], "job": "7",
              "limits": {"memory": 1}, "method": "GET", "ok": True, "older_than": 3600.0,
              "owner": "bob",
              "peer": "127.0.0.1:1", "pid": 42, "reason": "why", "route": "/jobs/<id>",
              "signal": "SIGTERM", "state": "killed", "states": ["completed"],
              "trigger": "SIGHUP",
              "version": "1.0"}
    assert set(values) == set(audit.FIELDS)
    for event, spec in audit.EVENTS.items():
        log.record(event, **{name: values[name] for name in (*spec.required, *spec.optional)})
    assert [r["event"] for r in records(path)] == list(audit.EVENTS)
    assert verify([path]) is None


@pytest.mark.parametrize(("event", "fields", "error", "match"), [
    ("job.launched", {}, ValueError, "unknown audit event 'job.launched'"),
    (ROTATED, {"previous_file": "x"}, ValueError, "unknown audit event"),
    ("job.deleted", {"cn": "a", "job": "1"}, TypeError, "needs peer"),
    ("job.deleted", {"cn": "a", "job": 1, "peer": "p"}, TypeError, "'job' must be"),
    ("job.finished", {"cn": "a", "job": "1", "state": "completed", "exit_code": True},
     TypeError, "'exit_code'"),
    ("job.deleted", {"cn": "a", "job": "1", "peer": "p", "seq": 9}, TypeError, "no field 'seq'"),
    ("server.started", {"config": {"threads": float("nan")}}, ValueError, "JSON"),
], ids=["unknown event", "reserved event", "missing field", "wrong type", "bool is no int",
        "a line field", "nan"])
def test_bad_events_are_refused_and_nothing_is_written(
        log: AuditLog, path: Path, event: str, fields: dict[str, Any],
        error: type[Exception], match: str) -> None:
    created(log)
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        log.record(event, **fields)
    assert path.read_bytes() == before
    created(log, "2")
    assert verify([path]) is None


ENV = {"TOKEN": SECRET}


@pytest.mark.parametrize(("event", "fields"), [
    ("job.created", {"env": ENV}),
    ("job.created", {"environment": ENV}),
    ("job.created", {"env": [f"TOKEN={SECRET}"]}),
    ("job.created", {"limits": {"env": SECRET}}),
    ("job.created", {"limits": {"ENVIRONMENT": SECRET}}),
    ("job.created", {"limits": {"memory": ENV}}),
    ("job.finished", {"output": SECRET}),
    ("job.finished", {"stdout": SECRET.encode()}),
    ("job.finished", {"stderr": SECRET}),
    ("server.started", {"config": {"env": ENV}}),
    ("server.started", {"config": {"Env": f"TOKEN={SECRET}"}}),
    ("server.started", {"config": {"defaults": ENV}}),
    ("server.started", {"config": {"defaults": [ENV]}}),
    ("server.stopped", {"environ": ENV}),
    ("auth.refused", {"output": SECRET}),
], ids=lambda value: value if isinstance(value, str) else ",".join(value))
def test_an_environment_value_never_lands_in_the_file(
        log: AuditLog, path: Path, event: str, fields: dict[str, Any]) -> None:
    base = {
        "job.created": {"cn": "a", "job": "1", "command": "env", "args": [], "peer": "p"},
        "job.finished": {"cn": "a", "job": "1", "state": "completed"},
        "server.started": {"config": {"threads": 4}},
        "server.stopped": {},
        "auth.refused": {"reason": "r", "peer": "p"},
    }[event]
    with pytest.raises(TypeError):
        log.record(event, **base, **fields)
    log.record(event, **base)  # the same event without it is fine
    assert SECRET.encode() not in path.read_bytes()
    assert b"TOKEN" not in path.read_bytes()


# -- rotation --------------------------------------------------------------------------------


def rotated_log(path: Path, events: int = 30, max_bytes: int = 1500) -> list[Path]:
    with AuditLog(path, max_bytes=max_bytes) as log:
        for number in range(events):
            created(log, str(number + 1))
    return [Path(name) for name in audit.chain_files(path)]


def test_rotation_keeps_the_chain_across_files(path: Path) -> None:
    files = rotated_log(path)
    assert len(files) >= 3
    assert [f.name for f in files] == [f"audit.log.{n:06d}" for n in range(1, len(files))] + [
        "audit.log"]
    for previous, current in itertools.pairwise(files):
        first = json.loads(lines(current)[0])
        assert first["event"] == ROTATED
        assert first["previous_file"] == previous.name
        assert first["prev"] == line_hash(lines(previous)[-1])
    for file in files[:-1]:
        assert file.stat().st_size <= 1500
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    report = check_chain(files)
    assert report.bad is None and report.continues is None
    jobs = [r["job"] for f in files for r in records(f) if r["event"] == "job.created"]
    assert jobs == [str(n) for n in range(1, 31)]
    assert report.last_seq == 30 + len(files) - 1  # the events and one marker per new file


def test_reopening_a_rotated_log_continues_numbering_files(path: Path) -> None:
    files = rotated_log(path, events=10)
    with AuditLog(path, max_bytes=1500) as log:
        for number in range(10):
            created(log, f"again-{number}")
    more = audit.chain_files(path)
    assert len(more) > len(files)
    assert check_chain(more).bad is None


def test_a_chain_may_start_at_a_rotated_file(path: Path) -> None:
    files = rotated_log(path)
    report = check_chain(files[1:])
    assert report.bad is None
    assert report.continues == files[0].name
    assert report.first_seq > 1


def test_a_file_left_out_of_the_middle_is_named(path: Path) -> None:
    files = rotated_log(path)
    bad = verify([files[0], *files[2:]])
    assert bad is not None
    assert (bad.path, bad.line) == (str(files[2]), 1)
    assert "removed before it" in bad.reason


def test_files_given_out_of_order_are_named(path: Path) -> None:
    files = rotated_log(path)
    bad = verify([files[1], files[0], *files[2:]])
    assert bad is not None
    assert (bad.path, bad.line) == (str(files[0]), 1)


def test_a_line_longer_than_the_limit_still_goes_in(path: Path) -> None:
    with AuditLog(path, max_bytes=300) as log:
        created(log, "1")
        log.record("job.created", cn="a", job="2", command="x" * 1000, args=[], peer="p")
        created(log, "3")
    files = audit.chain_files(path)
    assert check_chain(files).bad is None
    assert any(b"x" * 1000 in Path(f).read_bytes() for f in files)


def test_a_rotation_cut_short_after_the_rename_is_finished_on_open(path: Path) -> None:
    files = rotated_log(path, events=5, max_bytes=100_000)
    assert files == [path]
    path.rename(f"{path}.000001")  # as if the server died right after renaming
    with AuditLog(path) as log:
        created(log, "6")
    first = records(path)[0]
    assert first["event"] == ROTATED and first["previous_file"] == "audit.log.000001"
    assert check_chain(audit.chain_files(path)).bad is None


# -- what verify finds ------------------------------------------------------------------------


def test_an_intact_log_verifies(path: Path) -> None:
    raw = ten_events(path)
    report = check_chain([path])
    assert report.bad is None
    assert (report.lines, report.first_seq, report.last_seq) == (10, 1, 10)
    assert report.last_hash == line_hash(raw[-1])


def test_an_empty_log_verifies(path: Path) -> None:
    AuditLog(path).close()
    report = check_chain([path])
    assert (report.bad, report.lines, report.last_hash) == (None, 0, GENESIS)


def edited(line: bytes, **changes: Any) -> bytes:
    record = json.loads(line)
    record.update(changes)
    return json.dumps(record, separators=(",", ":")).encode()


@pytest.mark.parametrize(("tamper", "line", "reason"), [
    (lambda raw: [*raw[:4], edited(raw[4], cn="mallory"), *raw[5:]], 5, "changed"),
    (lambda raw: [*raw[:4], raw[4].replace(b"alice", b"alicf"), *raw[5:]], 5, "changed"),
    (lambda raw: [*raw[:4], edited(raw[4], seq=50), *raw[5:]], 5, "changed: seq is 50"),
    (lambda raw: [*raw[:4], *raw[5:]], 5, "1 line(s) removed before it"),
    (lambda raw: [*raw[:4], *raw[7:]], 5, "3 line(s) removed before it"),
    (lambda raw: [*raw[:4], raw[5], raw[4], *raw[6:]], 5, "out of order"),
    (lambda raw: [*raw[:4], raw[8], *raw[4:8], raw[9]], 5, "out of order"),
    (lambda raw: [*raw[:5], raw[4], *raw[5:]], 6, "out of order"),
    (lambda raw: [*raw[:4], b"", *raw[4:]], 5, "not an audit record"),
    (lambda raw: [*raw[:4], raw[4][:-9], *raw[5:]], 5, "cut short"),
    (lambda raw: raw[1:], 1, "1 line(s) removed before it (the chain starts at seq 2)"),
    (lambda raw: [edited(raw[0], cn="mallory"), *raw[1:]], 1, "changed"),
    (lambda raw: [edited(raw[0], prev="1" * 64), *raw[1:]], 1, "changed"),
    (lambda raw: [*raw[:9], edited(raw[9], event=ROTATED)], 10, "audit.rotated only starts"),
], ids=["field edited", "byte edited", "seq edited", "one removed", "three removed",
        "two swapped", "one moved up", "one repeated", "blank line added", "line cut",
        "first removed", "first edited", "first prev edited", "marker forged"])
def test_verify_names_the_first_line_changed_removed_or_reordered(
        path: Path, tamper: Any, line: int, reason: str) -> None:
    write_lines(path, tamper(ten_events(path)))
    bad = verify([path])
    assert bad is not None
    assert (bad.path, bad.line) == (str(path), line), bad
    assert reason in bad.reason
    assert str(bad).startswith(f"{path}:{line}: ")


def test_the_last_line_edited_shows_only_in_its_hash(path: Path) -> None:
    # Nothing comes after the last line to vouch for it: that is what the
    # printed last hash is for (documented in docs/operations.md).
    raw = ten_events(path)
    write_lines(path, [*raw[:9], edited(raw[9], cn="mallory")])
    report = check_chain([path])
    assert report.bad is None
    assert report.last_hash != line_hash(raw[9])


def test_a_line_cut_by_a_crash_is_reported_and_the_writer_goes_on(path: Path) -> None:
    raw = ten_events(path)
    path.write_bytes(b"".join(line + b"\n" for line in raw[:9]) + raw[9][:20])
    with AuditLog(path) as log:
        created(log, "11")
    text = lines(path)
    assert text[9] == raw[9][:20] and json.loads(text[10])["seq"] == 11
    bad = verify([path])
    assert bad is not None and (bad.line, "cut short" in bad.reason) == (10, True)


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify([tmp_path / "nope.log"])


# -- where the log lives -------------------------------------------------------------------


def test_the_default_file_is_in_the_servers_default_state_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert audit.default_audit_file("127.0.0.1", 8443) == str(
        tmp_path / "jobkit" / "serve-127.0.0.1-8443" / "audit.log")


def test_no_default_file_for_port_zero() -> None:
    assert audit.default_audit_file("127.0.0.1", 0) is None


def test_the_audit_module_imports_only_the_standard_library_and_the_wire() -> None:
    # The CLI reads the log on the server's machine without loading the server.
    from tests.test_import_rules import ALL, imports, stdlib

    found = imports("jobkit.audit", ALL["jobkit.audit"])
    assert {m for m in found if not stdlib(m)} == {
        "jobkit.wire", "jobkit.locations", "jobkit.locations.default_state_dir", *(
            f"jobkit.wire.{name}" for name in ("DEFAULT_HOST", "DEFAULT_PORT", "format_time"))}
    found = imports("jobkit.locations", ALL["jobkit.locations"])
    assert found and all(stdlib(m) for m in found)
