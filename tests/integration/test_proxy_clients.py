"""The official clients never silently stop reranking: sniffing, URI search, compression.

Real engines (``engine``: Elasticsearch and OpenSearch), the proxy under uvicorn
on a free loopback port, the tiny cross-encoder, and elasticsearch-py /
opensearch-py configured as an application would. "Reranked" is the proxy's
``X-SecondPass-Rerank: ok`` on the answer the client got; "only the proxy" is
the client's own node pool and what its sniffer was handed.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest
from tests.fixtures.servers import EngineHandle
from tests.integration.test_proxy import (  # noqa: F401 - fixtures
    FIELDS,
    WINDOW,
    index,
    proxy,
)

from secondpass.config import ConnectionSettings
from secondpass.connectors import read_hits
from secondpass.pipeline.retriever import Retriever
from secondpass.proxy import RerankProxy
from secondpass.servers._process import free_port

pytestmark = pytest.mark.integration

STATUS = "x-secondpass-rerank"
SEARCH = {"query": {"match": {"body": "cat food"}}, "size": 4}


def host_port(url: str) -> tuple[str, int]:
    parsed = httpx.URL(url)
    assert parsed.port is not None
    return parsed.host, parsed.port


class Sniffing:
    """An official client with sniffing on, recording what it was told and who answered.

    The clients' own hooks do the recording: elasticsearch-py's
    ``sniffed_node_callback`` and opensearch-py's ``host_info_callback`` see every
    node a sniff returns; each answer's node and rerank header come from
    elasticsearch-py's response metadata and, for opensearch-py, from its
    connection class (the stock urllib3 one, remembering the header).
    """

    def __init__(self, engine: str, hosts: list[str], **sniffing: Any) -> None:
        self.engine = engine
        self.sniffed: list[tuple[str, int]] = []
        self.answers: list[tuple[str, int, str | None]] = []
        if engine == "elasticsearch":
            self.client = self._elasticsearch(hosts, sniffing)
        else:
            self.client = self._opensearch(hosts, sniffing)

    def _elasticsearch(self, hosts: list[str], sniffing: dict[str, Any]) -> Any:
        from elasticsearch import Elasticsearch
        from elasticsearch._sync.client._base import _default_sniffed_node_callback

        from secondpass.connectors.elasticsearch import client_kwargs

        def seen(node_info: dict[str, Any], node_config: Any) -> Any:
            self.sniffed.append((node_config.host, node_config.port))
            return _default_sniffed_node_callback(node_info, node_config)

        kwargs = client_kwargs(
            ConnectionSettings(engine="elasticsearch", hosts=hosts, compatible_with=8)
        )
        kwargs.update(max_retries=3, randomize_nodes_in_pool=False, **sniffing)
        if sniffing:  # the client refuses a sniff hook without sniffing on
            kwargs["sniffed_node_callback"] = seen
        return Elasticsearch(**kwargs)

    def _opensearch(self, hosts: list[str], sniffing: dict[str, Any]) -> Any:
        from opensearchpy import OpenSearch, Urllib3HttpConnection
        from opensearchpy.transport import get_host_info

        answers = self.answers

        class Remembering(Urllib3HttpConnection):  # type: ignore[misc]
            def perform_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
                status, headers, data = super().perform_request(method, url, *args, **kwargs)
                if "_search" in url:
                    answers.append((*host_port(self.host), headers.get(STATUS)))
                return status, headers, data

        def seen(node_info: dict[str, Any], host: dict[str, Any]) -> Any:
            self.sniffed.append((host["host"], int(host["port"])))
            return get_host_info(node_info, host)

        return OpenSearch(
            hosts=hosts, timeout=30, max_retries=3, randomize_hosts=False,
            connection_class=Remembering, host_info_callback=seen, **sniffing,
        )  # fmt: skip

    def search(self, target: str, **params: Any) -> dict[str, Any]:
        if self.engine == "elasticsearch":
            answer = self.client.search(index=target, **params)
            node = answer.meta.node
            self.answers.append((node.host, node.port, answer.meta.headers.get(STATUS)))
            return dict(answer.body)
        body = params.pop("body", None)
        return dict(self.client.search(index=target, body=body, params=params))

    def pool(self) -> set[tuple[str, int]]:
        """The nodes the client may send the next request to."""
        if self.engine == "elasticsearch":
            return {(n.config.host, n.config.port) for n in self.client.transport.node_pool.all()}
        return {host_port(c.host) for c in self.client.transport.connection_pool.connections}

    def close(self) -> None:
        self.client.close()


@pytest.mark.parametrize("when", ["on_start", "on_node_failure"])
def test_a_sniffing_client_keeps_only_the_proxy_and_every_answer_is_reranked(
    engine: EngineHandle,
    proxy: tuple[str, RerankProxy],  # noqa: F811 - fixture
    index: str,  # noqa: F811 - fixture
    when: str,
) -> None:
    node = host_port(proxy[0])
    dead = f"http://127.0.0.1:{free_port()}"  # refuses connections
    if when == "on_start":
        client = Sniffing(engine.name, [proxy[0]], sniff_on_start=True)
    else:  # the dead node comes first, so the first search fails over and sniffs
        option = (
            "sniff_on_node_failure"
            if engine.name == "elasticsearch"
            else "sniff_on_connection_fail"
        )
        client = Sniffing(engine.name, [dead, proxy[0]], **{option: True})
    try:
        for _ in range(6):
            hits = client.search(index, body=SEARCH)["hits"]["hits"]
            assert hits and all("_secondpass.first_stage_rank" in h["fields"] for h in hits)
        assert client.sniffed, "the client did not sniff"
        assert set(client.sniffed) == {node}  # the engine's address was never handed out
        # elasticsearch-py keeps its seed nodes (a dead one too); opensearch-py
        # replaces its pool with what it sniffed. The engine is in neither.
        assert client.pool() - {host_port(dead)} == {node}
    finally:
        client.close()
    assert client.answers == [(*node, "ok")] * 6


# ------------------------------------------------------------------ URI search


def window_order(engine: EngineHandle, target: str, scorer: Any, **params: str) -> list[str]:
    """The reranked order of the engine's own URI-search window, by ``Retriever.rerank_hits``."""
    with httpx.Client(timeout=60) as http:
        window = http.get(f"{engine.url}/{target}/_search", params={**params, "size": str(WINDOW)})
    assert window.status_code == 200, window.text
    hits = list(read_hits(window.json(), FIELDS).hits)
    with Retriever(scorer=scorer, window=WINDOW, rank_by="raw") as retriever:
        return [r.hit.id for r in retriever.rerank_hits(params["q"], hits).hits]


@pytest.mark.parametrize(
    "params",
    [
        {"q": "cat food", "size": "5"},
        {"q": "cat food", "size": "3", "from": "2"},
        # 6 titles have both words; with OR every title ("note ...") would match
        {"q": "note cat", "df": "title", "default_operator": "AND", "size": "4"},
    ],
)
def test_uri_search_through_the_official_client_is_reranked_with_q(
    engine: EngineHandle,
    proxy: tuple[str, RerankProxy],  # noqa: F811 - fixture
    index: str,  # noqa: F811 - fixture
    tiny_scorer: Any,
    params: dict[str, str],
) -> None:
    # No body, no Content-Type: elasticsearch-py still sends its versioned Accept,
    # which the engine holds the widened (typed) request to.
    via = Sniffing(engine.name, [proxy[0]])
    direct = Sniffing(engine.name, [engine.url])
    try:
        got = via.search(index, **params)
        plain = direct.search(index, **params)
    finally:
        via.close()
        direct.close()
    assert via.answers[0][2] == "ok"
    assert got["hits"]["total"] == plain["hits"]["total"]  # df and default_operator applied
    if "default_operator" in params:
        assert plain["hits"]["total"]["value"] == 6
    offset, size = int(params.get("from", "0")), int(params["size"])
    query = {k: v for k, v in params.items() if k not in ("size", "from")}
    expected = window_order(engine, index, tiny_scorer, **query)
    assert expected, "the query matched nothing: the test would prove nothing"
    assert [h["_id"] for h in got["hits"]["hits"]] == expected[offset : offset + size]


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl
        {"content-length": "0"},
        {"content-type": "application/x-www-form-urlencoded"},  # tools that always send one
        {"accept": "application/vnd.elasticsearch+json; compatible-with=8"},
    ],
    ids=["bare", "empty-body", "form-typed", "versioned-accept"],
)
def test_body_less_uri_search_is_answered_as_direct_and_reranked(
    engine: EngineHandle,
    proxy: tuple[str, RerankProxy],  # noqa: F811 - fixture
    index: str,  # noqa: F811 - fixture
    headers: dict[str, str],
) -> None:
    with httpx.Client(timeout=60) as http:
        direct = http.get(f"{engine.url}/{index}/_search?q=cat&size=3", headers=headers)
        via = http.get(f"{proxy[0]}/{index}/_search?q=cat&size=3", headers=headers)
    assert direct.status_code == 200, direct.text
    assert via.status_code == 200, via.text
    assert via.headers[STATUS] == "ok"
    assert via.json()["hits"]["total"] == direct.json()["hits"]["total"]
    assert len(via.json()["hits"]["hits"]) == 3


# ----------------------------------------------------------------- compression


def test_reranked_answers_are_compressed_like_the_engines_own(
    engine: EngineHandle,
    proxy: tuple[str, RerankProxy],  # noqa: F811 - fixture
    index: str,  # noqa: F811 - fixture
) -> None:
    def fetch(url: str, path: str, encoding: str, **kwargs: Any) -> tuple[httpx.Response, bytes]:
        headers = {**kwargs.pop("headers", {}), "accept-encoding": encoding}
        with httpx.Client(timeout=60) as http:
            request = http.build_request("POST", f"{url}{path}", headers=headers, **kwargs)
            response = http.send(request, stream=True)
            raw = b"".join(response.iter_raw())
            response.close()
            return response, raw

    search = {"json": SEARCH}
    msearch = {
        "content": f'{{"index":"{index}"}}\n{json.dumps(SEARCH)}\n',
        "headers": {"content-type": "application/x-ndjson"},
    }
    for path, kwargs in ((f"/{index}/_search", search), ("/_msearch", msearch)):
        passed, _ = fetch(proxy[0], f"/{index}/_count", "gzip")  # pass-through: the engine's
        assert passed.headers["content-encoding"] == "gzip"
        direct, _ = fetch(engine.url, path, "gzip", **kwargs)
        assert direct.headers["content-encoding"] == "gzip"
        packed, raw = fetch(proxy[0], path, "gzip", **kwargs)
        assert packed.headers[STATUS] == "ok"
        assert packed.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in packed.headers["vary"].lower()
        assert int(packed.headers["content-length"]) == len(raw)
        reranked = json.loads(gzip.decompress(raw))
        plain, raw = fetch(proxy[0], path, "identity", **kwargs)
        assert plain.headers[STATUS] == "ok"
        assert "content-encoding" not in plain.headers
        assert ids(json.loads(raw)) == ids(reranked)


def ids(answer: dict[str, Any]) -> list[list[str]]:
    """The hit ids of a search answer, or of each search of an ``_msearch`` answer."""
    searches = answer.get("responses", [answer])
    return [[h["_id"] for h in search["hits"]["hits"]] for search in searches]
