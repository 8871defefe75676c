"""ASGI middlewares of the rerank service: API keys, input limits, request metrics.

They wrap the FastAPI app from the outside, so each decision (who may call,
how much they may send, what gets counted) is taken once for every route,
before any route code runs; the routes in :mod:`secondpass.service.app` only
validate and translate.
"""

from __future__ import annotations

import math
import time

from fastapi.responses import JSONResponse

from secondpass.pipeline.engine import request_arrived
from secondpass.service.auth import ApiKeys, presented_key
from secondpass.service.errors import ServiceError, error_body
from secondpass.service.http_limits import (
    ASGIApp,
    BoundedInputMiddleware,
    HttpLimits,
    Message,
    Receive,
    Scope,
    Send,
)
from secondpass.service.metrics import ServiceMetrics
from secondpass.service.settings import ServiceSettings


class BodyLimitMiddleware(BoundedInputMiddleware):
    """The service's :class:`~secondpass.service.http_limits.BoundedInputMiddleware`.

    Bytes, time, headers and JSON depth are bounded before FastAPI reads a body
    (so a deep body never reaches the recursive parser); compressed bodies are
    refused with 415 because no rerank client sends them and decoding them would
    be a second way to grow a body. Refusals use the service's error shape and
    count in ``secondpass_rejected_total`` by error type.

    It also dates each request from its arrival
    (:func:`~secondpass.pipeline.engine.request_arrived`): the request timeout
    and the scoring queue's admission limit then include the time spent
    reading and parsing the body, so an admitted request's answer is due by
    arrival + limit, not by limit after a possibly late start.
    """

    def __init__(self, app: ASGIApp, *, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        super().__init__(
            app,
            limits=HttpLimits.from_settings(settings),
            render=_render_refusal,
            encodings=frozenset({"identity"}),
            json_depth=True,
            # A client that leaves takes its work with it: its pairs leave the scoring
            # queue instead of costing CPU for nobody (benchmarks/overload.py).
            cancel_on_disconnect=True,
            on_reject=lambda exc: metrics.rejected.labels(exc.error_type).inc(),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bound the request's input, with its time limits counted from now."""
        with request_arrived(time.monotonic()):
            await super().__call__(scope, receive, send)


def _render_refusal(exc: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = error_body(str(exc), exc.error_type, field=exc.field, limit=exc.limit)
    return exc.status, [(b"content-type", b"application/json")], bytes(JSONResponse(body).body)


class MetricsMiddleware:
    """Counts requests and latency per route template, and requests in flight (499: client left)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the request by route, method and status, and time it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # No answer started means the client left first and its work was cancelled:
        # counted as 499, the status nginx logs for that (the error handlers answer
        # every failure of ours, so a missing answer is never a 500 of ours).
        status = 499
        started = time.perf_counter()

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class ApiKeyMiddleware:
    """401 unless the request presents a configured API key; optionally, a rate per key.

    Installed outermost: the decision is made from the headers alone, before the
    body is read, a route is matched or anything is computed, for every path and
    method (unknown paths, ``/docs`` and ``/metrics`` included) except the
    probes in ``open_paths``, which orchestrators call without credentials.
    The key's *name* is put in ``scope["state"]["api_key"]`` for logs; the key
    itself is never stored or logged.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        metrics: ServiceMetrics,
        rate_per_s: float | None = None,
        open_paths: frozenset[str] = frozenset({"/livez", "/readyz"}),
    ) -> None:
        self.app = app
        self.keys = keys
        self.metrics = metrics
        self.rate_per_s = rate_per_s
        self.open_paths = open_paths
        self._buckets: dict[str, _TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the request, or answer 401/429 without calling the app."""
        if (
            scope["type"] not in ("http", "websocket")
            or not self.keys
            or scope.get("path") in self.open_paths
        ):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        name = self.keys.identify(headers)
        if name is None:
            self.metrics.rejected.labels("unauthenticated").inc()
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            if presented_key(headers) is None:
                message = (
                    "API key required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
                )
                challenge = 'Bearer realm="secondpass"'
            else:
                message = "invalid API key"
                challenge = 'Bearer realm="secondpass", error="invalid_token"'
            response = JSONResponse(
                error_body(message, "unauthenticated"),
                status_code=401,
                headers={"WWW-Authenticate": challenge, "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = name
        if self.rate_per_s is not None and scope["type"] == "http":
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = _TokenBucket(self.rate_per_s)
            wait_s = bucket.take()
            if wait_s > 0:
                self.metrics.rejected.labels("rate_limited").inc()
                message = f"rate limit of {self.rate_per_s:g} requests/s for this API key exceeded"
                response = JSONResponse(
                    error_body(message, "rate_limited", limit=self.rate_per_s),
                    status_code=429,
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TokenBucket:
    """``rate`` tokens per second, at most ``max(1, rate)`` saved up (the burst)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
