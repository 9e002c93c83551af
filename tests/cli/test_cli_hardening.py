"""What a review found the CLI got wrong, each fixed and kept fixed."""

from __future__ import annotations

import os
from pathlib import Path

from jobkit.server.serve import JobServer
from tests.cli.conftest import Jobkit, base_env, run_jobkit
from tests.client.live_server import new_client


def test_list_shows_control_characters_escaped_on_one_line(jobkit: Jobkit) -> None:
    assert jobkit("exec", "echo", "\x1b[31mRED\x1b]0;title\x07", "two\nlines").code == 0
    listing = jobkit("list")
    assert listing.code == 0
    rows = listing.stdout.splitlines()
    assert len(rows) == 2  # the header and one row
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    assert "\\x1b[31mRED\\x1b]0;title\\x07" in rows[1] and "two\\nlines" in rows[1]


def test_non_utf8_arguments_are_a_usage_error(jobkit: Jobkit) -> None:
    run = jobkit("exec", "echo", os.fsdecode(b"\xff\xfe"))
    assert run.code == 2
    assert "not valid UTF-8" in run.error_line()
    assert jobkit("list", "--json").code == 0  # and nothing was created that breaks it


def test_exec_follow_names_the_job_it_started_when_following_fails(pki_root: Path) -> None:
    server = JobServer(pki_root / "server", port=0, threads=4)  # one follow per client
    server.start()
    try:
        host, port = server.address
        env = base_env(JOBKIT_SERVER=f"{host}:{port}", JOBKIT_CERTS=str(new_client(pki_root)))
        run = run_jobkit("exec", "-f", "sleep", "1000", env=env)
        assert run.code == 255
        assert run.error_line().startswith("jobkit: error: job 1 was started, but: ")
        assert run_jobkit("status", "1", env=env).stdout.startswith("running")
    finally:
        server.stop()
