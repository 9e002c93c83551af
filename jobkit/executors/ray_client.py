"""The one module that touches Ray: its Job Submission client, wrapped.

What jobkit relies on of Ray (``ray[default]`` 2.x, pinned below 3 in
pyproject.toml; tests/executors runs all of it against a real cluster):

* ``ray.job_submission.JobSubmissionClient(address)`` checks the cluster
  at once and raises ``ConnectionError`` when it cannot reach it;
* ``submit_job(entrypoint=, submission_id=, metadata=, runtime_env=,
  entrypoint_num_cpus=, entrypoint_memory=)``; the entrypoint runs under
  ``sh -c`` in a session of its own, its stdout and stderr in one log;
* ``get_job_info`` gives ``status`` (PENDING, RUNNING, SUCCEEDED, FAILED,
  STOPPED), ``message``, ``driver_exit_code`` and ``metadata``; for an
  unknown job it raises ``RuntimeError("Request failed with status code
  404: ...")`` (the status in the message is all it says);
* ``get_job_logs`` gives the whole log as text;
* ``stop_job`` sends SIGTERM to the entrypoint and every process under it,
  then SIGKILL after ``RAY_JOB_STOP_WAIT_TIME_S`` (3 s); ``delete_job``
  forgets a job that has ended;
* ``tail_job_logs`` (async) yields the log as text from its start and ends
  once the job has ended and its log was read to the end; the websocket
  handshake fails with status 404 for an unknown job;
* the HTTP calls raise ``OSError`` subclasses (``requests``, ``aiohttp``)
  when the cluster cannot be reached.

Ray is imported when a `RayJobs` is made, never before: ``import jobkit``
and a pool with the ``local`` executor do not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import attrs

from jobkit.core.errors import ExecutorUnavailable

__all__ = ["JobGone", "RayJob", "RayJobs", "RayRefused"]

#: Ray's states that are final.
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


class JobGone(Exception):
    """The cluster does not know this job (deleted, or the cluster was restarted)."""


class RayRefused(Exception):
    """Ray answered the request with an error (not a connection failure)."""


@attrs.frozen
class RayJob:
    """What Ray says of one job.

    Attributes:
        status: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.
        message: Ray's words about it.
        exit_code: The entrypoint's exit status, once Ray has it.
        metadata: What was submitted with it.
    """

    status: str
    message: str
    exit_code: int | None
    metadata: Mapping[str, str]

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class RayJobs:
    """Ray's jobs API at ``address`` (the dashboard's HTTP address).

    Raises `ExecutorUnavailable` when Ray is not installed or the cluster
    cannot be reached.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as error:
            raise ExecutorUnavailable(
                f"the ray executor needs Ray: pip install 'jobkit[ray]' ({error})"
            ) from None
        # The SDK logs each closed websocket at INFO: not news in a server's log.
        logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)
        try:
            self._client = JobSubmissionClient(address)
        except (ConnectionError, OSError, RuntimeError, ValueError) as error:
            raise self.unreachable(error) from None

    def unreachable(self, error: BaseException) -> ExecutorUnavailable:
        """The error for a cluster that cannot be reached, naming it."""
        reason = str(error) or type(error).__name__
        return ExecutorUnavailable(f"cannot reach the Ray cluster at {self.address}: {reason}")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except OSError as error:  # requests' connection errors
            raise self.unreachable(error) from None
        except RuntimeError as error:
            if "status code 404" in str(error):
                raise JobGone(str(error)) from None
            raise RayRefused(str(error)) from None

    def submit(self, handle: str, entrypoint: str, *, metadata: Mapping[str, str],
               env: Mapping[str, str], cpus: float | None, memory: int | None) -> None:
        """Submit ``entrypoint`` as the job ``handle``."""
        self._call(
            "submit_job", entrypoint=entrypoint, submission_id=handle,
            metadata=dict(metadata), runtime_env={"env_vars": dict(env)} if env else None,
            entrypoint_num_cpus=cpus, entrypoint_memory=memory,
        )

    def info(self, handle: str) -> RayJob:
        """What Ray says of the job; `JobGone` if it does not know it."""
        details = self._call("get_job_info", handle)
        status = getattr(details.status, "value", details.status)
        return RayJob(str(status), str(details.message or ""),
                      getattr(details, "driver_exit_code", None), dict(details.metadata or {}))

    def logs(self, handle: str) -> str:
        """The job's whole log, as text."""
        text: str = self._call("get_job_logs", handle)
        return text

    def stop(self, handle: str) -> None:
        """Ask Ray to stop the job; no error if it has ended."""
        self._call("stop_job", handle)

    def delete(self, handle: str) -> None:
        """Forget a job that has ended."""
        self._call("delete_job", handle)

    async def tail(self, handle: str) -> AsyncIterator[str]:
        """The job's log from its start, as Ray serves it, until the job has ended."""
        import aiohttp  # Ray's own dependency: here once Ray is

        logs: Any = self._client.tail_job_logs(handle)
        try:
            async with contextlib.aclosing(logs):
                async for text in logs:
                    yield text
        except aiohttp.WSServerHandshakeError as error:
            if error.status == 404:
                raise JobGone(f"no job {handle} on the Ray cluster") from None
            raise self.unreachable(error) from None
        except (OSError, aiohttp.ClientError, RuntimeError) as error:
            raise self.unreachable(error) from None
