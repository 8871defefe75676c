"""The proxy's authority: whose credentials a request goes up with, and which requests may go.

No servers: the proxy ASGI app is driven with hand-built scopes (so every byte of
the request target is the test's, not an HTTP client's normalisation) against a
recording httpx.MockTransport upstream. The same promises against a real secured
Elasticsearch are in tests/reliability/test_proxy_authority.py.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from secondpass.errors import ConfigurationError
from secondpass.proxy import ProxySettings, RerankProxy
from secondpass.proxy.access import (
    DEFAULT_ALLOWED_REQUESTS,
    MAX_RELEASE_BODY_BYTES,
    AllowList,
    Refusal,
    canonical_segments,
    check_body_references,
    check_method,
    check_msearch,
    check_release,
    origin_form,
    refusal_headers,
)
from secondpass.service import auth
from secondpass.types import PassageScore

UPSTREAM = "http://engine.test:9200"
KEY = "client-key-0123456789"
OTHER_KEY = "client-key-9876543210"
PROXY_BASIC = "Basic " + base64.b64encode(b"elastic:proxy-Passw0rd").decode()
LENT = {"username": "elastic", "password": "proxy-Passw0rd", "lend_credentials": True}


class LengthScorer:
    """Longer passages first: enough to see that reranking ran."""

    fingerprint = "length-scorer"

    def score(
        self, query: str, passages: Sequence[str], *, timings: Any = None
    ) -> list[PassageScore]:
        return [PassageScore(raw=float(len(p)), normalized=len(p) / 100) for p in passages]

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: Any = None
    ) -> list[PassageScore]:
        return [self.score(q, [p])[0] for q, p in pairs]


class _Body(httpx.AsyncByteStream):
    """An unread async body, as a real connection gives."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):  # type: ignore[override]
        yield self.data


class Recorder:
    """A scripted engine that records every request reaching it."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answer(request)
        return httpx.Response(
            answer.status_code, headers=answer.headers.raw, stream=_Body(answer.content)
        )

    def answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/_search"):
            hits = [
                {
                    "_index": "docs",
                    "_id": str(i),
                    "_score": 10.0 - i,
                    "_source": {"body": "x" * (i + 1)},
                }
                for i in range(5)
            ]
            body = {
                "took": 1,
                "hits": {"total": {"value": 5, "relation": "eq"}, "max_score": 10.0, "hits": hits},
            }
            return httpx.Response(200, json=body)
        return httpx.Response(200, json={"acknowledged": True})


def make_proxy(recorder: Recorder, **settings: Any) -> RerankProxy:
    config = ProxySettings(
        upstream=settings.pop("upstream", UPSTREAM),
        indices={"docs": {"fields": ["body"]}},
        **settings,
    )
    return RerankProxy(config, scorer=LengthScorer(), transport=httpx.MockTransport(recorder))


async def call(
    proxy: RerankProxy,
    method: str,
    target: bytes,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    query: bytes = b"",
    body: bytes = b"",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request as uvicorn hands it over: raw target bytes, untouched."""
    scope = {
        "type": "http",
        "method": method,
        "path": target.decode("latin-1"),
        "raw_path": target,
        "query_string": query,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:  # the client stays until its answer is complete, as over a socket
            await answered.wait()
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    answered = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    await proxy(scope, receive, send)
    start = sent[0]
    return (
        start["status"],
        {k.lower(): v for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in sent[1:]),
    )


def assert_engine_error(
    status: int, headers: dict[bytes, bytes], body: bytes, expected: int
) -> str:
    """The engines' error shape; returns the reason."""
    assert status == expected
    assert headers[b"content-type"].startswith(b"application/json")
    data = json.loads(body)
    assert data["status"] == expected
    assert data["error"]["root_cause"][0]["type"] == data["error"]["type"]
    reason = data["error"]["reason"]
    assert isinstance(reason, str) and reason
    return reason


# ------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "elastic", "password": "pw"},
        {"username": "elastic"},
        {"api_key": "aWQ6a2V5"},
        {"upstream": "http://elastic:pw@127.0.0.1:9200"},
    ],
    ids=["basic", "user-only", "api-key", "userinfo"],
)
def test_credentials_without_the_opt_in_refuse_to_start(credentials: dict[str, str]) -> None:
    settings = ProxySettings(**credentials)
    with pytest.raises(ConfigurationError, match="lend_credentials is off") as info:
        settings.access_gate()
    assert "pw" not in str(info.value) and "aWQ6a2V5" not in str(info.value)
    with pytest.raises(ConfigurationError, match="lend_credentials"):
        RerankProxy(settings, scorer=LengthScorer())


def test_the_opt_in_needs_credentials_and_one_kind_of_them() -> None:
    with pytest.raises(ConfigurationError, match="no username/password or api_key"):
        ProxySettings(lend_credentials=True).access_gate()
    with pytest.raises(ConfigurationError, match="not both"):
        ProxySettings(username="u", api_key="aWQ6a2V5", lend_credentials=True).access_gate()


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:9201", "[::]:9201", "192.168.1.5:9201", "[fe80::1]:9201", "search.internal:9201",
     "[::ffff:10.0.0.1]:9201", "127.0.0.1.nip.io:9201"],
)  # fmt: skip
def test_lending_on_a_reachable_address_needs_client_keys(listen: str) -> None:
    settings = ProxySettings(listen=listen, **LENT)
    with pytest.raises(ConfigurationError, match="non-loopback"):
        settings.access_gate()
    gate = ProxySettings(listen=listen, client_api_keys=[KEY], **LENT).access_gate()
    assert gate is not None and gate.keys and gate.allow is not None


@pytest.mark.parametrize(
    "listen",
    ["127.0.0.1:0", "127.8.9.10:9201", "[::1]:0", "localhost:9201", "[::ffff:127.0.0.1]:1"],
)
def test_lending_on_loopback_without_keys_starts_with_a_loud_warning(
    listen: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="secondpass.proxy.app")
    proxy = make_proxy(Recorder(), listen=listen, **LENT)
    assert proxy.settings.listens_on_loopback
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("WITHOUT client authentication" in w for w in warnings)
    assert not any("proxy-Passw0rd" in w for w in warnings)


@pytest.mark.parametrize(
    ("upstream", "stripped", "user", "password"),
    [
        ("http://elastic:pw@127.0.0.1:9200", "http://127.0.0.1:9200", "elastic", "pw"),
        ("https://u%40corp:p%3Aw%40rd@[::1]:9200/es/", "https://[::1]:9200/es", "u@corp", "p:w@rd"),
        ("http://elastic:p@ss@host:9200", "http://host:9200", "elastic", "p@ss"),
        ("http://reader@host:9200/base", "http://host:9200/base", "reader", None),
    ],
)
def test_userinfo_moves_out_of_the_upstream_url(
    upstream: str, stripped: str, user: str, password: str | None
) -> None:
    settings = ProxySettings(upstream=upstream, lend_credentials=True)
    assert settings.upstream == stripped
    assert "@" not in settings.upstream
    assert settings.username == user
    assert (settings.password.get_secret_value() if settings.password else None) == password
    if password:
        assert password not in repr(settings)


def test_userinfo_and_separate_credentials_are_refused() -> None:
    with pytest.raises(ValidationError, match="once"):
        ProxySettings(upstream="http://a:b@host:9200", username="c", password="d")


@pytest.mark.parametrize(
    "rule",
    [
        "/_search",
        "get /_search",
        "GET _search",
        "GET,FETCH /_search",
        "GET /../_search",
        "GET /{idx}/_search",
    ],
)
def test_invalid_allowed_requests_are_refused_naming_the_rule(rule: str) -> None:
    with pytest.raises(ValidationError, match="allowed request"):
        ProxySettings(allowed_requests=[rule])


def test_client_keys_come_from_a_file_too(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# clients\nbatch {KEY}\n", encoding="utf-8")
    gate = ProxySettings(client_api_key_file=str(path)).access_gate()
    assert gate is not None and gate.allow is None
    assert gate.keys.identify([(b"x-api-key", KEY.encode())]) == "batch"
    with pytest.raises(ConfigurationError, match="cannot read"):
        ProxySettings(client_api_key_file=str(tmp_path / "missing")).access_gate()


def test_cli_has_the_opt_in_flag_and_no_flag_for_client_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from secondpass.cli import build_parser
    from secondpass.commands import proxy as command

    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["proxy", "--client-api-keys", KEY])
    monkeypatch.setenv("SECONDPASS_PROXY_PASSWORD", "from-env")
    args = parser.parse_args(["proxy", "--username", "elastic"])
    monkeypatch.setattr("secondpass.proxy.running.run", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ConfigurationError, match="--lend-credentials"):
        command._run(args)
    args = parser.parse_args(
        ["proxy", "--username", "elastic", "--lend-credentials", "--listen", "0.0.0.0:9201"]
    )
    with pytest.raises(ConfigurationError, match="non-loopback"):
        command._run(args)


# ------------------------------------------------------------------ allow-list


ALLOWED = [
    ("GET", b"/_search", b"/_search"),
    ("POST", b"/docs/_search", b"/docs/_search"),
    ("POST", b"/docs/_search/", b"/docs/_search"),
    ("POST", b"/%5Fsearch", b"/_search"),
    ("POST", b"/%64ocs/%5f%73earch", b"/docs/_search"),
    ("GET", b"/docs,logs-2024.01*/_search", b"/docs,logs-2024.01*/_search"),
    ("GET", b"/docs%2Clogs/_search", b"/docs,logs/_search"),
    ("POST", b"/_msearch", b"/_msearch"),
    ("POST", b"/docs/_msearch", b"/docs/_msearch"),
    ("GET", b"/_count", b"/_count"),
    ("POST", b"/docs/_count", b"/docs/_count"),
    ("POST", b"/_search/scroll", b"/_search/scroll"),
    ("DELETE", b"/_search/scroll", b"/_search/scroll"),
    ("POST", b"/docs/_pit", b"/docs/_pit"),
    ("DELETE", b"/_pit", b"/_pit"),
    ("POST", b"/docs/_search/point_in_time", b"/docs/_search/point_in_time"),
    ("DELETE", b"/_search/point_in_time", b"/_search/point_in_time"),
]

REFUSED = [
    # other operations
    ("DELETE", b"/docs"), ("PUT", b"/docs"), ("PUT", b"/_cluster/settings"), ("GET", b"/docs/_doc/1"),
    ("POST", b"/_bulk"), ("POST", b"/docs/_bulk"), ("POST", b"/_reindex"), ("GET", b"/_security/user"),
    ("PUT", b"/_security/user/eve"), ("POST", b"/docs/_delete_by_query"), ("POST", b"/docs/_update_by_query"),
    ("PUT", b"/_scripts/x"), ("PUT", b"/_snapshot/repo"), ("POST", b"/_nodes/_local/shutdown"),
    ("GET", b"/"), ("GET", b"/_cat/indices"), ("POST", b"/docs/_doc"), ("GET", b"/docs/_search/x"),
    ("GET", b"/_search/scroll/abc"), ("POST", b"/docs/_search/scroll"), ("POST", b"/_pit"),
    ("DELETE", b"/docs/_pit"), ("GET", b"/_search/point_in_time/_all"), ("DELETE", b"/_search"),
    ("PUT", b"/docs/_search"), ("POST", b"/_search/template"), ("POST", b"/_plugins/_security/api/account"),
    # methods: exact and listed only
    ("get", b"/_search"), ("Get", b"/_search"), ("HEAD", b"/_search"), ("OPTIONS", b"/_search"),
    ("TRACE", b"/_search"), ("PATCH", b"/docs/_search"), ("CONNECT", b"/_search"), ("POST ", b"/_search"),
    # dot segments, empty segments, encoded separators, double encoding, params, controls
    ("GET", b"/docs/_search/../../_cluster/settings"), ("DELETE", b"/docs/../_pit"),
    ("PUT", b"/_search/../_cluster/settings"), ("GET", b"/%2E%2E/_search"), ("GET", b"/./_search"),
    ("GET", b"/docs/./_search"), ("GET", b"/%2e/_search"), ("GET", b"//_search"), ("GET", b"/docs//_search"),
    ("GET", b"/docs/_search//"), ("GET", b"/docs%2F_doc%2F1/_search"), ("GET", b"/docs%2f..%2f_search"),
    ("GET", b"/docs%5C..%5C_cluster/_search"), ("GET", b"/docs\\_search"), ("GET", b"/%255Fsearch"),
    ("GET", b"/docs%252F_doc/_search"), ("GET", b"/_search;x=1"), ("GET", b"/docs;a/_search"),
    ("GET", b"/_search%00"), ("GET", b"/docs%0A/_search"), ("GET", b"/docs%7F/_search"),
    ("GET", b"/%C0%AE%C0%AE/_search"), ("GET", b"/docs%FF/_search"), ("GET", b"/_search%3Fq=1"),
    ("GET", b"/_search%23x"), ("GET", b"_search"), ("GET", b"/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/_search"),
    # case and index expressions that widen or switch what is read
    ("GET", b"/_SEARCH"), ("GET", b"/_Search"), ("GET", b"/Docs/_search"), ("GET", b"/_all/_search"),
    ("GET", b"/.security/_search"), ("GET", b"/.security-7,docs/_search"), ("GET", b"/docs,.kibana/_search"),
    ("GET", b"/%2Esecurity/_search"), ("GET", b"/-docs/_search"), ("GET", b"/+docs/_search"),
    ("GET", b"/remote:docs/_search"), ("GET", b"/%3Clogs-%7Bnow%2Fd%7D%3E/_search"), ("GET", b"/docs,/_search"),
    ("GET", b"/docs%20/_search"), ("GET", b"/%EF%BD%84ocs/_search"), ("GET", b"/_doc/_search"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "canonical"), ALLOWED)
def test_default_allow_list_admits_searching(method: str, path: bytes, canonical: bytes) -> None:
    assert AllowList.from_rules(DEFAULT_ALLOWED_REQUESTS).check(method, path) == canonical


@pytest.mark.parametrize(("method", "path"), REFUSED)
def test_default_allow_list_refuses_everything_else(method: str, path: bytes) -> None:
    verdict = AllowList.from_rules(DEFAULT_ALLOWED_REQUESTS).check(method, path)
    assert isinstance(verdict, Refusal) and verdict.status == 403


def test_the_allow_list_is_configurable_and_exact() -> None:
    allow = AllowList.from_rules(["GET,HEAD /", "GET /{index}/_doc/{index}"])
    assert allow.check("HEAD", b"/") == b"/"
    assert allow.check("GET", b"/docs/_doc/abc") == b"/docs/_doc/abc"
    assert isinstance(allow.check("GET", b"/_search"), Refusal)
    assert isinstance(allow.check("DELETE", b"/docs/_doc/abc"), Refusal)


@pytest.mark.parametrize(
    ("target", "path"),
    [(b"/x", b"/x"), (b"http://evil.test/x/_search", b"/x/_search"), (b"HTTPS://evil.test:1", b"/"),
     (b"*", None), (b"evil.test:443", None), (b"", None), (b"ftp://evil.test/x", None)],
)  # fmt: skip
def test_origin_form(target: bytes, path: bytes | None) -> None:
    assert origin_form(target) == path


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_the_engines_methods_are_forwarded(method: str) -> None:
    assert check_method(method) is None


@pytest.mark.parametrize(
    "method", ["CONNECT", "TRACE", "PROPFIND", "BREW", "get", "Post", "X" * 300, "G\x00T", "\u00e9"]
)
def test_other_methods_are_answered_405_naming_the_method_and_the_allowed_ones(method: str) -> None:
    refusal = check_method(method)
    assert refusal is not None and refusal.status == 405
    assert method[:16].encode("ascii", "backslashreplace").decode() in refusal.reason
    assert len(refusal.reason) < 80  # a 300-byte method is not echoed whole
    allow = dict(refusal_headers(refusal))[b"allow"]
    assert allow == b"DELETE,GET,HEAD,OPTIONS,PATCH,POST,PUT"


def test_segments_keep_an_encoded_comma_inside_one_segment() -> None:
    assert canonical_segments(b"/a%2Cb/_search/") == ("a,b", "_search")


# ----------------------------------------------------------- through the proxy


async def test_by_default_the_proxy_adds_no_credentials_and_forwards_the_clients() -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder)
    await call(proxy, "DELETE", b"/docs")
    await call(
        proxy, "GET", b"/_cluster/health", headers=[(b"authorization", b"Basic dXNlcjpwdw==")]
    )
    await call(proxy, "POST", b"/docs/_search", headers=[(b"x-api-key", b"abc"), (b"cookie", b"c=1")],
               body=b'{"query":{"match":{"body":"x"}}}')  # fmt: skip
    first, second, third = recorder.requests
    assert "authorization" not in first.headers
    assert (
        first.method == "DELETE" and first.url.path == "/docs"
    )  # the engine decides, with no rights
    assert second.headers["authorization"] == "Basic dXNlcjpwdw=="
    assert (third.headers["x-api-key"], third.headers["cookie"]) == ("abc", "c=1")
    assert "authorization" not in third.headers


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Bearer")], [(b"authorization", b"Bearer " + OTHER_KEY.encode())],
     [(b"x-api-key", KEY[:-1].encode())], [(b"x-api-key", KEY.upper().encode())],
     [(b"authorization", b"Basic " + base64.b64encode(KEY.encode()))], [(b"authorization", b"ApiKey " + KEY.encode())],
     [(b"x-api-key", KEY.encode() + b"x")], [(b"x-api-key", b"k" * 10_000)], [(b"api-key", KEY.encode())],
     [(b"authorization", PROXY_BASIC.encode())]],
    ids=["none", "empty-bearer", "other-key", "short", "upper", "basic", "apikey-scheme", "longer", "huge",
         "wrong-header", "proxy-own-basic"],
)  # fmt: skip
@pytest.mark.parametrize("lent", [True, False], ids=["lent", "keys-only"])
async def test_without_a_valid_key_the_answer_is_401_and_nothing_goes_up(
    headers: list[tuple[bytes, bytes]], lent: bool
) -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY], **(LENT if lent else {}))
    for method, target in [("GET", b"/_search"), ("DELETE", b"/docs"), ("OPTIONS", b"/_search")]:
        status, down, body = await call(proxy, method, target, headers=headers)
        reason = assert_engine_error(status, down, body, 401)
        assert down[b"www-authenticate"].startswith(b"Bearer ")
        assert "API key" in reason and KEY not in reason
    assert recorder.requests == []


@pytest.mark.parametrize(
    "key_header",
    [(b"authorization", b"Bearer " + KEY.encode()), (b"Authorization", b"bearer  " + KEY.encode()),
     (b"x-api-key", KEY.encode()), (b"X-API-KEY", b" " + KEY.encode() + b" ")],
)  # fmt: skip
async def test_lent_mode_replaces_every_client_identity_and_still_reranks(
    key_header: tuple[bytes, bytes],
) -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY], **LENT)
    client_auth = (
        (b"authorization", b"Basic ZXZlOmV2ZQ==")
        if key_header[0].lower() == b"x-api-key"
        else (b"x-api-key", b"other")
    )
    status, down, body = await call(
        proxy, "POST", b"/docs/_search",
        headers=[key_header, client_auth, (b"cookie", b"sid=1"), (b"content-type", b"application/json")],
        body=b'{"query":{"match":{"body":"x"}},"size":3}',
    )  # fmt: skip
    assert status == 200, body
    assert down[b"x-secondpass-rerank"] == b"ok"
    assert [h["_id"] for h in json.loads(body)["hits"]["hits"]] == ["4", "3", "2"]  # longest first
    (sent,) = recorder.requests
    assert sent.headers.get_list("authorization") == [PROXY_BASIC]
    assert "x-api-key" not in sent.headers and "cookie" not in sent.headers
    assert KEY not in str(sent.headers.raw)


async def test_keys_only_mode_strips_the_key_and_forwards_the_clients_own_credentials() -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY, OTHER_KEY])
    headers = [
        (b"x-api-key", KEY.encode()),
        (b"authorization", b"Basic dXNlcjpwdw=="),
        (b"cookie", b"c=1"),
    ]
    status, _, _ = await call(proxy, "DELETE", b"/docs", headers=headers)
    status2, _, _ = await call(
        proxy, "GET", b"/_cluster/health",
        headers=[(b"authorization", b"Bearer " + OTHER_KEY.encode()), (b"x-api-key", OTHER_KEY.encode())],
    )  # fmt: skip
    assert status == status2 == 200  # no allow-list: the engine decides with the client's rights
    first, second = recorder.requests
    assert (
        first.headers["authorization"] == "Basic dXNlcjpwdw==" and first.headers["cookie"] == "c=1"
    )
    assert "x-api-key" not in first.headers
    assert "authorization" not in second.headers and "x-api-key" not in second.headers


@pytest.mark.parametrize(("method", "path"), REFUSED)
async def test_lent_mode_refuses_with_403_and_forwards_nothing(method: str, path: bytes) -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY], **LENT)
    status, down, body = await call(proxy, method, path, headers=[(b"x-api-key", KEY.encode())])
    expected = 403 if path.startswith(b"/") else 400
    assert_engine_error(status, down, body, 405 if check_method(method) else expected)
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("headers", "query"),
    [([(b"x-http-method-override", b"DELETE")], b""), ([(b"X-HTTP-Method", b"PUT")], b""),
     ([(b"x-method-override", b"DELETE")], b""), ([], b"_method=DELETE"), ([], b"q=x&%5Fmethod=PUT"),
     ([(b"es-security-runas-user", b"admin")], b""), ([(b"opendistro_security_impersonate_as", b"admin")], b""),
     ([(b"x-proxy-user", b"admin"), (b"x-proxy-roles", b"all_access")], b"")],
)  # fmt: skip
async def test_lent_mode_refuses_method_overrides_and_identity_switches(
    headers: list[tuple[bytes, bytes]], query: bytes
) -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY], **LENT)
    status, down, body = await call(
        proxy,
        "POST",
        b"/docs/_search",
        headers=[(b"x-api-key", KEY.encode()), *headers],
        query=query,
    )
    assert_engine_error(status, down, body, 403)
    assert recorder.requests == []


async def test_lent_mode_forwards_the_canonical_path_under_the_upstream_base_path() -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, upstream="http://engine.test:9200/es/", **LENT)
    status, _, _ = await call(proxy, "POST", b"/%64ocs/%5Fcount/")
    assert status == 200
    assert recorder.requests[0].url.raw_path == b"/es/docs/_count"
    status, _, _ = await call(proxy, "PUT", b"/../_cluster/settings")
    assert status == 403 and len(recorder.requests) == 1


@pytest.mark.parametrize(
    "settings", [{}, {"client_api_keys": [KEY]}, {"client_api_keys": [KEY], **LENT}]
)
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("OPTIONS", b"*"),
        ("GET", b"*"),
        ("CONNECT", b"engine.test:443"),
        ("GET", b"evil.test"),
        ("GET", b""),
    ],
)
async def test_odd_request_targets_get_400_never_500(
    settings: dict[str, Any], method: str, target: bytes
) -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, **settings)
    status, down, body = await call(proxy, method, target, headers=[(b"x-api-key", KEY.encode())])
    if method == "CONNECT":  # the method is refused first: never forwarded, never a tunnel
        assert "CONNECT" in assert_engine_error(status, down, body, 405)
    else:
        assert "request target" in assert_engine_error(status, down, body, 400)
    assert recorder.requests == []


@pytest.mark.parametrize(
    ("method", "target", "status", "reaches"),
    [("GET", b"http://evil.test/_cluster/health", 200, True),
     ("PUT", b"http://evil.test/_cluster/settings", 403, False),
     ("POST", b"https://evil.test:8443/docs/_search", 200, True)],
)  # fmt: skip
async def test_absolute_form_targets_keep_only_their_path(
    method: str, target: bytes, status: int, reaches: bool
) -> None:
    recorder = Recorder()
    proxy = make_proxy(
        recorder, allowed_requests=[*DEFAULT_ALLOWED_REQUESTS, "GET /_cluster/health"], **LENT
    )
    got, _, _ = await call(proxy, method, target)
    assert got == status
    assert [r.url.host for r in recorder.requests] == (["engine.test"] if reaches else [])


@pytest.mark.parametrize("valid", [True, False])
async def test_every_configured_key_is_compared_in_constant_time(
    valid: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(len(a))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = [OTHER_KEY, KEY, "third-key-0123456789"]
    proxy = make_proxy(Recorder(), client_api_keys=keys)
    presented = KEY if valid else "not-a-key-0123456789"
    status, _, _ = await call(
        proxy, "GET", b"/_search", headers=[(b"x-api-key", presented.encode())]
    )
    assert status == (200 if valid else 401)
    assert compared == [32, 32, 32]  # every key, SHA-256 digests: no early exit, no length leak


def test_the_documented_lending_config_loads() -> None:
    import tomllib
    from tests.docs_examples import DOCS

    text = (DOCS / "proxy.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in text.split("```toml\n")[1:]]
    lending = next(b for b in blocks if "lend_credentials" in b)
    settings = ProxySettings(**tomllib.loads(lending))
    assert settings.lend_credentials and settings.client_api_key_file
    assert settings.allowed_requests[-1] == "GET,HEAD /"


# ------------------------------------------- lent credentials: shared identity

SCROLL_ID = "FGluY2x1ZGVfY29udGV4dF91dWlkDXF1ZXJ5QW5kRmV0Y2gBFkRxcWtBSkhnU0VtQ2hmZHpqdjZtZ1EAAAAAAAAABhZaT2F5N2w4cA=="
PIT_ID = "46ToAwMDaWR5BXV1aWQyKwZub2RlXzMAAAAAAAAAACoBYwADaWR4BXV1aWQxAgZub2RlXzEAAAAAAAAAAAEBYQADaWR5BXV1aWQyKgZub2RlXzIAAAAAAAAAAAwBYgACBXV1aWQyAAAFdXVpZDEAAQltYXRjaF9hbGw_gAAAAA=="
JSON = "application/json"

RELEASE_REFUSED = [
    # clear-all, however spelled: body, list, case, whitespace, escapes, other keys
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"_all"}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":["_all"]}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":["%s","_all"]}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"_ALL"}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":" _all "}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"\\u005fall"}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"%s,_all"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"*"}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":""}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":[]}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":[["_all"]]}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":{"id":"_all"}}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":null}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":NaN}'),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"%s","scroll_id":"_all"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"%s","id":"_all"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"%s"} {"scroll_id":"_all"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'["_all"]'),
    (b"/_search/scroll", b"", JSON, b'{' * 5000),
    (b"/_search/scroll", b"", "application/yaml", b"scroll_id: _all"),
    (b"/_search/scroll", b"", "application/cbor", b'{"scroll_id":"%s"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b"_all"),
    (b"/_search/scroll", b"", None, b""),  # names nothing
    # the other places the engines read ids from: parameters, path segments
    (b"/_search/scroll", b"scroll_id=_all", None, b""),
    (b"/_search/scroll", b"scroll_id=%5Fall", None, b""),
    (b"/_search/scroll", b"Scroll_Id=_all", None, b""),
    (b"/_search/scroll", b"scroll_id=_all", JSON, b'{"scroll_id":"%s"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"x=1&scroll_id=" + SCROLL_ID.encode() + b",_all", None, b""),
    (b"/_search/scroll/_all", b"", None, b""),
    (b"/_search/scroll/_ALL", b"", None, b""),
    (b"/_search/scroll/%s,_all" % SCROLL_ID.encode(), b"", None, b""),
    # points in time: Elasticsearch (/_pit, "id") and OpenSearch (point_in_time, "pit_id")
    (b"/_pit", b"", JSON, b'{"id":"_all"}'),
    (b"/_pit", b"", JSON, b'{"id":["_all"]}'),
    (b"/_pit", b"", JSON, b'{"pit_id":"%s"}' % PIT_ID.encode()),
    (b"/_pit", b"", JSON, b"{}"),
    (b"/_search/point_in_time/_all", b"", None, b""),
    (b"/_search/point_in_time", b"", JSON, b'{"pit_id":["_all"]}'),
    (b"/_search/point_in_time", b"", JSON, b'{"pit_id":"*"}'),
    (b"/_search/point_in_time", b"pit_id=_all", None, b""),
]  # fmt: skip

RELEASE_ALLOWED = [
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":"%s"}' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", "application/json; charset=UTF-8", b' {"scroll_id" : ["%s"]}\n' % SCROLL_ID.encode()),
    (b"/_search/scroll", b"", JSON, b'{"scroll_id":["%s","%s"]}' % (SCROLL_ID.encode(), SCROLL_ID[::-1].encode())),
    (b"/_search/scroll", b"scroll_id=" + SCROLL_ID.encode(), None, b""),
    (b"/_search/scroll/" + SCROLL_ID[:-2].encode(), b"", None, b""),
    (b"/_pit", b"", "application/vnd.elasticsearch+json; compatible-with=8", b'{"id":"%s"}' % PIT_ID.encode()),
    (b"/_search/point_in_time", b"", JSON, b'{"pit_id":["%s"]}' % PIT_ID.encode()),
]  # fmt: skip


@pytest.mark.parametrize(("path", "query", "content_type", "body"), RELEASE_REFUSED)
def test_a_release_of_anything_but_given_ids_is_refused(
    path: bytes, query: bytes, content_type: str | None, body: bytes
) -> None:
    verdict = check_release(path, query, content_type, body)
    assert isinstance(verdict, Refusal) and verdict.status == 403


@pytest.mark.parametrize(("path", "query", "content_type", "body"), RELEASE_ALLOWED)
def test_a_release_of_given_ids_passes(
    path: bytes, query: bytes, content_type: str | None, body: bytes
) -> None:
    assert check_release(path, query, content_type, body) is None


def ndjson(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


MSEARCH_REFUSED = [
    ndjson('{"index":".security"}', "{}"),
    ndjson('{"index":"docs"}', "{}", '{"index":".security-7"}', "{}"),
    ndjson('{"index":"docs,.security"}', "{}"),
    ndjson('{"index":["docs",".security"]}', "{}"),
    ndjson('{"index":"\\u002esecurity"}', "{}"),
    ndjson('{"index":"_all"}', "{}"),
    ndjson('{"index":"-docs"}', "{}"),
    ndjson('{"index":"+docs"}', "{}"),
    ndjson('{"index":"remote:docs"}', "{}"),
    ndjson('{"index":"<logs-{now/d}>"}', "{}"),
    ndjson('{"index":"Docs"}', "{}"),
    ndjson('{"index":" docs"}', "{}"),
    ndjson('{"index":""}', "{}"),
    ndjson('{"index":[]}', "{}"),
    ndjson('{"index":["docs",["x"]]}', "{}"),
    ndjson('{"index":{"name":"docs"}}', "{}"),
    ndjson('{"index":7}', "{}"),
    ndjson('{"indices":".security"}', "{}"),
    ndjson('{"index":"docs","index":".security"}', "{}"),
    ndjson('{"index":"docs"} {"index":".security"}', "{}"),
    ndjson('{"index":"docs"}', "{}", '{"index":"docs"}'),  # odd line count
    ndjson("", '{"index":".security"}', "{}", "{}"),  # a blank line shifts the pairing
    ndjson('{"index":"docs"}', "  ", '{"index":".security"}', "{}"),
    ndjson('{"index":"*","expand_wildcards":"all"}', "{}"),
    ndjson('{"index":"*","expand_wildcards":"open,hidden"}', "{}"),
    ndjson('{"index":"*","expand_wildcards":["open","all"]}', "{}"),
    ndjson('{"index":"*","expandWildcards":"all"}', "{}"),
    ndjson('{"index":"*","expand_wildcards":"ALL"}', "{}"),
    ndjson('{"index":"*","expand_wildcards":""}', "{}"),
    ndjson('{"index":"*","expand_wildcards":true}', "{}"),
    ndjson('{"index":"docs","pit":{"id":"x"}}', "{}"),  # keys the engines do not take
    ndjson('{"index":"docs","Index":".security"}', "{}"),
    ndjson("[]", "{}"),
    ndjson('"docs"', "{}"),
    ndjson("not json", "{}"),
    ndjson('{"index":NaN}', "{}"),
    ndjson('{"routing":' + "[" * 5000 + "]" * 5000 + "}", "{}"),
    b"",
]  # fmt: skip

MSEARCH_ALLOWED = [
    ndjson("{}", '{"query":{"match_all":{}}}'),
    ndjson('{"index":"docs"}', "{}", '{"index":"logs-2024.01*,docs"}', '{"size":1}'),
    ndjson('{"index":["docs","logs-*"],"expand_wildcards":"open,closed"}', "{}"),
    ndjson('{"index":"docs","expand_wildcards":["none"],"ignore_unavailable":true}', "{}"),
    ndjson('{"index":"docs","search_type":"dfs_query_then_fetch","preference":"_local","routing":"a"}', "{}"),
    ndjson('{"index" : "docs"}\r', "{}\r"),
    b'{"index":"docs"}\n{}',  # no final newline
]  # fmt: skip


@pytest.mark.parametrize("body", MSEARCH_REFUSED)
def test_msearch_headers_that_reach_past_the_path_rules_are_refused(body: bytes) -> None:
    verdict = check_msearch("application/x-ndjson", body)
    assert isinstance(verdict, Refusal) and verdict.status == 403


@pytest.mark.parametrize("body", MSEARCH_ALLOWED)
def test_msearch_headers_within_the_path_rules_pass(body: bytes) -> None:
    assert check_msearch("application/x-ndjson", body) is None


@pytest.mark.parametrize(
    "content_type", ["application/smile", "application/cbor", "application/yaml", "text/html"]
)
def test_msearch_in_another_body_format_is_refused(content_type: str) -> None:
    verdict = check_msearch(content_type, ndjson('{"index":"docs"}', "{}"))
    assert isinstance(verdict, Refusal)


def lent_proxy(recorder: Recorder) -> RerankProxy:
    return make_proxy(recorder, client_api_keys=[KEY], **LENT)


KEYED = (b"x-api-key", KEY.encode())
NDJSON = (b"content-type", b"application/x-ndjson")


@pytest.mark.parametrize(
    ("query", "body", "headers"),
    [(b"", b'{"scroll_id":"_all"}', [(b"content-type", b"application/json")]),
     (b"scroll_id=_all", b"", []),
     (b"", b'{"scroll_id":"_all"}', [(b"content-type", b"application/json"), (b"content-encoding", b"br")]),
     (b"", b'{"scroll_id":"' + b"A" * MAX_RELEASE_BODY_BYTES + b'"}', [(b"content-type", b"application/json")]),
     (b"source=%7B%22scroll_id%22%3A%22_all%22%7D&source_content_type=application/json", b"", [])],
    ids=["body", "param", "unknown-encoding", "too-large", "source-param"],
)  # fmt: skip
async def test_lent_mode_refuses_clearing_every_scroll_and_forwards_nothing(
    query: bytes, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    recorder = Recorder()
    proxy = lent_proxy(recorder)
    status, down, answer = await call(
        proxy, "DELETE", b"/_search/scroll", headers=[KEYED, *headers], query=query, body=body
    )
    assert_engine_error(status, down, answer, 403)
    assert recorder.requests == []


async def test_lent_mode_releases_one_given_scroll_and_pit_gzipped_or_not() -> None:
    import gzip

    recorder = Recorder()
    proxy = lent_proxy(recorder)
    body = b'{"scroll_id":"%s"}' % SCROLL_ID.encode()
    status, _, _ = await call(proxy, "DELETE", b"/_search/scroll", body=body,
                              headers=[KEYED, (b"content-type", b"application/json")])  # fmt: skip
    assert status == 200
    status, _, _ = await call(proxy, "DELETE", b"/_pit", body=gzip.compress(b'{"id":"%s"}' % PIT_ID.encode()),
                              headers=[KEYED, (b"content-type", b"application/json"), (b"content-encoding", b"gzip")])  # fmt: skip
    assert status == 200
    first, second = recorder.requests
    assert first.content == body and first.headers["authorization"] == PROXY_BASIC
    assert gzip.decompress(second.content) == b'{"id":"%s"}' % PIT_ID.encode()


async def test_without_lending_a_release_goes_up_unread() -> None:
    recorder = Recorder()
    proxy = make_proxy(recorder, client_api_keys=[KEY])
    status, _, _ = await call(proxy, "DELETE", b"/_search/scroll", headers=[KEYED],
                              body=b'{"scroll_id":"_all"}')  # fmt: skip
    assert status == 200 and recorder.requests[0].content == b'{"scroll_id":"_all"}'


@pytest.mark.parametrize("opt_out", [False, True], ids=["reranked", "opted-out"])
@pytest.mark.parametrize(
    ("headers", "body"),
    [([NDJSON], ndjson('{"index":".security"}', '{"query":{"match":{"body":"x"}}}')),
     ([NDJSON], ndjson('{"index":"*","expand_wildcards":"all"}', "{}")),
     ([NDJSON], b"\xff\xfe not ndjson"),
     ([(b"content-type", b"application/smile")], ndjson('{"index":"docs"}', "{}")),
     ([NDJSON, (b"content-encoding", b"br")], b"compressed?"),
     ([NDJSON], ndjson('{"index":"docs"}', '{"size":1}') * 100_000)],
    ids=["system-index", "expand-all", "unreadable", "smile", "unknown-encoding", "too-large"],
)  # fmt: skip
async def test_lent_mode_refuses_msearch_it_cannot_check_or_that_reaches_past_the_path_rules(
    headers: list[tuple[bytes, bytes]], body: bytes, opt_out: bool
) -> None:
    recorder = Recorder()
    proxy = lent_proxy(recorder)
    if opt_out:
        headers = [*headers, (b"x-secondpass-rerank", b"off")]
    status, down, answer = await call(proxy, "POST", b"/docs/_msearch", headers=[KEYED, *headers],
                                      body=body)  # fmt: skip
    assert_engine_error(status, down, answer, 403)
    assert recorder.requests == []


async def test_lent_mode_still_reranks_a_checked_msearch() -> None:
    recorder = Recorder()
    search = Recorder().answer(httpx.Request("POST", "http://x/docs/_search")).json()
    recorder.answer = lambda request: httpx.Response(200, json={"responses": [search]})  # type: ignore[method-assign]
    proxy = lent_proxy(recorder)
    body = ndjson('{"index":"docs"}', '{"query":{"match":{"body":"x"}},"size":3}')
    status, down, answer = await call(
        proxy, "POST", b"/_msearch", headers=[KEYED, NDJSON], body=body
    )
    assert status == 200 and down[b"x-secondpass-rerank"] == b"ok", answer
    assert [h["_id"] for h in json.loads(answer)["responses"][0]["hits"]["hits"]] == ["4", "3", "2"]


@pytest.mark.parametrize(
    "query",
    [b"error_trace=true", b"error_trace", b"ERROR_TRACE=1", b"error%5Ftrace=true", b"q=x&error_trace=false",
     b"errorTrace=true", b"expand_wildcards=all", b"expand_wildcards=open,hidden", b"expand_wildcards=open%2Call",
     b"expand_wildcards=ALL", b"expandWildcards=all", b"expand_wildcards=open&expand_wildcards=all",
     b"index=.security", b"index=docs", b"INDEX=secret", b"source=%7B%7D", b"source_content_type=application/json"],
)  # fmt: skip
async def test_lent_mode_refuses_stack_traces_wildcards_into_hidden_indices_and_query_indices(
    query: bytes,
) -> None:
    recorder = Recorder()
    proxy = lent_proxy(recorder)
    for method, path in [
        ("POST", b"/docs/_search"),
        ("GET", b"/*/_search"),
        ("POST", b"/_msearch"),
    ]:
        status, down, answer = await call(proxy, method, path, headers=[KEYED], query=query)
        assert_engine_error(status, down, answer, 403)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "query",
    [b"expand_wildcards=open", b"expand_wildcards=open,closed", b"expand_wildcards=none",
     b"ignore_unavailable=true&allow_no_indices=false", b"_source=false&_source_includes=body",
     b"q=body:x&filter_path=hits.hits._id"],
)  # fmt: skip
async def test_lent_mode_keeps_ordinary_search_parameters(query: bytes) -> None:
    recorder = Recorder()
    proxy = lent_proxy(recorder)
    status, _, answer = await call(proxy, "GET", b"/*/_search", headers=[KEYED], query=query)
    assert status == 200, answer
    assert len(recorder.requests) == 1


LOOKUP = {"index": "secret", "id": "1", "path": "token"}
FOREIGN_BODIES = [
    {"query": {"terms": {"title": LOOKUP}}},
    {"query": {"bool": {"filter": [{"terms": {"title": LOOKUP}}]}}},
    {"query": {"constant_score": {"filter": {"bool": {"should": [{"terms": {"t": LOOKUP}}]}}}}},
    {"post_filter": {"terms": {"title": LOOKUP}}},
    {"query": {"terms": {"title": {"INDEX": "secret", "ID": "1", "path": "token"}}}},
    {"query": {"more_like_this": {"fields": ["t"], "like": [{"_index": "secret", "_id": "1"}]}}},
    {"query": {"pinned": {"docs": [{"_index": "secret", "_id": "1"}], "organic": {"match_all": {}}}}},
    {"query": {"geo_shape": {"loc": {"indexed_shape": {"index": "shapes", "id": "1", "path": "s"}}}}},
    {"query": {"percolate": {"field": "q", "index": "secret", "id": "1"}}},
    {"query": {"wrapper": {"query": "eyJ0ZXJtcyI6e319"}}},
    {"query": {"Wrapper": {"query": "eyJ0ZXJtcyI6e319"}}},
    {"knn": {"field": "v", "query_vector": [1.0], "k": 1, "filter": {"terms": {"t": LOOKUP}}}},
    {"aggs": {"a": {"filter": {"terms": {"t": LOOKUP}}}}},
    {"query": {"nested": {"path": "n", "query": {"terms": {"n.t": LOOKUP}}}}},
    {"runtime_mappings": {"leak": {"type": "lookup", "target_index": ".hsecret", "input_field": "ref",
                                   "target_field": "_id", "fetch_fields": ["secret"]}},
     "fields": ["leak"], "query": {"match": {"text": "cats"}}},
    {"runtime_mappings": {"x": {"type": "lookup", "TARGET_INDEX": "s*", "input_field": "r",
                                "target_field": "_id", "fetch_fields": [{"field": "*"}]}}},
    {"suggest": {"s": {"text": "x", "phrase": {"field": "t", "collate": {
        "query": {"source": '{"terms":{"t":{"index":"secret","id":"1","path":"p"}}}'}}}}}},
]
SAFE_BODIES = [
    {"query": {"terms": {"title": ["a", "b"]}}},
    {"query": {"term": {"_index": "docs"}}},
    {"query": {"ids": {"values": ["1", "2"]}}},
    {"query": {"match": {"body": "index id"}}, "size": 3, "_source": ["title"]},
    {"query": {"bool": {"must": [{"match": {"index": "x"}}], "filter": [{"term": {"id": 1}}]}}},
    {},
]


@pytest.mark.parametrize("body", FOREIGN_BODIES)
def test_bodies_reading_another_index_are_refused(body: dict[str, Any]) -> None:
    verdict = check_body_references(json.dumps(body).encode())
    assert isinstance(verdict, Refusal) and verdict.status == 403
    lines = ndjson('{"index":"docs"}', "{}", '{"index":"docs"}', json.dumps(body))
    assert isinstance(check_body_references(lines, ndjson=True), Refusal)


@pytest.mark.parametrize("body", SAFE_BODIES)
def test_bodies_within_their_index_pass(body: dict[str, Any]) -> None:
    assert check_body_references(json.dumps(body).encode()) is None


def test_unreadable_and_absurdly_deep_bodies_are_refused() -> None:
    assert isinstance(check_body_references(b"{not json"), Refusal)
    assert isinstance(check_body_references(b'{"a":1,"a":2}'), Refusal)  # duplicate keys
    assert isinstance(check_body_references(b'{"q":' * 400 + b"1" + b"}" * 400), Refusal)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [(b"/docs/_search", b"application/json"), (b"/_search", b"application/json"),
     (b"/docs/_count", b"application/json"), (b"/docs/_msearch", b"application/x-ndjson")],
)  # fmt: skip
@pytest.mark.parametrize("gzipped", [False, True])
async def test_lent_mode_refuses_cross_index_lookups_and_forwards_nothing(
    path: bytes, content_type: bytes, gzipped: bool
) -> None:
    import gzip

    recorder = Recorder()
    proxy = lent_proxy(recorder)
    query = json.dumps({"query": {"terms": {"title": LOOKUP}}})
    body = ndjson('{"index":"docs"}', query) if b"_msearch" in path else query.encode()
    headers = [KEYED, (b"content-type", content_type)]
    if gzipped:
        body = gzip.compress(body)
        headers.append((b"content-encoding", b"gzip"))
    status, down, answer = await call(proxy, "POST", path, headers=headers, body=body)
    assert_engine_error(status, down, answer, 403)
    assert recorder.requests == []


async def test_lent_mode_forwards_a_checked_count_body_unchanged() -> None:
    recorder = Recorder()
    proxy = lent_proxy(recorder)
    body = b'{"query":{"terms":{"title":["a","b"]}}}'
    status, _, answer = await call(proxy, "POST", b"/docs/_count", body=body,
                                   headers=[KEYED, (b"content-type", b"application/json")])  # fmt: skip
    assert status == 200, answer
    assert recorder.requests[0].content == body
