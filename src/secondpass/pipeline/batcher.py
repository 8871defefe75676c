"""Cross-request dynamic batching: pairs of concurrent callers share forward passes.

A cross-encoder forward pass costs almost the same for 1 pair as for 32 on a GPU
(and amortises Python and tokenizer overhead on a CPU), so pairs from concurrent
callers go into one queue and a single worker forms batches from it. The queue
is written for overload, not just for throughput:

* **Admission in time.** The worker measures its throughput (estimated tokens
  per second, an average weighted towards full batches; batches less than a
  quarter full are not measured), from the end of the previous batch while
  work was waiting, so the overhead between batches under load counts. A caller whose
  estimated finish time, counting the work it will share batches with, is past
  its deadline (or past ``max_queue_s``) is refused at once with
  :class:`~secondpass.errors.OverloadedError` and a ``retry_after_s``, before it
  costs anything. Until the first batch has been measured the pair bound
  ``max_queue_pairs`` decides; it stays as a memory cap afterwards. A caller
  too large for these limits on its own is admitted when everything waiting
  fits in the next batch.
* **Fair shares.** Each batch is filled round-robin, one pair per live caller
  per round, within ``max_batch_pairs`` and ``max_batch_tokens`` (characters / 4
  per pair: cheap; the scorer applies the exact token budget itself) and,
  once the throughput is known, within half a second of estimated work. A
  1-document caller therefore rides in the next batch even while callers with
  thousands of pairs are queued. The estimate above follows the same rule
  (processor sharing): while a caller's ``n`` pairs are scored, every other
  caller gets at most ``n`` pairs scored too.
* **Dropped work.** A caller that is cancelled (its client went away) or whose
  deadline passes has its pending pairs removed at once; they are never
  computed. A batch already running finishes; its results are not delivered.
* The worker waits at most ``max_wait_ms`` after the oldest queued pair arrived
  for a batch to fill, so an idle queue adds at most that much latency.

The model runs in one dedicated thread, so the event loop never waits on it.
With ``batching=False`` every batch holds pairs of one caller only (callers
still take turns), the baseline the load benchmarks compare against.

This module knows no HTTP: it raises the library's errors and reports to an
optional :class:`BatchObserver` (the service adapts its Prometheus metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn, Protocol

from secondpass.errors import (
    OverloadedError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
)
from secondpass.pipeline import cpu_priority
from secondpass.pipeline.protocols import Scorer
from secondpass.types import PassageScore

logger = logging.getLogger(__name__)

__all__ = ["BatchObserver", "BatchReport", "DynamicBatcher", "estimate_tokens"]

# How far one batch moves the throughput average, for a full batch; smaller
# batches move it proportionally less (their fixed overhead would understate
# the throughput a loaded queue reaches).
_EWMA_WEIGHT = 0.3
# Batches fuller than this (in pairs or tokens) are measured at all: a lone
# probe pair costs mostly overhead, and timing it would make the queue refuse
# work it can do (admission only matters once batches fill anyway).
_MIN_MEASURED_FILL = 0.25
# Once the throughput is known, a batch holds at most this many seconds of
# estimated work. A caller arriving behind a batch of long passages waits for
# it to end; on a CPU a batch of 16k tokens can take seconds, while batches
# past a few pairs gain little there. On a GPU the cap is far above
# max_batch_tokens and changes nothing.
_BATCH_TARGET_S = 0.5
# Admission plans with this share of the measured throughput: the estimate
# leaves out reading and answering the request and is a moving average of a
# machine whose load changes, so admitting right up to the limit would put
# the slowest admitted requests past it.
_ADMISSION_RATE_SHARE = 0.8


def estimate_tokens(query: str, passage: str) -> int:
    """A cheap upper-bound-ish token estimate of one pair (4 characters per token, 3 specials)."""
    return (len(query) + len(passage)) // 4 + 3


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchingOptions:
    """How the shared queue forms batches and admits work, in one value.

    Why a value: the batcher, the engine that owns it and each front-end's
    settings all speak of the same five knobs; passing one frozen object keeps
    their names and defaults in one place. ``batching=False`` scores each
    request's pairs in batches of their own; ``max_batch_tokens`` is estimated
    (characters / 4 per pair); ``max_queue_s`` caps the estimated queue wait plus
    scoring a request is admitted with (``None``: its deadline alone decides);
    ``compute_nice`` is the model thread's CPU priority (Linux nice, 0 leaves it;
    see :mod:`secondpass.pipeline.cpu_priority`).

    Example:
        >>> BatchingOptions(max_wait_ms=2).max_batch_pairs
        64
    """

    batching: bool = True
    max_batch_pairs: int = 64
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 5.0
    max_queue_pairs: int = 8_192
    max_queue_s: float | None = None
    compute_nice: int = 10


@dataclass(frozen=True, slots=True)
class BatchReport:
    """One successful forward batch, as the observer sees it.

    ``tokens`` counts the passage tokens the model saw (``tokens_scored``);
    the ``*_s`` fields are seconds: the whole call, and the scorer's own
    tokenize and model shares of it.
    """

    pairs: int
    requests: int
    tokens: int
    seconds: float
    tokenize_s: float
    model_s: float


class BatchObserver(Protocol):
    """What the batcher reports, for metrics; every method must be cheap and never raise.

    A protocol rather than a metrics class so the pipeline imports no HTTP or
    Prometheus code; the service adapts its metrics to it.
    """

    def rejected(self, reason: str) -> None:
        """A caller was refused or dropped before scoring (``queue_full``, ``over_time``, ``deadline``)."""

    def queue_depth(self, pairs: int, requests: int) -> None:
        """The queue now holds ``pairs`` pending pairs of ``requests`` callers."""

    def queue_wait(self, seconds: float) -> None:
        """A caller's pairs entered a batch ``seconds`` after it was admitted."""

    def batch_done(self, report: BatchReport) -> None:
        """A forward batch succeeded."""

    def model_failed(self) -> None:
        """A forward batch raised."""


@dataclass(eq=False)
class _Job:
    """One caller's pairs; ``cursor`` is the first pair not yet handed to a batch."""

    pairs: Sequence[tuple[str, str]]
    costs: list[int]
    future: asyncio.Future[list[PassageScore]]
    deadline: float  # clock() after which the pairs are dropped
    limit: float  # the deadline, or sooner by max_queue_s: what admission promised
    client_deadline: bool
    enqueued: float
    results: list[PassageScore | None]
    cost_left: int
    cursor: int = 0
    in_flight: int = 0  # batches holding some of its pairs now
    queued: bool = True  # in the rotation (has pending pairs)

    @property
    def pending(self) -> int:
        return len(self.pairs) - self.cursor


@dataclass(eq=False)
class _Piece:
    """A contiguous run of one job's pairs inside a batch."""

    job: _Job
    start: int
    end: int
    cost: int = 0


@dataclass
class _Running:
    """The batch in the model thread now: its estimated cost and when it started."""

    cost: int
    started: float


class DynamicBatcher:
    """One queue and one model thread shared by every caller, admitting by time.

    ``deadline`` arguments are absolute, in ``clock()`` seconds
    (``time.monotonic()`` unless a clock is injected, as tests do).

    Example:
        >>> async def demo(scorer):  # doctest: +SKIP
        ...     batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=2))
        ...     batcher.start()
        ...     pairs = [("cats", "Cats purr."), ("cats", "Dogs bark.")]
        ...     scores = await batcher.submit(pairs, deadline=time.monotonic() + 5)
        ...     await batcher.close()
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        options: BatchingOptions | None = None,
        retry_after_s: float = 1,
        observer: BatchObserver | None = None,
        on_success: Callable[[], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scorer = scorer
        options = BatchingOptions() if options is None else options
        self.batching = options.batching
        self.max_batch_pairs = options.max_batch_pairs
        self.max_batch_tokens = options.max_batch_tokens
        self.max_wait_s = options.max_wait_ms / 1000.0
        self.max_queue_pairs = options.max_queue_pairs
        self.max_queue_s = options.max_queue_s
        self._retry_after_s = retry_after_s
        self._observer = observer
        self._on_success = on_success
        self._on_failure = on_failure
        self._clock = clock
        self._jobs: deque[_Job] = deque()  # callers with pending pairs, in turn order
        self._queued_pairs = 0
        self._queued_cost = 0
        self._running: _Running | None = None
        # When the last batch ended, while the worker has stayed busy since (None
        # once it idles): the next batch's throughput is measured from here.
        self._busy_since: float | None = None
        self._tokens_per_s: float | None = None
        self._pairs_per_s: float | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.compute_nice = options.compute_nice
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="secondpass-model",
            initializer=cpu_priority.lower_thread,
            initargs=(options.compute_nice,),
        )

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting (not yet in a running batch)."""
        return self._queued_pairs

    def throughput(self) -> float | None:
        """Measured pairs per second (weighted moving average); None before the first batch."""
        return self._pairs_per_s

    def start(self) -> None:
        """Start the worker on the running loop; idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Finish everything queued (without waiting to fill batches), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        deadline: float,
        client_deadline: bool = False,
        arrived: float | None = None,
    ) -> list[PassageScore]:
        """Score ``pairs`` (in input order) in shared batches.

        ``deadline`` is absolute (``time.monotonic()`` seconds): the pairs must be
        computed by then or are dropped. ``client_deadline`` says whose deadline
        it is, which the service turns into 408 (the caller's) or 503 (its own).
        ``arrived`` is when the request reached the front-end (default: now);
        ``max_queue_s`` counts from then, so the time a request spent being read
        and parsed, or waiting for a busy event loop, is part of what admission
        promises. Cancelling the awaiting task removes the pending pairs at once.

        Raises:
            OverloadedError: refused at once; the queue cannot take the work in time.
            ScoringDeadlineError: the deadline passed before the pairs were computed.
            ScoringUnavailableError: not started, or shutting down.
            RerankError: the forward pass failed.
        """
        if not pairs:
            return []
        if self._closing or self._task is None or self._task.done():
            if self._closing:
                msg = "the scorer is shutting down"
            elif self._task is None:
                msg = "the scorer is not started"
            else:
                msg = "the scorer's batch worker stopped"
            raise ScoringUnavailableError(msg, retry_after_s=self._retry_after_s)
        now = self._clock()
        if deadline <= now:
            self._notify_rejected("deadline")
            msg = "the deadline passed before the pairs were queued"
            raise ScoringDeadlineError(
                msg, client_deadline=client_deadline, retry_after_s=self._retry_after_s
            )
        arrived = now if arrived is None else min(arrived, now)
        limit = self._limit(deadline, arrived)
        costs = [estimate_tokens(q, p) for q, p in pairs]
        self._admit(len(pairs), sum(costs), limit, now)
        loop = asyncio.get_running_loop()
        job = _Job(
            pairs=pairs,
            costs=costs,
            future=loop.create_future(),
            deadline=deadline,
            limit=limit,
            client_deadline=client_deadline,
            enqueued=now,
            results=[None] * len(pairs),
            cost_left=sum(costs),
        )
        self._jobs.append(job)
        self._queued_pairs += len(pairs)
        self._queued_cost += job.cost_left
        self._report_depth()
        self._wakeup.set()
        try:
            async with asyncio.timeout(deadline - now):
                return await job.future
        except TimeoutError:
            if job.queued:  # pairs still waiting: a refusal before scoring
                self._notify_rejected("deadline")
            raise self._deadline_error(job) from None
        finally:
            self._withdraw(job)

    # ------------------------------------------------------------- admission

    def _admit(self, n: int, cost: int, limit: float, now: float) -> None:
        """Refuse at once (OverloadedError) when the work cannot finish by ``limit``.

        Estimates follow the round-robin schedule (processor sharing): while
        a caller's ``r`` pending pairs are scored, each other caller gets at
        most ``r`` of its own scored too. The newcomer is refused when its own
        estimate is past its limit, or when it would push a caller already
        admitted (and still on time) past that caller's limit. A request too
        large for the limits on its own is admitted while the queue is
        nearly idle (see ``_nearly_idle``).
        """
        idle = self._nearly_idle()
        oversized = n > self.max_queue_pairs
        if self._queued_pairs + n > self.max_queue_pairs and not (oversized and idle):
            self._notify_rejected("queue_full")
            msg = (
                f"scoring queue full ({self._queued_pairs} pairs waiting, limit "
                f"{self.max_queue_pairs}); retry later"
            )
            raise OverloadedError(msg, retry_after_s=self._retry_after_s)
        if self._tokens_per_s is None:
            return  # nothing measured yet: the pair bound alone decides
        rate = self._tokens_per_s * _ADMISSION_RATE_SHARE
        budget = limit - now
        if idle and cost / rate > budget:
            return  # too long on its own: nothing but an idle queue would ever take it
        running = self._running_left(now, rate)
        per_pair = cost / n
        jobs = sorted(self._jobs, key=lambda j: j.pending)
        # ahead[k]: the work (estimated tokens) done by the time jobs[k] is.
        ahead = [0.0] * len(jobs)
        done = 0.0  # work of the jobs no longer than jobs[k]
        wider = sum(j.cost_left / j.pending for j in jobs)  # per-pair cost of the longer ones
        for k, job in enumerate(jobs):
            done += job.cost_left
            wider -= job.cost_left / job.pending
            ahead[k] = done + job.pending * wider
        own = cost + sum(min(j.pending, n) * j.cost_left / j.pending for j in jobs)
        estimate = running + own / rate
        if estimate > budget:
            if cost / rate <= budget:
                wait = estimate - budget  # until the work ahead has drained that much
            else:
                wait = running + self._queued_cost / rate  # until the queue is empty
            self._refuse(
                wait,
                f"scoring {n} pairs would take about {estimate:.1f} s with the work queued "
                f"now ({self._queued_pairs} pairs), more than the {budget:.1f} s allowed",
            )
        pushed = [
            finish
            for job, work in zip(jobs, ahead, strict=True)
            if (finish := now + running + work / rate) <= job.limit
            and finish + min(n, job.pending) * per_pair / rate > job.limit
        ]
        if pushed:
            self._refuse(
                max(pushed) - now,
                f"scoring {n} more pairs now would make {len(pushed)} admitted request(s) "
                "miss their deadline",
            )

    def _nearly_idle(self) -> bool:
        """Everything waiting fits in the next batch.

        A request too large for the limits on its own is admitted then;
        requiring an empty queue instead would make it race, and lose to,
        any trickle of small requests.
        """
        return (
            self._queued_pairs <= self.max_batch_pairs and self._queued_cost <= self._token_budget()
        )

    def _refuse(self, wait_s: float, reason: str) -> NoReturn:
        self._notify_rejected("over_time")
        retry = max(float(self._retry_after_s), float(math.ceil(wait_s)))
        msg = f"{reason}; retry in {retry:.0f} s"
        raise OverloadedError(msg, retry_after_s=retry)

    def _limit(self, deadline: float, arrived: float) -> float:
        """When a caller that ``arrived`` then must be done: its deadline, or sooner by max_queue_s."""
        if self.max_queue_s is None:
            return deadline
        return min(deadline, arrived + self.max_queue_s)

    def _running_left(self, now: float, rate: float) -> float:
        if self._running is None:
            return 0.0
        return max(0.0, self._running.cost / rate - (now - self._running.started))

    # ------------------------------------------------------------- queue upkeep

    def _withdraw(self, job: _Job) -> None:
        """Remove ``job``'s pending pairs from the queue (done, cancelled or late)."""
        if not job.queued:
            return
        job.queued = False
        with contextlib.suppress(ValueError):
            self._jobs.remove(job)
        self._queued_pairs -= job.pending
        self._queued_cost -= job.cost_left
        self._report_depth()

    def _deadline_error(self, job: _Job) -> ScoringDeadlineError:
        waited_ms = (self._clock() - job.enqueued) * 1000.0
        if job.client_deadline:
            msg = f"the request's deadline passed after {waited_ms:.0f} ms waiting for scoring"
        else:
            msg = (
                f"the request waited {waited_ms:.0f} ms for scoring, past the "
                "service's request timeout; retry later"
            )
        return ScoringDeadlineError(
            msg, client_deadline=job.client_deadline, retry_after_s=self._retry_after_s
        )

    def _drop_dead(self) -> None:
        """Fail and remove callers that left or whose deadline passed."""
        now = self._clock()
        for job in [j for j in self._jobs if j.future.done() or now > j.deadline]:
            if not job.future.done():
                self._notify_rejected("deadline")
                job.future.set_exception(self._deadline_error(job))
            self._withdraw(job)

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._busy_since = None  # idle: the wait ahead is not the model's cost
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._next_batch()
            if batch:
                await self._execute(loop, batch)

    def _plan(self) -> tuple[list[tuple[_Job, int]], bool]:
        """Which pairs the next batch takes: (job, count) in turn order, and whether it is full.

        Round-robin, one pair per caller per round, so every live caller gets
        an equal share of the batch. Nothing is changed until ``_commit``.
        """
        pairs_left = self.max_batch_pairs
        tokens_left = self._token_budget()
        takes: dict[_Job, int] = {}
        full = False
        active = list(self._jobs) if self.batching else list(self._jobs)[:1]
        while active and not full:
            still: list[_Job] = []
            for job in active:
                taken = takes.get(job, 0)
                i = job.cursor + taken
                if pairs_left == 0:
                    full = True
                    break
                cost = job.costs[i]
                if takes and cost > tokens_left:
                    full = True  # its next pair does not fit; others' may
                    continue
                takes[job] = taken + 1
                pairs_left -= 1
                tokens_left -= cost
                if i + 1 < len(job.pairs):
                    still.append(job)
            active = still
        full = full or pairs_left == 0
        return list(takes.items()), full

    async def _next_batch(self) -> list[_Piece]:
        while True:
            self._drop_dead()
            if not self._jobs:
                return []
            plan, full = self._plan()
            if not self.batching or full or self._closing:
                break
            oldest = min(job.enqueued for job, _ in plan)
            remaining = oldest + self.max_wait_s - self._clock()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
        return self._commit(plan)

    def _commit(self, plan: list[tuple[_Job, int]]) -> list[_Piece]:
        pieces: list[_Piece] = []
        now = self._clock()
        served: list[_Job] = []
        for job, count in plan:
            piece = _Piece(job, job.cursor, job.cursor + count)
            piece.cost = sum(job.costs[piece.start : piece.end])
            job.cursor = piece.end
            job.cost_left -= piece.cost
            job.in_flight += 1
            self._queued_pairs -= count
            self._queued_cost -= piece.cost
            pieces.append(piece)
            served.append(job)
            if self._observer is not None:
                self._observer.queue_wait(now - job.enqueued)
        # Callers served by this batch go to the back of the turn order.
        served_ids = {id(j) for j in served}
        rest = [j for j in self._jobs if id(j) not in served_ids]
        for job in served:
            if job.pending == 0:
                job.queued = False
            else:
                rest.append(job)
        self._jobs = deque(rest)
        self._report_depth()
        return pieces

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Piece]) -> None:
        pairs = [p for piece in batch for p in piece.job.pairs[piece.start : piece.end]]
        cost = sum(piece.cost for piece in batch)
        timings: dict[str, float] = {}
        started = self._clock()
        self._running = _Running(cost=cost, started=started)
        try:
            scores = await loop.run_in_executor(self._executor, self._score, pairs, timings)
        except Exception as exc:
            logger.warning("forward batch of %d pairs failed: %s", len(pairs), type(exc).__name__)
            if self._observer is not None:
                self._observer.model_failed()
            if self._on_failure is not None:
                self._on_failure(exc)
            self._busy_since = None
            error = exc if isinstance(exc, RerankError) else RerankError("the forward pass failed")
            if error is not exc:
                error.__cause__ = exc
            for piece in batch:
                piece.job.in_flight -= 1
                if not piece.job.future.done():
                    piece.job.future.set_exception(error)
            return
        finally:
            self._running = None
        done = self._clock()
        seconds = done - started
        # Measured from the end of the previous batch when work was waiting since:
        # the time to form a batch and to get the model thread, the event loop and
        # the CPU back under load is part of what admission must plan with.
        self._measure(
            len(pairs), cost, done - (started if self._busy_since is None else self._busy_since)
        )
        self._busy_since = done
        if self._on_success is not None:
            self._on_success()
        if self._observer is not None:
            report = BatchReport(
                pairs=len(pairs),
                requests=len({id(piece.job) for piece in batch}),
                tokens=sum(s.tokens_scored for s in scores),
                seconds=seconds,
                tokenize_s=timings.get("tokenize_ms", 0.0) / 1000.0,
                model_s=timings.get("model_ms", 0.0) / 1000.0,
            )
            self._observer.batch_done(report)
        offset = 0
        for piece in batch:
            job = piece.job
            size = piece.end - piece.start
            part = scores[offset : offset + size]
            offset += size
            job.in_flight -= 1
            if job.future.done():
                continue  # the caller left or timed out: not delivered
            job.results[piece.start : piece.end] = part
            if job.pending == 0 and job.in_flight == 0:
                job.future.set_result([s for s in job.results if s is not None])

    def _measure(self, pairs: int, cost: int, seconds: float) -> None:
        """Fold one batch into the throughput averages (weighted by how full it was)."""
        fill = min(1.0, max(pairs / self.max_batch_pairs, cost / self._token_budget()))
        if seconds <= 0 or fill < _MIN_MEASURED_FILL:
            return
        tokens_rate = cost / seconds
        pairs_rate = pairs / seconds
        if self._tokens_per_s is None or self._pairs_per_s is None:
            self._tokens_per_s, self._pairs_per_s = tokens_rate, pairs_rate
            return
        weight = _EWMA_WEIGHT * fill
        self._tokens_per_s += weight * (tokens_rate - self._tokens_per_s)
        self._pairs_per_s += weight * (pairs_rate - self._pairs_per_s)

    def _token_budget(self) -> int:
        """Estimated tokens one batch may hold: max_batch_tokens, or _BATCH_TARGET_S of work."""
        if self._tokens_per_s is None:
            return self.max_batch_tokens
        return max(1, min(self.max_batch_tokens, int(self._tokens_per_s * _BATCH_TARGET_S)))

    def _score(self, pairs: list[tuple[str, str]], timings: dict[str, float]) -> list[PassageScore]:
        scores = self._scorer.score_pairs(pairs, timings=timings)
        if len(scores) != len(pairs):
            msg = f"scorer returned {len(scores)} scores for {len(pairs)} pairs"
            raise RerankError(msg)
        return scores

    def _notify_rejected(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(reason)

    def _report_depth(self) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self._queued_pairs, len(self._jobs))
