"""``jobkit audit verify`` and ``jobkit audit show``, run for real in a subprocess."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobkit.audit import AuditLog, chain_files, line_hash
from tests.cli.conftest import Run, base_env, run_jobkit
from tests.support.cli import imported_modules

NOW = datetime.now(timezone.utc)


def audit_cli(*args: str | Path, **env: str) -> Run:
    return run_jobkit("audit", *args, env=base_env(**env))


def clock_at(*moments: datetime) -> Callable[[], datetime]:
    times = iter(moments)
    return lambda: next(times)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    """Ten events: alice's and bob's jobs, a refusal, an admin acting; old and new."""
    path = tmp_path / "audit.log"
    old = NOW - timedelta(hours=3)
    moments = [old + timedelta(minutes=n) for n in range(5)]
    moments += [NOW - timedelta(minutes=10 - n) for n in range(5)]
    with AuditLog(path, clock=clock_at(*moments)) as log:
        log.record("server.started", config={"listen": "127.0.0.1:8443", "threads": 64},
                   pid=4242)
        log.record("job.created", cn="alice", job="1", command="echo",
                   args=["hi", "\x1b[31mred"], peer="127.0.0.1:40000", cwd="/tmp")
        log.record("job.finished", cn="alice", job="1", state="completed", exit_code=0)
        log.record("job.created", cn="bob", job="2", command="sleep", args=["60"],
                   peer="127.0.0.1:40001")
        log.record("auth.refused", reason="certificate revoked", peer="10.0.0.66:5000")
        log.record("authz.refused", cn="alice", peer="127.0.0.1:40002", method="GET",
                   route="/jobs/<id>/status", job="2")
        log.record("admin.acted", cn="root", owner="bob", action="stop", job="2",
                   peer="127.0.0.1:40003")
        log.record("job.stopped", cn="root", owner="bob", job="2", signal="SIGTERM",
                   peer="127.0.0.1:40003")
        log.record("job.finished", cn="bob", job="2", state="killed", signal="SIGTERM")
        log.record("certs.reloaded", trigger="SIGHUP", ok=False, reason="bad crl.pem")
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def write_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


# -- verify ------------------------------------------------------------------------------


def test_verify_an_intact_log(log_file: Path) -> None:
    run = audit_cli("verify", log_file)
    assert (run.code, run.stderr) == (0, "")
    assert run.stdout.splitlines() == [
        "intact: 10 line(s) in 1 file(s), seq 1 to 10",
        f"last line's hash: {line_hash(lines(log_file)[-1])}",
    ]


@pytest.mark.parametrize(("tamper", "line", "why"), [
    (lambda raw: [*raw[:3], raw[3].replace(b'"sleep"', b'"sleeq"'), *raw[4:]], 4, "changed"),
    (lambda raw: [*raw[:3], *raw[4:]], 4, "1 line(s) removed before it"),
    (lambda raw: [*raw[:3], raw[4], raw[3], *raw[5:]], 4, "out of order"),
], ids=["a line changed", "a line deleted", "two lines swapped"])
def test_verify_names_the_first_bad_line(log_file: Path, tamper: Callable[..., list[bytes]],
                                         line: int, why: str) -> None:
    write_lines(log_file, tamper(lines(log_file)))
    run = audit_cli("verify", log_file)
    assert run.code == 1, run
    assert run.stdout == ""
    assert run.error_line().startswith(
        f"jobkit: error: the audit log is not intact: {log_file}:{line}: {why}")


@pytest.fixture
def rotated(tmp_path: Path) -> list[Path]:
    path = tmp_path / "state" / "audit.log"
    with AuditLog(path, max_bytes=1000) as log:
        for number in range(20):
            log.record("job.created", cn="alice", job=str(number), command="true", args=[],
                       peer="127.0.0.1:1")
    files = [Path(name) for name in chain_files(path)]
    assert len(files) >= 3
    return files


def test_verify_across_a_rotation(rotated: list[Path]) -> None:
    run = audit_cli("verify", *rotated)
    assert run.code == 0, run
    assert run.stdout.startswith(f"intact: {20 + len(rotated) - 1} line(s) in {len(rotated)} ")
    # The live file alone: intact, and it says where it continues from.
    alone = audit_cli("verify", rotated[-1])
    assert alone.code == 0, alone
    assert f"continuing {rotated[-2].name} (not given, not checked)" in alone.stdout


def test_verify_across_a_rotation_finds_a_tampered_file(rotated: list[Path]) -> None:
    middle = rotated[1]
    raw = lines(middle)
    write_lines(middle, [*raw[:2], raw[2].replace(b"alice", b"mallo"), *raw[3:]])
    run = audit_cli("verify", *rotated)
    assert run.code == 1
    assert f"{middle}:3: changed" in run.error_line()


def test_verify_across_a_rotation_finds_a_file_removed(rotated: list[Path]) -> None:
    run = audit_cli("verify", rotated[0], *rotated[2:])
    assert run.code == 1
    assert f"{rotated[2]}:1: " in run.error_line()
    assert "removed before it (a file left out?)" in run.error_line()


def test_verify_without_a_file_reads_the_default_log_and_its_rotated_files(
        tmp_path: Path) -> None:
    state = tmp_path / "xdg-state"
    path = state / "jobkit" / "serve-127.0.0.1-8443" / "audit.log"
    with AuditLog(path, max_bytes=600) as log:
        for number in range(8):
            log.record("job.deleted", cn="alice", job=str(number), peer="127.0.0.1:1")
    count = len(chain_files(path))
    assert count >= 2
    run = audit_cli("verify", XDG_STATE_HOME=str(state))
    assert run.code == 0, run
    assert f"in {count} file(s)" in run.stdout
    # Another address, another state folder: nothing there yet.
    other = audit_cli("verify", "--listen", "127.0.0.1:9000", XDG_STATE_HOME=str(state))
    assert other.code == 1
    assert other.error_line() == (
        f"jobkit: error: no audit log at {state}/jobkit/serve-127.0.0.1-9000/audit.log "
        f"(name the FILE, or give --listen for a server on another address)")


@pytest.mark.parametrize(("args", "code", "message"), [
    (["verify", "/nonexistent/audit.log"], 1,
     "cannot read /nonexistent/audit.log: No such file or directory"),
    (["show", "/nonexistent/audit.log"], 1,
     "cannot read /nonexistent/audit.log: No such file or directory"),
    (["verify", "--listen", "127.0.0.1:0"], 2, "a server on port 0 has no default audit log"),
    (["verify", "--listen", "nope:x"], 2, "Invalid value for '--listen'"),
    (["show", "--since", "yesterday"], 2, "is neither a duration"),
    (["frobnicate"], 2, "No such command 'frobnicate'"),
])
def test_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    run = audit_cli(*args)
    assert run.code == code, run
    assert message in run.error_line()


# -- show ----------------------------------------------------------------------------------


def table(run: Run) -> list[list[str]]:
    assert run.code == 0, run
    return [line.split() for line in run.stdout.splitlines()]


def test_show_prints_a_table(log_file: Path) -> None:
    run = audit_cli("show", log_file)
    rows = run.stdout.splitlines()
    assert rows[0].split() == ["TIME", "EVENT", "CLIENT", "PEER", "DETAILS"]
    assert len(rows) == 11
    created = rows[2]
    assert "job.created" in created and "alice" in created and "127.0.0.1:40000" in created
    # The command line, quoted for a shell, with its escape character shown, not sent.
    assert "job 1: echo hi '\\x1b[31mred'" in created
    assert "\x1b" not in run.stdout
    assert rows[5].endswith("10.0.0.66:5000   certificate revoked")
    assert "stop job 2 of bob" in rows[7]
    assert "SIGHUP: failed: bad crl.pem" in rows[10]
    assert "listen=127.0.0.1:8443" in rows[1] and "pid=4242" in rows[1]


def test_show_filters_by_client(log_file: Path) -> None:
    rows = table(audit_cli("show", log_file, "--client", "bob"))
    # bob's own events, and the admin's acts on bob's job.
    assert [row[2] for row in rows[1:]] == ["job.created", "admin.acted", "job.stopped",
                                          "job.finished"]


def test_show_filters_by_time(log_file: Path) -> None:
    recent = table(audit_cli("show", log_file, "--since", "1h"))
    assert [row[2] for row in recent[1:]] == ["authz.refused", "admin.acted", "job.stopped",
                                            "job.finished", "certs.reloaded"]
    since = (NOW - timedelta(hours=2, minutes=57, seconds=30)).isoformat()
    later = table(audit_cli("show", log_file, "--since", since))
    assert len(later) == 1 + 7
    assert len(table(audit_cli("show", log_file, "--since", "4h"))) == 11
    both = table(audit_cli("show", log_file, "--since", "1h", "--client", "alice"))
    assert [row[2] for row in both[1:]] == ["authz.refused"]


def test_show_json_prints_the_lines_as_they_are(log_file: Path) -> None:
    run = audit_cli("show", log_file, "--json", "--client", "alice")
    assert run.code == 0
    printed = run.out.splitlines()
    assert printed == [line for line in lines(log_file) if b'"alice"' in line]
    assert [json.loads(line)["event"] for line in printed] == [
        "job.created", "job.finished", "authz.refused"]


def test_show_warns_about_a_bad_line_and_shows_the_rest(log_file: Path) -> None:
    raw = lines(log_file)
    write_lines(log_file, [*raw[:2], b"garbage", *raw[2:]])
    run = audit_cli("show", log_file)
    assert run.code == 0
    assert run.error_line() == (f"jobkit: warning: {log_file}:3 is not an audit record "
                                f"(see 'jobkit audit verify')")
    assert len(run.stdout.splitlines()) == 11


def test_show_in_a_terminal_is_a_rich_table(log_file: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from jobkit.cli import tables
    from jobkit.cli.audit import audit

    monkeypatch.setattr(tables, "wants_table", lambda: True)
    monkeypatch.setenv("COLUMNS", "160")
    result = CliRunner().invoke(audit, ["show", str(log_file)])
    assert result.exit_code == 0, result.output
    assert "job.created" in result.output and "certificate revoked" in result.output
    # rich pads columns with spaces, and the escape character is still shown, not sent.
    assert "\\x1b[31mred" in result.output and "\x1b[31mred" not in result.output


# -- start-up ----------------------------------------------------------------------------


def test_audit_commands_need_neither_the_server_nor_rich_nor_cryptography(
        tmp_path: Path, log_file: Path) -> None:
    for command in ("verify", "show"):
        code, modules = imported_modules(tmp_path, base_env(), "audit", command,
                                         str(log_file), cwd=tmp_path)
        assert code == 0
        heavy = ("jobkit.server", "cryptography", "rich", "ssl", "jobkit.core.pool")
        assert [m for m in modules if m.split(".")[0] in heavy or m in heavy or any(
            m.startswith(h + ".") for h in heavy)] == []
