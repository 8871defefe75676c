"""Hybrid (BM25 + kNN) first stage and the retriever, on real Elasticsearch and OpenSearch.

Everything here is real: the engines (``engine`` fixture, both of them), the
connectors, the packaged all-MiniLM-L6-v2 bi-encoder for the vectors and the
tiny seeded cross-encoder for reranking. The tiny model's scores are random but
deterministic, so assertions are about behaviour (what was found, fused,
paged, degraded), not about relevance.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.docs_examples import run_blocks

from secondpass.connectors.elasticsearch import AsyncElasticsearchConnector, ElasticsearchConnector
from secondpass.connectors.opensearch import AsyncOpenSearchConnector, OpenSearchConnector
from secondpass.pipeline.cache import LRUScoreCache
from secondpass.pipeline.dense import SentenceTransformerEncoder
from secondpass.pipeline.first_stage import DenseStage, HybridStage, LexicalStage
from secondpass.pipeline.retriever import Retriever

pytestmark = pytest.mark.integration

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
ASYNC = {"elasticsearch": AsyncElasticsearchConnector, "opensearch": AsyncOpenSearchConnector}

# "Feline nutrition" shares no word with the query "what do cats eat": only kNN finds it.
DOCS = [
    {"_id": "feline", "title": "Feline nutrition", "text": "A kitten needs animal protein every day.", "lang": "en"},
    {"_id": "breeds", "title": "Cat breeds", "text": "The Maine Coon is a large cat.", "lang": "en"},
    {"_id": "dogfood", "title": "Dog food", "text": "Dogs eat meat and some vegetables.", "lang": "en"},
    {"_id": "paris", "title": "Paris", "text": "Paris is the capital of France.", "lang": "en"},
    {"_id": "katzen", "title": "Katzen", "text": "Was fressen Katzen? Cats eat mice.", "lang": "de"},
    {"_id": "birds", "title": "Birds", "text": "Birds eat seeds and insects.", "lang": "en"},
    {"_id": "fish", "title": "Fish", "text": "Goldfish eat flakes.", "lang": "en"},
    {"_id": "empty", "title": "", "text": "", "lang": "en"},
]
QUERY = "what do cats eat"


@pytest.fixture(scope="module")
def encoder() -> SentenceTransformerEncoder:
    enc = SentenceTransformerEncoder(device="cpu")
    enc.warm_up()
    return enc


@pytest.fixture
def hybrid_index(engine: tuple[str, str], encoder: SentenceTransformerEncoder) -> Iterator[tuple[str, str, str]]:
    """A fresh uuid index with text, a keyword and a vector field; removed afterwards."""
    name, url = engine
    index = f"test-hybrid-{uuid.uuid4().hex[:12]}"
    connector = SYNC[name](index=index, fields=["title^2", "text"], hosts=[url])
    vectors = encoder.encode([f"{d['title']}\n{d['text']}" for d in DOCS])
    connector.ensure_index(
        text_fields=["title", "text"],
        keyword_fields=["lang"],
        vector_field="embedding",
        dims=encoder.dimension,
    )
    counts = connector.bulk_index([{**d, "embedding": v} for d, v in zip(DOCS, vectors, strict=True)])
    assert counts.failed == 0, counts.errors
    connector.refresh()
    try:
        yield name, url, index
    finally:
        connector.delete_index()
        connector.close()


def _connector(name: str, url: str, index: str) -> Any:
    return SYNC[name](index=index, fields=["title^2", "text"], hosts=[url])


def test_knn_finds_what_bm25_cannot_and_fusion_merges_both(
    hybrid_index: tuple[str, str, str], encoder: SentenceTransformerEncoder
) -> None:
    name, url, index = hybrid_index
    with _connector(name, url, index) as connector:
        lexical = LexicalStage(connector).retrieve(QUERY, size=10)
        for fusion in ("rrf", "linear"):
            stage = HybridStage(connector, encoder, vector_field="embedding", fusion=fusion)  # type: ignore[arg-type]
            fused = stage.retrieve(QUERY, size=10)
            keys = [h.key for h in fused]
            assert len(keys) == len(set(keys))
            assert [h.rank for h in fused] == list(range(1, len(fused) + 1))
            assert all(h.score is not None and math.isfinite(h.score) for h in fused)
            assert "feline" not in {h.id for h in lexical}
            assert "feline" in {h.id for h in fused}
            assert {h.id for h in lexical} <= {h.id for h in fused}
            assert all(h.fields for h in fused if h.id != "empty")
            assert len(stage.retrieve(QUERY, size=3)) == 3


def test_filters_apply_to_both_sides(hybrid_index: tuple[str, str, str], encoder: SentenceTransformerEncoder) -> None:
    name, url, index = hybrid_index
    with _connector(name, url, index) as connector:
        stage = HybridStage(connector, encoder, vector_field="embedding")
        fused = stage.retrieve(QUERY, size=10, filters=[{"term": {"lang": "de"}}])
    assert [h.id for h in fused] == ["katzen"]


def test_dense_stage_filters_inside_the_knn_search(
    hybrid_index: tuple[str, str, str], encoder: SentenceTransformerEncoder
) -> None:
    name, url, index = hybrid_index
    with _connector(name, url, index) as connector:
        stage = DenseStage(connector, encoder, vector_field="embedding")
        [nearest] = stage.retrieve(QUERY, size=1)
        far = stage.retrieve(QUERY, size=1, filters=[{"ids": {"values": ["paris"]}}])
        german = stage.retrieve(QUERY, size=5, filters=[{"term": {"lang": "de"}}])
        english = stage.retrieve(QUERY, size=5, filters=[{"term": {"lang": "en"}}])
    # Filtering the top 1 afterwards would leave nothing: the engine filtered during the search.
    assert nearest.id != "paris" and [h.id for h in far] == ["paris"]
    assert [h.id for h in german] == ["katzen"]
    assert len(english) == 5 and "katzen" not in {h.id for h in english}


def test_retriever_over_hybrid_stage_reranks_pages_and_caches(
    hybrid_index: tuple[str, str, str], encoder: SentenceTransformerEncoder, tiny_scorer: Any
) -> None:
    name, url, index = hybrid_index
    with _connector(name, url, index) as connector:
        stage = HybridStage(connector, encoder, vector_field="embedding", fusion="linear", alpha=0.3)
        with Retriever(first_stage=stage, scorer=tiny_scorer, cache=LRUScoreCache(), window=5) as retriever:
            big = retriever.search(QUERY, k=20)
            pages = [retriever.search(QUERY, k=3, offset=offset) for offset in (0, 3, 6)]
    assert big.status == "ok" and big.window == 5 and big.reranked == 5
    assert len(big.hits) == len(DOCS)  # kNN returns every document
    reranked, rest = big.hits[:5], big.hits[5:]
    assert all(h.score is not None and math.isfinite(h.score) for h in reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)  # type: ignore[type-var]
    assert all(h.score is None for h in rest)
    assert [h.hit.rank for h in rest] == sorted(h.hit.rank for h in rest)
    assert tuple(h for page in pages for h in page.hits) == big.hits
    assert big.cache_hits == 0 and big.cache_misses == 5 and big.timings_ms["first_stage"] > 0
    # the later pages were served from the score cache: the model was not asked again
    assert all((page.cache_hits, page.cache_misses) == (5, 0) for page in pages)


async def test_asearch_with_async_connector_and_hybrid_stage(
    hybrid_index: tuple[str, str, str], encoder: SentenceTransformerEncoder, tiny_scorer: Any
) -> None:
    name, url, index = hybrid_index
    sync_connector = _connector(name, url, index)
    async_connector = ASYNC[name](index=index, fields=["title^2", "text"], hosts=[url])
    try:
        with Retriever(
            first_stage=HybridStage(sync_connector, encoder, vector_field="embedding"),
            scorer=tiny_scorer,
            window=10,
        ) as sync_retriever:
            expected = sync_retriever.search(QUERY, k=5)
        with Retriever(
            first_stage=HybridStage(async_connector, encoder, vector_field="embedding"),
            scorer=tiny_scorer,
            window=10,
        ) as async_retriever:
            got = await async_retriever.asearch(QUERY, k=5)
    finally:
        sync_connector.close()
        await async_connector.close()
    assert got.status == "ok"
    assert [(h.hit.key, h.score) for h in got.hits] == [(h.hit.key, h.score) for h in expected.hits]


def test_lexical_retriever_raises_when_the_deadline_leaves_no_time_for_the_first_stage(
    hybrid_index: tuple[str, str, str], tiny_scorer: Any
) -> None:
    """``deadline_ms`` covers the first stage: with no time left for it the call raises at once.

    (A first stage that answers but leaves no time to rerank gives ``skipped``:
    ``tests/unit/test_retriever.py::test_deadline_spent_by_first_stage_skips_reranking``.)
    """
    from secondpass.errors import SearchDeadlineError

    name, url, index = hybrid_index
    with _connector(name, url, index) as connector:
        with Retriever(connector=connector, scorer=tiny_scorer) as retriever:
            assert retriever.search(QUERY, k=5).status == "ok"
            with pytest.raises(SearchDeadlineError, match="deadline"):
                retriever.search(QUERY, k=5, deadline_ms=0.001)
        with Retriever(connector=connector, scorer=tiny_scorer, mode="required") as strict:
            with pytest.raises(SearchDeadlineError, match="deadline"):
                strict.search(QUERY, k=5, deadline_ms=0.001)


def test_docs_example_runs(
    engine: tuple[str, str], tiny_cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/retriever.md, both blocks, against the real engine and the tiny model."""
    name, url = engine
    monkeypatch.setenv("SECONDPASS_ENGINE_ENGINE", name)
    monkeypatch.setenv("SECONDPASS_ENGINE_HOSTS", url)
    monkeypatch.setenv("SECONDPASS_RERANK_MODEL", str(tiny_cross_encoder_dir))
    monkeypatch.setenv("SECONDPASS_RERANK_DEVICE", "cpu")
    monkeypatch.setenv("SECONDPASS_RERANK_DTYPE", "float32")
    for leftover in ("secondpass-retriever-docs", "secondpass-hybrid-docs"):
        with _connector(name, url, leftover) as connector:
            connector.delete_index()  # a crashed earlier run must not change this one
    ns = run_blocks("retriever.md")
    assert ns["result"].status == "ok"  # type: ignore[attr-defined]
