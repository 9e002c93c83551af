"""``python -m jobkit.executors.ray_entry SPEC``: what a ``ray`` job runs on its node.

Ray runs a job's entrypoint with stdout and stderr merged into one log,
among lines of its own.  This wrapper runs the real command with two pipes
of its own and writes what comes out of them as frames
(`jobkit.executors.frames`) to its stdout, Ray's log: stdout and stderr stay
apart and byte-exact.  ``SPEC`` is the command as base64url JSON (`encode_spec`),
so Ray's shell sees one plain word: the command's text is never shell code.

The command runs in a session of its own, with stdin from /dev/null:

* when its main process exits, the wrapper takes what is left in the pipes,
  kills what the command left in its process group (Ray would leave it
  running where nobody can reach it), reaps it and writes the ``end``
  frame with its exit code or signal and what it used (``wait4``);
* Ray's ``stop_job`` sends SIGTERM to the wrapper and every process under
  it; the wrapper passes it on to the command's group and sends SIGKILL
  `STOP_GRACE` seconds later, before Ray's own SIGKILL (3 s by default), so
  the ``end`` frame is still written;
* a ``timeout`` is kept here: SIGTERM to the group, SIGKILL ``kill_after``
  seconds later, and ``timed_out`` in the ``end`` frame.

The exit status is the command's (128 + N for signal N), so Ray's own view
of the job (SUCCEEDED or FAILED) agrees with jobkit's.  Standard library
only: it runs on Ray's nodes, where only jobkit itself must be installed.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from jobkit.executors.frames import data_frame, event_frame

__all__ = ["STOP_GRACE", "decode_spec", "encode_spec", "main"]

#: Seconds between passing Ray's SIGTERM on and SIGKILL (Ray's default wait is 3 s).
STOP_GRACE = 2.0
#: The most read from a pipe at once: one frame.
_CHUNK = 1 << 16
#: Signals that mean "stop": Ray's stop sends SIGTERM (or SIGINT, if so configured).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def encode_spec(spec: Mapping[str, Any]) -> str:
    """``spec`` as one shell-safe word (base64url of its JSON)."""
    text = json.dumps(dict(spec), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode("ascii")


def decode_spec(word: str) -> dict[str, Any]:
    """The spec `encode_spec` made."""
    spec = json.loads(base64.urlsafe_b64decode(word.encode("ascii")))
    if not isinstance(spec, dict):
        raise ValueError("the spec is not an object")
    return spec


def _write(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]


def _environment(spec: Mapping[str, Any]) -> dict[str, str] | None:
    """The job's environment: Ray's (with the job's variables, which Ray set
    from the runtime environment), or only the job's with ``replace_env``."""
    if not spec.get("replace_env"):
        return None
    return {name: os.environ[name] for name in spec.get("keep", ()) if name in os.environ}


def _start(spec: Mapping[str, Any]) -> tuple[subprocess.Popen[bytes], int, int] | None:
    """Start the command; its process and the read ends of its stdout and stderr."""
    command: str = spec["command"]
    args: Sequence[str] = spec.get("args", ())
    cwd = spec.get("cwd")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        process = subprocess.Popen(
            [command, *args], stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w,
            env=_environment(spec), cwd=cwd, start_new_session=True, close_fds=True,
        )
    except OSError as error:
        from jobkit.core.spawn import describe_spawn_error  # only on this rare path

        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        _write(event_frame("error", {"message": describe_spawn_error(error, command, cwd)}))
        return None
    os.close(out_w)
    os.close(err_w)
    return process, out_r, err_r


class _Run:
    """The command's pipes, its exit and its deadlines, in one select loop."""

    def __init__(self, started: tuple[subprocess.Popen[bytes], int, int],
                 spec: Mapping[str, Any]) -> None:
        process, stdout, stderr = started
        self.process = process
        self.selector = selectors.DefaultSelector()
        self.offsets = {"stdout": 0, "stderr": 0}
        self.pipes = {stdout: "stdout", stderr: "stderr"}
        for fd, name in self.pipes.items():
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)
        self.pidfd = os.pidfd_open(process.pid)
        self.selector.register(self.pidfd, selectors.EVENT_READ, "exit")
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        self.kill_after = float(spec.get("kill_after", 5.0))
        timeout = spec.get("timeout")
        self.timeout_at = None if timeout is None else time.monotonic() + float(timeout)
        self.kill_at: float | None = None
        self.timed_out = False

    def signal_group(self, number: int) -> None:
        try:  # the leader is not reaped yet: its pid is still the group's
            os.killpg(self.process.pid, number)
        except ProcessLookupError:
            pass

    def drain(self, fd: int, name: str) -> bool:
        """Frame what the pipe holds now; False once it is closed."""
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return True
            if not data:
                self.selector.unregister(fd)
                del self.pipes[fd]
                os.close(fd)
                return False
            _write(data_frame(name, self.offsets[name], data))
            self.offsets[name] += len(data)

    def stop(self, grace: float) -> None:
        self.signal_group(signal.SIGTERM)
        if self.kill_at is None:
            self.kill_at = time.monotonic() + grace

    def wait(self) -> None:
        """Serve the pipes, signals and deadlines until the main process exits."""
        while True:
            deadlines = [d for d in (self.timeout_at, self.kill_at) if d is not None]
            wait = None if not deadlines else max(0.0, min(deadlines) - time.monotonic())
            for key, _ in self.selector.select(wait):
                if key.data == "exit":
                    return
                if key.data == "signal":
                    try:
                        os.read(self.wake_r, 64)
                    except BlockingIOError:
                        pass
                    self.stop(STOP_GRACE)
                else:
                    self.drain(key.fd, key.data)
            now = time.monotonic()
            if self.timeout_at is not None and now >= self.timeout_at:
                self.timeout_at = None
                self.timed_out = True
                self.stop(self.kill_after)
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_at = None
                self.signal_group(signal.SIGKILL)

    def finish(self) -> int:
        """Take the last output, kill what the command left, reap it; its exit status."""
        self.signal_group(signal.SIGKILL)  # what it left behind in its group
        for fd, name in list(self.pipes.items()):
            self.drain(fd, name)
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = code = os.waitstatus_to_exitcode(status)
        ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _write(event_frame("end", {
            "exit_code": code if code >= 0 else None,
            "signal": -code if code < 0 else None,
            "timed_out": self.timed_out,
            "usage": {
                "cpu_user_s": usage.ru_utime,
                "cpu_system_s": usage.ru_stime,
                # Not above ours: a vfork child's peak is its parent's (see jobkit.core.job).
                "peak_memory": usage.ru_maxrss * 1024 if usage.ru_maxrss > ours else None,
                "io_read_bytes": usage.ru_inblock * 512,
                "io_write_bytes": usage.ru_oublock * 512,
            },
        }))
        return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv[0]`` describes; return the exit status for Ray."""
    words = sys.argv[1:] if argv is None else list(argv)
    if len(words) != 1:
        sys.stderr.write("usage: python -m jobkit.executors.ray_entry SPEC\n")
        return 2
    spec = decode_spec(words[0])
    # Ray blocks SIGINT in its processes; the command must start with none blocked.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    stop_asked: list[int] = []
    for number in _STOP_SIGNALS:  # noted before the command starts, acted on in the loop
        signal.signal(number, lambda signum, _frame: stop_asked.append(signum))
    started = _start(spec)
    if started is None:
        return 127
    _write(event_frame("start", {"pid": started[0].pid}))
    run = _Run(started, spec)
    if stop_asked:
        run.stop(STOP_GRACE)
    run.wait()
    return run.finish()


if __name__ == "__main__":
    sys.exit(main())
