"""The proxy at parity with the service: one scoring engine, its settings, metrics and budgets.

Against a scripted upstream (httpx.MockTransport) through the ASGI transport, with
a fake scorer: the engine the proxy builds honours the batching and breaker
settings, its batches and refusals reach ``/_secondpass/metrics``, and an
``_msearch`` reranks at most ``max_msearch_reranked`` searches within one
deadline budget for the whole request.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import pytest
from tests.unit.test_proxy_admin import client_for, make_proxy, sample
from tests.unit.test_proxy_app import MATCH, NumberScorer, Upstream, search_answer

from secondpass.errors import ScoringUnavailableError
from secondpass.pipeline.cache import LRUScoreCache
from secondpass.proxy import ProxySettings, RerankProxy
from secondpass.types import PassageScore

NDJSON = {"content-type": "application/x-ndjson"}


def msearch_body(bodies: Sequence[dict[str, Any]], index: str = "docs") -> bytes:
    lines: list[dict[str, Any]] = []
    for body in bodies:
        lines += [{"index": index}, body]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


class GatedScorer(NumberScorer):
    """Holds the first batch until ``release`` is set, so later searches queue behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict | None = None
    ) -> list[PassageScore]:
        self.entered.set()
        self.release.wait(10)
        self.batches.append(len(pairs))
        return super().score_pairs(pairs, timings=timings)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Yield to the event loop until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# ----------------------------------------------------------------------- _msearch


async def test_msearch_reranks_at_most_the_cap_and_passes_the_rest_in_engine_order() -> None:
    upstream = Upstream()
    bodies = [{**MATCH, "size": 2, "from": i} for i in range(5)]
    proxy = make_proxy(upstream, max_msearch_reranked=2)
    async with client_for(proxy) as client:
        response = await client.post("/_msearch", content=msearch_body(bodies), headers=NDJSON)
    assert response.status_code == 200
    sent = [json.loads(line) for line in upstream.requests[0].content.splitlines()]
    assert [sent[i]["size"] for i in (1, 3)] == [10, 10]  # reranked: widened to the window
    assert sent[5::2] == bodies[2:]  # capped: sent as the client wrote them
    capped = "skipped; reason=msearch rerank cap of 2 searches reached"
    assert response.headers["x-secondpass-rerank"] == ", ".join(["ok", "ok"] + [capped] * 3)
    responses = response.json()["responses"]
    assert [h["_id"] for h in responses[0]["hits"]["hits"]] == ["9", "8"]
    for body, answer in zip(bodies[2:], responses[2:], strict=True):
        assert answer["hits"]["hits"] == search_answer(body)["hits"]["hits"]
    reason = "msearch rerank cap of N searches reached"
    assert sample(proxy, "secondpass_proxy_searches_total",
                  endpoint="msearch", outcome="skipped", reason=reason) == 3  # fmt: skip


async def test_a_cap_of_zero_passes_the_whole_msearch_through() -> None:
    upstream = Upstream()
    data = msearch_body([MATCH, MATCH])
    async with client_for(make_proxy(upstream, max_msearch_reranked=0)) as client:
        response = await client.post("/_msearch", content=data, headers=NDJSON)
    assert upstream.requests[0].content == data
    capped = "skipped; reason=msearch rerank cap of 0 searches reached"
    assert response.headers["x-secondpass-rerank"] == f"{capped}, {capped}"


async def test_the_whole_msearch_answers_within_one_deadline_budget() -> None:
    # 4 searches x 10 passages at 30 ms each is 1.2 s of model work; the budget is 200 ms.
    bodies = [{**MATCH, "size": 3}] * 4
    deadline_ms = 200
    proxy = make_proxy(Upstream(), NumberScorer(delay_s=0.03), deadline_ms=deadline_ms)
    async with client_for(proxy) as client:
        started = time.perf_counter()
        response = await client.post("/_msearch", content=msearch_body(bodies), headers=NDJSON)
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    # Not 4 x 200 ms, and not the 1.2 s of work: one budget for the request (plus slack
    # for a loaded CI machine).
    assert elapsed < deadline_ms / 1000 + 0.5
    statuses = response.headers["x-secondpass-rerank"].split(", ")
    assert len(statuses) == 4
    for status in statuses:
        assert status.startswith("failed; reason=reranking did not finish within the deadline")
    for answer in response.json()["responses"]:
        assert answer["hits"]["hits"] == search_answer({**MATCH, "size": 3})["hits"]["hits"]


async def test_a_budget_spent_before_reranking_skips_the_searches() -> None:
    """Time spent on the request (here a slow replay of a rejected search) counts against it."""

    def handler(request: httpx.Request) -> httpx.Response:
        lines = [json.loads(line) for line in request.content.splitlines() if line.strip()]
        if len(lines) == 2:  # the replay of the rejected search, as the client wrote it
            time.sleep(0.15)  # a slow engine, not a clock: the budget must notice
            return httpx.Response(200, json={"responses": [search_answer(lines[1])]})
        answers: list[dict[str, Any]] = [{"error": "window too large", "status": 400}]
        answers += [{**search_answer(b), "status": 200} for b in lines[3::2]]
        return httpx.Response(200, json={"took": 1, "responses": answers})

    proxy = make_proxy(Upstream(handler), deadline_ms=50)
    async with client_for(proxy) as client:
        response = await client.post(
            "/_msearch", content=msearch_body([MATCH, MATCH]), headers=NDJSON
        )
    assert response.headers["x-secondpass-rerank"] == (
        "skipped; reason=engine rejected the window request (400), "
        "skipped; reason=msearch deadline of 50 ms already spent before reranking"
    )
    second = response.json()["responses"][1]
    assert second["hits"]["hits"] == search_answer(MATCH)["hits"]["hits"]


# ------------------------------------------------------------------- the engine


async def test_concurrent_searches_share_forward_batches() -> None:
    scorer = GatedScorer()
    proxy = make_proxy(Upstream(), scorer, deadline_ms=None)
    async with client_for(proxy) as client:
        first = asyncio.create_task(client.post("/docs/_search", json=MATCH))
        await wait_for(scorer.entered.is_set)  # the first search holds the model
        others = [
            asyncio.create_task(client.post("/docs/_search", json={**MATCH, "size": 5}))
            for _ in range(3)
        ]
        await wait_for(lambda: proxy.retriever.engine.queued_pairs >= 30)
        scorer.release.set()
        answers = await asyncio.gather(first, *others)
    assert [a.headers["x-secondpass-rerank"] for a in answers] == ["ok"] * 4
    assert max(scorer.batches) > 10  # the three queued searches rode in one batch
    assert sample(proxy, "secondpass_batch_requests_sum") >= 4
    assert sample(proxy, "secondpass_batch_requests_count") < 4


async def test_a_client_that_leaves_takes_its_queued_pairs_with_it() -> None:
    scorer = GatedScorer()
    proxy = make_proxy(Upstream(), scorer, deadline_ms=None)
    body = json.dumps({"query": {"match": {"body": "dogs"}}}).encode()
    scope = {
        "type": "http", "method": "POST", "path": "/docs/_search",
        "raw_path": b"/docs/_search", "query_string": b"",
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    left = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await left.wait()
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async with client_for(proxy) as client:
        first = asyncio.create_task(client.post("/docs/_search", json=MATCH))
        await wait_for(scorer.entered.is_set)  # the first search holds the model
        second = asyncio.create_task(proxy(scope, receive, send))
        await wait_for(lambda: proxy.retriever.engine.queued_pairs == 10)
        left.set()  # the second client goes away while its pairs wait
        await wait_for(lambda: proxy.retriever.engine.queued_pairs == 0)
        scorer.release.set()
        answer = await first
        await asyncio.wait_for(second, 10)
    assert answer.headers["x-secondpass-rerank"] == "ok"
    assert scorer.batches == [10]  # the departed client's 10 pairs were never scored
    assert all("dogs" not in query for query, _ in scorer.calls)
    proxy.close()


async def test_batching_settings_reach_the_engine() -> None:
    proxy = make_proxy(Upstream(), max_batch_pairs=4)
    async with client_for(proxy) as client:
        response = await client.post("/docs/_search", json=MATCH)
    assert response.headers["x-secondpass-rerank"] == "ok"
    batches = sample(proxy, "secondpass_batch_pairs_count")
    assert batches >= 3  # 10 passages, at most 4 a batch
    assert sample(proxy, "secondpass_batch_pairs_bucket", le="4.0") == batches
    assert sample(proxy, "secondpass_batch_pairs_sum") == 10


async def test_the_breaker_opens_after_breaker_failures_and_skips_scoring() -> None:
    scorer = NumberScorer(fail=True)
    proxy = make_proxy(Upstream(), scorer, breaker_failures=2, breaker_reset_s=60)
    async with client_for(proxy) as client:
        statuses = [
            (await client.post("/docs/_search", json=MATCH)).headers["x-secondpass-rerank"]
            for _ in range(3)
        ]
    assert statuses[:2] == ["failed; reason=scoring failed: RuntimeError: model exploded"] * 2
    assert statuses[2].startswith("skipped; reason=circuit open")
    assert len(scorer.calls) == 2  # the open breaker did not call the model
    assert sample(proxy, "secondpass_model_failures_total") == 2


async def test_cache_hits_are_counted_from_the_engine_result() -> None:
    config = ProxySettings(
        upstream="http://engine.test:9200", window=10,
        indices={"docs": {"fields": ["body"], "template": "{body}"}},
    )  # fmt: skip
    proxy = RerankProxy(
        config, scorer=NumberScorer(), cache=LRUScoreCache(),
        transport=httpx.MockTransport(Upstream()),
    )  # fmt: skip
    async with client_for(proxy) as client:
        for _ in range(2):
            await client.post("/docs/_search", json=MATCH)
    assert sample(proxy, "secondpass_cache_misses_total") == 10
    assert sample(proxy, "secondpass_cache_hits_total") == 10
    proxy.close()


def test_close_stops_the_engine_the_proxy_built_and_leaves_a_given_one() -> None:
    item = [("docs", "1", "passage 7")]
    built = make_proxy(Upstream())
    built.retriever.engine.score_sync("q", item)
    built.close()
    built.close()  # idempotent
    with pytest.raises(ScoringUnavailableError):
        built.retriever.engine.score_sync("q", item)
    owner = make_proxy(Upstream())
    given = RerankProxy(owner.settings, retriever=owner.retriever)
    given.close()  # not its engine: it keeps scoring
    assert given.retriever.engine.score_sync("q", item).scores[0].raw == 7.0
    owner.close()


def test_cli_flags_set_the_engine_and_msearch_settings() -> None:
    from secondpass.cli import build_parser
    from secondpass.commands.proxy import overrides_from_args

    args = build_parser().parse_args(
        ["proxy", "--no-batching", "--max-batch-pairs", "8", "--max-wait-ms", "2",
         "--max-queue-s", "1.5", "--breaker-failures", "3", "--breaker-reset-s", "4",
         "--max-msearch-reranked", "7"]
    )  # fmt: skip
    s = ProxySettings.load(None, **overrides_from_args(args))
    assert (s.batching, s.max_batch_pairs, s.max_wait_ms, s.max_queue_s) == (False, 8, 2.0, 1.5)
    assert (s.breaker_failures, s.breaker_reset_s, s.max_msearch_reranked) == (3, 4.0, 7)
