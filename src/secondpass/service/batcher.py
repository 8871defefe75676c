"""Cross-request dynamic batching: pairs of concurrent requests share forward passes.

A cross-encoder forward pass costs almost the same for 1 pair as for 32 on a GPU
(and amortises Python and tokenizer overhead on a CPU), so pairs from concurrent
requests go into one bounded queue and a single worker forms batches from it:

* a batch holds at most ``max_batch_pairs`` pairs and ``max_batch_tokens``
  estimated tokens (characters / 4 per pair: cheap, and the scorer applies the
  exact token budget itself);
* the worker waits at most ``max_wait_ms`` after the oldest queued pair arrived
  for a batch to fill, so an idle service adds at most that much latency;
* a request larger than a batch is cut into segments that may ride in
  different batches; the request completes when its last segment does;
* the queue is bounded in pairs: a request that does not fit is refused at once
  (:class:`QueueFullError`, 429) instead of growing latency without bound;
* a segment whose request deadline has passed, or whose client went away, is
  dropped before it is computed.

The model runs in one dedicated thread, so the event loop never waits on it.
With ``batching=False`` every batch holds pairs of one request only, which is
the baseline the load benchmark compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from secondpass.errors import RerankError
from secondpass.pipeline.protocols import Scorer
from secondpass.service.errors import (
    ClientDeadlineExceededError,
    DeadlineExceededError,
    QueueFullError,
    UnavailableError,
)
from secondpass.service.metrics import ServiceMetrics
from secondpass.types import PassageScore

logger = logging.getLogger(__name__)

__all__ = ["DynamicBatcher", "estimate_tokens"]


def estimate_tokens(query: str, passage: str) -> int:
    """A cheap upper-bound-ish token estimate of one pair (4 characters per token, 3 specials)."""
    return (len(query) + len(passage)) // 4 + 3


@dataclass(eq=False)
class _Job:
    pairs: Sequence[tuple[str, str]]
    future: asyncio.Future[list[PassageScore]]
    deadline: float  # loop.time() after which the job is dropped
    client_deadline: bool  # the client's deadline (408) rather than the service's (503)
    enqueued: float
    results: list[PassageScore | None] = field(default_factory=list)
    remaining: int = 0


@dataclass(eq=False)
class _Segment:
    job: _Job
    start: int
    end: int
    tokens: int

    @property
    def size(self) -> int:
        return self.end - self.start


class DynamicBatcher:
    """One bounded queue and one model thread shared by every request.

    Example:
        >>> async def demo(scorer):  # doctest: +SKIP
        ...     batcher = DynamicBatcher(scorer, max_wait_ms=2)
        ...     batcher.start()
        ...     scores = await batcher.submit([("cats", "Cats purr."), ("cats", "Dogs bark.")])
        ...     await batcher.close()
    """

    def __init__(
        self,
        scorer: Scorer,
        *,
        batching: bool = True,
        max_batch_pairs: int = 64,
        max_batch_tokens: int = 16_384,
        max_wait_ms: float = 5.0,
        max_queue_pairs: int = 8_192,
        retry_after_s: int = 1,
        metrics: ServiceMetrics | None = None,
        on_success: Callable[[], None] | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._scorer = scorer
        self.batching = batching
        self.max_batch_pairs = max_batch_pairs
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_pairs = max_queue_pairs
        self._retry_after_s = retry_after_s
        self._metrics = metrics
        self._on_success = on_success
        self._on_failure = on_failure
        self._queue: deque[_Segment] = deque()
        self._queued_pairs = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="secondpass-model")

    @property
    def queued_pairs(self) -> int:
        """Pairs waiting (not yet in a running batch)."""
        return self._queued_pairs

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
        timeout_s: float,
        client_deadline: bool = False,
    ) -> list[PassageScore]:
        """Score ``pairs`` (in input order) in shared batches.

        ``timeout_s`` is how long the pairs may wait before they are computed;
        ``client_deadline`` says whose deadline it is (408 vs 503 when it passes).

        Raises:
            QueueFullError: no room for the pairs now (429).
            DeadlineExceededError: the deadline passed before they were computed.
            RerankError: the forward pass failed.
        """
        if not pairs:
            return []
        if self._closing:
            msg = "the service is shutting down"
            raise UnavailableError(msg, retry_after_s=self._retry_after_s)
        # A request larger than the whole queue would never fit; admit it when idle.
        if self._queued_pairs and self._queued_pairs + len(pairs) > self.max_queue_pairs:
            if self._metrics is not None:
                self._metrics.rejected.labels("queue_full").inc()
            msg = (
                f"scoring queue full ({self._queued_pairs} pairs waiting, limit "
                f"{self.max_queue_pairs}); retry later"
            )
            raise QueueFullError(msg, retry_after_s=self._retry_after_s)
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(
            pairs=pairs,
            future=loop.create_future(),
            deadline=now + timeout_s,
            client_deadline=client_deadline,
            enqueued=now,
            results=[None] * len(pairs),
        )
        segments = self._split(job)
        job.remaining = len(segments)
        self._queue.extend(segments)
        self._queued_pairs += len(pairs)
        self._update_gauges()
        self._wakeup.set()
        return await job.future

    def _split(self, job: _Job) -> list[_Segment]:
        segments: list[_Segment] = []
        start = 0
        tokens = 0
        for i, (query, passage) in enumerate(job.pairs):
            cost = estimate_tokens(query, passage)
            size = i - start
            if size and (size >= self.max_batch_pairs or tokens + cost > self.max_batch_tokens):
                segments.append(_Segment(job, start, i, tokens))
                start, tokens = i, 0
            tokens += cost
        segments.append(_Segment(job, start, len(job.pairs), tokens))
        return segments

    # ------------------------------------------------------------------ worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._form_batch(loop)
            if batch:
                await self._execute(loop, batch)

    def _pop_live(self, loop: asyncio.AbstractEventLoop) -> _Segment | None:
        """Pop the head segment, failing it instead when its request is gone or late."""
        seg = self._queue.popleft()
        self._queued_pairs -= seg.size
        job = seg.job
        if job.future.done():  # client cancelled, or another segment already failed it
            return None
        if loop.time() > job.deadline:
            if self._metrics is not None:
                self._metrics.rejected.labels("deadline").inc()
            waited_ms = (loop.time() - job.enqueued) * 1000.0
            if job.client_deadline:
                msg = f"the request's deadline passed after {waited_ms:.0f} ms in the queue"
                job.future.set_exception(ClientDeadlineExceededError(msg, field="deadline_ms"))
            else:
                msg = (
                    f"the request waited {waited_ms:.0f} ms in the scoring queue, "
                    "past the service's request timeout; retry later"
                )
                job.future.set_exception(
                    DeadlineExceededError(msg, retry_after_s=self._retry_after_s)
                )
            return None
        return seg

    def _fits(self, batch: list[_Segment], seg: _Segment) -> bool:
        if not batch:
            return True
        if not self.batching:
            return False
        pairs = sum(s.size for s in batch) + seg.size
        tokens = sum(s.tokens for s in batch) + seg.tokens
        return pairs <= self.max_batch_pairs and tokens <= self.max_batch_tokens

    async def _form_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Segment]:
        batch: list[_Segment] = []
        oldest: float | None = None
        while True:
            while self._queue and self._fits(batch, self._queue[0]):
                seg = self._pop_live(loop)
                if seg is not None:
                    batch.append(seg)
                    oldest = seg.job.enqueued if oldest is None else min(oldest, seg.job.enqueued)
            full = (
                not self.batching
                or bool(self._queue)  # the head did not fit: the batch is as full as it gets
                or sum(s.size for s in batch) >= self.max_batch_pairs
            )
            if not batch or full or self._closing or oldest is None:
                break
            remaining = oldest + self.max_wait_s - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
        self._update_gauges()
        return batch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Segment]) -> None:
        pairs = [p for seg in batch for p in seg.job.pairs[seg.start : seg.end]]
        timings: dict[str, float] = {}
        started = loop.time()
        m = self._metrics
        if m is not None:
            for seg in batch:
                m.stage.labels("queue_wait").observe(started - seg.job.enqueued)
        try:
            scores = await loop.run_in_executor(self._executor, self._score, pairs, timings)
        except Exception as exc:
            logger.warning("forward batch of %d pairs failed: %s", len(pairs), type(exc).__name__)
            if m is not None:
                m.model_failures.inc()
            if self._on_failure is not None:
                self._on_failure(exc)
            error = exc if isinstance(exc, RerankError) else RerankError("the forward pass failed")
            if error is not exc:
                error.__cause__ = exc
            for seg in batch:
                if not seg.job.future.done():
                    seg.job.future.set_exception(error)
            return
        if self._on_success is not None:
            self._on_success()
        if m is not None:
            m.stage.labels("batch").observe(loop.time() - started)
            m.stage.labels("tokenize").observe(timings.get("tokenize_ms", 0.0) / 1000.0)
            m.stage.labels("model").observe(timings.get("model_ms", 0.0) / 1000.0)
            m.batch_pairs.observe(len(pairs))
            m.batch_requests.observe(len({id(seg.job) for seg in batch}))
            m.batch_tokens.observe(sum(s.tokens_scored for s in scores))
        offset = 0
        for seg in batch:
            job = seg.job
            part = scores[offset : offset + seg.size]
            offset += seg.size
            if job.future.done():
                continue
            job.results[seg.start : seg.end] = part
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result([s for s in job.results if s is not None])

    def _score(self, pairs: list[tuple[str, str]], timings: dict[str, float]) -> list[PassageScore]:
        scores = self._scorer.score_pairs(pairs, timings=timings)
        if len(scores) != len(pairs):
            msg = f"scorer returned {len(scores)} scores for {len(pairs)} pairs"
            raise RerankError(msg)
        return scores

    def _update_gauges(self) -> None:
        if self._metrics is None:
            return
        self._metrics.queue_pairs.set(self._queued_pairs)
        self._metrics.queue_requests.set(len({id(s.job) for s in self._queue}))
