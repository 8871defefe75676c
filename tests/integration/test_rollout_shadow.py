"""Shadow mode and the rollout share in the proxy, against a real Elasticsearch (docs/rollout.md).

The shadowed client must get exactly what the proxy answers when it does not
rerank (the engine's order), while the rerank runs in the background through the
same scoring engine and leaves a rank-change record and metrics; a full shadow
queue drops work (counted) instead of making anyone wait.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.fixtures.servers import wait_for

from secondpass.pipeline.rank_log import RankRecord, query_id
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy

pytestmark = pytest.mark.integration

FIELDS = ["title", "body"]
QUERY = "cat food"
BODY = {"query": {"match": {"body": QUERY}}, "size": 5}
WORDS = ["cat", "food", "dog", "fish", "meat", "bird", "milk", "toy", "bed", "play"]


@pytest.fixture
def es_index(elasticsearch_url: str) -> Iterator[str]:
    """A fresh index of 20 documents that all match ``cat``, removed afterwards."""
    index = f"secondpass-shadow-{uuid.uuid4().hex[:10]}"
    lines = []
    for i in range(20):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 5)]
        lines.append(json.dumps({"index": {"_index": index, "_id": str(i)}}))
        lines.append(json.dumps({"title": f"note {i}", "body": f"cat {' '.join(words)} {i}"}))
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as http:
        bulk = http.post("/_bulk?refresh=true", content="\n".join(lines) + "\n",
                         headers={"content-type": "application/x-ndjson"})  # fmt: skip
        assert bulk.status_code == 200 and not bulk.json()["errors"], bulk.text
        yield index
        http.delete(f"/{index}")


class GatedScorer:
    """The tiny scorer, holding every call until ``gate`` opens (a model busy elsewhere)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def score(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait(30)
        return self.inner.score(*args, **kwargs)

    def score_pairs(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.wait(30)
        return self.inner.score_pairs(*args, **kwargs)


def serve(url: str, index: str, scorer: Any, **rollout: Any) -> tuple[RerankProxy, BackgroundProxy]:
    settings = ProxySettings(upstream=url, listen="127.0.0.1:0", window=10, deadline_ms=60_000,
                             indices={index: {"fields": FIELDS}}, rerank={"rank_by": "raw"},
                             **rollout)  # fmt: skip
    app = RerankProxy(settings, scorer=scorer)
    return app, BackgroundProxy(app)


def ids(answer: httpx.Response) -> list[str]:
    return [hit["_id"] for hit in answer.json()["hits"]["hits"]]


def sample(app: RerankProxy, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def test_shadow_answers_first_stage_and_records_the_rerank(
    elasticsearch_url: str, es_index: str, tiny_scorer: Any, tmp_path: Path
) -> None:
    log = tmp_path / "rank.jsonl"
    app, background = serve(elasticsearch_url, es_index, tiny_scorer, rank_log=str(log))
    with background as proxy_url, httpx.Client(base_url=proxy_url, timeout=60) as http:
        path = f"/{es_index}/_search"
        unranked = http.post(path, json=BODY, headers={"X-SecondPass-Rerank": "off"})
        shadow = http.post(path, json=BODY, headers={"X-SecondPass-Shadow": "1"})
        live = http.post(path, json=BODY)
        assert shadow.status_code == live.status_code == 200
        assert shadow.headers["x-secondpass-rerank"].startswith("skipped; reason=shadow")
        assert live.headers["x-secondpass-rerank"] == "ok"
        # the client gets the engine's own answer (only the engine's "took" may differ)
        assert {k: v for k, v in shadow.json().items() if k != "took"} == {
            k: v for k, v in unranked.json().items() if k != "took"
        }
        wait_for(lambda: sample(app, "secondpass_rank_compared_total", arm="shadow", outcome="ok") == 1)
        assert app._searches.rank.writer is not None and app._searches.rank.writer.flush()
    app.close()
    records = [RankRecord.from_json(line) for line in log.read_text().splitlines()]
    by_arm = {r.arm: r for r in records}
    assert set(by_arm) == {"live", "shadow"}
    shadow_record, live_record = by_arm["shadow"], by_arm["live"]
    assert shadow_record.first_stage[:5] == ids(unranked)
    assert shadow_record.outcome == "ok" and shadow_record.reranked is not None
    assert sorted(shadow_record.reranked) == sorted(shadow_record.first_stage)
    # the shadow rerank is the live rerank of the same search
    assert shadow_record.reranked == live_record.reranked
    assert live_record.reranked is not None and live_record.reranked[:5] == ids(live)
    assert shadow_record.metrics["top1_from"] == shadow_record.first_stage.index(shadow_record.reranked[0]) + 1
    assert shadow_record.query is None and shadow_record.query_id == query_id(QUERY)
    assert QUERY not in log.read_text() and "note 1" not in log.read_text()
    assert sample(app, "secondpass_rank_kendall_tau_count", arm="shadow") == 1
    assert sample(app, "secondpass_rerank_score_count", arm="live") == len(live_record.reranked)


def test_full_shadow_queue_drops_and_counts_without_waiting(
    elasticsearch_url: str, es_index: str, tiny_scorer: Any
) -> None:
    gated = GatedScorer(tiny_scorer)
    app, background = serve(elasticsearch_url, es_index, gated, shadow=True,
                            shadow_queue=1, shadow_workers=1)  # fmt: skip
    with background as proxy_url, httpx.Client(base_url=proxy_url, timeout=60) as http:
        gated.gate.clear()
        try:
            # The model is held: were shadow work waited for, these would not answer.
            answers = [http.post(f"/{es_index}/_search", json=BODY, timeout=10) for _ in range(4)]
        finally:
            gated.gate.set()
        assert [a.status_code for a in answers] == [200] * 4
        assert len({tuple(ids(a)) for a in answers}) == 1
        assert sample(app, "secondpass_shadow_dropped_total", reason="queue_full") == 3
        wait_for(lambda: sample(app, "secondpass_rank_compared_total", arm="shadow", outcome="ok") == 1)
    app.close()


def test_share_arm_is_the_same_for_the_same_session(
    elasticsearch_url: str, es_index: str, tiny_scorer: Any
) -> None:
    app, background = serve(elasticsearch_url, es_index, tiny_scorer, rerank_share=0.5,
                            rerank_share_rest="pass")  # fmt: skip
    with background as proxy_url, httpx.Client(base_url=proxy_url, timeout=60) as http:
        arms: dict[str, set[str]] = {}
        for session in ["s1", "s2", "s3", "s4", "s5", "s6"] * 2:
            answer = http.post(f"/{es_index}/_search", json=BODY, headers={"X-Session-Id": session})
            arms.setdefault(session, set()).add(answer.headers["x-secondpass-rerank"])
    app.close()
    assert all(len(seen) == 1 for seen in arms.values()), arms
    outcomes = {next(iter(seen)) for seen in arms.values()}
    assert outcomes == {"ok", "skipped; reason=outside the rerank share"}, outcomes


def test_service_search_shadow_answers_first_stage_and_records(
    elasticsearch_url: str, es_index: str, tiny_scorer: Any, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from secondpass.service.app import create_app
    from secondpass.service.settings import ServiceSettings

    log = tmp_path / "rank.jsonl"
    settings = ServiceSettings(search_index=es_index, search_fields=FIELDS, rank_log=str(log),
                               engine={"engine": "elasticsearch", "hosts": [elasticsearch_url]})  # fmt: skip
    app = create_app(settings, scorer=tiny_scorer)
    state = app.state.service
    with TestClient(app) as client:
        wait_for(lambda: state.retriever is not None and state.model_ok)
        request = {"query": QUERY, "k": 5}
        shadow = client.post("/v1/search", json={**request, "shadow": True})
        live = client.post("/v1/search", json=request)
        assert shadow.status_code == live.status_code == 200, shadow.text
        assert shadow.json()["rerank_status"] == "skipped" and shadow.json()["reason"] == "shadow"
        assert live.json()["rerank_status"] == "ok"
        first_stage = [h["id"] for h in shadow.json()["hits"]]
        assert [h["first_stage_rank"] for h in shadow.json()["hits"]] == [1, 2, 3, 4, 5]
        wait_for(lambda: (state.metrics.registry.get_sample_value(
            "secondpass_rank_compared_total", {"arm": "shadow", "outcome": "ok"}) or 0) == 1)  # fmt: skip
        metrics = client.get("/metrics").text
        assert 'secondpass_rank_kendall_tau_count{arm="shadow"} 1.0' in metrics
        bad = client.post("/v1/search", json={**request, "shadow": "perhaps"})
        assert bad.status_code == 422 and "shadow" in bad.text  # the service's validation status
    records = [RankRecord.from_json(line) for line in log.read_text().splitlines()]
    shadow_record = next(r for r in records if r.arm == "shadow")
    assert shadow_record.first_stage[:5] == first_stage
    reranked_page = [h["id"] for h in live.json()["hits"]]
    assert shadow_record.reranked is not None and shadow_record.reranked[:5] == reranked_page
