"""One connector suite, run against real Elasticsearch and real OpenSearch.

Every test gets its own uuid-named index, removed afterwards. "The engine's own
ordering" is read with a plain HTTP call to ``_search`` (no client library), so
the comparison cannot share a bug with the connector.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.docs_examples import run_blocks
from tests.support.tcp_proxy import TcpProxy

from secondpass.connectors import (
    AsyncElasticsearchConnector,
    AsyncOpenSearchConnector,
    BulkCounts,
    ElasticsearchConnector,
    OpenSearchConnector,
)
from secondpass.errors import BackendUnavailableError, QueryError
from secondpass.types import KnnQuery, SearchRequest

pytestmark = pytest.mark.integration

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
ASYNC = {"elasticsearch": AsyncElasticsearchConnector, "opensearch": AsyncOpenSearchConnector}
FIELDS = ["title^2", "body"]
FAST = {"initial_backoff_s": 0.02, "max_backoff_s": 0.1}

_WORDS = "cat dog bird fish horse mouse lion tiger bear wolf fox owl".split()


def _vector(i: int) -> list[float]:
    # distinct, non-zero 4-d vectors; doc i is closest to itself under cosine
    return [1.0 + i % 3, (i * 7) % 5 + 0.5, (i * 3) % 4 + 0.25, float(i % 2) + 0.1]


CORPUS = [
    {
        "_id": f"d{i}",
        "title": f"{_WORDS[i % len(_WORDS)]} story {i}",
        "body": " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(1 + i % 5)) + " common",
        "lang": "en" if i % 3 else "de",
        "year": 1990 + i,
        "vec": _vector(i),
    }
    for i in range(24)
]


def _index_name() -> str:
    return f"sp-test-{uuid.uuid4().hex[:16]}"


def _raw_search(url: str, index: str, body: dict[str, Any]) -> list[tuple[str, float | None]]:
    response = httpx.post(f"{url}/{index}/_search", json=body, timeout=30.0)
    response.raise_for_status()
    return [(h["_id"], h["_score"]) for h in response.json()["hits"]["hits"]]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def connector(engine: Any) -> Iterator[Any]:
    c = SYNC[engine.name](index=_index_name(), fields=FIELDS, hosts=[engine.url], deadline_s=60.0)
    yield c
    c.delete_index()
    c.close()


@pytest.fixture
def loaded(connector: Any) -> Any:
    created = connector.ensure_index(
        text_fields=["title", "body"], keyword_fields=["lang"], vector_field="vec", dims=4
    )
    counts = connector.bulk_index(CORPUS, chunk_size=10)
    connector.refresh()
    assert created is True
    assert counts == BulkCounts(indexed=len(CORPUS), failed=0)
    return connector


@pytest.mark.parametrize("text", ["cat", "dog story", "tiger lion common", "owl"])
def test_top_n_is_the_engines_own_ordering(loaded: Any, engine: Any, text: str) -> None:
    hits = loaded.search(SearchRequest(text, size=7))
    raw = _raw_search(
        engine.url,
        loaded.indices[0],
        {"size": 7, "query": {"multi_match": {"query": text, "fields": FIELDS}}},
    )
    assert [(h.id, h.score) for h in hits] == raw
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert hits, "the corpus matches every query"
    first = hits[0]
    doc = next(d for d in CORPUS if d["_id"] == first.id)
    assert first.index == loaded.indices[0]
    assert first.fields == {"title": doc["title"], "body": doc["body"]}
    assert first.source["year"] == doc["year"]


def test_default_size_returns_the_top_100(connector: Any) -> None:
    connector.ensure_index(text_fields=["title", "body"])
    docs = ({"_id": str(i), "title": f"t{i}", "body": "common " * (1 + i % 7)} for i in range(130))
    counts = connector.bulk_index(docs, chunk_size=40)
    connector.refresh()
    assert counts.indexed == 130 and connector.count() == 130
    hits = connector.search(SearchRequest("common"))
    assert len(hits) == 100
    assert len({h.id for h in hits}) == 100
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_filters_restrict_hits_without_changing_the_order(loaded: Any, engine: Any) -> None:
    filters = [{"term": {"lang": "de"}}, {"range": {"year": {"gte": 1995}}}]
    hits = loaded.search(SearchRequest("common", size=50, filters=filters))
    expected = {d["_id"] for d in CORPUS if d["lang"] == "de" and d["year"] >= 1995}
    assert {h.id for h in hits} == expected
    raw = _raw_search(
        engine.url,
        loaded.indices[0],
        {
            "size": 50,
            "query": {
                "bool": {
                    "must": [{"multi_match": {"query": "common", "fields": FIELDS}}],
                    "filter": filters,
                }
            },
        },
    )
    assert [(h.id, h.score) for h in hits] == raw


def test_caller_supplied_body_is_sent_as_is_with_our_size(loaded: Any, engine: Any) -> None:
    body = {"query": {"term": {"lang": "en"}}, "sort": [{"year": "desc"}]}
    hits = loaded.search(SearchRequest("what the user typed", size=3, body=body))
    newest_en = sorted((d for d in CORPUS if d["lang"] == "en"), key=lambda d: -d["year"])[:3]
    assert [h.id for h in hits] == [d["_id"] for d in newest_en]
    assert all(h.fields["title"] for h in hits)
    # a bare query clause works too, and filters wrap it
    bare = loaded.search(
        SearchRequest(
            "q", size=50, body={"match": {"body": "cat"}}, filters=[{"term": {"lang": "de"}}]
        )
    )
    expected = _raw_search(
        engine.url,
        loaded.indices[0],
        {
            "size": 50,
            "query": {
                "bool": {"must": [{"match": {"body": "cat"}}], "filter": [{"term": {"lang": "de"}}]}
            },
        },
    )
    assert [(h.id, h.score) for h in bare] == expected
    assert bare


def test_knn_search_finds_the_nearest_vectors_and_honours_filters(loaded: Any) -> None:
    target = CORPUS[5]
    knn = KnnQuery(field="vec", vector=tuple(target["vec"]), k=5, num_candidates=50)
    hits = loaded.search(SearchRequest("ignored for knn", size=5, knn=knn))
    assert hits[0].id == target["_id"]
    assert len(hits) == 5
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(h.score is not None for h in hits)
    other_lang = "de" if target["lang"] == "en" else "en"
    filtered = loaded.search(
        SearchRequest("x", size=5, knn=knn, filters=[{"term": {"lang": other_lang}}])
    )
    assert len(filtered) == 5  # filtered during the graph search, not after
    assert target["_id"] not in {h.id for h in filtered}
    langs = {d["_id"]: d["lang"] for d in CORPUS}
    assert {langs[h.id] for h in filtered} == {other_lang}


def test_missing_index_is_a_clear_query_error(engine: Any) -> None:
    connector = SYNC[engine.name](index=_index_name(), fields=FIELDS, hosts=[engine.url])
    with pytest.raises(QueryError) as info:
        connector.search(SearchRequest("cat"))
    assert info.value.status == 404
    assert "index_not_found_exception" in (info.value.reason or "")
    assert connector.indices[0] in str(info.value)
    assert connector.existing_ids(["a"]) == set()
    assert connector.delete_index() is False
    connector.close()


def test_malformed_caller_dsl_is_a_query_error_with_the_engines_reason(loaded: Any) -> None:
    with pytest.raises(QueryError) as info:
        loaded.search(SearchRequest("cat", body={"query": {"no_such_query": {}}}))
    assert info.value.status == 400
    assert "no_such_query" in (info.value.reason or "")


def test_unreachable_port_is_backend_unavailable_within_the_deadline(engine: Any) -> None:
    connector = SYNC[engine.name](
        index="docs",
        fields=FIELDS,
        hosts=[f"http://127.0.0.1:{_closed_port()}"],
        max_attempts=50,
        deadline_s=1.5,
        **FAST,
    )
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="connection refused"):
        connector.search(SearchRequest("cat"))
    assert time.monotonic() - started < 1.5 + 2.0  # the deadline ended it, not 50 attempts
    assert connector.ping() is False


def _target(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _through(proxy: TcpProxy, engine: Any, index: str, max_attempts: int) -> Any:
    return SYNC[engine.name](
        index=index,
        fields=FIELDS,
        hosts=[proxy.url],
        max_attempts=max_attempts,
        deadline_s=30.0,
        **FAST,
    )


@pytest.mark.parametrize("fault", ["reset", "refuse"])
def test_recovers_through_a_flaky_network_with_the_expected_attempts(
    loaded: Any, engine: Any, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    expected = loaded.search(SearchRequest("cat", size=5))
    with TcpProxy(_target(engine.url)) as proxy:
        getattr(proxy, f"{fault}_next")(2)
        flaky = _through(proxy, engine, loaded.indices[0], max_attempts=4)
        with caplog.at_level(logging.WARNING, logger="secondpass.connectors"):
            got = flaky.search(SearchRequest("cat", size=5))
        flaky.close()
        assert proxy.accepted == 3  # two failed connections, then one that worked
    assert got == expected
    assert len([r for r in caplog.records if "retrying in" in r.getMessage()]) == 2


def test_gives_up_after_max_attempts_when_the_network_stays_down(loaded: Any, engine: Any) -> None:
    with TcpProxy(_target(engine.url)) as proxy:
        proxy.reset_next(100)
        flaky = _through(proxy, engine, loaded.indices[0], max_attempts=3)
        with pytest.raises(BackendUnavailableError, match="gave up after 3 attempt") as info:
            flaky.search(SearchRequest("cat"))
        flaky.close()
        assert proxy.accepted == 3
    assert isinstance(info.value.__cause__, BackendUnavailableError)


def test_admin_primitives(loaded: Any) -> None:
    assert loaded.ping() is True
    assert loaded.ensure_index(text_fields=["title"]) is False  # exists: left alone
    assert loaded.count() == len(CORPUS)
    assert loaded.existing_ids(["d1", "d2", "nope", "d23"]) == {"d1", "d2", "d23"}
    counts = loaded.bulk_index(
        [{"_id": "bad", "year": "not a year"}, {"_id": "d1", "title": "replaced", "year": 3000}]
    )
    loaded.refresh()
    assert (counts.indexed, counts.failed) == (1, 1)
    assert "bad" in counts.errors[0] and "year" in counts.errors[0]
    assert loaded.count() == len(CORPUS)  # d1 overwritten, not duplicated
    assert loaded.delete_index() is True
    assert loaded.delete_index() is False


def test_custom_id_field_stays_in_the_source(connector: Any) -> None:
    connector.ensure_index(text_fields=["body"])
    counts = connector.bulk_index(
        [{"doc_id": 17, "body": "hello"}, {"doc_id": 18, "body": "hello there"}], id_field="doc_id"
    )
    connector.refresh()
    assert counts.indexed == 2
    hits = connector.search(SearchRequest("hello"))
    assert {h.id for h in hits} == {"17", "18"}  # ids become strings
    assert {h.source["doc_id"] for h in hits} == {17, 18}  # the source keeps its own field


def _connections_opened(url: str) -> int:
    nodes = httpx.get(f"{url}/_nodes/stats/http", timeout=30.0).json()["nodes"]
    return sum(int(node["http"]["total_opened"]) for node in nodes.values())


def test_concurrent_threads_reuse_pooled_connections(loaded: Any, engine: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    requests = [SearchRequest(_WORDS[i % len(_WORDS)], size=5) for i in range(120)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(loaded.search, requests))  # the pool fills up to what 8 threads need
        before = _connections_opened(engine.url)
        assert all(pool.map(loaded.search, requests))
    opened = _connections_opened(engine.url) - before
    # The second burst runs on pooled connections: only the stats call opens one. A pool
    # smaller than the number of threads discards connections and opens new ones.
    assert opened <= 2, f"{opened} new connections for a second burst of 120 searches"


async def test_async_connector_returns_what_the_sync_one_does(loaded: Any, engine: Any) -> None:
    request = SearchRequest("tiger common", size=6, filters=[{"term": {"lang": "en"}}])
    expected = loaded.search(request)
    async_connector = ASYNC[engine.name](index=loaded.indices[0], fields=FIELDS, hosts=[engine.url])
    try:
        assert await async_connector.ping() is True
        got = await async_connector.search(request)
    finally:
        await async_connector.close()
    assert got == expected


def test_docs_example_runs(engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECONDPASS_ENGINE_ENGINE", engine.name)
    monkeypatch.setenv("SECONDPASS_ENGINE_HOSTS", engine.url)
    cleanup = SYNC[engine.name](
        index="secondpass-example-books", fields=["body"], hosts=[engine.url]
    )
    cleanup.delete_index()
    try:
        namespace = run_blocks("connectors.md")
    finally:
        cleanup.delete_index()
        cleanup.close()
    assert [h.id for h in namespace["nearest"]] == ["1", "3"]  # type: ignore[attr-defined]


def test_basic_auth_works_and_the_password_never_shows(
    elasticsearch_secure: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secure = elasticsearch_secure
    with caplog.at_level(logging.DEBUG):
        good = ElasticsearchConnector(
            index=_index_name(),
            fields=["body"],
            hosts=[secure.url],
            username=secure.username,
            password=secure.password,
        )
        good.ensure_index(text_fields=["body"])
        good.bulk_index([{"_id": "1", "body": "secret garden"}])
        good.refresh()
        assert [h.id for h in good.search(SearchRequest("garden"))] == ["1"]
        bad = ElasticsearchConnector(
            index=good.indices[0],
            fields=["body"],
            hosts=[secure.url],
            username=secure.username,
            password=secure.password + "-wrong",
        )
        with pytest.raises(QueryError) as info:
            bad.search(SearchRequest("garden"))
        anonymous = ElasticsearchConnector(
            index=good.indices[0], fields=["body"], hosts=[secure.url]
        )
        with pytest.raises(QueryError) as anon_info:
            anonymous.search(SearchRequest("garden"))
        good.delete_index()
        texts = [
            caplog.text,
            repr(good),
            repr(bad),
            str(good.settings),
            str(info.value),
            str(anon_info.value),
        ]
        for c in (good, bad, anonymous):
            c.close()
    assert info.value.status == 401 and anon_info.value.status == 401
    for text in texts:
        assert secure.password not in text
