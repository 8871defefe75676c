"""The proxy ASGI app against a scripted upstream (httpx.MockTransport) and a fake scorer.

No servers: these pin the byte-level contract (what goes up, what comes down) fast.
The same behaviour against real engines and the official clients is in
tests/integration/test_proxy.py.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import pytest

from secondpass.proxy import ProxySettings, RerankProxy
from secondpass.types import PassageScore

UPSTREAM = "http://engine.test:9200"


class NumberScorer:
    """Scores a passage by the number in it: higher numbers first (the reverse of the engine)."""

    fingerprint = "number-scorer"

    def __init__(self, *, fail: bool = False, delay_s: float = 0.0) -> None:
        self.fail = fail
        self.delay_s = delay_s
        self.calls: list[tuple[str, list[str]]] = []

    def score(
        self, query: str, passages: Sequence[str], *, timings: dict | None = None
    ) -> list[PassageScore]:
        self.calls.append((query, list(passages)))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        out = []
        for text in passages:
            number = float(re.findall(r"\d+", text)[-1])
            out.append(PassageScore(raw=number, normalized=number / 1000))
        return out

    def score_pairs(
        self, pairs: Sequence[tuple[str, str]], *, timings: dict | None = None
    ) -> list[PassageScore]:
        return [self.score(q, [p])[0] for q, p in pairs]


def engine_hits(n: int, start: int = 0) -> list[dict]:
    return [
        {
            "_index": "docs",
            "_id": str(i),
            "_score": float(100 - i),
            "_source": {"title": f"t{i}", "body": f"b{i}"},
        }
        for i in range(start, start + n)
    ]


def search_answer(body: dict) -> dict:
    size = body.get("size", 10)
    offset = body.get("from", 0)
    return {
        "took": 4,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {"total": {"value": 30, "relation": "eq"}, "max_score": 100.0,
                 "hits": engine_hits(max(0, min(size, 30 - offset)), offset)},
        "aggregations": {"n": {"value": 30}},
    }  # fmt: skip


class _Body(httpx.AsyncByteStream):
    """An unread async body, as a real connection gives (httpx reads bytes content eagerly)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):  # type: ignore[override]
        yield self.data


class Upstream:
    """A scripted engine: records every request, answers searches from a 30-doc index."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.handler = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answer(request)
        return httpx.Response(
            answer.status_code, headers=answer.headers.raw, stream=_Body(answer.content)
        )

    def answer(self, request: httpx.Request) -> httpx.Response:
        if self.handler is not None:
            return self.handler(request)
        if request.url.path.endswith("/_msearch"):
            lines = [json.loads(line) for line in request.content.splitlines() if line.strip()]
            answers = [{**search_answer(b), "status": 200} for b in lines[1::2]]
            return httpx.Response(200, json={"took": 9, "responses": answers})
        if request.url.path.endswith("/_search"):
            body = json.loads(request.content or b"{}")
            return httpx.Response(
                200, json=search_answer(body), headers={"X-Elastic-Product": "Elasticsearch"}
            )
        return httpx.Response(201, content=b'{"result":"created"}',
                              headers=[("content-type", "application/json"), ("warning", "a"), ("warning", "b")])  # fmt: skip


def make_client(
    upstream: Upstream, scorer: NumberScorer | None = None, **settings: object
) -> httpx.AsyncClient:
    config = ProxySettings(
        upstream=UPSTREAM,
        window=10,
        indices={"docs": {"fields": ["title", "body"], "template": "{body}"}},
        rerank={"rank_by": "raw"},
        **settings,  # type: ignore[arg-type]
    )
    proxy = RerankProxy(
        config, scorer=scorer or NumberScorer(), transport=httpx.MockTransport(upstream)
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://proxy.test")


MATCH = {"query": {"match": {"body": "cats"}}}


async def test_search_is_reranked_over_the_window_and_cut_to_the_page() -> None:
    upstream = Upstream()
    async with make_client(upstream) as client:
        response = await client.post(
            "/docs/_search?typed_keys=true",
            json={**MATCH, "from": 2, "size": 3},
            headers={"accept-encoding": "identity"},  # gzip: tests/unit/test_proxy_discovery.py
        )
    assert response.status_code == 200
    assert response.headers["x-secondpass-rerank"] == "ok"
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    sent = json.loads(upstream.requests[0].content)
    assert (sent["from"], sent["size"]) == (0, 10)
    assert upstream.requests[0].url.query == b"typed_keys=true"
    body = response.json()
    assert [h["_id"] for h in body["hits"]["hits"]] == [
        "7",
        "6",
        "5",
    ]  # window 0..9 reversed, page 2..4
    assert [h["_score"] for h in body["hits"]["hits"]] == [7.0, 6.0, 5.0]  # rerank.rank_by: raw
    assert body["hits"]["max_score"] == 9.0
    assert body["hits"]["total"] == {"value": 30, "relation": "eq"}
    assert body["aggregations"] == {"n": {"value": 30}}
    assert body["took"] >= 4
    assert body["hits"]["hits"][0]["fields"] == {
        "_secondpass.first_stage_score": [93.0], "_secondpass.first_stage_rank": [8]
    }  # fmt: skip
    assert int(response.headers["content-length"]) == len(response.content)
    timing = dict(
        part.strip().split(";dur=") for part in response.headers["server-timing"].split(",")
    )
    assert set(timing) == {"engine", "rerank", "total"}
    assert float(timing["total"]) + 0.2 >= float(timing["engine"]) + float(
        timing["rerank"]
    )  # 0.1 ms rounding


async def test_non_search_requests_pass_through_byte_for_byte() -> None:
    upstream = Upstream()
    payload = b'{"title": "caf\xc3\xa9",   "x": 1}'
    async with make_client(upstream) as client:
        response = await client.put(
            "/my%2Findex/_doc/a%20b?refresh=true&secondpass_rerank=off",
            content=payload,
            headers={"Authorization": "Basic dXNlcjpwdw==", "Content-Type": "application/json",
                     "X-Opaque-Id": "abc", "X-SecondPass-Query": "not forwarded"},
        )  # fmt: skip
    sent = upstream.requests[0]
    assert sent.method == "PUT"
    assert sent.url.raw_path == b"/my%2Findex/_doc/a%20b?refresh=true"
    assert sent.content == payload
    assert sent.headers["authorization"] == "Basic dXNlcjpwdw=="
    assert sent.headers["x-opaque-id"] == "abc"
    assert "x-secondpass-query" not in sent.headers
    assert response.status_code == 201
    assert response.content == b'{"result":"created"}'
    assert response.headers.get_list("warning") == ["a", "b"]
    assert "x-secondpass-rerank" not in response.headers


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        ({**MATCH, "sort": [{"date": "desc"}]}, {}, "sorted by a field"),
        ({**MATCH, "size": 0}, {}, "size is 0"),
        (MATCH, {"X-SecondPass-Rerank": "off"}, "disabled by the client"),
        ({"query": {"term": {"tag": "x"}}}, {}, "no query text found (set X-SecondPass-Query)"),
    ],
)
async def test_searches_that_are_not_reranked_reach_the_engine_untouched(
    body: dict, headers: dict, reason: str
) -> None:
    upstream = Upstream()
    raw = json.dumps(body).encode()
    async with make_client(upstream) as client:
        response = await client.post("/docs/_search", content=raw,
                                     headers={"content-type": "application/json", **headers})  # fmt: skip
    assert upstream.requests[0].content == raw
    assert "x-secondpass-rerank" not in upstream.requests[0].headers
    assert response.headers["x-secondpass-rerank"] == f"skipped; reason={reason}"
    assert response.json() == search_answer(body)


async def test_query_header_supplies_the_text_when_the_dsl_has_none() -> None:
    scorer = NumberScorer()
    async with make_client(Upstream(), scorer) as client:
        response = await client.post("/docs/_search", json={"query": {"term": {"tag": "x"}}},
                                     headers={"X-SecondPass-Query": "caf%C3%A9"})  # fmt: skip
    assert response.headers["x-secondpass-rerank"] == "ok"
    assert scorer.calls[0][0] == "café"


@pytest.mark.parametrize(("scorer", "status"), [
    (NumberScorer(fail=True), "failed; reason=scoring failed: RuntimeError: model exploded"),
    (NumberScorer(delay_s=0.5), "failed; reason=reranking did not finish within the deadline of 50 ms"),
])  # fmt: skip
async def test_a_failed_or_late_rerank_answers_what_the_engine_would_have(
    scorer: NumberScorer, status: str
) -> None:
    body = {**MATCH, "from": 1, "size": 4, "_source": ["title"]}
    async with make_client(Upstream(), scorer, deadline_ms=50) as client:
        response = await client.post("/docs/_search", json=body)
    assert response.status_code == 200
    assert response.headers["x-secondpass-rerank"] == status
    assert response.json() == search_answer(body)


async def test_engine_errors_reach_the_client_unchanged() -> None:
    error = {"error": {"type": "index_not_found_exception"}, "status": 404}
    upstream = Upstream(lambda request: httpx.Response(404, json=error))
    async with make_client(upstream) as client:
        response = await client.post("/docs/_search", json=MATCH)
    assert response.status_code == 404
    assert response.json() == error
    assert response.headers["x-secondpass-rerank"] == "skipped; reason=engine answered 404"


async def test_a_rejected_window_request_is_replayed_as_the_client_wrote_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body.get("size") == 10:  # our window: refuse it
            return httpx.Response(400, json={"error": "window too large", "status": 400})
        return httpx.Response(200, json=search_answer(body))

    upstream = Upstream(handler)
    raw = json.dumps({**MATCH, "size": 2}).encode()
    async with make_client(upstream) as client:
        response = await client.post(
            "/docs/_search", content=raw, headers={"content-type": "application/json"}
        )
    assert [r.content for r in upstream.requests][1] == raw
    assert response.status_code == 200
    assert [h["_id"] for h in response.json()["hits"]["hits"]] == ["0", "1"]
    assert response.headers["x-secondpass-rerank"].startswith("skipped; reason=engine rejected")


async def test_an_unreachable_engine_is_a_gateway_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with make_client(Upstream(refuse)) as client:
        response = await client.get("/_cat/indices")
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "secondpass_proxy_exception"


async def test_msearch_reranks_each_search() -> None:
    upstream = Upstream()
    lines = [
        {"index": "docs"},
        {**MATCH, "size": 2},
        {"index": "docs"},
        {**MATCH, "size": 0},
        {"index": "logs"},
        MATCH,
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    async with make_client(upstream) as client:
        response = await client.post(
            "/_msearch", content=data, headers={"content-type": "application/x-ndjson"}
        )
    sent = [json.loads(line) for line in upstream.requests[0].content.splitlines()]
    assert sent[1]["size"] == 10 and sent[3] == {**MATCH, "size": 0} and sent[5] == MATCH
    responses = response.json()["responses"]
    assert [h["_id"] for h in responses[0]["hits"]["hits"]] == ["9", "8"]
    assert responses[1]["hits"]["hits"] == []  # size 0 untouched
    assert (
        responses[2]["hits"]["hits"] == search_answer(MATCH)["hits"]["hits"]
    )  # no config for logs
    assert response.headers["x-secondpass-rerank"] == (
        "ok, skipped; reason=size is 0, skipped; reason=no passage fields configured for this index"
    )


async def test_compressed_search_bodies_are_read() -> None:
    upstream = Upstream()
    async with make_client(upstream) as client:
        response = await client.post(
            "/docs/_search",
            content=gzip.compress(json.dumps(MATCH).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert response.headers["x-secondpass-rerank"] == "ok"
    assert "content-encoding" not in upstream.requests[0].headers


async def test_lent_credentials_replace_the_clients_own_and_are_never_added_by_default() -> None:
    lent = Upstream()
    async with make_client(lent, username="proxy", password="secret", lend_credentials=True) as c:
        await c.get("/docs/_count")
        await c.get("/docs/_count", headers={"Authorization": "ApiKey client"})
    assert [r.headers["authorization"] for r in lent.requests] == ["Basic cHJveHk6c2VjcmV0"] * 2
    bare = Upstream()
    async with make_client(bare) as client:
        await client.get("/_cluster/health")
        await client.get("/_cluster/health", headers={"Authorization": "ApiKey client"})
    assert "authorization" not in bare.requests[0].headers
    assert bare.requests[1].headers["authorization"] == "ApiKey client"


def test_cli_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from secondpass.cli import build_parser
    from secondpass.commands.proxy import overrides_from_args

    monkeypatch.setenv("SECONDPASS_PROXY_PASSWORD", "from-env")
    args = build_parser().parse_args(
        ["proxy", "--upstream", "https://search.internal:9200/", "--listen", "0.0.0.0:9300",
         "--index", "docs=title, body", "--index-template", "docs={title}: {body}",
         "--index", "logs-*=message", "--window", "30", "--deadline-ms", "none",
         "--username", "reader", "--rerank-device", "cpu", "--no-verify-certs"]
    )  # fmt: skip
    settings = ProxySettings.load(None, **overrides_from_args(args))
    assert (settings.upstream, settings.host, settings.port) == (
        "https://search.internal:9200",
        "0.0.0.0",
        9300,
    )
    assert settings.indices["docs"].fields == ["title", "body"]
    assert settings.indices["docs"].template == "{title}: {body}"
    assert settings.indices["logs-*"].template is None
    assert (settings.window, settings.deadline_ms, settings.verify_certs) == (30, None, False)
    assert settings.rerank.device == "cpu"
    assert settings.password is not None and settings.password.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings)


def test_the_documented_config_file_loads(tmp_path: Path) -> None:
    from tests.docs_examples import DOCS

    text = (DOCS / "proxy.md").read_text(encoding="utf-8")
    toml = text.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "proxy.toml"
    path.write_text(toml, encoding="utf-8")
    settings = ProxySettings.load(path)
    assert settings.indices["products"].fields == ["name", "description"]
    assert settings.rerank.device == "cuda" and settings.window == 100


@pytest.mark.parametrize(
    "overrides",
    [
        {"upstream": "search.internal:9200"},
        {"listen": "9201"},
        {"indices": {"docs": {"fields": []}}},
        {"indices": {"docs": {"fields": ["a"], "template": "{a.__class__}"}}},
    ],
)
def test_invalid_settings_name_the_field(overrides: dict) -> None:
    from secondpass.errors import ConfigurationError

    with pytest.raises(
        ConfigurationError, match="invalid proxy settings: (upstream|listen|indices)"
    ):
        ProxySettings.load(None, **overrides)
