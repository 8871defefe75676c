"""The retrieval facade: first stage -> dedupe -> passages -> cache -> score misses -> order -> top-K.

Read :meth:`Retriever.search` and :meth:`Retriever.rerank_hits` top to bottom and
you have the whole request path. Everything engine- or model-specific sits behind
the protocols in :mod:`secondpass.connectors.base` and
:mod:`secondpass.pipeline.protocols`; this module never imports an engine client
or torch.

Guarantees a caller can rely on:

* **Order.** Reranked hits come first, by score (descending), ties broken by
  first-stage rank, then index, then id. Hits the model did not score (past the
  window, or past what the latency budget allowed) follow in first-stage order.
  Because that order is a pure function of the first-stage list and the scores,
  pages cut from it with ``offset``/``k`` concatenate to the one big page.
* **Degraded answers are never silent.** If scoring fails or overruns the
  deadline, the first-stage order comes back with ``status`` ``"failed"`` (or
  ``"skipped"`` when there was no time left to try) and a ``reason``, within
  the deadline: scoring runs in a worker thread that the caller stops waiting
  for. ``mode="required"`` raises :class:`~secondpass.errors.RerankError` instead.
* **A failing scorer is not called again and again.** With a
  :class:`~secondpass.pipeline.breaker.CircuitBreaker`, every scorer failure or
  deadline overrun counts against it; once it opens, requests skip scoring at
  once (``status="skipped"``, reason ``"circuit open: ..."``, or
  :class:`~secondpass.errors.CircuitOpenError` in required mode) until a single
  probe request is let through and succeeds. Sync and asyncio calls share it.
  A scoring call the caller gave up on still finishes in the background and
  writes its scores to the cache, so the next identical request is fast.
* **Empty passages** (empty or whitespace-only after rendering) are kept and get
  :data:`~secondpass.types.EMPTY_PASSAGE_RAW_SCORE` (normalised 0.0) without
  calling the model, so they rank last among reranked hits.
* **min_score** drops reranked hits whose ranking score (raw or normalised, per
  ``rank_by``) is below it. Hits that were not reranked have no score and are
  never dropped by it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Literal

from secondpass.errors import CircuitOpenError, ConfigurationError, RerankError
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.cached_scoring import score_with_cache
from secondpass.pipeline.first_stage import AnyConnector, FirstStage, LexicalStage
from secondpass.pipeline.passages import PassageTemplate
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.types import (
    EMPTY_PASSAGE_RAW_SCORE,
    Hit,
    PassageScore,
    RankedHit,
    RerankStatus,
    SearchResult,
)

logger = logging.getLogger(__name__)

TemplateLike = PassageTemplate | str | Callable[[Hit], str]
"""How a hit becomes the passage the model reads.

A :class:`~secondpass.pipeline.passages.PassageTemplate` (field order, token
budgets per field, labels) renders ``hit.fields``; a string is a ``str.format``
template over ``hit.fields`` (``"{title}: {body}"``, a field the hit lacks
renders as ``""``); a callable gets the hit and returns the text. ``None`` joins
the non-blank values of ``hit.fields`` with newlines, in the connector's order.
"""

_EMPTY_SCORE = PassageScore(raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0)
_SCORING_THREADS = 4
_EWMA_ALPHA = 0.3
_REASON_LIMIT = 300
_REFILL_ROUNDS = 4


class _BlankMissing(dict[str, str]):
    """Format mapping that renders a field the hit does not have as empty text."""

    def __missing__(self, key: str) -> str:
        return ""


def _check_template(template: TemplateLike | None) -> None:
    """Reject string templates that do more than name fields.

    Attribute or index lookups (``{title.__class__}``) would let a template reach
    into Python objects; plain names are all a passage needs.
    """
    if template is None or callable(template) or isinstance(template, PassageTemplate):
        return
    if not isinstance(template, str):
        msg = "template must be a PassageTemplate, a str.format string, a callable(Hit) -> str, or None"
        raise ConfigurationError(msg)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        msg = f"template is not a valid format string: {exc}"
        raise ConfigurationError(msg) from exc
    for _, name, _, _ in parsed:
        if name is not None and not name.isidentifier():
            msg = f"template fields must be plain field names, got {{{name}}}"
            raise ConfigurationError(msg)


def render_passage(hit: Hit, template: TemplateLike | None = None) -> str:
    """Return the text the model scores for ``hit`` (see :data:`TemplateLike`).

    Example:
        >>> render_passage(Hit("d", "1", 1.0, 1, {"title": "Cats", "body": "purr"}), "{title}: {body}")
        'Cats: purr'
    """
    if template is None:
        return "\n".join(v.strip() for v in hit.fields.values() if v and v.strip())
    if isinstance(template, PassageTemplate):
        return template.render(hit.fields)
    if callable(template):
        return str(template(hit))
    return template.format_map(_BlankMissing(hit.fields)).strip()


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


class _Throughput:
    """Exponentially weighted estimate of scoring speed, in passages per second.

    Updated after every model call (including ones the caller stopped waiting
    for, which are exactly the slow ones worth learning from).
    """

    def __init__(self, alpha: float = _EWMA_ALPHA) -> None:
        self.alpha = alpha
        self._rate: float | None = None
        self._lock = threading.Lock()

    @property
    def passages_per_s(self) -> float | None:
        return self._rate

    def observe(self, passages: int, seconds: float) -> None:
        if passages <= 0 or seconds <= 0:
            return
        rate = passages / seconds
        with self._lock:
            self._rate = rate if self._rate is None else (
                self.alpha * rate + (1 - self.alpha) * self._rate
            )

    def fits(self, seconds: float) -> int | None:
        """How many passages fit in ``seconds``; ``None`` before any measurement."""
        rate = self._rate
        if rate is None:
            return None
        return int(rate * max(seconds, 0.0))


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What one request will rerank, decided before any model call."""

    query: str
    to_score: tuple[Hit, ...]  # window head the model (or cache) will score, first-stage order
    texts: tuple[str, ...]  # rendered passage per ``to_score`` hit
    items: tuple[tuple[str, str, str], ...]  # (index, id, text) of the non-empty passages
    unscored: tuple[Hit, ...]  # rest of the window (budget) and past the window, first-stage order
    window: int  # hits in the rerank window after dedupe
    partial_reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class _Scored:
    """Scores for the plan's non-empty passages, in input order, plus what it cost."""

    scores: tuple[PassageScore, ...]
    cache_hits: int
    cache_misses: int
    timings_ms: Mapping[str, float]


def _score_items(
    scorer: Scorer,
    cache: ScoreCache | None,
    query: str,
    items: Sequence[tuple[str, str, str]],
    throughput: _Throughput,
) -> _Scored:
    """Worker-thread body: one cache lookup, one model call for the misses, write-back.

    Also feeds the throughput estimate and refuses scores that cannot be ordered
    (NaN or infinite), so a broken model degrades the answer instead of
    scrambling it.
    """
    outcome = score_with_cache(scorer, cache, query, items)
    throughput.observe(outcome.scored, outcome.timings_ms.get("scorer", 0.0) / 1000)
    for score in outcome.scores:
        if not (math.isfinite(score.raw) and math.isfinite(score.normalized)):
            msg = f"scorer returned a non-finite score ({score.raw!r}, {score.normalized!r})"
            raise RerankError(msg)
    return _Scored(
        scores=outcome.scores,
        cache_hits=outcome.hits,
        cache_misses=outcome.misses,
        timings_ms=outcome.timings_ms,
    )


class Retriever:
    """Search an engine and rerank its top hits with a cross-encoder.

    ``connector`` (a ``Connector`` or ``AsyncConnector``) fetches the first stage,
    unless ``first_stage`` (e.g. a :class:`~secondpass.pipeline.first_stage.HybridStage`)
    is given; it may be ``None`` when the retriever only serves :meth:`rerank_hits`.
    ``window`` hits are reranked; ``rank_by`` picks the raw logit or the
    normalised score for ordering and for ``min_score``.

    ``deadline_ms`` is a hard limit counted from the start of the call: reranking
    gets what the first stage left of it (the first stage itself is bounded by the
    connector's own timeouts), and past it the answer is the first-stage order
    (``mode="best_effort"``) or :class:`RerankError` (``mode="required"``). ``latency_budget_ms`` is a soft target: the retriever
    keeps a running estimate of scoring throughput and reranks only as many of the
    window's hits as fit in what is left of the budget after the first stage
    (``status="partial"``); until it has a first measurement it reranks the whole
    window. The budget counts every window passage as a model call (cache hits
    are not known in advance), so it errs on the fast side.

    ``breaker`` (optional, may be shared by several retrievers on one scorer)
    records each scoring failure or deadline overrun and each success; while it
    is open, reranking is skipped without calling the scorer.

    Construction does no I/O and starts no thread; the scoring threads start on
    the first request. Call :meth:`close` (or use ``with``) to stop them.

    Example:
        >>> retriever = Retriever(connector=connector, scorer=scorer, window=50)  # doctest: +SKIP
        >>> result = retriever.search("what do cats eat", k=10)  # doctest: +SKIP
        >>> result.status, [h.hit.id for h in result.hits]  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        connector: AnyConnector | None = None,
        scorer: Scorer,
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
        _check_template(template)
        self.connector = connector
        self.scorer = scorer
        self.cache = cache
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
        self.breaker = breaker
        self.throughput = _Throughput()
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

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
    ) -> SearchResult:
        """Fetch the first stage and return hits ``offset .. offset + k`` of the reranked order."""
        started = time.perf_counter()
        _check_page(k, offset)
        hits = self._fetch(query, max(self.window, offset + k), tuple(filters or ()), body)
        first_stage_ms = (time.perf_counter() - started) * 1000
        result = self._rerank(query, hits, k, offset, started, deadline_ms)
        return _with_first_stage(result, first_stage_ms, started)

    async def asearch(
        self,
        query: str,
        k: int = 10,
        *,
        offset: int = 0,
        filters: Sequence[Mapping[str, Any]] | None = None,
        body: Mapping[str, Any] | None = None,
        deadline_ms: float | None = None,
    ) -> SearchResult:
        """The asyncio variant of :meth:`search`; the model runs in a worker thread."""
        started = time.perf_counter()
        _check_page(k, offset)
        hits = await self._afetch(query, max(self.window, offset + k), tuple(filters or ()), body)
        first_stage_ms = (time.perf_counter() - started) * 1000
        result = await self._arerank(query, hits, k, offset, started, deadline_ms)
        return _with_first_stage(result, first_stage_ms, started)

    def rerank_hits(
        self,
        query: str,
        hits: Sequence[Hit],
        *,
        k: int | None = None,
        offset: int = 0,
        deadline_ms: float | None = None,
    ) -> SearchResult:
        """Rerank hits someone else fetched (e.g. the drop-in proxy) and return a page.

        ``hits`` are in first-stage order; the first ``window`` distinct ones are
        reranked and the rest follow in their given order. ``k=None`` returns
        everything from ``offset`` on. ``deadline_ms`` counts from this call.
        """
        started = time.perf_counter()
        return self._rerank(query, hits, k, offset, started, deadline_ms)

    async def arerank_hits(
        self,
        query: str,
        hits: Sequence[Hit],
        *,
        k: int | None = None,
        offset: int = 0,
        deadline_ms: float | None = None,
    ) -> SearchResult:
        """The asyncio variant of :meth:`rerank_hits`; the model runs in a worker thread."""
        started = time.perf_counter()
        return await self._arerank(query, hits, k, offset, started, deadline_ms)

    def close(self) -> None:
        """Stop the scoring threads (without waiting for abandoned calls). Idempotent."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- the request path

    def _fetch(
        self, query: str, want: int, filters: tuple[Mapping[str, Any], ...], body: Mapping[str, Any] | None
    ) -> list[Hit]:
        """First stage: ``want`` distinct hits (asking again if duplicates cost some)."""
        stage = self._stage()
        size = want
        hits = stage.retrieve(query, size=size, filters=filters, body=body)
        for _ in range(_REFILL_ROUNDS):
            bigger = _refill_size(hits, size, want)
            if bigger is None:
                break
            size = bigger
            hits = stage.retrieve(query, size=size, filters=filters, body=body)
        return hits

    async def _afetch(
        self, query: str, want: int, filters: tuple[Mapping[str, Any], ...], body: Mapping[str, Any] | None
    ) -> list[Hit]:
        """The asyncio twin of :meth:`_fetch`."""
        stage = self._stage()
        size = want
        hits = await stage.aretrieve(query, size=size, filters=filters, body=body)
        for _ in range(_REFILL_ROUNDS):
            bigger = _refill_size(hits, size, want)
            if bigger is None:
                break
            size = bigger
            hits = await stage.aretrieve(query, size=size, filters=filters, body=body)
        return hits

    def _rerank(
        self,
        query: str,
        hits: Sequence[Hit],
        k: int | None,
        offset: int,
        started: float,
        deadline_ms: float | None,
    ) -> SearchResult:
        plan, deadline_at, early = self._prepare(query, hits, k, offset, started, deadline_ms)
        if early is not None:
            return early
        future = self._submit(plan)
        try:
            scored = future.result(timeout=_time_left(deadline_at))
        except FutureTimeoutError as exc:
            future.cancel()
            return self._timed_out(plan, exc, k, offset, started, deadline_at)
        except Exception as exc:  # noqa: BLE001 - any scorer fault degrades, never crashes search
            return self._failed(plan, exc, k, offset, started)
        return self._scored(plan, scored, k, offset, started)

    async def _arerank(
        self,
        query: str,
        hits: Sequence[Hit],
        k: int | None,
        offset: int,
        started: float,
        deadline_ms: float | None,
    ) -> SearchResult:
        """The asyncio twin of :meth:`_rerank`: the same steps, awaiting the scoring thread."""
        plan, deadline_at, early = self._prepare(query, hits, k, offset, started, deadline_ms)
        if early is not None:
            return early
        future = asyncio.wrap_future(self._submit(plan))
        try:
            scored = await asyncio.wait_for(future, timeout=_time_left(deadline_at))
        except asyncio.TimeoutError as exc:
            return self._timed_out(plan, exc, k, offset, started, deadline_at)
        except Exception as exc:  # noqa: BLE001 - any scorer fault degrades, never crashes search
            return self._failed(plan, exc, k, offset, started)
        return self._scored(plan, scored, k, offset, started)

    def _prepare(
        self,
        query: str,
        hits: Sequence[Hit],
        k: int | None,
        offset: int,
        started: float,
        deadline_ms: float | None,
    ) -> tuple[_Plan, float | None, SearchResult | None]:
        """The plan, the deadline, and the answer when the model must not (or need not) run."""
        _check_page(k, offset)
        deadline_at = self._deadline_at(started, deadline_ms)
        plan = self._plan(query, hits, started, deadline_at)
        early: SearchResult | None = None
        if not plan.items:  # nothing for the model: no thread hop, no model call
            early = self._finish(plan, _Scored((), 0, 0, {}), "ok", None, k, offset, started)
        elif deadline_at is not None and time.perf_counter() >= deadline_at:
            reason = self._spent_reason(started)
            early = self._degrade(plan, "skipped", reason, None, k, offset, started)
        elif self.breaker is not None and not self.breaker.allow():
            early = self._circuit_open(plan, k, offset, started)
        return plan, deadline_at, early

    def _timed_out(
        self,
        plan: _Plan,
        exc: BaseException,
        k: int | None,
        offset: int,
        started: float,
        deadline_at: float | None,
    ) -> SearchResult:
        self._scoring_failed()
        reason = self._deadline_reason(started, deadline_at)
        return self._degrade(plan, "failed", reason, exc, k, offset, started)

    def _failed(
        self, plan: _Plan, exc: BaseException, k: int | None, offset: int, started: float
    ) -> SearchResult:
        self._scoring_failed()
        return self._degrade(plan, "failed", _failure_reason(exc), exc, k, offset, started)

    def _scored(
        self, plan: _Plan, scored: _Scored, k: int | None, offset: int, started: float
    ) -> SearchResult:
        if self.breaker is not None:
            self.breaker.record_success()
        return self._finish(plan, scored, "ok", None, k, offset, started)

    def _plan(
        self, query: str, hits: Sequence[Hit], started: float, deadline_at: float | None
    ) -> _Plan:
        """Dedupe, cut the window, size it to the latency budget, render the passages."""
        ordered = dedupe_hits(hits)
        window = ordered[: self.window]
        beyond = ordered[self.window :]
        fit = self._budget_fit(started, deadline_at)
        partial_reason = None
        if fit is not None and fit < len(window):
            partial_reason = (
                f"latency budget of {self.latency_budget_ms:g} ms: reranked {fit} of "
                f"{len(window)} window hits (estimated "
                f"{self.throughput.passages_per_s or 0:.0f} passages/s)"
            )
            window, beyond = window[:fit], window[fit:] + beyond
        texts = tuple(render_passage(hit, self.template) for hit in window)
        return _Plan(
            query=query,
            to_score=tuple(window),
            texts=texts,
            items=tuple(
                (hit.index, hit.id, text) for hit, text in zip(window, texts, strict=True) if text.strip()
            ),
            unscored=tuple(beyond),
            window=min(len(ordered), self.window),
            partial_reason=partial_reason,
        )

    def _budget_fit(self, started: float, deadline_at: float | None) -> int | None:
        """Window hits the latency budget allows; ``None`` means no limit.

        At least one hit is always tried (when any time is left), so a single slow
        outlier cannot freeze the estimate by making every later request skip.
        """
        if self.latency_budget_ms is None:
            return None
        budget_left = started + self.latency_budget_ms / 1000 - time.perf_counter()
        if deadline_at is not None:
            budget_left = min(budget_left, deadline_at - time.perf_counter())
        fit = self.throughput.fits(budget_left)
        if fit is None:
            return None
        return max(fit, 1)

    def _submit(self, plan: _Plan) -> Future[_Scored]:
        """Hand the cache lookup and the model call for the non-empty passages to a worker."""
        return self._pool().submit(
            _score_items, self.scorer, self.cache, plan.query, plan.items, self.throughput
        )

    def _finish(
        self,
        plan: _Plan,
        scored: _Scored,
        status: RerankStatus,
        reason: str | None,
        k: int | None,
        offset: int,
        started: float,
    ) -> SearchResult:
        """Order reranked hits by score, append the unscored ones, cut the page."""
        scores = iter(scored.scores)
        by_hit: list[tuple[Hit, PassageScore]] = []
        for hit, text in zip(plan.to_score, plan.texts, strict=True):
            by_hit.append((hit, next(scores) if text.strip() else _EMPTY_SCORE))
        ranked = sorted(
            ((hit, self._value(ps), ps) for hit, ps in by_hit),
            key=lambda item: (-item[1], item[0].rank, item[0].index, item[0].id),
        )
        if self.min_score is not None:
            ranked = [item for item in ranked if item[1] >= self.min_score]
        order: list[tuple[Hit, float | None, PassageScore | None]] = [*ranked]
        order.extend((hit, None, None) for hit in plan.unscored)
        if status == "ok" and plan.partial_reason is not None:
            status, reason = "partial", plan.partial_reason
        return SearchResult(
            hits=_page(order, k, offset),
            status=status,
            reason=reason,
            timings_ms=_timings(scored.timings_ms, started),
            cache_hits=scored.cache_hits,
            cache_misses=scored.cache_misses,
            window=plan.window,
            reranked=len(by_hit),
        )

    def _scoring_failed(self) -> None:
        """Count a scorer failure (or deadline overrun) against the breaker; log when it opens."""
        breaker = self.breaker
        if breaker is None:
            return
        opened_before = breaker.opened_count
        breaker.record_failure()
        if breaker.opened_count != opened_before:
            logger.warning(
                "circuit breaker opened after %d consecutive scoring failure(s); "
                "skipping reranking for %.1f s, then probing with one request",
                breaker.failure_threshold,
                breaker.reset_after_s,
            )

    def _circuit_open(self, plan: _Plan, k: int | None, offset: int, started: float) -> SearchResult:
        """First-stage order without calling the scorer (or :class:`CircuitOpenError`)."""
        assert self.breaker is not None
        wait_s = self.breaker.retry_after_s()
        reason = (
            f"circuit open: scoring failed {self.breaker.failure_threshold} or more times in a row; "
            f"next probe in {wait_s:.1f} s"
        )
        if self.mode == "required":
            raise CircuitOpenError(reason, retry_after_s=max(1, math.ceil(wait_s)))
        # One line per opening is logged by _scoring_failed; not one per skipped request.
        return self._degrade(plan, "skipped", reason, None, k, offset, started, log=False)

    def _degrade(
        self,
        plan: _Plan,
        status: RerankStatus,
        reason: str,
        exc: BaseException | None,
        k: int | None,
        offset: int,
        started: float,
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
            hits=_page(order, k, offset),
            status=status,
            reason=reason,
            timings_ms=_timings({}, started),
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

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=_SCORING_THREADS, thread_name_prefix="secondpass-rerank"
                )
            return self._executor

    def _deadline_at(self, started: float, deadline_ms: float | None) -> float | None:
        deadline_ms = self.deadline_ms if deadline_ms is None else deadline_ms
        if deadline_ms is None:
            return None
        if not deadline_ms > 0:
            msg = f"deadline_ms must be > 0, got {deadline_ms}"
            raise ConfigurationError(msg)
        return started + deadline_ms / 1000

    @staticmethod
    def _spent_reason(started: float) -> str:
        spent = (time.perf_counter() - started) * 1000
        return f"deadline already spent before reranking ({spent:.0f} ms elapsed)"

    @staticmethod
    def _deadline_reason(started: float, deadline_at: float | None) -> str:
        total = ((deadline_at or started) - started) * 1000
        return f"reranking did not finish within the deadline of {total:.0f} ms"


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


def _time_left(deadline_at: float | None) -> float | None:
    return None if deadline_at is None else deadline_at - time.perf_counter()


def _failure_reason(exc: BaseException) -> str:
    text = f"scoring failed: {type(exc).__name__}: {exc}"
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
