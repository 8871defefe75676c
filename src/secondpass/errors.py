"""One exception hierarchy for the whole project.

Callers catch ``SecondPassError`` to handle anything we raise; each subclass says
which layer failed so that a service can map it to the right status code. Every
raise site chains the original exception (``raise X(...) from exc``) so the cause
is never lost, but messages never carry secrets or stack traces of their own.
"""

from __future__ import annotations


class SecondPassError(Exception):
    """Base class of every error SecondPass raises on purpose."""


class ConfigurationError(SecondPassError, ValueError):
    """A setting or argument is invalid; the message names it and the allowed values."""


class MissingDependencyError(SecondPassError, ImportError):
    """An optional dependency is absent; the message names the pip extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{package} is required for this feature: install the '{extra}' extra "
            f"(in a clone: pip install -e '.[{extra}]')"
        )


class ConnectorError(SecondPassError):
    """A search engine call failed."""


class BackendUnavailableError(ConnectorError):
    """The engine could not be reached (or kept failing) within the deadline."""


class SearchDeadlineError(BackendUnavailableError):
    """The engine did not answer within the caller's own deadline; the search was abandoned.

    A ``BackendUnavailableError`` (so code that handles an unreachable engine
    handles this too, and the HTTP service answers 503 with ``Retry-After``),
    raised instead of waiting past the deadline the caller gave
    (``SearchRequest.deadline``, the retriever's ``deadline_ms``).
    ``retry_after_s`` suggests when to try again.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class QueryError(ConnectorError):
    """The engine rejected the request (bad query, missing index, ...); not retried."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        self.status = status
        self.reason = reason
        super().__init__(message)


class InvalidIndexNameError(QueryError, ConfigurationError):
    """An index name is a pattern or contains characters that could widen the request."""


class RefusedQueryError(QueryError, ConfigurationError):
    """A caller's filter or body leaves the allow-list; ``field`` is the JSON path.

    A ``QueryError`` with status 400 (the HTTP service answers 400, like a query
    the engine rejects) and a ``ConfigurationError`` (a ``ValueError``) for
    library callers, as ``InvalidIndexNameError`` is.
    """

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        self.field = path
        text = f"{path}: {message}"
        super().__init__(text, status=400, reason=text)


class RerankError(SecondPassError):
    """Scoring failed (model could not load, forward pass failed, ...)."""


class CircuitOpenError(RerankError):
    """Scoring was not attempted: the scorer kept failing and its circuit breaker is open.

    ``retry_after_s`` is the whole number of seconds until the breaker lets a
    probe through, for an HTTP ``Retry-After`` header.
    """

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class OverloadedError(RerankError):
    """Scoring was refused before it started: the queue cannot take the work in time.

    Raised at once, before the request costs anything, when the work queued
    ahead plus the request's own would not finish within its deadline (or the
    server's maximum queue time), or when the queue's pair bound is reached.
    ``retry_after_s`` estimates when it would fit (at least 1 s).
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ScoringDeadlineError(RerankError):
    """The deadline passed before the pairs were computed; they were dropped, not scored.

    ``client_deadline`` says whose deadline it was: the caller's own (a client
    choosing too short a deadline) or the server's queue timeout (load).
    """

    def __init__(self, message: str, *, client_deadline: bool, retry_after_s: float = 1.0) -> None:
        self.client_deadline = client_deadline
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ScoringUnavailableError(RerankError):
    """Scoring cannot be accepted now: the batcher is not started or is shutting down."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ModelLoadError(RerankError):
    """The model could not be loaded, or loading it would need an unsafe opt-in."""


class RemoteRerankError(RerankError):
    """A hosted or self-hosted rerank API refused a call or answered something unusable.

    Not retried: the request itself is wrong (HTTP 400), the key is refused
    (401/403) or the answer does not fit the protocol. ``status`` is the HTTP
    status when the API answered one. The message never carries the API key.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class RemoteRerankUnavailableError(RemoteRerankError):
    """A rerank API kept failing with retryable errors (connection, timeout, 429/502/503/504).

    Raised once the retry policy's attempts or deadline are spent.
    """


class ServerStartError(SecondPassError):
    """A local engine or Redis process did not start; carries the tail of its log."""
