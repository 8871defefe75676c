"""The service app in-process, around a deterministic fake scorer (no model, no servers)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.fixtures.service import FakeScorer

from secondpass.service.app import create_app
from secondpass.service.settings import ServiceSettings
from secondpass.types import Hit, RankedHit, SearchResult


def make_app(scorer: FakeScorer | None = None, **settings: Any) -> FastAPI:
    settings.setdefault("max_wait_ms", 1)
    settings.setdefault("cache", {"backend": "memory"})
    return create_app(ServiceSettings(**settings), scorer=scorer or FakeScorer())


@asynccontextmanager
async def running(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        state = app.state.service
        if ready:
            for _ in range(500):
                if state.model_ok:
                    break
                await asyncio.sleep(0.01)
            assert state.model_ok, state.model_error
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client


DOCS = ["Paris is the capital of France.", "Cats sleep a lot.", "", "the capital city of france"]


async def test_cohere_rerank_orders_by_relevance_and_echoes_documents() -> None:
    async with running(make_app()) as client:
        r = await client.post(
            "/v1/rerank",
            json={
                "query": "capital of France",
                "documents": DOCS,
                "top_n": 3,
                "return_documents": True,  # Cohere's default is false
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]] == [3, 0, 1]
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert body["results"][0]["document"] == {"text": DOCS[3]}
    assert body["id"] and body["meta"]["api_version"]["version"] == "1"


async def test_cohere_rank_fields_and_object_documents() -> None:
    docs = [{"title": "dogs", "text": "bark"}, {"title": "cats", "text": "meow", "id": 7}]
    async with running(make_app()) as client:
        r = await client.post(
            "/v1/rerank",
            json={
                "query": "cats",
                "documents": docs,
                "rank_fields": ["title"],
                "return_documents": True,
            },
        )
        missing = await client.post(
            "/v1/rerank", json={"query": "cats", "documents": [{"title": "x"}]}
        )
        no_docs = await client.post(
            "/v1/rerank",
            json={"query": "cats", "documents": docs, "return_documents": False},
        )
    assert r.status_code == 200, r.text
    assert r.json()["results"][0] == {
        "index": 1,
        "relevance_score": r.json()["results"][0]["relevance_score"],
        "document": docs[1],
    }
    assert missing.status_code == 422 and missing.json()["field"] == "documents[0]"
    assert all("document" not in x for x in no_docs.json()["results"])


async def test_cohere_v2_rerank() -> None:
    async with running(make_app()) as client:
        r = await client.post("/v2/rerank", json={"query": "cats", "documents": ["dogs", "cats"]})
    assert r.status_code == 200
    assert [x["index"] for x in r.json()["results"]] == [1, 0]


async def test_tei_rerank_raw_scores_text_and_split_of_large_requests() -> None:
    scorer = FakeScorer()
    texts = [f"doc {i} cats" if i % 7 == 0 else f"doc {i}" for i in range(50)]
    app = make_app(scorer, max_batch_pairs=8, batching=True)
    async with running(app) as client:
        r = await client.post(
            "/rerank",
            json={"query": "cats", "texts": texts, "raw_scores": True, "return_text": True},
        )
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert len(ranks) == 50
    assert {x["index"] for x in ranks[:8]} == {i for i in range(50) if i % 7 == 0}
    assert ranks[0]["score"] > 0.9  # a raw logit, not a sigmoid
    assert ranks[0]["text"] == texts[ranks[0]["index"]]
    assert max(len(b) for b in scorer.batches) <= 8  # split, not refused


async def test_tei_truncate_false_refuses_too_long_inputs() -> None:
    app = make_app(FakeScorer(window_words=3))
    async with running(app) as client:
        refused = await client.post(
            "/rerank", json={"query": "q", "texts": ["a b", "a b c d e"], "truncate": False}
        )
        cut = await client.post("/rerank", json={"query": "q", "texts": ["a b c d e"]})
    assert refused.status_code == 413 and refused.json()["field"] == "texts[1]"
    assert cut.status_code == 200


@pytest.mark.parametrize(
    ("payload", "field", "limit"),
    [
        ({"query": "x" * 101, "documents": ["a"]}, "query", 100),
        ({"query": "q", "documents": ["a"] * 11}, "documents", 10),
        ({"query": "q", "documents": ["a", "b" * 51]}, "documents[1]", 50),
        ({"query": "q", "documents": ["a"], "top_n": 11}, "top_n", 10),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n", 1),
        ({"documents": ["a"]}, "query", None),
        ({"query": "q", "documents": [{"text": {"nested": 1}}]}, "documents[0].text", None),
    ],
)
async def test_limits_are_4xx_naming_the_field(
    payload: dict[str, Any], field: str, limit: int | None
) -> None:
    app = make_app(max_query_chars=100, max_documents=10, max_document_chars=50, max_top_n=10)
    async with running(app) as client:
        r = await client.post("/v1/rerank", json=payload)
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert body["field"] == field
    assert body.get("limit") == limit
    assert body["error"] == body["message"] and field in body["message"]


async def test_body_limit_by_content_length_and_while_streaming() -> None:
    app = make_app(max_body_bytes=2048)
    big = json.dumps({"query": "q", "documents": ["x" * 3000]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 512):
            yield big[i : i + 512]

    async with running(app) as client:
        declared = await client.post(
            "/v1/rerank", content=big, headers={"content-type": "application/json"}
        )
        streamed = await client.post(
            "/v1/rerank", content=chunks(), headers={"content-type": "application/json"}
        )
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["field"] == "body" and r.json()["limit"] == 2048


async def test_invalid_json_and_unknown_routes_are_4xx_with_error_shape() -> None:
    async with running(make_app()) as client:
        bad = await client.post(
            "/v1/rerank", content=b"{not json", headers={"content-type": "application/json"}
        )
        missing = await client.get("/nope")
        method = await client.get("/v1/rerank")
    assert bad.status_code == 422 and bad.json()["error_type"] == "validation"
    assert missing.status_code == 404 and "error" in missing.json()
    assert method.status_code == 405


async def test_lone_surrogates_are_scored_not_500() -> None:
    raw = b'{"query": "caf\\ud800", "documents": ["\\udfff x", "ok"]}'
    async with running(make_app()) as client:
        r = await client.post(
            "/v1/rerank", content=raw, headers={"content-type": "application/json"}
        )
    assert r.status_code == 200, r.text


async def test_concurrent_requests_share_forward_batches() -> None:
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    app = make_app(scorer, max_wait_ms=50, max_batch_pairs=64)
    async with running(app, ready=False) as client:
        # The probe pair holds the model thread; everything sent now queues up.
        await asyncio.to_thread(scorer.entered.wait, 5)
        sends = [
            client.post("/rerank", json={"query": f"q{i}", "texts": [f"a{i}", f"b{i}"]})
            for i in range(6)
        ]
        tasks = [asyncio.create_task(s) for s in sends]
        while app.state.service.batcher.queued_pairs < 12:
            await asyncio.sleep(0.005)
        scorer.gate.set()
        responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    # one forward pass served all six requests (the start-up calibration batch may ride along)
    [batch] = [b for b in scorer.batches if any(q == "q0" for q, _ in b)]
    assert {f"q{i}" for i in range(6)} <= {q for q, _ in batch}


async def test_batching_off_never_mixes_requests() -> None:
    scorer = FakeScorer()
    app = make_app(scorer, batching=False)
    async with running(app) as client:
        await asyncio.gather(
            *[
                client.post("/rerank", json={"query": f"q{i}", "texts": ["a", "b"]})
                for i in range(6)
            ]
        )
    assert all(len({q for q, _ in batch}) == 1 for batch in scorer.batches)


async def test_full_queue_is_429_with_retry_after_at_once() -> None:
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    app = make_app(scorer, max_queue_pairs=4, retry_after_s=3)
    async with running(app, ready=False) as client:
        await asyncio.to_thread(scorer.entered.wait, 5)
        first = asyncio.create_task(
            client.post("/rerank", json={"query": "q", "texts": ["a", "b", "c"]})
        )
        while app.state.service.batcher.queued_pairs < 3:
            await asyncio.sleep(0.005)
        refused = await client.post("/rerank", json={"query": "q", "texts": ["d", "e"]})
        scorer.gate.set()
        assert (await first).status_code == 200
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["error_type"] == "overloaded"


async def test_request_past_its_deadline_is_dropped_before_compute() -> None:
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    app = make_app(scorer, request_timeout_ms=20)
    async with running(app, ready=False) as client:
        await asyncio.to_thread(scorer.entered.wait, 5)
        late = asyncio.create_task(
            client.post("/rerank", json={"query": "late", "texts": ["never computed"]})
        )
        await asyncio.sleep(0.1)
        scorer.gate.set()
        r = await late
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 503 and r.json()["error_type"] == "deadline_exceeded"
    assert "retry-after" in r.headers
    assert all(q != "late" for batch in scorer.batches for q, _ in batch)
    assert 'secondpass_rejected_requests_total{reason="deadline"} 1.0' in metrics


async def test_readiness_follows_forward_passes_and_draining() -> None:
    scorer = FakeScorer()
    app = make_app(scorer, readiness_probe_interval_s=0.01)
    async with running(app) as client:
        assert (await client.get("/readyz")).status_code == 200
        scorer.fail = True
        failed = await client.post("/rerank", json={"query": "q", "texts": ["boom"]})
        assert failed.status_code == 503 and failed.json()["error_type"] == "rerank_failed"
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503 and "failed" in not_ready.json()["checks"]["model"]
        scorer.fail = False
        await asyncio.sleep(0.02)
        assert (await client.get("/readyz")).status_code == 200  # re-probed, recovered
        app.state.service.begin_drain()
        draining = await client.get("/readyz")
        assert draining.status_code == 503 and draining.json()["status"] == "draining"
        assert (await client.get("/livez")).status_code == 200


async def test_not_ready_while_loading_and_requests_are_503() -> None:
    release = threading.Event()

    def slow_factory(_: Any) -> FakeScorer:
        release.wait(5)
        return FakeScorer()

    app = create_app(ServiceSettings(), scorer_factory=slow_factory)
    async with running(app, ready=False) as client:
        assert (await client.get("/readyz")).status_code == 503
        r = await client.post("/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 503 and "retry-after" in r.headers
        assert (await client.get("/livez")).status_code == 200
        release.set()


async def test_cache_serves_repeats_and_metrics_move() -> None:
    scorer = FakeScorer()
    async with running(make_app(scorer)) as client:
        payload = {"query": "cats", "documents": ["cats", "dogs", "cats"]}
        first = await client.post("/v1/rerank", json=payload)
        calls = len(scorer.batches)
        second = await client.post("/v1/rerank", json=payload)
        metrics = (await client.get("/metrics")).text
    assert first.json()["results"] == second.json()["results"]
    assert len(scorer.batches) == calls  # nothing re-scored
    assert second.json()["meta"]["cache_hits"] == 3
    assert "secondpass_cache_hits_total 3.0" in metrics
    assert (
        'secondpass_http_requests_total{endpoint="/v1/rerank",method="POST",status="200"} 2.0'
        in metrics
    )
    assert "secondpass_batch_pairs_count" in metrics
    # the backend's own counters are counters; its hits/misses are not repeated as gauges
    assert 'secondpass_cache_backend_events_total{event="writes"}' in metrics
    assert "secondpass_cache_backend{" not in metrics


async def test_openapi_carries_the_configured_limits() -> None:
    async with running(make_app(max_documents=77, max_query_chars=99)) as client:
        schema = (await client.get("/openapi.json")).json()
    req = schema["components"]["schemas"]["CohereRerankRequest"]["properties"]
    assert req["documents"]["maxItems"] == 77 and req["query"]["maxLength"] == 99
    assert "/v1/rerank" in schema["paths"] and "/rerank" in schema["paths"]


async def test_search_not_configured_is_404() -> None:
    async with running(make_app()) as client:
        r = await client.post("/v1/search", json={"query": "q"})
    assert r.status_code == 404 and r.json()["error_type"] == "not_configured"


class FakeRetriever:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def asearch(self, query: str, **kwargs: Any) -> SearchResult:
        self.calls.append({"query": query, **kwargs})
        hit = Hit(index="docs", id="1", score=2.0, rank=1, fields={"title": "t"})
        return SearchResult(
            hits=(RankedHit(hit=hit, rank=1, score=None),),
            status="skipped",
            reason="deadline too short",
            timings_ms={"first_stage": 1.0, "total": 2.0},
        )

    def ping(self) -> bool:
        return True


async def test_search_passes_options_and_reports_degraded_answers() -> None:
    retriever = FakeRetriever()
    settings = ServiceSettings(search_index="docs", search_filter_fields=["lang"])
    app = create_app(settings, scorer=FakeScorer(), retriever=retriever)
    async with running(app) as client:
        r = await client.post(
            "/v1/search",
            json={
                "query": "cats",
                "k": 5,
                "filters": [{"term": {"lang": "en"}}],
                "deadline_ms": 50,
            },
        )
        ready = await client.get("/readyz")
        metrics = (await client.get("/metrics")).text
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rerank_status"] == "skipped" and body["reason"] == "deadline too short"
    assert body["hits"][0]["id"] == "1" and body["hits"][0]["score"] is None
    assert retriever.calls[0]["k"] == 5 and retriever.calls[0]["deadline_ms"] == 50
    assert ready.json()["checks"]["engine"] == "ok"
    assert (
        'secondpass_degraded_responses_total{endpoint="/v1/search",status="skipped"} 1.0' in metrics
    )


async def test_a_client_that_leaves_takes_its_pairs_out_of_the_queue() -> None:
    """The model never scores for a client that has gone; the request counts as 499."""
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    app = make_app(scorer)
    body = json.dumps({"query": "gone", "texts": ["a b", "c d", "e f"]}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/rerank", "raw_path": b"/rerank", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    leave = asyncio.Event()
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async with running(app, ready=False) as client:
        await asyncio.to_thread(scorer.entered.wait, 5)  # the model is busy (held by the gate)
        batcher = app.state.service.batcher
        call = asyncio.create_task(app(scope, receive, send))
        async with asyncio.timeout(5):
            while batcher.queued_pairs < 3:
                await asyncio.sleep(0.005)
            leave.set()
            await call
            while batcher.queued_pairs:
                await asyncio.sleep(0.005)
        scorer.gate.set()
        after = await client.post("/rerank", json={"query": "next", "texts": ["x"]})
        metrics = (await client.get("/metrics")).text
    assert after.status_code == 200
    assert sent == []  # nobody to answer
    assert all(q != "gone" for batch in scorer.batches for q, _ in batch)
    assert (
        'secondpass_http_requests_total{endpoint="/rerank",method="POST",status="499"} 1.0'
        in metrics
    )


class SlowEngineRetriever(FakeRetriever):
    """A first stage that never answers in time."""

    async def asearch(self, query: str, **kwargs: Any) -> SearchResult:
        from secondpass.errors import SearchDeadlineError

        self.calls.append({"query": query, **kwargs})
        raise SearchDeadlineError("opensearch search on 'docs': no answer within the deadline")


@pytest.mark.parametrize(
    ("deadline_ms", "status", "error_type"),
    [(5e-324, 408, "deadline_exceeded"), (0.05, 408, "deadline_exceeded"), (None, 503, "engine_unavailable")],
)  # fmt: skip
async def test_a_first_stage_past_the_deadline_is_408_when_the_client_chose_it(
    deadline_ms: float | None, status: int, error_type: str
) -> None:
    """The client's too-short ``deadline_ms`` is input (408, naming it); the engine's own limit is 503."""
    app = create_app(
        ServiceSettings(search_index="docs"), scorer=FakeScorer(), retriever=SlowEngineRetriever()
    )
    body: dict[str, Any] = {"query": "cats"}
    if deadline_ms is not None:
        body["deadline_ms"] = deadline_ms
    async with running(app) as client:
        r = await client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == error_type
    if status == 408:
        assert r.json()["field"] == "deadline_ms"
    else:
        assert "retry-after" in r.headers
