"""Error answers: every refusal is an RFC 9457 problem (``application/problem+json``).

The kinds, with their statuses and titles, are `jobkit.wire.ProblemKind`;
this module turns refusals into answers, in each of the places one can
arise:

* a route raises `ApiError`, or a library error (`JobNotFound`, ...), which
  the bottle plugin `translate_errors` maps, in this one place;
* bottle refuses by itself (no such endpoint, wrong method): `bottle_error`;
* the app refuses before bottle is reached (no client identity, a bad
  chunked body) or meets a bug: `error_response`, at the WSGI level;
* cheroot refuses by itself (a malformed request line, a request that
  times out, ...): `problem_body`, which `jobkit.server.connection` uses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import bottle  # type: ignore[import-untyped]

from jobkit.core.errors import (
    BackendNotFound,
    ExecutorUnavailable,
    JobNotFound,
    PoolClosed,
    StorageFailed,
)
from jobkit.server.access_log import printable
from jobkit.wire import PROBLEM_MEDIA_TYPE, ProblemKind, problem_json

__all__ = [
    "CLOSE",
    "REFUSAL_ENVIRON_KEY",
    "ApiError",
    "bottle_error",
    "encode_json",
    "error_response",
    "internal_error",
    "problem_body",
    "stopping",
    "translate_errors",
]

log = logging.getLogger("jobkit.server")

#: The environ key where a refusal's detail (``detail`` of the problem) waits for the
#: audit log (a 403 is recorded once the answer was sent).
REFUSAL_ENVIRON_KEY = "jobkit.refusal"

#: For errors after which the rest of the request cannot be found in the byte stream.
CLOSE = {"Connection": "close"}

#: Compact JSON, UTF-8 as it is: what every answer's body is made with.
encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class ApiError(Exception):
    """A request the API refuses: its `ProblemKind`, a message for people (``detail``),
    extra response ``headers``, and the kind's extension ``members``."""

    def __init__(self, kind: ProblemKind, detail: str,
                 headers: Mapping[str, str] | None = None, **members: Any) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.members = members

    @property
    def status(self) -> int:
        return self.kind.status


def problem_body(kind: ProblemKind, detail: str, *, status: int | None = None,
                 **members: Any) -> bytes:
    """The encoded problem document (see `jobkit.wire.problem_json`)."""
    return encode_json(problem_json(kind, detail, status=status, **members)).encode()


def _reason(status: int) -> str:
    phrase: str = bottle.HTTP_CODES.get(status, "Unknown")
    return phrase


def error_response(start_response: Callable[..., Any], error: ApiError,
                   exc_info: Any = None) -> list[bytes]:
    """Answer ``error`` at the WSGI level (where bottle is not involved)."""
    body = problem_body(error.kind, error.detail, **error.members)
    header_list = [("Content-Type", PROBLEM_MEDIA_TYPE), ("Content-Length", str(len(body)))]
    header_list += list(error.headers.items())
    start_response(f"{error.status} {_reason(error.status)}", header_list, exc_info)
    return [body]


def internal_error() -> ApiError:
    """What a client is told about a bug: nothing but that it happened (it is logged)."""
    return ApiError(ProblemKind.INTERNAL_ERROR, "internal server error")


def bottle_error(error: Any) -> bytes:
    """Bottle's own refusals (unknown path, wrong method, ...) as problems, not HTML."""
    request = bottle.request
    status = int(error.status_code)
    if status == 404:
        kind, detail = ProblemKind.NO_SUCH_ENDPOINT, f"no such endpoint: {request.path}"
    elif status == 405:
        allowed = error.headers.get("Allow", "")
        kind = ProblemKind.METHOD_NOT_ALLOWED
        detail = f"method {request.method} not allowed on {request.path} (allowed: {allowed})"
    elif status >= 500:
        kind, detail = ProblemKind.INTERNAL_ERROR, "internal server error"
        log.error("bottle error %s on %s %s: %s", status, printable(request.method),
                  printable(request.path), error.exception)
    else:
        kind, detail = ProblemKind.for_status(status), str(error.body or _reason(status))
    bottle.response.content_type = PROBLEM_MEDIA_TYPE
    return problem_body(kind, detail, status=status)


def translate_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Bottle plugin: map what a route raises to a problem answer, in this one place."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except ApiError as error:
            return _http_error(error)
        except JobNotFound as error:
            return _http_error(ApiError(ProblemKind.NO_SUCH_JOB, str(error),
                                        job_id=error.job_id))
        except BackendNotFound as error:
            return _http_error(_unknown_backend(error))
        except PoolClosed:
            return _http_error(stopping())
        except ExecutorUnavailable as error:
            log.error("%s", error)  # the cluster's address is for the log, not for clients
            return _http_error(ApiError(ProblemKind.EXECUTOR_UNAVAILABLE,
                                        "the cluster that runs jobs cannot be reached now;"
                                        " try again later"))
        except StorageFailed as error:
            log.error("%s", error)
            return _http_error(ApiError(ProblemKind.STORAGE_FAILED,
                                        "the server cannot store the job now: its disk is "
                                        "full or failing"))
        except (TypeError, ValueError) as error:
            return _http_error(ApiError(ProblemKind.BAD_FIELD, str(error)))

    return wrapper


def stopping() -> ApiError:
    """The refusal of every request that needs a pool once the server is stopping."""
    return ApiError(ProblemKind.SERVER_STOPPING, "the server is shutting down")


def _unknown_backend(error: BackendNotFound) -> ApiError:
    from jobkit.core.plugins import backend_names

    # The names let a client rebuild the library's BackendNotFound exactly.
    return ApiError(ProblemKind.UNKNOWN_BACKEND, f"field 'backend': {error}",
                    backend=error.name, known_backends=backend_names())


def _http_error(error: ApiError) -> Any:
    bottle.request.environ[REFUSAL_ENVIRON_KEY] = error.detail
    response = bottle.HTTPResponse(problem_body(error.kind, error.detail, **error.members),
                                   error.status, headers=error.headers)
    response.content_type = PROBLEM_MEDIA_TYPE
    return response
