"""Errors of the HTTP layer and the one table that maps every error to a status code.

The rule: anything a client can cause is a 4xx that names the field and the limit;
load and dependency trouble is 429/503 with ``Retry-After``; a bug is the only
path to 500. Every error body has the same shape, readable by Cohere clients
(``message``) and text-embeddings-inference clients (``error``, ``error_type``)::

    {"error": "...", "message": "...", "error_type": "validation",
     "field": "documents", "limit": 1000}
"""

from __future__ import annotations

from typing import Any

from secondpass.errors import (
    BackendUnavailableError,
    CircuitOpenError,
    ConfigurationError,
    OverloadedError,
    QueryError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
    SecondPassError,
)


class ServiceError(SecondPassError):
    """An error that already knows its HTTP status and error type."""

    status = 500
    error_type = "internal"

    def __init_subclass__(
        cls, *, status: int | None = None, error_type: str | None = None, **kwargs: Any
    ) -> None:
        """Let a subclass declare its status and type in its header, one line per error.

        ``class GoneError(ServiceError, status=410, error_type="gone")``; either may be
        left out to inherit the parent's.
        """
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if error_type is not None:
            cls.error_type = error_type

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        limit: int | float | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.limit = limit
        self.retry_after_s = retry_after_s


class LimitExceededError(ServiceError, status=422, error_type="limit_exceeded"):
    """A field is larger than the configured limit (422, names the field and the limit)."""


class InvalidRequestError(ServiceError, status=422, error_type="validation"):
    """The request is well-formed JSON but does not make sense (422)."""


class InputTooLongError(ServiceError, status=413, error_type="input_too_long"):
    """TEI ``truncate=false`` and an input longer than the model's window (413)."""


class BodyTooLargeError(ServiceError, status=413, error_type="body_too_large"):
    """The body is larger than ``max_body_bytes`` (413, refused before it is read)."""


class QueueFullError(ServiceError, status=429, error_type="overloaded"):
    """The batching queue has no room for the request's pairs (429 + Retry-After)."""


class DeadlineExceededError(ServiceError, status=503, error_type="deadline_exceeded"):
    """The service's queue timeout passed before the request was computed (503)."""


class ClientDeadlineExceededError(DeadlineExceededError, status=408):
    """The client's own deadline passed before the request was computed (408).

    A 4xx because the client chose the deadline: a too-short deadline is input.
    """


class UnavailableError(ServiceError, status=503, error_type="unavailable"):
    """Model not loaded, the service is draining, or the engine is down (503)."""


class NotConfiguredError(ServiceError, status=404, error_type="not_configured"):
    """The endpoint needs configuration this deployment does not have (404)."""


def status_for(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (HTTP status, error type); unknown exceptions are bugs (500)."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.error_type
    if isinstance(exc, QueryError):
        # The engine rejected what the client sent (their filters or query body).
        if exc.status in (None, 400):
            return 400, "query_error"
        return 502, "engine_error"  # e.g. the configured index is missing: not input
    if isinstance(exc, BackendUnavailableError):
        return 503, "engine_unavailable"
    # The shared batcher's library errors answer as the service's own did.
    if isinstance(exc, OverloadedError):
        return QueueFullError.status, QueueFullError.error_type
    if isinstance(exc, ScoringDeadlineError):
        if exc.client_deadline:
            return ClientDeadlineExceededError.status, ClientDeadlineExceededError.error_type
        return DeadlineExceededError.status, DeadlineExceededError.error_type
    if isinstance(exc, ScoringUnavailableError):
        return UnavailableError.status, UnavailableError.error_type
    if isinstance(exc, CircuitOpenError):
        return 503, "circuit_open"  # Retry-After: until the breaker's next probe
    if isinstance(exc, RerankError):
        return 503, "rerank_failed"
    if isinstance(exc, ConfigurationError):
        return 422, "validation"
    return 500, "internal"


def error_body(
    message: str,
    error_type: str,
    *,
    field: str | None = None,
    limit: int | float | None = None,
) -> dict[str, Any]:
    """The one JSON error shape (see the module docstring)."""
    body: dict[str, Any] = {"error": message, "message": message, "error_type": error_type}
    if field is not None:
        body["field"] = field
    if limit is not None:
        body["limit"] = limit
    return body
