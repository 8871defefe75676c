"""The drop-in proxy against real engines, driven by the official clients.

Everything is real: Elasticsearch and OpenSearch (``engine`` fixture, both), the
proxy under uvicorn on a free loopback port, the tiny cross-encoder. Each test
gets its own index. "Equal to a direct call" is checked by making the same call
to the engine directly; "the reranked order" is checked against the facade
(``Retriever.search`` over the connector) and ``Retriever.rerank_hits``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.docs_examples import run_blocks
from tests.fixtures.servers import EngineHandle

from secondpass.config import ConnectionSettings
from secondpass.connectors import read_hits
from secondpass.pipeline.retriever import Retriever
from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from secondpass.servers._process import free_port

pytestmark = pytest.mark.integration

WINDOW = 8
FIELDS = ["title", "body"]
MATCH = {"match": {"body": "cat food"}}
QUERY_TEXT = "cat food"

WORDS = ["cat", "food", "dog", "fish", "meat", "bird", "milk", "toy", "bed", "play"]


def documents(n: int = 24) -> list[dict[str, Any]]:
    """Documents that all match ``cat`` with varied text, so BM25 and the model disagree."""
    docs = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(3 + i % 5)]
        docs.append(
            {
                "_id": str(i),
                "title": f"note {i} {' '.join(words[:2])}",
                "body": f"cat {' '.join(words)} number {i}",
                "tag": ["a", "b", "c"][i % 3],
                "n": i,
            }
        )
    return docs


def official_client(name: str, url: str) -> Any:
    """The engine's official Python client, as an application would configure it."""
    if name == "elasticsearch":
        from elasticsearch import Elasticsearch

        from secondpass.connectors.elasticsearch import client_kwargs

        # The 9.x client's compatible-with=9 media types are refused by an 8.x
        # server, with or without the proxy; configure it as for a direct connection.
        return Elasticsearch(
            **client_kwargs(ConnectionSettings(engine="elasticsearch", hosts=[url]))
        )
    from opensearchpy import OpenSearch

    return OpenSearch(hosts=[url], timeout=30)


class Api:
    """The calls these tests make, on either official client (their keyword styles differ)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.client = official_client(name, url)

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        params = kwargs.pop("params", {})
        if self.name == "elasticsearch":
            kwargs.update(params)
        elif params:
            kwargs["params"] = params
        answer = fn(**kwargs)
        return answer.body if hasattr(answer, "body") else answer

    def search(self, index: str, body: dict[str, Any], **params: Any) -> Any:
        return self._call(self.client.search, index=index, body=body, params=params)

    def msearch(self, searches: list[dict[str, Any]]) -> Any:
        return self._call(self.client.msearch, body=searches)

    def scroll(self, scroll_id: str) -> Any:
        return self._call(self.client.scroll, body={"scroll_id": scroll_id, "scroll": "1m"})

    def clear_scroll(self, scroll_id: str) -> Any:
        return self._call(self.client.clear_scroll, body={"scroll_id": scroll_id})

    def index(self, index: str, doc_id: str, document: dict[str, Any]) -> Any:
        return self._call(
            self.client.index, index=index, id=doc_id, body=document, params={"refresh": "true"}
        )

    def bulk(self, operations: list[dict[str, Any]]) -> Any:
        return self._call(self.client.bulk, body=operations, params={"refresh": "true"})

    def get(self, index: str, doc_id: str) -> Any:
        return self._call(self.client.get, index=index, id=doc_id)

    def count(self, index: str) -> Any:
        return self._call(self.client.count, index=index)

    def mapping(self, index: str) -> Any:
        return self._call(self.client.indices.get_mapping, index=index)

    def health(self) -> Any:
        return self._call(self.client.cluster.health)

    def cat_indices(self, index: str) -> Any:
        return self._call(self.client.cat.indices, index=index, params={"format": "json"})

    def close(self) -> None:
        self.client.close()


def connector_for(name: str, url: str, index: str) -> Any:
    settings = ConnectionSettings(engine=name, hosts=[url])  # type: ignore[arg-type]
    if name == "elasticsearch":
        from secondpass.connectors.elasticsearch import ElasticsearchConnector

        return ElasticsearchConnector(index=index, fields=FIELDS, settings=settings)
    from secondpass.connectors.opensearch import OpenSearchConnector

    return OpenSearchConnector(index=index, fields=FIELDS, settings=settings)


@pytest.fixture
def index(engine: EngineHandle) -> Iterator[str]:
    """A fresh index with the sample documents, removed afterwards."""
    name, url = engine
    index = f"secondpass-proxy-{uuid.uuid4().hex[:10]}"
    with httpx.Client(base_url=url, timeout=60) as http:
        created = http.put(
            f"/{index}",
            json={
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {
                    "properties": {
                        "title": {"type": "text"},
                        "body": {"type": "text"},
                        "tag": {"type": "keyword"},
                        "n": {"type": "integer"},
                    }
                },
            },  # fmt: skip
        )
        assert created.status_code == 200, created.text
        lines = []
        for doc in documents():
            lines.append(json.dumps({"index": {"_index": index, "_id": doc["_id"]}}))
            lines.append(json.dumps({k: v for k, v in doc.items() if k != "_id"}))
        bulk = http.post("/_bulk?refresh=true", content="\n".join(lines) + "\n",
                         headers={"content-type": "application/x-ndjson"})  # fmt: skip
        assert bulk.status_code == 200 and not bulk.json()["errors"], bulk.text
        yield index
        http.delete(f"/{index}")


@pytest.fixture
def proxy(engine: EngineHandle, index: str, tiny_scorer: Any) -> Iterator[tuple[str, RerankProxy]]:
    """The proxy in front of the engine, on a free loopback port: (base URL, app)."""
    _, url = engine
    settings = ProxySettings(upstream=url, listen="127.0.0.1:0", window=WINDOW,
                             deadline_ms=60_000, indices={index: {"fields": FIELDS}},
                             rerank={"rank_by": "raw"})  # fmt: skip
    app = RerankProxy(settings, scorer=tiny_scorer)
    with BackgroundProxy(app) as proxy_url:
        yield proxy_url, app
    app.close()


@pytest.fixture
def clients(engine: EngineHandle, proxy: tuple[str, RerankProxy]) -> Iterator[tuple[Api, Api]]:
    """(client on the proxy, client on the engine directly), both official."""
    name, url = engine
    via, direct = Api(name, proxy[0]), Api(name, url)
    yield via, direct
    via.close()
    direct.close()


def facade_order(
    engine: EngineHandle, index: str, scorer: Any, *, k: int, offset: int = 0
) -> list[Any]:
    """The facade's answer to the same query: Retriever.search over the connector."""
    name, url = engine
    connector = connector_for(name, url, index)
    try:
        with Retriever(
            connector=connector, scorer=scorer, window=WINDOW, rank_by="raw"
        ) as retriever:
            result = retriever.search(QUERY_TEXT, k=k, offset=offset, body={"query": MATCH})
    finally:
        connector.close()
    assert result.status == "ok"
    return list(result.hits)


def strip_took(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "took"}


# ------------------------------------------------------------------ pass-through


def test_writes_and_reads_pass_through(clients: tuple[Api, Api], index: str) -> None:
    via, direct = clients
    created = via.index(index, "new", {"title": "t", "body": "cat new"})
    assert created["result"] == "created"
    bulk = via.bulk([{"index": {"_index": index, "_id": "b1"}}, {"body": "cat bulk"},
                     {"delete": {"_index": index, "_id": "0"}}])  # fmt: skip
    assert not bulk["errors"] and [next(iter(i)) for i in bulk["items"]] == ["index", "delete"]
    assert via.get(index, "new") == direct.get(index, "new")
    assert via.count(index) == direct.count(index)
    assert via.count(index)["count"] == 25
    assert via.mapping(index) == direct.mapping(index)
    assert via.health()["cluster_name"] == direct.health()["cluster_name"]
    assert [row["index"] for row in via.cat_indices(index)] == [index]


def test_headers_and_bytes_come_back_as_the_engine_sent_them(
    engine: EngineHandle, proxy: tuple[str, RerankProxy], index: str
) -> None:
    _, url = engine
    with httpx.Client(timeout=30) as http:
        direct = http.get(f"{url}/{index}/_doc/3?pretty", headers={"X-Opaque-Id": "probe"})
        via = http.get(f"{proxy[0]}/{index}/_doc/3?pretty", headers={"X-Opaque-Id": "probe"})
        assert via.status_code == direct.status_code == 200
        assert via.content == direct.content  # byte for byte, pretty printing included
        # same names, values and order; the proxy adds only its request id (issue 15)
        assert via.headers.get("x-request-id")
        assert [(k, v) for k, v in via.headers.multi_items() if k != "x-request-id"] == list(
            direct.headers.multi_items()
        )
        missing_doc = http.get(f"{proxy[0]}/{index}/_doc/nope")
        assert missing_doc.status_code == 404
        assert missing_doc.content == http.get(f"{url}/{index}/_doc/nope").content


# -------------------------------------------------------------------- reranking


def test_search_is_reranked_like_the_facade_and_keeps_the_engine_shape(
    engine: EngineHandle, clients: tuple[Api, Api], index: str, tiny_scorer: Any
) -> None:
    via, direct = clients
    search = {"query": MATCH, "size": 5, "aggs": {"tags": {"terms": {"field": "tag"}}}}
    got = via.search(index, search)
    plain = direct.search(index, search)
    expected = facade_order(engine, index, tiny_scorer, k=5)
    assert [h["_id"] for h in got["hits"]["hits"]] == [r.hit.id for r in expected]
    assert [h["_score"] for h in got["hits"]["hits"]] == pytest.approx(
        [r.score for r in expected], rel=1e-5
    )
    assert [h["_id"] for h in got["hits"]["hits"]] != [h["_id"] for h in plain["hits"]["hits"]]
    assert got["hits"]["total"] == plain["hits"]["total"]
    assert got["aggregations"] == plain["aggregations"]
    assert got["_shards"] == plain["_shards"] and got["timed_out"] is False
    assert got["hits"]["max_score"] == pytest.approx(expected[0].score, rel=1e-5)
    assert isinstance(got["took"], int)
    # first-stage evidence: the engine's own score and rank for that document
    window = direct.search(index, {"query": MATCH, "size": WINDOW})["hits"]["hits"]
    first = {h["_id"]: (h["_score"], rank) for rank, h in enumerate(window, start=1)}
    for hit in got["hits"]["hits"]:
        assert hit["fields"]["_secondpass.first_stage_rank"] == [first[hit["_id"]][1]]
        assert hit["fields"]["_secondpass.first_stage_score"] == [
            pytest.approx(first[hit["_id"]][0])
        ]
        assert hit["_source"] == next(h["_source"] for h in window if h["_id"] == hit["_id"])


def test_order_equals_rerank_hits_on_the_engines_window(
    engine: EngineHandle, proxy: tuple[str, RerankProxy], index: str, tiny_scorer: Any
) -> None:
    name, url = engine
    with httpx.Client(timeout=30) as http:
        window = http.post(f"{url}/{index}/_search", json={"query": MATCH, "size": WINDOW}).json()
        via = http.post(f"{proxy[0]}/{index}/_search", json={"query": MATCH, "size": WINDOW}).json()
    hits = list(read_hits(window, FIELDS).hits)
    with Retriever(scorer=tiny_scorer, window=WINDOW, rank_by="raw") as retriever:
        result = retriever.rerank_hits(QUERY_TEXT, hits)
    assert [h["_id"] for h in via["hits"]["hits"]] == [r.hit.id for r in result.hits]


def test_source_filtering_is_respected_while_reranking(
    engine: EngineHandle, clients: tuple[Api, Api], index: str, tiny_scorer: Any
) -> None:
    via, _ = clients
    expected = [r.hit.id for r in facade_order(engine, index, tiny_scorer, k=4)]
    no_source = via.search(index, {"query": MATCH, "size": 4, "_source": False})
    assert [h["_id"] for h in no_source["hits"]["hits"]] == expected
    for hit in no_source["hits"]["hits"]:
        assert "_source" not in hit
        assert set(hit["fields"]) == {
            "_secondpass.first_stage_score",
            "_secondpass.first_stage_rank",
        }
    only_tag = via.search(index, {"query": MATCH, "size": 4, "_source": ["tag"], "fields": ["n"]})
    assert [h["_id"] for h in only_tag["hits"]["hits"]] == expected
    for hit in only_tag["hits"]["hits"]:
        assert set(hit["_source"]) == {"tag"}
        assert hit["fields"]["n"] == [int(hit["_id"])]
        assert "body" not in hit["fields"] and "title" not in hit["fields"]


def test_pages_walk_one_order_across_the_window(
    engine: EngineHandle, clients: tuple[Api, Api], index: str, tiny_scorer: Any
) -> None:
    via, direct = clients
    total = 15
    expected = [r.hit.id for r in facade_order(engine, index, tiny_scorer, k=total)]
    seen: list[str] = []
    for offset in range(0, total, 3):  # pages 0-2 ... 12-14; the window ends at 8
        page = via.search(index, {"query": MATCH, "from": offset, "size": 3})
        seen += [h["_id"] for h in page["hits"]["hits"]]
    assert seen == expected
    assert len(set(seen)) == total
    beyond = {
        "query": MATCH,
        "from": WINDOW,
        "size": 4,
    }  # wholly past the window: the engine's page
    assert via.search(index, beyond)["hits"]["hits"] == direct.search(index, beyond)["hits"]["hits"]


def test_msearch_reranks_each_search(
    engine: EngineHandle, clients: tuple[Api, Api], index: str, tiny_scorer: Any
) -> None:
    via, direct = clients
    searches = [
        {"index": index}, {"query": MATCH, "size": 3},
        {"index": index}, {"query": MATCH, "size": 0, "aggs": {"tags": {"terms": {"field": "tag"}}}},
        {"index": index}, {"query": MATCH, "size": 3, "sort": [{"n": "desc"}]},
    ]  # fmt: skip
    got = via.msearch(searches)["responses"]
    plain = direct.msearch(searches)["responses"]
    expected = [r.hit.id for r in facade_order(engine, index, tiny_scorer, k=3)]
    assert [h["_id"] for h in got[0]["hits"]["hits"]] == expected
    assert got[0]["hits"]["total"] == plain[0]["hits"]["total"]
    assert strip_took(got[1]) == strip_took(plain[1])
    assert strip_took(got[2]) == strip_took(plain[2])


def test_sort_and_scroll_pass_through(clients: tuple[Api, Api], index: str) -> None:
    via, direct = clients
    by_n = {"query": MATCH, "size": 5, "sort": [{"n": "asc"}]}
    assert strip_took(via.search(index, by_n)) == strip_took(direct.search(index, by_n))
    first = via.search(index, {"query": MATCH, "size": 10, "sort": ["_doc"]}, scroll="1m")
    ids = [h["_id"] for h in first["hits"]["hits"]]
    scroll_id = first["_scroll_id"]
    while True:
        more = via.scroll(scroll_id)
        if not more["hits"]["hits"]:
            break
        ids += [h["_id"] for h in more["hits"]["hits"]]
        scroll_id = more["_scroll_id"]
    assert via.clear_scroll(scroll_id)["succeeded"] is True
    assert sorted(ids, key=int) == [str(i) for i in range(24)]


def test_engine_errors_reach_the_client_with_the_engines_status_and_body(
    engine: EngineHandle, proxy: tuple[str, RerankProxy], index: str
) -> None:
    _, url = engine
    bad_query = {"query": {"match": {"body": {"query": "cat", "no_such_option": 1}}}}
    with httpx.Client(timeout=30) as http:
        for path, body in (
            (f"/{index}/_search", bad_query),
            ("/no-such-index-xyz/_search", {"query": MATCH}),
        ):
            direct = http.post(url + path, json=body)
            via = http.post(proxy[0] + path, json=body)
            assert via.status_code == direct.status_code
            assert via.status_code in (400, 404)
            assert via.json() == direct.json()
    api = Api(engine.name, proxy[0])
    try:
        with pytest.raises(Exception) as caught:  # the client's own NotFoundError
            api.search("no-such-index-xyz", {"query": MATCH})
        assert type(caught.value).__name__ == "NotFoundError"
        assert caught.value.status_code == 404  # type: ignore[attr-defined]
    finally:
        api.close()


def test_media_types_are_passed_as_the_client_sent_them(
    engine: EngineHandle, proxy: tuple[str, RerankProxy], index: str
) -> None:
    name, url = engine
    with httpx.Client(timeout=30) as http:
        for version in (8, 9):
            media = f"application/vnd.elasticsearch+json; compatible-with={version}"
            headers = {"accept": media, "content-type": media}
            body = json.dumps({"query": MATCH, "size": 3})
            direct = http.post(f"{url}/{index}/_search", content=body, headers=headers)
            via = http.post(f"{proxy[0]}/{index}/_search", content=body, headers=headers)
            assert via.status_code == direct.status_code
            assert via.headers["content-type"] == direct.headers["content-type"]
            if name == "elasticsearch" and version == 8:
                assert via.status_code == 200
                assert via.headers["x-secondpass-rerank"] == "ok"
            else:  # 8.x refuses compatible-with=9, OpenSearch every vendor type: same answer
                assert via.status_code >= 400
                assert via.json() == direct.json()


def test_opting_out_gives_the_engines_answer(
    engine: EngineHandle, proxy: tuple[str, RerankProxy], index: str
) -> None:
    _, url = engine
    search = {"query": MATCH, "size": 5}
    with httpx.Client(timeout=30) as http:
        direct = http.post(f"{url}/{index}/_search", json=search).json()
        off = http.post(f"{proxy[0]}/{index}/_search?secondpass_rerank=off", json=search)
        header = http.post(
            f"{proxy[0]}/{index}/_search", json=search, headers={"X-SecondPass-Rerank": "off"}
        )
    for answer in (off, header):
        assert answer.headers["x-secondpass-rerank"] == "skipped; reason=disabled by the client"
        assert strip_took(answer.json()) == strip_took(direct)


def test_a_failing_scorer_answers_in_engine_order(engine: EngineHandle, index: str) -> None:
    class Broken:
        fingerprint = "broken"

        def score(self, query: str, passages: Any, *, timings: Any = None) -> Any:
            raise RuntimeError("no model today")

        def score_pairs(self, pairs: Any, *, timings: Any = None) -> Any:
            raise RuntimeError("no model today")

    _, url = engine
    settings = ProxySettings(upstream=url, window=WINDOW, indices={index: {"fields": FIELDS}})
    app = RerankProxy(settings, scorer=Broken())
    search = {"query": MATCH, "from": 2, "size": 4, "_source": ["tag"]}
    with BackgroundProxy(app) as proxy_url, httpx.Client(timeout=30) as http:
        via = http.post(f"{proxy_url}/{index}/_search", json=search)
        direct = http.post(f"{url}/{index}/_search", json=search).json()
    app.close()
    assert via.status_code == 200
    assert via.headers["x-secondpass-rerank"].startswith("failed; reason=scoring failed")
    assert strip_took(via.json()) == strip_took(direct)


# ------------------------------------------------------------------ CLI and docs


def test_the_cli_serves_the_proxy(
    engine: EngineHandle, index: str, tiny_cross_encoder_dir: Path
) -> None:
    name, url = engine
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "secondpass", "proxy", "--upstream", url, "--listen", f"127.0.0.1:{port}",
        "--index", f"{index}=title,body", "--index-template", f"{index}={{title}} {{body}}",
        "--window", str(WINDOW), "--rerank-model", str(tiny_cross_encoder_dir),
        "--rerank-device", "cpu", "--rerank-dtype", "float32",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        api = Api(name, f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                health = api.health()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert health["number_of_nodes"] == 1
        with httpx.Client(timeout=30) as http:
            answer = http.post(
                f"http://127.0.0.1:{port}/{index}/_search", json={"query": MATCH, "size": 3}
            )
        assert answer.headers["x-secondpass-rerank"] == "ok"
        assert len(answer.json()["hits"]["hits"]) == 3
        assert api.count(index)["count"] == 24
        api.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_docs_example_runs(
    engine: EngineHandle, tiny_cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = engine
    monkeypatch.setenv("SECONDPASS_PROXY_UPSTREAM", url)
    monkeypatch.setenv("SECONDPASS_RERANK_MODEL", str(tiny_cross_encoder_dir))
    monkeypatch.setenv("SECONDPASS_RERANK_DEVICE", "cpu")
    monkeypatch.setenv("SECONDPASS_RERANK_DTYPE", "float32")
    httpx.delete(f"{url}/secondpass-proxy-docs")  # a crashed earlier run must not change this one
    ns = run_blocks("proxy.md")
    assert ns["answer"].headers["x-secondpass-rerank"] == "ok"  # type: ignore[attr-defined]


def test_client_credentials_pass_through_and_lent_ones_replace_them(
    elasticsearch_secure: Any, tiny_scorer: Any
) -> None:
    secure = elasticsearch_secure
    auth = (secure.username, secure.password)
    bare = RerankProxy(ProxySettings(upstream=secure.url), scorer=tiny_scorer)
    lent = RerankProxy(
        ProxySettings(
            upstream=secure.url,
            username=secure.username,
            password=secure.password,
            lend_credentials=True,
        ),
        scorer=tiny_scorer,
    )
    with BackgroundProxy(bare) as bare_url, BackgroundProxy(lent) as lent_url:
        with httpx.Client(timeout=30) as http:
            direct = http.get(f"{secure.url}/_cluster/health")
            anonymous = http.get(f"{bare_url}/_cluster/health")
            assert anonymous.status_code == direct.status_code == 401
            assert anonymous.content == direct.content
            assert anonymous.headers.get("www-authenticate") == direct.headers.get("www-authenticate")
            assert http.get(f"{bare_url}/_cluster/health", auth=auth).status_code == 200
            # Lent credentials act only on the allow-listed read paths...
            assert http.get(f"{lent_url}/_cluster/health").status_code == 403
            assert http.get(f"{lent_url}/_count").status_code == 200
            # ...and replace whatever the client sent.
            wrong = http.get(f"{lent_url}/_count", auth=(secure.username, "wrong"))
            assert wrong.status_code == 200
    for proxy in (bare, lent):
        proxy.retriever.close()


@pytest.mark.parametrize(
    ("method", "params"),
    [("GET", {"q": "body:cat"}), ("POST", {"q": "cat"}), ("GET", {"q": "cat", "size": "3"})],
)
def test_body_less_searches_are_reranked(
    proxy: tuple[str, RerankProxy], index: str, method: str, params: dict[str, str]
) -> None:
    # curl-style searches carry no body and no Content-Type; the widened request
    # the proxy sends has a JSON body, which the engines refuse untyped (406).
    with httpx.Client(timeout=60) as http:
        answer = http.request(method, f"{proxy[0]}/{index}/_search", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-secondpass-rerank"] == "ok"
    hits = answer.json()["hits"]["hits"]
    assert hits and len(hits) <= int(params.get("size", "10"))


# ------------------------------------------------------------- own endpoints


def scraped(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text scrape (0 when the series has no sample yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def cached_proxy(
    engine: EngineHandle, index: str, tiny_scorer: Any
) -> Iterator[tuple[str, RerankProxy]]:
    """The proxy with an in-memory score cache, so a repeated window is served from it."""
    from secondpass.pipeline.cache import LRUScoreCache

    _, url = engine
    settings = ProxySettings(upstream=url, listen="127.0.0.1:0", window=WINDOW,
                             deadline_ms=60_000, indices={index: {"fields": FIELDS}},
                             rerank={"rank_by": "raw"})  # fmt: skip
    app = RerankProxy(settings, scorer=tiny_scorer, cache=LRUScoreCache())
    with BackgroundProxy(app) as proxy_url:
        yield proxy_url, app
    app.close()


def test_own_endpoints_report_real_searches(
    engine: EngineHandle, cached_proxy: tuple[str, RerankProxy], index: str
) -> None:
    url = cached_proxy[0]
    via = Api(engine.name, url)
    with httpx.Client(timeout=60) as http:
        assert http.get(f"{url}/_secondpass/livez").json() == {"status": "ok"}
        ready = http.get(f"{url}/_secondpass/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"scorer": "ok", "upstream": "ok"}
        before = http.get(f"{url}/_secondpass/metrics").text
        via.search(index, {"query": MATCH, "size": 3})
        via.search(index, {"query": MATCH, "size": 3})  # the same window: cache hits
        via.search(index, {"query": MATCH, "size": 3, "sort": [{"n": "desc"}]})
        via.msearch([{"index": index}, {"query": MATCH, "size": 2}])
        after = http.get(f"{url}/_secondpass/metrics").text
    via.close()
    searches = "secondpass_proxy_searches_total"

    def moved(name: str, **labels: str) -> float:
        return scraped(after, name, **labels) - scraped(before, name, **labels)

    assert moved(searches, endpoint="search", outcome="ok") == 2
    skipped = {"endpoint": "search", "outcome": "skipped"}
    assert moved(searches, **skipped, reason="sorted by a field") == 1
    assert moved(searches, endpoint="msearch", outcome="ok") == 1
    assert moved("secondpass_proxy_upstream_duration_seconds_count", kind="search") == 3
    assert moved("secondpass_proxy_upstream_duration_seconds_count", kind="msearch") == 1
    assert moved("secondpass_proxy_rerank_duration_seconds_count") == 3
    # The first search scores its window; the second and the msearch find it cached.
    assert moved("secondpass_cache_misses_total") == WINDOW
    assert moved("secondpass_cache_hits_total") == 2 * WINDOW
    # Only the misses reached the shared engine's batches.
    assert moved("secondpass_batch_pairs_sum") == WINDOW
    assert moved("secondpass_batch_requests_sum") == 1
    assert moved("secondpass_stage_duration_seconds_count", stage="queue_wait") == 1


def test_msearch_reranks_up_to_the_cap_and_answers_the_rest_as_the_engine_did(
    engine: EngineHandle, index: str, tiny_scorer: Any
) -> None:
    _, url = engine
    settings = ProxySettings(upstream=url, listen="127.0.0.1:0", window=WINDOW,
                             deadline_ms=60_000, indices={index: {"fields": FIELDS}},
                             max_msearch_reranked=1)  # fmt: skip
    app = RerankProxy(settings, scorer=tiny_scorer)
    lines = [{"index": index}, {"query": MATCH, "size": 3}] * 3
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    headers = {"content-type": "application/x-ndjson"}
    try:
        with BackgroundProxy(app) as proxy_url, httpx.Client(timeout=60) as http:
            got = http.post(f"{proxy_url}/_msearch", content=data, headers=headers)
            plain = http.post(f"{url}/_msearch", content=data, headers=headers).json()
    finally:
        app.close()
    capped = "skipped; reason=msearch rerank cap of 1 searches reached"
    assert got.headers["x-secondpass-rerank"] == f"ok, {capped}, {capped}"
    responses = got.json()["responses"]
    assert responses[0]["hits"]["hits"][0]["fields"]  # reranked: first-stage rank annotated
    assert [strip_took(r) for r in responses[1:]] == [strip_took(r) for r in plain["responses"][1:]]
