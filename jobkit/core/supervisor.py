"""The one thread that watches every job: output pipes, exits and timeouts.

All pools in a process share one supervisor, started with the first pool and
stopped with the last, so the number of threads never grows with the number
of jobs (or of pools: the server keeps one pool per client).  It waits in
``epoll`` on each job's two pipe read ends and its pidfd:

* a readable pipe is drained into the job's output store, a chunk at a time;
* a readable pidfd means the main process exited: whatever it wrote is
  already in the pipes, so those are drained first, then it is reaped
  (``wait4``, for its rusage) and the job's outcome set (a grandchild
  holding a pipe open keeps that stream open, never the job running).  Its
  pidfd is closed at once: a finished job holds no zombie and no descriptor
  once its pipes are drained;
* a job with cgroups whose main process exited while the rest of its tree
  lives on stays running: its tree is checked on a timer, more rarely as
  time passes (cgroup v1 gives no event when a group empties), and when it
  is empty, or has been killed, the outcome is set;
* timers send a job's timeout signals, to its whole tree.

Other threads never touch the selector: they queue a callable with `call`
and the supervisor runs it between two waits.

A thread that waits for one job (`await_end`, behind `JobPool.wait`) does
not wait to be woken by the supervisor: it polls the job's pidfd itself and,
if it gets there first, ends the job in its own thread (the same drain and
reap as the supervisor's, under the job's ``busy`` lock, which serialises
everything done to one job's pipes and pidfd).  That saves the hand-off
between two threads on the path from a process's exit to its waiter.  Whoever
ends the job records its end (``on_end``) before waking the waiters; the
later callbacks (``on_finished``, ``on_drained``) run in the supervisor
thread, one at a time per job.
"""

from __future__ import annotations

import fcntl
import functools
import heapq
import itertools
import logging
import math
import os
import resource
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from jobkit.core.job import Job, usage_from_rusage
from jobkit.core.stream import OutputStream

__all__ = ["Supervisor", "acquire", "release"]

log = logging.getLogger("jobkit.supervisor")

T = TypeVar("T")

#: Read at most this much per wake-up, and grow busy pipes to this size.
CHUNK = 1 << 20
_DEFAULT_PIPE = 1 << 16
_SETPIPE = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_GETPIPE = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: The longest single wait in epoll (it refuses more than about 24 days).
_MAX_WAIT = 3600.0
#: Checks of a lingering tree: first after this many seconds, then twice as
#: long each time, up to the last.
_TREE_FIRST = 0.005
_TREE_LAST = 0.25
#: The longest single wait in ``poll`` (a C int of milliseconds).
_POLL_MAX_MS = 2**31 - 1


class Supervisor:
    """Runs the watch loop in a daemon thread named ``jobkit-supervisor``."""

    def __init__(self) -> None:
        # epoll itself, not `selectors`: its bookkeeping per fd and per wake-up
        # sat on every job's path from exit to waiter.
        self._epoll = select.epoll()
        #: What to run when a watched fd is readable, by fd (the wake-up's: None).
        self._handlers: dict[int, Callable[[], object] | None] = {}
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._register(self._wake, None)
        self._commands: deque[Callable[[], None]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None], Job]] = []
        self._seq = itertools.count()
        self._stopping = False
        self._mutate = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="jobkit-supervisor", daemon=True)
        self._thread.start()

    # -- called from any thread -------------------------------------------

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the supervisor thread soon."""
        self._commands.append(fn)
        os.eventfd_write(self._wake, 1)

    def call_and_wait(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the supervisor thread and return its result."""
        if threading.current_thread() is self._thread:
            return fn()
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                done.set()

        self.call(run)
        done.wait()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def watch(self, job: Job, kill_after: float) -> None:
        """Start draining a freshly spawned job and watching for its exit.

        Registering from the caller's thread saves the supervisor a wake-up
        per job; ``_mutate`` keeps it from racing with the supervisor's own
        unregistering (epoll itself is thread-safe, the selector's map is not
        meant to be shared).  All or nothing: on an error (epoll out of
        memory, say) nothing stays registered and the error is raised.
        """
        registered: list[int] = []
        with self._mutate:  # held throughout: the supervisor may drain these at once
            try:
                for name, fd in list(job.fds.items()):
                    stream = job.streams[name]
                    self._register(fd, functools.partial(self._drain_busy, job, name, stream))
                    registered.append(fd)
                self._register(job.pidfd, lambda: self._reap_busy(job))
            except BaseException:
                for fd in registered:
                    self._unregister(fd)
                raise
        if job.timeout is not None:
            timeout = job.timeout
            self.call(lambda: self._at(timeout, lambda: self._time_out(job, kill_after), job))

    def await_end(self, job: Job, timeout: float | None) -> bool:
        """Wait until ``job`` has ended, ending it in this thread if it can; True if it has.

        Polls a duplicate of the job's pidfd (the supervisor may close the
        original meanwhile, and its number be reused) and, once the main
        process has exited, drains and reaps it here unless the supervisor
        already does.  A job whose tree lives on after its main process
        (cgroups) is then ended by the supervisor, as is one whose pidfd is
        already gone: for those this waits on ``job.ended``.
        """
        if job.ended.is_set():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with job.lock:
            try:
                fd = -1 if job.leader_gone or job.pidfd < 0 else os.dup(job.pidfd)
            except OSError:  # out of descriptors: the supervisor ends it, as it would
                fd = -1
        if fd >= 0:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                exited = poller.poll(None if deadline is None else _poll_ms(deadline))
                while not exited and deadline is not None and time.monotonic() < deadline:
                    exited = poller.poll(_poll_ms(deadline))  # poll waits 24 days at most
            finally:
                os.close(fd)
            if not exited:
                return job.ended.is_set()
            with job.busy:
                if not job.leader_gone:
                    # As the supervisor's own handlers: an error is logged, and
                    # whatever is left (the pidfd stays watched) is its to end.
                    self._safely(lambda: self._reap(job, self.call))
        if deadline is None:
            return job.ended.wait()
        return job.ended.wait(max(0.0, deadline - time.monotonic()))

    def forget(self, job: Job) -> bool:
        """Stop draining ``job``, close its pipes, free its output, reap its leader.

        Waits for the supervisor to do it; returns False if the main process
        has not exited (it is then reaped whenever it does).
        """
        return self.call_and_wait(lambda: self._forget(job))

    def recheck(self, job: Job) -> None:
        """Look at a lingering job's tree soon, and often while it dies (it was just signalled)."""
        if job.lingering:
            self.call(lambda: self._check_tree(job, _TREE_FIRST, _TREE_LAST))

    def stop(self) -> None:
        self.call(self._request_stop)
        self._thread.join()

    # -- the supervisor thread --------------------------------------------

    def _request_stop(self) -> None:
        self._stopping = True

    def _run(self) -> None:
        try:
            while not self._stopping:
                timeout = _MAX_WAIT
                if self._timers:
                    timeout = min(_MAX_WAIT, max(0.0, self._timers[0][0] - time.monotonic()))
                handlers = self._handlers
                for fd, _ in self._epoll.poll(timeout):
                    # Unregistered by an earlier handler of this round, or by a
                    # waiter ending its job (`await_end`) in another thread.
                    handler = handlers.get(fd, _GONE)
                    if handler is _GONE:
                        continue
                    if handler is None:
                        self._run_commands()
                    else:
                        self._safely(handler)
                self._run_timers()
        finally:
            self._epoll.close()
            os.close(self._wake)

    def _register(self, fd: int, handler: Callable[[], object] | None) -> None:
        # Callers hold `_mutate` (or own the supervisor before it runs).  The
        # handler goes first: epoll may report the fd at once, and an fd
        # reported without one would be reported again and again.
        self._handlers[fd] = handler
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            del self._handlers[fd]
            raise

    def _unregister(self, fd: int) -> None:
        # Callers hold `_mutate`.
        del self._handlers[fd]
        self._epoll.unregister(fd)

    def _safely(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:  # one bad job or plugin must not stop every other job
            log.exception("jobkit supervisor: unexpected error")

    def _run_commands(self) -> None:
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while self._commands:
            self._safely(self._commands.popleft())

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn, _ = heapq.heappop(self._timers)
            self._safely(fn)

    def _at(self, delay: float, fn: Callable[[], None], job: Job) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn, job))

    def _drain_busy(self, job: Job, name: str, stream: OutputStream) -> None:
        with job.busy:
            self._drain(job, name, stream)

    def _reap_busy(self, job: Job) -> None:
        with job.busy:
            if not job.leader_gone:  # a waiter ended it meanwhile (`await_end`)
                self._reap(job, _at_once)

    def _drain(self, job: Job, name: str, stream: OutputStream, budget: int = CHUNK) -> int:
        """Move up to ``budget`` bytes from the pipe to the store.

        Returns the count, 0 when the pipe is empty for now, -1 once it is
        closed (end of file: every writer closed it).
        """
        fd = job.fds.get(name, -1)
        if fd < 0:
            return -1
        try:
            if stream.error is None:
                count = stream.store.fill_from(fd, budget)
            else:  # storing failed before: keep the pipe drained, drop the bytes
                count = len(os.read(fd, budget))
        except BlockingIOError:
            return 0
        except Exception as exc:  # disk full, or a broken plugin
            if stream.error is None:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                stream.error = f"cannot store output: {reason}"
                log.warning("job %s %s: %s", job.id, name, stream.error)
            return 0
        if count == 0:
            self._close_pipe(job, name)
            stream.mark_closed()
            if job.outcome is not None and job.drained and job.on_drained is not None:
                job.on_drained(job)
            return -1
        if count >= _DEFAULT_PIPE and name not in job.grown:
            # A busy writer: a larger pipe means fewer wake-ups per byte.
            job.grown.add(name)
            try:
                fcntl.fcntl(fd, _SETPIPE, CHUNK)
            except OSError:
                pass  # over the per-user pipe quota: the default size still works
        stream.notify()
        return count

    def _close_pipe(self, job: Job, name: str) -> None:
        fd = job.fds.pop(name, -1)
        if fd >= 0:
            with self._mutate:
                self._unregister(fd)
            os.close(fd)

    def _reap(self, job: Job, later: Callable[[Callable[[], None]], None]) -> None:
        """The main process exited: take its last output, then reap it.

        The pidfd is closed at once and the leader reaped (under the job's
        lock, so that `Job.signal_group` never hits a reused pid).  Callers
        hold ``job.busy``; ``later`` runs what must run in the supervisor
        thread (this may be a waiter's, see `await_end`).
        """
        assert job.process is not None
        try:
            # Everything it wrote sits in the pipes: take it now, so that
            # whoever waits for the job then reads all of it.  Bounded by the
            # pipe's size, since a grandchild may still be writing.
            for name, stream in job.streams.items():
                fd = job.fds.get(name, -1)
                if fd < 0:
                    continue
                budget = fcntl.fcntl(fd, _GETPIPE) + CHUNK
                while budget > 0:
                    count = self._drain(job, name, stream)
                    if count <= 0:
                        break
                    budget -= count
        finally:
            usage: resource.struct_rusage | None
            with job.lock:
                try:
                    pid, status, usage = os.wait4(job.process.pid, os.WNOHANG)
                except ChildProcessError:  # reaped behind our back: no status to report
                    pid, status, usage = job.process.pid, 0, None
                if pid:
                    job.leader_gone = True
                    with self._mutate:
                        self._unregister(job.pidfd)
                    os.close(job.pidfd)
                    job.pidfd = -1
            if pid:
                returncode = os.waitstatus_to_exitcode(status)
                # Never waited for again (a Popen would, and list it to reap).
                job.process.returncode = returncode
                job.rusage = usage
                if job.groups is not None and job.groups.populated():
                    job.leader_returncode = returncode
                    later(lambda: self._at(
                        _TREE_FIRST, lambda: self._check_tree(job, _TREE_FIRST), job))
                else:
                    self._settle(job, returncode, later)

    def _check_tree(
        self, job: Job, delay: float | None = None, until: float | None = None
    ) -> None:
        """Settle a lingering job whose tree is gone; else look again later (``delay``).

        ``until``: stop looking once the delay would reach it.  A tree just
        killed is gone within milliseconds, while the job's own checks may
        have backed off to every `_TREE_LAST` s: a short extra round of
        checks ends it sooner, and stops so that repeated signals cannot
        pile up rounds.
        """
        if not job.lingering or job.groups is None:
            return
        if not job.groups.populated():
            assert job.leader_returncode is not None
            self._settle(job, job.leader_returncode, _at_once)
        elif delay is not None:
            later = min(delay * 2, _TREE_LAST)
            if until is None or later < until:
                self._at(later, lambda: self._check_tree(job, later, until), job)

    def _settle(
        self, job: Job, returncode: int, later: Callable[[Callable[[], None]], None]
    ) -> None:
        """The whole job has ended: take what it used, set its outcome, drop its groups.

        ``later`` runs the job's callbacks (see `_reap`).
        """
        groups = job.groups
        usage = None if groups is None else groups.usage()
        if usage is None and job.rusage is not None:
            usage = usage_from_rusage(job.rusage)
        oom = groups is not None and groups.oom_kills() > 0
        job.finish_with_returncode(returncode, usage, oom, later)
        if groups is not None:
            job.groups = None
            groups.release()  # empty now; whoever waited is already on its way
        on_drained = job.on_drained
        if job.drained and not job.forgotten and on_drained is not None:
            later(lambda: None if job.forgotten else on_drained(job))

    def _time_out(self, job: Job, kill_after: float) -> None:
        """SIGTERM the job's whole tree, then SIGKILL what is left ``kill_after`` s later.

        A job without cgroups has ended with its main process; what it left
        in its process group is still signalled (see `Job.signal_group`).
        """
        with job.busy:  # not while a waiter records its end (`await_end`)
            if job.running:
                job.timed_out = True
            elif job.contained:
                return  # its tree is gone: that is how it ended
        if not job.signal_group(signal.SIGTERM):
            return

        def kill() -> None:
            job.signal_group(signal.SIGKILL)
            self._check_tree(job, _TREE_FIRST, _TREE_LAST)

        self._at(kill_after, kill, job)

    def _forget(self, job: Job) -> bool:
        job.forgotten = True
        with job.busy:  # a waiter may be draining them (`await_end`)
            for name in list(job.fds):
                self._close_pipe(job, name)
        for stream in job.streams.values():
            self._safely(stream.release)  # a plugin's close() may raise
        if job.timeout is not None or job.leader_returncode is not None:
            # Its timers would keep the job alive until they fire.
            self._timers = [timer for timer in self._timers if timer[3] is not job]
            heapq.heapify(self._timers)
        # Still running (stuck in the kernel past our wait): the pidfd stays
        # watched and `_reap` reaps it whenever it exits.
        return job.pidfd < 0


#: What `Supervisor._run` finds for an fd no longer watched.
_GONE: Callable[[], object] = lambda: None  # noqa: E731


def _poll_ms(deadline: float) -> int:
    """Milliseconds to ``deadline``, rounded up, within what ``poll`` accepts."""
    return min(math.ceil(max(0.0, deadline - time.monotonic()) * 1000), _POLL_MAX_MS)


def _at_once(fn: Callable[[], None]) -> None:
    fn()


_shared_lock = threading.Lock()
_shared: Supervisor | None = None
_users = 0


def acquire() -> Supervisor:
    """The process's supervisor, started if this is its first user."""
    global _shared, _users
    with _shared_lock:
        if _shared is None:
            _shared = Supervisor()
        _users += 1
        return _shared


def release() -> None:
    """Drop one use; the last user's release stops the thread."""
    global _shared, _users
    with _shared_lock:
        _users -= 1
        if _users > 0 or _shared is None:
            return
        supervisor, _shared = _shared, None
    supervisor.stop()


def _forget_after_fork() -> None:
    # The supervisor thread does not survive a fork; a child starts afresh.
    global _shared, _users, _shared_lock
    _shared, _users, _shared_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
