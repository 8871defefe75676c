"""The request middleware of ``serve`` and ``proxy``: request id, request span, response header.

Why one ASGI middleware for both: the service (FastAPI) and the proxy (raw
ASGI) must give an operator the same handle on a request: an ``X-Request-ID``
taken from the client (when short and safe, see
:func:`~secondpass.observability.logs.request_id_from`) or made here, echoed in
the answer, present in each log line; and, when tracing is on, one server span
that continues the client's W3C ``traceparent`` and parents every span of the
request (first stage, cache, queue wait, model, upstream). It sits outermost, so
refusals (401, 413, 431) carry the id too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from secondpass.observability import tracing
from secondpass.observability.logs import (
    REQUEST_ID_HEADER,
    request_id_from,
    reset_request_id,
    set_request_id,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["RequestContextMiddleware"]


def _route_name(scope: Scope) -> str:
    """The span name: method and route template (never the raw path: unbounded names)."""
    route = getattr(scope.get("route"), "path", None)
    return f"{scope.get('method', 'HTTP')} {route}" if route else str(scope.get("method", "HTTP"))


class RequestContextMiddleware:
    """Gives each HTTP request an id (``X-Request-ID``) and, when tracing, a server span.

    ``name_of(scope)`` names the span once the request is answered (the route is
    known only then); the default is the method and the framework's route template.
    """

    def __init__(self, app: ASGIApp, *, name_of: Callable[[Scope], str] | None = None) -> None:
        self.app = app
        self.name_of = _route_name if name_of is None else name_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request under its id (and span)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        sent = next((v for k, v in headers if k.lower() == REQUEST_ID_HEADER), None)
        request_id = request_id_from(sent)
        scope.setdefault("state", {})["request_id"] = request_id
        echoed = request_id.encode("latin-1")
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                out = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != REQUEST_ID_HEADER
                ]
                out.append((REQUEST_ID_HEADER, echoed))
                message = {**message, "headers": out}
            await send(message)

        token = set_request_id(request_id)
        try:
            if not tracing.enabled():
                await self.app(scope, receive, send_with_id)
                return
            attributes = {
                "http.request.method": str(scope.get("method", "")),
                "url.path": str(scope.get("path", ""))[:256],
                "secondpass.request_id": request_id,
            }
            with tracing.server_span(str(scope.get("method", "HTTP")), headers, attributes) as span:
                try:
                    await self.app(scope, receive, send_with_id)
                finally:
                    span.update_name(self.name_of(scope))
                    if status:
                        span.set_attribute("http.response.status_code", status)
        finally:
            reset_request_id(token)
