"""The drop-in proxy: listens like a cluster, forwards everything, reranks searches.

An application switches to reranked results by changing one URL. The proxy is a
raw ASGI application (no framework routing or response classes between the
client and the engine), so pass-through traffic keeps its bytes, status codes,
repeated headers and streaming: request bodies stream up, response bodies stream
down unread.

Only ``GET|POST /_search``, ``/{index}/_search`` and the ``_msearch`` variants
are read. Each search is planned by :mod:`secondpass.service.proxy_rules`; a
search that can be reranked is sent upstream asking for the rerank window, its
hits go through :meth:`Retriever.arerank_hits
<secondpass.pipeline.retriever.Retriever.arerank_hits>` (the same call the facade
makes, so the order is the facade's), and the client's page is cut from the
result. Every search answer carries ``X-SecondPass-Rerank`` (``ok``, or
``skipped``/``failed``/``partial`` with ``; reason=...``). When reranking fails or
runs out of time the client gets what the engine would have answered to its own
request; an error the engine did not give never reaches the client.

Authority: by default a client acts with its own credentials only; its headers
go up unchanged and the proxy adds none. Credentials held by the proxy are lent
only with ``lend_credentials``, and then only to requests that
:mod:`secondpass.service.proxy_access` admits (client API key, allow-list of
methods and canonical paths); the rest are answered 401/403 here and never
reach the engine.

Example:
    >>> settings = ProxySettings(upstream="http://127.0.0.1:9200",
    ...                          indices={"docs": {"fields": ["title", "body"]}})
    >>> app = RerankProxy(settings, scorer=scorer)  # doctest: +SKIP
    >>> # uvicorn.run(app, host=settings.host, port=settings.port)
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote

import httpx

from secondpass.errors import ServerStartError
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.pipeline.retriever import Retriever, render_passage
from secondpass.service import proxy_access as access
from secondpass.service import proxy_rules as rules
from secondpass.service.errors import ServiceError
from secondpass.service.http_limits import (
    AnsweredConnectionGuard,
    BoundedInputMiddleware,
    ClientGoneError,
    HttpLimits,
    MalformedRequestError,
    UnsupportedEncodingError,
    brief_traceback,
    check_json_depth,
    decompress,
)
from secondpass.service.proxy_settings import ProxySettings
from secondpass.types import Hit, SearchResult

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATUS_HEADER = "x-secondpass-rerank"
"""Response header naming the rerank status; as a request header, ``off`` opts out."""
QUERY_HEADER = "x-secondpass-query"
"""Request header with the text to rerank with (percent-encoded UTF-8 where not ASCII)."""

PASSAGE_FIELD = "passage"

_SEARCH_PATH = re.compile(rb"^/(?:(?P<index>[^/]+)/)?_search/?$")
_MSEARCH_PATH = re.compile(rb"^/(?:(?P<index>[^/]+)/)?_msearch/?$")
_READ_METHODS = frozenset({"GET", "POST"})

# Hop-by-hop headers (RFC 9110 7.6.1) and those the HTTP layer recomputes.
_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    }
)  # fmt: skip
_NOT_FORWARDED_UP = _HOP_BY_HOP | {b"host"}
_REWRITTEN_UP = _NOT_FORWARDED_UP | {b"content-length", b"content-encoding", b"accept-encoding"}
_REWRITTEN_DOWN = _HOP_BY_HOP | {b"content-length", b"content-encoding"}
_JSON_TYPES = ("application/json", "application/vnd.elasticsearch+json", "text/plain")
_NDJSON_TYPES = ("application/x-ndjson", "application/vnd.elasticsearch+x-ndjson") + _JSON_TYPES
_JSON_ACCEPT = ("application/json", "application/vnd.elasticsearch+json", "*/*", "application/*")


@dataclasses.dataclass(slots=True)
class _Incoming:
    """One client request as the proxy sees it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    receive: Receive

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


@dataclasses.dataclass(slots=True)
class _Answer:
    """A buffered response ready to send."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """What became of one search: the JSON to answer with and the status header value."""

    response: dict[str, Any]
    status: str
    rerank_ms: float = 0.0


class _BodyTooLarge(Exception):  # noqa: N818 - control flow, never seen outside this module
    """The search body is larger than the proxy reads; it passes through instead.

    ``head`` is what was already read of a body without a Content-Length; it goes
    upstream first, followed by the rest as it arrives.
    """

    def __init__(self, head: bytes = b"") -> None:
        super().__init__("search body larger than max_search_body_bytes")
        self.head = head


_PREBUFFER_BYTES = 256 * 1024
"""A pass-through body up to this size is read before an upstream connection is taken.

A client that trickles its body then holds no pooled connection while it does;
only larger bodies stream, and those are bounded by ``body_total_timeout_s``.
"""
_GONE = "the client went away while sending its body"


def build_retriever(
    settings: ProxySettings, scorer: Scorer, cache: ScoreCache | None = None
) -> Retriever:
    """The retriever the proxy reranks with: the facade's, minus the first stage.

    The passage is rendered by the proxy per hit (its index's template) and handed
    over as one field, so one retriever serves every index configuration.
    ``rerank.rank_by`` picks the score that orders hits and becomes ``_score``;
    ``rerank.min_score`` is not applied, because dropping hits would contradict
    ``hits.total`` and the page arithmetic clients rely on.
    """
    return Retriever(
        scorer=scorer,
        cache=cache,
        template=None,
        window=settings.window,
        deadline_ms=settings.deadline_ms,
        latency_budget_ms=settings.latency_budget_ms,
        rank_by=settings.rerank.rank_by,
    )


class RerankProxy:
    """ASGI application that forwards every request to ``settings.upstream``.

    Give it a ``retriever`` (or a ``scorer`` and optional ``cache`` to build one
    with :func:`build_retriever`). Construction does no network I/O (it reads
    ``client_api_key_file``, and refuses settings that would lend credentials
    unsafely): the HTTP client toward the upstream is created on the first request
    (or at ASGI lifespan start), and :meth:`aclose` (or lifespan shutdown) releases it.
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        retriever: Retriever | None = None,
        scorer: Scorer | None = None,
        cache: ScoreCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if retriever is None:
            if scorer is None:
                msg = "RerankProxy needs a retriever or a scorer"
                raise TypeError(msg)
            retriever = build_retriever(settings, scorer, cache)
        self.settings = settings
        self.retriever = retriever
        self.index_rules = settings.index_rules()
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._upstream = httpx.URL(settings.upstream)
        # Refuses credentials without lend_credentials before anything is served.
        self._gate = settings.access_gate()
        self._auth = _configured_auth(settings)
        self._lends = self._gate is not None and self._gate.allow is not None
        self.limits = HttpLimits.from_settings(settings)
        self._guarded = AnsweredConnectionGuard(self._gate_and_route)
        self._bounded = BoundedInputMiddleware(
            self._route, limits=self.limits, render=_render_refusal, cancel_on_disconnect=True
        )
        if self._gate is not None and self._gate.allow is not None and not self._gate.keys:
            logger.warning(
                "LENDING upstream credentials WITHOUT client authentication: every process "
                "on this machine that can reach %s acts with them on allowed_requests; "
                "set client_api_keys or client_api_key_file",
                settings.listen,
            )

    # ------------------------------------------------------------------ lifecycle

    def client(self) -> httpx.AsyncClient:
        """The pooled HTTP client toward the upstream, created on first use."""
        if self._client is None:
            s = self.settings
            self._client = httpx.AsyncClient(
                transport=self._transport,
                verify=_tls_context(s) if self._upstream.scheme == "https" else True,
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
        """Close the upstream connections. The retriever belongs to the caller."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # ---------------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Gate one ASGI connection, then route it under the input limits.

        A method the engines do not serve (CONNECT, TRACE, unknown) is answered
        405 and a target without a path (``OPTIONS *``, authority-form) 400
        here; an absolute-form target keeps only its path. With client keys or
        lent credentials the access gate decides first, before a byte of the body
        is read (401/403, never forwarded), and an admitted request goes on with
        the canonical path it was checked as.
        """
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: nothing of ours
            return
        await self._guarded(scope, receive, send)

    async def _gate_and_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        wrong_method = access.check_method(scope["method"])
        if wrong_method is not None:
            await _refuse(send, wrong_method)
            return
        target = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = access.origin_form(target.split(b"?", 1)[0])
        if path is None:
            await _refuse(
                send, access.Refusal(400, "the request target must be a path such as /_search")
            )
            return
        headers = list(scope["headers"])
        if self._gate is not None:
            verdict = self._gate.admit(
                scope["method"], path, scope.get("query_string", b""), headers
            )
            if isinstance(verdict, access.Refusal):
                logger.info("refused %s: %s", scope["method"][:16], verdict.reason)
                await _refuse(send, verdict)
                return
            path, headers = verdict.path, verdict.headers
        await self._bounded({**scope, "raw_path": path, "headers": headers}, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Searches are read and reranked, everything else streams through."""
        incoming = _Incoming(
            method=scope["method"],
            raw_path=scope["raw_path"],
            query=scope.get("query_string", b""),
            headers=scope["headers"],
            receive=receive,
        )
        path = incoming.raw_path
        if self._lends and access.releases(incoming.method, path):
            await self._release(incoming, send)
            return
        if self._lends and _has_body(incoming.headers):
            if not await self._check_references(incoming, send):
                return
        if incoming.method in _READ_METHODS:
            match = _SEARCH_PATH.match(path)
            if match:
                await self._search(incoming, _path_index(match), send)
                return
            match = _MSEARCH_PATH.match(path)
            if match:
                await self._msearch(incoming, _path_index(match), send)
                return
        await self._pass_through(incoming, send)

    async def _release(self, incoming: _Incoming, send: Send) -> None:
        """Lent credentials: a scroll/PIT release passes only when it names given ids.

        All clients share the lent identity, so ``_all`` would end every client's
        scrolls; the (small) body is read and checked before anything goes up.
        """
        body = await self._checked_body(incoming, send, access.MAX_RELEASE_BODY_BYTES)
        if body is None:
            return
        refusal = access.check_release(
            incoming.raw_path, incoming.query, incoming.header(b"content-type"), body[1]
        )
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await _refuse(send, refusal)
            return
        await self._pass_through(incoming, send, body=body[0])

    async def _check_references(self, incoming: _Incoming, send: Send) -> bool:
        """Lent credentials: refuse a body whose queries read another index's documents.

        Every allowed path with a body (search, msearch, count, opening a point
        in time) is read up to ``max_search_body_bytes`` and checked with
        :func:`~.proxy_access.check_body_references`; the request then goes on
        with the same bytes replayed, as if unread. ``False`` once refused.
        """
        body = await self._checked_body(incoming, send, self.settings.max_search_body_bytes)
        if body is None:
            return False
        ndjson = _MSEARCH_PATH.match(incoming.raw_path) is not None
        refusal = access.check_body_references(body[1], ndjson=ndjson)
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await _refuse(send, refusal)
            return False
        incoming.receive = _replay(body[0], incoming.receive)
        return True

    async def _checked_body(
        self, incoming: _Incoming, send: Send, limit: int
    ) -> tuple[bytes, bytes] | None:
        """(raw, decoded) body up to ``limit`` bytes to check; ``None`` once refused (403)."""
        try:
            raw = await self._read_body(incoming, limit=limit)
            decoded = decompress(
                raw, incoming.header(b"content-encoding") or "identity", limits=self.limits
            )
        except _BodyTooLarge:
            reason = f"a body over {limit} bytes cannot be checked by this proxy"
        except UnsupportedEncodingError:
            reason = "a body in this content-encoding cannot be checked by this proxy"
        else:
            return raw, decoded
        logger.info("refused %s: %s", incoming.method, reason)
        await _refuse(send, access.Refusal(403, f"{reason} (lent credentials)"))
        return None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.client()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -------------------------------------------------------------- pass-through

    async def _pass_through(
        self,
        incoming: _Incoming,
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
        come is read up to ``_PREBUFFER_BYTES`` before a pooled connection is taken.
        """
        headers = self._up_headers(incoming.headers, _NOT_FORWARDED_UP)
        content: bytes | AsyncIterator[bytes]
        if body is None and _has_body(incoming.headers):
            head, complete = await _prebuffer(incoming.receive, head)
            if complete:
                body = head
            else:
                content = _stream_body(incoming.receive, head)
        if body is not None:
            content = body
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        elif not _has_body(incoming.headers):
            content = b""
        request = httpx.Request(
            incoming.method,
            self._url(incoming.raw_path, rules.strip_own_params(incoming.query)),
            headers=headers,
            content=content,
        )
        try:
            response = await self.client().send(request, stream=True)
        except httpx.HTTPError as exc:
            await _send_answer(send, _unreachable(exc, status))
            return
        try:
            down = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
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

    # -------------------------------------------------------------------- search

    async def _search(self, incoming: _Incoming, index: str | None, send: Send) -> None:
        started = time.perf_counter()
        params = rules.split_query(incoming.query)
        if rules.opted_out(params, incoming.header(STATUS_HEADER.encode())):
            await self._pass_through(
                incoming, send, status=rules.status_header("skipped", "disabled by the client")
            )
            return
        raw_body = await self._read_search_body(incoming, send)
        if raw_body is None:
            return
        body_or_reason = self._decode_search(incoming, raw_body, params)
        if isinstance(body_or_reason, str):
            await self._pass_through(
                incoming, send, body=raw_body, status=rules.status_header("skipped", body_or_reason)
            )
            return
        texts = self.index_rules.resolve(index)
        plan = _plan_safely(
            body_or_reason,
            params,
            window=self.settings.window,
            text_fields=texts.fields,
            header_query=incoming.header(QUERY_HEADER.encode()),
        )
        if isinstance(plan, rules.Skip):
            await self._pass_through(
                incoming, send, body=raw_body, status=rules.status_header("skipped", plan.reason)
            )
            return
        request = httpx.Request(
            incoming.method,
            self._url(incoming.raw_path, plan.query),
            headers=self._rewritten_headers(incoming, b"application/json"),
            content=_dump(plan.body),
        )
        upstream_started = time.perf_counter()
        try:
            response = await self.client().send(request)
        except httpx.HTTPError as exc:
            await _send_answer(
                send, _unreachable(exc, rules.status_header("failed", "engine unreachable"))
            )
            return
        upstream_ms = (time.perf_counter() - upstream_started) * 1000
        if response.status_code == 400:
            # Possibly our window made the difference (e.g. a rank_window_size);
            # the client must get the engine's answer to its own request.
            await self._pass_through(
                incoming, send, body=raw_body,
                status=rules.status_header("skipped", "engine rejected the window request (400)"),
            )  # fmt: skip
            return
        parsed = _json_object(response)
        if response.status_code != 200 or parsed is None:
            reason = f"engine answered {response.status_code}"
            if response.status_code == 200:
                await self._pass_through(
                    incoming,
                    send,
                    body=raw_body,
                    status=rules.status_header("failed", "engine answer is not JSON"),
                )
                return
            await _send_answer(send, _relay(response, rules.status_header("skipped", reason)))
            return
        outcome = await self._rerank(parsed, plan, texts)
        final = outcome.response
        if outcome.status == "ok" or outcome.status.startswith("partial"):
            final = rules.add_took(final, (time.perf_counter() - started) * 1000 - upstream_ms)
        body = _dump(final)
        headers = _down_headers(response, outcome.status)
        headers.append(_server_timing(upstream_ms, outcome.rerank_ms, started))
        await _send_answer(send, _Answer(response.status_code, headers, body))

    async def _rerank(
        self, response: dict[str, Any], plan: rules.SearchPlan, texts: rules.RequestTexts
    ) -> _Outcome:
        """Rerank one search response; any fault gives the engine-order page instead."""
        started = time.perf_counter()
        outcome = await self._rerank_or_fall_back(response, plan, texts)
        return dataclasses.replace(outcome, rerank_ms=(time.perf_counter() - started) * 1000)

    async def _rerank_or_fall_back(
        self, response: dict[str, Any], plan: rules.SearchPlan, texts: rules.RequestTexts
    ) -> _Outcome:
        try:
            hits = self._hits(response, plan, texts)
            if not hits:
                return _Outcome(
                    rules.engine_order_response(response, plan),
                    rules.status_header("skipped", "no hits"),
                )
            result = await self.retriever.arerank_hits(plan.query_text, hits, k=None, offset=0)
            return self._apply(response, plan, result)
        except Exception as exc:  # noqa: BLE001 - the client must get the engine's answer
            logger.warning("rerank failed, answering in engine order: %s", brief_traceback(exc))
            reason = f"{type(exc).__name__} while reranking"
            return _Outcome(
                rules.engine_order_response(response, plan), rules.status_header("failed", reason)
            )

    def _apply(
        self, response: dict[str, Any], plan: rules.SearchPlan, result: SearchResult
    ) -> _Outcome:
        if result.status in ("failed", "skipped"):
            return _Outcome(
                rules.engine_order_response(response, plan),
                rules.status_header(result.status, result.reason or "reranking did not happen"),
            )
        reranked = rules.reranked_response(
            response, plan, result, annotation=self.settings.hit_annotation
        )
        return _Outcome(reranked, rules.status_header(result.status, result.reason))

    def _hits(
        self, response: dict[str, Any], plan: rules.SearchPlan, texts: rules.RequestTexts
    ) -> list[Hit]:
        """Engine hits as :class:`Hit` objects whose one field is the rendered passage."""

        def names(index: str) -> Sequence[str]:
            entry = texts.for_hit(index)
            return () if entry is None else entry.fields

        out = []
        for hit in rules.build_hits(response, plan, fields_for=names):
            entry = texts.for_hit(hit.index)
            passage = "" if entry is None else render_passage(hit, entry.template)
            out.append(dataclasses.replace(hit, fields={PASSAGE_FIELD: passage}))
        return out

    # ------------------------------------------------------------------- msearch

    async def _msearch(self, incoming: _Incoming, index: str | None, send: Send) -> None:
        started = time.perf_counter()
        params = rules.split_query(incoming.query)
        checked: bytes | None = None
        if self._lends:
            # Header lines name indices: with lent credentials every one is checked
            # first, and a body that cannot be read is refused, never passed through.
            checked = await self._checked_msearch(incoming, send)
            if checked is None:
                return
        if rules.opted_out(params, incoming.header(STATUS_HEADER.encode())):
            await self._pass_through(
                incoming,
                send,
                body=checked,
                status=rules.status_header("skipped", "disabled by the client"),
            )
            return
        raw_body = checked if checked is not None else await self._read_search_body(incoming, send)
        if raw_body is None:
            return
        data = self._decoded(incoming, raw_body, _NDJSON_TYPES, params)
        parsed = rules.parse_msearch(data) if data is not None else None
        if parsed is None:
            await self._pass_through(
                incoming,
                send,
                body=raw_body,
                status=rules.status_header("skipped", "msearch body not readable"),
            )
            return
        header_query = incoming.header(QUERY_HEADER.encode())
        plans: list[rules.SearchPlan | rules.Skip] = []
        item_texts: list[rules.RequestTexts] = []
        for item in parsed.items:
            texts = self.index_rules.resolve(rules.msearch_index(item.header, index))
            item_texts.append(texts)
            plans.append(
                _plan_safely(
                    item.body, (), window=self.settings.window,
                    text_fields=texts.fields, header_query=header_query,
                )
            )  # fmt: skip
        if not any(isinstance(p, rules.SearchPlan) for p in plans):
            reasons = ", ".join(
                rules.status_header("skipped", p.reason) for p in plans if isinstance(p, rules.Skip)
            )
            await self._pass_through(incoming, send, body=raw_body, status=reasons or "skipped")
            return
        lines = []
        for item, plan in zip(parsed.items, plans, strict=True):
            lines += [
                _dump(item.header),
                _dump(plan.body if isinstance(plan, rules.SearchPlan) else item.body),
            ]
        query = rules.join_query(p for p in params if p.key != rules.OPT_OUT_PARAM)
        request = httpx.Request(
            incoming.method,
            self._url(incoming.raw_path, query),
            headers=self._rewritten_headers(incoming, b"application/x-ndjson"),
            content=b"\n".join(lines) + b"\n",
        )
        upstream_started = time.perf_counter()
        try:
            response = await self.client().send(request)
        except httpx.HTTPError as exc:
            await _send_answer(
                send, _unreachable(exc, rules.status_header("failed", "engine unreachable"))
            )
            return
        upstream_ms = (time.perf_counter() - upstream_started) * 1000
        body = _json_object(response)
        responses = body.get("responses") if body is not None else None
        if (
            body is None
            or response.status_code != 200
            or not isinstance(responses, list)
            or len(responses) != len(plans)
        ):
            await self._pass_through(
                incoming, send, body=raw_body,
                status=rules.status_header("skipped", f"engine answered {response.status_code}"),
            )  # fmt: skip
            return
        await self._replay_rejected(incoming, parsed, plans, responses, query)
        outcomes = await asyncio.gather(
            *(
                self._msearch_item(item_response, plan, texts)
                for item_response, plan, texts in zip(responses, plans, item_texts, strict=True)
            )
        )
        final = dict(body)
        final["responses"] = [o.response for o in outcomes]
        final = rules.add_took(final, (time.perf_counter() - started) * 1000 - upstream_ms)
        headers = _down_headers(response, ", ".join(o.status for o in outcomes))
        rerank_ms = max(o.rerank_ms for o in outcomes)  # the searches rerank concurrently
        headers.append(_server_timing(upstream_ms, rerank_ms, started))
        await _send_answer(send, _Answer(200, headers, _dump(final)))

    async def _checked_msearch(self, incoming: _Incoming, send: Send) -> bytes | None:
        """The raw ``_msearch`` body once :func:`~.proxy_access.check_msearch` passed it."""
        body = await self._checked_body(incoming, send, self.settings.max_search_body_bytes)
        if body is None:
            return None
        refusal = access.check_msearch(incoming.header(b"content-type"), body[1])
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await _refuse(send, refusal)
            return None
        return body[0]

    async def _msearch_item(
        self, item: Any, plan: rules.SearchPlan | rules.Skip, texts: rules.RequestTexts
    ) -> _Outcome:
        if isinstance(plan, rules.Skip):
            return _Outcome(item, rules.status_header("skipped", plan.reason))
        if not isinstance(item, dict) or "hits" not in item:
            return _Outcome(item, rules.status_header("skipped", "engine answered an error"))
        outcome = await self._rerank(item, plan, texts)
        if outcome.status == "ok" or outcome.status.startswith("partial"):
            return dataclasses.replace(
                outcome, response=rules.add_took(outcome.response, outcome.rerank_ms)
            )
        return outcome

    async def _replay_rejected(
        self,
        incoming: _Incoming,
        parsed: rules.MsearchRequest,
        plans: list[rules.SearchPlan | rules.Skip],
        responses: list[Any],
        query: bytes,
    ) -> None:
        """Re-ask, as the client wrote them, the items the engine rejected with 400.

        Our window may be what the engine objected to; either way the client gets the
        engine's answer to its own item. Replaced items are marked as skipped.
        """
        rejected = [
            i
            for i, (plan, item) in enumerate(zip(plans, responses, strict=True))
            if isinstance(plan, rules.SearchPlan)
            and isinstance(item, dict)
            and item.get("status") == 400
        ]
        if not rejected:
            return
        lines = []
        for i in rejected:
            lines += [_dump(parsed.items[i].header), _dump(parsed.items[i].body)]
        request = httpx.Request(
            incoming.method,
            self._url(incoming.raw_path, query),
            headers=self._rewritten_headers(incoming, b"application/x-ndjson"),
            content=b"\n".join(lines) + b"\n",
        )
        try:
            replay = _json_object(await self.client().send(request))
        except httpx.HTTPError:
            return
        answers = replay.get("responses") if replay is not None else None
        if not isinstance(answers, list) or len(answers) != len(rejected):
            return
        for i, answer in zip(rejected, answers, strict=True):
            responses[i] = answer
            plans[i] = rules.Skip("engine rejected the window request (400)")

    # ------------------------------------------------------------------- helpers

    def _url(self, raw_path: bytes, query: bytes) -> httpx.URL:
        base = self._upstream.raw_path.split(b"?", 1)[0].rstrip(b"/")
        try:
            return self._upstream.copy_with(
                raw_path=base + raw_path + (b"?" + query if query else b"")
            )
        except httpx.InvalidURL as exc:  # e.g. a '#' or a space in the target: 400, not a 500
            msg = "the request target is not a valid URL path"
            raise MalformedRequestError(msg, field="path") from exc

    def _up_headers(
        self, headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes]
    ) -> list[tuple[bytes, bytes]]:
        out = [
            (k, v)
            for k, v in headers
            if k.lower() not in drop and not k.lower().startswith(b"x-secondpass-")
        ]
        if self._auth is not None:  # lent (only with lend_credentials): ours replace the client's
            out = [(k, v) for k, v in out if k.lower() != b"authorization"]
            out.append((b"authorization", self._auth))
        return out

    async def _read_search_body(self, incoming: _Incoming, send: Send) -> bytes | None:
        """The search body, or ``None`` once a body too large to read was passed through."""
        try:
            return await self._read_body(incoming)
        except _BodyTooLarge as exc:
            await self._pass_through(
                incoming,
                send,
                head=exc.head,
                status=rules.status_header("skipped", "search body too large to read"),
            )
            return None

    def _rewritten_headers(
        self, incoming: _Incoming, content_type: bytes
    ) -> list[tuple[bytes, bytes]]:
        """Headers for a body the proxy wrote itself: the client's type, else ``content_type``.

        A search sent as ``GET /_search?q=...`` has no body and so no type; the
        widened request carries a JSON body, which the engines refuse untyped (406).
        """
        headers = self._up_headers(incoming.headers, _REWRITTEN_UP)
        if not any(k.lower() == b"content-type" for k, _ in headers):
            headers.append((b"content-type", content_type))
        return headers

    async def _read_body(self, incoming: _Incoming, *, limit: int | None = None) -> bytes:
        """The whole search body, counted as it arrives whatever its framing.

        A body declared larger than ``max_search_body_bytes`` is not read; one
        without a Content-Length is read only up to the limit: either way it
        passes through unread (:class:`_BodyTooLarge`), as the engine would take it.
        """
        declared = incoming.header(b"content-length")
        limit = self.settings.max_search_body_bytes if limit is None else limit
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _BodyTooLarge
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
                raise _BodyTooLarge(b"".join(chunks))
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _decoded(
        self,
        incoming: _Incoming,
        raw_body: bytes,
        content_types: tuple[str, ...],
        params: Sequence[rules.QueryParam],
    ) -> bytes | None:
        """The request body as plain bytes, or ``None`` when the proxy cannot read it."""
        if raw_body:
            content_type = (incoming.header(b"content-type") or "application/json").lower()
            if not content_type.split(";")[0].strip().startswith(content_types):
                return None
        accept = (incoming.header(b"accept") or "application/json").lower()
        if not any(
            part.split(";")[0].strip().startswith(_JSON_ACCEPT) for part in accept.split(",")
        ):
            return None
        fmt = next((p.value for p in params if p.key == "format"), None)
        if fmt is not None and fmt.lower() != "json":
            return None
        encoding = incoming.header(b"content-encoding") or "identity"
        try:
            # Streaming, capped decoding (413 past the caps); an encoding we do not
            # decode, or corrupt data, passes through for the engine to judge.
            data = decompress(raw_body, encoding, limits=self.limits)
        except UnsupportedEncodingError:
            return None
        # On the bytes, before json.loads and the planner recurse into them (400).
        check_json_depth(data, self.limits.max_json_depth)
        return data

    def _decode_search(
        self, incoming: _Incoming, raw_body: bytes, params: Sequence[rules.QueryParam]
    ) -> dict[str, Any] | str:
        """The search body as a dict, or the reason it cannot be read."""
        data = self._decoded(incoming, raw_body, _JSON_TYPES, params)
        if data is None:
            return "request or response format is not JSON"
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except ValueError:
            return "search body is not valid JSON"
        return body if isinstance(body, dict) else "search body is not a JSON object"


# ------------------------------------------------------------------------ functions


def _plan_safely(
    body: dict[str, Any], params: Sequence[rules.QueryParam], **kwargs: Any
) -> rules.SearchPlan | rules.Skip:
    """:func:`~secondpass.service.proxy_rules.plan_search`, where a body it cannot read passes through.

    Bodies are the client's and may be anything the engine accepts (or rejects);
    whatever trips the planner, the engine gets the request as it came.
    """
    try:
        return rules.plan_search(body, params, **kwargs)
    except Exception as exc:  # noqa: BLE001 - never turn an odd body into our own error
        logger.warning("could not plan a search, passing it through: %s", type(exc).__name__)
        return rules.Skip(f"could not read the search body ({type(exc).__name__})")


def _path_index(match: re.Match[bytes]) -> str | None:
    index = match.group("index")
    return None if index is None else unquote(index.decode("latin-1"))


def _has_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    for key, value in headers:
        name = key.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def _prebuffer(receive: Receive, head: bytes) -> tuple[bytes, bool]:
    """Read the body on from ``head`` up to ``_PREBUFFER_BYTES``: (bytes read, whether complete)."""
    chunks = [head]
    size = len(head)
    while size < _PREBUFFER_BYTES:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError(_GONE)
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
    return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then the client's messages."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


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


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        value = json.loads(response.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _down_headers(response: httpx.Response, status: str) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _REWRITTEN_DOWN]
    headers.append((STATUS_HEADER.encode(), status.encode("ascii", "replace")))
    return headers


def _server_timing(engine_ms: float, rerank_ms: float, started: float) -> tuple[bytes, bytes]:
    """``Server-Timing`` (milliseconds): the engine round trip, reranking, and the whole request.

    ``total`` runs from the request's arrival to the answer being ready to send,
    so ``total - engine`` is what the proxy added.
    """
    total_ms = (time.perf_counter() - started) * 1000
    value = f"engine;dur={engine_ms:.1f}, rerank;dur={rerank_ms:.1f}, total;dur={total_ms:.1f}"
    return (b"server-timing", value.encode("ascii"))


def _relay(response: httpx.Response, status: str) -> _Answer:
    """The engine's buffered answer, unchanged but for the status header."""
    return _Answer(response.status_code, _down_headers(response, status), response.content)


async def _send_answer(send: Send, answer: _Answer) -> None:
    headers = [(k, v) for k, v in answer.headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def _unreachable(exc: httpx.HTTPError, status: str | None) -> _Answer:
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
    return _Answer(code, headers, _dump(body))


def _render_refusal(exc: ServiceError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An input-limit refusal (408/413/415/431/400) in the engines' error shape."""
    cause = {"type": exc.error_type, "reason": str(exc)}
    body = {"error": {"root_cause": [cause], **cause}, "status": exc.status}
    return exc.status, [(b"content-type", b"application/json; charset=UTF-8")], _dump(body)


async def _refuse(send: Send, refusal: access.Refusal) -> None:
    """Answer a request the proxy does not forward, in the engines' error shape."""
    body = access.error_body(refusal)
    await _send_answer(send, _Answer(refusal.status, access.refusal_headers(refusal), body))


def _configured_auth(settings: ProxySettings) -> bytes | None:
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


# ------------------------------------------------------------------------ running


def build_proxy(settings: ProxySettings) -> RerankProxy:
    """Load (and warm) the configured scorer and cache, and wrap them in a proxy.

    Loading the model is the slow part of starting the proxy; it happens here,
    before the port opens, so the first search is not the one that pays for it.
    """
    from secondpass.pipeline.cache import build_cache
    from secondpass.pipeline.scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer(settings=settings.rerank)
    scorer.warm_up()
    return RerankProxy(settings, scorer=scorer, cache=build_cache(settings.cache))


def _uvicorn_config(app: RerankProxy, settings: ProxySettings, *, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        log_config=None,  # keep the caller's logging set-up
        lifespan="on",
        server_header=False,  # the engine's headers only
        date_header=False,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        **app.limits.uvicorn_kwargs(),  # h11 pinned, request head capped (431)
    )


class BackgroundProxy:
    """Serve a :class:`RerankProxy` from a daemon thread, for tests, notebooks and benchmarks.

    Entering starts uvicorn on ``host:port`` (``0`` picks a free port) and returns
    the proxy's base URL once it accepts connections; leaving stops it. The proxy's
    retriever and scorer stay the caller's to close.

    Example:
        >>> with BackgroundProxy(RerankProxy(settings, scorer=scorer)) as url:  # doctest: +SKIP
        ...     httpx.get(f"{url}/_cluster/health")
    """

    def __init__(self, proxy: RerankProxy, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        import uvicorn

        self._server = uvicorn.Server(
            _uvicorn_config(self.proxy, self.proxy.settings, host=self.host, port=self.port)
        )
        self._server.install_signal_handlers = lambda: None  # not the main thread
        self._thread = threading.Thread(
            target=self._server.run, name="secondpass-proxy", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                msg = f"the proxy did not start on {self.host}:{self.port}"
                raise ServerStartError(msg)
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if self.proxy.settings.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)


def run(settings: ProxySettings, *, proxy: RerankProxy | None = None) -> int:
    """Serve the proxy under uvicorn until a signal; returns the exit code.

    uvicorn's own ``Server`` and ``Date`` headers are off so that responses carry
    the engine's headers only.
    """
    import uvicorn

    app = build_proxy(settings) if proxy is None else proxy
    server = uvicorn.Server(_uvicorn_config(app, settings, host=settings.host, port=settings.port))
    try:
        server.run()
    finally:
        app.retriever.close()
        close = getattr(app.retriever.scorer, "close", None)
        if callable(close):
            close()
    return 0 if server.started else 1
