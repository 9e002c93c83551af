"""The wrapper every Ray job runs, run here directly (no Ray): its frames, exits and signals.

What tests/executors checks through a real cluster, checked again where each
case is cheap and exact: the wrapper as a subprocess of the test, its stdout
decoded with the executor's own `FrameReader`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from jobkit.executors.frames import Frame, FrameReader, data_frame, event_frame, parse_line
from jobkit.executors.ray_entry import STOP_GRACE, encode_spec
from tests.support.procs import process_alive
from tests.support.waiting import wait_until


def _start(command: str, *args: str, **spec: Any) -> subprocess.Popen[bytes]:
    word = encode_spec({"command": command, "args": list(args), **spec})
    return subprocess.Popen([sys.executable, "-m", "jobkit.executors.ray_entry", word],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _frames(out: bytes) -> list[Frame]:
    return FrameReader().feed(out.decode("ascii"))


def _streams(frames: Sequence[Frame]) -> dict[str, bytes]:
    joined = {"stdout": b"", "stderr": b""}
    for frame in frames:
        if frame.kind in joined:
            assert frame.offset == len(joined[frame.kind])  # absolute and in order
            joined[frame.kind] += frame.data
    return joined


def _run(command: str, *args: str, **spec: Any) -> tuple[int, list[Frame], bytes]:
    process = _start(command, *args, **spec)
    out, err = process.communicate(timeout=60)
    return process.returncode, _frames(out), err


def test_exit_code_streams_and_binary_are_exact() -> None:
    data = bytes(range(256)) * 300
    code, frames, err = _run(sys.executable, "-c", (
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 300); sys.stdout.flush();"
        " sys.stderr.write('e\\r\\n'); sys.exit(3)"))
    assert (code, err) == (3, b"")
    assert frames[0].kind == "start"
    assert frames[-1].kind == "end"
    assert frames[-1].fields["exit_code"] == 3 and frames[-1].fields["signal"] is None
    assert _streams(frames) == {"stdout": data, "stderr": b"e\r\n"}


def test_a_command_that_cannot_start_says_why() -> None:
    code, frames, _ = _run("no-such-command-for-jobkit")
    assert code == 127
    assert frames == [Frame("error", fields={
        "message": "command not found: 'no-such-command-for-jobkit' (not in PATH)"})]
    code, frames, _ = _run("true", cwd="/no/such/folder")
    assert frames[0].kind == "error" and "/no/such/folder" in frames[0].fields["message"]


def test_ray_s_sigterm_reaches_the_whole_tree_and_the_end_is_still_told() -> None:
    process = _start("sh", "-c", "sleep 600 & echo $!; wait")
    assert process.stdout is not None
    reader = FrameReader()
    frames: list[Frame] = []
    while not any(frame.kind == "stdout" for frame in frames):
        frames += reader.feed(os.read(process.stdout.fileno(), 65536).decode())
    grandchild = int(_streams(frames)["stdout"])
    process.send_signal(signal.SIGTERM)  # what Ray's stop_job sends first
    out, _ = process.communicate(timeout=60)
    end = reader.feed(out.decode())[-1]
    assert (end.kind, end.fields["signal"]) == ("end", signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM
    wait_until(lambda: not process_alive(grandchild), what="the grandchild gone")


def test_a_command_that_ignores_sigterm_gets_sigkill_before_ray_would() -> None:
    process = _start("sh", "-c", "trap '' TERM; echo ready; sleep 600 & wait")
    assert process.stdout is not None
    reader = FrameReader()
    frames: list[Frame] = []
    while not any(frame.kind == "stdout" for frame in frames):
        frames += reader.feed(os.read(process.stdout.fileno(), 65536).decode())
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    end = reader.feed(out.decode())[-1]
    assert (end.kind, end.fields["signal"]) == ("end", signal.SIGKILL)
    assert STOP_GRACE < 3  # Ray's own SIGKILL comes 3 s after its SIGTERM


def test_what_the_command_leaves_behind_is_killed_at_its_end() -> None:
    code, frames, _ = _run("sh", "-c", "sleep 600 & echo $!")
    assert code == 0
    leftover = int(_streams(frames)["stdout"])
    wait_until(lambda: not process_alive(leftover), what="the left-behind sleep gone")


def test_the_timeout_is_kept_by_the_wrapper() -> None:
    code, frames, _ = _run("sleep", "600", timeout=0.2, kill_after=5)
    assert code == 128 + signal.SIGTERM
    assert frames[-1].fields["timed_out"] is True
    assert frames[-1].fields["signal"] == signal.SIGTERM


def test_only_its_own_environment_with_replace_env() -> None:
    env = {**os.environ, "JOBKIT_KEEP": "kept", "JOBKIT_DROP": "dropped"}
    word = encode_spec({"command": "env", "replace_env": True, "keep": ["JOBKIT_KEEP"]})
    done = subprocess.run([sys.executable, "-m", "jobkit.executors.ray_entry", word],
                          capture_output=True, env=env, timeout=60, check=False)
    assert _streams(_frames(done.stdout))["stdout"] == b"JOBKIT_KEEP=kept\n"


def test_the_reader_takes_frames_cut_anywhere_and_drops_ray_s_lines() -> None:
    text = (b"Running entrypoint for job jobkit-1: python3 -m ...\n"
            + data_frame("stdout", 0, b"\x00\xffhello\n")
            + b"some line of Ray's own\n"
            + data_frame("stderr", 0, b"oops")
            + b"@jobkit1 o x AAAA\n@jobkit1 e 0 !!!\n@jobkit1 end [1]\n"  # malformed: dropped
            + event_frame("end", {"exit_code": 0})).decode()
    reader = FrameReader()
    frames = [frame for cut in range(0, len(text), 7) for frame in reader.feed(text[cut:cut + 7])]
    assert frames == [Frame("stdout", 0, b"\x00\xffhello\n"), Frame("stderr", 0, b"oops"),
                      Frame("end", fields={"exit_code": 0})]
    assert parse_line("@jobkit1 o -1 AAAA") is None


@pytest.mark.parametrize("word", ["", "a b"])
def test_a_bad_command_line_is_refused(word: str) -> None:
    done = subprocess.run([sys.executable, "-m", "jobkit.executors.ray_entry", *word.split()],
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2 and b"usage" in done.stderr
