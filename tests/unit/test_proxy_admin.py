"""The proxy's own endpoints (/_secondpass/livez, readyz, metrics) and its metrics.

Against a scripted upstream (httpx.MockTransport) through the ASGI transport: the
endpoints are answered by the proxy itself, never forwarded, need a client key
when keys are on, and the counters move with what the proxy actually answered.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_proxy_app import MATCH, UPSTREAM, NumberScorer, Upstream, search_answer

from secondpass.proxy import ProxySettings, RerankProxy
from secondpass.proxy.metrics import ProxyMetrics

KEY = "client-key-0123456789abcdef"


class UnloadedScorer(NumberScorer):
    is_loaded = False


def make_proxy(upstream: Upstream, scorer: Any = None, **settings: Any) -> RerankProxy:
    config = ProxySettings(
        upstream=UPSTREAM,
        window=10,
        indices={"docs": {"fields": ["title", "body"], "template": "{body}"}},
        rerank={"rank_by": "raw"},
        **settings,
    )
    return RerankProxy(
        config, scorer=scorer or NumberScorer(), transport=httpx.MockTransport(upstream)
    )


def client_for(proxy: RerankProxy) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://proxy.test")


def sample(proxy: RerankProxy, name: str, **labels: str) -> float:
    value = proxy.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def searches(proxy: RerankProxy, endpoint: str, outcome: str, reason: str = "") -> float:
    return sample(
        proxy,
        "secondpass_proxy_searches_total",
        endpoint=endpoint,
        outcome=outcome,
        reason=reason,
    )


def forwarded_paths(upstream: Upstream) -> list[str]:
    return [r.url.path for r in upstream.requests]


async def test_livez_and_metrics_are_answered_here_and_never_forwarded() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream)
    async with client_for(proxy) as client:
        live = await client.get("/_secondpass/livez")
        scrape = await client.get("/_secondpass/metrics")
        head = await client.head("/_secondpass/livez")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {
        "secondpass_proxy_searches",
        "secondpass_proxy_upstream_duration_seconds",
        "secondpass_proxy_rerank_duration_seconds",
        "secondpass_proxy_reranked_hits",
        "secondpass_cache_hits",
    } <= names
    assert head.status_code == 200 and head.content == b""
    assert upstream.requests == []


async def test_readyz_is_ready_once_the_engine_answers_and_the_model_is_loaded() -> None:
    upstream = Upstream(lambda request: httpx.Response(401, json={"error": "no credentials"}))
    proxy = make_proxy(upstream)
    async with client_for(proxy) as client:
        first = await client.get("/_secondpass/readyz")
        second = await client.get("/_secondpass/readyz")
    assert first.status_code == 200
    assert first.json() == {
        "ready": True,
        "status": "ready",
        "checks": {"scorer": "ok", "upstream": "ok"},
    }
    # Any answer means reachable (a 401 included); the probe is GET / and a recent
    # answer makes the second probe unnecessary.
    assert second.status_code == 200
    assert forwarded_paths(upstream) == ["/"]
    assert sample(proxy, "secondpass_ready") == 1.0


async def test_readyz_is_503_naming_what_is_missing() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    proxy = make_proxy(Upstream(down), UnloadedScorer())
    async with client_for(proxy) as client:
        response = await client.get("/_secondpass/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "status": "not_ready",
        "checks": {"scorer": "model not loaded", "upstream": "engine did not answer: ConnectError"},
    }
    assert sample(proxy, "secondpass_ready") == 0.0
    assert sample(proxy, "secondpass_proxy_upstream_errors_total", kind="other") == 1.0


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/_secondpass/metrics", 405),
        ("DELETE", "/_secondpass/livez", 405),
        ("GET", "/_secondpass/nope", 404),
        ("GET", "/_secondpass", 404),
    ],
)
async def test_other_own_paths_are_refused_here(method: str, path: str, status: int) -> None:
    upstream = Upstream()
    async with client_for(make_proxy(upstream)) as client:
        response = await client.request(method, path)
    assert response.status_code == status
    assert response.json()["status"] == status
    assert upstream.requests == []


async def test_own_paths_need_a_client_key_when_keys_are_on() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream, client_api_keys=[KEY])
    async with client_for(proxy) as client:
        missing = await client.get("/_secondpass/metrics")
        wrong = await client.get("/_secondpass/metrics", headers={"x-api-key": "x" * 24})
        good = await client.get("/_secondpass/metrics", headers={"authorization": f"Bearer {KEY}"})
        live = await client.get("/_secondpass/livez")
    assert (missing.status_code, wrong.status_code, live.status_code) == (401, 401, 401)
    assert "missing API key" in missing.json()["error"]["reason"]
    assert "invalid API key" in wrong.json()["error"]["reason"]
    assert good.status_code == 200
    assert upstream.requests == []


async def test_own_paths_need_a_client_key_when_credentials_are_lent() -> None:
    upstream = Upstream()
    proxy = make_proxy(
        upstream,
        client_api_keys=[KEY],
        username="elastic",
        password="proxy-Passw0rd",
        lend_credentials=True,
    )
    async with client_for(proxy) as client:
        missing = await client.get("/_secondpass/readyz")
        good = await client.get("/_secondpass/readyz", headers={"x-api-key": KEY})
    assert missing.status_code == 401
    assert good.status_code == 200  # not on the allow-list, yet answered: never forwarded
    # The readiness probe went up with the lent credentials, not the client's key.
    (probe,) = upstream.requests
    assert probe.url.path == "/"
    assert probe.headers["authorization"].startswith("Basic ")
    assert "x-api-key" not in probe.headers


async def test_outcome_counters_follow_what_each_search_was_answered_with() -> None:
    upstream = Upstream()
    proxy = make_proxy(upstream)
    lines = [{"index": "docs"}, {**MATCH, "size": 2}, {"index": "docs"}, {"size": 0}]
    ndjson = "".join(json.dumps(line) + "\n" for line in lines)
    async with client_for(proxy) as client:
        ok = await client.post("/docs/_search", json=MATCH)
        off = await client.post("/docs/_search", json=MATCH, headers={"x-secondpass-rerank": "off"})
        multi = await client.post(
            "/_msearch", content=ndjson, headers={"content-type": "application/x-ndjson"}
        )
        await client.put("/docs/_doc/1", json={"x": 1})
    assert ok.headers["x-secondpass-rerank"] == "ok"
    assert off.headers["x-secondpass-rerank"] == "skipped; reason=disabled by the client"
    assert multi.headers["x-secondpass-rerank"] == "ok, skipped; reason=size is 0"
    assert searches(proxy, "search", "ok") == 1
    assert searches(proxy, "search", "skipped", "disabled by the client") == 1
    assert searches(proxy, "msearch", "ok") == 1
    assert searches(proxy, "msearch", "skipped", "size is N") == 1  # figures fold into N
    # Upstream latency by kind: two searches, one msearch, one other request.
    count = "secondpass_proxy_upstream_duration_seconds_count"
    assert sample(proxy, count, kind="search") == 2
    assert sample(proxy, count, kind="msearch") == 1
    assert sample(proxy, count, kind="other") == 1
    # Two reranks (one search, one msearch item), ten hits each, all cache misses.
    assert sample(proxy, "secondpass_proxy_rerank_duration_seconds_count") == 2
    assert sample(proxy, "secondpass_proxy_reranked_hits_sum") == 20
    assert sample(proxy, "secondpass_cache_misses_total") == 20
    assert sample(proxy, "secondpass_cache_hits_total") == 0


async def test_failed_and_gateway_outcomes_are_counted() -> None:
    proxy = make_proxy(Upstream(), NumberScorer(fail=True))
    async with client_for(proxy) as client:
        failed = await client.post("/docs/_search", json=MATCH)
    assert failed.status_code == 200
    assert failed.headers["x-secondpass-rerank"].startswith("failed; reason=")
    assert (
        sum(
            s.value
            for family in proxy.metrics.registry.collect()
            if family.name == "secondpass_proxy_searches"
            for s in family.samples
            if s.name.endswith("_total") and s.labels["outcome"] == "failed"
        )
        == 1
    )

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    proxy = make_proxy(Upstream(down))
    async with client_for(proxy) as client:
        gateway = await client.post("/docs/_search", json=MATCH)
    assert gateway.status_code == 502
    assert searches(proxy, "search", "failed", "engine unreachable") == 1
    assert sample(proxy, "secondpass_proxy_upstream_errors_total", kind="search") == 1


async def test_an_engine_answer_with_malformed_hits_is_passed_on_in_engine_order() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        answer = search_answer(json.loads(request.content))
        answer["hits"]["hits"][1] = {"_index": "docs", "_score": 5.0, "_source": ["odd"]}
        answer["hits"]["hits"][2] = "not a hit"
        return httpx.Response(200, json=answer)

    proxy = make_proxy(Upstream(handler))
    async with client_for(proxy) as client:
        response = await client.post("/docs/_search", json={**MATCH, "size": 4})
    assert response.status_code == 200
    expected = "skipped; reason=engine answer has 2 malformed hit(s)"
    assert response.headers["x-secondpass-rerank"] == expected
    hits = response.json()["hits"]["hits"]
    assert hits[0]["_id"] == "0" and hits[2] == "not a hit" and hits[3]["_id"] == "3"
    assert searches(proxy, "search", "skipped", "engine answer has N malformed hit(s)") == 1


def test_each_proxy_has_its_own_registry() -> None:
    first, second = make_proxy(Upstream()), make_proxy(Upstream())
    first.metrics.search_outcome("search", "ok")
    assert searches(first, "search", "ok") == 1 and searches(second, "search", "ok") == 0


def test_figures_in_reasons_do_not_make_new_series() -> None:
    metrics = ProxyMetrics()
    for fit in (12, 37):
        metrics.search_outcome("search", f"partial; reason=latency budget of 2.5 ms: {fit} of 99")
    metrics.search_outcome("search", "skipped; reason=engine answered 503")
    partial = {
        "endpoint": "search",
        "outcome": "partial",
        "reason": "latency budget of N ms: N of N",
    }
    assert metrics.registry.get_sample_value("secondpass_proxy_searches_total", partial) == 2
    skipped = {"endpoint": "search", "outcome": "skipped", "reason": "engine answered 503"}
    assert metrics.registry.get_sample_value("secondpass_proxy_searches_total", skipped) == 1


def test_distinct_reasons_are_capped() -> None:
    metrics = ProxyMetrics()
    for i in range(100):
        metrics.search_outcome(
            "search", f"skipped; reason=odd reason {chr(0x41 + i % 26) * (1 + i // 26)}"
        )
    reasons = {
        s.labels["reason"]
        for family in metrics.registry.collect()
        if family.name == "secondpass_proxy_searches"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(reasons) == 65 and "other" in reasons
    other = {"endpoint": "search", "outcome": "skipped", "reason": "other"}
    assert metrics.registry.get_sample_value("secondpass_proxy_searches_total", other) == 36
