"""Bounds on what one HTTP client can make the service or the proxy hold: bytes, time, depth.

One slow or huge client must not hurt the others. Both applications (``secondpass
serve`` and ``secondpass proxy``) run their requests through the same mechanics:

- :class:`HttpLimits` -- the numbers, with closed defaults (nginx and Envoy ship
  with limits on; so do we);
- :meth:`HttpLimits.uvicorn_kwargs` -- the HTTP implementation is pinned to h11
  (pure Python, present everywhere) with its head buffer capped, and a head over
  the cap is answered ``431`` by :class:`LimitedH11Protocol`;
- :class:`BoundedInputMiddleware` -- an ASGI middleware that counts body bytes as
  they arrive whatever the framing (Content-Length, chunked), gives up on a body
  that stalls or takes too long, refuses too many headers and unsupported
  encodings, optionally checks JSON depth on the bytes as they stream, and,
  optionally, cancels the request's work when the client goes away;
- :func:`decompress` -- streaming gzip/deflate decoding with a size and ratio cap;
- :func:`check_json_depth` / :class:`JsonDepthScanner` -- nesting depth measured
  on the raw bytes *before* a parser recurses into them.

Every refusal is a :class:`~secondpass.service.errors.ServiceError` (so it carries
its status and error type); each application renders it in its own error shape.

Example:
    >>> limits = HttpLimits(max_body_bytes=1_000_000, max_json_depth=4)
    >>> check_json_depth(b'{"a": [1, {"b": "[[[[["}]}', limits.max_json_depth)
    >>> import gzip
    >>> decompress(gzip.compress(b"{}"), "gzip", limits=limits)
    b'{}'
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import traceback
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import anyio
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from secondpass.service.errors import BodyTooLargeError, ServiceError

__all__ = [
    "BodyTimeoutError",
    "BoundedInputMiddleware",
    "ClientGoneError",
    "HeadersTooLargeError",
    "HttpLimits",
    "JsonDepthScanner",
    "JsonTooDeepError",
    "LimitedH11Protocol",
    "MalformedRequestError",
    "UnsupportedEncodingError",
    "AnsweredConnectionGuard",
    "brief_traceback",
    "check_json_depth",
    "decompress",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Render = Callable[[ServiceError], tuple[int, list[tuple[bytes, bytes]], bytes]]

_SPECIAL = re.compile(rb'["\\\[\]{}]')

RATIO_FLOOR_BYTES = 64 * 1024
"""Below this many decoded bytes the compression ratio is not checked (tiny bodies compress well)."""


# ---------------------------------------------------------------------------- errors


class HeadersTooLargeError(ServiceError, status=431, error_type="headers_too_large"):
    """Too many request headers, or too many header bytes (431)."""


class BodyTimeoutError(ServiceError, status=408, error_type="body_timeout"):
    """The request body stalled or took too long to arrive (408)."""


class UnsupportedEncodingError(ServiceError, status=415, error_type="unsupported_encoding"):
    """A ``Content-Encoding`` this application does not decode (415)."""


class JsonTooDeepError(ServiceError, status=400, error_type="json_too_deep"):
    """JSON nested deeper than ``max_json_depth`` (400, checked before parsing)."""


class ClientGoneError(ServiceError, status=499, error_type="client_gone"):
    """The client disconnected before its request was read; nobody is left to answer.

    499 is nginx's "client closed request"; it is never sent.
    """


class MalformedRequestError(ServiceError, status=400, error_type="malformed_request"):
    """Framing the server cannot trust, e.g. conflicting Content-Length values (400)."""


# ---------------------------------------------------------------------------- limits


class InputLimitSettings(Protocol):
    """The input-limit fields both applications' settings carry (service and proxy)."""

    @property
    def max_body_bytes(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...
    @property
    def max_json_depth(self) -> int: ...
    @property
    def body_idle_timeout_s(self) -> float | None: ...
    @property
    def body_total_timeout_s(self) -> float | None: ...
    @property
    def head_timeout_s(self) -> float | None: ...
    @property
    def max_client_connections(self) -> int: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HttpLimits:
    """What one request may cost. ``None`` for a timeout means no bound (not recommended).

    ``max_decompressed_bytes`` defaults to ``max_body_bytes``: a compressed body
    may not decode to more than an uncompressed one could carry.
    """

    max_body_bytes: int
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_json_depth: int = 64
    max_decompressed_bytes: int | None = None
    max_compression_ratio: float = 100.0
    body_idle_timeout_s: float | None = 10.0
    body_total_timeout_s: float | None = 60.0
    head_timeout_s: float | None = 10.0
    max_client_connections: int = 1024

    @property
    def decompressed_cap(self) -> int:
        """The effective cap on decoded bytes."""
        cap = self.max_decompressed_bytes
        return self.max_body_bytes if cap is None else cap

    @classmethod
    def from_settings(cls, settings: InputLimitSettings) -> HttpLimits:
        """The limits configured for the service (or the proxy's common part).

        The proxy adds its decoding caps in
        :meth:`secondpass.proxy.settings.ProxySettings.http_limits`; this module
        knows neither application's settings class, so both can import it.
        """
        limits = cls(
            max_body_bytes=settings.max_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_json_depth=settings.max_json_depth,
            body_idle_timeout_s=settings.body_idle_timeout_s,
            body_total_timeout_s=settings.body_total_timeout_s,
            head_timeout_s=settings.head_timeout_s,
            max_client_connections=settings.max_client_connections,
        )
        return limits

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config``: h11 pinned, head buffer capped.

        uvicorn picks httptools when it is installed and h11 otherwise; the two
        have different limits and error answers, so both applications pin h11.
        h11 keeps at most ``max_header_bytes`` of an unfinished head (request line
        plus headers) and fails the connection beyond it, so a flood of header
        bytes costs neither memory nor parse time. The protocol class carries the
        head timeout and the connection cap (uvicorn has neither).
        """
        protocol = type("BoundLimitedH11Protocol", (LimitedH11Protocol,), {"limits": self})
        # No WebSockets: neither application serves one, and an upgrade the app does
        # not complete is a 500 plus an ERROR line in uvicorn, per request.
        return {
            "http": protocol,
            "ws": "none",
            "h11_max_incomplete_event_size": self.max_header_bytes,
        }


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits uvicorn lacks.

    - A head over the cap is answered ``431`` (not a bare 400).
    - A request head must be complete within ``head_timeout_s`` of the
      connection opening (or of the previous response): uvicorn otherwise keeps
      a connection that sends nothing, or one header line now and then, open
      forever, and enough of them exhaust the process's file descriptors.
      Unlike the keep-alive timer, this one is not reset by arriving bytes, and
      it also runs after an answer sent before the request body was read (the
      connection is closed when it fires while that body still trickles in).
    - At most ``max_client_connections`` connections are open at once; one more
      is answered ``503`` and closed before it costs anything.
    """

    limits: HttpLimits | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection, unless the cap is reached; start the head clock."""
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        limits = self.limits
        if limits is None:
            return
        if len(self.connections) > limits.max_client_connections:
            self._close_with(503, "Service Unavailable", "too many open connections")
            return
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        """Feed h11; the clock stops once a request head has arrived and is being answered."""
        super().data_received(data)
        if (
            self._head_timer is not None
            and self.conn.their_state is not h11.IDLE
            and self.conn.our_state is not h11.DONE
        ):
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        """The next request on this keep-alive connection gets its own head clock."""
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head clock with the connection."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        limits = self.limits
        if limits is None or limits.head_timeout_s is None or self.transport.is_closing():
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(limits.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.their_state is h11.IDLE:
            self._close_with(408, "Request Timeout", "the request head did not arrive in time")
        elif self.conn.our_state is h11.DONE:
            # Answered (a 401, a probe) while the client still sends a body nobody will
            # read: without this, one byte now and then kept the connection forever.
            self.transport.close()

    def _close_with(self, status: int, phrase: str, text: str) -> None:
        body = text.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n"
            % (status, phrase.encode("ascii"), len(body))
            + body
        )
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn for any protocol error; a buffer over the cap is our 431."""
        cap = self.config.h11_max_incomplete_event_size
        buffered = len(self.conn.trailing_data[0])
        if cap is None or buffered <= cap:
            super().send_400_response(msg)
            return
        body = f"request head larger than {cap} bytes (max_header_bytes)".encode("ascii")
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body
        )
        self.transport.close()


class AnsweredConnectionGuard:
    """Outermost ASGI layer: an answer to a connection the server already answered is dropped.

    uvicorn answers some malformed requests itself (``400`` to bad bytes behind
    a complete head, e.g. a broken chunk size) while the application is still
    deciding; the application's own answer (a 401 from the key check, a 403
    from the proxy's gate) then fails inside h11 with ``LocalProtocolError``,
    and uvicorn would log a full traceback for every such request, a log flood
    anyone could cause. Nobody is left to answer, so the send is dropped.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``send`` that tolerates an already-answered connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tolerant_send(message: Message) -> None:
            try:
                await send(message)
            except h11.LocalProtocolError:
                logger.debug("answer dropped: the connection was already answered and closing")

        await self.app(scope, receive, tolerant_send)


# -------------------------------------------------------------------------- JSON depth


class JsonDepthScanner:
    """Tracks JSON nesting depth over chunks of raw bytes, in O(1) memory.

    Brackets inside strings (including escaped quotes) do not count. The scanner
    does not validate JSON -- the parser does that later -- it only guarantees the
    parser never sees more than ``limit`` levels. Newline-delimited JSON works as
    is: each document starts again at depth 0.
    """

    __slots__ = ("_depth", "_escaped", "_in_string", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, chunk: bytes) -> None:
        """Scan ``chunk``; raises :class:`JsonTooDeepError` once a value nests past the limit."""
        depth, in_string = self._depth, self._in_string
        # Only quotes, backslashes and brackets matter; a regex jumps between them,
        # so plain text costs C speed, not a Python step per byte.
        skip = 1 if self._escaped else 0  # the byte after a backslash is not special
        self._escaped = False
        for match in _SPECIAL.finditer(chunk):
            i = match.start()
            if i < skip:
                continue
            byte = chunk[i]
            if in_string:
                if byte == 0x5C:  # backslash: the next byte is escaped
                    skip = i + 2
                    if skip > len(chunk):
                        self._escaped = True
                elif byte == 0x22:
                    in_string = False
            elif byte == 0x22:
                in_string = True
            elif byte in (0x5B, 0x7B):  # [ {
                depth += 1
                if depth > self.limit:
                    msg = f"JSON nested deeper than {self.limit} levels (max_json_depth)"
                    raise JsonTooDeepError(msg, field="body", limit=self.limit)
            elif byte in (0x5D, 0x7D) and depth > 0:  # ] }
                depth -= 1
        self._depth, self._in_string = depth, in_string


def check_json_depth(data: bytes, limit: int) -> None:
    """Raise :class:`JsonTooDeepError` when ``data`` nests deeper than ``limit``.

    A body without enough brackets to reach the limit is accepted without a scan.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    JsonDepthScanner(limit).feed(data)


# ----------------------------------------------------------------------- decompression


def decompress(data: bytes, encoding: str, *, limits: HttpLimits) -> bytes:
    """Decode a ``gzip``/``x-gzip``/``deflate`` body, never producing more than the caps allow.

    Output is produced in bounded steps (``max_length``), so a 1 MB bomb that
    would expand to gigabytes costs at most the cap. Concatenated gzip members
    are all decoded (RFC 1952 allows them); ``deflate`` accepts the zlib format
    (RFC 9110) and, as browsers do, raw deflate. Raises :class:`BodyTooLargeError`
    (413) over ``decompressed_cap`` or ``max_compression_ratio``, and
    :class:`UnsupportedEncodingError` (415) for other encodings or corrupt data.
    """
    name = encoding.strip().lower()
    if name in ("identity", ""):
        return data
    if name in ("gzip", "x-gzip"):
        wbits = 31
    elif name == "deflate":
        wbits = 15 if data[:1] and data[0] & 0x0F == 8 else -15
    else:
        msg = f"Content-Encoding {encoding!r} is not supported (gzip, deflate or identity)"
        raise UnsupportedEncodingError(msg, field="content-encoding")
    cap = limits.decompressed_cap
    out = bytearray()
    pending = data
    try:
        while pending:
            decoder = zlib.decompressobj(wbits)
            chunk = pending
            while chunk:
                out += decoder.decompress(chunk, cap + 1 - len(out))
                _check_size(len(out), len(data), limits)
                chunk = decoder.unconsumed_tail
            if not decoder.eof:
                msg = f"{name} body is truncated"
                raise UnsupportedEncodingError(msg, field="content-encoding")
            pending = decoder.unused_data if wbits == 31 else b""
    except zlib.error as exc:
        msg = f"{name} body is not valid {name} data"
        raise UnsupportedEncodingError(msg, field="content-encoding") from exc
    return bytes(out)


def _check_size(decoded: int, encoded: int, limits: HttpLimits) -> None:
    cap = limits.decompressed_cap
    if decoded > cap:
        msg = f"body decompresses to more than {cap} bytes (max_decompressed_bytes)"
        raise BodyTooLargeError(msg, field="body", limit=cap)
    ratio = limits.max_compression_ratio
    if decoded > RATIO_FLOOR_BYTES and decoded > ratio * max(encoded, 1):
        msg = f"body expands more than {ratio:g} times (max_compression_ratio)"
        raise BodyTooLargeError(msg, field="body", limit=ratio)


# -------------------------------------------------------------------------- middleware


def _json_content(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name.lower() == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media.endswith((b"/json", b"+json", b"ndjson"))
    return False


class BoundedInputMiddleware:
    """Enforces :class:`HttpLimits` on every HTTP request before the application sees a byte.

    - more than ``max_headers`` headers, or header bytes over ``max_header_bytes``: 431;
    - a Content-Length that is not a number, or several that disagree: 400;
      a declared length over ``max_body_bytes``: 413 without reading the body;
    - body bytes are counted as they arrive (chunked bodies and bodies that lie
      about their length included); past ``max_body_bytes`` the read stops: 413;
    - no body bytes for ``body_idle_timeout_s`` or the whole body not in after
      ``body_total_timeout_s``: 408;
    - ``encodings`` (when given): a ``Content-Encoding`` outside it is 415;
    - ``json_depth`` (when true): JSON bodies are depth-scanned as they stream: 400;
    - ``cancel_on_disconnect``: once the body is in, a client that goes away
      cancels the request's work (an upstream call is closed, not left running).

    ``render`` turns the refusal into (status, headers, body) in the application's
    own error shape. When the application already started its answer, the
    connection is cut instead (a half-sent answer cannot be replaced).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limits: HttpLimits,
        render: Render,
        encodings: frozenset[str] | None = None,
        json_depth: bool = False,
        cancel_on_disconnect: bool = False,
        on_reject: Callable[[ServiceError], None] | None = None,
    ) -> None:
        self.app = app
        self.limits = limits
        self.render = render
        self.encodings = encodings
        self.json_depth = json_depth
        self.cancel_on_disconnect = cancel_on_disconnect
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the head, then run the application with a counting, timed ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            declared = self._check_head(scope["headers"], target)
        except ServiceError as exc:
            await self._reject(send, exc)
            return
        body = _BodyReader(self, receive, declared, scope["headers"])
        started = False
        failed: ServiceError | None = None

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if body.failure is not None:
                return  # the refusal replaces whatever the app answers
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                body.answered = True
            try:
                await send(message)
            except h11.LocalProtocolError:
                # The server already answered this connection itself (uvicorn's 400 to
                # bad bytes pipelined behind this request) and must close it: there is
                # no one to send to, which is not the application's error.
                body.gone = True
                logger.debug("answer dropped: the connection was already answered and closing")

        try:
            if self.cancel_on_disconnect:
                await _cancel_on_disconnect(self.app(scope, body.receive, guarded_send), body)
            else:
                await self.app(scope, body.receive, guarded_send)
        except ClientGoneError:
            return
        except ServiceError as exc:
            if body.failure is None and started:
                raise
            failed = body.failure or exc
        except Exception:
            if body.gone:  # the app tripped over the client leaving mid-body: nobody to tell
                return
            if body.failure is None:
                raise
            failed = body.failure
        failed = body.failure or failed
        if failed is not None:
            if started:
                return  # uvicorn closes a connection whose answer did not complete
            await self._reject(send, failed)

    def _check_head(self, headers: list[tuple[bytes, bytes]], target: int) -> int | None:
        """The declared body length, after the head's counts and sizes are checked.

        ``target`` (the request line's path and query) counts toward the head
        size: h11's cap only applies to a head still incomplete when a read
        ends, so a head that arrives whole can be up to one read larger.
        """
        limits = self.limits
        if len(headers) > limits.max_headers:
            msg = f"more than {limits.max_headers} request headers (max_headers)"
            raise HeadersTooLargeError(msg, field="headers", limit=limits.max_headers)
        size = target + sum(len(k) + len(v) + 4 for k, v in headers)
        if size > limits.max_header_bytes:
            msg = f"request headers larger than {limits.max_header_bytes} bytes (max_header_bytes)"
            raise HeadersTooLargeError(msg, field="headers", limit=limits.max_header_bytes)
        lengths = {v.strip() for k, v in headers if k.lower() == b"content-length"}
        declared: int | None = None
        if lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                msg = "invalid Content-Length"
                raise MalformedRequestError(msg, field="content-length")
            declared = int(next(iter(lengths)))
            if declared > limits.max_body_bytes:
                raise _too_large(limits.max_body_bytes)
        if self.encodings is not None:
            for name, value in headers:
                if name.lower() != b"content-encoding":
                    continue
                coding = value.decode("latin-1").strip().lower()
                if coding not in self.encodings:
                    allowed = ", ".join(sorted(self.encodings))
                    msg = f"Content-Encoding {coding!r} is not accepted here (only {allowed})"
                    raise UnsupportedEncodingError(msg, field="content-encoding")
        return declared

    async def _reject(self, send: Send, exc: ServiceError) -> None:
        if self.on_reject is not None:
            self.on_reject(exc)
        status, headers, body = self.render(exc)
        headers = [
            (k, v) for k, v in headers if k.lower() not in (b"content-length", b"connection")
        ]
        headers += [(b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _too_large(limit: int) -> BodyTooLargeError:
    msg = f"request body larger than {limit} bytes (max_body_bytes)"
    return BodyTooLargeError(msg, field="body", limit=limit)


class _BodyReader:
    """The ``receive`` the application gets: counted, timed, depth-scanned, disconnect-aware."""

    def __init__(
        self,
        owner: BoundedInputMiddleware,
        receive: Receive,
        declared: int | None,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.limits = owner.limits
        self._receive = receive
        self.received = 0
        # A request with no body framing has no body: its empty message is made up
        # here, so the disconnect watch can start at once.
        self._bodiless = declared == 0 or (
            declared is None and not any(k.lower() == b"transfer-encoding" for k, _ in headers)
        )
        self.finished = asyncio.Event()
        self.answered = False
        self.gone = False  # the client disconnected before its body was complete
        self.failure: ServiceError | None = None
        self._deadline: float | None = None
        self._scanner = (
            JsonDepthScanner(owner.limits.max_json_depth)
            if owner.json_depth and _json_content(headers)
            else None
        )
        self._after_body: asyncio.Future[Message] | None = None
        if self._bodiless:
            self.finished.set()

    def _fail(self, exc: ServiceError) -> ServiceError:
        self.failure = exc
        return exc

    async def receive(self) -> Message:
        if self.failure is not None:
            return {"type": "http.disconnect"}
        if self._bodiless:
            self._bodiless = False
            return {"type": "http.request", "body": b"", "more_body": False}
        if self.finished.is_set():
            return await self.after_body()
        limits = self.limits
        loop = asyncio.get_running_loop()
        if self._deadline is None and limits.body_total_timeout_s is not None:
            self._deadline = loop.time() + limits.body_total_timeout_s
        wait = limits.body_idle_timeout_s
        if self._deadline is not None:
            left = max(self._deadline - loop.time(), 0.0)
            wait = left if wait is None else min(wait, left)
        try:
            message = await asyncio.wait_for(self._receive(), wait)
        except TimeoutError:
            msg = "request body not received in time (body_idle_timeout_s / body_total_timeout_s)"
            raise self._fail(BodyTimeoutError(msg, field="body")) from None
        if message["type"] != "http.request":
            self.gone = message["type"] == "http.disconnect"
            self.finished.set()
            return message
        chunk = message.get("body", b"")
        self.received += len(chunk)
        if self.received > limits.max_body_bytes:
            raise self._fail(_too_large(limits.max_body_bytes))
        if self._scanner is not None:
            try:
                self._scanner.feed(chunk)
            except JsonTooDeepError as exc:
                raise self._fail(exc) from None
        if not message.get("more_body", False):
            self.finished.set()
        return message

    async def after_body(self) -> Message:
        """The next message once the body is in (``http.disconnect``), shared by all waiters."""
        if self._after_body is None:
            self._after_body = asyncio.ensure_future(self._next_event())
        return await asyncio.shield(self._after_body)

    async def _next_event(self) -> Message:
        while True:
            message = await self._receive()
            if message["type"] != "http.request":  # skips a bodiless request's empty message
                return message

    def close(self) -> None:
        if self._after_body is not None and not self._after_body.done():
            self._after_body.cancel()


async def _cancel_on_disconnect(work: Awaitable[None], body: _BodyReader) -> None:
    """Run ``work``; once the body is in, a client that disconnects cancels it.

    The cancellation goes through an anyio cancel scope, not ``Task.cancel()``:
    httpcore returns a pooled connection inside an anyio *shielded* scope, which
    a scope cancellation respects and a native one does not. A native cancel that
    landed while a finished upstream answer was being closed left its connection
    marked active for good; a few such clients emptied the proxy's upstream pool.
    """
    with anyio.CancelScope() as scope:

        async def watch() -> None:
            await body.finished.wait()
            await body.after_body()
            if not body.answered:
                scope.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await work
        finally:
            watcher.cancel()
            body.close()


# ----------------------------------------------------------------------------- logging


def brief_traceback(exc: BaseException, *, frames: int = 3) -> str:
    """One line naming the error and where it happened: the last ``frames`` frames.

    Request paths log this instead of ``exc_info``: a full traceback of a
    ``RecursionError`` is thousands of lines (hundreds of kB per request), which
    lets any client flood the log; and an error message can carry request data,
    so only its first line, cut to 200 characters, is kept.
    """
    summary = traceback.extract_tb(exc.__traceback__)[-frames:]
    where = " <- ".join(
        f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} {frame.name}"
        for frame in reversed(summary)
    )
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text} [at {where or 'unknown'}]"
