"""A document edited under the same id is rescored: no stale score, across two replicas sharing Redis.

Two real ``secondpass serve`` processes share one real Redis and one real
OpenSearch index. Replica A fills the cache, replica B proves it shares it,
then one document's text changes under the same id and both replicas must
score the new text (the cache key covers the passage text, so the old entry is
simply never asked for again).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from secondpass.servers import LocalRedis
from tests.fixtures.service import ServiceProcess
from tests.reliability._common import corpus, temp_index

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

NEW_BODY = "submarine periscope torpedo sonar depth charge hull ballast"


def _passage(hit: dict[str, Any]) -> str:
    # The facade's default passage: the non-blank text fields, joined by newlines.
    return "\n".join(v.strip() for v in hit["fields"].values() if v and v.strip())


def _search(service: ServiceProcess, query: str) -> dict[str, Any]:
    r = httpx.post(f"{service.url}/v1/search", json={"query": query, "k": 30}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rerank_status"] == "ok", body["reason"]
    return body


def _rerank_score(service: ServiceProcess, query: str, text: str) -> float:
    r = httpx.post(f"{service.url}/v1/rerank", json={"query": query, "documents": [text]}, timeout=60)
    assert r.status_code == 200, r.text
    return float(r.json()["results"][0]["relevance_score"])


def test_edited_document_is_rescored_across_replicas(
    service_factory: Callable[..., ServiceProcess], redis_server: LocalRedis, opensearch_url: str, figures: Any
) -> None:
    docs = corpus(30)
    with temp_index(opensearch_url, docs) as index:
        settings = {
            "max_wait_ms": 1,
            "search_index": index,
            "search_fields": ["title", "body"],
            "search_window": 30,
            "engine": {"engine": "opensearch", "hosts": [opensearch_url]},
            "cache": {
                "backend": "redis",
                "redis_url": redis_server.url,
                "key_prefix": f"sp-rel-stale:{uuid.uuid4().hex}:",
                "redis_timeout_s": 2.0,
                "redis_connect_timeout_s": 2.0,
            },
        }
        a = service_factory(settings=settings)
        b = service_factory(settings=settings)
        query = "cat"
        first = _search(a, query)
        assert first["cache_misses"] == first["reranked"] > 1
        shared = _search(b, query)
        assert shared["cache_hits"] == shared["reranked"], "replica B did not see replica A's scores"
        target = "d0"  # title "cat cat": still matches the query after its body is replaced
        old = {h["id"]: h for h in shared["hits"]}[target]
        edited = next(d for d in docs if d["_id"] == target)
        r = httpx.put(
            f"{opensearch_url}/{index}/_doc/{target}?refresh=true",
            json={"title": edited["title"], "body": NEW_BODY},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        after_b = _search(b, query)
        after_a = _search(a, query)
        expected = _rerank_score(a, query, f"{edited['title']}\n{NEW_BODY}")
    for after in (after_b, after_a):
        new = {h["id"]: h for h in after["hits"]}.get(target)
        assert new is not None, "the edited document left the result list"
        assert new["fields"]["body"] == NEW_BODY
        assert new["score"] == pytest.approx(expected, abs=1e-4), "stale score served for an edited document"
        assert new["score"] != pytest.approx(old["score"], abs=1e-4)
    # B rescored exactly the edited document; A then found B's fresh score in Redis.
    assert after_b["cache_misses"] == 1 and after_b["cache_hits"] == after_b["reranked"] - 1
    assert after_a["cache_misses"] == 0
    assert _passage(new) == f"{edited['title']}\n{NEW_BODY}"
    figures.add("document edited under the same id (2 replicas, Redis)", "stale scores served", 0, "documents")
    figures.add("document edited under the same id (2 replicas, Redis)", "|old - new| score of the edited document", abs(old["score"] - expected), "")
