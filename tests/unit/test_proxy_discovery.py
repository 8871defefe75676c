"""Node discovery, URI-search typing and answer compression in the proxy, without servers.

The byte-level contract against a scripted upstream; the same behaviour with the
official clients against real engines is in tests/integration/test_proxy_clients.py.
"""

from __future__ import annotations

import gzip
import json

import httpx
import pytest
from pydantic import ValidationError
from tests.unit.test_proxy_app import MATCH, Upstream, make_client

from secondpass.proxy import ProxySettings
from secondpass.proxy.discovery import is_node_discovery, publish_address, published
from secondpass.proxy.plumbing import Answer, accepts_gzip, body_type, negotiated

NODES = {
    "_nodes": {"total": 2, "successful": 2, "failed": 0},
    "cluster_name": "c",
    "nodes": {
        "a": {"name": "n-a", "roles": ["data", "ingest"], "attributes": {"rack": "r1"},
              "http": {"bound_address": ["10.0.0.5:9200"], "publish_address": "10.0.0.5:9200",
                       "max_content_length_in_bytes": 104857600}},
        "b": {"name": "n-b", "roles": ["master"], "attributes": {},
              "http": {"bound_address": ["10.0.0.6:9200"], "publish_address": "10.0.0.6:9200"}},
    },
}  # fmt: skip


def nodes_upstream() -> Upstream:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/_nodes"):
            return httpx.Response(200, json=NODES, headers={"X-Elastic-Product": "Elasticsearch"})
        return httpx.Response(404, json={"error": "no"})

    return Upstream(answer)


@pytest.mark.parametrize(
    ("method", "path", "answered"),
    [
        ("GET", b"/_nodes/_all/http", True),  # elasticsearch-py, opensearch-py, JS
        ("GET", b"/_nodes/http", True),  # Java, Go, Ruby sniffers
        ("GET", b"/_nodes/_local/http/", True),
        ("GET", b"/_nodes/stats/http", False),  # node stats, not node info
        ("GET", b"/_nodes", False),  # monitoring: every metric, passed through as it is
        ("GET", b"/_nodes/_all/http,transport", False),
        ("POST", b"/_nodes/_all/http", False),
        ("GET", b"/docs/_nodes/http", False),
    ],
)
def test_only_the_sniffers_node_info_calls_are_answered(
    method: str, path: bytes, answered: bool
) -> None:
    assert is_node_discovery(method, path) is answered


def test_every_node_publishes_the_proxy_and_keeps_its_roles_and_attributes() -> None:
    out = published(NODES, "127.0.0.1:9201")
    for node_id, node in out["nodes"].items():
        assert node["http"]["publish_address"] == "127.0.0.1:9201"
        assert node["http"]["bound_address"] == ["127.0.0.1:9201"]
        original = NODES["nodes"][node_id]  # type: ignore[index]
        assert node["roles"] == original["roles"]
        assert node["attributes"] == original["attributes"]
    assert out["nodes"]["a"]["http"]["max_content_length_in_bytes"] == 104857600
    assert out["_nodes"] == NODES["_nodes"]
    assert NODES["nodes"]["a"]["http"]["publish_address"] == "10.0.0.5:9200"  # type: ignore[index]
    # a filter_path that removed the http section leaves nothing to rewrite
    assert published({"nodes": {"a": {"name": "x"}}}, "p:1") == {"nodes": {"a": {"name": "x"}}}


@pytest.mark.parametrize(
    ("configured", "server", "expected"),
    [
        (None, ("127.0.0.1", 9201), "127.0.0.1:9201"),
        (None, ("::1", 9201), "[::1]:9201"),
        ("lb.example:443", ("10.1.1.1", 9201), "lb.example:443"),
        (None, None, None),
    ],
)
def test_publish_address_is_configured_else_the_connections_local_address(
    configured: str | None, server: tuple[str, int] | None, expected: str | None
) -> None:
    assert publish_address(configured, server) == expected
    if server is not None:  # a real socket address wins over what the client says
        assert publish_address(configured, server, "other.example:1") == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("proxy.test:9201", "proxy.test:9201"), ("[::1]:9201", "[::1]:9201"), ("proxy.test", None),
     ("a/b:1", None), (None, None)],
)  # fmt: skip
def test_without_a_socket_port_the_host_header_is_published_when_it_has_one(
    host: str | None, expected: str | None
) -> None:
    assert publish_address(None, ("/run/proxy.sock", None), host) == expected


@pytest.mark.parametrize("bad", ["lb.example", "lb.example:0", "http://lb:9200", ":9200", "a b:1"])
def test_a_publish_address_a_client_could_not_use_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="publish_address"):
        ProxySettings(publish_address=bad)


async def test_node_discovery_answers_with_the_proxy_address_asking_plain_json() -> None:
    upstream = nodes_upstream()
    async with make_client(upstream) as client:
        client.base_url = httpx.URL("http://proxy.test:9201")
        response = await client.get(
            "/_nodes/_all/http?timeout=5s",
            headers={"Accept": "application/vnd.elasticsearch+json; compatible-with=9",
                     "Authorization": "Basic dXNlcjpwdw=="},
        )  # fmt: skip
    assert response.status_code == 200
    nodes = response.json()["nodes"]
    # httpx's ASGI transport reports the URL's host and port as the server's address
    assert {n["http"]["publish_address"] for n in nodes.values()} == {"proxy.test:9201"}
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    sent = upstream.requests[0]
    assert sent.url.raw_path == b"/_nodes/_all/http?timeout=5s"
    assert sent.headers["accept"] == "application/json"  # an 8.x engine refuses compatible-with=9
    assert sent.headers["authorization"] == "Basic dXNlcjpwdw=="  # the client's own authority


async def test_configured_publish_address_and_engine_errors() -> None:
    async with make_client(nodes_upstream(), publish_address="lb.example:9200") as client:
        response = await client.get("/_nodes/http")
    assert {n["http"]["publish_address"] for n in response.json()["nodes"].values()} == {
        "lb.example:9200"
    }

    def refused(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "auth"}, headers={"WWW-Authenticate": "Basic"})

    async with make_client(Upstream(refused)) as client:
        response = await client.get("/_nodes/_all/http")
    assert response.status_code == 401
    assert response.json() == {"error": "auth"}
    assert response.headers["www-authenticate"] == "Basic"


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True), ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.5", True),
        ("x-gzip", True), ("*", True), ("identity", False), ("gzip;q=0", False),
        ("*, gzip;q=0", False), ("*;q=0", False), ("deflate", False), (None, False),
        ("gzip;q=oops", False),
    ],
)  # fmt: skip
def test_accept_encoding_is_read_with_its_weights(
    accept_encoding: str | None, gzipped: bool
) -> None:
    assert accepts_gzip(accept_encoding) is gzipped


def test_negotiated_answers_say_vary_and_compress_only_when_accepted() -> None:
    answer = Answer(200, [(b"content-type", b"application/json")], b'{"a":1}' * 100)
    plain = negotiated(answer, "identity")
    assert plain.body == answer.body
    assert (b"vary", b"Accept-Encoding") in plain.headers
    assert not any(k == b"content-encoding" for k, _ in plain.headers)
    packed = negotiated(answer, "gzip")
    assert gzip.decompress(packed.body) == answer.body
    assert (b"content-encoding", b"gzip") in packed.headers
    assert [k for k, _ in packed.headers].count(b"vary") == 1


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, b"application/json"),
        ("*/*", b"application/json"),
        ("application/vnd.elasticsearch+json; compatible-with=8",
         b"application/vnd.elasticsearch+json; compatible-with=8"),
        ("application/vnd.elasticsearch+json;compatible-with=7",
         b"application/vnd.elasticsearch+json; compatible-with=7"),
    ],
)  # fmt: skip
def test_a_body_the_proxy_writes_is_typed_like_the_accept(
    accept: str | None, expected: bytes
) -> None:
    assert body_type(accept, b"application/json") == expected
    ndjson = body_type(accept, b"application/x-ndjson")
    assert ndjson == expected.replace(b"json", b"x-ndjson")


async def test_uri_search_from_a_versioned_client_goes_up_typed_to_match() -> None:
    upstream = Upstream()
    compat = "application/vnd.elasticsearch+json; compatible-with=8"
    async with make_client(upstream) as client:
        response = await client.get("/docs/_search?q=cats&size=3", headers={"Accept": compat})
    assert response.status_code == 200
    assert response.headers["x-secondpass-rerank"] == "ok"
    sent = upstream.requests[0]
    assert sent.headers["content-type"] == compat
    assert sent.url.params["q"] == "cats"  # the engine reads q itself; we add no query DSL
    assert "query" not in json.loads(sent.content)


@pytest.mark.parametrize("path", ["/docs/_search", "/_msearch"])
async def test_reranked_answers_are_gzipped_for_clients_that_accept_it(path: str) -> None:
    upstream = Upstream()
    if path == "/_msearch":
        content = b'{"index":"docs"}\n' + json.dumps(MATCH).encode() + b"\n"
        kind = "application/x-ndjson"
    else:
        content, kind = json.dumps(MATCH).encode(), "application/json"
    async with make_client(upstream) as client:
        for encoding, packed in (("gzip, deflate", True), ("identity", False)):
            request = client.build_request(
                "POST", path, content=content,
                headers={"content-type": kind, "accept-encoding": encoding},
            )  # fmt: skip
            response = await client.send(request, stream=True)
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            assert response.status_code == 200
            assert response.headers["x-secondpass-rerank"].startswith("ok")
            assert response.headers["vary"] == "Accept-Encoding"
            assert int(response.headers["content-length"]) == len(raw)
            if packed:
                assert response.headers["content-encoding"] == "gzip"
                raw = gzip.decompress(raw)
            else:
                assert "content-encoding" not in response.headers
            assert json.loads(raw)["took"] >= 4


async def test_a_body_less_search_gets_our_type_whatever_type_it_named() -> None:
    upstream = Upstream()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with make_client(upstream) as client:
        response = await client.get("/docs/_search?q=cats", headers=form)
    assert response.headers["x-secondpass-rerank"] == "ok"
    assert upstream.requests[0].headers["content-type"] == "application/json"


async def test_a_versioned_type_the_engine_refuses_is_asked_again_in_plain_json() -> None:
    def opensearch_like(request: httpx.Request) -> httpx.Response:
        if request.headers["content-type"].startswith("application/vnd."):
            return httpx.Response(406, json={"error": "Content-Type header is not supported"})
        body = json.loads(request.content)
        return Upstream().answer(httpx.Request("POST", request.url, json=body))

    upstream = Upstream(opensearch_like)
    compat = "application/vnd.elasticsearch+json; compatible-with=8"
    async with make_client(upstream) as client:
        response = await client.get("/docs/_search?q=cats&size=3", headers={"Accept": compat})
    assert response.status_code == 200
    assert response.headers["x-secondpass-rerank"] == "ok"
    assert [r.headers["content-type"] for r in upstream.requests] == [compat, "application/json"]


async def test_a_versioned_type_the_client_sent_is_never_replaced() -> None:
    def refuses_versioned(request: httpx.Request) -> httpx.Response:
        return httpx.Response(406, json={"error": "Content-Type header is not supported"})

    upstream = Upstream(refuses_versioned)
    compat = "application/vnd.elasticsearch+json; compatible-with=8"
    async with make_client(upstream) as client:
        response = await client.post(
            "/docs/_search",
            content=json.dumps(MATCH),
            headers={"Accept": compat, "Content-Type": compat},
        )
    assert response.status_code == 406  # the engine's answer to the client's own type
    assert {r.headers["content-type"] for r in upstream.requests} == {compat}


@pytest.mark.parametrize("fmt", ["yaml", "cbor", "smile", "YAML"])
async def test_discovery_never_relays_a_node_list_it_could_not_rewrite(fmt: str) -> None:
    """``format=yaml`` (or another) would carry the engine's address: asked as JSON instead."""
    upstream = nodes_upstream()
    async with make_client(upstream) as client:
        client.base_url = httpx.URL("http://proxy.test:9201")
        response = await client.get(f"/_nodes/http?format={fmt}&filter_path=nodes.*.http")
    assert response.status_code == 200
    assert "10.0.0." not in response.text
    assert upstream.requests[0].url.raw_path == b"/_nodes/http?filter_path=nodes.*.http"

    def yaml_anyway(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="nodes:\n  a:\n    http:\n      publish_address: 10.0.0.5:9200\n")

    async with make_client(Upstream(yaml_anyway)) as client:
        client.base_url = httpx.URL("http://proxy.test:9201")
        response = await client.get("/_nodes/http")
    assert response.status_code == 502 and "10.0.0." not in response.text
