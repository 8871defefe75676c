"""The HTTP plumbing every remote scorer shares: a bounded client and one JSON POST.

Why here and not in ``connectors``: a rerank API is a scorer backend, not a
search engine, and httpx is a generic HTTP client (the pipeline still imports no
engine client). Responses are read through :class:`BoundedTransport`, so an API
(or something impersonating it) cannot make us buffer more than
``max_response_bytes``; compression is refused (``Accept-Encoding: identity``)
so the bound is on what we decode, not on a gzip bomb's compressed size.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpcore
import httpx

from secondpass.connectors._retry import RETRYABLE_STATUSES, unavailable
from secondpass.errors import BackendUnavailableError, RemoteRerankError
from secondpass.redaction import redact

_REASON_CHARS = 200


class ResponseTooLargeError(RemoteRerankError):
    """The API's answer exceeded ``max_response_bytes``; reading stopped there."""


_attempt = threading.local()
"""This thread's attempt deadline (``ends``, monotonic): sync httpcore does its I/O on the caller's thread."""


def _time_left(timeout: float | None) -> float | None:
    """``timeout`` capped by what is left of this thread's attempt; ReadTimeout once spent."""
    ends = getattr(_attempt, "ends", None)
    if ends is None:
        return timeout
    left = ends - time.monotonic()
    if left <= 0:
        msg = "the rerank API's answer did not arrive within the timeout"
        raise httpcore.ReadTimeout(msg)
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write shares one attempt deadline.

    httpx's timeouts are per operation: a status line, header or body trickled a
    byte at a time never trips them, and the call would outlive any deadline.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _time_left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _time_left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, _time_left(timeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _DeadlineStream(super().connect_tcp(*args, **kwargs))


class _BoundedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                msg = f"the rerank API answered more than {self._limit} bytes"
                raise ResponseTooLargeError(msg)
            yield chunk

    def close(self) -> None:
        self._inner.close()


def _deadline_transport(connections: int) -> httpx.HTTPTransport:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = httpx.HTTPTransport(retries=0, limits=limits)
    transport._pool._network_backend = _DeadlineBackend()  # httpx has no public hook for it
    return transport


class BoundedTransport(httpx.BaseTransport):
    """An httpx transport that bounds a response: bytes, encoding and one deadline per attempt.

    The attempt's whole exchange (connect, headers, body) must finish within the
    request's read timeout, which the retry policy sets per attempt.
    """

    def __init__(
        self, limit: int, inner: httpx.BaseTransport | None = None, *, connections: int = 10
    ) -> None:
        self._limit = limit
        self._inner = _deadline_transport(connections) if inner is None else inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {}).get("read")
        _attempt.ends = None if timeout is None else time.monotonic() + float(timeout)
        response = self._inner.handle_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We asked for identity: a compressed answer would be inflated past the
            # byte bound (a gzip bomb), so it is refused unread.
            response.close()
            msg = f"the rerank API answered Content-Encoding {encoding[:40]!r} (identity was asked for)"
            raise RemoteRerankError(msg, status=response.status_code)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            response.close()
            msg = f"the rerank API announced {declared} bytes (limit {self._limit})"
            raise ResponseTooLargeError(msg)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _BoundedStream(response.stream, self._limit)
        return response

    def close(self) -> None:
        self._inner.close()


def bounded_client(
    *,
    base_url: str,
    headers: Mapping[str, str],
    limit: int,
    connections: int,
    auth: tuple[str, str] | None = None,
) -> httpx.Client:
    """An httpx client for one API: bounded bodies, no compression, no redirects, no env proxies."""
    return httpx.Client(
        base_url=base_url,
        auth=None if auth is None else httpx.BasicAuth(*auth),
        headers={"Accept-Encoding": "identity", **headers},
        # Client(limits=) is ignored when a transport is given: the transport carries them.
        transport=BoundedTransport(limit, connections=connections),
        follow_redirects=False,  # a redirect could carry the Authorization header elsewhere
        trust_env=False,
    )


def reason(body: Any) -> str:
    """The API's own explanation of an error (first string found), shortened and redacted."""
    text = ""
    if isinstance(body, Mapping):
        for key in ("message", "detail", "error", "error_type"):
            value = body.get(key)
            if isinstance(value, Mapping):
                value = value.get("message") or value.get("reason")
            if isinstance(value, str) and value.strip():
                text = value
                break
            if isinstance(value, list) and value:
                text = str(value[0])
                break
    elif isinstance(body, str):
        text = body
    text = " ".join(text.split())[:_REASON_CHARS]
    return redact(text) if text else "no reason given"


def status_error(status: int, body: Any, *, what: str) -> Exception:
    """A retryable status as :class:`BackendUnavailableError`, anything else as ours (not retried)."""
    why = reason(body)
    if status in RETRYABLE_STATUSES:
        return BackendUnavailableError(f"{what}: HTTP {status} ({why})")
    hint = " (check the API key)" if status in (401, 403) else ""
    return RemoteRerankError(f"{what} failed: HTTP {status}{hint}: {why}", status=status)


def post_json(client: httpx.Client, path: str, body: Any, *, timeout: float, what: str) -> Any:
    """POST ``body`` as JSON; the decoded answer, or a typed error (retryable or not)."""
    try:
        response = client.post(path, json=body, timeout=timeout)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise unavailable(exc, what=what) from exc
    try:
        decoded: Any = response.json()
    except (ValueError, RecursionError):  # RecursionError: arrays nested past the parser's limit
        decoded = response.text
    if response.status_code >= 300:
        raise status_error(response.status_code, decoded, what=what)
    if isinstance(decoded, str):
        msg = f"{what}: the API answered HTTP {response.status_code} with a body that is not JSON"
        raise RemoteRerankError(msg, status=response.status_code)
    return decoded
