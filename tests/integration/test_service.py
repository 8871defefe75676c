"""The service as a real process (uvicorn, ``python -m secondpass serve``) on the tiny model.

Clients are the official ``cohere`` SDK and httpx; schemathesis fuzzes the OpenAPI
document. Nothing is mocked: overload, deadline drops and the SIGTERM drain are
produced by real traffic against real processes.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cohere
import httpx
import pytest
from tests.docs_examples import run_blocks
from tests.fixtures.service import ServiceProcess

pytestmark = pytest.mark.integration

LONG = " ".join(f"word{i}" for i in range(120))


def long_texts(n: int, tag: str = "") -> list[str]:
    return [f"{tag}{i} {LONG}" for i in range(n)]


def test_cohere_sdk_v1_and_v2(service: ServiceProcess) -> None:
    docs = ["Paris is the capital of France.", "Cats sleep most of the day.", "France's capital."]
    co = cohere.Client(api_key="unused", base_url=service.url)
    response = co.rerank(
        query="capital of France", documents=docs, top_n=2, model="any", return_documents=True
    )
    assert len(response.results) == 2
    assert response.results[0].relevance_score >= response.results[1].relevance_score
    assert response.results[0].document is not None
    assert response.results[0].document.text == docs[response.results[0].index]
    assert response.id and response.meta is not None

    v2 = cohere.ClientV2(api_key="unused", base_url=service.url)
    response2 = v2.rerank(model="any", query="capital of France", documents=docs)
    assert sorted(r.index for r in response2.results) == [0, 1, 2]
    # The same pairs: v2 scores equal v1's (and come from the cache).
    by_index = {r.index: r.relevance_score for r in response2.results}
    assert by_index[response.results[0].index] == pytest.approx(response.results[0].relevance_score)


def test_cohere_sdk_sees_limit_errors(service: ServiceProcess) -> None:
    co = cohere.Client(api_key="unused", base_url=service.url)
    with pytest.raises(cohere.errors.UnprocessableEntityError) as info:
        co.rerank(query="q", documents=["a"] * 1001, model="any")
    assert info.value.body["field"] == "documents" and info.value.body["limit"] == 1000


def test_tei_rerank_and_large_requests_are_split(service: ServiceProcess) -> None:
    texts = [f"text number {i} about cats" if i == 17 else f"text number {i}" for i in range(150)]
    with service.client() as client:
        r = client.post(
            "/rerank",
            json={"query": "cats", "texts": texts, "return_text": True, "raw_scores": True},
        )
    assert r.status_code == 200, r.text
    ranks = r.json()
    assert sorted(x["index"] for x in ranks) == list(range(150))
    scores = [x["score"] for x in ranks]
    assert scores == sorted(scores, reverse=True)
    assert all(x["text"] == texts[x["index"]] for x in ranks)
    assert service.metric("secondpass_batch_pairs_count") >= 3  # 150 pairs > one 64-pair batch


def test_limits_name_the_field_over_http(service: ServiceProcess) -> None:
    with service.client() as client:
        too_many = client.post("/v1/rerank", json={"query": "q", "documents": ["a"] * 1001})
        huge = client.post(
            "/v1/rerank",
            content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        top = client.post("/v1/rerank", json={"query": "q", "documents": ["a"], "top_n": 0})
    assert too_many.status_code == 422 and too_many.json()["field"] == "documents"
    assert too_many.json()["limit"] == 1000
    assert huge.status_code == 413 and huge.json()["field"] == "body"
    assert top.status_code == 422 and top.json()["field"] == "top_n"


def test_metrics_move_when_requests_are_served(service: ServiceProcess) -> None:
    labels = {"endpoint": "/v1/rerank", "status": "200"}
    before = service.metric("secondpass_http_requests_total", labels)
    hits_before = service.metric("secondpass_cache_hits_total")
    payload = {"query": "metrics", "documents": ["one", "two"]}
    with service.client() as client:
        assert client.post("/v1/rerank", json=payload).status_code == 200
        assert client.post("/v1/rerank", json=payload).status_code == 200
    assert service.metric("secondpass_http_requests_total", labels) == before + 2
    assert service.metric("secondpass_cache_hits_total") == hits_before + 2
    assert (
        service.metric("secondpass_http_request_duration_seconds_count", {"endpoint": "/v1/rerank"})
        > 0
    )
    assert service.metric("secondpass_ready") == 1


def run_schemathesis(url: str, cwd: Any, *extra: str) -> subprocess.CompletedProcess[str]:
    """Fuzz the service from its own OpenAPI document; only 5xx answers count as failures."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )


def test_schemathesis_finds_no_server_errors(service: ServiceProcess, tmp_path: Any) -> None:
    result = run_schemathesis(service.url, tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert service.metric("secondpass_http_requests_total", {"status": "500"}) == 0


def test_full_queue_answers_429_with_retry_after(
    service_factory: Callable[..., ServiceProcess], slow_cross_encoder_dir: Path
) -> None:
    # One 300-pair request is admitted into an idle queue; while it is queued, nothing fits.
    svc = service_factory(
        model_dir=slow_cross_encoder_dir,
        settings={"max_queue_pairs": 100, "max_documents": 300, "retry_after_s": 2}
    )
    refused: list[httpx.Response] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool, svc.client() as client:
        big = pool.submit(client.post, "/rerank", json={"query": "q", "texts": long_texts(300)})
        while not big.done() and not refused:
            # Unique texts: a cache hit never reaches the queue, so it is never refused.
            r = client.post(
                "/rerank", json={"query": "q", "texts": [f"small {uuid.uuid4()}"] * 5}
            )
            if r.status_code == 429:
                refused.append(r)
        assert big.result().status_code == 200
    assert refused, "the queue never refused a request while over its bound"
    assert refused[0].headers["retry-after"] == "2"
    assert refused[0].json()["error_type"] == "overloaded"
    assert svc.metric("secondpass_rejected_requests_total", {"reason": "queue_full"}) >= 1
    svc.stop()


def test_request_past_deadline_is_dropped_before_compute(
    service_factory: Callable[..., ServiceProcess], slow_cross_encoder_dir: Path
) -> None:
    svc = service_factory(model_dir=slow_cross_encoder_dir, settings={"request_timeout_ms": 300, "max_documents": 300})
    with svc.client() as client:
        pairs_before = svc.metric("secondpass_batch_pairs_sum")
        r = client.post("/rerank", json={"query": "q", "texts": long_texts(300)})
        assert r.status_code == 503 and r.json()["error_type"] == "deadline_exceeded"
        assert "retry-after" in r.headers
        # The answer leaves at the deadline while a batch may still be computing. The model
        # runs one batch at a time, so the first one-pair request answered 200 afterwards
        # proves that every batch holding the dropped request's pairs has finished.
        follow_ups = 0  # one-pair requests that reached the model (answered or timed out there)
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            answer = client.post("/rerank", json={"query": "q", "texts": [f"after {uuid.uuid4()}"]})
            if answer.status_code == 200 or answer.json().get("error_type") == "deadline_exceeded":
                follow_ups += 1
            if answer.status_code == 200:
                break
        assert answer.status_code == 200, answer.text
        pairs_after = svc.metric("secondpass_batch_pairs_sum")
    assert svc.metric("secondpass_rejected_requests_total", {"reason": "deadline"}) >= 1
    # 300 long pairs need ~5 batches; what ran before the deadline (at most the batches
    # started by then) plus the one-pair follow-ups is well short of all 300.
    computed = pairs_after - pairs_before - follow_ups
    assert computed < 300 - 32, (computed, follow_ups)
    svc.stop()


def test_sigterm_drains_in_flight_requests(service_factory: Callable[..., ServiceProcess]) -> None:
    svc = service_factory(settings={"shutdown_delay_s": 1.0, "max_documents": 300})
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients = [svc.client(timeout=120) for _ in range(3)]
        in_flight = [
            pool.submit(
                c.post, "/rerank", json={"query": f"q{i}", "texts": long_texts(150, f"r{i}")}
            )
            for i, c in enumerate(clients)
        ]
        while svc.metric("secondpass_queue_depth_pairs") == 0 and not all(
            f.done() for f in in_flight
        ):
            time.sleep(0.02)
        svc.terminate()
        readiness = httpx.get(f"{svc.url}/readyz", timeout=10)
        responses = [f.result() for f in in_flight]
        for c in clients:
            c.close()
    assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(len(r.json()) == 150 for r in responses)
    assert svc.process.wait(60) == 0, svc.log()[-3000:]


def test_docs_example_runs_against_the_service(
    service: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECONDPASS_URL", service.url)
    run_blocks("service.md")


CORPUS = [
    {"_id": "1", "title": "Cats", "text": "Cats sleep most of the day and purr."},
    {"_id": "2", "title": "Dogs", "text": "Dogs bark at the mail carrier."},
    {"_id": "3", "title": "Sleep", "text": "Why do cats sleep so much? Cats conserve energy."},
]


@pytest.fixture(scope="module")
def search_service(
    opensearch_url: str, service_factory: Callable[..., ServiceProcess]
) -> Iterator[ServiceProcess]:
    """A service whose /v1/search runs over a fresh OpenSearch index (removed afterwards)."""
    from secondpass.config import ConnectionSettings
    from secondpass.connectors import connect

    index = f"svc-{uuid.uuid4().hex[:8]}"
    settings = ConnectionSettings(engine="opensearch", hosts=[opensearch_url])
    connector = connect(index=index, fields=["title", "text"], settings=settings)
    connector.ensure_index(text_fields=["title", "text"])
    connector.bulk_index(CORPUS, id_field="_id")
    connector.refresh()
    svc = service_factory(
        settings={
            "search_index": index,
            "search_fields": ["title", "text"],
            "engine": {"engine": "opensearch", "hosts": [opensearch_url]},
        }
    )
    yield svc
    svc.stop()
    connector.delete_index()
    connector.close()


def test_search_facade_over_a_real_engine(search_service: ServiceProcess) -> None:
    with search_service.client() as client:
        r = client.post("/v1/search", json={"query": "cats sleep", "k": 2})
        bad_body = client.post(
            "/v1/search", json={"query": "cats", "body": {"no_such_query_type": {}}}
        )
        ready = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rerank_status"] == "ok" and body["reranked"] == body["window"] > 0
    assert len(body["hits"]) == 2 and {h["id"] for h in body["hits"]} <= {"1", "2", "3"}
    assert all(h["score"] is not None for h in body["hits"])
    assert bad_body.status_code == 400 and bad_body.json()["error_type"] == "query_error"
    assert ready.status_code == 200 and ready.json()["checks"]["engine"] == "ok"
    assert (
        search_service.metric(
            "secondpass_http_requests_total", {"endpoint": "/v1/search", "status": "200"}
        )
        >= 1
    )


def test_schemathesis_on_search_finds_no_server_errors(
    search_service: ServiceProcess, tmp_path: Any
) -> None:
    # Random filters and query bodies reach the real engine: its 400s must stay 400s.
    result = run_schemathesis(search_service.url, tmp_path, "--include-path", "/v1/search")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout
