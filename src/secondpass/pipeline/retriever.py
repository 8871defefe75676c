"""The retrieval facade: first stage -> dedupe -> passages -> scoring engine -> order -> top-K.

Read :meth:`Retriever.search` and :meth:`Retriever.rerank_hits` top to bottom and
you have the whole request path. Everything engine- or model-specific sits behind
the protocols in :mod:`secondpass.connectors.base` and
:mod:`secondpass.pipeline.protocols`; this module never imports an engine client
or torch. Scoring (cache, blank passages, batching, breaker, deadline) is the
:class:`~secondpass.pipeline.engine.ScoringEngine`'s, the same one the HTTP
service and the proxy use.

Guarantees a caller can rely on:

* **Order.** Reranked hits come first, by score (descending), ties broken by
  first-stage rank, then index, then id. Hits the model did not score (past the
  window, or past what the latency budget allowed) follow in first-stage order.
  Because that order is a pure function of the first-stage list and the scores,
  pages cut from it with ``offset``/``k`` concatenate to the one big page. A
  scorer with a ``first_stage_fusion`` (the offline bi-encoder fallback) is
  ranked by RRF of its order and the first-stage order instead (see
  :class:`~secondpass.pipeline.fusion.FirstStageFusion`); ``score`` is then
  the fused value.
* **Degraded answers are never silent.** If scoring fails or overruns the
  deadline, the first-stage order comes back with ``status`` ``"failed"`` (or
  ``"skipped"`` when there was no time left to try) and a ``reason``, within
  the deadline: the engine stops waiting for the model at the deadline.
  ``mode="required"`` raises :class:`~secondpass.errors.RerankError` instead.
* **A failing scorer is not called again and again.** With a
  :class:`~secondpass.pipeline.breaker.CircuitBreaker`, every scorer failure or
  deadline overrun counts against it; once it opens, requests skip scoring at
  once (``status="skipped"``, reason ``"circuit open: ..."``, or
  :class:`~secondpass.errors.CircuitOpenError` in required mode) until a single
  probe request is let through and succeeds. Sync and asyncio calls share it.
  A batch the model was running when the caller gave up still finishes and
  writes its scores to the cache, so the next identical request is fast.
* **One queue.** Concurrent calls, sync and asyncio alike, feed one batch queue
  (the engine's), so their passages share forward passes; a call that cannot
  be scored in time is refused at once (``status="skipped"``, reason
  ``"overloaded: ..."``, or :class:`~secondpass.errors.OverloadedError`).
* **Empty passages** (empty or whitespace-only after rendering) are kept and get
  :data:`~secondpass.pipeline.engine.BLANK_SCORE` (normalised 0.0) without
  calling the model, so they rank last among reranked hits.
* **min_score** drops reranked hits whose ranking score (raw or normalised, per
  ``rank_by``) is below it. Hits that were not reranked have no score and are
  never dropped by it.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from secondpass.errors import (
    CircuitOpenError,
    ConfigurationError,
    OverloadedError,
    RerankError,
    ScoringDeadlineError,
)
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.engine import EngineResult, ScoringEngine
from secondpass.pipeline.first_stage import AnyConnector, FirstStage, LexicalStage
from secondpass.pipeline.fusion import first_stage_fusion
from secondpass.pipeline.passages import TemplateLike, check_template, render_passage
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.pipeline.truncation import Truncation
from secondpass.types import Hit, PassageScore, RankedHit, RerankStatus, SearchResult

logger = logging.getLogger(__name__)

_REASON_LIMIT = 300
_REFILL_ROUNDS = 4


def dedupe_hits(hits: Sequence[Hit]) -> list[Hit]:
    """One hit per ``(index, id)``, the best-ranked one, in first-stage order.

    Input order breaks ties between equal ranks, so a caller's list that is already
    in engine order keeps it.
    """
    best: dict[tuple[str, str], tuple[int, int, Hit]] = {}
    for position, hit in enumerate(hits):
        kept = best.get(hit.key)
        if kept is None or (hit.rank, position) < kept[:2]:
            best[hit.key] = (hit.rank, position, hit)
    return [entry[2] for entry in sorted(best.values(), key=lambda e: e[:2])]


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """What one search or rerank call asked for, threaded through the helpers as one value."""

    query: str
    k: int | None  # page size; None: everything from ``offset`` on
    offset: int
    started: float  # time.perf_counter() when the call began
    deadline_at: float | None  # time.perf_counter() by which the answer is due
    # an LLM reranker's per-call instruction, as the engine takes it (None: the default)
    truncation: Truncation | None = None

    def engine_deadline(self) -> float | None:
        """The deadline on the engine's clock (absolute ``time.monotonic()`` seconds)."""
        if self.deadline_at is None:
            return None
        return time.monotonic() + (self.deadline_at - time.perf_counter())


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What one request will rerank, decided before any model call."""

    to_score: tuple[Hit, ...]  # window head the engine will score, first-stage order
    items: tuple[tuple[str, str, str], ...]  # (index, id, rendered text) per ``to_score`` hit
    unscored: tuple[Hit, ...]  # rest of the window (budget) and past the window, first-stage order
    window: int  # hits in the rerank window after dedupe
    partial_reason: str | None


class Retriever:
    """Search an engine and rerank its top hits with a cross-encoder.

    ``connector`` (a ``Connector`` or ``AsyncConnector``) fetches the first stage,
    unless ``first_stage`` (e.g. a :class:`~secondpass.pipeline.first_stage.HybridStage`)
    is given; it may be ``None`` when the retriever only serves :meth:`rerank_hits`.
    ``window`` hits are reranked; ``rank_by`` picks the raw logit or the
    normalised score for ordering and for ``min_score``.

    Scoring goes through ``engine`` (a
    :class:`~secondpass.pipeline.engine.ScoringEngine`, which several retrievers
    and front-ends may share so their passages share one batch queue), or through
    one built from ``scorer``, ``cache`` and ``breaker`` when no engine is given.
    ``breaker`` (optional, may be shared by several engines on one scorer)
    records each scoring failure or deadline overrun and each success; while it
    is open, reranking is skipped without calling the scorer.

    ``deadline_ms`` is a hard limit counted from the start of the call, first
    stage included: the first stage gets it as an absolute deadline for its
    engine calls and raises :class:`~secondpass.errors.SearchDeadlineError` (a
    ``BackendUnavailableError``; there are no hits to fall back on) when the
    engine does not answer by then. Reranking gets what the first stage left of
    it, and past it the answer is the first-stage order
    (``mode="best_effort"``) or :class:`RerankError` (``mode="required"``).
    ``latency_budget_ms`` is a soft target: the engine measures scoring
    throughput and the retriever reranks only as many of the window's hits as fit
    in what is left of the budget after the first stage (``status="partial"``);
    until there is a first measurement it reranks the whole window. The budget
    counts every window passage as a model call (cache hits are not known in
    advance), so it errs on the fast side.

    Construction does no I/O and starts no thread; the engine starts on the first
    request. Call :meth:`close` (or use ``with``) to stop an engine the retriever
    built itself (a shared ``engine`` is its owner's to close).

    Example:
        >>> retriever = Retriever(connector=connector, scorer=scorer, window=50)  # doctest: +SKIP
        >>> result = retriever.search("what do cats eat", k=10)  # doctest: +SKIP
        >>> result.status, [h.hit.id for h in result.hits]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        connector: AnyConnector | None = None,
        scorer: Scorer | None = None,
        cache: ScoreCache | None = None,
        template: TemplateLike | None = None,
        window: int = 100,
        mode: Literal["best_effort", "required"] = "best_effort",
        deadline_ms: float | None = None,
        latency_budget_ms: float | None = None,
        rank_by: Literal["normalized", "raw"] = "normalized",
        min_score: float | None = None,
        first_stage: FirstStage | None = None,
        breaker: CircuitBreaker | None = None,
        engine: ScoringEngine | None = None,
    ) -> None:
        if window < 1:
            msg = f"window must be >= 1, got {window}"
            raise ConfigurationError(msg)
        if mode not in ("best_effort", "required"):
            msg = f"mode must be 'best_effort' or 'required', got {mode!r}"
            raise ConfigurationError(msg)
        if rank_by not in ("normalized", "raw"):
            msg = f"rank_by must be 'normalized' or 'raw', got {rank_by!r}"
            raise ConfigurationError(msg)
        for name, value in (("deadline_ms", deadline_ms), ("latency_budget_ms", latency_budget_ms)):
            if value is not None and not value > 0:
                msg = f"{name} must be > 0 or None, got {value}"
                raise ConfigurationError(msg)
        if min_score is not None and not math.isfinite(min_score):
            msg = f"min_score must be a finite number or None, got {min_score}"
            raise ConfigurationError(msg)
        check_template(template)
        if engine is None:
            if scorer is None:
                msg = "pass scorer= (with optional cache= and breaker=) or a shared engine="
                raise ConfigurationError(msg)
            engine = ScoringEngine(scorer=scorer, cache=cache, breaker=breaker)
            self._owns_engine = True
        elif scorer is not None or cache is not None or breaker is not None:
            msg = "pass either engine= or scorer=/cache=/breaker=, not both: the engine has its own"
            raise ConfigurationError(msg)
        else:
            self._owns_engine = False
        self.engine = engine
        self.connector = connector
        self.template = template
        self.window = window
        self.mode = mode
        self.deadline_ms = deadline_ms
        self.latency_budget_ms = latency_budget_ms
        self.rank_by = rank_by
        self.min_score = min_score
        if first_stage is None and connector is not None:
            first_stage = LexicalStage(connector)
        self.first_stage = first_stage

    @property
    def scorer(self) -> Scorer:
        """The engine's scorer."""
        return self.engine.scorer

    @property
    def cache(self) -> ScoreCache | None:
        """The engine's score cache."""
        return self.engine.cache

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The engine's circuit breaker."""
        return self.engine.breaker

    # ------------------------------------------------------------------ public API

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Sequence[Mapping[str, Any]] | None = None,
        body: Mapping[str, Any] | None = None,
        deadline_ms: float | None = None,
        instruction: str | None = None,
    ) -> SearchResult:
        """Fetch the first stage and return hits ``offset .. offset + k`` of the reranked order.

        ``instruction`` is an LLM reranker's task instruction for this call
        (``None``: the model's default); a model that takes none refuses it
        with :class:`~secondpass.errors.ConfigurationError`.
        """
        call = self._call(query, k, offset, deadline_ms, instruction)
        hits = self._fetch(call, max(self.window, offset + k), tuple(filters or ()), body)
        first_stage_ms = (time.perf_counter() - call.started) * 1000
        return _with_first_stage(self._rerank(call, hits), first_stage_ms, call.started)

    async def asearch(
        self,
        query: str,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Sequence[Mapping[str, Any]] | None = None,
        body: Mapping[str, Any] | None = None,
        deadline_ms: float | None = None,
        instruction: str | None = None,
    ) -> SearchResult:
        """The asyncio variant of :meth:`search`; the event loop never waits on the model."""
        call = self._call(query, k, offset, deadline_ms, instruction)
        hits = await self._afetch(call, max(self.window, offset + k), tuple(filters or ()), body)
        first_stage_ms = (time.perf_counter() - call.started) * 1000
        return _with_first_stage(await self._arerank(call, hits), first_stage_ms, call.started)

    async def afirst_stage(
        self,
        query: str,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Sequence[Mapping[str, Any]] | None = None,
        body: Mapping[str, Any] | None = None,
        deadline_ms: float | None = None,
        reason: str = "shadow",
    ) -> tuple[list[Hit], SearchResult]:
        """The first stage of :meth:`asearch` without scoring: (window hits, first-stage page).

        For shadow mode (docs/rollout.md): the caller answers with the page
        (status ``skipped`` with ``reason``; the same hits and order as a search
        whose rerank was skipped) and reranks the hits later with
        :meth:`arerank_hits`.
        """
        call = self._call(query, k, offset, deadline_ms, None)
        hits = await self._afetch(call, max(self.window, offset + k), tuple(filters or ()), body)
        first_stage_ms = (time.perf_counter() - call.started) * 1000
        plan = self._plan(call, hits)
        order = [(hit, None, None) for hit in (*plan.to_score, *plan.unscored)]
        page = SearchResult(
            hits=_page(order, call.k, call.offset),
            status="skipped",
            reason=reason,
            timings_ms=_timings({}, call.started),
            window=plan.window,
            reranked=0,
        )
        return hits, _with_first_stage(page, first_stage_ms, call.started)

    def rerank_hits(
        self,
        query: str,
        hits: Sequence[Hit],
        *,
        k: int | None = None,
        offset: int = 0,
        deadline_ms: float | None = None,
        instruction: str | None = None,
    ) -> SearchResult:
        """Rerank hits someone else fetched (e.g. the drop-in proxy) and return a page.

        ``hits`` are in first-stage order; the first ``window`` distinct ones are
        reranked and the rest follow in their given order. ``k=None`` returns
        everything from ``offset`` on. ``deadline_ms`` counts from this call.
        ``instruction`` is as in :meth:`search`.
        """
        return self._rerank(self._call(query, k, offset, deadline_ms, instruction), hits)

    async def arerank_hits(
        self,
        query: str,
        hits: Sequence[Hit],
        *,
        k: int | None = None,
        offset: int = 0,
        deadline_ms: float | None = None,
        instruction: str | None = None,
    ) -> SearchResult:
        """The asyncio variant of :meth:`rerank_hits`; cancelling it drops its queued passages."""
        return await self._arerank(self._call(query, k, offset, deadline_ms, instruction), hits)

    def close(self) -> None:
        """Stop the engine this retriever built (a shared one is left running). Idempotent."""
        if self._owns_engine:
            self.engine.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- the request path

    def _call(
        self,
        query: str,
        k: int | None,
        offset: int,
        deadline_ms: float | None,
        instruction: str | None = None,
    ) -> _Call:
        """Check the page arguments and start the call's clock."""
        started = time.perf_counter()
        _check_page(k, offset)
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        if deadline_ms is not None and not deadline_ms > 0:
            msg = f"deadline_ms must be > 0, got {deadline_ms}"
            raise ConfigurationError(msg)
        deadline_at = None if deadline_ms is None else started + deadline_ms / 1000
        truncation = None if instruction is None else Truncation(instruction=instruction)
        return _Call(
            query=query,
            k=k,
            offset=offset,
            started=started,
            deadline_at=deadline_at,
            truncation=truncation,
        )

    def _fetch(
        self, call: _Call, want: int, filters: tuple[Mapping[str, Any], ...], body: Mapping[str, Any] | None
    ) -> list[Hit]:
        """First stage: ``want`` distinct hits (asking again if duplicates cost some).

        The call's deadline goes with every request, so the engine calls (refills
        included) end by it with :class:`~secondpass.errors.SearchDeadlineError`.
        """
        stage = self._stage()
        extra = _deadline_kwargs(stage.retrieve, call)
        size = want
        hits = stage.retrieve(call.query, size=size, filters=filters, body=body, **extra)
        for _ in range(_REFILL_ROUNDS):
            bigger = _refill_size(hits, size, want)
            if bigger is None:
                break
            size = bigger
            hits = stage.retrieve(call.query, size=size, filters=filters, body=body, **extra)
        return hits

    async def _afetch(
        self, call: _Call, want: int, filters: tuple[Mapping[str, Any], ...], body: Mapping[str, Any] | None
    ) -> list[Hit]:
        """The asyncio twin of :meth:`_fetch`; cancelling the call cancels the engine request."""
        stage = self._stage()
        extra = _deadline_kwargs(stage.aretrieve, call)
        size = want
        hits = await stage.aretrieve(call.query, size=size, filters=filters, body=body, **extra)
        for _ in range(_REFILL_ROUNDS):
            bigger = _refill_size(hits, size, want)
            if bigger is None:
                break
            size = bigger
            hits = await stage.aretrieve(call.query, size=size, filters=filters, body=body, **extra)
        return hits

    def _rerank(self, call: _Call, hits: Sequence[Hit]) -> SearchResult:
        plan, early = self._prepare(call, hits)
        if early is not None:
            return early
        try:
            scored = self.engine.score_sync(
                call.query, plan.items, deadline=call.engine_deadline(), truncation=call.truncation
            )
        except Exception as exc:  # noqa: BLE001 - any scoring fault degrades, never crashes search
            if call.truncation is not None and isinstance(exc, ConfigurationError):
                raise  # the caller's instruction is wrong: an answer, not a degraded ranking
            return self._unscored(call, plan, exc)
        return self._finish(call, plan, scored)

    async def _arerank(self, call: _Call, hits: Sequence[Hit]) -> SearchResult:
        """The asyncio twin of :meth:`_rerank`: the same steps, awaiting the engine."""
        plan, early = self._prepare(call, hits)
        if early is not None:
            return early
        try:
            scored = await self.engine.score(
                call.query, plan.items, deadline=call.engine_deadline(), truncation=call.truncation
            )
        except Exception as exc:  # noqa: BLE001 - any scoring fault degrades, never crashes search
            if call.truncation is not None and isinstance(exc, ConfigurationError):
                raise  # the caller's instruction is wrong: an answer, not a degraded ranking
            return self._unscored(call, plan, exc)
        return self._finish(call, plan, scored)

    def _prepare(self, call: _Call, hits: Sequence[Hit]) -> tuple[_Plan, SearchResult | None]:
        """The plan, and the answer when the engine must not (or need not) be asked."""
        plan = self._plan(call, hits)
        early: SearchResult | None = None
        if not plan.items:  # nothing to score: the engine is not even started
            early = self._finish(call, plan, None)
        elif call.deadline_at is not None and time.perf_counter() >= call.deadline_at:
            reason = _spent_reason(call)
            early = self._degrade(call, plan, "skipped", reason, None)
        return plan, early

    def _plan(self, call: _Call, hits: Sequence[Hit]) -> _Plan:
        """Dedupe, cut the window, size it to the latency budget, render the passages."""
        ordered = dedupe_hits(hits)
        window = ordered[: self.window]
        beyond = ordered[self.window :]
        fit = self._budget_fit(call)
        partial_reason = None
        if fit is not None and fit < len(window):
            partial_reason = (
                f"latency budget of {self.latency_budget_ms:g} ms: reranked {fit} of "
                f"{len(window)} window hits (estimated "
                f"{self.engine.throughput() or 0:.0f} passages/s)"
            )
            window, beyond = window[:fit], window[fit:] + beyond
        return _Plan(
            to_score=tuple(window),
            items=tuple((hit.index, hit.id, render_passage(hit, self.template)) for hit in window),
            unscored=tuple(beyond),
            window=min(len(ordered), self.window),
            partial_reason=partial_reason,
        )

    def _budget_fit(self, call: _Call) -> int | None:
        """Window hits the latency budget allows; ``None`` means no limit.

        At least one hit is always tried (when any time is left), so a single slow
        outlier cannot freeze the estimate by making every later request skip.
        """
        if self.latency_budget_ms is None:
            return None
        rate = self.engine.throughput()
        if rate is None:
            return None
        budget_left = call.started + self.latency_budget_ms / 1000 - time.perf_counter()
        if call.deadline_at is not None:
            budget_left = min(budget_left, call.deadline_at - time.perf_counter())
        return max(int(rate * max(budget_left, 0.0)), 1)

    def _finish(self, call: _Call, plan: _Plan, scored: EngineResult | None) -> SearchResult:
        """Order reranked hits by score, append the unscored ones, cut the page."""
        scores = () if scored is None else scored.scores
        for score in scores:
            if not (math.isfinite(score.raw) and math.isfinite(score.normalized)):
                msg = f"scorer returned a non-finite score ({score.raw!r}, {score.normalized!r})"
                return self._unscored(call, plan, RerankError(msg))
        values = [self._value(ps) for ps in scores]
        fusion = first_stage_fusion(self.scorer)
        # A scorer that asks for it ranks by RRF with the first-stage order (the offline
        # fallback does); min_score still reads the scorer's own value, on the rank_by scale.
        ranking = values if fusion is None or not values else fusion.fuse(plan.to_score, values)
        ranked = sorted(
            zip(plan.to_score, ranking, scores, values, strict=True),
            key=lambda item: (-item[1], item[0].rank, item[0].index, item[0].id),
        )
        if self.min_score is not None:
            ranked = [item for item in ranked if item[3] >= self.min_score]
        order: list[tuple[Hit, float | None, PassageScore | None]] = [
            (hit, value, ps) for hit, value, ps, _ in ranked
        ]
        order.extend((hit, None, None) for hit in plan.unscored)
        status: RerankStatus = "ok"
        reason = None
        if plan.partial_reason is not None:
            status, reason = "partial", plan.partial_reason
        return SearchResult(
            hits=_page(order, call.k, call.offset),
            status=status,
            reason=reason,
            timings_ms=_timings({} if scored is None else scored.timings_ms, call.started),
            cache_hits=0 if scored is None else scored.cache_hits,
            cache_misses=0 if scored is None else scored.cache_misses,
            window=plan.window,
            reranked=len(plan.to_score),
        )

    def _unscored(self, call: _Call, plan: _Plan, exc: Exception) -> SearchResult:
        """First-stage order with why scoring did not happen, or the error in required mode.

        Refusals that carry a ``Retry-After`` (breaker open, queue overloaded) are
        raised as they are in required mode; every other failure becomes a
        :class:`RerankError` naming the cause.
        """
        if isinstance(exc, (CircuitOpenError, OverloadedError)):
            if self.mode == "required":
                raise exc
            status: RerankStatus = "skipped"
            prefix = "" if isinstance(exc, CircuitOpenError) else "overloaded: "
            # The breaker logs once per opening, the batcher counts refusals: no line per request.
            return self._degrade(call, plan, status, f"{prefix}{exc}", None, log=False)
        if isinstance(exc, ScoringDeadlineError) and call.deadline_at is not None:
            return self._degrade(call, plan, "failed", _deadline_reason(call), exc)
        return self._degrade(call, plan, "failed", _failure_reason(exc), _root_cause(exc))

    def _degrade(
        self,
        call: _Call,
        plan: _Plan,
        status: RerankStatus,
        reason: str,
        exc: BaseException | None,
        *,
        log: bool = True,
    ) -> SearchResult:
        """First-stage order with the reason, or :class:`RerankError` in required mode."""
        if self.mode == "required":
            raise RerankError(reason) from exc
        if log:
            logger.warning("rerank %s, serving first-stage order: %s", status, reason)
        order = [(hit, None, None) for hit in (*plan.to_score, *plan.unscored)]
        return SearchResult(
            hits=_page(order, call.k, call.offset),
            status=status,
            reason=reason,
            timings_ms=_timings({}, call.started),
            window=plan.window,
            reranked=0,
        )

    # ------------------------------------------------------------------ helpers

    def _value(self, score: PassageScore) -> float:
        return score.normalized if self.rank_by == "normalized" else score.raw

    def _stage(self) -> FirstStage:
        if self.first_stage is None:
            msg = "this Retriever has no connector or first_stage: pass one to search, or use rerank_hits"
            raise ConfigurationError(msg)
        return self.first_stage


def _deadline_kwargs(method: Callable[..., Any], call: _Call) -> dict[str, float]:
    """``{"deadline": ...}`` for a stage's ``retrieve``/``aretrieve``, or nothing to pass.

    A first stage written before ``deadline`` joined the protocol does not take
    the keyword; it keeps working, bounded by its own connection settings only.
    """
    deadline = call.engine_deadline()
    if deadline is None:
        return {}
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.name == "deadline" or p.kind is p.VAR_KEYWORD for p in params):
        return {"deadline": deadline}
    return {}


def _refill_size(hits: Sequence[Hit], size: int, want: int) -> int | None:
    """The larger first-stage size to ask for, or ``None`` when ``hits`` will do.

    Pages are cut from the distinct hits, so a first stage that returned
    duplicates of one document must be asked for more until ``want`` distinct
    hits are in hand (or it runs out). Otherwise a deep page would see fewer
    documents than the big page it is part of. The size at least doubles per
    round, so a few rounds cover any realistic share of duplicates.
    """
    if len(hits) < size:
        return None  # the engine has no more
    distinct = len({hit.key for hit in hits})
    return None if distinct >= want else max(2 * size, size + want - distinct)


def _check_page(k: int | None, offset: int) -> None:
    if k is not None and k < 0:
        msg = f"k must be >= 0, got {k}"
        raise ConfigurationError(msg)
    if offset < 0:
        msg = f"offset must be >= 0, got {offset}"
        raise ConfigurationError(msg)


def _spent_reason(call: _Call) -> str:
    spent = (time.perf_counter() - call.started) * 1000
    return f"deadline already spent before reranking ({spent:.0f} ms elapsed)"


def _deadline_reason(call: _Call) -> str:
    total = ((call.deadline_at or call.started) - call.started) * 1000
    return f"reranking did not finish within the deadline of {total:.0f} ms"


def _root_cause(exc: BaseException) -> BaseException:
    """The model's own exception behind a batch failure the batcher wrapped in RerankError."""
    cause = exc.__cause__
    return cause if isinstance(exc, RerankError) and cause is not None else exc


def _failure_reason(exc: BaseException) -> str:
    root = _root_cause(exc)
    text = f"scoring failed: {type(root).__name__}: {root}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def _page(
    order: Sequence[tuple[Hit, float | None, PassageScore | None]], k: int | None, offset: int
) -> tuple[RankedHit, ...]:
    stop = None if k is None else offset + k
    return tuple(
        RankedHit(hit=hit, rank=position, score=value, rerank=ps)
        for position, (hit, value, ps) in enumerate(order[offset:stop], start=offset + 1)
    )


def _timings(parts: Mapping[str, float], started: float) -> dict[str, float]:
    return {
        "cache": float(parts.get("cache", 0.0)),
        "tokenize": float(parts.get("tokenize", 0.0)),
        "model": float(parts.get("model", 0.0)),
        "total": (time.perf_counter() - started) * 1000,
    }


def _with_first_stage(result: SearchResult, first_stage_ms: float, started: float) -> SearchResult:
    timings = {"first_stage": first_stage_ms, **result.timings_ms}
    timings["total"] = (time.perf_counter() - started) * 1000
    return dataclasses.replace(result, timings_ms=timings)
