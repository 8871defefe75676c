"""The drop-in proxy's ASGI entry: gate, route, and hand each request to its handler.

An application switches to reranked results by changing one URL. The proxy is a
raw ASGI application (no framework routing or response classes between the
client and the engine), so pass-through traffic keeps its bytes, status codes,
repeated headers and streaming (:mod:`secondpass.proxy.plumbing`).

Only ``GET|POST /_search``, ``/{index}/_search`` and the ``_msearch`` variants
are read and reranked (:mod:`secondpass.proxy.search`), and the node-discovery
calls of sniffing clients publish the proxy's address
(:mod:`secondpass.proxy.discovery`); everything else streams through.

Authority: by default a client acts with its own credentials only; its headers
go up unchanged and the proxy adds none. Credentials held by the proxy are lent
only with ``lend_credentials``, and then only to requests that
:mod:`secondpass.proxy.access` admits (client API key, allow-list of methods
and canonical paths); the rest are answered 401/403 here and never reach the
engine.

Example:
    >>> settings = ProxySettings(upstream="http://127.0.0.1:9200",
    ...                          indices={"docs": {"fields": ["title", "body"]}})
    >>> app = RerankProxy(settings, scorer=scorer)  # doctest: +SKIP
    >>> # uvicorn.run(app, host=settings.host, port=settings.port)
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from secondpass.observability.asgi import RequestContextMiddleware
from secondpass.proxy import access
from secondpass.proxy.admin import AdminEndpoints, is_own
from secondpass.proxy.discovery import NodeDiscovery, is_node_discovery
from secondpass.proxy.metrics import ProxyMetrics
from secondpass.proxy.plumbing import (
    Incoming,
    Receive,
    Scope,
    Send,
    Upstream,
    checked_body,
    has_body,
    refuse,
    render_refusal,
    replay,
)
from secondpass.proxy.search import SearchReranker, build_retriever
from secondpass.redaction import register_secrets_from
from secondpass.service.http_limits import (
    AnsweredConnectionGuard,
    BoundedInputMiddleware,
)

if TYPE_CHECKING:
    import httpx

    from secondpass.pipeline.engine import ScoringEngine
    from secondpass.pipeline.protocols import ScoreCache, Scorer
    from secondpass.pipeline.retriever import Retriever
    from secondpass.proxy.settings import ProxySettings

logger = logging.getLogger(__name__)

_SEARCH_PATH = re.compile(rb"^/(?:(?P<index>[^/]+)/)?_search/?$")
_MSEARCH_PATH = re.compile(rb"^/(?:(?P<index>[^/]+)/)?_msearch/?$")
_READ_METHODS = frozenset({"GET", "POST"})


class RerankProxy:
    """ASGI application that forwards every request to ``settings.upstream``.

    Give it a ``retriever`` (or a ``scorer`` and optional ``cache`` to build one
    with :func:`~secondpass.proxy.search.build_retriever`). Construction does no
    network I/O (it reads ``client_api_key_file``, and refuses settings that
    would lend credentials unsafely): the HTTP client toward the upstream is
    created on the first request (or at ASGI lifespan start), and :meth:`aclose`
    (or lifespan shutdown) releases it.
    """

    def __init__(
        self,
        settings: ProxySettings,
        *,
        retriever: Retriever | None = None,
        scorer: Scorer | None = None,
        cache: ScoreCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        # Refuses credentials without lend_credentials before anything is served.
        self._gate = settings.access_gate()
        # Its secrets never reach logs, nor are taken as a request id, however
        # the proxy was built (the CLI registers them too; a library caller may not).
        register_secrets_from(settings)
        self.metrics = ProxyMetrics() if metrics is None else metrics
        self._owned_engine: ScoringEngine | None = None
        if retriever is None:
            if scorer is None:
                msg = "RerankProxy needs a retriever or a scorer"
                raise TypeError(msg)
            retriever = build_retriever(settings, scorer, cache, observer=self.metrics.scoring)
            self._owned_engine = retriever.engine
        self.settings = settings
        self.retriever = retriever
        self._lends = self._gate is not None and self._gate.allow is not None
        self.limits = settings.http_limits()
        self._upstream = Upstream(settings, metrics=self.metrics, transport=transport)
        self._admin = AdminEndpoints(
            metrics=self.metrics, upstream=self._upstream, retriever=retriever
        )
        self._searches = SearchReranker(
            settings=settings,
            retriever=retriever,
            upstream=self._upstream,
            limits=self.limits,
            lends=self._lends,
        )
        self.index_rules = self._searches.index_rules
        self._discovery = NodeDiscovery(
            upstream=self._upstream, configured_address=settings.publish_address
        )
        # outermost: X-Request-ID and the request span, refusals included
        self._guarded = RequestContextMiddleware(
            AnsweredConnectionGuard(self._gate_and_route), name_of=_span_name
        )
        self._bounded = BoundedInputMiddleware(
            self._route, limits=self.limits, render=render_refusal, cancel_on_disconnect=True
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
        return self._upstream.client()

    async def aclose(self) -> None:
        """Close the upstream connections and cancel shadow reranks. The retriever belongs to the caller."""
        await self._searches.shadow.cancel()
        await self._upstream.aclose()
        writer = self._searches.rank.writer
        if writer is not None:
            await asyncio.to_thread(writer.flush)

    def close(self) -> None:
        """Stop the scoring engine this proxy built from a ``scorer`` (idempotent).

        Not part of :meth:`aclose`: a proxy may be served again after its
        connections closed (tests serve one proxy several times), while a closed
        engine stays closed. A retriever passed in keeps its engine.
        """
        if self._owned_engine is not None:
            self._owned_engine.close()

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
        wrong = access.check_method(scope["method"]) or access.check_header_values(
            scope["headers"]
        )
        if wrong is not None:
            await refuse(send, wrong)
            return
        target = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = access.origin_form(target.split(b"?", 1)[0])
        if path is None:
            await refuse(
                send, access.Refusal(400, "the request target must be a path such as /_search")
            )
            return
        headers = list(scope["headers"])
        if is_own(path):
            await self._own(scope["method"], path, headers, send)
            return
        if self._gate is not None:
            verdict = self._gate.admit(
                scope["method"], path, scope.get("query_string", b""), headers
            )
            if isinstance(verdict, access.Refusal):
                logger.info("refused %s: %s", scope["method"][:16], verdict.reason)
                await refuse(send, verdict)
                return
            path, headers = verdict.path, verdict.headers
        await self._bounded({**scope, "raw_path": path, "headers": headers}, receive, send)

    async def _own(
        self, method: str, path: bytes, headers: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        """``/_secondpass/...``: answered here, never forwarded; a client key when keys are on."""
        if self._gate is not None:
            client = self._gate.authenticate(headers)
            if isinstance(client, access.Refusal):
                logger.info("refused %s: %s", method[:16], client.reason)
                await refuse(send, client)
                return
        await self._admin.answer(method, path, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Searches are read and reranked, everything else streams through."""
        incoming = Incoming(
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
        if self._lends and has_body(incoming.headers):
            if not await self._check_references(incoming, send):
                return
        if is_node_discovery(incoming.method, path):  # sniffing clients must keep the proxy
            await self._discovery.answer(incoming, scope.get("server"), send)
            return
        if incoming.method in _READ_METHODS:
            match = _SEARCH_PATH.match(path)
            if match:
                await self._searches.search(incoming, _path_index(match), send)
                return
            match = _MSEARCH_PATH.match(path)
            if match:
                await self._searches.msearch(incoming, _path_index(match), send)
                return
        await self._upstream.pass_through(incoming, send)

    async def _release(self, incoming: Incoming, send: Send) -> None:
        """Lent credentials: a scroll/PIT release passes only when it names given ids.

        All clients share the lent identity, so ``_all`` would end every client's
        scrolls; the (small) body is read and checked before anything goes up.
        """
        body = await checked_body(
            incoming, send, limit=access.MAX_RELEASE_BODY_BYTES, limits=self.limits
        )
        if body is None:
            return
        refusal = access.check_release(
            incoming.raw_path, incoming.query, incoming.header(b"content-type"), body[1]
        )
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await refuse(send, refusal)
            return
        await self._upstream.pass_through(incoming, send, body=body[0])

    async def _check_references(self, incoming: Incoming, send: Send) -> bool:
        """Lent credentials: refuse a body whose queries read another index's documents.

        Every allowed path with a body (search, msearch, count, opening a point
        in time) is read up to ``max_search_body_bytes`` and checked with
        :func:`~secondpass.proxy.access.check_body_references`; the request then
        goes on with the same bytes replayed, as if unread. ``False`` once refused.
        """
        body = await checked_body(
            incoming, send, limit=self.settings.max_search_body_bytes, limits=self.limits
        )
        if body is None:
            return False
        ndjson = _MSEARCH_PATH.match(incoming.raw_path) is not None
        refusal = access.check_body_references(body[1], ndjson=ndjson)
        if refusal is not None:
            logger.info("refused %s: %s", incoming.method, refusal.reason)
            await refuse(send, refusal)
            return False
        incoming.receive = replay(body[0], incoming.receive)
        return True


def _span_name(scope: Scope) -> str:
    """The request span's name: method and the kind of path, never an index name."""
    path = (scope.get("raw_path") or scope.get("path", "").encode("utf-8")).split(b"?", 1)[0]
    if is_own(path):
        kind = path.decode("latin-1")[:40]
    elif _SEARCH_PATH.match(path):
        kind = "/{index}/_search"
    elif _MSEARCH_PATH.match(path):
        kind = "/{index}/_msearch"
    else:
        kind = "(pass-through)"
    return f"{scope.get('method', 'HTTP')[:16]} {kind}"


def _path_index(match: re.Match[bytes]) -> str | None:
    index = match.group("index")
    return None if index is None else unquote(index.decode("latin-1"))
