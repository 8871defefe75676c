"""A failing or stalled scorer: first-stage order within the deadline, a circuit breaker, 503 in required mode.

The first stage is a real engine (both, in turn); the model is the tiny real
cross-encoder behind a fault switch. The breaker is exercised from blocking
threads and from asyncio, including the half-open moment when many concurrent
requests race for the single probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from secondpass.connectors import (
    AsyncElasticsearchConnector,
    AsyncOpenSearchConnector,
    ElasticsearchConnector,
    OpenSearchConnector,
)
from secondpass.errors import CircuitOpenError, RerankError
from secondpass.pipeline.breaker import CircuitBreaker
from secondpass.pipeline.retriever import Retriever
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from secondpass.types import SearchRequest
from tests.reliability._common import FaultyScorer, corpus, running_app, temp_index

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
ASYNC = {"elasticsearch": AsyncElasticsearchConnector, "opensearch": AsyncOpenSearchConnector}
SLACK_S = 1.0  # scheduling slack on a busy 2-core machine


@pytest.fixture(scope="module")
def indexed(engine: Any) -> Iterator[tuple[str, str, str]]:
    """(engine name, url, index) with the small corpus, for the whole module."""
    with temp_index(engine.url, corpus()) as name:
        yield engine.name, engine.url, name


@pytest.fixture
def faulty(tiny_scorer: Any) -> FaultyScorer:
    return FaultyScorer(tiny_scorer, slow_s=3.0)


def _first_stage_ids(indexed: tuple[str, str, str], query: str, size: int) -> list[str]:
    name, url, index = indexed
    with SYNC[name](index=index, fields=["title", "body"], hosts=[url]) as c:
        return [h.id for h in c.search(SearchRequest(query, size=size))]


@pytest.mark.parametrize("fault", ["fail", "slow"])
def test_sync_scorer_fault_returns_first_stage_order_within_deadline(
    indexed: tuple[str, str, str], faulty: FaultyScorer, fault: str, figures: Any
) -> None:
    name, url, index = indexed
    expected = _first_stage_ids(indexed, "cat owl", 10)
    faulty.mode = fault
    with SYNC[name](index=index, fields=["title", "body"], hosts=[url]) as c:
        retriever = Retriever(connector=c, scorer=faulty, window=10, deadline_ms=800)
        started = time.monotonic()
        result = retriever.search("cat owl", k=10)
        elapsed = time.monotonic() - started
        retriever.close()
    assert result.status == "failed"
    assert result.reason and ("injected scorer failure" in result.reason if fault == "fail" else "deadline" in result.reason)
    assert [h.hit.id for h in result.hits] == expected
    assert all(h.score is None and h.rerank is None for h in result.hits)
    assert elapsed < 0.8 + SLACK_S
    figures.add(f"scorer {fault} ({name}, sync)", "search latency with deadline 800 ms", elapsed, "s")


@pytest.mark.parametrize("fault", ["fail", "slow"])
async def test_async_scorer_fault_returns_first_stage_order_within_deadline(
    indexed: tuple[str, str, str], faulty: FaultyScorer, fault: str, figures: Any
) -> None:
    name, url, index = indexed
    expected = _first_stage_ids(indexed, "dog fox", 10)
    faulty.mode = fault
    connector = ASYNC[name](index=index, fields=["title", "body"], hosts=[url])
    retriever = Retriever(connector=connector, scorer=faulty, window=10, deadline_ms=800)
    try:
        started = time.monotonic()
        result = await retriever.asearch("dog fox", k=10)
        elapsed = time.monotonic() - started
    finally:
        retriever.close()
        await connector.close()
    assert result.status == "failed" and result.reason
    assert [h.hit.id for h in result.hits] == expected
    assert elapsed < 0.8 + SLACK_S
    figures.add(f"scorer {fault} ({name}, async)", "search latency with deadline 800 ms", elapsed, "s")


def test_breaker_stops_calling_a_failing_scorer_and_probes_later(
    indexed: tuple[str, str, str], faulty: FaultyScorer
) -> None:
    name, url, index = indexed
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=1.0)
    with SYNC[name](index=index, fields=["title", "body"], hosts=[url]) as c:
        retriever = Retriever(connector=c, scorer=faulty, window=10, breaker=breaker)
        faulty.mode = "fail"
        statuses = [retriever.search("cat", k=5).status for _ in range(3)]
        assert statuses == ["failed"] * 3 and faulty.calls == 3
        assert breaker.state == "open"
        skipped = [retriever.search("cat", k=5) for _ in range(5)]
        assert {r.status for r in skipped} == {"skipped"}
        assert all(r.reason and r.reason.startswith("circuit open") for r in skipped)
        assert faulty.calls == 3, "an open breaker must not call the scorer"
        time.sleep(1.05)
        # Half-open: one probe goes through; it fails, so the breaker opens again.
        assert retriever.search("cat", k=5).status == "failed" and faulty.calls == 4
        assert retriever.search("cat", k=5).status == "skipped" and faulty.calls == 4
        time.sleep(1.05)
        faulty.mode = "ok"
        probe = retriever.search("cat", k=5)
        assert probe.status == "ok" and faulty.calls == 5 and breaker.state == "closed"
        assert retriever.search("dog", k=5).status == "ok" and faulty.calls == 6
        retriever.close()


def test_deadline_overruns_count_against_the_breaker(indexed: tuple[str, str, str], faulty: FaultyScorer) -> None:
    name, url, index = indexed
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=30.0)
    faulty.slow_s = 1.0
    with SYNC[name](index=index, fields=["title", "body"], hosts=[url]) as c:
        retriever = Retriever(connector=c, scorer=faulty, window=10, deadline_ms=300, breaker=breaker)
        faulty.mode = "slow"
        assert [retriever.search("owl", k=5).status for _ in range(2)] == ["failed", "failed"]
        assert breaker.state == "open"
        started = time.monotonic()
        result = retriever.search("owl", k=5)
        assert result.status == "skipped" and time.monotonic() - started < 0.3 + SLACK_S
        retriever.close()


async def test_breaker_works_for_asyncio_and_lets_exactly_one_probe_through(
    indexed: tuple[str, str, str], faulty: FaultyScorer
) -> None:
    name, url, index = indexed
    breaker = CircuitBreaker(failure_threshold=2, reset_after_s=1.0)
    connector = ASYNC[name](index=index, fields=["title", "body"], hosts=[url])
    retriever = Retriever(connector=connector, scorer=faulty, window=10, breaker=breaker)
    try:
        faulty.mode = "fail"
        first = await asyncio.gather(*(retriever.asearch("bear", k=5) for _ in range(2)))
        assert [r.status for r in first] == ["failed", "failed"] and breaker.state == "open"
        calls = faulty.calls
        open_results = await asyncio.gather(*(retriever.asearch("bear", k=5) for _ in range(8)))
        assert {r.status for r in open_results} == {"skipped"} and faulty.calls == calls
        await asyncio.sleep(1.05)
        faulty.mode = "slow"
        faulty.slow_s = 1.0  # a healthy but not instant probe, so the others arrive while it runs
        racing = await asyncio.gather(*(retriever.asearch("bear", k=5) for _ in range(10)))
        assert faulty.calls == calls + 1, "exactly one probe may reach the scorer"
        assert sorted(r.status for r in racing) == ["ok"] + ["skipped"] * 9
        assert breaker.state == "closed"
    finally:
        retriever.close()
        await connector.close()


def test_required_mode_raises_instead_of_degrading(indexed: tuple[str, str, str], faulty: FaultyScorer) -> None:
    name, url, index = indexed
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=20.0)
    with SYNC[name](index=index, fields=["title", "body"], hosts=[url]) as c:
        retriever = Retriever(connector=c, scorer=faulty, window=10, mode="required", breaker=breaker)
        faulty.mode = "fail"
        with pytest.raises(RerankError, match="injected scorer failure"):
            retriever.search("wolf", k=5)
        with pytest.raises(CircuitOpenError, match="circuit open") as info:
            retriever.search("wolf", k=5)
        assert 1 <= info.value.retry_after_s <= 20
        retriever.close()


async def test_service_required_mode_answers_503_with_retry_after(
    opensearch_url: str, tiny_scorer: Any, figures: Any
) -> None:
    faulty = FaultyScorer(tiny_scorer)
    with temp_index(opensearch_url, corpus()) as index:
        settings = ServiceSettings(
            max_wait_ms=1,
            search_index=index,
            search_fields=["title", "body"],
            search_window=10,
            search_mode="required",
            breaker_failures=2,
            breaker_reset_s=30,
            retry_after_s=2,
            cache={"backend": "none"},
            engine={"engine": "opensearch", "hosts": [opensearch_url]},
        )
        async with running_app(create_app(settings, scorer=faulty)) as client:
            ok = await client.post("/v1/search", json={"query": "cat", "k": 5})
            assert ok.status_code == 200 and ok.json()["rerank_status"] == "ok"
            faulty.mode = "fail"
            answers = [await client.post("/v1/search", json={"query": "cat", "k": 5}) for _ in range(4)]
            calls = faulty.calls
            assert [a.status_code for a in answers] == [503] * 4
            kinds = [a.json()["error_type"] for a in answers]
            assert kinds == ["rerank_failed", "rerank_failed", "circuit_open", "circuit_open"]
            assert answers[0].headers["Retry-After"] == "2"
            retry_after = int(answers[-1].headers["Retry-After"])
            assert 1 <= retry_after <= 30
            assert all("Traceback" not in a.text for a in answers)
            assert faulty.calls == calls
    figures.add("scorer failing, service mode=required", "Retry-After while the circuit is open", retry_after, "s")


async def test_service_best_effort_mode_degrades_with_status(opensearch_url: str, tiny_scorer: Any) -> None:
    faulty = FaultyScorer(tiny_scorer)
    with temp_index(opensearch_url, corpus()) as index:
        settings = ServiceSettings(
            max_wait_ms=1,
            search_index=index,
            search_fields=["title", "body"],
            search_window=10,
            breaker_failures=2,
            breaker_reset_s=30,
            cache={"backend": "none"},
            engine={"engine": "opensearch", "hosts": [opensearch_url]},
        )
        async with running_app(create_app(settings, scorer=faulty)) as client:
            faulty.mode = "fail"
            answers = [await client.post("/v1/search", json={"query": "cat", "k": 5}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert [a.json()["rerank_status"] for a in answers] == ["failed", "failed", "skipped"]
    assert answers[2].json()["reason"].startswith("circuit open")
    assert all(len(a.json()["hits"]) == 5 for a in answers)
