"""The proxy's authority against a real secured Elasticsearch: whose credentials, which requests.

The attack this closes: ``secondpass proxy --username elastic --password ...``
used to add its credentials to every request without ``Authorization``, so any
client that could reach it could delete indices, change cluster settings and read
every index as the superuser.

Everything is real: the ``elasticsearch_secure`` node (security on), two proxies
under uvicorn on loopback (``BackgroundProxy``) in front of it, the tiny
cross-encoder. Attack requests are written on a raw socket, so their request
targets (dot segments, percent-encodings, ``*``, absolute-form) reach the proxy
byte for byte. The proxies' upstream transport is the real httpx transport,
wrapped to count the requests that reached the engine; the engine's own state
(indices, cluster settings, users) is checked afterwards with the superuser.
"""

from __future__ import annotations

import base64
import json
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from tests.fixtures.servers import SECURE_PASSWORD

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

KEY = "proxy-client-key-0123456789"
TIMEOUT_S = 30.0
SETTING = "search.default_search_timeout"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network transport, counting the requests it sends to the engine."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[str, str, str | None]] = []  # method, path, Authorization

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode("ascii", "replace")
        self.sent.append((request.method, path, request.headers.get("authorization")))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    base: str, method: str, target: str, *, headers: dict[str, str] | None = None, body: bytes = b""
) -> Answer:
    """One HTTP/1.1 request written byte for byte (no client-side path normalisation)."""
    url = urlsplit(base)
    lines = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    if body:
        lines.append("Content-Type: application/json")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):  # the proxy closes after the answer (Connection: close)
            chunks.append(chunk)
    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    length = int(parsed.get("content-length", len(rest)))
    return Answer(int(status_line.split()[1]), parsed, rest[:length])


def bulk_index(admin: httpx.Client, lines: list[dict[str, Any]]) -> None:
    """Index ``lines`` (bulk action/source pairs) and refresh; fails the test on any error."""
    bulk = admin.post("/_bulk", params={"refresh": "true"}, content="".join(json.dumps(x) + "\n" for x in lines),
                      headers={"content-type": "application/x-ndjson"})  # fmt: skip
    assert bulk.status_code == 200 and not bulk.json()["errors"], bulk.text


@contextmanager
def default_and_lent(
    default: ProxySettings, lent: ProxySettings, scorer: Any
) -> Iterator[tuple[str, str, CountingTransport, CountingTransport]]:
    """Serve a default and a lending proxy, each counting its upstream calls; closed after."""
    default_engine, lent_engine = CountingTransport(), CountingTransport()
    proxies = (
        RerankProxy(default, scorer=scorer, transport=default_engine),
        RerankProxy(lent, scorer=scorer, transport=lent_engine),
    )
    try:
        with BackgroundProxy(proxies[0]) as default_url, BackgroundProxy(proxies[1]) as lent_url:
            yield default_url, lent_url, default_engine, lent_engine
    finally:
        for proxy in proxies:
            proxy.retriever.close()


@dataclass
class Setup:
    engine_url: str
    admin: httpx.Client
    docs: str
    secret: str
    default_url: str
    lent_url: str
    default_engine: CountingTransport
    lent_engine: CountingTransport


def admin_client(secure: Any) -> httpx.Client:
    """A client of the secured engine with its administrator's credentials."""
    return httpx.Client(
        base_url=secure.url, auth=(secure.username, SECURE_PASSWORD), timeout=TIMEOUT_S
    )


@pytest.fixture(scope="module")
def setup(elasticsearch_secure: Any, tiny_scorer: Any) -> Iterator[Setup]:
    secure = elasticsearch_secure
    admin = admin_client(secure)
    docs, secret = (
        f"authority-docs-{uuid.uuid4().hex[:8]}",
        f"authority-secret-{uuid.uuid4().hex[:8]}",
    )
    lines = []
    for i in range(12):
        lines += [
            {"index": {"_index": docs, "_id": str(i)}},
            {"body": f"cat food note {i} " + "tuna " * (i % 4)},
        ]
    lines += [{"index": {"_index": secret, "_id": "1"}}, {"body": "the secret"}]
    bulk_index(admin, lines)
    host = urlsplit(secure.url)
    indices = {"authority-docs-*": {"fields": ["body"]}}
    default = ProxySettings(upstream=secure.url, listen="127.0.0.1:0", window=10, indices=indices)
    lent = ProxySettings(
        # credentials in the URL's userinfo: moved into the settings, never in a URL
        upstream=f"http://{secure.username}:{SECURE_PASSWORD}@{host.hostname}:{host.port}",
        listen="127.0.0.1:0",
        window=10,
        indices=indices,
        lend_credentials=True,
        client_api_keys=[KEY],
    )
    assert SECURE_PASSWORD not in lent.upstream
    with default_and_lent(default, lent, tiny_scorer) as (default_url, lent_url, d, le):
        yield Setup(secure.url, admin, docs, secret, default_url, lent_url, d, le)
    admin.delete(f"/{docs},{secret}")
    admin.close()


def attacks(s: Setup) -> list[tuple[str, str, bytes]]:
    """Requests that need more than read-only searching, in several spellings each."""
    settings = json.dumps({"persistent": {SETTING: "7s"}}).encode()
    reindex = json.dumps(
        {"source": {"index": s.secret}, "dest": {"index": f"{s.docs}-stolen"}}
    ).encode()
    user = json.dumps({"password": "eve-Passw0rd-1", "roles": ["superuser"]}).encode()
    bulk = b'{"delete":{"_index":"%s","_id":"1"}}\n' % s.docs.encode()
    return [
        ("DELETE", f"/{s.docs}", b""),
        ("DELETE", f"/{s.docs}/", b""),
        ("DELETE", f"/{s.docs}/_search/..", b""),
        ("DELETE", f"/%61{s.docs[1:]}", b""),
        ("DELETE", f"/{s.docs}/_search/%2E%2E", b""),
        ("PUT", "/_cluster/settings", settings),
        ("PUT", "/_cluster/settings/", settings),
        ("PUT", "/%5Fcluster/settings", settings),
        ("PUT", "/_search/../_cluster/settings", settings),
        ("PUT", f"/{s.docs}/_search/..%2F..%2F_cluster%2Fsettings", settings),
        ("PUT", "//_cluster/settings", settings),
        ("PUT", "/_cluster;x/settings", settings),
        ("PUT", "http://evil.test/_cluster/settings", settings),
        ("POST", "/_cluster/settings", settings),
        ("GET", f"/{s.secret}/_doc/1", b""),
        ("GET", f"/{s.secret}%2F_doc%2F1/_search", b""),
        ("GET", f"/{s.docs}/_search/../../{s.secret}/_doc/1", b""),
        ("HEAD", f"/{s.secret}/_doc/1", b""),
        ("POST", "/_bulk", bulk),
        ("POST", f"/{s.docs}/_bulk", bulk),
        ("POST", "/_reindex", reindex),
        ("POST", "/%5Freindex", reindex),
        ("GET", "/_security/user", b""),
        ("PUT", "/_security/user/eve", user),
        ("POST", "/_security/user/eve", user),
        ("POST", f"/{s.docs}/_delete_by_query", b'{"query":{"match_all":{}}}'),
        ("GET", "/_SEARCH", b""),
        ("OPTIONS", "*", b""),
        ("POST", f"/{s.docs}/_search", b""),  # with a method override header, below
    ]


@pytest.mark.parametrize(
    "key",
    [None, "wrong-key-0123456789abc", KEY[:-1], f"Basic {KEY}"],
    ids=["none", "wrong", "prefix", "basic"],
)
def test_lent_mode_without_a_valid_key_is_401_and_reaches_nothing(
    setup: Setup, key: str | None, figures: Any
) -> None:
    before = len(setup.lent_engine.sent)
    headers = (
        {}
        if key is None
        else ({"Authorization": key} if key.startswith("Basic") else {"X-API-Key": key})
    )
    tried = 0
    for method, target, body in [
        *attacks(setup),
        ("GET", "/_search", b""),
        ("POST", f"/{setup.docs}/_search", b"{}"),
    ]:
        answer = raw_request(setup.lent_url, method, target, headers=headers, body=body)
        tried += 1
        if target == "*":
            assert answer.status == 400
            continue
        assert answer.status == 401, (method, target, answer.body)
        assert answer.headers["www-authenticate"].startswith("Bearer ")
        if method != "HEAD":
            assert answer.json()["error"]["type"] == "security_exception"
    reached = len(setup.lent_engine.sent) - before
    assert reached == 0, setup.lent_engine.sent[before:]
    label = "none" if key is None else key[:5]
    figures.add(
        "proxy authority: no/wrong client key", f"requests tried (key {label})", tried, "requests"
    )
    figures.add(
        "proxy authority: no/wrong client key",
        f"reached the engine (key {label})",
        reached,
        "requests",
    )


def test_lent_mode_with_a_valid_key_searches_reranked_and_refuses_everything_else(
    setup: Setup, figures: Any
) -> None:
    key = {"X-API-Key": KEY}
    search = json.dumps({"query": {"match": {"body": "cat food"}}, "size": 5}).encode()
    for target in (
        f"/{setup.docs}/_search",
        "/authority-docs-*/_search",
        f"/{setup.docs}/_search/",
    ):
        answer = raw_request(setup.lent_url, "POST", target, headers=key, body=search)
        assert answer.status == 200, answer.body
        assert answer.headers["x-secondpass-rerank"] == "ok"
        assert len(answer.json()["hits"]["hits"]) == 5
    count = raw_request(
        setup.lent_url, "GET", f"/{setup.docs}/_count", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert count.status == 200 and count.json()["count"] == 12

    before = len(setup.lent_engine.sent)
    tried = 0
    for method, target, body in attacks(setup):
        headers = dict(key)
        if method == "POST" and target.endswith("/_search"):
            headers["X-HTTP-Method-Override"] = "DELETE"
        answer = raw_request(setup.lent_url, method, target, headers=headers, body=body)
        tried += 1
        assert answer.status in (400, 403), (method, target, answer.status, answer.body)
        if method != "HEAD":
            assert answer.json()["status"] == answer.status
    for run_as in ({"es-security-runas-user": "elastic"}, {"Authorization": "Basic ZWxhc3RpYzp4"}):
        answer = raw_request(setup.lent_url, "DELETE", f"/{setup.docs}", headers={**key, **run_as})
        tried += 1
        assert answer.status == 403
    reached = len(setup.lent_engine.sent) - before
    assert reached == 0, setup.lent_engine.sent[before:]
    assert_engine_untouched(setup)
    figures.add(
        "proxy authority: lent credentials, valid key", "attack requests tried", tried, "requests"
    )
    figures.add(
        "proxy authority: lent credentials, valid key",
        "attack requests that reached the engine",
        reached,
        "requests",
    )


def test_default_mode_lends_nothing_so_the_engine_refuses_anonymous_clients(
    setup: Setup, figures: Any
) -> None:
    before = len(setup.default_engine.sent)
    refused = 0
    for method, target, body in [
        ("DELETE", f"/{setup.docs}", b""),
        ("PUT", "/_cluster/settings", json.dumps({"persistent": {SETTING: "7s"}}).encode()),
        ("GET", f"/{setup.secret}/_search", b""),
        ("GET", f"/{setup.secret}/_doc/1", b""),
        ("POST", "/_bulk", b'{"delete":{"_index":"%s","_id":"1"}}\n' % setup.docs.encode()),
        ("POST", f"/{setup.docs}/_search", b'{"query":{"match":{"body":"cat"}}}'),
        ("GET", "/_security/user", b""),
    ]:
        direct = raw_request(setup.engine_url, method, target, body=body)
        through = raw_request(setup.default_url, method, target, body=body)
        assert through.status == direct.status == 401, (method, target, through.body)
        assert through.headers.get("www-authenticate") == direct.headers.get("www-authenticate")
        refused += 1
    sent = setup.default_engine.sent[before:]
    assert len(sent) == refused and all(
        auth is None for _, _, auth in sent
    )  # forwarded, nothing added
    basic = base64.b64encode(f"elastic:{SECURE_PASSWORD}".encode()).decode()
    own = raw_request(
        setup.default_url,
        "GET",
        f"/{setup.docs}/_count",
        headers={"Authorization": f"Basic {basic}"},
    )
    assert (
        own.status == 200 and own.json()["count"] == 12
    )  # the client's own credentials still work
    assert_engine_untouched(setup)
    figures.add(
        "proxy authority: default (nothing lent)",
        "anonymous attack requests refused by the engine (401)",
        refused,
        "requests",
    )


def assert_engine_untouched(setup: Setup) -> None:
    """The superuser's view: indices, documents, settings and users are as the fixture left them."""
    admin = setup.admin
    assert admin.get(f"/{setup.docs}/_count").json()["count"] == 12
    assert admin.head(f"/{setup.secret}").status_code == 200
    assert admin.head(f"/{setup.docs}-stolen").status_code == 404
    cluster = admin.get("/_cluster/settings", params={"flat_settings": "true"}).json()
    assert SETTING not in cluster["persistent"]
    assert admin.get("/_security/user/eve").status_code == 404


def lent_refusals(setup: Setup, requests: list[tuple[str, str, bytes]]) -> int:
    """Send each through the lent proxy with a valid key; all must be 403 and reach nothing."""
    before = len(setup.lent_engine.sent)
    for method, target, body in requests:
        answer = raw_request(setup.lent_url, method, target, headers={"X-API-Key": KEY}, body=body)
        assert answer.status == 403, (method, target, body, answer.status, answer.body)
        assert answer.json()["error"]["type"] == "security_exception"
    reached = len(setup.lent_engine.sent) - before
    assert reached == 0, setup.lent_engine.sent[before:]
    return len(requests)


def test_lent_mode_refuses_clearing_every_scroll_and_other_clients_scrolls_survive(
    setup: Setup, figures: Any
) -> None:
    search = json.dumps({"query": {"match": {"body": "cat"}}, "size": 2})
    # Another client's scroll (httpx here: pass-through answers come chunked).
    client = httpx.Client(
        base_url=setup.lent_url,
        headers={"X-API-Key": KEY, "content-type": "application/json"},
        timeout=TIMEOUT_S,
    )
    opened = client.post(f"/{setup.docs}/_search?scroll=1m", content=search)
    assert opened.status_code == 200, opened.text
    scroll_id = opened.json()["_scroll_id"]
    tried = lent_refusals(
        setup,
        [
            ("DELETE", "/_search/scroll", b'{"scroll_id":"_all"}'),
            ("DELETE", "/_search/scroll", b'{"scroll_id":["_all"]}'),
            ("DELETE", "/_search/scroll", b'{"scroll_id":"\\u005fall"}'),
            ("DELETE", "/_search/scroll", json.dumps({"scroll_id": [scroll_id, "_all"]}).encode()),
            ("DELETE", "/_search/scroll?scroll_id=_all", b""),
            ("DELETE", "/_search/scroll?scroll_id=%5Fall", b""),
            ("DELETE", "/_search/scroll/_all", b""),
            ("DELETE", "/_search/scroll", b""),
            ("DELETE", "/_pit", b'{"id":"_all"}'),
        ],
    )
    # The other client's scroll is still alive: its next page comes back.
    page = client.post(
        "/_search/scroll", content=json.dumps({"scroll": "1m", "scroll_id": scroll_id})
    )
    assert page.status_code == 200, page.text
    assert len(page.json()["hits"]["hits"]) == 2
    # A release of one given id still works.
    released = client.request(
        "DELETE", "/_search/scroll", content=json.dumps({"scroll_id": page.json()["_scroll_id"]})
    )
    client.close()
    assert released.status_code == 200 and released.json()["succeeded"] is True, released.text
    figures.add(
        "proxy authority: lent, shared identity", "clear-all forms refused", tried, "requests"
    )
    figures.add(
        "proxy authority: lent, shared identity",
        "other client's scroll alive after them",
        1,
        "scrolls",
    )


def test_lent_mode_refuses_msearch_and_parameters_that_reach_past_the_path_rules(
    setup: Setup, figures: Any
) -> None:
    key = {"X-API-Key": KEY}
    # What the engine itself does with them, as the lent superuser: it reads the secret.
    direct = setup.admin.get("/_search", params={"index": setup.secret})
    assert direct.status_code == 200 and direct.json()["hits"]["total"]["value"] == 1

    def nd(*lines: dict[str, Any]) -> bytes:
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    match = {"query": {"match": {"body": "secret"}}}
    tried = lent_refusals(
        setup,
        [
            ("POST", "/_msearch", nd({"index": ".security-7"}, match)),
            ("POST", "/_msearch", nd({"index": [setup.docs, ".security*"]}, match)),
            ("POST", "/_msearch", nd({"index": "_all"}, match)),
            ("POST", "/_msearch", nd({"index": "*", "expand_wildcards": "all"}, match)),
            ("POST", f"/{setup.docs}/_msearch", nd({}, {}, {"index": ".security-7"}, match)),
            (
                "POST",
                "/_msearch",
                b'{"index":"%s","index":".security-7"}\n{}\n' % setup.docs.encode(),
            ),
            ("POST", "/_msearch", b"\n" + nd({"index": ".security-7"}, match)),
            ("POST", "/_msearch", b"not ndjson"),
            ("GET", f"/_search?index={setup.secret}", b""),
            ("GET", f"/_count?index={setup.secret}", b""),
            ("POST", f"/_msearch?index={setup.secret}", nd({}, match)),
            ("GET", "/*/_search?expand_wildcards=all", b""),
            ("GET", "/*/_search?expand_wildcards=open,hidden", b""),
        ],
    )
    answer = raw_request(
        setup.lent_url, "POST", "/_msearch", headers=key, body=nd({"index": setup.docs}, match)
    )
    assert answer.status == 200, answer.body
    assert answer.json()["responses"][0]["hits"]["total"]["value"] == 0
    figures.add(
        "proxy authority: lent, index reach", "msearch/parameter forms refused", tried, "requests"
    )


def test_lent_mode_refuses_error_traces(setup: Setup, figures: Any) -> None:
    bad = b'{"query":{"no_such_query":{}}}'
    tried = lent_refusals(
        setup,
        [
            ("POST", f"/{setup.docs}/_search?error_trace=true", bad),
            ("POST", f"/{setup.docs}/_search?error_trace", bad),
            ("GET", f"/{setup.docs}/_count?error_trace=true", b""),
        ],
    )
    plain = raw_request(
        setup.lent_url, "POST", f"/{setup.docs}/_search", headers={"X-API-Key": KEY}, body=bad
    )
    assert plain.status == 400 and b"stack_trace" not in plain.body
    figures.add(
        "proxy authority: lent, error traces", "error_trace requests refused", tried, "requests"
    )


def test_lent_mode_refuses_queries_that_read_another_index(setup: Setup, figures: Any) -> None:
    lookup = {"index": setup.secret, "id": "1", "path": "body"}
    terms = {"query": {"terms": {"body": lookup}}}
    # The engine itself, as the lent superuser, runs the lookup: the secret document's
    # text becomes the filter, so the attack is real.
    direct = setup.admin.post(f"/{setup.docs}/_search", json=terms)
    assert direct.status_code == 200, direct.text

    def body(value: dict[str, Any]) -> bytes:
        return json.dumps(value).encode()

    mlt = {"more_like_this": {"fields": ["body"], "like": [{"_index": setup.secret, "_id": "1"}],
                              "min_term_freq": 1, "min_doc_freq": 1}}  # fmt: skip
    nd = body({"index": setup.docs}) + b"\n" + body(terms) + b"\n"
    tried = lent_refusals(
        setup,
        [
            ("POST", f"/{setup.docs}/_search", body(terms)),
            ("POST", f"/{setup.docs}/_search", body({"query": {"bool": {"filter": [terms["query"]]}}})),
            ("POST", f"/{setup.docs}/_search", body({"post_filter": terms["query"]})),
            ("POST", f"/{setup.docs}/_search", body({"query": mlt})),
            ("POST", f"/{setup.docs}/_count", body(terms)),
            ("POST", f"/{setup.docs}/_search", body({"query": {"wrapper": {"query": "e30="}}})),
            ("POST", "/_msearch", nd),
        ],
    )
    plain = httpx.post(
        f"{setup.lent_url}/{setup.docs}/_search",
        headers={"X-API-Key": KEY, "content-type": "application/json"},
        content=body({"query": {"bool": {"must": [{"match": {"body": "cat"}}],
                                         "filter": [{"terms": {"body": ["cat", "tuna"]}}]}}}),
        timeout=TIMEOUT_S,
    )
    assert plain.status_code == 200 and plain.json()["hits"]["total"]["value"] > 0, plain.text
    assert plain.headers["x-secondpass-rerank"] == "ok"
    figures.add("proxy authority: lent, cross-index queries", "forms refused", tried, "requests")
