"""The one scoring engine: everything between a request's passages and the model.

The library facade (:class:`~secondpass.pipeline.retriever.Retriever`), the HTTP
service's rerank and search routes and the ``_search`` proxy all score through a
:class:`ScoringEngine`, so a change to how a passage is scored is made here once:

* **one cache lookup and one write-back per request.** Keys are
  :func:`~secondpass.pipeline.cache.cache_keys` of (scorer fingerprint plus the
  request's :class:`~secondpass.pipeline.truncation.Truncation`, query,
  ``(index, id, text)``); only keys that were asked for are trusted, and a cache
  that raises counts as all misses;
* **blank passages** (empty or whitespace only) get :data:`BLANK_SCORE` here and
  nowhere else: they are never looked up, never cached, never sent to the model;
* **one model call per distinct passage**: duplicates of a text are scored once;
* **cross-request batching**: the misses of every concurrent request, sync or
  async, go into one :class:`~secondpass.pipeline.batcher.DynamicBatcher` queue,
  which admits by time, schedules fairly and runs the model in its own thread;
* **the circuit breaker**: while it is open, :meth:`ScoringEngine.score` raises
  :class:`~secondpass.errors.CircuitOpenError` without touching the cache or the
  model; a forward pass that fails or overruns its deadline counts against it;
* **deadlines and cancellation**: a request's absolute ``deadline``
  (``time.monotonic()`` seconds) bounds its wait; a caller that is cancelled
  takes its queued pairs with it. A batch already running when the deadline
  passes finishes, and its scores are still written to the cache, so the next
  identical request is fast.

The batcher runs on the engine's own event loop, in a daemon thread started on
first use (construction does no I/O and starts no thread). :meth:`score` may be
awaited from any event loop and :meth:`score_sync` called from any thread; both
feed the same queue.

Example:
    >>> from secondpass.pipeline.cache import LRUScoreCache
    >>> class LengthScorer:  # a stand-in: longer passages score higher
    ...     fingerprint = "length/v1"
    ...     def score(self, query, passages, *, timings=None):
    ...         return self.score_pairs([(query, p) for p in passages])
    ...     def score_pairs(self, pairs, *, timings=None):
    ...         return [PassageScore(raw=float(len(p)), normalized=0.5) for _, p in pairs]
    >>> engine = ScoringEngine(scorer=LengthScorer(), cache=LRUScoreCache())
    >>> items = [("docs", "1", "short"), ("docs", "2", "a longer one"), ("docs", "3", " ")]
    >>> first = engine.score_sync("q", items)
    >>> second = engine.score_sync("q", items)
    >>> [s.raw for s in second.scores[:2]], first.cache_misses, second.cache_hits
    ([5.0, 12.0], 2, 2)
    >>> second.scores[2] == BLANK_SCORE
    True
    >>> engine.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from secondpass.errors import (
    CircuitOpenError,
    ConfigurationError,
    OverloadedError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
)
from secondpass.observability import tracing
from secondpass.pipeline import cpu_priority
from secondpass.pipeline.batcher import BatchingOptions, BatchObserver, DynamicBatcher
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.cache import LRUScoreCache, NullScoreCache, cache_keys
from secondpass.pipeline.passages import is_blank
from secondpass.pipeline.protocols import ScoreCache, Scorer
from secondpass.pipeline.truncation import NO_TRUNCATION, TruncatingScorer, Truncation
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

logger = logging.getLogger(__name__)

__all__ = ["BLANK_SCORE", "EngineResult", "ScoringEngine", "background_work", "request_arrived"]

BLANK_SCORE = PassageScore(raw=EMPTY_PASSAGE_RAW_SCORE, normalized=0.0, chunks=0)
"""The score of a blank passage: ranks last, normalised 0.0, no chunk was scored."""

_CLOSE_TIMEOUT_S = 30.0
_NO_DEADLINE_S = 365 * 24 * 3600.0  # "no deadline" for the batcher, which needs one

Item = tuple[str, str, str]
"""``(index, document id, exact passage text)``; the rerank routes use ``("", "", text)``."""

_arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "secondpass_request_arrived", default=None
)


@contextlib.contextmanager
def request_arrived(at: float) -> Iterator[None]:
    """Date the requests scored in this context from ``at`` (``time.monotonic()`` seconds).

    Why: a request's time limits must count from when it reached the
    front-end, not from when it reached the engine; under load, reading and
    parsing its body on a busy event loop can take a good part of them. A
    front-end wraps the handling of one request in this (the service's input
    middleware does, on arrival); :meth:`ScoringEngine.score` then counts
    ``timeout_s``, and the batcher its ``max_queue_s``, from ``at``. Without
    it both count from the call.

    Example:
        >>> with request_arrived(time.monotonic() - 1.0):
        ...     round(time.monotonic() - _arrived.get())
        1
    """
    token = _arrived.set(at)
    try:
        yield
    finally:
        _arrived.reset(token)


_background: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "secondpass_background_work", default=False
)


@contextlib.contextmanager
def background_work() -> Iterator[None]:
    """Score the requests of this context as background work (shadow reranks).

    Why: the circuit breaker guards live traffic. Background work that misses
    its deadline or fails while live traffic is fine must not open it (live
    reranking would then be skipped for ``breaker_reset_s``), nor may its
    successes close it or take the half-open probe. Background work is
    refused (``CircuitOpenError``) while the breaker is not closed, and its
    outcomes are never counted. It is admitted, batched, cached and cancelled
    like any other work.
    """
    token = _background.set(True)
    try:
        yield
    finally:
        _background.reset(token)


@dataclass(frozen=True, slots=True)
class EngineResult:
    """Scores for one request, in input order, and what producing them cost.

    ``cached[i]`` says whether item ``i`` came from the cache. ``cache_hits`` and
    ``cache_misses`` count non-blank items (a duplicate counts each time it
    appears); ``scored`` is how many distinct passages went to the model.
    ``timings_ms`` keys: ``cache`` (lookup plus write-back), ``queue`` (waiting
    for a batch), ``tokenize`` and ``model`` (of the batches that carried this
    request's pairs, shared with the requests batched alongside), ``scoring``
    (wall time from enqueueing to the last score).
    """

    scores: tuple[PassageScore, ...]
    cached: tuple[bool, ...]
    cache_hits: int
    cache_misses: int
    scored: int
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def truncated(self) -> tuple[int, ...]:
        """Positions of the passages the model saw only in part (too long for its window)."""
        return tuple(i for i, score in enumerate(self.scores) if score.truncated)


_CALIBRATION_WORDS = (
    "ranking passages against a query measures how fast the model scores text of "
    "ordinary length so admission can plan in seconds rather than pairs"
).split()
"""Words of the synthetic passages :meth:`ScoringEngine.calibrate` scores."""


class _Request:
    """What the model thread learns about one request's pairs, read by the engine's loop.

    ``running`` counts batches holding its pairs in the model now; ``done``
    collects every score computed for it, so that scores computed for a caller
    that has gone (deadline passed, client left) can still be cached; ``late``
    is called (from the model thread) when the last such batch finishes.
    """

    __slots__ = (
        "batch_s", "batches", "done", "late", "lock", "model_ms", "running", "started",
        "tokenize_ms", "truncation",
    )  # fmt: skip

    def __init__(self, truncation: Truncation = NO_TRUNCATION) -> None:
        self.truncation = truncation  # how this request's passages are cut, in every batch
        self.lock = threading.Lock()
        self.running = 0
        self.started = False
        self.done: dict[str, PassageScore] = {}
        self.late: Callable[[], None] | None = None
        self.batch_s = 0.0
        self.tokenize_ms = 0.0
        self.model_ms = 0.0
        # (start, end wall ns, pairs in the batch) per batch that held its pairs; only
        # filled while tracing, for the request's queue-wait and model spans
        self.batches: list[tuple[int, int, int]] | None = [] if tracing.enabled() else None


class _Pair(tuple[str, str]):
    """A ``(query, passage)`` pair that remembers which request it belongs to."""

    request: _Request

    def __new__(cls, query: str, passage: str, request: _Request) -> _Pair:
        pair = super().__new__(cls, (query, passage))
        pair.request = request
        return pair


class _AttributingScorer:
    """The scorer as the batcher sees it: charges each batch to the requests in it.

    The batcher mixes requests in one forward pass and reports batch-level
    figures only; a request's timings, whether its pairs were in the model when
    its deadline passed, and the scores computed for a caller that has gone
    come from here.
    """

    def __init__(self, scorer: Scorer) -> None:
        self._scorer = scorer
        self.busy = 0  # batches in the model now (0 or 1: the batcher has one model thread)

    @property
    def fingerprint(self) -> str:
        return self._scorer.fingerprint

    def score(
        self, query: str, passages: Sequence[str], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        return self.score_pairs([(query, p) for p in passages], timings=timings)

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        requests = list({id(p.request): p.request for p in pairs if isinstance(p, _Pair)}.values())
        for request in requests:
            with request.lock:
                request.running += 1
                request.started = True
        local: dict[str, float] = {}
        started = time.perf_counter()
        started_ns = tracing.now_ns() if tracing.enabled() else 0
        scores: list[PassageScore] = []
        self.busy += 1
        plain = [(q, p) for q, p in pairs]
        cuts = [p.request.truncation if isinstance(p, _Pair) else NO_TRUNCATION for p in pairs]
        try:
            if any(not cut.is_default for cut in cuts):
                assert isinstance(self._scorer, TruncatingScorer)  # checked when submitted
                scores = self._scorer.score_truncated(plain, cuts, timings=local)
            else:
                scores = self._scorer.score_pairs(plain, timings=local)
        finally:
            self.busy -= 1
            elapsed = time.perf_counter() - started
            if len(scores) == len(pairs):
                for pair, score in zip(pairs, scores, strict=True):
                    if isinstance(pair, _Pair):
                        pair.request.done[pair[1]] = score
            for request in requests:
                with request.lock:
                    request.running -= 1
                    request.batch_s += elapsed
                    request.tokenize_ms += local.get("tokenize_ms", 0.0)
                    request.model_ms += local.get("model_ms", 0.0)
                    if request.batches is not None and started_ns:
                        request.batches.append((started_ns, tracing.now_ns(), len(pairs)))
                    late = request.late if request.running == 0 else None
                if late is not None:
                    late()
        if timings is not None:
            for key, value in local.items():
                timings[key] = timings.get(key, 0.0) + value
        return scores


class ScoringEngine:
    """Cache, blank handling, batching, breaker and deadlines between passages and the model.

    ``scorer`` and ``cache`` are used as given (``cache=None`` scores everything);
    ``breaker`` may be shared with other engines on the same scorer. ``options``
    (:class:`~secondpass.pipeline.batcher.BatchingOptions`) shape the shared batches;
    ``timeout_s`` is the deadline of a request that brings none (``None``: no
    limit). ``observer``, ``on_success`` and ``on_failure`` are handed to the
    batcher (metrics, readiness) and called from the engine's thread.

    See the module docstring for the guarantees and an example.
    """

    def __init__(
        self,
        *,
        scorer: Scorer,
        cache: ScoreCache | None = None,
        breaker: CircuitBreaker | None = None,
        options: BatchingOptions | None = None,
        retry_after_s: int = 1,
        timeout_s: float | None = None,
        observer: BatchObserver | None = None,
        on_success: Callable[[], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        if timeout_s is not None and not timeout_s > 0:
            msg = f"timeout_s must be > 0 or None, got {timeout_s}"
            raise ConfigurationError(msg)
        self.scorer = scorer
        self.cache = cache
        self.breaker = breaker
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._batcher_options: dict[str, Any] = {
            "options": options,
            "retry_after_s": retry_after_s,
            "observer": observer,
            "on_success": on_success,
            "on_failure": on_failure,
        }
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._batcher: DynamicBatcher | None = None
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()
        self._scorer = _AttributingScorer(scorer)

    # ------------------------------------------------------------------ public API

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The shared batcher once the engine has started (``None`` before)."""
        return self._batcher

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting for a batch (0 before the engine started)."""
        return 0 if self._batcher is None else self._batcher.queued_pairs

    def throughput(self) -> float | None:
        """Measured model throughput in passages per second; ``None`` before the first batch."""
        return None if self._batcher is None else self._batcher.throughput()

    def start(self) -> None:
        """Start the engine's thread and batcher now instead of on first use; idempotent."""
        self._ensure_loop()

    async def score(
        self,
        query: str,
        items: Sequence[Item],
        *,
        deadline: float | None = None,
        client_deadline: bool = False,
        truncation: Truncation | None = None,
    ) -> EngineResult:
        """Score ``(index, id, text)`` items against ``query``; scores in input order.

        ``deadline`` is absolute, in ``time.monotonic()`` seconds (default:
        ``timeout_s`` after the request arrived, see :func:`request_arrived`, or
        after now); ``client_deadline`` says it is the client's own, which
        :class:`~secondpass.errors.ScoringDeadlineError` reports. Cancelling the
        awaiting task drops this request's queued pairs. ``truncation`` cuts
        this request's passages before scoring (the scorer must be a
        :class:`~secondpass.pipeline.truncation.TruncatingScorer`); the cache
        keys name it, so differently cut passages never share a score.

        Raises:
            CircuitOpenError: the breaker is open; nothing was tried.
            OverloadedError: refused at once, the queue cannot finish it in time.
            ScoringDeadlineError: the deadline passed before the scores were ready.
            ScoringUnavailableError: the engine is closed.
            RerankError: the forward pass failed.
        """
        if all(is_blank(text) for _, _, text in items):
            return _all_blank(len(items))  # nothing for the model: no thread hop
        future = self._submit(query, items, deadline, client_deadline, truncation)
        return await asyncio.wrap_future(future)

    def score_sync(
        self,
        query: str,
        items: Sequence[Item],
        *,
        deadline: float | None = None,
        client_deadline: bool = False,
        truncation: Truncation | None = None,
    ) -> EngineResult:
        """:meth:`score` for callers without an event loop; blocks this thread, shares the queue."""
        if all(is_blank(text) for _, _, text in items):
            return _all_blank(len(items))
        if threading.current_thread() is self._thread:
            msg = "score_sync was called on the engine's own thread; await score() there"
            raise ConfigurationError(msg)
        future = self._submit(query, items, deadline, client_deadline, truncation)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt and the like: take the pairs out of the queue
            raise

    async def probe(self, pair: tuple[str, str], *, deadline: float) -> PassageScore:
        """Run one pair through the model, bypassing cache and breaker (readiness checks)."""
        loop = self._ensure_loop()
        batcher = self._batcher
        assert batcher is not None
        coro = batcher.submit([pair], deadline=deadline)
        [score] = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
        return score

    def calibrate(self, *, timeout_s: float = 120.0) -> float | None:
        """Measure the model's throughput now, on a synthetic batch; returns pairs per second.

        Admission decides in time, from the measured throughput; before the
        first measured batch it has only the pair bound (``max_queue_pairs``),
        so a burst reaching a cold server would all be admitted and then all
        miss its deadline together (measured: 32 clients x 50 documents on a
        fresh service, every answer a 503 after 30 s). The front-ends call
        this once the model is loaded, before they report ready: one batch a
        quarter full (the least the batcher measures), passages of ~100
        tokens, bypassing cache and breaker. A smaller batch runs slower per
        pair than the full ones under load, so the first estimate errs towards
        refusing; real batches correct it. Blocks the calling thread (not the
        engine's): the service runs it in a worker thread.
        """
        loop = self._ensure_loop()
        batcher = self._batcher
        assert batcher is not None
        count = max(1, -(-batcher.max_batch_pairs // 4))
        words, n = _CALIBRATION_WORDS * 4, len(_CALIBRATION_WORDS)
        # 64 words each (~100 tokens), however many pairs: offsets cycle through the list
        pairs = [("calibration query", " ".join(words[i % n : i % n + 64])) for i in range(count)]
        coro = batcher.submit(pairs, deadline=time.monotonic() + timeout_s)
        asyncio.run_coroutine_threadsafe(coro, loop).result()
        # The runtime's pools exist now (some started while the model loaded, on
        # another thread): they go below the event loops too.
        cpu_priority.lower_native_threads(batcher.compute_nice)
        return batcher.throughput()

    def close(self) -> None:
        """Finish queued work, stop the batcher and the engine's thread; idempotent."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CLOSE_TIMEOUT_S)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(_CLOSE_TIMEOUT_S)

    def __enter__(self) -> ScoringEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the thread

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                msg = "the scoring engine is closed"
                raise ScoringUnavailableError(msg, retry_after_s=self.retry_after_s)
            if self._loop is None:
                loop = asyncio.new_event_loop()
                booted: Future[None] = Future()
                thread = threading.Thread(
                    target=self._run_loop, args=(loop, booted), name="secondpass-engine", daemon=True
                )
                thread.start()
                booted.result()  # the batcher exists (or its construction error is raised here)
                self._loop, self._thread = loop, thread
            return self._loop

    def _run_loop(self, loop: asyncio.AbstractEventLoop, booted: Future[None]) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._boot())
        except BaseException as exc:  # handed to the thread that started us
            booted.set_exception(exc)
            loop.close()
            return
        booted.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _boot(self) -> None:
        batcher = DynamicBatcher(self._scorer, **self._batcher_options)
        batcher.start()
        self._batcher = batcher

    async def _shutdown(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        for task in list(self._background):
            with contextlib.suppress(BaseException):
                await task

    def _submit(
        self,
        query: str,
        items: Sequence[Item],
        deadline: float | None,
        client_deadline: bool,
        truncation: Truncation | None,
    ) -> Future[EngineResult]:
        truncation = NO_TRUNCATION if truncation is None else truncation
        if not truncation.is_default and not isinstance(self.scorer, TruncatingScorer):
            msg = f"{type(self.scorer).__name__} cannot truncate passages per request"
            raise ConfigurationError(msg)
        loop = self._ensure_loop()
        arrived = _arrived.get()  # read here, in the caller's context, not on the engine's loop
        background = _background.get()
        if deadline is None and self.timeout_s is not None:
            deadline = (time.monotonic() if arrived is None else arrived) + self.timeout_s
        coro = self._score(
            query,
            tuple(items),
            deadline,
            client_deadline,
            truncation,
            arrived=arrived,
            background=background,
        )
        parent = tracing.current_context()  # the caller's span, carried to the engine's loop
        if parent is not None:
            coro = _traced(parent, coro, len(items))
        return asyncio.run_coroutine_threadsafe(coro, loop)

    # ------------------------------------------------------------------ the request path

    async def _score(
        self,
        query: str,
        items: tuple[Item, ...],
        deadline: float | None,
        client_deadline: bool,
        truncation: Truncation,
        *,
        arrived: float | None = None,
        background: bool = False,
    ) -> EngineResult:
        """Runs on the engine's loop: breaker, cache lookup, batcher, write-back."""
        live = [i for i, (_, _, text) in enumerate(items) if not is_blank(text)]
        if not live:
            return _all_blank(len(items))
        self._check_breaker(background=background)
        if not truncation.is_default:
            assert isinstance(self.scorer, TruncatingScorer)  # checked in _submit
            # In a thread: it may need the model's window, which may mean loading it.
            truncation = await asyncio.to_thread(self.scorer.effective_truncation, truncation)
        fingerprint = self.scorer.fingerprint + truncation.key()
        cache = None if isinstance(self.cache, NullScoreCache) else self.cache
        keys: dict[int, str] = {}
        found: dict[str, PassageScore] = {}
        cache_s = 0.0
        if cache is not None:
            keys = dict(
                zip(live, cache_keys(fingerprint, query, (items[i] for i in live)), strict=True)
            )
            started = time.perf_counter()
            found = await self._lookup(cache, list(dict.fromkeys(keys.values())))
            cache_s += time.perf_counter() - started
        # Distinct texts the model must score (same query, same text: same score).
        todo = list(dict.fromkeys(items[i][2] for i in live if keys.get(i) not in found))
        request = _Request(truncation)
        fresh: dict[str, PassageScore] = {}
        scoring_s = 0.0
        if todo:
            started = time.perf_counter()
            pairs = [_Pair(query, text, request) for text in todo]

            async def write_back(scores: Mapping[str, PassageScore]) -> None:
                if cache is not None:
                    await self._store(cache, _writes(keys, items, scores))

            submitted_ns = tracing.now_ns() if request.batches is not None else 0
            scores = await self._await_batch(
                pairs,
                deadline,
                client_deadline,
                request,
                write_back,
                arrived=arrived,
                background=background,
            )
            scoring_s = time.perf_counter() - started
            if request.batches:
                _record_batches(submitted_ns, request.batches)
            fresh = dict(zip(todo, scores, strict=True))
            started = time.perf_counter()
            await write_back(fresh)
            cache_s += time.perf_counter() - started
        if self.breaker is not None and not background:
            self.breaker.record_success()
        scores_out: list[PassageScore] = []
        cached: list[bool] = []
        for i, (_, _, text) in enumerate(items):
            key = keys.get(i)
            hit = key is not None and key in found
            cached.append(hit)
            if is_blank(text):
                scores_out.append(BLANK_SCORE)
            elif hit:
                scores_out.append(found[key])  # type: ignore[index]
            else:
                scores_out.append(fresh[text])
        hits = sum(cached)
        return EngineResult(
            scores=tuple(scores_out),
            cached=tuple(cached),
            cache_hits=hits,
            cache_misses=len(live) - hits,
            scored=len(todo),
            timings_ms={
                "cache": cache_s * 1000.0,
                "queue": max(0.0, scoring_s - request.batch_s) * 1000.0,
                "tokenize": request.tokenize_ms,
                "model": request.model_ms,
                "scoring": scoring_s * 1000.0,
            },
        )

    async def _await_batch(
        self,
        pairs: list[_Pair],
        deadline: float | None,
        client_deadline: bool,
        request: _Request,
        write_back: Callable[[Mapping[str, PassageScore]], Any],
        *,
        arrived: float | None = None,
        background: bool = False,
    ) -> list[PassageScore]:
        """The batcher's answer for ``pairs``, or a typed error.

        The batcher enforces ``deadline`` and drops the queued pairs of a caller
        that is cancelled or late. Whatever the model computed for such a caller
        (a batch that was running) is written to the cache, nothing else.
        """
        assert self._batcher is not None
        try:
            return await self._batcher.submit(
                pairs,
                deadline=time.monotonic() + _NO_DEADLINE_S if deadline is None else deadline,
                client_deadline=client_deadline,
                arrived=arrived,
            )
        except asyncio.CancelledError:
            self._abandon(request, write_back)
            raise
        except ScoringDeadlineError:
            # Admitted work that misses its deadline while the model is busy means the
            # model got slower than measured: the breaker should know. A deadline
            # that passes while the model idles (too short to start) is not its fault.
            model_busy = self._scorer.busy > 0
            if self._abandon(request, write_back) or model_busy:
                self._record_failure(background=background)
            raise
        except (OverloadedError, ScoringUnavailableError):
            raise  # admission or shutdown, not the model's fault
        except RerankError:
            self._record_failure(background=background)
            raise
        except Exception as exc:
            self._record_failure(background=background)
            msg = f"scoring failed: {type(exc).__name__}: {exc}"
            raise RerankError(msg) from exc

    def _abandon(
        self, request: _Request, write_back: Callable[[Mapping[str, PassageScore]], Any]
    ) -> bool:
        """Cache what the model computed for a caller that has gone; True if a batch was running."""
        loop = asyncio.get_running_loop()

        def store() -> None:
            if request.done:
                task = loop.create_task(write_back(dict(request.done)))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        def late() -> None:  # called from the model thread when that batch is done
            loop.call_soon_threadsafe(store)

        with request.lock:
            running = request.running > 0
            if running:
                request.late = late
        if not running:
            store()
        return running

    # ------------------------------------------------------------------ breaker and cache

    def _check_breaker(self, *, background: bool = False) -> None:
        breaker = self.breaker
        if breaker is None:
            return
        if background and breaker.state != "closed":
            msg = "circuit not closed: background work waits until live scoring recovers"
            raise CircuitOpenError(msg, retry_after_s=max(1, math.ceil(breaker.retry_after_s())))
        if background or breaker.allow():
            return
        wait_s = breaker.retry_after_s()
        msg = (
            f"circuit open: scoring failed {breaker.failure_threshold} or more times in a row; "
            f"next probe in {wait_s:.1f} s"
        )
        raise CircuitOpenError(msg, retry_after_s=max(1, math.ceil(wait_s)))

    def _record_failure(self, *, background: bool = False) -> None:
        """Count a model failure (or overrun) against the breaker; log once when it opens."""
        breaker = self.breaker
        if breaker is None or background:
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

    async def _lookup(self, cache: ScoreCache, keys: list[str]) -> dict[str, PassageScore]:
        try:
            with tracing.span("secondpass.cache", {"secondpass.cache.op": "lookup"}):
                found = await _call(cache, cache.get_many, keys)
        except Exception as exc:  # a cache fault is a miss, whatever the implementation
            logger.warning(
                "score cache %s raised %s on lookup; scoring without it",
                type(cache).__name__,
                type(exc).__name__,
            )
            return {}
        wanted = set(keys)  # only trust what was asked for and has the right type
        return {k: v for k, v in found.items() if k in wanted and isinstance(v, PassageScore)}

    async def _store(self, cache: ScoreCache, writes: dict[str, PassageScore]) -> None:
        if not writes:
            return
        try:
            with tracing.span("secondpass.cache", {"secondpass.cache.op": "write"}):
                await _call(cache, cache.set_many, writes)
        except Exception as exc:  # a cache fault must not lose the scores we already have
            logger.warning(
                "score cache %s raised %s on write; scores kept, not cached",
                type(cache).__name__,
                type(exc).__name__,
            )


async def _traced(parent: object, coro: Any, items: int) -> EngineResult:
    """Run ``coro`` on the engine's loop as a ``secondpass.score`` child of the caller's span."""
    with tracing.attached(parent), tracing.span("secondpass.score", {"secondpass.items": items}):
        return await coro  # type: ignore[no-any-return]


def _record_batches(submitted_ns: int, batches: list[tuple[int, int, int]]) -> None:
    """The request's queue wait (until its first batch) and each forward pass, as spans.

    Measured in the model thread (a batch serves several requests), recorded
    here under the request's ``secondpass.score`` span.
    """
    first = min(start for start, _, _ in batches)
    tracing.record("secondpass.queue_wait", submitted_ns, first)
    for start, end, pairs in batches:
        tracing.record("secondpass.model", start, end, {"secondpass.batch.pairs": pairs})


async def _call(cache: ScoreCache, method: Callable[[Any], Any], arg: Any) -> Any:
    """In-process caches answer inline; anything else (Redis) in a worker thread."""
    if isinstance(cache, LRUScoreCache):
        return method(arg)
    return await asyncio.to_thread(method, arg)


def _writes(
    keys: Mapping[int, str], items: tuple[Item, ...], fresh: Mapping[str, PassageScore]
) -> dict[str, PassageScore]:
    """Cache entries for every looked-up key whose text the model just scored."""
    return {key: fresh[items[i][2]] for i, key in keys.items() if items[i][2] in fresh}


def _all_blank(n: int) -> EngineResult:
    return EngineResult(
        scores=(BLANK_SCORE,) * n, cached=(False,) * n, cache_hits=0, cache_misses=0, scored=0
    )
