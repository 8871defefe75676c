"""The proxy's byte plumbing: pass-through, streaming, header rewrites and decoding.

Why a module of its own: everything here moves or reads bytes and decides nothing
about reranking. Pass-through traffic keeps its bytes, status codes, repeated
headers and streaming (request bodies stream up, response bodies stream down
unread); a search body the proxy reads is decoded here under the input limits,
and a body the proxy cannot read is handed on as it came. :class:`Upstream` owns
the pooled HTTP client toward the engine and the only place a request is sent.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx

from secondpass.observability import tracing
from secondpass.proxy import access, rules
from secondpass.proxy.metrics import ProxyMetrics
from secondpass.proxy.settings import ProxySettings
from secondpass.service.errors import ServiceError
from secondpass.service.http_limits import (
    ClientGoneError,
    HttpLimits,
    MalformedRequestError,
    UnsupportedEncodingError,
    check_json_depth,
    decompress,
)

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATUS_HEADER = "x-secondpass-rerank"
"""Response header naming the rerank status; as a request header, ``off`` opts out."""
QUERY_HEADER = "x-secondpass-query"
"""Request header with the text to rerank with (percent-encoded UTF-8 where not ASCII)."""

# Hop-by-hop headers (RFC 9110 7.6.1) and those the HTTP layer recomputes.
HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip
NOT_FORWARDED_UP = HOP_BY_HOP | {b"host"}
REWRITTEN_UP = NOT_FORWARDED_UP | {b"content-length", b"content-encoding", b"accept-encoding"}
REWRITTEN_DOWN = HOP_BY_HOP | {b"content-length", b"content-encoding"}
JSON_TYPES = ("application/json", "application/vnd.elasticsearch+json", "text/plain")
NDJSON_TYPES = ("application/x-ndjson", "application/vnd.elasticsearch+x-ndjson") + JSON_TYPES
_JSON_ACCEPT = ("application/json", "application/vnd.elasticsearch+json", "*/*", "application/*")

PREBUFFER_BYTES = 256 * 1024
"""A pass-through body up to this size is read before an upstream connection is taken.

A client that trickles its body then holds no pooled connection while it does;
only larger bodies stream, and those are bounded by ``body_total_timeout_s``.
"""
_GONE = "the client went away while sending its body"
_PLAIN_TYPE = "secondpass.plain_content_type"  # request extension: see Upstream.send_written


@dataclasses.dataclass(slots=True)
class Incoming:
    """One client request as the proxy sees it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    receive: Receive

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower case), or ``None``."""
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


@dataclasses.dataclass(slots=True)
class Answer:
    """A buffered response ready to send."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class BodyTooLarge(Exception):  # noqa: N818 - control flow, never seen outside this package
    """The search body is larger than the proxy reads; it passes through instead.

    ``head`` is what was already read of a body without a Content-Length; it goes
    upstream first, followed by the rest as it arrives.
    """

    def __init__(self, head: bytes = b"") -> None:
        super().__init__("search body larger than max_search_body_bytes")
        self.head = head


class Upstream:
    """The engine behind the proxy: one pooled client, URL and header rewriting, pass-through.

    Construction does no network I/O: the client is created on first use (or at
    ASGI lifespan start) and :meth:`aclose` releases it.
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        metrics: ProxyMetrics,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.last_answer: float | None = None
        """``time.monotonic()`` when the engine last answered (any status), for readiness."""
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._base = httpx.URL(settings.upstream)
        self._auth = configured_auth(settings)

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send ``request`` with the pooled client, timing it to the response headers."""
        kind = _kind(request.url.path)
        started = time.perf_counter()
        try:
            # when tracing: a span to the response headers, and our traceparent upstream
            with tracing.span(
                "secondpass.upstream", {"secondpass.upstream.kind": kind}, client=True
            ):
                tracing.inject(request.headers)
                response = await self.client().send(request, stream=stream)
        except httpx.HTTPError:
            self.metrics.upstream_errors.labels(kind).inc()
            raise
        self.metrics.upstream_latency.labels(kind).observe(time.perf_counter() - started)
        self.last_answer = time.monotonic()
        return response

    def client(self) -> httpx.AsyncClient:
        """The pooled HTTP client toward the upstream, created on first use."""
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                transport=self._transport,
                verify=_tls_context(s) if self._base.scheme == "https" else True,
                # pool: a full pool answers 503 after pool_timeout_s instead of queueing
                # every client behind the slowest ones for as long as they like.
                timeout=httpx.Timeout(
                    s.read_timeout_s, connect=s.connect_timeout_s, pool=s.pool_timeout_s
                ),
                limits=httpx.Limits(
                    max_connections=s.max_connections, max_keepalive_connections=s.max_connections
                ),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        """Close the upstream connections."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def url(self, raw_path: bytes, query: bytes) -> httpx.URL:
        """The upstream URL for a client path and query string (400 for an invalid target)."""
        base = self._base.raw_path.split(b"?", 1)[0].rstrip(b"/")
        try:
            return self._base.copy_with(raw_path=base + raw_path + (b"?" + query if query else b""))
        except httpx.InvalidURL as exc:  # e.g. a '#' or a space in the target: 400, not a 500
            msg = "the request target is not a valid URL path"
            raise MalformedRequestError(msg, field="path") from exc

    def up_headers(
        self, headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
    ) -> list[tuple[bytes, bytes]]:
        """The client's headers as they go upstream: ``drop`` and our own removed."""
        out = [
            (k, v)
            for k, v in headers
            if k.lower() not in drop and not k.lower().startswith(b"x-secondpass-")
        ]
        if self._auth is not None:  # lent (only with lend_credentials): ours replace the client's
            out = [(k, v) for k, v in out if k.lower() != b"authorization"]
            out.append((b"authorization", self._auth))
        return out

    def rewritten_headers(
        self, incoming: Incoming, content_type: bytes
    ) -> list[tuple[bytes, bytes]]:
        """Headers for a body the proxy wrote itself: the client's type, else ours.

        A search sent as ``GET /_search?q=...`` has no body, so whatever type it
        names (none, or a form type some tools add) describes nothing; the
        widened request carries a JSON body, which the engines refuse untyped or
        mistyped (406), and which Elasticsearch refuses (400) in plain JSON when
        the client asked for a versioned ``Accept``: such a body is typed by
        :func:`body_type`.
        """
        if has_body(incoming.headers):
            headers = self.up_headers(incoming.headers, REWRITTEN_UP)
            if any(k.lower() == b"content-type" for k, _ in headers):
                return headers
        else:
            headers = self.up_headers(incoming.headers, REWRITTEN_UP | {b"content-type"})
        headers.append((b"content-type", body_type(incoming.header(b"accept"), content_type)))
        return headers

    def rewritten_request(
        self, incoming: Incoming, query: bytes, content_type: bytes, content: bytes
    ) -> httpx.Request:
        """A request the proxy wrote itself, to the client's path with our body."""
        headers = self.rewritten_headers(incoming, content_type)
        request = httpx.Request(
            incoming.method, self.url(incoming.raw_path, query), headers=headers, content=content
        )
        typed_by_client = has_body(incoming.headers) and incoming.header(b"content-type")
        chosen = next(v for k, v in reversed(headers) if k.lower() == b"content-type")
        if not typed_by_client and chosen != content_type:  # versioned by us: see send_written
            request.extensions[_PLAIN_TYPE] = content_type
        return request

    async def send_written(self, request: httpx.Request) -> httpx.Response:
        """Send a :meth:`rewritten_request` and read the answer.

        Elasticsearch wants a versioned body type for a versioned ``Accept``;
        OpenSearch ignores that ``Accept`` but refuses the type (406). When the
        proxy chose the versioned type and gets 406, it asks once more with the
        plain type, so a body-less search behaves as it does direct on both.
        """
        response = await self.send(request)
        plain = request.extensions.get(_PLAIN_TYPE)
        if response.status_code != 406 or not isinstance(plain, bytes):
            return response
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-type"]
        retry = httpx.Request(
            request.method,
            request.url,
            headers=[*headers, (b"content-type", plain)],
            content=request.content,
            extensions={k: v for k, v in request.extensions.items() if k != _PLAIN_TYPE},
        )
        return await self.send(retry)

    async def pass_through(
        self,
        incoming: Incoming,
        send: Send,
        *,
        body: bytes | None = None,
        head: bytes = b"",
        status: str | None = None,
    ) -> None:
        """Forward the request and stream the answer back as it comes.

        ``body`` is the request body when it was already read, ``head`` the part
        of it read so far when the rest is still to come; ``status`` adds the
        rerank status header (searches that are not reranked). A body still to
        come is read up to ``PREBUFFER_BYTES`` before a pooled connection is taken.
        """
        headers = self.up_headers(incoming.headers, NOT_FORWARDED_UP)
        content: bytes | AsyncIterator[bytes]
        if body is None and has_body(incoming.headers):
            head, complete = await _prebuffer(incoming.receive, head)
            if complete:
                body = head
            else:
                content = _stream_body(incoming.receive, head)
        if body is not None:
            content = body
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        elif not has_body(incoming.headers):
            content = b""
        request = httpx.Request(
            incoming.method,
            self.url(incoming.raw_path, rules.strip_own_params(incoming.query)),
            headers=headers,
            content=content,
        )
        try:
            response = await self.send(request, stream=True)
        except httpx.HTTPError as exc:
            await send_answer(send, unreachable(exc, status))
            return
        try:
            down = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            if status is not None:
                down.append((STATUS_HEADER.encode(), status.encode("ascii")))
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": down}
            )
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:  # upstream died mid-stream: the client sees a cut body
            logger.warning("upstream stream broke off: %s", type(exc).__name__)
        finally:
            await response.aclose()


# ------------------------------------------------------------------- reading bodies


async def read_body(incoming: Incoming, *, limit: int) -> bytes:
    """The whole body, counted as it arrives whatever its framing.

    A body declared larger than ``limit`` is not read; one without a
    Content-Length is read only up to the limit: either way it passes through
    unread (:class:`BodyTooLarge`), as the engine would take it.
    """
    declared = incoming.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks = []
    size = 0
    while True:
        message = await incoming.receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError(_GONE)
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            raise BodyTooLarge(b"".join(chunks))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def checked_body(
    incoming: Incoming, send: Send, *, limit: int, limits: HttpLimits
) -> tuple[bytes, bytes] | None:
    """(raw, decoded) body up to ``limit`` bytes to check; ``None`` once refused (403)."""
    try:
        raw = await read_body(incoming, limit=limit)
        decoded = decompress(raw, incoming.header(b"content-encoding") or "identity", limits=limits)
    except BodyTooLarge:
        reason = f"a body over {limit} bytes cannot be checked by this proxy"
    except UnsupportedEncodingError:
        reason = "a body in this content-encoding cannot be checked by this proxy"
    else:
        return raw, decoded
    logger.info("refused %s: %s", incoming.method, reason)
    await refuse(send, access.Refusal(403, f"{reason} (lent credentials)"))
    return None


def decoded(
    incoming: Incoming,
    raw_body: bytes,
    content_types: tuple[str, ...],
    params: Sequence[rules.QueryParam],
    *,
    limits: HttpLimits,
) -> bytes | None:
    """The request body as plain bytes, or ``None`` when the proxy cannot read it."""
    if raw_body:
        content_type = (incoming.header(b"content-type") or "application/json").lower()
        if not content_type.split(";")[0].strip().startswith(content_types):
            return None
    accept = (incoming.header(b"accept") or "application/json").lower()
    if not any(part.split(";")[0].strip().startswith(_JSON_ACCEPT) for part in accept.split(",")):
        return None
    fmt = next((p.value for p in params if p.key == "format"), None)
    if fmt is not None and fmt.lower() != "json":
        return None
    encoding = incoming.header(b"content-encoding") or "identity"
    try:
        # Streaming, capped decoding (413 past the caps); an encoding we do not
        # decode, or corrupt data, passes through for the engine to judge.
        data = decompress(raw_body, encoding, limits=limits)
    except UnsupportedEncodingError:
        return None
    # On the bytes, before json.loads and the planner recurse into them (400).
    check_json_depth(data, limits.max_json_depth)
    return data


def decode_search(
    incoming: Incoming,
    raw_body: bytes,
    params: Sequence[rules.QueryParam],
    *,
    limits: HttpLimits,
) -> dict[str, Any] | str:
    """The search body as a dict, or the reason it cannot be read."""
    data = decoded(incoming, raw_body, JSON_TYPES, params, limits=limits)
    if data is None:
        return "request or response format is not JSON"
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except ValueError:
        return "search body is not valid JSON"
    return body if isinstance(body, dict) else "search body is not a JSON object"


def _kind(path: str) -> str:
    """``search``, ``msearch`` or ``other``: the upstream latency label of a request path."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return {"_search": "search", "_msearch": "msearch"}.get(last, "other")


def has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether the request announces a body (a length other than 0, or chunked)."""
    for key, value in headers:
        name = key.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _prebuffer(receive: Receive, head: bytes) -> tuple[bytes, bool]:
    """Read the body on from ``head`` up to ``PREBUFFER_BYTES``: (bytes read, whether complete)."""
    chunks = [head]
    size = len(head)
    while size < PREBUFFER_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError(_GONE)
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
    return b"".join(chunks), False


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then the client's messages."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _stream_body(receive: Receive, head: bytes = b"") -> AsyncIterator[bytes]:
    """``head``, then the rest of the body as it arrives (the input limits count it)."""
    if head:
        yield head
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


# ------------------------------------------------------------------------- answers


def dump(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the proxy writes every body of its own."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The engine's answer as a JSON object, or ``None`` when it is not one."""
    try:
        value = json.loads(response.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def down_headers(response: httpx.Response, status: str) -> list[tuple[bytes, bytes]]:
    """The engine's headers for a body the proxy rewrote, plus the rerank status."""
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in REWRITTEN_DOWN]
    headers.append((STATUS_HEADER.encode(), status.encode("ascii", "replace")))
    return headers


def server_timing(engine_ms: float, rerank_ms: float, started: float) -> tuple[bytes, bytes]:
    """``Server-Timing`` (milliseconds): the engine round trip, reranking, and the whole request.

    ``total`` runs from the request's arrival to the answer being ready to send,
    so ``total - engine`` is what the proxy added.
    """
    total_ms = (time.perf_counter() - started) * 1000
    value = f"engine;dur={engine_ms:.1f}, rerank;dur={rerank_ms:.1f}, total;dur={total_ms:.1f}"
    return (b"server-timing", value.encode("ascii"))


def body_type(accept: str | None, content_type: bytes) -> bytes:
    """The type of a body the proxy writes for a client that sent none.

    Elasticsearch takes a body only in the media-type family of the ``Accept``:
    a client asking for ``application/vnd.elasticsearch+json; compatible-with=8``
    (elasticsearch-py does, body or not) gets ``content_type`` in that versioned
    form, everyone else the plain one.

    Example:
        >>> body_type("application/vnd.elasticsearch+json; compatible-with=8", b"application/json")
        b'application/vnd.elasticsearch+json; compatible-with=8'
    """
    match = _COMPATIBLE_WITH.search(accept or "")
    if match is None or not content_type.startswith(b"application/"):
        return content_type
    subtype = content_type.removeprefix(b"application/")
    return b"application/vnd.elasticsearch+%s; compatible-with=%s" % (
        subtype,
        match.group(1).encode("ascii"),
    )


_COMPATIBLE_WITH = re.compile(
    r"application/vnd\.elasticsearch\+[a-z-]+\s*;\s*compatible-with\s*=\s*(\d{1,3})", re.I
)
_GZIP = frozenset({"gzip", "x-gzip"})
GZIP_LEVEL = 3
"""Elasticsearch's own default ``http.compression_level``: fast, most of the gain."""


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value admits gzip (RFC 9110 12.5.3, ``q=0`` refuses)."""
    if not accept_encoding:
        return False
    weights: dict[str, float] = {}
    for part in accept_encoding.split(","):
        coding, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            weights[coding.lower()] = weight
    explicit = [weights[c] for c in _GZIP if c in weights]
    if explicit:
        return max(explicit) > 0
    return weights.get("*", 0.0) > 0


def negotiated(answer: Answer, accept_encoding: str | None) -> Answer:
    """A body the proxy wrote, gzip-encoded when the client accepts gzip, else as it is.

    The engines compress their own answers for such a client, so pass-through
    answers arrive compressed; a reranked answer must too. ``Vary:
    Accept-Encoding`` says the representation depends on that header. Only the
    proxy's own output is compressed (bounded by what it read from the engine);
    nothing here decompresses.
    """
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-encoding"]
    if not any(k.lower() == b"vary" and b"accept-encoding" in v.lower() for k, v in headers):
        headers.append((b"vary", b"Accept-Encoding"))
    if not accepts_gzip(accept_encoding):
        return Answer(answer.status, headers, answer.body)
    headers.append((b"content-encoding", b"gzip"))
    return Answer(answer.status, headers, gzip.compress(answer.body, compresslevel=GZIP_LEVEL))


def relay(response: httpx.Response, status: str) -> Answer:
    """The engine's buffered answer, unchanged but for the status header."""
    return Answer(response.status_code, down_headers(response, status), response.content)


async def send_answer(send: Send, answer: Answer) -> None:
    """Send a buffered answer with its own Content-Length."""
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def unreachable(exc: httpx.HTTPError, status: str | None) -> Answer:
    """A gateway error in the engines' error shape, for when there is no engine answer."""
    timeout = isinstance(exc, httpx.TimeoutException)
    code = 504 if timeout else 502
    reason = f"upstream {'timed out' if timeout else 'unreachable'}: {type(exc).__name__}"
    if isinstance(exc, httpx.PoolTimeout):  # our own pool is full, not the engine's fault
        code, reason = 503, "proxy busy: no free upstream connection within pool_timeout_s"
    body = {"error": {"type": "secondpass_proxy_exception", "reason": reason}, "status": code}
    headers = [(b"content-type", b"application/json")]
    if status is not None:
        headers.append((STATUS_HEADER.encode(), status.encode("ascii", "replace")))
    return Answer(code, headers, dump(body))


def render_refusal(exc: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An input-limit refusal (408/413/415/431/400) in the engines' error shape."""
    cause = {"type": exc.error_type, "reason": str(exc)}
    body = {"error": {"root_cause": [cause], **cause}, "status": exc.status}
    return exc.status, [(b"content-type", b"application/json; charset=UTF-8")], dump(body)


async def refuse(send: Send, refusal: access.Refusal) -> None:
    """Answer a request the proxy does not forward, in the engines' error shape."""
    body = access.error_body(refusal)
    await send_answer(send, Answer(refusal.status, access.refusal_headers(refusal), body))


def configured_auth(settings: ProxySettings) -> bytes | None:
    """The ``Authorization`` the proxy lends, or ``None`` (always ``None`` without the opt-in)."""
    if not settings.lend_credentials:
        return None
    if settings.api_key is not None:
        return b"ApiKey " + settings.api_key.get_secret_value().encode("latin-1")
    if settings.username is not None:
        password = settings.password.get_secret_value() if settings.password is not None else ""
        token = base64.b64encode(f"{settings.username}:{password}".encode())
        return b"Basic " + token
    return None


def _tls_context(settings: ProxySettings) -> ssl.SSLContext | bool:
    if not settings.verify_certs:
        return False
    context = ssl.create_default_context(cafile=settings.ca_certs)
    if settings.client_cert is not None:
        context.load_cert_chain(settings.client_cert, settings.client_key)
    return context
