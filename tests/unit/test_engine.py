"""The scoring engine's contract: cache once, blanks, order, duplicates, deadline, breaker, batching.

The scorers are small but real :class:`~secondpass.pipeline.protocols.Scorer`
implementations that record every batch that reaches them, so each test proves
what the model saw. Tests that need the model busy hold it with a gate (a
``threading.Event``) and wait for conditions with a deadline, never for time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pytest
from tests.docs_examples import run_blocks
from tests.fixtures.cache import CountingScorer
from tests.fixtures.service import FakeScorer

from secondpass.errors import (
    CircuitOpenError,
    OverloadedError,
    RerankError,
    ScoringDeadlineError,
    ScoringUnavailableError,
)
from secondpass.pipeline.batcher import BatchingOptions
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.cache import LRUScoreCache, RedisScoreCache, cache_keys
from secondpass.pipeline.engine import BLANK_SCORE, ScoringEngine, background_work, request_arrived
from secondpass.pipeline.protocols import Scorer
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, PassageScore

ITEMS = [
    ("docs", "1", "cats purr and cats sleep"),
    ("docs", "2", "dogs bark"),
    ("news", "1", "cats in the news"),
]


@pytest.fixture
def engines() -> Callable[..., ScoringEngine]:
    """Build engines that are closed after the test (their threads stopped)."""
    made: list[ScoringEngine] = []

    def build(**kwargs: object) -> ScoringEngine:
        kwargs.setdefault("options", BatchingOptions(max_wait_ms=1.0))
        engine = ScoringEngine(**kwargs)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield build
    for engine in made:
        engine.close()


class RecordingCache(LRUScoreCache):
    """The in-process LRU, recording every call made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: list[list[str]] = []
        self.writes: list[dict[str, PassageScore]] = []

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        self.lookups.append(list(keys))
        return super().get_many(keys)

    def set_many(self, items: Mapping[str, PassageScore]) -> None:
        self.writes.append(dict(items))
        super().set_many(items)


class _RaisingCache:
    """A third-party cache that breaks the no-raise contract."""

    def get_many(self, keys: object) -> dict[str, PassageScore]:
        raise RuntimeError("boom")

    def set_many(self, items: object) -> None:
        raise RuntimeError("boom")


class _OverSharingCache(LRUScoreCache):
    """Answers with keys nobody asked for and values that are not scores."""

    def get_many(self, keys: Sequence[str]) -> dict[str, PassageScore]:
        found: dict[str, object] = dict(super().get_many(keys))
        found["not-asked-for"] = PassageScore(raw=99.0, normalized=1.0)
        found.update({key: "garbage" for key in keys})
        return found  # type: ignore[return-value]


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Block until ``condition()`` holds (checked every few ms), failing after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


async def _await_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def _held(engine: ScoringEngine, scorer: FakeScorer) -> threading.Thread:
    """Occupy the model thread with one request until ``scorer.gate`` is set."""
    scorer.gate = threading.Event()
    blocker = threading.Thread(
        target=engine.score_sync, args=("blocker", [("", "", "hold the model")]), daemon=True
    )
    blocker.start()
    assert scorer.entered.wait(5)
    return blocker


# ------------------------------------------------------------------- cache and blanks


def test_construction_does_no_io_and_starts_no_thread(counting_scorer: CountingScorer) -> None:
    threads = threading.active_count()
    engine = ScoringEngine(scorer=counting_scorer, cache=RecordingCache())
    assert threading.active_count() == threads and engine.batcher is None
    engine.close()


def test_cache_is_looked_up_once_and_written_once(engines, counting_scorer: CountingScorer) -> None:
    cache = RecordingCache()
    engine = engines(scorer=counting_scorer, cache=cache)
    items = [*ITEMS, ITEMS[0], ("docs", "9", "  ")]
    result = engine.score_sync("cats", items)
    keys = cache_keys(counting_scorer.fingerprint, "cats", ITEMS)
    assert cache.lookups == [keys]  # one lookup, distinct keys, no blank
    assert len(cache.writes) == 1 and set(cache.writes[0]) == set(keys)
    assert (result.cache_hits, result.cache_misses, result.scored) == (0, 4, 3)
    again = engine.score_sync("cats", items)
    assert len(cache.lookups) == 2 and len(cache.writes) == 1  # all hits: nothing to write
    assert again.cached == (True, True, True, True, False)
    assert again.scores == result.scores


def test_blank_passages_are_never_looked_up_cached_or_scored(engines) -> None:
    scorer = FakeScorer()
    cache = RecordingCache()
    engine = engines(scorer=scorer, cache=cache)
    items = [("d", "1", ""), ("d", "2", " \n\t"), ("d", "3", "cats")]
    for _ in range(2):
        result = engine.score_sync("cats", items)
        assert result.scores[:2] == (BLANK_SCORE, BLANK_SCORE)
        assert BLANK_SCORE.raw == EMPTY_PASSAGE_RAW_SCORE and BLANK_SCORE.normalized == 0.0
    assert len(cache) == 1 and all(len(keys) == 1 for keys in cache.lookups)
    assert [p for batch in scorer.batches for _, p in batch] == ["cats"]
    assert (result.cache_hits, result.cache_misses) == (1, 0)  # blanks are neither


def test_all_blank_request_never_starts_the_engine(engines) -> None:
    engine = engines(scorer=FakeScorer())
    result = engine.score_sync("q", [("d", "1", ""), ("d", "2", "   ")])
    assert result.scores == (BLANK_SCORE, BLANK_SCORE) and engine.batcher is None


def test_scores_come_back_in_input_order(engines, counting_scorer: CountingScorer) -> None:
    cache = LRUScoreCache()
    engine = engines(scorer=counting_scorer, cache=cache)
    expected = counting_scorer.score("cats", [text for _, _, text in ITEMS])
    engine.score_sync("cats", ITEMS[1:2])  # warm the middle one
    result = engine.score_sync("cats", ITEMS)
    assert list(result.scores) == expected
    assert result.cached == (False, True, False)
    assert counting_scorer.calls[-1] == [ITEMS[0][2], ITEMS[2][2]]  # only the misses, in order


def test_duplicates_are_scored_once(engines, counting_scorer: CountingScorer) -> None:
    cache = LRUScoreCache()
    engine = engines(scorer=counting_scorer, cache=cache)
    items = [ITEMS[0], ITEMS[1], ITEMS[0], ITEMS[0]]
    result = engine.score_sync("cats", items)
    assert counting_scorer.calls == [[ITEMS[0][2], ITEMS[1][2]]]
    assert result.scored == 2 and result.cache_misses == 4
    assert result.scores[0] == result.scores[2] == result.scores[3]
    assert cache.stats.snapshot()["misses"] == 2  # one lookup per distinct key


def test_same_text_in_two_documents_is_scored_once_and_cached_twice(
    engines, counting_scorer: CountingScorer
) -> None:
    cache = LRUScoreCache()
    engine = engines(scorer=counting_scorer, cache=cache)
    items = [("docs", "1", "same text"), ("docs", "2", "same text")]
    result = engine.score_sync("text", items)
    assert result.scored == 1 and len(cache) == 2  # keys name the document, work does not


def test_edited_document_is_rescored(engines, counting_scorer: CountingScorer) -> None:
    engine = engines(scorer=counting_scorer, cache=LRUScoreCache())
    engine.score_sync("cats", ITEMS)
    edited = [ITEMS[0], ("docs", "2", "dogs bark at cats"), ITEMS[2]]
    result = engine.score_sync("cats", edited)
    assert (result.cache_hits, result.cache_misses) == (2, 1)
    assert counting_scorer.calls[-1] == ["dogs bark at cats"]
    assert result.scores[1] == counting_scorer.score("cats", ["dogs bark at cats"])[0]


def test_other_query_or_scorer_misses(engines) -> None:
    cache = LRUScoreCache()
    engine = engines(scorer=CountingScorer(), cache=cache)
    engine.score_sync("cats", ITEMS)
    assert engine.score_sync("dogs", ITEMS).cache_hits == 0
    other = engines(scorer=CountingScorer(fingerprint="overlap/v1|max_length=32"), cache=cache)
    assert other.score_sync("cats", ITEMS).cache_hits == 0


def test_without_a_cache_everything_is_scored(engines, counting_scorer: CountingScorer) -> None:
    engine = engines(scorer=counting_scorer)
    result = engine.score_sync("cats", ITEMS + ITEMS[:1])
    assert result.cache_hits == 0 and result.scored == 3
    assert engine.score_sync("cats", []).scores == ()


def test_a_cache_that_raises_is_treated_as_misses(engines, counting_scorer: CountingScorer) -> None:
    engine = engines(scorer=counting_scorer, cache=_RaisingCache())
    result = engine.score_sync("cats", ITEMS)
    assert result.cache_misses == 3 and counting_scorer.passages_scored == 3


def test_a_dead_redis_costs_misses_only(engines, counting_scorer: CountingScorer) -> None:
    dead = RedisScoreCache(url="redis://127.0.0.1:1/0", cooldown_s=0.0)
    result = engines(scorer=counting_scorer, cache=dead).score_sync("cats", ITEMS)
    assert result.cache_misses == 3 and len(result.scores) == 3
    assert dead.stats.snapshot()["errors"] == 2  # the lookup and the write-back


def test_only_asked_for_keys_of_the_right_type_are_trusted(
    engines, counting_scorer: CountingScorer
) -> None:
    engine = engines(scorer=counting_scorer, cache=_OverSharingCache())
    result = engine.score_sync("cats", ITEMS)
    assert result.cache_hits == 0 and counting_scorer.passages_scored == 3
    assert all(s.raw != 99.0 for s in result.scores)


def test_hits_skip_the_real_cross_encoder(engines, tiny_scorer: Scorer) -> None:
    counted = CountingScorer(inner=tiny_scorer)
    engine = engines(scorer=counted, cache=LRUScoreCache())
    expected = tiny_scorer.score("cats", [text for _, _, text in ITEMS])
    first = engine.score_sync("cats", ITEMS)
    second = engine.score_sync("cats", ITEMS)
    assert counted.passages_scored == 3  # the second request never reached the model
    assert first.timings_ms["model"] > 0.0 and second.timings_ms["model"] == 0.0
    assert [s.raw for s in second.scores] == pytest.approx([s.raw for s in expected], abs=1e-5)


def test_timings_name_each_part(engines, counting_scorer: CountingScorer) -> None:
    result = engines(scorer=counting_scorer, cache=LRUScoreCache()).score_sync("cats", ITEMS)
    assert set(result.timings_ms) == {"cache", "queue", "tokenize", "model", "scoring"}
    assert all(v >= 0.0 for v in result.timings_ms.values())
    assert result.timings_ms["model"] > 0.0


def test_truncation_is_reported_by_position(engines) -> None:
    engine = engines(scorer=FakeScorer(window_words=3))
    result = engine.score_sync("q", [("", "", "a b"), ("", "", "a b c d e"), ("", "", "x")])
    assert result.truncated == (1,)


# ------------------------------------------------------------------- deadline and breaker


def test_a_deadline_that_passes_in_the_queue_drops_the_pairs(engines) -> None:
    scorer = FakeScorer()
    engine = engines(scorer=scorer)
    blocker = _held(engine, scorer)
    with pytest.raises(ScoringDeadlineError) as info:
        engine.score_sync(
            "late", [("", "", "never computed")], deadline=time.monotonic() + 0.05, client_deadline=True
        )
    assert info.value.client_deadline is True
    scorer.gate.set()  # type: ignore[union-attr]
    blocker.join(5)
    engine.score_sync("after", [("", "", "x")])  # a later batch ran: the late pair was not in it
    assert all(q != "late" for batch in scorer.batches for q, _ in batch)


def test_the_default_deadline_counts_from_the_requests_arrival(engines) -> None:
    scorer = FakeScorer()
    engine = engines(scorer=scorer, timeout_s=1.0)
    # Arrived 2 s ago (its body was slow to come): its 1 s are spent before it is queued.
    with request_arrived(time.monotonic() - 2.0), pytest.raises(ScoringDeadlineError):
        engine.score_sync("late", [("", "", "never computed")])
    with request_arrived(time.monotonic()):
        assert len(engine.score_sync("fresh", [("", "", "computed")]).scores) == 1
    assert [q for batch in scorer.batches for q, _ in batch] == ["fresh"]


def test_a_batch_running_past_the_deadline_is_still_cached(engines) -> None:
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    cache = LRUScoreCache()
    engine = engines(scorer=scorer, cache=cache)
    with pytest.raises(ScoringDeadlineError):
        engine.score_sync("q", ITEMS, deadline=time.monotonic() + 0.1)
    assert scorer.entered.is_set()  # the model was on it when the deadline passed
    scorer.gate.set()
    _wait_for(lambda: len(cache) == 3)
    again = engine.score_sync("q", ITEMS)
    assert again.cache_hits == 3 and len(scorer.batches) == 1


def test_breaker_opens_and_half_opens_on_an_injected_clock(engines) -> None:
    now = [1000.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=10.0, clock=lambda: now[0])
    scorer = FakeScorer()
    scorer.fail = True
    engine = engines(scorer=scorer, breaker=breaker)
    for _ in range(2):
        with pytest.raises(RerankError):
            engine.score_sync("q", [("", "", "a")])
    batches = len(scorer.batches)
    with pytest.raises(CircuitOpenError) as info:
        engine.score_sync("q", [("", "", "a")])
    assert info.value.retry_after_s == 10 and len(scorer.batches) == batches  # model not asked
    now[0] += 10.0  # the breaker lets one probe through
    assert breaker.state == "half_open"
    scorer.fail = False
    assert engine.score_sync("q", [("", "", "a")]).scored == 1
    assert breaker.state == "closed"


def test_background_work_never_moves_the_breaker(engines) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=5.0, clock=lambda: now[0])
    scorer = FakeScorer()
    engine = engines(scorer=scorer, breaker=breaker)
    scorer.fail = True
    for text in ("a", "b", "c"):  # shadow failures, past the threshold: the breaker stays closed
        with background_work(), pytest.raises(RerankError):
            engine.score_sync("q", [("", "", text)])
    assert breaker.state == "closed"
    scorer.fail = False
    assert engine.score_sync("q", [("", "", "d")]).scored == 1  # live traffic still scored
    scorer.fail = True
    for text in ("e", "f"):  # live failures open it
        with pytest.raises(RerankError):
            engine.score_sync("q", [("", "", text)])
    now[0] += 5.0
    assert breaker.state == "half_open"
    batches = len(scorer.batches)
    with background_work(), pytest.raises(CircuitOpenError):  # background never takes the probe
        engine.score_sync("q", [("", "", "g")])
    assert len(scorer.batches) == batches and breaker.state == "half_open"
    scorer.fail = False
    with background_work(), pytest.raises(CircuitOpenError):
        engine.score_sync("q", [("", "", "h")])
    assert engine.score_sync("q", [("", "", "i")]).scored == 1  # the live probe closes it
    assert breaker.state == "closed"
    with background_work():
        assert engine.score_sync("q", [("", "", "j")]).scored == 1


def test_a_failed_probe_opens_the_breaker_again(engines) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=5.0, clock=lambda: now[0])
    scorer = FakeScorer()
    scorer.fail = True
    engine = engines(scorer=scorer, breaker=breaker)
    with pytest.raises(RerankError):
        engine.score_sync("q", [("", "", "a")])
    now[0] += 5.0
    with pytest.raises(RerankError):  # the probe reaches the model and fails
        engine.score_sync("q", [("", "", "b")])
    with pytest.raises(CircuitOpenError):
        engine.score_sync("q", [("", "", "c")])
    assert all(p != "c" for batch in scorer.batches for _, p in batch)


def test_a_deadline_missed_while_the_model_idles_is_not_the_models_fault(engines) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=60.0)
    scorer = FakeScorer()
    slow_to_fill = BatchingOptions(max_wait_ms=5_000.0)  # waits to fill a batch
    engine = engines(scorer=scorer, breaker=breaker, options=slow_to_fill)
    with pytest.raises(ScoringDeadlineError):
        engine.score_sync("short", [("", "", "x")], deadline=time.monotonic() + 0.05)
    assert breaker.state == "closed" and scorer.batches == []


def test_a_deadline_missed_behind_a_slow_model_counts(engines) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=60.0)
    scorer = FakeScorer()
    engine = engines(scorer=scorer, breaker=breaker)
    blocker = _held(engine, scorer)  # the model is stuck on an earlier batch
    with pytest.raises(ScoringDeadlineError):
        engine.score_sync("late", [("", "", "x")], deadline=time.monotonic() + 0.05)
    assert breaker.state == "open"
    scorer.gate.set()  # type: ignore[union-attr]
    blocker.join(5)


def test_a_closed_engine_refuses_work(counting_scorer: CountingScorer) -> None:
    engine = ScoringEngine(scorer=counting_scorer)
    engine.score_sync("q", ITEMS)
    engine.close()
    with pytest.raises(ScoringUnavailableError):
        engine.score_sync("q", ITEMS)


# ------------------------------------------------------------------- one queue


async def test_sync_and_async_callers_share_one_batch(engines) -> None:
    scorer = FakeScorer()
    engine = engines(scorer=scorer, options=BatchingOptions(max_wait_ms=50.0))
    blocker = await asyncio.to_thread(_held, engine, scorer)
    sync_caller = threading.Thread(
        target=engine.score_sync, args=("from-thread", [("", "", "a"), ("", "", "b")]), daemon=True
    )
    sync_caller.start()
    async_caller = asyncio.create_task(engine.score("from-task", [("", "", "c"), ("", "", "d")]))
    await _await_for(lambda: engine.queued_pairs == 4)
    scorer.gate.set()  # type: ignore[union-attr]
    result = await async_caller
    await asyncio.to_thread(sync_caller.join, 5)
    await asyncio.to_thread(blocker.join, 5)
    assert result.scored == 2
    assert {q for q, _ in scorer.batches[1]} == {"from-thread", "from-task"}  # one forward pass


async def test_a_cancelled_caller_never_reaches_the_model(engines) -> None:
    scorer = FakeScorer()
    engine = engines(scorer=scorer)
    blocker = await asyncio.to_thread(_held, engine, scorer)
    gone = asyncio.create_task(engine.score("gone", [("", "", "x"), ("", "", "y")]))
    await _await_for(lambda: engine.queued_pairs == 2)
    gone.cancel()
    await _await_for(lambda: engine.queued_pairs == 0)  # its pairs left the queue at once
    scorer.gate.set()  # type: ignore[union-attr]
    await asyncio.to_thread(blocker.join, 5)
    await engine.score("after", [("", "", "z")])
    assert gone.cancelled()
    assert all(q != "gone" for batch in scorer.batches for q, _ in batch)


# ------------------------------------------------------------------------- calibration


class _CostlyScorer(FakeScorer):
    """FakeScorer whose forward pass costs 5 ms of wall time per pair, like a real model."""

    def score_pairs(self, pairs, *, timings=None):  # type: ignore[no-untyped-def]
        time.sleep(0.005 * len(pairs))  # the model's work, not a clock the test reads
        return super().score_pairs(pairs, timings=timings)


def _long_items(n: int) -> list[tuple[str, str, str]]:
    return [("docs", str(i), f"passage {i} " + "cats purr and sleep all day " * 12) for i in range(n)]


def test_calibration_measures_the_model_before_any_request_bypassing_the_cache(engines) -> None:
    scorer, cache = FakeScorer(), RecordingCache()
    engine = engines(scorer=scorer, cache=cache, options=BatchingOptions(max_batch_pairs=8))
    assert engine.throughput() is None
    rate = engine.calibrate()
    assert rate is not None and rate > 0 and engine.throughput() == rate
    assert [len(batch) for batch in scorer.batches] == [2]  # one batch a quarter full
    assert cache.lookups == [] and cache.writes == []  # synthetic pairs never reach the cache


async def test_a_calibrated_engine_refuses_a_cold_burst_that_cannot_finish_in_time(engines) -> None:
    options = BatchingOptions(max_batch_pairs=8, max_wait_ms=1.0, max_queue_s=0.5)
    # 10 requests of 40 pairs: each fits the 0.5 s limit alone (~0.2 s of model work at
    # 5 ms a pair), all together (~2 s) do not.
    burst = [(f"cats {r}", _long_items(40)) for r in range(10)]
    calibrated = engines(scorer=_CostlyScorer(), options=options)
    calibrated.calibrate()
    outcomes = await asyncio.gather(
        *(calibrated.score(q, items) for q, items in burst), return_exceptions=True
    )
    refused = [o for o in outcomes if isinstance(o, OverloadedError)]
    assert refused and len(refused) < len(burst), outcomes
    assert all(not isinstance(o, BaseException) for o in outcomes if o not in refused)
    # Uncalibrated, only the pair bound decides: the whole burst is queued (then withdrawn).
    scorer = FakeScorer()
    cold = engines(scorer=scorer, options=options)
    blocker = await asyncio.to_thread(_held, cold, scorer)
    queued = [asyncio.create_task(cold.score(q, items)) for q, items in burst]
    await _await_for(lambda: cold.queued_pairs == 400)
    for task in queued:
        task.cancel()
    scorer.gate.set()  # type: ignore[union-attr]
    await asyncio.to_thread(blocker.join, 5)


# ------------------------------------------------------------------------- docs


def test_docs_example_runs() -> None:
    ns = run_blocks("cache.md")
    assert ns["second"].cache_hits == 2  # type: ignore[attr-defined]
