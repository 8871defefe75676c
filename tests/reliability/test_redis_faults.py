"""Redis killed, paused or slowed under the score cache: misses, same results, a live event loop.

The cache is the real ``RedisScoreCache`` built from the default
``CacheSettings`` (50 ms timeouts) on the session's real Redis, reached through
a loopback TCP proxy so the network can be slowed too. The model is the tiny
real cross-encoder; the first stage a real engine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from secondpass.config import CacheSettings
from secondpass.connectors import OpenSearchConnector
from secondpass.pipeline.cache import RedisScoreCache, build_cache
from secondpass.pipeline.retriever import Retriever
from secondpass.servers import LocalRedis
from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from secondpass.types import SearchResult
from tests.reliability._common import corpus, running_app, temp_index
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

QUERIES = ["cat owl", "dog fox", "lion tiger bear"]


@pytest.fixture(scope="module")
def index(opensearch_url: str) -> Iterator[str]:
    with temp_index(opensearch_url, corpus(40)) as name:
        yield name


@pytest.fixture
def proxy(redis_server: LocalRedis) -> Iterator[TcpProxy]:
    assert redis_server.port is not None
    with TcpProxy(("127.0.0.1", redis_server.port)) as p:
        yield p


def _signature(result: SearchResult) -> list[tuple[str, float | None]]:
    return [(h.hit.id, None if h.score is None else round(h.score, 5)) for h in result.hits]


def _break(kind: str, redis_server: LocalRedis, proxy: TcpProxy) -> None:
    if kind == "kill":
        redis_server.kill()
    elif kind == "pause":
        redis_server.pause()
    else:
        proxy.delay_s = 1.0


def _heal(kind: str, redis_server: LocalRedis, proxy: TcpProxy) -> None:
    if kind == "kill":
        redis_server.start()
    elif kind == "pause":
        redis_server.resume()
    else:
        proxy.delay_s = 0.0
        proxy.reset_all()


@pytest.mark.parametrize("kind", ["kill", "pause", "slow"])
def test_redis_fault_turns_into_fast_misses_with_unchanged_results(
    kind: str, redis_server: LocalRedis, proxy: TcpProxy, opensearch_url: str, index: str, tiny_scorer: Any, figures: Any
) -> None:
    settings = CacheSettings(
        backend="redis", redis_url=f"redis://127.0.0.1:{proxy.port}/0", key_prefix=f"sp-rel:{uuid.uuid4().hex}:"
    )
    cache = build_cache(settings)
    assert isinstance(cache, RedisScoreCache)
    with OpenSearchConnector(index=index, fields=["title", "body"], hosts=[opensearch_url]) as connector:
        retriever = Retriever(connector=connector, scorer=tiny_scorer, cache=cache, window=20)
        cold = {q: retriever.search(q, k=10) for q in QUERIES}
        warm = {q: retriever.search(q, k=10) for q in QUERIES}
        assert all(r.cache_hits == r.reranked and r.cache_misses == 0 for r in warm.values())
        errors_before = cache.stats.snapshot()["errors"]
        _break(kind, redis_server, proxy)
        try:
            faulted = {q: [retriever.search(q, k=10) for _ in range(3)] for q in QUERIES}
        finally:
            _heal(kind, redis_server, proxy)
        time.sleep(settings.cooldown_s + 0.1)
        healed = {q: retriever.search(q, k=10) for q in QUERIES}
        retriever.close()
    cache.close()
    cache_ms = [r.timings_ms["cache"] for rs in faulted.values() for r in rs]
    for q in QUERIES:
        assert _signature(cold[q]) == _signature(warm[q])
        for r in faulted[q]:
            assert r.status == "ok" and r.cache_hits == 0 and r.cache_misses == r.reranked
            assert _signature(r) == _signature(cold[q]), "results changed while Redis was down"
        assert _signature(healed[q]) == _signature(cold[q])
    assert cache.stats.snapshot()["errors"] > errors_before
    # Lookup + write-back of one request, both bounded by the 50 ms socket timeouts.
    assert max(cache_ms) < 1000, cache_ms
    assert any(r.cache_misses == 0 for r in healed.values()) or kind == "kill"  # a killed Redis restarts empty
    figures.add(f"redis {kind} (cache timeouts 50/100 ms)", "max cache time of one search", max(cache_ms), "ms")
    figures.add(f"redis {kind} (cache timeouts 50/100 ms)", "median cache time of one search", sorted(cache_ms)[len(cache_ms) // 2], "ms")


@pytest.mark.parametrize("kind", ["pause", "slow"])
async def test_service_event_loop_never_stalls_while_redis_hangs(
    kind: str, redis_server: LocalRedis, proxy: TcpProxy, opensearch_url: str, index: str, tiny_scorer: Any, figures: Any
) -> None:
    """With a 1 s Redis timeout a blocking call on the loop would stall it for ~1 s; it must not."""
    settings = ServiceSettings(
        max_wait_ms=1,
        search_index=index,
        search_fields=["title", "body"],
        search_window=10,
        cache={
            "backend": "redis",
            "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
            "redis_timeout_s": 1.0,
            "redis_connect_timeout_s": 1.0,
            "cooldown_s": 0.0,
            "key_prefix": f"sp-rel:{uuid.uuid4().hex}:",
        },
        engine={"engine": "opensearch", "hosts": [opensearch_url]},
    )
    docs = [f"{w} and the {w}s of the field" for w in ("cat", "dog", "owl", "fox", "bear", "wolf")]
    lags: list[tuple[float, float]] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append((before, time.monotonic() - before - 0.01))

    async def traffic(client: Any, seconds: float) -> list[Any]:
        answers: list[Any] = []
        until = time.monotonic() + seconds

        async def one_client(i: int) -> None:
            while time.monotonic() < until:
                if i % 2:
                    answers.append(await client.post("/v1/rerank", json={"query": "cat owl", "documents": docs}))
                else:
                    answers.append(await client.post("/v1/search", json={"query": "cat owl", "k": 5}))

        await asyncio.gather(*(one_client(i) for i in range(4)))
        return answers

    async with running_app(create_app(settings, scorer=tiny_scorer)) as client:
        tick = asyncio.create_task(ticker())
        healthy_answers = await traffic(client, 2.0)
        healthy_until = time.monotonic()
        _break(kind, redis_server, proxy)
        try:
            fault_answers = await traffic(client, 4.0)
        finally:
            _heal(kind, redis_server, proxy)
        stop.set()
        await tick
    assert {a.status_code for a in healthy_answers + fault_answers} == {200}
    rerank_scores = {tuple(r["relevance_score"] for r in a.json()["results"]) for a in healthy_answers + fault_answers if "results" in a.json()}
    assert len({tuple(round(s, 5) for s in scores) for scores in rerank_scores}) == 1, "scores changed during the fault"
    searches = {tuple(h["id"] for h in a.json()["hits"]) for a in healthy_answers + fault_answers if "hits" in a.json()}
    assert len(searches) == 1
    healthy_lag = max(lag for at, lag in lags if at < healthy_until)
    fault_lag = max(lag for at, lag in lags if at >= healthy_until)
    assert fault_lag < 0.5, f"event loop stalled for {fault_lag:.3f} s while Redis hung (healthy: {healthy_lag:.3f} s)"
    scenario = f"redis {kind}, service in-process (timeout 1 s)"
    figures.add(scenario, "max event-loop lag, healthy phase", healthy_lag * 1000, "ms")
    figures.add(scenario, "max event-loop lag, during the fault", fault_lag * 1000, "ms")
    figures.add(scenario, "requests served during the fault (all 200)", len(fault_answers), "requests")
