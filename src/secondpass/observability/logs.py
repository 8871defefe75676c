"""Log set-up of ``serve`` and ``proxy``: one level for every logger, text or JSON, request ids.

Why: an operator greps one request's lines across the service, the engine and
the load balancer by its request id, and feeds JSON lines to a log pipeline
without parsing free text. ``--log-level`` must govern every logger, including
uvicorn's and the HTTP client's (httpx logs one INFO line per upstream request,
which at a proxy's rate drowns everything else), and every line, JSON or text,
still goes through the redacting filter of :mod:`secondpass.redaction`.

The request id lives in a :mod:`contextvars` variable set by the request
middleware (:mod:`secondpass.observability.asgi`), so every line logged while
serving that request (in its task, and in work it awaits on the same loop)
carries it; lines logged outside a request carry ``-`` (text) or no field (JSON).

Example:
    >>> configure_logging(level="warning", fmt="json")  # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import uuid
from typing import Any, Literal

from secondpass.errors import ConfigurationError
from secondpass.observability import tracing
from secondpass.redaction import install_log_redaction, redact

__all__ = [
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "configure_logging",
    "current_request_id",
    "request_id_from",
]

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_CHARS = 128
"""A longer ``X-Request-ID`` is replaced by a fresh id (it would bloat every log line)."""
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]+$")
"""Characters a request id may keep: no spaces, quotes or control characters that could forge
log lines or break a JSON or text log parser."""

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "secondpass_request_id", default=None
)

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
# Loggers whose level the CLI sets from --log-level (their own defaults would ignore it).
_GOVERNED = ("uvicorn", "uvicorn.error", "uvicorn.access", "secondpass")
# They log each request at INFO; shown only when the operator asks for DEBUG.
_PER_REQUEST_CLIENTS = ("httpx", "httpcore", "elastic_transport", "opensearch", "urllib3")


def request_id_from(value: bytes | str | None) -> str:
    """The client's request id when it is safe to log and echo, else a fresh one.

    Safe: short, of the characters of :data:`_SAFE_ID`, and not a credential (a
    client that sends its API key as a request id must not find it in the logs,
    where the id is not redacted per line).
    """
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value is not None:
        value = value.strip()
        if 0 < len(value) <= MAX_REQUEST_ID_CHARS and _SAFE_ID.match(value):
            if redact(value) == value:
                return value
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    """Make ``value`` the current request id; reset with the returned token."""
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    """Undo :func:`set_request_id`."""
    _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` (and, when tracing, ``trace_id``) on every record a handler emits."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; always keep it."""
        if not hasattr(record, "request_id"):
            record.request_id = _request_id.get() or "-"
        if not hasattr(record, "trace_id"):
            record.trace_id = tracing.current_trace_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request id.

    The message is the record's rendered text after the redacting filter ran (the
    filter rewrites records before any formatter sees them), and exceptions are
    one ``exc`` string, so a line never spans two lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id and request_id != "-":
            out["request_id"] = request_id
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            out["trace_id"] = trace_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(*, level: str, fmt: LogFormat | str = "text") -> None:
    """Set every logger of the process to ``level`` and format lines as ``fmt``.

    The root logger gets one stderr handler (replacing what was there); the
    redacting filter and the request-id filter sit on it. uvicorn's loggers
    and ours follow ``level``; per-request loggers of the HTTP clients stay at
    WARNING unless ``level`` is ``debug``.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        msg = f"log level: one of critical, error, warning, info, debug; got {level!r}"
        raise ConfigurationError(msg)
    if fmt not in ("text", "json"):
        msg = f"log format: text or json; got {fmt!r}"
        raise ConfigurationError(msg)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RequestIdFilter())
    logging.basicConfig(level=numeric, handlers=[handler], force=True)
    for name in _GOVERNED:
        lib = logging.getLogger(name)
        lib.setLevel(numeric)
        for own in list(lib.handlers):  # uvicorn's own handlers would bypass our format
            lib.removeHandler(own)
        lib.propagate = True
    chatty = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _PER_REQUEST_CLIENTS:
        logging.getLogger(name).setLevel(chatty)
    install_log_redaction(quiet_http_clients=False)
