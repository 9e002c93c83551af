"""Reading requests: the query string, the JSON body and its fields.

Everything here refuses with an `ApiError` that names what is wrong (the
field, the parameter, the limit), so that a client never has to guess.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, NoReturn
from urllib.parse import parse_qs

from jobkit.core.checks import is_text
from jobkit.core.limits import Limits
from jobkit.server.connection import body_too_large, cap_chunked_body, finish_chunked_body
from jobkit.server.errors import CLOSE, ApiError
from jobkit.wire import JSON_MEDIA_TYPE, ProblemKind

__all__ = [
    "DRAIN_LIMIT",
    "MAX_BODY",
    "buffer_chunked_body",
    "check_fields",
    "count_parameter",
    "field_bool",
    "field_env",
    "field_limits",
    "field_optional_str",
    "field_str",
    "field_str_list",
    "field_timeout",
    "flag_parameter",
    "json_type",
    "query",
    "read_json",
]

#: The largest request body accepted (bytes); larger ones get 413.
MAX_BODY = 1 << 20
#: A refused body up to this size is read (and dropped) before the 413, so the client sees it.
DRAIN_LIMIT = 8 << 20

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no", ""})


def _bad_field(detail: str) -> ApiError:
    return ApiError(ProblemKind.BAD_FIELD, detail)


def _bad_request(detail: str, headers: Mapping[str, str] | None = None) -> ApiError:
    return ApiError(ProblemKind.BAD_REQUEST, detail, headers)


def _too_large(limit: int) -> ApiError:
    return ApiError(ProblemKind.BODY_TOO_LARGE, f"request body larger than {limit} bytes")


# -- the query string ---------------------------------------------------------------------


def query(environ: Mapping[str, Any]) -> Mapping[str, str]:
    """The query parameters (the last value of each), parsed once per request."""
    cached: Mapping[str, str] | None = environ.get("jobkit.query")
    if cached is not None:
        return cached
    text = environ.get("QUERY_STRING", "")
    values: dict[str, str] = {}
    if text:
        try:
            parsed = parse_qs(text, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=64)
        except ValueError as error:
            raise _bad_request(f"bad query string: {error}") from None
        values = {name: items[-1] for name, items in parsed.items()}
    if isinstance(environ, dict):
        environ["jobkit.query"] = values
    return values


def flag_parameter(parameters: Mapping[str, str], name: str) -> bool:
    """A true/false query parameter; absent is false."""
    value = parameters.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _bad_field(f"query parameter {name!r} must be true or false, not {value!r}")


#: The most digits a count parameter may have (an offset past 10^18 bytes is no offset).
_MAX_DIGITS = 18


def count_parameter(parameters: Mapping[str, str], name: str) -> int:
    """A non-negative integer query parameter; absent is 0."""
    value = parameters.get(name)
    if value is None:
        return 0
    if not value.isascii() or not value.isdigit():
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise _bad_field(f"query parameter {name!r} must be a non-negative integer, "
                         f"not {shown!r}")
    digits = value.lstrip("0") or "0"  # int() refuses over 4,300 digits, zeros included
    if len(digits) > _MAX_DIGITS:
        raise _bad_field(f"query parameter {name!r} is too large "
                         f"(at most {_MAX_DIGITS} digits)")
    return int(digits)


# -- the body -----------------------------------------------------------------------------


def _media_type(environ: Mapping[str, Any]) -> str:
    return str(environ.get("CONTENT_TYPE", "")).split(";", 1)[0].strip().lower()


def read_json(environ: Mapping[str, Any], limit: int, *, required: bool) -> dict[str, Any]:
    """The request's JSON object body; ``{}`` when optional and absent."""
    text = environ.get("CONTENT_LENGTH") or "0"
    try:
        length = int(text)
    except ValueError:
        raise _bad_request(f"bad Content-Length: {text!r}") from None
    if length > limit:
        if length <= DRAIN_LIMIT:
            _drain(environ["wsgi.input"], length)
        raise _too_large(limit)
    if length <= 0:
        if required:
            if _media_type(environ) not in ("", JSON_MEDIA_TYPE):
                _unsupported(environ)
            raise _bad_request("the request body must be a JSON object")
        return {}
    if _media_type(environ) != JSON_MEDIA_TYPE:
        _unsupported(environ)
    try:
        data = environ["wsgi.input"].read(length)
    except OSError as error:
        raise _unreadable(error) from None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise _bad_request(f"malformed JSON in the request body: {error}") from None
    if not isinstance(value, dict):
        raise _bad_request(f"the request body must be a JSON object, not {json_type(value)}")
    return value


def buffer_chunked_body(environ: dict[str, Any], limit: int) -> None:
    """Read a chunked request body now and present it as a plain one of known length.

    cheroot already decoded the chunked body, and bottle would try to decode
    it again (bottle issues 700 and 845): it is read here, within ``limit``.
    """
    rfile = environ["wsgi.input"]
    cap_chunked_body(rfile, limit)
    try:
        body = rfile.read(limit + 1)
        if len(body) > limit:
            _drain(rfile, DRAIN_LIMIT - len(body))
            raise _too_large(limit)
        finish_chunked_body(rfile)
    except ValueError as error:  # cheroot's ChunkedRFile on a malformed chunk
        raise _bad_request(f"malformed chunked request body: {error}", CLOSE) from None
    except OSError as error:
        if body_too_large(error):  # a chunk announced more than the limit: refused unread
            raise ApiError(ProblemKind.BODY_TOO_LARGE, _too_large(limit).detail,
                           CLOSE) from None
        raise _unreadable(error) from None
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input_terminated"] = False


def _drain(rfile: Any, most: int) -> None:
    """Read and drop up to ``most`` bytes of a body we refuse.

    A client still sending its body when the answer comes and the connection
    closes gets a broken pipe instead of our 413; reading a few megabytes of
    it first lets ordinary clients see the answer.  Larger bodies are cut off.
    """
    try:
        while most > 0:
            chunk = rfile.read(min(most, 1 << 16))
            if not chunk:
                return
            most -= len(chunk)
    except (OSError, ValueError):
        return


def _unreadable(error: OSError) -> ApiError:
    if isinstance(error, TimeoutError):
        return ApiError(ProblemKind.REQUEST_TIMEOUT, "cannot read the request body: timed out",
                        CLOSE)
    why = error.strerror or str(error) or type(error).__name__
    return _bad_request(f"cannot read the request body: {why}", CLOSE)


def _unsupported(environ: Mapping[str, Any]) -> NoReturn:
    given = environ.get("CONTENT_TYPE") or "none"
    raise ApiError(ProblemKind.UNSUPPORTED_MEDIA_TYPE,
                   f"the request body must be JSON (Content-Type: application/json), "
                   f"not {given}")


# -- fields -------------------------------------------------------------------------------


def json_type(value: object) -> str:
    """``a string``, ``an array``, ...: what a JSON value is, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def check_fields(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """Refuse fields not in ``allowed``, so that a typo is not silently ignored."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _bad_field(f"unknown field{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(name) for name in unknown)} "
                         f"(known: {', '.join(sorted(allowed))})")


def _check_text(name: str, value: object) -> str:
    """A request's string: a str, no NUL, and valid Unicode.

    JSON can carry lone surrogates (``"\\udc80"``), which no response could
    encode back as UTF-8: refuse them here, naming the field.
    """
    if not isinstance(value, str):
        raise _bad_field(f"field {name!r} must be a string, not {json_type(value)}")
    if "\0" in value:
        raise _bad_field(f"field {name!r} must not contain NUL characters")
    if not is_text(value):
        raise _bad_field(f"field {name!r} must be valid Unicode (it has a lone surrogate)")
    return value


def field_str(body: Mapping[str, Any], name: str) -> str:
    """A required string field (the caller checked it is there)."""
    return _check_text(name, body[name])


def field_optional_str(body: Mapping[str, Any], name: str) -> str | None:
    """A string field that may be absent or null."""
    if body.get(name) is None:
        return None
    return field_str(body, name)


def field_str_list(body: Mapping[str, Any], name: str) -> list[str]:
    """An array of strings; absent or null is empty."""
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_field(f"field {name!r} must be an array of strings, not {json_type(value)}")
    for index, item in enumerate(value):
        _check_text(f"{name}[{index}]", item)
    return value


def field_env(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The ``env`` object of strings, or None."""
    value = body.get("env")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad_field(f"field 'env' must be an object of strings, not {json_type(value)}")
    for key, item in value.items():
        _check_text("env key", key)
        _check_text(f"env[{key!r}]", item)
    return value


def field_timeout(body: Mapping[str, Any]) -> float | None:
    """The ``timeout``: a positive, finite number of seconds, or None."""
    value = body.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad_field(f"field 'timeout' must be a number of seconds, "
                         f"not {json_type(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise _bad_field("field 'timeout' is too large") from None
    if not seconds > 0 or seconds == float("inf"):
        raise _bad_field(f"field 'timeout' must be a positive number of seconds, not {value}")
    return seconds


def field_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    """A boolean field; absent or null is ``default``."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad_field(f"field {name!r} must be a boolean, not {json_type(value)}")
    return value


def field_limits(body: Mapping[str, Any]) -> Limits | None:
    """The ``limits`` object (`Limits.from_dict`'s form), or None.

    Sizes may be bytes or strings such as ``"256M"``; a bad value is refused
    naming it (``field 'limits.memory': ...``).
    """
    value = body.get("limits")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad_field(f"field 'limits' must be an object, not {json_type(value)}")
    unknown = sorted(set(value) - {*Limits.NAMES, "strict"})
    if unknown:
        raise _bad_field(f"field 'limits' has an unknown limit {unknown[0]!r} "
                         f"(known: {', '.join((*Limits.NAMES, 'strict'))})")
    for name, item in value.items():
        try:
            Limits(**{name: item})
        except (TypeError, ValueError) as error:
            raise _bad_field(f"field 'limits.{name}': {error}") from None
    return Limits(**value)
