"""The shared batcher: fair shares, admission in time, dropped work, library errors.

A recording scorer stands in for the model: it can hold the model thread on a
gate (so the queue fills deterministically) and advance an injected clock by a
fixed time per pair (so the measured throughput is exact). No test sleeps to
wait for something; they wait on events and conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from tests.fixtures.service import FakeScorer

from secondpass.errors import (
    OverloadedError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
)
from secondpass.pipeline.batcher import (
    BatchingOptions,
    BatchReport,
    DynamicBatcher,
    estimate_tokens,
)
from secondpass.types import PassageScore


class FakeClock:
    """A monotonic clock the scorer advances; tests never wait on real time for it."""

    def __init__(self) -> None:
        self.now = time.monotonic()  # so deadlines from far() mean the same on both clocks

    def __call__(self) -> float:
        return self.now


class RecordingScorer(FakeScorer):
    """The service tests' fake (records ``batches``; ``gate``, ``entered``, ``fail``) plus a clock.

    The gate starts open. Each batch advances ``clock`` by ``seconds_per_pair``
    per pair, so the measured throughput is exactly ``1 / seconds_per_pair``;
    ``crash`` makes a batch raise an exception that is not one of ours.
    """

    def __init__(self, *, clock: FakeClock | None = None, seconds_per_pair: float = 0.01) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.clock = clock
        self.seconds_per_pair = seconds_per_pair
        self.crash = False

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict[str, float] | None = None
    ) -> list[PassageScore]:
        scores = super().score_pairs(pairs, timings=timings)
        if self.clock is not None:
            self.clock.now += self.seconds_per_pair * len(pairs)
        if self.crash:
            raise ValueError("model blew up")
        return scores

    def seen(self, query: str) -> bool:
        return any(q == query for batch in self.batches for q, _ in batch)


class Observed:
    """A BatchObserver that keeps what it was told."""

    def __init__(self) -> None:
        self.rejections: list[str] = []
        self.batches: list[BatchReport] = []
        self.depth: tuple[int, int] = (0, 0)
        self.failures = 0
        self.waits: list[float] = []

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def queue_depth(self, pairs: int, requests: int) -> None:
        self.depth = (pairs, requests)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch_done(self, report: BatchReport) -> None:
        self.batches.append(report)

    def model_failed(self) -> None:
        self.failures += 1


def pairs(query: str, n: int, chars: int = 40) -> list[tuple[str, str]]:
    return [(query, f"{i:04d}" + "x" * (chars - 4)) for i in range(n)]


def far() -> float:
    return time.monotonic() + 30.0


@asynccontextmanager
async def running(batcher: DynamicBatcher) -> AsyncIterator[DynamicBatcher]:
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.close()


async def until(condition: Any, what: str, timeout_s: float = 5.0) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0)


async def hold_model(scorer: RecordingScorer, batcher: DynamicBatcher) -> asyncio.Task[Any]:
    """Put one pair in the model thread and keep it there until ``scorer.gate`` is set."""
    scorer.gate.clear()
    scorer.entered.clear()
    task = asyncio.create_task(batcher.submit([("hold", "the model")], deadline=far()))
    assert await asyncio.to_thread(scorer.entered.wait, 5)
    return task


async def behind_held_model(
    scorer: RecordingScorer,
    batcher: DynamicBatcher,
    *requests: list[tuple[str, str]],
    deadline: float | None = None,
) -> list[asyncio.Task[Any]]:
    """Hold the model on one pair, then queue ``requests`` behind it; the held task comes last."""
    held = await hold_model(scorer, batcher)
    total = batcher.queued_pairs + sum(len(r) for r in requests)
    until_s = far() if deadline is None else deadline
    tasks = [asyncio.create_task(batcher.submit(r, deadline=until_s)) for r in requests]
    await until(lambda: batcher.queued_pairs == total, f"{len(requests)} requests queued")
    return [*tasks, held]


# ----------------------------------------------------------------- fairness


async def test_small_request_rides_in_the_next_batch_while_big_ones_are_queued() -> None:
    scorer = RecordingScorer()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0, max_batch_pairs=64))
    async with running(batcher):
        *big, held = await behind_held_model(
            scorer, batcher, *[pairs(f"big{j}", 1000) for j in range(4)]
        )
        victim = asyncio.create_task(batcher.submit(pairs("victim", 1), deadline=far()))
        await until(lambda: batcher.queued_pairs == 4001, "victim queued")
        scorer.gate.set()
        scores = await victim
        await held
        for task in big:
            task.cancel()
        await asyncio.gather(*big, return_exceptions=True)
    assert len(scores) == 1
    first_after = scorer.batches[1]  # batches[0] is the held pair
    assert ("victim", pairs("victim", 1)[0][1]) in first_after
    shares = {q: sum(1 for x, _ in first_after if x == q) for q in ("big0", "big1", "big2", "big3")}
    assert len(first_after) == 64 and max(shares.values()) - min(shares.values()) <= 1


async def test_results_come_back_in_input_order_across_batches() -> None:
    scorer = RecordingScorer()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0, max_batch_pairs=7))
    sent = [("q", "w " * (i + 1)) for i in range(60)]  # every pair scores differently
    async with running(batcher):
        tasks = await behind_held_model(scorer, batcher, sent, pairs("other", 20))
        scorer.gate.set()
        got, _, _ = await asyncio.gather(*tasks)
    assert [s.raw for s in got] == [s.raw for s in FakeScorer().score_pairs(sent)]
    assert all(len(batch) <= 7 for batch in scorer.batches)
    assert sum(1 for batch in scorer.batches if any(q == "q" for q, _ in batch)) > 1


async def test_batching_off_serves_one_request_per_batch_taking_turns() -> None:
    scorer = RecordingScorer()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(batching=False, max_batch_pairs=4))
    async with running(batcher):
        tasks = await behind_held_model(scorer, batcher, *[pairs(f"r{j}", 8) for j in range(3)])
        scorer.gate.set()
        await asyncio.gather(*tasks)
    served = [{q for q, _ in batch} for batch in scorer.batches[1:]]
    assert all(len(queries) == 1 for queries in served)
    assert [next(iter(q)) for q in served[:3]] == ["r0", "r1", "r2"]  # turns, not FIFO


async def test_concurrent_callers_share_one_batch() -> None:
    scorer = RecordingScorer()
    observed = Observed()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0), observer=observed)
    async with running(batcher):
        tasks = await behind_held_model(scorer, batcher, *[pairs(f"q{i}", 2) for i in range(6)])
        scorer.gate.set()
        await asyncio.gather(*tasks)
    assert {q for q, _ in scorer.batches[1]} == {f"q{i}" for i in range(6)}
    assert observed.batches[-1].pairs == 12 and observed.batches[-1].requests == 6
    assert observed.depth == (0, 0) and len(observed.waits) == 7
    assert batcher.throughput() is None  # batches of 1 and 12 of 64 pairs: overhead, not timed


# ---------------------------------------------------------- admission in time


async def measured(scorer: RecordingScorer, batcher: DynamicBatcher) -> None:
    """Run one batch full enough to be measured (20 of 64 pairs) so throughput is known."""
    await batcher.submit(pairs("warm", 20), deadline=far())
    assert batcher.throughput() == pytest.approx(1 / scorer.seconds_per_pair)


async def test_request_that_cannot_finish_in_time_is_refused_at_once() -> None:
    clock = FakeClock()
    scorer = RecordingScorer(clock=clock, seconds_per_pair=0.01)  # 100 pairs/s
    observed = Observed()
    batcher = DynamicBatcher(
        scorer, options=BatchingOptions(max_wait_ms=0), clock=clock, observer=observed
    )
    async with running(batcher):
        assert batcher.throughput() is None
        await measured(scorer, batcher)
        first, held = await behind_held_model(scorer, batcher, pairs("first", 500))
        # 500 own pairs + 500 shared with "first" at 100 pairs/s: 10 s, planned with
        # 80 % of the measured rate: 12.5 s > 5 s.
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(pairs("late", 500), deadline=clock() + 5)
        # One pair shares batches with one of first's: well within 5 s.
        small = asyncio.create_task(batcher.submit(pairs("small", 1), deadline=clock() + 5))
        await until(lambda: batcher.queued_pairs == 501, "small admitted")
        scorer.gate.set()
        await asyncio.gather(first, small, held)
    # Alone it would need 6.25 s, more than 5 s: retry once the queue is empty (6.25 s).
    assert refused.value.retry_after_s == 7
    assert "500 pairs" in str(refused.value)
    assert not scorer.seen("late")
    assert observed.rejections == ["over_time"]


def capped_at_3_s() -> tuple[FakeClock, RecordingScorer, DynamicBatcher]:
    """A batcher admitting at most 3 s of estimated work, on a clock its scorer advances."""
    clock = FakeClock()
    scorer = RecordingScorer(clock=clock, seconds_per_pair=0.01)
    options = BatchingOptions(max_wait_ms=0, max_queue_s=3)
    return clock, scorer, DynamicBatcher(scorer, options=options, clock=clock)


async def test_max_queue_s_caps_the_estimate_whatever_the_deadline() -> None:
    clock, scorer, batcher = capped_at_3_s()
    async with running(batcher):
        await measured(scorer, batcher)
        first, held = await behind_held_model(scorer, batcher, pairs("first", 200))
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(pairs("late", 200), deadline=clock() + 3600)
        scorer.gate.set()
        await asyncio.gather(first, held)
    assert not scorer.seen("late")
    # 2.5 s alone fits 3 s; shared with "first" 5.0 s: retry when 2 s of it are done.
    assert refused.value.retry_after_s == 3


async def test_max_queue_s_counts_from_arrival_not_from_submission() -> None:
    clock, scorer, batcher = capped_at_3_s()
    async with running(batcher):
        await measured(scorer, batcher)
        first, held = await behind_held_model(scorer, batcher, pairs("first", 100))
        # 50 pairs sharing batches with "first": 100 pairs of work, 1.25 s at 80 % of
        # 100 pairs/s. Arrived 2 s ago (a slow body, a busy loop), 1 s of 3 s is left.
        with pytest.raises(OverloadedError):
            await batcher.submit(pairs("late", 50), deadline=clock() + 3600, arrived=clock() - 2)
        # The same work arriving now fits.
        fresh = asyncio.create_task(
            batcher.submit(pairs("fresh", 50), deadline=clock() + 3600, arrived=clock())
        )
        await until(lambda: batcher.queued_pairs == 150, "fresh admitted")
        scorer.gate.set()
        await asyncio.gather(first, fresh, held)
    assert not scorer.seen("late")
    assert scorer.seen("fresh")


async def test_newcomer_that_would_make_an_admitted_request_late_is_refused() -> None:
    clock = FakeClock()
    scorer = RecordingScorer(clock=clock, seconds_per_pair=0.01)  # 100 pairs/s
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0), clock=clock)
    async with running(batcher):
        await measured(scorer, batcher)
        # 300 pairs: planned done in 3.75 s (80 % of 100 pairs/s), within its 4.5 s deadline.
        tight, held = await behind_held_model(
            scorer, batcher, pairs("tight", 300), deadline=clock() + 4.5
        )
        # 100 more pairs would fit their own (long) deadline but delay "tight" by 1.25 s.
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(pairs("pushy", 100), deadline=clock() + 3600)
        # 30 more delay it by 0.375 s: still on time.
        modest = asyncio.create_task(batcher.submit(pairs("modest", 30), deadline=clock() + 3600))
        await until(lambda: batcher.queued_pairs == 330, "modest admitted")
        scorer.gate.set()
        await asyncio.gather(tight, modest, held)
    assert refused.value.retry_after_s == 4  # ceil(3.76 s): when "tight" is done
    assert "miss their deadline" in str(refused.value)
    assert not scorer.seen("pushy")


async def test_measured_batches_hold_about_half_a_second_of_work() -> None:
    clock = FakeClock()
    scorer = RecordingScorer(clock=clock, seconds_per_pair=0.01)  # 14 tokens/pair: 1,400 tokens/s
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0), clock=clock)
    async with running(batcher):
        await measured(scorer, batcher)
        await batcher.submit(pairs("long", 200), deadline=far())
    sizes = [len(batch) for batch in scorer.batches if batch[0][0] == "long"]
    # 700 tokens = 0.5 s at the measured rate (49 when float rounding shaves a token)
    assert sum(sizes) == 200 and 49 <= max(sizes) <= 50 and len(sizes) <= 5


async def test_throughput_counts_the_time_between_batches_while_work_waits() -> None:
    clock = FakeClock()
    scorer = RecordingScorer(clock=clock, seconds_per_pair=0.01)  # 0.2 s per batch of 20

    def overhead() -> None:  # after each batch, 0.2 s pass before the next can start
        clock.now += 0.2

    options = BatchingOptions(max_wait_ms=0, max_batch_pairs=20)
    batcher = DynamicBatcher(scorer, options=options, clock=clock, on_success=overhead)
    async with running(batcher):
        await batcher.submit(pairs("first", 20), deadline=far())  # from idle: 100 pairs/s
        assert batcher.throughput() == pytest.approx(100.0)
        await batcher.submit(pairs("two", 40), deadline=far())
    # "two": its first batch follows an idle worker (100/s); its second waited for the
    # first's 0.2 s of overhead, 20 pairs in 0.4 s (50/s): the average moves 30 % of the way.
    assert batcher.throughput() == pytest.approx(100.0 + 0.3 * (50.0 - 100.0))


async def test_nearly_idle_queue_admits_oversized_request_and_pair_bound_applies_first() -> None:
    scorer = RecordingScorer()
    observed = Observed()
    batcher = DynamicBatcher(
        scorer,
        options=BatchingOptions(
            max_wait_ms=0,
            max_batch_pairs=4,
            max_queue_pairs=6,  # 9 pairs: too large on their own
        ),
        retry_after_s=3,
        observer=observed,
    )
    async with running(batcher):
        held = await hold_model(scorer, batcher)
        small = asyncio.create_task(batcher.submit(pairs("small", 1), deadline=far()))
        await until(lambda: batcher.queued_pairs == 1, "small queued")
        # 1 pair waiting fits the next batch: 9 pairs get in although 10 > 6.
        large = asyncio.create_task(batcher.submit(pairs("large", 9), deadline=far()))
        await until(lambda: batcher.queued_pairs == 10, "large admitted")
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(pairs("more", 1), deadline=far())
        scorer.gate.set()
        await asyncio.gather(small, large, held)
    assert refused.value.retry_after_s == 3
    assert observed.rejections == ["queue_full"]
    assert not scorer.seen("more")


# ------------------------------------------------------------ dropped work


async def test_cancelled_caller_pairs_are_removed_at_once_and_never_scored() -> None:
    scorer = RecordingScorer()
    observed = Observed()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0), observer=observed)
    async with running(batcher):
        gone, stays, held = await behind_held_model(
            scorer, batcher, pairs("gone", 50), pairs("stays", 3)
        )
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert batcher.queued_pairs == 3 and observed.depth == (3, 1)
        scorer.gate.set()
        await asyncio.gather(stays, held)
    assert not scorer.seen("gone") and scorer.seen("stays")


async def test_caller_leaving_mid_batch_does_not_disturb_the_others() -> None:
    scorer = RecordingScorer()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0))
    async with running(batcher):
        scorer.gate.clear()
        scorer.entered.clear()
        leaves = asyncio.create_task(batcher.submit(pairs("leaves", 2), deadline=far()))
        stays = asyncio.create_task(batcher.submit(pairs("stays", 2), deadline=far()))
        assert await asyncio.to_thread(scorer.entered.wait, 5)  # both in the running batch
        leaves.cancel()
        scorer.gate.set()
        assert len(await stays) == 2
        with pytest.raises(asyncio.CancelledError):
            await leaves
    assert scorer.batches[0] == pairs("leaves", 2) + pairs("stays", 2)


async def test_deadline_drops_pending_pairs_with_a_library_error() -> None:
    scorer = RecordingScorer()
    observed = Observed()
    batcher = DynamicBatcher(scorer, options=BatchingOptions(max_wait_ms=0), observer=observed)
    async with running(batcher):
        held = await hold_model(scorer, batcher)
        with pytest.raises(ScoringDeadlineError) as late:
            await batcher.submit(
                pairs("late", 5), deadline=time.monotonic() + 0.05, client_deadline=True
            )
        assert batcher.queued_pairs == 0  # removed at the deadline, model still busy
        with pytest.raises(ScoringDeadlineError) as past:
            await batcher.submit(pairs("past", 1), deadline=time.monotonic() - 1)
        scorer.gate.set()
        await held
    assert late.value.client_deadline and not past.value.client_deadline
    assert not scorer.seen("late") and not scorer.seen("past")
    assert observed.rejections == ["deadline", "deadline"]


# -------------------------------------------------------------- errors


async def test_errors_are_the_library_ones() -> None:
    scorer = RecordingScorer()
    observed = Observed()
    failures: list[BaseException] = []
    batcher = DynamicBatcher(scorer, observer=observed, on_failure=failures.append)
    with pytest.raises(ScoringUnavailableError):
        await batcher.submit(pairs("q", 1), deadline=far())  # not started
    async with running(batcher):
        scorer.crash = True
        with pytest.raises(RerankError) as failed:
            await batcher.submit(pairs("q", 2), deadline=far())
    with pytest.raises(ScoringUnavailableError):
        await batcher.submit(pairs("q", 1), deadline=far())  # closed
    assert isinstance(failed.value.__cause__, ValueError)
    assert observed.failures == 1 and len(failures) == 1
    assert batcher.throughput() is None  # a failed batch measures nothing


def test_the_batcher_imports_no_http_code() -> None:
    code = (
        "import sys, secondpass.pipeline.batcher\n"
        "print(sorted(m for m in sys.modules if m.startswith(('secondpass.service', "
        "'fastapi', 'starlette', 'prometheus_client'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_token_estimate_counts_query_and_passage() -> None:
    assert estimate_tokens("abcd", "efgh" * 10) == 44 // 4 + 3
