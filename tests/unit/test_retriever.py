"""Behaviour of the retrieval facade over in-memory fakes of the protocols.

The fakes implement ``Connector``/``AsyncConnector`` and ``Scorer`` exactly as a
real engine and model would be seen through the protocols; the retriever code
under test is the real one. Deadline tests measure elapsed wall time only to
prove the answer came back long before the slow scorer would have finished
(generous slack; these are not benchmarks).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.docs_examples import python_blocks

from secondpass.errors import (
    ConfigurationError,
    OverloadedError,
    RerankError,
    SearchDeadlineError,
)
from secondpass.pipeline.batcher import BatchingOptions
from secondpass.pipeline.cache import LRUScoreCache
from secondpass.pipeline.engine import ScoringEngine
from secondpass.pipeline.first_stage import LexicalStage
from secondpass.pipeline.passages import PassageTemplate, render_passage
from secondpass.pipeline.retriever import Retriever, dedupe_hits
from secondpass.types import EMPTY_PASSAGE_RAW_SCORE, Hit, PassageScore, SearchRequest

# ----------------------------------------------------------------------------- fakes


class ListConnector:
    """A Connector over a fixed first-stage list: returns its first ``size`` hits."""

    def __init__(self, hits: Sequence[Hit], *, delay_s: float = 0.0) -> None:
        self.hits = list(hits)
        self.delay_s = delay_s
        self.requests: list[SearchRequest] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.requests.append(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.hits[: request.size]

    def close(self) -> None:
        pass


class AsyncListConnector:
    """The AsyncConnector twin of :class:`ListConnector`."""

    def __init__(self, hits: Sequence[Hit]) -> None:
        self.hits = list(hits)
        self.requests: list[SearchRequest] = []

    async def search(self, request: SearchRequest) -> list[Hit]:
        self.requests.append(request)
        await asyncio.sleep(0)
        return self.hits[: request.size]

    async def close(self) -> None:
        pass


def _digest_score(query: str, passage: str) -> float:
    digest = hashlib.sha256(f"{query}\x00{passage}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") % 2001 - 1000) / 100.0  # [-10, 10], many ties


class HashScorer:
    """Deterministic Scorer: score from a hash of (query, passage); records every model call.

    The engine's batcher calls ``score_pairs`` (pairs may mix queries); each call
    is recorded as one ``(query, passages)`` entry per query it held.
    """

    fingerprint = "hash-scorer/v1"

    def __init__(self, *, delay_per_passage_s: float = 0.0, constant: float | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.delay_per_passage_s = delay_per_passage_s
        self.constant = constant
        self._lock = threading.Lock()

    def _one(self, query: str, passage: str) -> PassageScore:
        raw = self.constant if self.constant is not None else _digest_score(query, passage)
        return PassageScore(raw=raw, normalized=1.0 / (1.0 + math.exp(-raw)))

    def score(self, query, passages, *, timings=None):  # type: ignore[no-untyped-def]
        return self.score_pairs([(query, p) for p in passages], timings=timings)

    def score_pairs(self, pairs, *, timings=None):  # type: ignore[no-untyped-def]
        by_query: dict[str, list[str]] = {}
        for query, passage in pairs:
            by_query.setdefault(query, []).append(passage)
        with self._lock:
            self.calls.extend(by_query.items())
        if self.delay_per_passage_s:
            time.sleep(self.delay_per_passage_s * len(pairs))
        if timings is not None:
            timings["model_ms"] = timings.get("model_ms", 0.0) + 0.1
        return [self._one(q, p) for q, p in pairs]

    @property
    def passages_seen(self) -> list[str]:
        return [p for _, passages in self.calls for p in passages]


class FailingScorer(HashScorer):
    def score_pairs(self, pairs, *, timings=None):  # type: ignore[no-untyped-def]
        self.calls.append(("", [p for _, p in pairs]))
        raise RuntimeError("CUDA out of memory (simulated)")


class SlowScorer(HashScorer):
    """Blocks until released (at most ``hold_s``), like a model stuck on a huge batch."""

    def __init__(self, hold_s: float = 5.0) -> None:
        super().__init__()
        self.hold_s = hold_s
        self.release = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()

    def score_pairs(self, pairs, *, timings=None):  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(self.hold_s)
        try:
            return super().score_pairs(pairs, timings=timings)
        finally:
            self.finished.set()


class NaNScorer(HashScorer):
    def _one(self, query: str, passage: str) -> PassageScore:
        return PassageScore(raw=math.nan, normalized=math.nan)


def make_hits(texts: Sequence[str], *, index: str = "docs") -> list[Hit]:
    return [
        Hit(index=index, id=f"d{i}", score=100.0 - i, rank=i + 1, fields={"body": text})
        for i, text in enumerate(texts)
    ]


@pytest.fixture
def closing():
    made: list[Retriever] = []

    def build(**kwargs: object) -> Retriever:
        retriever = Retriever(**kwargs)  # type: ignore[arg-type]
        made.append(retriever)
        return retriever

    yield build
    for retriever in made:
        retriever.close()


# ------------------------------------------------------------------ strategies

_TEXTS = st.sampled_from(["", "   ", "cats purr", "dogs bark", "fish swim", "cats purr", "birds"])


@st.composite
def hit_lists(draw: st.DrawFn) -> list[Hit]:
    """First-stage lists with duplicates, repeated texts (ties) and empty passages."""
    n = draw(st.integers(min_value=0, max_value=30))
    hits = []
    for position in range(n):
        hits.append(
            Hit(
                index=draw(st.sampled_from(["a", "b"])),
                id=str(draw(st.integers(min_value=0, max_value=12))),
                score=float(n - position),
                rank=position + 1,
                fields={"body": draw(_TEXTS)},
            )
        )
    return hits


# ----------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hits=hit_lists(),
    k=st.integers(min_value=0, max_value=40),
    window=st.integers(min_value=1, max_value=40),
    query=st.sampled_from(["cats", "what do dogs do", ""]),
)
def test_rerank_properties(hits: list[Hit], k: int, window: int, query: str) -> None:
    scorer = HashScorer()
    with Retriever(scorer=scorer, window=window) as retriever:
        result = retriever.rerank_hits(query, hits, k=k)

    distinct = dedupe_hits(hits)
    keys = [rh.hit.key for rh in result.hits]
    assert result.status == "ok"
    assert len(result.hits) == min(k, len(distinct))
    assert len(set(keys)) == len(keys)
    assert set(keys) <= {h.key for h in hits}
    assert [rh.rank for rh in result.hits] == list(range(1, len(result.hits) + 1))
    in_window = {h.key for h in distinct[:window]}
    reranked = [rh for rh in result.hits if rh.hit.key in in_window]
    assert all(rh.score is not None and math.isfinite(rh.score) for rh in reranked)
    assert all(rh.score is None for rh in result.hits if rh.hit.key not in in_window)
    # reranked hits first, by score desc, equal scores in first-stage rank order
    assert result.hits[: len(reranked)] == tuple(reranked)
    for before, after in zip(reranked, reranked[1:], strict=False):
        assert before.score is not None and after.score is not None
        assert (before.score, -before.hit.rank) >= (after.score, -after.hit.rank)
    # hits past the window keep first-stage order
    tail = [rh.hit.rank for rh in result.hits[len(reranked) :]]
    assert tail == sorted(tail)
    # the model never sees an empty passage, and is not called when there is nothing to score
    assert all(p.strip() for p in scorer.passages_seen)
    if not any(render_passage(h).strip() for h in distinct[:window]):
        assert scorer.calls == []
    assert len(scorer.calls) <= 1
    # duplicates kept their best (first-stage) rank
    best = {h.key: h.rank for h in reversed(hits)}
    assert all(rh.hit.rank == best[rh.hit.key] for rh in result.hits)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    hits=hit_lists(),
    page=st.integers(min_value=1, max_value=7),
    window=st.integers(min_value=1, max_value=20),
)
def test_pages_concatenate_to_one_big_page(hits: list[Hit], page: int, window: int) -> None:
    connector = ListConnector(hits)
    with Retriever(connector=connector, scorer=HashScorer(), window=window) as retriever:
        big = retriever.search("cats", k=len(hits) + 5)
        pages = []
        for offset in range(0, len(hits) + page, page):
            pages.extend(retriever.search("cats", k=page, offset=offset).hits)
    assert tuple(pages) == big.hits


@given(hits=hit_lists())
@settings(max_examples=40, deadline=None)
def test_equal_scores_keep_first_stage_order(hits: list[Hit]) -> None:
    with Retriever(scorer=HashScorer(constant=1.5), window=50) as retriever:
        result = retriever.rerank_hits("q", hits)
    nonempty = [h for h in dedupe_hits(hits) if render_passage(h).strip()]
    empty = [h for h in dedupe_hits(hits) if not render_passage(h).strip()]
    assert [rh.hit for rh in result.hits] == nonempty + empty


# ------------------------------------------------------------------- examples


def test_zero_hits_means_zero_model_calls(closing) -> None:
    scorer = HashScorer()
    retriever = closing(connector=ListConnector([]), scorer=scorer)
    result = retriever.search("anything")
    assert result.hits == () and result.status == "ok" and result.window == 0
    assert scorer.calls == []
    assert retriever.engine.batcher is None  # the engine did not even start its thread


def test_empty_text_hit_is_kept_and_never_sent_to_the_model(closing) -> None:
    scorer = HashScorer()
    hits = make_hits(["cats purr", "", "  \n ", "dogs bark"])
    result = closing(scorer=scorer).rerank_hits("cats", hits)
    assert {rh.hit.id for rh in result.hits} == {"d0", "d1", "d2", "d3"}
    assert scorer.passages_seen == ["cats purr", "dogs bark"]
    empties = [rh for rh in result.hits if rh.hit.id in {"d1", "d2"}]
    assert [rh.rank for rh in empties] == [3, 4]  # last among reranked, first-stage order
    assert all(rh.rerank is not None and rh.rerank.raw == EMPTY_PASSAGE_RAW_SCORE for rh in empties)
    assert all(rh.score == 0.0 for rh in empties)
    assert result.reranked == 4 and result.cache_misses == 2


def test_search_asks_the_first_stage_for_the_window_or_the_page(closing) -> None:
    connector = ListConnector(make_hits(["x"] * 5))
    retriever = closing(connector=connector, scorer=HashScorer(), window=30)
    retriever.search("q", k=10, filters=[{"term": {"lang": "en"}}])
    retriever.search("q", k=10, offset=40)
    assert [r.size for r in connector.requests] == [30, 50]
    assert connector.requests[0].filters == ({"term": {"lang": "en"}},)
    assert connector.requests[0].query == "q"


def test_hits_past_the_window_follow_in_first_stage_order(closing) -> None:
    texts = [f"passage {i}" for i in range(10)]
    result = closing(scorer=HashScorer(), window=4).rerank_hits("q", make_hits(texts))
    assert {rh.hit.id for rh in result.hits[:4]} == {"d0", "d1", "d2", "d3"}
    assert [rh.hit.id for rh in result.hits[4:]] == [f"d{i}" for i in range(4, 10)]
    assert all(rh.score is None and rh.rerank is None for rh in result.hits[4:])
    assert result.window == 4 and result.reranked == 4


def test_rank_by_raw_and_min_score(closing) -> None:
    hits = make_hits(["a", "b", "c", "d", "e", "f"])
    scorer = HashScorer()
    raw = closing(scorer=scorer, rank_by="raw").rerank_hits("q", hits)
    assert [rh.score for rh in raw.hits] == sorted((rh.score for rh in raw.hits), reverse=True)
    assert all(rh.rerank is not None and rh.score == rh.rerank.raw for rh in raw.hits)
    threshold = raw.hits[2].score
    kept = closing(scorer=scorer, rank_by="raw", min_score=threshold).rerank_hits("q", hits)
    assert [rh.hit.id for rh in kept.hits] == [rh.hit.id for rh in raw.hits[:3]]


def test_min_score_never_drops_hits_past_the_window(closing) -> None:
    hits = make_hits(["a", "b", "c", "d"])
    result = closing(scorer=HashScorer(), window=2, min_score=2.0).rerank_hits("q", hits)
    assert [rh.hit.id for rh in result.hits if rh.score is None] == ["d2", "d3"]
    assert all(rh.score > 2.0 for rh in result.hits if rh.score is not None)  # normalised <= 1


def test_template_renders_fields_and_missing_fields_are_empty(closing) -> None:
    hit = Hit("docs", "1", 1.0, 1, {"title": "Cats", "body": "purr loudly"})
    assert render_passage(hit, "{title}: {body}") == "Cats: purr loudly"
    assert render_passage(hit, "{title} {author}") == "Cats"
    assert render_passage(hit) == "Cats\npurr loudly"
    assert render_passage(hit, lambda h: h.fields["body"].upper()) == "PURR LOUDLY"
    labelled = PassageTemplate(fields=("title", "body"), labels=True, budgets={"body": 1})
    assert render_passage(hit, labelled) == "title: Cats\nbody: purr"
    scorer = HashScorer()
    closing(scorer=scorer, template="{title} / {body}").rerank_hits("q", [hit])
    assert scorer.passages_seen == ["Cats / purr loudly"]


@pytest.mark.parametrize("template", ["{title.__class__}", "{0}", "{fields[x]}", "{", 42])
def test_unsafe_or_broken_templates_are_rejected(template: object) -> None:
    with pytest.raises(ConfigurationError):
        Retriever(scorer=HashScorer(), template=template)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"mode": "strict"},
        {"rank_by": "logit"},
        {"deadline_ms": 0},
        {"latency_budget_ms": -5},
        {"min_score": math.nan},
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        Retriever(scorer=HashScorer(), **kwargs)  # type: ignore[arg-type]


def test_bad_page_arguments_are_rejected(closing) -> None:
    retriever = closing(connector=ListConnector([]), scorer=HashScorer())
    with pytest.raises(ConfigurationError):
        retriever.search("q", k=-1)
    with pytest.raises(ConfigurationError):
        retriever.rerank_hits("q", [], offset=-1)


def test_construction_does_no_io() -> None:
    connector = ListConnector(make_hits(["a"]))
    scorer = HashScorer()
    threads = threading.active_count()
    retriever = Retriever(connector=connector, scorer=scorer, cache=LRUScoreCache())
    assert connector.requests == [] and scorer.calls == []
    assert threading.active_count() == threads
    retriever.close()


def test_rerank_only_retriever_needs_no_connector(closing) -> None:
    retriever = closing(scorer=HashScorer())
    assert retriever.rerank_hits("q", make_hits(["a"])).status == "ok"
    with pytest.raises(ConfigurationError):
        retriever.search("q")


def test_cache_serves_the_second_identical_request(closing) -> None:
    scorer = HashScorer()
    cache = LRUScoreCache()
    retriever = closing(connector=ListConnector(make_hits(["a", "b", "c"])), scorer=scorer, cache=cache)
    first = retriever.search("q")
    second = retriever.search("q")
    assert (first.cache_hits, first.cache_misses) == (0, 3)
    assert (second.cache_hits, second.cache_misses) == (3, 0)
    assert len(scorer.calls) == 1
    assert first.hits == second.hits
    assert set(second.timings_ms) >= {"first_stage", "cache", "tokenize", "model", "total"}


# ------------------------------------------------------------- degraded modes


def test_failing_scorer_serves_first_stage_order_with_reason(closing) -> None:
    hits = make_hits(["a", "b", "c"])
    result = closing(scorer=FailingScorer()).rerank_hits("q", hits)
    assert result.status == "failed"
    assert result.reason is not None and "RuntimeError" in result.reason
    assert [rh.hit for rh in result.hits] == hits
    assert all(rh.score is None for rh in result.hits) and result.reranked == 0


def test_non_finite_scores_are_a_failure_not_a_scrambled_order(closing) -> None:
    result = closing(scorer=NaNScorer()).rerank_hits("q", make_hits(["a", "b"]))
    assert result.status == "failed" and "non-finite" in (result.reason or "")


def test_required_mode_raises_instead_of_degrading(closing) -> None:
    retriever = closing(scorer=FailingScorer(), mode="required")
    with pytest.raises(RerankError, match="RuntimeError") as info:
        retriever.rerank_hits("q", make_hits(["a"]))
    assert isinstance(info.value.__cause__, RuntimeError)


def test_slow_scorer_degrades_within_the_deadline(closing) -> None:
    scorer = SlowScorer(hold_s=5.0)
    cache = LRUScoreCache()
    hits = make_hits(["a", "b", "c"])
    retriever = closing(connector=ListConnector(hits), scorer=scorer, cache=cache, deadline_ms=200)
    try:
        started = time.perf_counter()
        result = retriever.search("q", k=2)
        elapsed = time.perf_counter() - started
        assert result.status == "failed"
        assert result.reason is not None and "deadline" in result.reason
        assert [rh.hit.id for rh in result.hits] == ["d0", "d1"]
        assert elapsed < 0.2 + 1.5  # far below the 5 s the scorer would take
    finally:
        scorer.release.set()
    # the abandoned call still finishes in the background and fills the cache
    assert scorer.finished.wait(5)
    for _ in range(100):
        if len(cache) == 3:
            break
        time.sleep(0.01)
    again = retriever.search("q", k=2)
    assert again.status == "ok" and again.cache_hits == 3 and len(scorer.calls) == 1


def test_slow_scorer_in_required_mode_raises(closing) -> None:
    scorer = SlowScorer(hold_s=5.0)
    retriever = closing(scorer=scorer, mode="required")
    try:
        with pytest.raises(RerankError, match="deadline"):
            retriever.rerank_hits("q", make_hits(["a"]), deadline_ms=100)
    finally:
        scorer.release.set()


def test_deadline_spent_by_first_stage_skips_reranking(closing) -> None:
    scorer = HashScorer()
    connector = ListConnector(make_hits(["a", "b"]), delay_s=0.1)
    result = closing(connector=connector, scorer=scorer).search("q", deadline_ms=20)
    assert result.status == "skipped" and "deadline" in (result.reason or "")
    assert [rh.hit.id for rh in result.hits] == ["d0", "d1"]
    assert scorer.calls == []


class DeadlineConnector:
    """A connector whose engine never answers in time: it gives up at the request's deadline.

    It records the deadline it was given and raises as the real connectors do,
    without waiting (the real wait is tested in ``tests/reliability``).
    """

    def __init__(self) -> None:
        self.deadlines: list[float | None] = []

    def search(self, request: SearchRequest) -> list[Hit]:
        self.deadlines.append(request.deadline)
        msg = "engine search: no answer within the caller's deadline"
        raise SearchDeadlineError(msg)

    def close(self) -> None:
        pass


class AsyncDeadlineConnector(DeadlineConnector):
    async def search(self, request: SearchRequest) -> list[Hit]:  # type: ignore[override]
        return super().search(request)

    async def close(self) -> None:  # type: ignore[override]
        pass


def test_the_deadline_reaches_the_first_stage_and_its_expiry_raises(closing) -> None:
    connector = DeadlineConnector()
    scorer = HashScorer()
    retriever = closing(connector=connector, scorer=scorer)
    before = time.monotonic()
    with pytest.raises(SearchDeadlineError):
        retriever.search("q", deadline_ms=2000)
    (deadline,) = connector.deadlines
    assert deadline is not None and before + 1.9 <= deadline <= time.monotonic() + 2.0
    assert scorer.calls == []  # nothing to rerank, nothing scored


async def test_the_deadline_reaches_the_async_first_stage(closing) -> None:
    connector = AsyncDeadlineConnector()
    retriever = closing(connector=connector, scorer=HashScorer(), deadline_ms=500)
    before = time.monotonic()
    with pytest.raises(SearchDeadlineError):
        await retriever.asearch("q")
    (deadline,) = connector.deadlines
    assert deadline is not None and before + 0.4 <= deadline <= time.monotonic() + 0.5


def test_no_deadline_sends_none(closing) -> None:
    connector = ListConnector(make_hits(["a"]))
    closing(connector=connector, scorer=HashScorer()).search("q")
    assert [r.deadline for r in connector.requests] == [None]


def test_a_first_stage_without_the_deadline_keyword_still_works(closing) -> None:
    class OldStage:
        """A first stage written before ``deadline`` joined the protocol."""

        def retrieve(self, query: str, *, size: int, filters=(), body=None) -> list[Hit]:  # type: ignore[no-untyped-def]
            return make_hits(["a", "b"])[:size]

        async def aretrieve(self, query: str, *, size: int, filters=(), body=None) -> list[Hit]:  # type: ignore[no-untyped-def]
            return self.retrieve(query, size=size)

    retriever = closing(first_stage=OldStage(), scorer=HashScorer())
    assert retriever.search("q", deadline_ms=5000).status == "ok"


def test_latency_budget_reranks_only_what_fits(closing) -> None:
    hits = make_hits([f"passage {i}" for i in range(50)])
    scorer = HashScorer()
    retriever = closing(scorer=scorer, latency_budget_ms=500)
    # The retriever sizes the window from the engine's measured throughput; give it one.
    retriever.engine.throughput = lambda: 20.0  # type: ignore[method-assign]
    result = retriever.rerank_hits("q", hits)
    assert result.status == "partial"
    assert result.reason is not None and "latency budget" in result.reason
    assert 1 <= result.reranked <= 10 and result.window == 50
    assert len(scorer.passages_seen) == result.reranked
    reranked, rest = result.hits[: result.reranked], result.hits[result.reranked :]
    assert {rh.hit.id for rh in reranked} == {f"d{i}" for i in range(result.reranked)}
    assert [rh.hit.id for rh in rest] == [f"d{i}" for i in range(result.reranked, 50)]
    assert all(rh.score is None for rh in rest)


def test_latency_budget_learns_throughput_from_real_calls(closing) -> None:
    hits = make_hits([f"passage {i}" for i in range(40)])
    scorer = HashScorer(delay_per_passage_s=0.01)  # ~100 passages/s
    retriever = closing(scorer=scorer, latency_budget_ms=100)
    first = retriever.rerank_hits("q", hits)  # no estimate yet: the whole window
    assert first.status == "ok" and first.reranked == 40
    assert retriever.engine.throughput() is not None
    second = retriever.rerank_hits("other query", hits)
    assert second.status == "partial" and 1 <= second.reranked < 40


# ---------------------------------------------------------------------- async


async def test_asearch_with_async_connector_matches_search(closing) -> None:
    hits = make_hits(["cats", "dogs", "", "fish", "cats"])
    sync_result = closing(connector=ListConnector(hits), scorer=HashScorer()).search("q", k=3)
    async_result = await closing(connector=AsyncListConnector(hits), scorer=HashScorer()).asearch(
        "q", k=3
    )
    assert async_result.hits == sync_result.hits
    assert async_result.status == "ok"


async def test_asearch_does_not_block_the_event_loop(closing) -> None:
    scorer = HashScorer(delay_per_passage_s=0.1)  # 0.3 s of blocking work
    retriever = closing(connector=AsyncListConnector(make_hits(["a", "b", "c"])), scorer=scorer)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    result = await retriever.asearch("q")
    task.cancel()
    assert result.status == "ok"
    assert ticks >= 5  # a blocked loop would tick once


async def test_asearch_over_a_sync_connector_and_deadline(closing) -> None:
    scorer = SlowScorer(hold_s=5.0)
    retriever = closing(connector=ListConnector(make_hits(["a", "b"])), scorer=scorer)
    try:
        started = time.perf_counter()
        result = await retriever.asearch("q", deadline_ms=150)
        assert time.perf_counter() - started < 0.15 + 1.5
        assert result.status == "failed" and "deadline" in (result.reason or "")
        assert [rh.hit.id for rh in result.hits] == ["d0", "d1"]
    finally:
        scorer.release.set()


async def test_arerank_hits_required_mode_raises(closing) -> None:
    retriever = closing(scorer=FailingScorer(), mode="required")
    with pytest.raises(RerankError):
        await retriever.arerank_hits("q", make_hits(["a"]))


def test_sync_search_over_an_async_connector_says_what_to_do(closing) -> None:
    retriever = closing(connector=AsyncListConnector([]), scorer=HashScorer())
    with pytest.raises(ConfigurationError, match="asearch"):
        retriever.search("q")


def test_lexical_stage_passes_body_and_filters() -> None:
    connector = ListConnector(make_hits(["a"]))
    body = {"match": {"title": "x"}}
    LexicalStage(connector).retrieve("x", size=7, filters=[{"term": {"a": 1}}], body=body)
    assert connector.requests == [SearchRequest("x", 7, ({"term": {"a": 1}},), body)]


def test_the_facade_imports_no_engine_client_or_model_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, secondpass.pipeline.retriever, secondpass.pipeline.first_stage;"
        "heavy = {'torch', 'elasticsearch', 'opensearchpy', 'redis', 'transformers'};"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------- the shared engine


def test_retrievers_sharing_an_engine_share_its_cache_and_queue() -> None:
    scorer = HashScorer()
    cache = LRUScoreCache()
    with ScoringEngine(scorer=scorer, cache=cache) as engine:
        first = Retriever(engine=engine, window=3)
        second = Retriever(engine=engine, window=3)
        hits = make_hits(["a", "b", "c"])
        assert first.rerank_hits("q", hits).cache_misses == 3
        assert second.rerank_hits("q", hits).cache_hits == 3  # the other retriever's scores
        assert first.scorer is scorer and second.cache is cache
        second.close()  # not its engine: still serving
        assert first.rerank_hits("q", hits).status == "ok"
    assert len(scorer.calls) == 1


def test_engine_and_scorer_together_are_refused() -> None:
    with ScoringEngine(scorer=HashScorer()) as engine, pytest.raises(ConfigurationError, match="engine"):
        Retriever(engine=engine, scorer=HashScorer())
    with pytest.raises(ConfigurationError, match="scorer"):
        Retriever()


def test_an_overloaded_queue_is_skipped_at_once_or_raised_in_required_mode() -> None:
    scorer = SlowScorer(hold_s=5.0)
    with ScoringEngine(scorer=scorer, options=BatchingOptions(max_queue_pairs=2)) as engine:
        holder = threading.Thread(target=engine.score_sync, args=("hold", [("d", "0", "x")]))
        holder.start()
        assert scorer.entered.wait(5)  # the model is busy ...
        queued = threading.Thread(target=engine.score_sync, args=("wait", [("d", "1", "y")]))
        queued.start()
        deadline = time.monotonic() + 5
        while engine.queued_pairs < 1:  # ... and one pair waits: two more do not fit
            assert time.monotonic() < deadline
            time.sleep(0.002)
        try:
            result = Retriever(engine=engine).rerank_hits("q", make_hits(["a", "b"]))
            assert result.status == "skipped" and (result.reason or "").startswith("overloaded: ")
            assert [rh.hit.id for rh in result.hits] == ["d0", "d1"]
            with pytest.raises(OverloadedError) as info:
                Retriever(engine=engine, mode="required").rerank_hits("q", make_hits(["a", "b"]))
            assert info.value.retry_after_s >= 1
        finally:
            scorer.release.set()
            holder.join(5)
            queued.join(5)
    assert all(p not in {"a", "b"} for p in scorer.passages_seen)


def test_docs_example_of_a_shared_engine_runs() -> None:
    [block] = [b for b in python_blocks("retriever.md") if "ScoringEngine(scorer=LengthScorer())" in b]
    ns: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(block, "docs/retriever.md", "exec"), ns)
    assert [s.raw for s in ns["direct"].scores] == [3.0, EMPTY_PASSAGE_RAW_SCORE]  # type: ignore[attr-defined]


async def test_a_cancelled_search_takes_its_passages_out_of_the_queue() -> None:
    scorer = SlowScorer(hold_s=5.0)
    with ScoringEngine(scorer=scorer) as engine:
        holder = asyncio.create_task(engine.score("hold", [("d", "0", "busy")]))
        assert await asyncio.to_thread(scorer.entered.wait, 5)
        retriever = Retriever(engine=engine)
        gone = asyncio.create_task(retriever.arerank_hits("gone", make_hits(["a", "b", "c"])))
        deadline = time.monotonic() + 5
        while engine.queued_pairs < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.002)
        gone.cancel()  # the client hung up
        while engine.queued_pairs:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.002)
        scorer.release.set()
        await holder
    assert gone.cancelled()
    assert [query for query, _ in scorer.calls] == ["hold"]  # "gone" never reached the model
