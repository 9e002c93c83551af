"""How ``jobkit serve`` writes its log (stderr): plain lines, or one JSON object per line.

``plain`` (the default)::

    2025-01-31 10:12:03,123 INFO jobkit.server.access: alice PUT /jobs 201 3.1ms

``json`` (``--log-format json``), for a log collector::

    {"time":"2025-01-31T10:12:03.123456Z","level":"info","logger":"jobkit.server.access",
     "message":"alice PUT /jobs 201 3.1ms","request_id":"9f3c2a1b-7","cn":"alice",
     "peer":"10.0.0.5:51514","method":"PUT","route":"/jobs","path":"/jobs",
     "status":201,"bytes":12,"duration_s":0.003112}

Every line has ``time`` (UTC), ``level``, ``logger`` and ``message``; access
log lines add the request's fields (`jobkit.server.access_log`), and a
line about an exception adds ``exception`` (the traceback, as text).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

from jobkit.server.access_log import FIELDS_ATTRIBUTE
from jobkit.wire import format_time

__all__ = ["LOG_FORMATS", "PLAIN_FORMAT", "JsonFormatter", "configure_logging"]

#: The formats ``--log-format`` accepts.
LOG_FORMATS = ("plain", "json")
#: The ``logging`` format of ``plain``.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in text are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": format_time(datetime.fromtimestamp(record.created, timezone.utc)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTRIBUTE, None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


def configure_logging(log_format: str, level: int) -> None:
    """Send the root logger's records to stderr in ``log_format`` (`LOG_FORMATS`)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
