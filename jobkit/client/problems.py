"""The server's error answers as the library's exceptions, by problem kind.

The one place the client turns an error answer into an exception: by its
``type`` (`jobkit.wire.ProblemKind`), never by the wording of its
``detail``, which is only passed on for people to read.
"""

from __future__ import annotations

from collections.abc import Callable

from jobkit.core.errors import AuthenticationFailed, BackendNotFound, JobNotFound, ServerError
from jobkit.wire import Problem, ProblemKind

__all__ = ["error_for"]


def error_for(problem: Problem, server: str, *, job_id: str | None = None,
              backend: str | None = None) -> Exception:
    """The exception for ``problem``, from the server at ``server``.

    ``job_id`` and ``backend`` are what the request named, for answers that
    do not repeat them.
    """
    make = _BY_KIND.get(problem.kind)
    if make is not None:
        return make(problem, server, job_id, backend)
    if problem.kind is ProblemKind.GENERIC and problem.status in (400, 413):
        return ValueError(problem.detail)  # the request was refused as it was
    kind = None if problem.kind is ProblemKind.GENERIC else problem.kind.slug
    return ServerError(problem.detail, problem.status, kind)


def _no_such_job(problem: Problem, server: str, job_id: str | None,
                 backend: str | None) -> Exception:
    named = problem.members.get("job_id")
    return JobNotFound(named if isinstance(named, str) else job_id or "")


def _unknown_backend(problem: Problem, server: str, job_id: str | None,
                     backend: str | None) -> Exception:
    named = problem.members.get("backend")
    known = problem.members.get("known_backends")
    return BackendNotFound(
        named if isinstance(named, str) else backend or "",
        [str(name) for name in known] if isinstance(known, list) else [],
    )


def _refused(problem: Problem, server: str, job_id: str | None,
             backend: str | None) -> Exception:
    return ValueError(problem.detail)


def _identity(problem: Problem, server: str, job_id: str | None,
              backend: str | None) -> Exception:
    return AuthenticationFailed(f"the server at {server} refused our client certificate: "
                                f"{problem.detail}")


#: The kinds that are not a plain `ServerError`.
_BY_KIND: dict[ProblemKind, Callable[[Problem, str, str | None, str | None], Exception]] = {
    ProblemKind.NO_SUCH_JOB: _no_such_job,
    ProblemKind.UNKNOWN_BACKEND: _unknown_backend,
    ProblemKind.BAD_REQUEST: _refused,
    ProblemKind.BAD_FIELD: _refused,
    ProblemKind.BODY_TOO_LARGE: _refused,
    ProblemKind.BAD_CERTIFICATE_IDENTITY: _identity,
}
