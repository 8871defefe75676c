"""The HTTP service: Cohere- and TEI-compatible rerank, a search facade, health and metrics.

The app stays thin: it validates, enforces limits, and hands passages to the one
:class:`~secondpass.pipeline.engine.ScoringEngine` the service owns, directly
(rerank routes) or through the :class:`~secondpass.pipeline.retriever.Retriever`
(search), so every route shares one cache, one batch queue and one circuit
breaker. Everything that can be slow runs off the event loop: the engine and
the model in their own threads, engine calls on the async connector.

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
import dataclasses
import functools
import gc
import inspect
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from secondpass.config import RerankSettings
from secondpass.connectors.confine import Confinement
from secondpass.errors import (
    BackendUnavailableError,
    QueryError,
    RefusedQueryError,
    SearchDeadlineError,
    SecondPassError,
)
from secondpass.observability.asgi import RequestContextMiddleware
from secondpass.observability.logs import current_request_id
from secondpass.pipeline.batcher import BatchingOptions, DynamicBatcher
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.cache import NullScoreCache, build_cache
from secondpass.pipeline.engine import EngineResult, ScoringEngine
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.pipeline.rank_metrics import RankRecorder
from secondpass.pipeline.rollout import Arm, choose_arm
from secondpass.pipeline.shadow import ShadowQueue
from secondpass.pipeline.truncation import NO_TRUNCATION, Truncation
from secondpass.service.auth import ApiKeys
from secondpass.service.errors import (
    ClientDeadlineExceededError,
    InputTooLongError,
    InvalidRequestError,
    LimitExceededError,
    NotConfiguredError,
    UnavailableError,
    error_body,
    status_for,
)
from secondpass.service.http_limits import AnsweredConnectionGuard, brief_traceback
from secondpass.service.metrics import ServiceMetrics
from secondpass.service.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
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
    TeiInfo,
    TeiModelType,
    TeiRank,
    TeiRerankRequest,
)
from secondpass.service.schemas import clean_text as _clean
from secondpass.service.settings import ServiceSettings
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, SearchRequest, SearchResult

logger = logging.getLogger("secondpass.service")

__all__ = ["ServiceState", "create_app"]

_PROBE_PAIR = ("readiness probe", "a real forward pass through the model")


# ----------------------------------------------------------------------------- state


class ServiceState:
    """Everything the handlers share: model, scoring engine, cache, retriever and health.

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
        self.engine: ScoringEngine | None = None
        self.model_ok = False
        self.model_error: str | None = "model not loaded yet"
        self.load_failed = False
        self.draining = False
        self._last_probe = 0.0
        self._engine_checked = 0.0
        self._engine_status = "not checked yet"
        self._engine_check: asyncio.Task[str] | None = None
        self.api_keys = ApiKeys.from_sources(settings.api_keys, settings.api_key_file)
        # Rank-change figures of live and shadow /v1/search (docs/rollout.md).
        self.rank = RankRecorder.from_settings(settings, registry=self.metrics.registry)
        self.shadow = ShadowQueue(
            max_pending=settings.shadow_queue,
            workers=settings.shadow_workers,
            on_drop=self.rank.dropped,
        )
        self._load_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading in the background so /livez answers while a big model loads."""
        if self.cache is None:
            self.cache = build_cache(self.settings.cache)
        stats = getattr(self.cache, "stats", None)
        if stats is not None and hasattr(stats, "snapshot"):
            self.metrics.add_cache_backend(stats.snapshot)
        self.metrics.enable_gpu_memory()
        self._load_task = asyncio.get_running_loop().create_task(self._load(), name="load-model")

    async def _load(self) -> None:
        s = self.settings
        try:
            if self.scorer is None:
                factory = self._scorer_factory or build_scorer
                self.scorer = await asyncio.to_thread(factory, s.rerank)
            engine = ScoringEngine(
                scorer=self.scorer,
                cache=self.cache,
                breaker=CircuitBreaker(
                    failure_threshold=s.breaker_failures, reset_after_s=s.breaker_reset_s
                ),
                options=BatchingOptions(**s.batching_options(), max_queue_s=s.queue_time_limit_s),
                retry_after_s=s.retry_after_s,
                timeout_s=s.request_timeout_ms / 1000,
                observer=self.metrics.scoring,
                on_success=self._forward_ok,
                on_failure=self._forward_failed,
            )
            await asyncio.to_thread(engine.start)
            self.engine = engine
            self.metrics.scoring.build_info(
                model=s.public_model_name,
                backend=str(getattr(self.scorer, "backend", "unknown")),
                device=str(getattr(self.scorer, "device", "unknown")),
            )
            if s.search_enabled and self.retriever is None:
                self.retriever, self.hybrid_retriever, self.connector = await asyncio.to_thread(
                    build_search, s, engine
                )
            await self.probe()
            if self.model_ok:  # admission plans in seconds from the first request on
                await asyncio.to_thread(engine.calibrate)
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
            # The operator's log gets the whole text; clients (/livez, /readyz, 503
            # bodies) a form without filesystem paths (docs/service.md#model-names).
            logger.error("model failed to load: %s: %s", type(exc).__name__, _first_line(exc))
            reason = self.public_text(_first_line(exc))
            self.model_error = f"model failed to load: {type(exc).__name__}: {reason}"

    async def stop(self) -> None:
        """Finish queued work, then release the model thread, cache and engine clients."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._load_task
        if self._engine_check is not None:
            self._engine_check.cancel()
        await self.shadow.cancel()
        if self.rank.writer is not None:
            await asyncio.to_thread(self.rank.writer.close)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
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

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The engine's shared batch queue (``None`` until the model has loaded)."""
        return None if self.engine is None else self.engine.batcher

    async def probe(self, *, timeout_s: float | None = None) -> None:
        """Run one real pair through the model; its outcome updates ``model_ok``."""
        if self.engine is None:
            return
        self._last_probe = time.monotonic()
        timeout = self.settings.request_timeout_ms / 1000 if timeout_s is None else timeout_s
        with contextlib.suppress(SecondPassError):
            await self.engine.probe(_PROBE_PAIR, deadline=time.monotonic() + timeout)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Run the checks /readyz reports: model, engine and index, lifecycle.

        Each check is bounded by ``readiness_timeout_s`` (a paused engine or a
        hung model answers 503 quickly instead of stalling the probe), and the
        engine check is shared: concurrent probes wait for the one in flight and
        its result is reused for ``engine_check_interval_s``.
        """
        checks: dict[str, str] = {}
        if (
            not self.model_ok
            and self.engine is not None
            and not self.load_failed
            and time.monotonic() - self._last_probe >= self.settings.readiness_probe_interval_s
        ):
            await self.probe(timeout_s=self.settings.readiness_timeout_s)
        checks["model"] = "ok" if self.model_ok else (self.model_error or "not ready")
        if self.settings.search_enabled:
            checks["engine"] = await self._engine_status_now()
        if self.draining:
            checks["lifecycle"] = "draining"
        ready = all(v == "ok" for v in checks.values())
        self.metrics.ready.set(1 if ready else 0)
        return ready, checks

    async def _engine_status_now(self) -> str:
        """``ok`` or why not; at most one engine call per interval, however many probes."""
        if self.retriever is None:
            return "search facade not built yet"
        if self._engine_check is None:
            if time.monotonic() - self._engine_checked < self.settings.engine_check_interval_s:
                return self._engine_status
            # A task of its own, so a probe whose client hangs up does not cancel
            # the check the other probes are waiting for.
            self._engine_check = asyncio.get_running_loop().create_task(
                self._check_engine(), name="readiness-engine-check"
            )
            self._engine_check.add_done_callback(self._engine_checked_done)
        return await asyncio.shield(self._engine_check)

    def _engine_checked_done(self, task: asyncio.Task[str]) -> None:
        self._engine_check = None
        self._engine_checked = time.monotonic()
        if not task.cancelled():
            self._engine_status = task.result()

    async def _check_engine(self) -> str:
        """One bounded engine call: a 1-hit search on the configured index.

        A search rather than a ping: an engine that answers but lost the index
        (restarted without data) fails every /v1/search, so it is not ready.
        """
        timeout_s = self.settings.readiness_timeout_s
        target = self.connector
        try:
            if target is not None and callable(getattr(target, "search", None)):
                await asyncio.wait_for(
                    target.search(SearchRequest(query="readiness probe", size=1)), timeout_s
                )
            else:  # an injected retriever: its own ping
                ping = getattr(self.retriever, "ping", None)
                answer = ping() if callable(ping) else True
                if inspect.isawaitable(answer):
                    answer = await asyncio.wait_for(answer, timeout_s)
                if not answer:
                    return "unreachable"
        except TimeoutError:
            logger.warning("readiness: the engine did not answer within %.1f s", timeout_s)
            return f"no answer within {timeout_s:g} s"
        except QueryError as exc:
            if exc.status == 404:  # noqa: PLR2004 - index_not_found
                logger.warning("readiness: index %s missing", self.settings.search_index)
                return "index missing"
            logger.warning("readiness: engine check failed: %s", _first_line(exc))
            return f"engine error (HTTP {exc.status})"
        except Exception as exc:  # readiness reports, never raises
            logger.warning("readiness: engine check failed: %s", type(exc).__name__)
            return "unreachable"
        return "ok"

    def public_text(self, text: str) -> str:
        """``text`` as a client may read it: the model's path replaced, other paths removed."""
        return redact_paths(text, self.settings.rerank.model, self.settings.public_model_name)

    # -- scoring -------------------------------------------------------------

    def require_engine(self) -> ScoringEngine:
        """The scoring engine, or 503 while the model loads or after it failed to load."""
        if self.engine is None:
            msg = self.model_error or "model not loaded yet"
            raise UnavailableError(msg, retry_after_s=self.settings.retry_after_s)
        return self.engine

    async def rerank(
        self, query: str, texts: Sequence[str], *, truncation: Truncation | None = None
    ) -> EngineResult:
        """Score the rerank routes' ``texts`` through the shared engine; count cache use.

        Their documents have no index or id, so each is keyed as ``("", "", text)``:
        equal texts share a cache entry whatever their position or request.
        ``truncation`` (a request's ``max_tokens_per_doc``, ``max_chunks_per_doc``
        or ``truncation_direction``) is applied by the engine's scorer.
        """
        result = await self.require_engine().score(
            _clean(query), [("", "", _clean(text)) for text in texts], truncation=truncation
        )
        if self.cache is not None and not isinstance(self.cache, NullScoreCache):
            m = self.metrics
            m.stage.labels("cache").observe(result.timings_ms.get("cache", 0.0) / 1000.0)
            m.cache_hits.inc(result.cache_hits)
            m.cache_misses.inc(result.cache_misses)
        return result


def build_scorer(settings: RerankSettings) -> Scorer:
    """Load and warm the cross-encoder named by ``settings`` (blocking: run it in a thread).

    A remote reference (``cohere:rerank-v3.5``, ``tei:http://host:8080``, see
    docs/remote-rerankers.md) builds a rerank-API scorer instead.
    """
    from secondpass.pipeline.remote.references import remote_scorer_or_none
    from secondpass.pipeline.scorer import CrossEncoderScorer

    remote = remote_scorer_or_none(settings.model)
    if remote is not None:
        return remote
    scorer = CrossEncoderScorer(settings=settings)
    scorer.warm_up()
    return scorer


def build_search(settings: ServiceSettings, engine: ScoringEngine) -> tuple[Any, Any | None, Any]:
    """Build the facade(s) for ``/v1/search``: (lexical retriever, hybrid or None, connector).

    The connector is asynchronous so the first stage never holds a thread; the
    hybrid retriever exists when ``search_vector_field`` is set and shares the
    connector and the service's scoring engine (cache, queue, breaker) with the
    lexical one and with the rerank routes.
    """
    from secondpass.connectors import connect
    from secondpass.observability.tracing import traced_stage
    from secondpass.pipeline.first_stage import LexicalStage
    from secondpass.pipeline.retriever import Retriever

    # Only configured fields leave the engine: the library's default (the whole
    # _source) would hand every stored field of a hit to any HTTP client.
    connector = connect(
        index=settings.search_index or "",
        fields=settings.search_fields,
        settings=settings.engine,
        asynchronous=True,
        source_includes=search_source_includes(settings),
    )
    common: dict[str, Any] = {
        "engine": engine,
        "window": settings.search_window,
        "rank_by": getattr(settings.rerank, "rank_by", "normalized"),
        "min_score": getattr(settings.rerank, "min_score", None),
        "mode": settings.search_mode,
    }
    lexical = Retriever(
        connector=connector, first_stage=traced_stage(LexicalStage(connector)), **common
    )
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
        hybrid = Retriever(first_stage=traced_stage(stage), **common)
    return lexical, hybrid, connector


def search_source_includes(settings: ServiceSettings) -> list[str]:
    """``_source`` fields returned besides the search fields (the connector adds those)."""
    if settings.search_source_fields is None:
        return list(settings.search_filter_fields)
    return list(settings.search_source_fields)


def search_confinement(settings: ServiceSettings) -> Confinement:
    """The allow-list a caller's ``filters`` and ``body`` must stay inside.

    Callers may name the search fields, the filter fields and the vector field,
    nothing else; a misconfigured name (a wildcard, ``_id``) fails at start.
    """
    return Confinement(
        fields=[*settings.search_fields, *settings.search_filter_fields],
        vector_field=settings.search_vector_field,
    )


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
    if isinstance(exc, RefusedQueryError):  # our own allow-list, not the engine, refused it
        return _first_line(exc)
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


# A path starts at a separator (or ``~``, ``.``, a drive letter) that does not
# continue a word: "BAAI/bge-reranker" is an id, " /srv/models/x" a path.
_PATH_TOKEN = re.compile(
    r"""(?<![\w.-])(?:[A-Za-z]:[\\/]|\\\\|~[\w.-]*[\\/]|\.{1,2}[\\/]|/)[^\s'"`,;()<>\[\]]*"""
)


def redact_paths(text: str, model: str, name: str) -> str:
    """``text`` without filesystem paths: the model's own (in every spelling) becomes ``name``.

    Load errors quote the path they failed on (``/home/ci/models/x/config.json``,
    a symlink's target, ``~/models``); clients must not learn the host's layout.
    """
    from pathlib import Path

    spellings = {model, model.rstrip("/\\")}
    with contextlib.suppress(OSError, RuntimeError):
        spellings |= {str(Path(model).expanduser()), str(Path(model).expanduser().resolve())}
    for spelling in sorted((s for s in spellings if len(s) > 1), key=len, reverse=True):
        text = text.replace(spelling, name)
    return _PATH_TOKEN.sub(_path_or_url, text)


def _path_or_url(found: re.Match[str]) -> str:
    """Web URLs (``https://huggingface.co/...``) name public things; they stay."""
    start = found.start()
    if found.string[max(0, start - 6) : start].lower().endswith(("http:", "https:")):
        return found.group(0)
    return "<path>"


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


# --------------------------------------------------------------------------- the app


# Probes orchestrators call without credentials (TEI's /health included); every
# other path, /info too, needs a key when keys are configured.
_OPEN_PATHS = frozenset({"/livez", "/readyz", "/health"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "invalid JSON, nested deeper than max_json_depth, or a query DSL refused"),
        (408, "the body did not arrive in time, or the client's deadline passed before scoring"),
        (413, "body or an input too large"),
        (415, "a Content-Encoding other than identity"),
        (431, "too many request headers or header bytes"),
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
    app.add_middleware(BodyLimitMiddleware, settings=settings, metrics=state.metrics)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(  # outermost: nothing runs for a request without a valid key
        ApiKeyMiddleware,
        keys=state.api_keys,
        metrics=state.metrics,
        rate_per_s=settings.api_key_rate_per_s,
        open_paths=_OPEN_PATHS,
    )
    app.add_middleware(AnsweredConnectionGuard)  # around everything that may answer
    app.add_middleware(RequestContextMiddleware)  # X-Request-ID and the request span, even on 401
    _install_error_handlers(app, state)
    limits = _Limits(settings)
    # what every rerank route shares: errors in the OpenAPI, no nulls in answers
    rerank_route = functools.partial(
        app.post, response_model_exclude_none=True, responses=_ERRORS, tags=["rerank"]
    )

    @rerank_route("/v1/rerank", response_model=CohereRerankResponse)
    async def cohere_rerank(body: CohereRerankRequest) -> Any:
        """Rerank documents for a query (Cohere v1 wire format)."""
        limits.cohere(body)
        texts = [
            limits.text(f"documents[{i}]", _compose(doc, i, body.rank_fields))
            for i, doc in enumerate(body.documents)
        ]
        chunks = body.max_chunks_per_doc
        truncation = _instructed(
            None if chunks is None else Truncation(max_chunks=chunks), body.instruction
        )
        scored, values, top = await _cohere_ranked(state, body.query, texts, body.top_n, truncation)
        results = []
        for i in top:
            document = None
            if body.return_documents:
                doc = body.documents[i]
                document = (
                    CohereDocument(text=doc) if isinstance(doc, str) else CohereDocument(**doc)
                )
            results.append(CohereResult(index=i, relevance_score=values[i], document=document))
        return _cohere_response("1", results, scored, state)

    @rerank_route("/v2/rerank", response_model=CohereRerankResponse)
    async def cohere_rerank_v2(body: CohereV2RerankRequest) -> Any:
        """Rerank documents for a query (Cohere v2 wire format: string documents)."""
        limits.cohere(body)
        texts = [limits.text(f"documents[{i}]", d) for i, d in enumerate(body.documents)]
        max_tokens = body.max_tokens_per_doc
        truncation = _instructed(
            None if max_tokens is None else Truncation(max_tokens=max_tokens), body.instruction
        )
        scored, values, top = await _cohere_ranked(state, body.query, texts, body.top_n, truncation)
        results = [
            CohereResult(
                index=i,
                relevance_score=values[i],
                document=CohereDocument(text=body.documents[i]) if body.return_documents else None,
            )
            for i in top
        ]
        return _cohere_response("2", results, scored, state)

    @rerank_route("/rerank", response_model=list[TeiRank])
    async def tei_rerank(body: TeiRerankRequest) -> Any:
        """Rerank texts for a query (text-embeddings-inference wire format).

        Requests with more texts than a batch holds are split internally; only
        ``max_documents`` bounds the count.
        """
        limits.query(body.query)
        limits.count("texts", len(body.texts))
        left = body.truncation_direction.lower() == "left"
        texts = [limits.text(f"texts[{i}]", t) for i, t in enumerate(body.texts)]
        truncation = _instructed(Truncation(side="left") if left else None, body.instruction)
        scores = (await state.rerank(body.query, texts, truncation=truncation)).scores
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

    confinement = search_confinement(settings) if settings.search_enabled else None

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        responses={
            **_ERRORS,
            404: {"model": ErrorBody, "description": "search not configured"},
            502: {
                "model": ErrorBody,
                "description": "the engine failed the request (not the client's input)",
            },
        },
        tags=["search"],
    )
    async def search(body: SearchRequestBody, request: Request) -> Any:
        """First stage on the configured index, then rerank; degraded answers say why."""
        if not settings.search_enabled:
            msg = "search is not configured: set SECONDPASS_SERVICE_SEARCH_INDEX (--search-index)"
            raise NotConfiguredError(msg)
        if state.retriever is None:
            state.require_engine()
            msg = "the search facade is not ready yet"
            raise UnavailableError(msg, retry_after_s=settings.retry_after_s)
        limits.query(body.query)
        limits.top_n(body.k, field="k")
        if body.offset + body.k > settings.max_top_n:
            msg = f"offset + k: at most {settings.max_top_n}"
            raise LimitExceededError(msg, field="offset", limit=settings.max_top_n)
        assert confinement is not None
        confinement.check(filters=body.filters, body=body.body)  # 400 before any engine call
        retriever = state.retriever
        if body.hybrid is True or (body.hybrid is None and state.hybrid_retriever is not None):
            if state.hybrid_retriever is None:
                msg = "hybrid: not configured on this service (set --search-vector-field)"
                raise InvalidRequestError(msg, field="hybrid")
            retriever = state.hybrid_retriever
        arm = _search_arm(settings, body, request)
        try:
            if arm != "live":
                return await _first_stage_answer(state, retriever, body, arm)
            result: SearchResult = await retriever.asearch(
                body.query,
                k=body.k,
                offset=body.offset,
                filters=body.filters or None,
                body=body.body,
                deadline_ms=body.deadline_ms,
                instruction=body.instruction,
            )
        except SearchDeadlineError as exc:
            if body.deadline_ms is None:
                raise  # the engine settings' own deadline: 503, the engine is slow
            # The client's deadline ran out before the first stage answered: a
            # too-short deadline is input (408), as it is while scoring.
            msg = f"the request's deadline_ms ({body.deadline_ms:g}) passed before the first stage answered"
            raise ClientDeadlineExceededError(msg, field="deadline_ms") from exc
        if result.status != "ok":
            state.metrics.degraded.labels("/v1/search", result.status).inc()
        state.metrics.cache_hits.inc(result.cache_hits)
        state.metrics.cache_misses.inc(result.cache_misses)
        for stage, ms in result.timings_ms.items():
            state.metrics.stage.labels(f"search_{stage}").observe(ms / 1000.0)
        _record_live(state, body, result)
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
        "/health",
        response_class=Response,
        responses={
            200: {"description": "ready: the model answers (empty body, as TEI)"},
            503: {"model": ErrorBody, "description": "not ready: loading, failed or draining"},
        },
        tags=["health"],
    )
    async def health() -> Response:
        """TEI's health check: the same checks as ``/readyz``, answered as TEI answers."""
        ready, checks = await state.readiness()
        if ready:
            return Response(status_code=200)
        why = "; ".join(f"{name}: {value}" for name, value in checks.items() if value != "ok")
        return JSONResponse(
            error_body(f"not ready ({why})", "unhealthy"),
            status_code=503,
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    @app.get(
        "/info",
        response_model=TeiInfo,
        responses={503: {"model": ErrorBody, "description": "model not loaded yet"}},
        tags=["health"],
    )
    async def info() -> Any:
        """TEI's ``/info``: the model and the limits a TEI client sizes its requests by."""
        scorer = state.scorer
        state.require_engine()  # the window is known once the model has loaded
        rerank = settings.rerank
        window = getattr(scorer, "max_length", None)
        return TeiInfo(
            model_id=settings.public_model_name,
            model_sha=rerank.revision,
            model_dtype=str(getattr(scorer, "dtype", rerank.dtype)),
            model_type=TeiModelType(
                reranker={"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}
            ),
            max_concurrent_requests=settings.max_queue_pairs,
            max_input_length=window if isinstance(window, int) else rerank.max_length or 0,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_requests=settings.max_batch_pairs,
            max_client_batch_size=settings.max_documents,
            auto_truncate=settings.auto_truncate,
            tokenization_workers=1,
            version=_version(),
        )

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
            if state.api_keys:
                _declare_security(schema, rate_limited=settings.api_key_rate_per_s is not None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _declare_security(schema: dict[str, Any], *, rate_limited: bool) -> None:
    """Declare the API-key schemes (and their 401/429 answers) so clients and fuzzers know them."""
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    schema["security"] = [{"bearer": []}, {"apiKeyHeader": []}]
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            if path in _OPEN_PATHS:
                operation["security"] = []
                continue
            answers = operation.setdefault("responses", {})
            answers["401"] = {"description": "no valid API key", "content": error}
            if rate_limited:
                answers["429"] = {"description": "rate limit of this API key", "content": error}


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

    def cohere(self, body: CohereRerankRequest | CohereV2RerankRequest) -> None:
        """The checks both Cohere routes make before composing their texts."""
        self.query(body.query)
        self.count("documents", len(body.documents))
        self.top_n(body.top_n)

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


def _instructed(truncation: Truncation | None, instruction: str | None) -> Truncation | None:
    """``truncation`` with the request's LLM-reranker instruction added (None: nothing asked)."""
    if instruction is None:
        return truncation
    base = NO_TRUNCATION if truncation is None else truncation
    return dataclasses.replace(base, instruction=instruction)


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


async def _cohere_ranked(
    state: ServiceState,
    query: str,
    texts: list[str],
    top_n: int | None,
    truncation: Truncation | None,
) -> tuple[EngineResult, list[float], list[int]]:
    """Score the Cohere routes' texts: the result, finite normalised scores, the best ``top_n``."""
    scored = await state.rerank(query, texts, truncation=truncation)
    values = [_finite(s.normalized) for s in scored.scores]
    return scored, values, _order(values)[:top_n]


def _cohere_response(
    version: str, results: list[CohereResult], scored: EngineResult, state: ServiceState
) -> CohereRerankResponse:
    """The Cohere envelope: a fresh id, the results, and the billing/cache meta."""
    return CohereRerankResponse(
        id=str(uuid.uuid4()),
        results=results,
        meta=CohereMeta(
            api_version={"version": version},
            billed_units={"search_units": 1 if scored.scores else 0},
            model=state.settings.public_model_name,
            cache_hits=scored.cache_hits,
        ),
    )


def _search_arm(settings: ServiceSettings, body: SearchRequestBody, request: Request) -> Arm:
    """Live, shadow or pass for one ``/v1/search`` (:func:`~secondpass.pipeline.rollout.choose_arm`)."""
    if not settings.shadow and settings.rerank_share is None and not body.shadow:
        return "live"
    return choose_arm(
        settings,
        share_key=request.headers.get(settings.rerank_share_key),
        query=body.query,
        shadow_requested=body.shadow,
    )


async def _first_stage_answer(state: ServiceState, retriever: Any, body: SearchRequestBody, arm: Arm) -> Any:
    """The first-stage page now; for ``shadow``, the rerank and its record in the background."""
    reason = "shadow" if arm == "shadow" else "outside the rerank share"
    hits, page = await retriever.afirst_stage(
        body.query, k=body.k, offset=body.offset, filters=body.filters or None,
        body=body.body, deadline_ms=body.deadline_ms, reason=reason,
    )  # fmt: skip
    if arm == "shadow" and hits:
        request_id = current_request_id() or ""
        index = state.settings.search_index or ""

        state.shadow.submit(
            lambda: state.rank.shadow(
                lambda: retriever.arerank_hits(body.query, hits, k=None, instruction=body.instruction),
                request_id=request_id, index=index, query=body.query, hits=hits,
            )  # fmt: skip
        )
    return _search_response(page)


def _record_live(state: ServiceState, body: SearchRequestBody, result: SearchResult) -> None:
    """Rank-change record of a live search: its page, first-stage order against reranked order.

    ``asearch`` returns only the page, so the service's live figures compare the
    page's documents (the proxy's and the shadow arm's compare the whole window).
    """
    if result.status in ("failed", "skipped") or not result.hits:
        return
    first = [h.hit for h in sorted(result.hits, key=lambda h: h.hit.rank)]
    state.rank.record_result(
        arm="live", request_id=current_request_id() or "", index=state.settings.search_index or "",
        query=body.query, hits=first, result=result, rerank_ms=result.timings_ms.get("rerank"),
    )  # fmt: skip


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
            headers["Retry-After"] = str(math.ceil(seconds)) if seconds else retry_after
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
        # A short summary, not exc_info: a client must not be able to write a
        # RecursionError's hundreds of kB of traceback into the log per request.
        logger.error("unhandled error while serving a request: %s", brief_traceback(exc))
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
