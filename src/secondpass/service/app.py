"""The HTTP service: Cohere- and TEI-compatible rerank, a search facade, health and metrics.

The app stays thin: it validates, enforces limits, and hands pairs to the shared
:class:`~secondpass.service.batcher.DynamicBatcher` (rerank) or to the
:class:`~secondpass.pipeline.retriever.Retriever` (search). Everything that can be
slow runs off the event loop: the model in the batcher's thread, Redis lookups
and engine calls in worker threads.

Endpoints: ``POST /v1/rerank`` and ``/v2/rerank`` (Cohere), ``POST /rerank`` (TEI),
``POST /v1/search``, ``GET /livez``, ``GET /readyz``, ``GET /metrics``, and the
OpenAPI document at ``/openapi.json`` (limits included).

Example:
    >>> app = create_app(ServiceSettings(), scorer=my_scorer)  # doctest: +SKIP
    >>> # uvicorn.run(app)  -- or: secondpass serve --rerank-model PATH
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from secondpass.config import RerankSettings
from secondpass.errors import BackendUnavailableError, QueryError, SecondPassError
from secondpass.pipeline.cache import LRUScoreCache, NullScoreCache, build_cache, cache_keys
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.service.batcher import DynamicBatcher
from secondpass.service.errors import (
    BodyTooLargeError,
    InputTooLongError,
    InvalidRequestError,
    LimitExceededError,
    NotConfiguredError,
    UnavailableError,
    error_body,
    status_for,
)
from secondpass.service.metrics import ServiceMetrics
from secondpass.service.schemas import (
    CohereDocument,
    CohereMeta,
    CohereRerankRequest,
    CohereRerankResponse,
    CohereResult,
    CohereV2RerankRequest,
    ErrorBody,
    Readiness,
    SearchHitOut,
    SearchRequestBody,
    SearchResponse,
    TeiRank,
    TeiRerankRequest,
)
from secondpass.service.schemas import clean_text as _clean
from secondpass.service.settings import ServiceSettings
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore, SearchResult

logger = logging.getLogger("secondpass.service")

__all__ = ["ServiceState", "create_app"]

_PROBE_PAIR = ("readiness probe", "a real forward pass through the model")
_EMPTY_SCORE = PassageScore(raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ----------------------------------------------------------------------------- state


class ServiceState:
    """Everything the handlers share: model, batcher, cache, retriever and health.

    Readiness is "a real forward pass succeeded since start or since the last
    failure": the batcher reports each batch's outcome here, and after a failure
    ``/readyz`` re-runs a probe pair (at most every ``readiness_probe_interval_s``)
    so a recovered model becomes ready again without traffic.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        scorer: Scorer | None = None,
        cache: ScoreCache | None = None,
        retriever: Any | None = None,
        scorer_factory: Callable[[RerankSettings], Scorer] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.scorer = scorer
        self._scorer_factory = scorer_factory
        self._owns_scorer = scorer is None
        self.cache: ScoreCache | None = cache
        self._owns_cache = cache is None
        self.retriever = retriever
        self._owns_retriever = retriever is None
        self.hybrid_retriever: Any | None = None
        self.connector: Any | None = None
        self.batcher: DynamicBatcher | None = None
        self.model_ok = False
        self.model_error: str | None = "model not loaded yet"
        self.load_failed = False
        self.draining = False
        self._last_probe = 0.0
        self._engine_checked = 0.0
        self._engine_ok = False
        self._load_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in the background so /livez answers while a big model loads."""
        if self.cache is None:
            self.cache = build_cache(self.settings.cache)
        stats = getattr(self.cache, "stats", None)
        if stats is not None and hasattr(stats, "snapshot"):
            self.metrics.add_callback_gauges(
                "secondpass_cache_backend",
                "Counters of the score cache backend since start (hits, misses, errors, ...).",
                stats.snapshot,
            )
        self.metrics.enable_gpu_memory()
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="load-model")

    async def _load(self) -> None:
        s = self.settings
        try:
            if self.scorer is None:
                factory = self._scorer_factory or build_scorer
                self.scorer = await asyncio.to_thread(factory, s.rerank)
            self.batcher = DynamicBatcher(
                self.scorer,
                batching=s.batching,
                max_batch_pairs=s.max_batch_pairs,
                max_batch_tokens=s.max_batch_tokens,
                max_wait_ms=s.max_wait_ms,
                max_queue_pairs=s.max_queue_pairs,
                retry_after_s=s.retry_after_s,
                metrics=self.metrics,
                on_success=self._forward_ok,
                on_failure=self._forward_failed,
            )
            self.batcher.start()
            if s.search_enabled and self.retriever is None:
                self.retriever, self.hybrid_retriever, self.connector = await asyncio.to_thread(
                    build_search, s, _BatchedScorer(self), self.cache
                )
            await self.probe()
            # The model, torch and the clients are ~0.5 M long-lived objects; a full
            # garbage collection walks them all and stalls the event loop for
            # hundreds of ms (measured: 0.5 s on 2 CPU cores), and error bursts
            # (an engine outage) trigger such collections often. Freezing them
            # once they are loaded leaves the collector only the request garbage.
            gc.freeze()
            if self.model_ok:
                logger.info("model ready: %s", self.scorer.fingerprint)
        except Exception as exc:  # reported by /readyz and /livez; the process stays up
            self.load_failed = True
            self.model_error = f"model failed to load: {type(exc).__name__}: {_first_line(exc)}"
            logger.error("%s", self.model_error)

    async def stop(self) -> None:
        """Finish queued work, then release the model thread, cache and engine clients."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._load_task
        if self.batcher is not None:
            await self.batcher.close()
        if self._owns_retriever and self.connector is not None:
            with contextlib.suppress(Exception):
                await self.connector.close()
        for owned, obj in (
            (self._owns_retriever, self.retriever),
            (self._owns_retriever, self.hybrid_retriever),
            (self._owns_cache, self.cache),
            (self._owns_scorer, self.scorer),
        ):
            close = getattr(obj, "close", None)
            if owned and callable(close):
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(close)

    def begin_drain(self) -> None:
        """Turn readiness to 503 at once (SIGTERM); requests keep being served."""
        self.draining = True
        self.metrics.ready.set(0)
        logger.info("draining: /readyz now answers 503")

    # -- health --------------------------------------------------------------

    def _forward_ok(self) -> None:
        self.model_ok = True
        self.model_error = None

    def _forward_failed(self, exc: BaseException) -> None:
        self.model_ok = False
        self.model_error = f"last forward pass failed: {type(exc).__name__}"

    async def probe(self) -> None:
        """Run one real pair through the batcher; its outcome updates ``model_ok``."""
        if self.batcher is None:
            return
        self._last_probe = time.monotonic()
        with contextlib.suppress(SecondPassError):
            await self.batcher.submit(
                [_PROBE_PAIR], timeout_s=self.settings.request_timeout_ms / 1000
            )

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Run the checks /readyz reports; cheap when everything is fine."""
        checks: dict[str, str] = {}
        if (
            not self.model_ok
            and self.batcher is not None
            and not self.load_failed
            and time.monotonic() - self._last_probe >= self.settings.readiness_probe_interval_s
        ):
            await self.probe()
        checks["model"] = "ok" if self.model_ok else (self.model_error or "not ready")
        if self.settings.search_enabled:
            checks["engine"] = "ok" if await self._engine_reachable() else "unreachable"
        if self.draining:
            checks["lifecycle"] = "draining"
        ready = all(v == "ok" for v in checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    async def _engine_reachable(self) -> bool:
        if self.retriever is None:
            return False
        now = time.monotonic()
        if now - self._engine_checked < self.settings.engine_check_interval_s:
            return self._engine_ok
        self._engine_checked = now
        ping = getattr(self.connector or self.retriever, "ping", None)
        try:
            if callable(ping):
                answer = ping()
                self._engine_ok = bool(await answer if inspect.isawaitable(answer) else answer)
            else:
                await self.retriever.asearch("readiness probe", k=1, deadline_ms=2000)
                self._engine_ok = True
        except Exception as exc:  # readiness reports, never raises
            logger.info("engine check failed: %s", type(exc).__name__)
            self._engine_ok = False
        return self._engine_ok

    # -- scoring -------------------------------------------------------------

    def require_batcher(self) -> DynamicBatcher:
        """The batcher, or 503 while the model loads or after it failed to load."""
        if self.batcher is None:
            msg = self.model_error or "model not loaded yet"
            raise UnavailableError(msg, retry_after_s=self.settings.retry_after_s)
        return self.batcher

    async def score_texts(
        self,
        query: str,
        texts: Sequence[str],
        *,
        timeout_s: float | None = None,
        client_deadline: bool = False,
    ) -> tuple[list[PassageScore], int, int]:
        """Score ``texts`` against ``query`` through the cache and the shared batcher.

        Returns (scores in input order, cache hits, cache misses). One lookup and
        one write per request; duplicate texts are scored once; empty passages
        get the fixed placeholder without a model call (and are never cached).
        This mirrors :func:`secondpass.pipeline.cached_scoring.score_with_cache`,
        whose synchronous model call cannot join the shared async queue.
        """
        batcher = self.require_batcher()
        assert self.scorer is not None
        timeout = self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        query = _clean(query)
        texts = [_clean(t) for t in texts]
        cache = self.cache
        use_cache = cache is not None and not isinstance(cache, NullScoreCache)
        scored_positions = [i for i, t in enumerate(texts) if t.strip()]
        keys: dict[int, str] = {}
        found: dict[str, PassageScore] = {}
        cache_s = 0.0
        if use_cache and cache is not None and scored_positions:
            computed = cache_keys(
                self.scorer.fingerprint, query, (("", "", texts[i]) for i in scored_positions)
            )
            keys = dict(zip(scored_positions, computed, strict=True))
            started = time.perf_counter()
            found = await _cache_call(cache, cache.get_many, list(dict.fromkeys(computed)))
            cache_s += time.perf_counter() - started
        todo: dict[str, int] = {}  # text -> position in the batch (distinct texts only)
        for i in scored_positions:
            if keys.get(i) not in found and texts[i] not in todo:
                todo[texts[i]] = len(todo)
        fresh: list[PassageScore] = []
        if todo:
            fresh = await batcher.submit(
                [(query, t) for t in todo], timeout_s=timeout, client_deadline=client_deadline
            )
        if use_cache and cache is not None and fresh:
            writes = {keys[i]: fresh[todo[texts[i]]] for i in scored_positions if texts[i] in todo}
            started = time.perf_counter()
            await _cache_call(cache, cache.set_many, writes)
            cache_s += time.perf_counter() - started
        scores: list[PassageScore] = []
        hits = 0
        for i, text in enumerate(texts):
            if not text.strip():
                scores.append(_EMPTY_SCORE)
            elif keys.get(i) in found:
                scores.append(found[keys[i]])
                hits += 1
            else:
                scores.append(fresh[todo[text]])
        misses = len(scored_positions) - hits
        m = self.metrics
        if use_cache:
            m.stage.labels("cache").observe(cache_s)
            m.cache_hits.inc(hits)
            m.cache_misses.inc(misses)
        return scores, hits, misses


async def _cache_call(cache: ScoreCache, fn: Callable[[Any], Any], arg: Any) -> Any:
    """In-process caches are called inline; anything else (Redis) in a worker thread."""
    try:
        if isinstance(cache, LRUScoreCache):
            return fn(arg)
        return await asyncio.to_thread(fn, arg)
    except Exception as exc:  # a cache fault is a miss, whatever the implementation
        logger.warning("score cache raised %s; continuing without it", type(exc).__name__)
        return {}


class _BatchedScorer:
    """A synchronous :class:`Scorer` for the retriever's worker threads that scores via the batcher.

    The retriever calls ``score`` from its own thread; this hands the pairs to the
    event loop's shared queue, so search and rerank requests share batches.
    """

    def __init__(self, state: ServiceState) -> None:
        self._state = state
        self._loop = asyncio.get_running_loop()

    @property
    def fingerprint(self) -> str:
        assert self._state.scorer is not None
        return self._state.scorer.fingerprint

    def score(
        self, query: str, passages: Sequence[str], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        return self.score_pairs([(query, p) for p in passages], timings=timings)

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        batcher = self._state.require_batcher()
        timeout = self._state.settings.request_timeout_ms / 1000
        cleaned = [(_clean(q), _clean(p)) for q, p in pairs]
        future = asyncio.run_coroutine_threadsafe(
            batcher.submit(cleaned, timeout_s=timeout), self._loop
        )
        return future.result()


def build_scorer(settings: RerankSettings) -> Scorer:
    """Load and warm the cross-encoder named by ``settings`` (blocking: run it in a thread)."""
    from secondpass.pipeline.scorer import CrossEncoderScorer

    scorer = CrossEncoderScorer(settings=settings)
    scorer.warm_up()
    return scorer


def build_search(
    settings: ServiceSettings, scorer: Scorer, cache: ScoreCache | None
) -> tuple[Any, Any | None, Any]:
    """Build the facade(s) for ``/v1/search``: (lexical retriever, hybrid or None, connector).

    The connector is asynchronous so the first stage never holds a thread; the
    hybrid retriever exists when ``search_vector_field`` is set and shares the
    connector, the cache and the (batched) scorer with the lexical one.
    """
    from secondpass.connectors import connect
    from secondpass.pipeline.breaker import CircuitBreaker
    from secondpass.pipeline.retriever import Retriever

    connector = connect(
        index=settings.search_index or "",
        fields=settings.search_fields,
        settings=settings.engine,
        asynchronous=True,
    )
    common: dict[str, Any] = {
        "scorer": scorer,
        "cache": cache,
        "window": settings.search_window,
        "rank_by": getattr(settings.rerank, "rank_by", "normalized"),
        "min_score": getattr(settings.rerank, "min_score", None),
        "mode": settings.search_mode,
        # One breaker for both retrievers: they share the scorer that fails.
        "breaker": CircuitBreaker(
            failure_threshold=settings.breaker_failures, reset_after_s=settings.breaker_reset_s
        ),
    }
    lexical = Retriever(connector=connector, **common)
    hybrid = None
    if settings.search_vector_field:
        from secondpass.pipeline.dense import SentenceTransformerEncoder
        from secondpass.pipeline.first_stage import HybridStage

        encoder = SentenceTransformerEncoder(settings.search_dense_model)
        stage = HybridStage(
            connector,
            encoder,
            settings.search_vector_field,
            fusion=settings.search_fusion,
            alpha=settings.search_alpha,
            depth=max(100, settings.search_window),
        )
        hybrid = Retriever(first_stage=stage, **common)
    return lexical, hybrid, connector


_ENGINE_ERROR_TYPE = re.compile(r"^[a-z_]{3,80}$")


def _public_message(exc: BaseException, status: int) -> str:
    """What a client may read about an error: never hosts, paths, user names or internals.

    Engine failures are the operator's business, not the client's: their full
    text (which names the index, and for some errors the user and request path)
    goes to the log, the client gets the status and the engine's error type.
    A query the engine rejected (4xx) keeps the engine's reason, which is about
    the client's own DSL.
    """
    if status == 500:
        return "internal error"
    if isinstance(exc, QueryError):
        if status < 500:
            reason = exc.reason if exc.reason is not None else _first_line(exc)
            return f"the search engine rejected the query: {_first_line(ValueError(reason))}"
        kind = (exc.reason or "").split(":", 1)[0].strip()
        logger.warning("engine error answered as %d: %s", status, _first_line(exc))
        detail = f", {kind}" if _ENGINE_ERROR_TYPE.match(kind) else ""
        return f"the search engine failed the request (HTTP {exc.status}{detail})"
    if isinstance(exc, BackendUnavailableError):
        logger.warning("engine unavailable: %s", _first_line(exc))
        return "the search engine is unavailable or did not answer in time; retry later"
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no details"


def _finite(x: float) -> float:
    """Scores must serialise as JSON numbers; a non-finite model output ranks last."""
    if math.isnan(x):
        return EMPTY_PASSAGE_RAW_SCORE
    if math.isinf(x):
        return -EMPTY_PASSAGE_RAW_SCORE if x > 0 else EMPTY_PASSAGE_RAW_SCORE
    return x


def _order(values: Sequence[float]) -> list[int]:
    """Indices by descending score; ties keep the lower index first."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


# ------------------------------------------------------------------------ middleware


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length before reading, else while streaming.

    A chunked body (no Content-Length) is counted as it arrives; once over the
    limit the app's own response (if any) is discarded and a 413 is sent instead.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                declared = value
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _send_json(send, 400, error_body("invalid Content-Length", "validation"))
                return
            if length > self.max_bytes:
                await self._reject(send)
                return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    msg = "request body too large"
                    raise BodyTooLargeError(msg)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        body = error_body(
            f"request body larger than {self.max_bytes} bytes",
            BodyTooLargeError.error_type,
            field="body",
            limit=self.max_bytes,
        )
        await _send_json(send, 413, body)


class MetricsMiddleware:
    """Counts requests and latency per route template, and requests in flight."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
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


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status_code=status, headers={"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# --------------------------------------------------------------------------- the app

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "the body is not valid JSON (or, for search, the engine rejected the query DSL)"),
        (408, "the client's deadline passed before scoring"),
        (413, "body or an input too large"),
        (422, "invalid field or limit exceeded (names the field and the limit)"),
        (429, "queue full; see Retry-After"),
        (503, "model not ready, draining, or queue timeout; see Retry-After"),
    )
}


def create_app(
    settings: ServiceSettings | None = None,
    *,
    scorer: Scorer | None = None,
    cache: ScoreCache | None = None,
    retriever: Any | None = None,
    scorer_factory: Callable[[RerankSettings], Scorer] | None = None,
) -> FastAPI:
    """Build the service app; nothing is loaded until the app starts (lifespan).

    ``scorer``, ``cache`` and ``retriever`` may be given (tests, embedding the
    service in another app); otherwise they are built from ``settings`` at start
    and closed at shutdown. The state is at ``app.state.service``.
    """
    settings = ServiceSettings() if settings is None else settings
    state = ServiceState(
        settings, scorer=scorer, cache=cache, retriever=retriever, scorer_factory=scorer_factory
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="SecondPass",
        version=_version(),
        summary="Cross-encoder reranking: Cohere- and TEI-compatible rerank, search facade.",
        lifespan=lifespan,
    )
    app.state.service = state
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=state.metrics
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    _install_error_handlers(app, state)
    limits = _Limits(settings)

    @app.post(
        "/v1/rerank",
        response_model=CohereRerankResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["rerank"],
    )
    async def cohere_rerank(body: CohereRerankRequest) -> Any:
        """Rerank documents for a query (Cohere v1 wire format)."""
        limits.query(body.query)
        limits.count("documents", len(body.documents))
        limits.top_n(body.top_n)
        texts = [
            limits.text(f"documents[{i}]", _compose(doc, i, body.rank_fields))
            for i, doc in enumerate(body.documents)
        ]
        scores, hits, _ = await state.score_texts(body.query, texts)
        values = [_finite(s.normalized) for s in scores]
        top = _order(values)[: body.top_n]
        results = []
        for i in top:
            document = None
            if body.return_documents:
                doc = body.documents[i]
                document = (
                    CohereDocument(text=doc) if isinstance(doc, str) else CohereDocument(**doc)
                )
            results.append(CohereResult(index=i, relevance_score=values[i], document=document))
        return CohereRerankResponse(
            id=str(uuid.uuid4()), results=results, meta=_meta("1", len(texts), hits, state)
        )

    @app.post(
        "/v2/rerank",
        response_model=CohereRerankResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["rerank"],
    )
    async def cohere_rerank_v2(body: CohereV2RerankRequest) -> Any:
        """Rerank documents for a query (Cohere v2 wire format: strings, no document echo)."""
        limits.query(body.query)
        limits.count("documents", len(body.documents))
        limits.top_n(body.top_n)
        texts = [limits.text(f"documents[{i}]", d) for i, d in enumerate(body.documents)]
        scores, hits, _ = await state.score_texts(body.query, texts)
        values = [_finite(s.normalized) for s in scores]
        results = [
            CohereResult(index=i, relevance_score=values[i]) for i in _order(values)[: body.top_n]
        ]
        return CohereRerankResponse(
            id=str(uuid.uuid4()), results=results, meta=_meta("2", len(texts), hits, state)
        )

    @app.post(
        "/rerank",
        response_model=list[TeiRank],
        response_model_exclude_none=True,
        responses=_ERRORS,
        tags=["rerank"],
    )
    async def tei_rerank(body: TeiRerankRequest) -> Any:
        """Rerank texts for a query (text-embeddings-inference wire format).

        Requests with more texts than a batch holds are split internally; only
        ``max_documents`` bounds the count.
        """
        limits.query(body.query)
        limits.count("texts", len(body.texts))
        if body.truncation_direction.lower() != "right":
            msg = "truncation_direction: only Right is supported"
            raise InvalidRequestError(msg, field="truncation_direction")
        texts = [limits.text(f"texts[{i}]", t) for i, t in enumerate(body.texts)]
        scores, _, _ = await state.score_texts(body.query, texts)
        truncate = settings.auto_truncate if body.truncate is None else body.truncate
        if not truncate:
            for i, s in enumerate(scores):
                if s.truncated:
                    msg = (
                        f"texts[{i}]: {s.tokens_in} tokens do not fit the model's window; "
                        "send truncate=true to cut it"
                    )
                    raise InputTooLongError(msg, field=f"texts[{i}]", limit=s.tokens_scored)
        values = [_finite(s.raw if body.raw_scores else s.normalized) for s in scores]
        return [
            TeiRank(index=i, score=values[i], text=body.texts[i] if body.return_text else None)
            for i in _order(values)
        ]

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses={
            **_ERRORS,
            404: {"model": ErrorBody, "description": "search not configured"},
            502: {"model": ErrorBody, "description": "the engine failed the request (not the client's input)"},
        },
        tags=["search"],
    )
    async def search(body: SearchRequestBody) -> Any:
        """First stage on the configured index, then rerank; degraded answers say why."""
        if not settings.search_enabled:
            msg = "search is not configured: set SECONDPASS_SERVICE_SEARCH_INDEX (--search-index)"
            raise NotConfiguredError(msg)
        if state.retriever is None:
            state.require_batcher()
            msg = "the search facade is not ready yet"
            raise UnavailableError(msg, retry_after_s=settings.retry_after_s)
        limits.query(body.query)
        limits.top_n(body.k, field="k")
        if body.offset + body.k > settings.max_top_n:
            msg = f"offset + k: at most {settings.max_top_n}"
            raise LimitExceededError(msg, field="offset", limit=settings.max_top_n)
        retriever = state.retriever
        if body.hybrid is True or (body.hybrid is None and state.hybrid_retriever is not None):
            if state.hybrid_retriever is None:
                msg = "hybrid: not configured on this service (set --search-vector-field)"
                raise InvalidRequestError(msg, field="hybrid")
            retriever = state.hybrid_retriever
        result: SearchResult = await retriever.asearch(
            body.query,
            k=body.k,
            offset=body.offset,
            filters=body.filters or None,
            body=body.body,
            deadline_ms=body.deadline_ms,
        )
        if result.status != "ok":
            state.metrics.degraded.labels("/v1/search", result.status).inc()
        state.metrics.cache_hits.inc(result.cache_hits)
        state.metrics.cache_misses.inc(result.cache_misses)
        for stage, ms in result.timings_ms.items():
            state.metrics.stage.labels(f"search_{stage}").observe(ms / 1000.0)
        return _search_response(result)

    @app.get("/livez", tags=["health"])
    async def livez() -> Any:
        """Liveness: the process serves HTTP (and the model did not fail to load)."""
        if state.load_failed:
            return JSONResponse({"status": "failed", "reason": state.model_error}, status_code=503)
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready"}},
        tags=["health"],
    )
    async def readyz() -> Any:
        """Readiness: a real forward pass succeeded since the last failure (and engine is up)."""
        ready, checks = await state.readiness()
        status = "ready" if ready else ("draining" if state.draining else "not_ready")
        body = Readiness(ready=ready, status=status, checks=checks).model_dump()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
        tags=["health"],
    )
    async def metrics() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            limits.annotate(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


class _Limits:
    """The per-deployment size limits: checks that name the field, and their OpenAPI form."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.s = settings

    def query(self, query: str) -> None:
        if len(query) > self.s.max_query_chars:
            msg = f"query: at most {self.s.max_query_chars} characters, got {len(query)}"
            raise LimitExceededError(msg, field="query", limit=self.s.max_query_chars)

    def count(self, field: str, n: int) -> None:
        if n > self.s.max_documents:
            msg = f"{field}: at most {self.s.max_documents} items, got {n}"
            raise LimitExceededError(msg, field=field, limit=self.s.max_documents)

    def text(self, field: str, text: str) -> str:
        if len(text) > self.s.max_document_chars:
            msg = f"{field}: at most {self.s.max_document_chars} characters, got {len(text)}"
            raise LimitExceededError(msg, field=field, limit=self.s.max_document_chars)
        return text

    def top_n(self, value: int | None, *, field: str = "top_n") -> None:
        if value is not None and value > self.s.max_top_n:
            msg = f"{field}: at most {self.s.max_top_n}, got {value}"
            raise LimitExceededError(msg, field=field, limit=self.s.max_top_n)

    def annotate(self, schema: dict[str, Any]) -> None:
        """Write the limits into the component schemas, so clients and fuzzers see them."""
        comps = schema.get("components", {}).get("schemas", {})
        s = self.s
        for name, docs_field in (
            ("CohereRerankRequest", "documents"),
            ("CohereV2RerankRequest", "documents"),
            ("TeiRerankRequest", "texts"),
        ):
            props = comps.get(name, {}).get("properties", {})
            _constrain(props.get("query"), "string", maxLength=s.max_query_chars)
            docs = props.get(docs_field)
            if docs is not None:
                docs["maxItems"] = s.max_documents
                _constrain(docs.get("items"), "string", maxLength=s.max_document_chars)
            _constrain(props.get("top_n"), "integer", maximum=s.max_top_n)
        props = comps.get("SearchRequestBody", {}).get("properties", {})
        _constrain(props.get("query"), "string", maxLength=s.max_query_chars)
        _constrain(props.get("k"), "integer", maximum=s.max_top_n)
        _constrain(props.get("offset"), "integer", maximum=s.max_top_n - 1)


def _constrain(node: dict[str, Any] | None, kind: str, **limits: int) -> None:
    """Add JSON-schema limits to ``node`` or to its ``anyOf`` branch of type ``kind``."""
    if node is None:
        return
    if node.get("type") == kind:
        node.update(limits)
    for branch in node.get("anyOf", ()):
        if branch.get("type") == kind:
            branch.update(limits)


def _compose(doc: str | dict[str, Any], i: int, rank_fields: list[str] | None) -> str:
    """The text scored for one Cohere document: the string, or its rank fields."""
    if isinstance(doc, str):
        return doc
    names = rank_fields or ["text"]
    parts = []
    for name in names:
        if name not in doc:
            continue
        value = doc[name]
        if value is None or isinstance(value, (dict, list)):
            msg = f"documents[{i}].{name}: must be a string or a number"
            raise InvalidRequestError(msg, field=f"documents[{i}].{name}")
        parts.append(str(value) if len(names) == 1 else f"{name}: {value}")
    if not parts:
        msg = f"documents[{i}]: has none of the rank fields {names}"
        raise InvalidRequestError(msg, field=f"documents[{i}]")
    return "\n".join(parts)


def _meta(version: str, documents: int, hits: int, state: ServiceState) -> CohereMeta:
    fingerprint = state.scorer.fingerprint if state.scorer is not None else ""
    return CohereMeta(
        api_version={"version": version},
        billed_units={"search_units": 1 if documents else 0},
        model=fingerprint,
        cache_hits=hits,
    )


def _search_response(result: SearchResult) -> SearchResponse:
    hits = [
        SearchHitOut(
            index=r.hit.index,
            id=r.hit.id,
            rank=r.rank,
            score=None if r.score is None else _finite(r.score),
            first_stage_rank=r.hit.rank,
            first_stage_score=r.hit.score,
            fields=dict(r.hit.fields),
            source=dict(r.hit.source),
        )
        for r in result.hits
    ]
    return SearchResponse(
        hits=hits,
        rerank_status=result.status,
        reason=result.reason,
        timings_ms=dict(result.timings_ms),
        cache_hits=result.cache_hits,
        cache_misses=result.cache_misses,
        window=result.window,
        reranked=result.reranked,
    )


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    retry_after = str(state.settings.retry_after_s)

    def respond(exc: BaseException) -> JSONResponse:
        status, kind = status_for(exc)
        field = getattr(exc, "field", None)
        limit = getattr(exc, "limit", None)
        message = _public_message(exc, status)
        headers = {}
        if status in (429, 503):
            seconds = getattr(exc, "retry_after_s", None)
            headers["Retry-After"] = str(seconds) if seconds else retry_after
        return JSONResponse(
            error_body(message, kind, field=field, limit=limit), status_code=status, headers=headers
        )

    async def on_project_error(_: Request, exc: Exception) -> JSONResponse:
        return respond(exc)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        state.metrics.rejected.labels("validation").inc()
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [p for p in first.get("loc", ()) if p != "body"]
        field = _dotted(loc) or "body"
        ctx = first.get("ctx") or {}
        limit = next(
            (ctx[k] for k in ("max_length", "le", "lt", "ge", "gt", "min_length") if k in ctx),
            None,
        )
        if not isinstance(limit, (int, float)) or isinstance(limit, bool):
            limit = None
        message = f"{field}: {first.get('msg', 'invalid value')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem(s))"
        return JSONResponse(
            error_body(message, "validation", field=field, limit=limit), status_code=422
        )

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = str(exc.detail)
        return JSONResponse(
            error_body(message, "http", field=None),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s while serving a request", type(exc).__name__, exc_info=exc)
        return respond(exc)

    app.add_exception_handler(SecondPassError, on_project_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_bug)


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _version() -> str:
    from secondpass import __version__

    return __version__
