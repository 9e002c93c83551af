"""The OpenAPI 3.1 description of jobkit's HTTP API, served at ``GET /openapi.json``.

Kept as Python data next to the app so that a test can check that every
route the app serves is described here, and the other way round.
"""

from __future__ import annotations

from typing import Any

from jobkit._version import __version__
from jobkit.core.models import State
from jobkit.wire import (
    CHUNK_OFFSET_EXTENSION,
    CHUNK_OFFSETS_PARAMETER,
    DEFAULT_SERVER,
    JSON_MEDIA_TYPE,
    OFFSET_HEADER,
    PROBLEM_MEDIA_TYPE,
    STREAMS,
    ProblemKind,
)

__all__ = ["openapi_document"]

_JSON = JSON_MEDIA_TYPE


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}}


def _problem_schema() -> dict[str, Any]:
    kinds = "; ".join(f"{kind.type_uri} ({kind.status or 'any status'})"
                      for kind in ProblemKind)
    return {
        "type": "object", "required": ["type", "title", "status", "detail"],
        "description": "RFC 9457 problem details. Tell errors apart by type, never by "
                       "the wording of detail.",
        "properties": {
            "type": {"enum": [kind.type_uri for kind in ProblemKind],
                     "description": f"The kind of error: {kinds}."},
            "title": {"type": "string", "description": "The kind, for people."},
            "status": {"type": "integer", "description": "The HTTP status."},
            "detail": {"type": "string", "description": "What went wrong, for people."},
            "job_id": {"type": "string", "description": "no-such-job: the id asked for."},
            "backend": {"type": "string",
                        "description": "unknown-backend: the name asked for."},
            "known_backends": {"type": "array", "items": {"type": "string"},
                               "description": "unknown-backend: the server's backends."},
        },
    }


_JOB_ID = {
    "name": "id", "in": "path", "required": True, "schema": {"type": "string"},
    "description": "The job's id, as returned by PUT /jobs (ids are per client).",
}
_CLIENT = {
    "name": "client", "in": "query", "required": False, "schema": {"type": "string"},
    "description": "Admins only: the CN of the client whose job this is "
                   "(default: the caller). Others get 403 for any CN but their own.",
}

_COMMON_ERRORS = {
    "403": _error("The client certificate names no single CN, or a non-admin used "
                  "client= / all=true."),
    "404": _error("No such job for this client (another client's job gives the same answer)."),
}


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document, as a JSON-ready dict."""
    job_paths: dict[str, Any] = {
        "/jobs/{id}": {
            "parameters": [_JOB_ID, _CLIENT],
            "delete": {
                "summary": "Kill the job's process group (SIGKILL), reap it and forget the job.",
                "operationId": "deleteJob",
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "id": {"type": "string"}, "deleted": {"const": True}}},
                        "The job is gone."),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/jobs/{id}/status": {
            "parameters": [_JOB_ID, _CLIENT],
            "get": {
                "summary": "The job's status.",
                "operationId": "getJobStatus",
                "responses": {"200": _json(_ref("JobStatus"), "The status."), **_COMMON_ERRORS},
            },
        },
        "/jobs/{id}/output": {
            "parameters": [_JOB_ID, _CLIENT],
            "get": {
                "summary": "Everything the job wrote so far, decoded as UTF-8 "
                           "(invalid bytes replaced by U+FFFD).",
                "operationId": "getJobOutput",
                "responses": {
                    "200": _json({"type": "object", "required": ["stdout", "stderr"],
                                  "properties": {"stdout": {"type": "string"},
                                                 "stderr": {"type": "string"}}},
                                 "The output."),
                    **_COMMON_ERRORS,
                },
            },
        },
        "/jobs/{id}/stop": {
            "parameters": [_JOB_ID, _CLIENT],
            "post": {
                "summary": "Send a signal (default SIGTERM) to the job's process group.",
                "operationId": "stopJob",
                "requestBody": {
                    "required": False,
                    "content": {_JSON: {"schema": {
                        "type": "object", "additionalProperties": False,
                        "properties": {"signal": {
                            "oneOf": [{"type": "string"}, {"type": "integer"}],
                            "description": "A name (SIGTERM, TERM) or number; "
                                           "default SIGTERM.",
                        }},
                    }}},
                },
                "responses": {
                    "200": _json(_ref("JobStatus"), "Signal sent; the job's status right after."),
                    "400": _error("Unknown signal, or a field of the wrong type."),
                    "415": _error("A body that is not JSON."),
                    **_COMMON_ERRORS,
                },
            },
        },
    }
    for stream in STREAMS:
        job_paths[f"/jobs/{{id}}/{stream}"] = {
            "parameters": [_JOB_ID, _CLIENT],
            "get": {
                "summary": f"The job's raw {stream} bytes from an offset; with follow=true, "
                           "streamed (chunked) until the stream ends.",
                "operationId": f"getJob{stream.capitalize()}",
                "parameters": [
                    {"name": "offset", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "default": 0},
                     "description": "Absolute offset of the first byte wanted."},
                    {"name": "follow", "in": "query", "required": False,
                     "schema": {"type": "boolean", "default": False},
                     "description": "Keep the response open and send bytes as the job "
                                    "writes them, until the stream ends, the job is "
                                    "deleted or the server stops."},
                    {"name": CHUNK_OFFSETS_PARAMETER, "in": "query", "required": False,
                     "schema": {"type": "boolean", "default": False},
                     "description": "Each chunk of the (chunked, HTTP/1.1) body says where "
                                    "its bytes start, as the chunk extension "
                                    f"';{CHUNK_OFFSET_EXTENSION}=N', and the body skips "
                                    "bytes the backend dropped instead of ending there."},
                ],
                "responses": {
                    "200": {
                        "description": "The bytes. X-Jobkit-Offset is the offset of the "
                                       "first one (later than offset if the ring backend "
                                       "dropped those bytes).",
                        "headers": {OFFSET_HEADER: {"schema": {"type": "integer"}}},
                        "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}},
                    },
                    "400": _error("offset or follow malformed."),
                    "429": _error("This client holds too many follow streams."),
                    "503": _error("The server holds too many follow streams, or is stopping."),
                    **_COMMON_ERRORS,
                },
            },
        }

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobkit",
            "version": __version__,
            "description": "Run commands as jobs on this machine. Every client is "
                           "identified by the CN of its TLS client certificate and sees "
                           "only its own jobs. Every error is an RFC 9457 problem "
                           "(application/problem+json): see the Problem schema.",
        },
        "servers": [{"url": f"https://{DEFAULT_SERVER}"}],
        "security": [{"mutualTLS": []}],
        "paths": {
            "/jobs": {
                "put": {
                    "summary": "Start a job (no shell is involved).",
                    "operationId": "createJob",
                    "requestBody": {"required": True, "content": {
                        _JSON: {"schema": _ref("JobRequest")}}},
                    "responses": {
                        "201": _json({"type": "object", "required": ["id"],
                                      "properties": {"id": {"type": "string"}}},
                                     "Created. The job may still be in state error "
                                     "(e.g. command not found): see its status."),
                        "400": _error("Malformed JSON, a missing or unknown field, a field "
                                      "of the wrong type (the message names it), an unknown "
                                      "backend."),
                        "403": _error("As for every route, a backend this server does "
                                      "not let clients choose (--allow-backend), or a limit "
                                      "over this server's maximum for the client "
                                      "(--max-limits; the problem's limit and maximum "
                                      "members name it)."),
                        "413": _error("Body larger than 1 MiB."),
                        "415": _error("Body is not application/json."),
                        "429": _error("This client is over a quota: too many running "
                                      "jobs, or the CPUs or memory of its running jobs "
                                      "(the problem's quota member says which: cpu, "
                                      "memory; none for running jobs)."),
                        "503": _error("The server is stopping."),
                    },
                },
                "get": {
                    "summary": "List the caller's jobs (or, for admins, another client's "
                               "with client=, or everyone's with all=true).",
                    "operationId": "listJobs",
                    "parameters": [
                        _CLIENT,
                        {"name": "all", "in": "query", "required": False,
                         "schema": {"type": "boolean", "default": False},
                         "description": "Admins only: every client's jobs. Ids are only "
                                        "unique together with jobs[i].client."},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                    "default": 1000},
                         "description": "At most this many jobs in this page."},
                        {"name": "after", "in": "query", "required": False,
                         "schema": {"type": "string"},
                         "description": "The 'next' of the previous page: this page "
                                        "starts past it."},
                        {"name": "order", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["oldest", "newest"],
                                    "default": "oldest"},
                         "description": "Oldest jobs first, or newest first."},
                    ],
                    "responses": {
                        "200": _json({
                            "type": "object", "required": ["ids", "jobs", "next"],
                            "properties": {
                                "ids": {"type": "array", "items": {"type": "string"}},
                                "jobs": {"type": "array", "items": _ref("JobSummary")},
                                "next": {"type": ["string", "null"],
                                         "description": "Pass as after= for the next "
                                                        "page; null on the last page."},
                            },
                        }, "A page of ids in the order asked for, and one summary per id."),
                        "400": _error("A malformed all=, client=, limit= or order= value."),
                        "403": _COMMON_ERRORS["403"],
                    },
                },
            },
            "/jobs/clean": {
                "post": {
                    "summary": "Delete the caller's finished jobs (all, or those matching "
                               "the filters); running jobs are never touched.",
                    "operationId": "cleanJobs",
                    "parameters": [_CLIENT],
                    "requestBody": {"required": False, "content": {_JSON: {"schema": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "older_than": {"type": "number", "minimum": 0,
                                           "description": "Only jobs that ended at least "
                                                          "this many seconds ago."},
                            "states": {"type": "array", "items": {
                                "type": "string",
                                "enum": ["error", "completed", "killed", "lost"]},
                                "description": "Only jobs in one of these states."},
                        },
                    }}}},
                    "responses": {
                        "200": _json({
                            "type": "object", "required": ["deleted", "bytes"],
                            "properties": {
                                "deleted": {"type": "integer", "minimum": 0},
                                "bytes": {"type": "integer", "minimum": 0,
                                          "description": "Output the deleted jobs kept."},
                            },
                        }, "How many jobs were deleted, and how much output they kept."),
                        "400": _error("A malformed body or client= value."),
                        "403": _COMMON_ERRORS["403"],
                        "413": _error("Body larger than 1 MiB."),
                        "415": _error("Body is not application/json."),
                    },
                },
            },
            **job_paths,
            "/metrics": {
                "get": {
                    "summary": "The server's metrics in Prometheus's text format "
                               "(admins only).",
                    "operationId": "getMetrics",
                    "responses": {
                        "200": {"description": "Prometheus text exposition format",
                                "content": {"text/plain": {"schema": {"type": "string"}}}},
                        "403": _error("The caller is not an admin (--admin), or its "
                                      "certificate names no single CN."),
                    },
                },
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "operationId": "getOpenApi",
                    "responses": {"200": {"description": "OpenAPI 3.1",
                                          "content": {_JSON: {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "mutualTLS": {"type": "mutualTLS",
                              "description": "TLS 1.3 with a client certificate from the "
                                             "server's CA; its single subject CN is the "
                                             "client's identity."},
            },
            "schemas": {
                "Problem": _problem_schema(),
                "JobRequest": {
                    "type": "object", "required": ["cmd"], "additionalProperties": False,
                    "properties": {
                        "cmd": {"type": "string", "minLength": 1,
                                "description": "Program, looked up in PATH unless it has a /."},
                        "args": {"type": "array", "items": {"type": "string"}, "default": []},
                        "env": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Variables set over the server's environment."},
                        "replace_env": {"type": "boolean", "default": False,
                                        "description": "Use env as the whole environment."},
                        "cwd": {"type": "string", "description": "Working directory."},
                        "timeout": {"type": "number", "exclusiveMinimum": 0,
                                    "description": "Seconds; then SIGTERM, SIGKILL 5 s later."},
                        "backend": {"type": "string",
                                    "description": "Output backend: memory, tempfile, ring, "
                                                   "or a plugin's."},
                        "limits": _ref("Limits"),
                        "network": {"type": "boolean", "default": True,
                                    "description": "false: the job runs in a network "
                                                   "namespace of its own with only "
                                                   "loopback (the job ends in error where "
                                                   "the server cannot make one)."},
                    },
                },
                "Limits": {
                    "type": "object", "additionalProperties": False,
                    "description": "What the job's whole process tree may use; a limit "
                                   "left out gets the server's default, else its maximum "
                                   "(docs/limits.md). Sizes are bytes or strings such as "
                                   "'256M', '1.5GiB' (binary units).",
                    "properties": {
                        "cpu": {"type": ["number", "null"], "minimum": 0.01,
                                "maximum": 4096, "description": "CPUs (0.5: half a core)."},
                        "memory": {"oneOf": [{"type": "integer", "minimum": 1 << 20},
                                             {"type": "string"}, {"type": "null"}],
                                   "description": "RAM without swap; over it the OOM "
                                                  "killer kills the job."},
                        "pids": {"type": ["integer", "null"], "minimum": 1,
                                 "description": "Processes and threads of the tree."},
                        "io_read_bps": {"oneOf": [{"type": "integer", "minimum": 1},
                                                  {"type": "string"}, {"type": "null"}],
                                        "description": "Bytes per second read from the "
                                                       "disk of the working directory."},
                        "io_write_bps": {"oneOf": [{"type": "integer", "minimum": 1},
                                                   {"type": "string"}, {"type": "null"}],
                                         "description": "Bytes per second written to it."},
                        "strict": {"type": "boolean", "default": True,
                                   "description": "false: run with the limits this server "
                                                  "can enforce (see unenforced)."},
                    },
                },
                "Usage": {
                    "type": "object",
                    "required": ["source", "cpu_user_s", "cpu_system_s", "peak_memory",
                                 "io_read_bytes", "io_write_bytes"],
                    "properties": {
                        "source": {"enum": ["cgroup", "rusage"],
                                   "description": "cgroup: the whole tree, live; rusage: "
                                                  "the main process, once ended."},
                        "cpu_user_s": {"type": "number"},
                        "cpu_system_s": {"type": "number"},
                        "peak_memory": {"type": ["integer", "null"]},
                        "io_read_bytes": {"type": ["integer", "null"]},
                        "io_write_bytes": {"type": ["integer", "null"]},
                    },
                },
                "StreamInfo": {
                    "type": "object", "required": ["written", "dropped", "closed"],
                    "properties": {"written": {"type": "integer"},
                                   "dropped": {"type": "integer"},
                                   "closed": {"type": "boolean"}},
                },
                "JobStatus": {
                    "type": "object",
                    "required": ["id", "status", "cmd", "args", "pid", "created_at",
                                 "ended_at", "timed_out", "backend", "output_error",
                                 "stdout", "stderr"],
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"enum": [state.value for state in State]},
                        "error_msg": {"type": "string", "description": "Only in state error."},
                        "exit_code": {"type": "integer", "description": "Only when completed."},
                        "signal": {"type": "integer", "description": "Only when killed."},
                        "signal_name": {"type": "string", "description": "Only when killed."},
                        "cmd": {"type": "string"},
                        "args": {"type": "array", "items": {"type": "string"}},
                        "pid": {"type": ["integer", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "ended_at": {"type": ["string", "null"], "format": "date-time"},
                        "timed_out": {"type": "boolean"},
                        "backend": {"type": "string"},
                        "output_error": {"type": ["string", "null"]},
                        "stdout": _ref("StreamInfo"),
                        "stderr": _ref("StreamInfo"),
                        "executor": {"type": "string",
                                     "description": "Where the job runs: local, ray, ..."},
                        "handle": {"type": ["string", "null"],
                                   "description": "The executor's name for the job (Ray: its"
                                                  " submission id); null for local jobs."},
                        "limits": {"oneOf": [_ref("Limits"), {"type": "null"}],
                                   "description": "The limits the job runs with (sizes in "
                                                  "bytes), defaults included; null: none."},
                        "network": {"type": "boolean",
                                    "description": "false: only loopback."},
                        "enforced_by": {
                            "type": ["string", "null"],
                            "description": "cgroup2, cgroup1, cgroup1+cgroup2 or none; "
                                           "null for a job without limits."},
                        "unenforced": {"type": "array", "items": {"type": "string"},
                                       "description": "Limits this server could not "
                                                      "enforce (strict false only)."},
                        "oom_killed": {"type": "boolean",
                                       "description": "The OOM killer killed a process of "
                                                      "the job (its memory limit)."},
                        "usage": {"oneOf": [_ref("Usage"), {"type": "null"}],
                                  "description": "What the job used; null while unknown."},
                    },
                },
                "JobSummary": {
                    "allOf": [_ref("JobStatus"), {
                        "type": "object", "required": ["client"],
                        "properties": {"client": {"type": "string"}},
                    }],
                },
            },
        },
    }
