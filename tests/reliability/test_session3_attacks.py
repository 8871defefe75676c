"""Hostile clients against this session's new proxy surfaces, on loopback, against real processes.

Targets: node discovery answered by the proxy (``GET /_nodes/http``, rewritten
publish addresses), body-less URI search (``?q=``), gzip on the proxy's own
answers, request ids. Everything is real: the secured ``elasticsearch_secure``
node, two proxies under uvicorn (``BackgroundProxy``), one lending its
credentials to keyed clients (with node discovery added to its allow-list, as
docs/proxy.md tells operators to do), one lending nothing; the tiny
cross-encoder. Attack requests go out on a raw socket (``raw_request``), so
their targets and headers reach the proxy byte for byte; the proxies' upstream
transport counts what reached the engine.
"""

from __future__ import annotations

import base64
import gzip
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from secondpass.proxy import BackgroundProxy, ProxySettings, RerankProxy
from secondpass.proxy.access import DEFAULT_ALLOWED_REQUESTS
from tests.fixtures.servers import SECURE_PASSWORD
from tests.fixtures.service import ServiceProcess
from tests.reliability.test_proxy_authority import (
    Answer,
    admin_client,
    bulk_index,
    default_and_lent,
)
from tests.reliability.test_proxy_authority import Setup as AuthoritySetup
from tests.reliability.test_proxy_authority import raw_request as _raw_request
from tests.support.secrets import CLIENT_KEY

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

KEY = "session3-client-key-0123456789"
TIMEOUT_S = 30.0
DISCOVERY = ("GET /_nodes/http", "GET /_nodes/_all/http")


@dataclass
class Setup(AuthoritySetup):
    engine_netloc: str = ""  # host:port of the engine's HTTP, which no client of the proxy may learn


@pytest.fixture(scope="module")
def setup(elasticsearch_secure: Any, tiny_scorer: Any) -> Iterator[Setup]:
    secure = elasticsearch_secure
    admin = admin_client(secure)
    tag = uuid.uuid4().hex[:8]
    docs, secret = f"s3-docs-{tag}", f"s3-secret-{tag}"
    lines: list[dict[str, Any]] = []
    for i in range(12):
        lines += [{"index": {"_index": docs, "_id": str(i)}}, {"body": f"cat food note {i}"}]
    lines += [{"index": {"_index": secret, "_id": "1"}}, {"body": "cat the secret"}]
    bulk_index(admin, lines)
    host = urlsplit(secure.url)
    indices = {"s3-docs-*": {"fields": ["body"]}}
    default = ProxySettings(upstream=secure.url, listen="127.0.0.1:0", window=10, indices=indices)
    lent = ProxySettings(
        upstream=secure.url,
        username=secure.username,
        password=SECURE_PASSWORD,
        listen="127.0.0.1:0",
        window=10,
        indices=indices,
        lend_credentials=True,
        client_api_keys=[KEY],
        allowed_requests=[*DEFAULT_ALLOWED_REQUESTS, *DISCOVERY],
    )
    with default_and_lent(default, lent, tiny_scorer) as (default_url, lent_url, d, le):
        yield Setup(
            secure.url, admin, docs, secret, default_url, lent_url, d, le, engine_netloc=host.netloc
        )
    admin.delete(f"/{docs},{secret}")
    admin.close()


def raw_request(
    base: str, method: str, target: str, *, headers: dict[str, str] | None = None
) -> Answer:
    """``test_proxy_authority.raw_request`` with a chunked answer (a streamed pass-through) joined."""
    answer = _raw_request(base, method, target, headers=headers)
    if answer.headers.get("transfer-encoding", "").lower() != "chunked":
        return answer
    rest, body = answer.body, b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return Answer(answer.status, answer.headers, body)


def _netloc(url: str) -> str:
    return urlsplit(url).netloc


def _addresses(answer: dict[str, Any]) -> set[str]:
    """Every node's published and bound HTTP addresses in a node-info answer."""
    out: set[str] = set()
    for node in answer["nodes"].values():
        http = node.get("http", {})
        out.add(http.get("publish_address"))
        out.update(http.get("bound_address", []))
    return out


def _basic() -> str:
    return "Basic " + base64.b64encode(f"elastic:{SECURE_PASSWORD}".encode()).decode()


# ------------------------------------------------------------------ node discovery


DISCOVERY_SPELLINGS = [
    "/_nodes/http",
    "/_nodes/_all/http",
    "/_nodes/http/",
    "/_nodes/%5Fall/http",
    "/_nodes/_local/http",
    "/_nodes/*/http",
    "/_nodes/http?filter_path=nodes.*.http",
    "/_nodes/http?format=yaml",
    "/_nodes/_all/http?human=true&pretty=true",
]


def test_lent_discovery_without_a_key_is_401_and_reaches_nothing(setup: Setup) -> None:
    """An anonymous client learns no topology from the lending proxy, nor lends its credentials."""
    before = len(setup.lent_engine.sent)
    for target in DISCOVERY_SPELLINGS:
        for headers in ({}, {"X-API-Key": KEY[:-1]}, {"Authorization": _basic()}):
            answer = raw_request(setup.lent_url, "GET", target, headers=headers)
            assert answer.status == 401, (target, headers.keys(), answer.body[:300])
            assert b"nodes" not in answer.body
    assert setup.lent_engine.sent[before:] == []


def test_lent_discovery_with_a_key_hands_out_only_the_proxy(setup: Setup) -> None:
    """A keyed client that sniffs through the lending proxy is told the proxy's address only.

    Whatever representation it asks for, the engine's own HTTP address must not
    come back: with it, a client holding the lent answer would learn where the
    engine listens and leave the proxy (and its reranking) behind.
    """
    key = {"X-API-Key": KEY}
    proxy = _netloc(setup.lent_url)
    for target in ("/_nodes/http", "/_nodes/_all/http"):
        answer = raw_request(setup.lent_url, "GET", target, headers=key)
        assert answer.status == 200, answer.body[:300]
        assert _addresses(answer.json()) == {proxy}
        assert setup.engine_netloc.encode() not in answer.body
    leaked = []
    for query in (
        "format=yaml",
        "format=cbor",
        "format=smile",
        "filter_path=nodes.*.http&format=yaml",
    ):
        answer = raw_request(setup.lent_url, "GET", f"/_nodes/http?{query}", headers=key)
        assert answer.status < 500, (query, answer.body[:300])
        if setup.engine_netloc.encode() in answer.body:
            leaked.append(query)
    assert leaked == [], f"the engine's own address came back for ?{leaked}"


def test_discovery_ignores_a_forged_host_header(setup: Setup) -> None:
    """The published address is the connection's own, never what the client's Host names."""
    for url, headers in (
        (setup.default_url, {"Authorization": _basic()}),
        (setup.lent_url, {"X-API-Key": KEY}),
    ):
        for forged in ("evil.test:6666", "127.0.0.1:1", "[::1]:2", "evil.test"):
            answer = raw_request(
                url, "GET", "/_nodes/http", headers={**headers, "X-Forwarded-Host": forged,
                                                     "Forwarded": f"host={forged}"},
            )  # fmt: skip
            assert answer.status == 200, answer.body[:300]
            assert _addresses(answer.json()) == {_netloc(url)}
            assert b"evil.test" not in answer.body


def test_default_discovery_lends_nothing(setup: Setup) -> None:
    """Without lending, anonymous discovery is the engine's 401, sent up without credentials."""
    before = len(setup.default_engine.sent)
    for target in DISCOVERY_SPELLINGS[:4]:
        answer = raw_request(setup.default_url, "GET", target)
        assert answer.status == 401, (target, answer.body[:300])
    assert all(auth is None for _, _, auth in setup.default_engine.sent[before:])
    own = raw_request(setup.default_url, "GET", "/_nodes/http", headers={"Authorization": _basic()})
    assert own.status == 200 and _addresses(own.json()) == {_netloc(setup.default_url)}


# --------------------------------------------------------------------- URI search


def test_lent_uri_search_stays_inside_the_named_indices(setup: Setup) -> None:
    """``q`` and the URL parameters of a URI search never widen what the lent identity reads."""
    key = {"X-API-Key": KEY}
    docs = setup.docs
    reads = [
        f"/{docs}/_search?q={quote('_index:' + setup.secret)}",
        f"/{docs}/_search?q={quote('secret OR _index:s3-secret-*')}",
        f"/{docs}/_search?q=cat&search_type=dfs_query_then_fetch",
        f"/{docs}/_search?q=cat&preference=_local&routing=1",
        f"/{docs}/_search?q=cat&df=body&analyze_wildcard=true&lenient=true",
        f"/{docs}/_search?q=cat&size=3&from=2",
        f"/{docs}/_search?q=cat&scroll=1m&size=2",
    ]
    for target in reads:
        answer = raw_request(setup.lent_url, "GET", target, headers=key)
        assert answer.status == 200, (target, answer.body[:300])
        hits = answer.json()["hits"]["hits"]
        assert all(hit["_index"] == docs for hit in hits), (target, hits)
        assert b"the secret" not in answer.body
    refused = [
        f"/{docs}/_search?q=cat&index={setup.secret}",
        f"/{docs}/_search?q=cat&Index={setup.secret}",
        f"/{docs}/_search?q=cat&ind%65x={setup.secret}",
        f"/{docs}/_search?q=cat&expand_wildcards=all",
        f"/{docs}/_search?q=cat&expand_wildcards=open&expand_wildcards=hidden",
        f"/{docs}/_search?q=cat&expand_wildcards=open,hidden",
        f"/{docs}/_search?q=cat&expandWildcards=all",
        f"/{docs}/_search?source={quote(json.dumps({'query': {'match_all': {}}}))}",
        f"/{docs}/_search?q=cat&error_trace=true",
        f"/{docs}/_search?q=cat&_method=DELETE",
    ]
    before = len(setup.lent_engine.sent)
    for target in refused:
        answer = raw_request(setup.lent_url, "GET", target, headers=key)
        assert answer.status == 403, (target, answer.status, answer.body[:300])
    assert setup.lent_engine.sent[before:] == []


def test_uri_search_odd_values_are_4xx_or_answered_never_5xx(setup: Setup) -> None:
    key = {"X-API-Key": KEY}
    docs = setup.docs
    for query in (
        "q=",
        "q=%00",
        "q=" + quote("((((((((cat"),
        "q=" + quote("\u202ecat\u0000\x1b[31m"),
        "q=" + "cat%20" * 2000,
        "q=cat&size=-1",
        "q=cat&size=1e3",
        "q=cat&from=99999999999999999999",
        "q=cat&size=10001",
        "q=cat&q=dog",
        "q=cat&sort=_score:asc",
        "q=cat&timeout=-1s",
        "q=%FF%FE",
    ):
        answer = raw_request(setup.lent_url, "GET", f"/{docs}/_search?{query}", headers=key)
        assert answer.status < 500, (query[:60], answer.status, answer.body[:300])


# --------------------------------------------------------------------- compression


@pytest.mark.parametrize(
    ("accept", "gzipped"),
    [
        ("gzip", True),
        ("gzip;q=0", False),
        ("gzip;q=0.000", False),
        ("GZIP;Q=0.5", True),
        ("*;q=0, gzip;q=0", False),
        ("*", True),
        ("*;q=0", False),
        ("identity;q=0", False),
        ("gzip;q=nan", False),
        ("gzip;q=-1", False),
        ("gzip;q=abc", False),
        ("br;q=1, x-gzip;q=0.1", True),
        ("gzip;;;q=1,,,", True),
        (",".join(["deflate;q=0.5"] * 500), False),
    ],
)
def test_reranked_answer_compression_follows_accept_encoding(
    setup: Setup, accept: str, gzipped: bool
) -> None:
    target = f"/{setup.docs}/_search?q=cat+food&size=5"
    key = {"X-API-Key": KEY}
    plain = raw_request(setup.lent_url, "GET", target, headers=key)
    answer = raw_request(setup.lent_url, "GET", target, headers={**key, "Accept-Encoding": accept})
    assert answer.status == plain.status == 200, answer.body[:300]
    assert answer.headers.get("x-secondpass-rerank") == "ok"
    assert "accept-encoding" in answer.headers.get("vary", "").lower()
    assert (answer.headers.get("content-encoding") == "gzip") is gzipped
    body = gzip.decompress(answer.body) if gzipped else answer.body
    hits = [h["_id"] for h in json.loads(body)["hits"]["hits"]]
    assert hits == [h["_id"] for h in plain.json()["hits"]["hits"]]


# --------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "value",
    ["a\tb", 'x" "injected": "1', "{}", "é-latin1", "x" * 4000, KEY, f"req-{KEY}"],
    ids=["tab", "json-quote", "braces", "non-ascii", "4k", "key", "key-inside"],
)
def test_unsafe_request_ids_are_replaced_not_echoed(setup: Setup, value: str) -> None:
    """A request id that could forge a log line or carries a client key is never echoed.

    The client's header itself goes upstream unchanged (docs/observability.md);
    the proxy's own answer carries a fresh id. (A control character, which
    poisons the upstream connection, has its own test below, on its own proxy.)
    """
    answer = raw_request(
        setup.lent_url,
        "GET",
        f"/{setup.docs}/_count",
        headers={"X-API-Key": KEY, "X-Request-ID": value},
    )
    assert answer.status in (200, 400), answer.body[:300]
    echoed = answer.headers.get("x-request-id", "")
    assert echoed and echoed != value.strip()
    assert len(echoed) == 32 and all(c in "0123456789abcdef" for c in echoed)


@pytest.mark.parametrize(
    "value",
    [SECURE_PASSWORD, base64.b64encode(f"elastic:{SECURE_PASSWORD}".encode()).decode()],
    ids=["password", "basic"],
)
def test_the_lent_password_is_never_taken_as_a_request_id(setup: Setup, value: str) -> None:
    """An embedded ``RerankProxy`` that lends a password must not echo (and log) it as an id.

    ``secondpass proxy`` registers its settings' secrets with the redactor, so
    :func:`request_id_from` refuses them; a proxy built in code (the documented
    ``RerankProxy(ProxySettings(...))`` + ``BackgroundProxy``) registers none.
    """
    answer = raw_request(
        setup.lent_url,
        "GET",
        f"/{setup.docs}/_count",
        headers={"X-API-Key": KEY, "X-Request-ID": value},
    )
    assert answer.status == 200, answer.body[:300]
    assert answer.headers.get("x-request-id") != value


# ------------------------------------------------ upstream connections poisoned by a header


def _timed_request(base: str, target: str, headers: dict[str, str], *, timeout_s: float) -> int:
    """One GET on a raw socket; its status, or 0 when no answer came within ``timeout_s``."""
    url = urlsplit(base)
    lines = [f"GET {target} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
        sock.sendall(data)
        try:
            head = sock.recv(65536)
        except TimeoutError:
            return 0
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0


@pytest.mark.parametrize("header", ["X-Request-ID", "X-Opaque-Id", "traceparent"])
def test_a_control_character_in_a_forwarded_header_does_not_hang_the_next_client(
    setup: Setup, tiny_scorer: Any, header: str, figures: Any
) -> None:
    """One anonymous request must not leave a pooled upstream connection that hangs the next client.

    Elasticsearch answers ``400`` ("Validation failed for header") to a task
    header holding a control character, keeps the connection open, and never
    reads another request from it. Forwarded unchanged, such a header left the
    proxy's pooled connection poisoned: the next client sent on it waited
    forever (no upstream read timeout by default). A pool of one connection
    makes the reuse certain; the legitimate client must be answered.
    """
    proxy = RerankProxy(
        ProxySettings(upstream=setup.engine_url, listen="127.0.0.1:0", window=10,
                      indices={"s3-docs-*": {"fields": ["body"]}}, max_connections=1),
        scorer=tiny_scorer,
    )  # fmt: skip
    with BackgroundProxy(proxy) as url:
        own = {"Authorization": _basic()}
        assert _timed_request(url, f"/{setup.docs}/_count", own, timeout_s=10) == 200
        poisoned = _timed_request(url, "/_cluster/health", {header: "ab\x1bc"}, timeout_s=10)
        assert 400 <= poisoned < 500
        started = time.monotonic()
        status = _timed_request(url, f"/{setup.docs}/_count", own, timeout_s=5)
        figures.add("poisoned upstream connection", f"next client's wait ({header})",
                    time.monotonic() - started, "s")  # fmt: skip
        assert status == 200, f"the next client got no answer in 5 s (status {status})"
    proxy.retriever.close()


# ------------------------------------------------------------------------ the service

SECOND_KEY = "session3-second-key-0123456789"


@pytest.fixture(scope="module")
def keyed_service(service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    """``secondpass serve`` with two API keys, JSON logs at INFO, the memory score cache."""
    return service_factory(
        settings={"api_keys": [CLIENT_KEY, SECOND_KEY], "max_wait_ms": 2},
        args=["--log-format", "json", "--log-level", "info"],
    )


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v2/rerank", "max_tokens_per_doc", 0),
        ("/v2/rerank", "max_tokens_per_doc", -1),
        ("/v2/rerank", "max_tokens_per_doc", 2**31),
        ("/v2/rerank", "max_tokens_per_doc", 2**64),
        ("/v2/rerank", "max_tokens_per_doc", 1.5),
        ("/v2/rerank", "max_tokens_per_doc", "3"),
        ("/v2/rerank", "max_tokens_per_doc", [1]),
        ("/v2/rerank", "max_tokens_per_doc", {"n": 1}),
        ("/v2/rerank", "max_tokens_per_doc", True),
        ("/v2/rerank", "max_tokens_per_doc", 1e308),
        ("/v1/rerank", "max_chunks_per_doc", 0),
        ("/v1/rerank", "max_chunks_per_doc", -1),
        ("/v1/rerank", "max_chunks_per_doc", 10**6),
        ("/v1/rerank", "max_chunks_per_doc", "2"),
        ("/v2/rerank", "priority", 1.5),
        ("/v2/rerank", "priority", "high"),
        ("/v2/rerank", "return_documents", "maybe"),
        ("/rerank", "truncation_direction", "LEFT"),
        ("/rerank", "truncation_direction", "Middle"),
        ("/rerank", "truncation_direction", ["Left"]),
        ("/rerank", "truncation_direction", None),
    ],
)
def test_truncation_fields_out_of_bounds_are_422_naming_the_field(
    keyed_service: ServiceProcess, path: str, field: str, value: Any
) -> None:
    docs = ["cat dog bird " * 40, "fish horse"]
    body: dict[str, Any] = (
        {"query": "cat", "texts": docs, "truncate": True}
        if path == "/rerank"
        else {"model": "m", "query": "cat", "documents": docs}
    )
    with keyed_service.client() as client:
        answer = client.post(path, json={**body, field: value}, headers=_bearer(CLIENT_KEY))
    assert answer.status_code == 422, answer.text[:300]
    assert field in answer.json()["error"]


def test_a_cut_score_is_never_served_for_the_whole_document(keyed_service: ServiceProcess) -> None:
    """The score cache keeps a ``max_tokens_per_doc`` cut apart from the whole document's score.

    Asked in turns, by two API keys, cut and whole: each answer must be the one
    a cold service gives (the first answer of each kind), never the other's.
    """
    long_doc = "zebra " * 3 + "cat dog bird fish " * 100
    body = {"model": "m", "query": "cat", "documents": [long_doc, "cat"]}

    def score(key: str, cut: int | None) -> float:
        sent = body if cut is None else {**body, "max_tokens_per_doc": cut}
        with keyed_service.client() as client:
            answer = client.post("/v2/rerank", json=sent, headers=_bearer(key))
        assert answer.status_code == 200, answer.text[:300]
        return next(r["relevance_score"] for r in answer.json()["results"] if r["index"] == 0)

    cut, whole = score(CLIENT_KEY, 3), score(SECOND_KEY, None)
    assert abs(cut - whole) > 1e-6  # the cut changes the score: otherwise this proves nothing
    for key in (CLIENT_KEY, SECOND_KEY):
        assert score(key, None) == pytest.approx(whole, abs=1e-6)
        assert score(key, 3) == pytest.approx(cut, abs=1e-6)
        assert score(key, 4) != pytest.approx(cut, abs=1e-6)


def test_info_and_health_leak_nothing_without_a_key(
    keyed_service: ServiceProcess, tiny_cross_encoder_dir: Path
) -> None:
    with keyed_service.client() as client:
        for key in (None, "wrong-key-0123456789", f"{CLIENT_KEY}x"):
            headers = {} if key is None else _bearer(key)
            info = client.get("/info", headers=headers)
            assert info.status_code == 401, info.text[:300]
            assert "model_id" not in info.text and "max_input_length" not in info.text
        health = client.get("/health")
        assert health.status_code == 200 and health.content == b""
        info = client.get("/info", headers=_bearer(CLIENT_KEY))
    assert info.status_code == 200
    text = info.text
    for secret in (
        CLIENT_KEY,
        SECOND_KEY,
        str(tiny_cross_encoder_dir),
        tiny_cross_encoder_dir.name,
    ):
        assert secret not in text, secret


def test_request_ids_carrying_a_key_reach_neither_the_answer_nor_the_json_log(
    keyed_service: ServiceProcess,
) -> None:
    """A key (or a line break, ANSI, 100 KB) sent as ``X-Request-ID`` is replaced; the log stays JSON."""
    with keyed_service.client() as client:
        for value in (CLIENT_KEY, f"id-{SECOND_KEY}", "abc\x1b[31m", "y" * 300):
            answer = client.post(
                "/v2/rerank",
                json={"model": "m", "query": "cat", "documents": ["a cat"]},
                headers={**_bearer(CLIENT_KEY), "X-Request-ID": value},
            )
            assert answer.status_code == 200, answer.text[:300]
            assert answer.headers["x-request-id"] != value
        huge = client.get("/health", headers={"X-Request-ID": "z" * 100_000})
        assert huge.status_code == 431
    log = keyed_service.log()
    assert CLIENT_KEY not in log and SECOND_KEY not in log
    for line in log.splitlines():
        if line.startswith("{"):
            json.loads(line)  # every JSON line is one whole object: nothing injected a break
