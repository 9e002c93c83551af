"""``jobkit serve``'s operations options, run for real: --log-format json, --audit-log,
--metrics-listen, and SIGHUP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from jobkit import audit
from tests.support.api import ApiClient
from tests.support.processes import wait_for_address
from tests.support.waiting import wait_until


def test_json_logs_audit_file_metrics_listener_and_sighup(pki: Path, tmp_path: Path) -> None:
    audit_file = tmp_path / "logs" / "audit.log"
    command = [sys.executable, "-m", "jobkit", "serve", "--certs", str(pki),
               "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state"),
               "--log-format", "json", "--audit-log", str(audit_file),
               "--metrics-listen", "127.0.0.1:0"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        try:
            address, printed = wait_for_address(process, log, 30)
            [serving] = [line for line in printed if line.startswith("Serving on ")]
            assert f"; audit log: {audit_file}; metrics: http://127.0.0.1:" in serving
            metrics_url = serving.split("; metrics: ")[1].split(")")[0]
            assert metrics_url.endswith("/metrics")

            api = ApiClient(address, pki / "clients" / "bob", "bob")
            job = api.create("true")
            api.wait(job)
            api.close()
            with urllib.request.urlopen(metrics_url, timeout=10) as response:
                assert b"jobkit_jobs_started_total 1.0" in response.read()

            process.send_signal(signal.SIGHUP)  # reload; serving goes on
            wait_until(lambda: [e for e in records(audit_file)
                                if e["event"] == "certs.reloaded"], what="the reload")
            assert process.poll() is None
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            assert process.stdout is not None
            process.stdout.close()
        log.seek(0)
        text = log.read().decode().splitlines()
    # Every log line is JSON; the last line is jobkit serve's own goodbye, not a log record.
    assert text[-1].startswith("Stopped: every running job was killed")
    lines = [json.loads(line) for line in text[:-1]]
    access = [line for line in lines if line["logger"] == "jobkit.server.access"]
    put = [line for line in access if line["method"] == "PUT"]
    assert len(put) == 1
    assert {k: put[0][k] for k in ("cn", "method", "route", "path", "status", "level")} == {
        "cn": "bob", "method": "PUT", "route": "/jobs", "path": "/jobs", "status": 201,
        "level": "info"}
    assert put[0]["bytes"] == len(json.dumps({"id": job}, separators=(",", ":")))
    assert isinstance(put[0]["duration_s"], float) and put[0]["time"].endswith("Z")
    assert len({line["request_id"] for line in access}) == len(access)
    assert [e["event"] for e in records(audit_file)] == [
        "server.started", "job.created", "job.finished", "certs.reloaded", "server.stopped"]
    assert records(audit_file)[-1]["reason"] == "SIGTERM"
    assert audit.verify([audit_file]) is None
    assert (audit_file.parent.stat().st_mode & 0o777) == 0o700


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
