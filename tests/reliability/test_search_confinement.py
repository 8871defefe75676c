"""``/v1/search`` cannot read outside its index or its configured fields.

The real ``secondpass serve`` process searches a ``docs`` index on a real engine
(each engine in turn); a ``secret`` index and an unconfigured ``internal`` field
of the docs hold values no client may learn. Each attack vector (terms lookup,
more_like_this, wrapper, query_string, aggregations, script fields, sorts,
metadata fields, ...) must get a 400 naming the JSON path of the offending part,
and no answer may carry a secret. The terms lookup is first sent straight to the
engine to prove the vector is real there. A legitimate filtered search still
works, and a hit's ``source`` holds only the configured fields.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.servers import EngineHandle
from tests.fixtures.service import ServiceProcess
from tests.reliability._common import temp_index

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TOKEN = "hunter2zebra"  # the secret value: in the secret index, and in each doc's unconfigured field
INTERNAL = "internalnote"
DOCS = [
    {"_id": "1", "title": "Cats", "text": "Cats sleep most of the day.", "lang": "en", "internal": f"{INTERNAL} {TOKEN}"},
    {"_id": "2", "title": "Katzen", "text": "Katzen schlafen viel, cats too.", "lang": "de", "internal": INTERNAL},
    {"_id": "3", "title": TOKEN, "text": "A title that equals the secret token, about cats.", "lang": "en", "internal": INTERNAL},
]
MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "text": {"type": "text"},
        "lang": {"type": "keyword"},
        "internal": {"type": "keyword"},
    }
}
SECRET_MAPPINGS = {"properties": {"token": {"type": "keyword"}}}


class Env:
    def __init__(self, service: ServiceProcess, engine: EngineHandle, docs: str, secret: str) -> None:
        self.service, self.engine, self.docs, self.secret = service, engine, docs, secret


@pytest.fixture(scope="module")
def env(engine: EngineHandle, service_factory: Callable[..., ServiceProcess]) -> Iterator[Env]:
    with temp_index(engine.url, DOCS, mappings=MAPPINGS) as docs, temp_index(
        engine.url, [{"_id": "1", "token": TOKEN}], mappings=SECRET_MAPPINGS
    ) as secret:
        service = service_factory(
            settings={
                "search_index": docs,
                "search_fields": ["title", "text"],
                "search_filter_fields": ["lang"],
                "engine": {"engine": engine.name, "hosts": [engine.url]},
            }
        )
        try:
            yield Env(service, engine, docs, secret)
        finally:
            service.stop()


def _lookup(secret: str) -> dict[str, Any]:
    return {"terms": {"title": {"index": secret, "id": "1", "path": "token"}}}


def _vectors(secret: str) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (request body, JSON path the 400 must name)."""
    lookup = _lookup(secret)
    wrapped = base64.b64encode(json.dumps({"bool": {"filter": [lookup]}}).encode()).decode()
    return {
        "terms lookup in filters (the reported attack)": ({"filters": [lookup]}, "filters[0].terms.title"),
        "terms lookup in a bool of the body": (
            {"body": {"query": {"bool": {"should": [{"match_all": {}}], "filter": {"constant_score": {"filter": lookup}}}}}},
            "body.query.bool.filter.constant_score.filter.terms.title",
        ),
        "terms lookup as a bare body clause": ({"body": lookup}, "body.terms.title"),
        "terms lookup in a post_filter": ({"body": {"query": {"match_all": {}}, "post_filter": lookup}}, "body.post_filter.terms.title"),
        "wrapper with base64 DSL": ({"body": {"query": {"wrapper": {"query": wrapped}}}}, "body.query.wrapper"),
        "more_like_this a secret document": (
            {"body": {"more_like_this": {"fields": ["title"], "like": [{"_index": secret, "_id": "1"}], "min_term_freq": 1, "min_doc_freq": 1}}},
            "body.more_like_this",
        ),
        "query_string naming a field": ({"body": {"query_string": {"query": f"internal:{TOKEN}"}}}, "body.query_string"),
        "term on an unconfigured field": ({"filters": [{"term": {"internal": TOKEN}}]}, "filters[0].term.internal"),
        "prefix probe on an unconfigured field": ({"filters": [{"bool": {"must": [{"prefix": {"internal": "hunt"}}]}}]}, "filters[0].bool.must[0].prefix.internal"),
        "term on _index": ({"filters": [{"term": {"_index": secret}}]}, "filters[0].term._index"),
        "match on a wildcard field": ({"body": {"match": {"*": TOKEN}}}, 'body.match["*"]'),
        "aggregation over an unconfigured field": ({"body": {"query": {"match_all": {}}, "aggs": {"t": {"terms": {"field": "internal"}}}}}, "body.aggs"),
        "script_fields": ({"body": {"query": {"match_all": {}}, "script_fields": {"x": {"script": "params._source"}}}}, "body.script_fields"),
        "docvalue_fields": ({"body": {"query": {"match_all": {}}, "docvalue_fields": ["internal"]}}, "body.docvalue_fields"),
        "_source widened by the caller": ({"body": {"query": {"match_all": {}}, "_source": True}}, "body._source"),
        "script sort": ({"body": {"query": {"match_all": {}}, "sort": {"_script": {"type": "string", "script": "doc['internal'].value"}}}}, "body.sort._script"),
        "script query": ({"filters": [{"script": {"script": {"source": "doc['internal'].value.length() > 3"}}}]}, "filters[0].script"),
        "indices_boost naming another index": ({"body": {"query": {"match_all": {}}, "indices_boost": [{secret: 2}]}}, "body.indices_boost"),
        "key case trick": ({"filters": [{"Terms": {"title": [TOKEN]}}]}, "filters[0].Terms"),
    }


def _leaks(text: str) -> bool:
    return TOKEN in text or INTERNAL in text


def test_the_terms_lookup_reads_the_secret_index_on_the_bare_engine(env: Env) -> None:
    """The vector is real: straight to the engine, the lookup finds the doc titled with the token."""
    r = httpx.post(f"{env.engine.url}/{env.docs}/_search", json={"query": _lookup(env.secret)}, timeout=30)
    assert r.status_code == 200, r.text
    assert [h["_id"] for h in r.json()["hits"]["hits"]] == ["3"]


def test_attacks_get_400_naming_the_path_and_never_return_secrets(env: Env, figures: Any) -> None:
    vectors = _vectors(env.secret)
    answers: dict[str, httpx.Response] = {}
    with env.service.client() as client:
        for name, (payload, _) in vectors.items():
            answers[name] = client.post("/v1/search", json={"query": "cats", "k": 3, **payload})
    leaked = [name for name, r in answers.items() if _leaks(r.text)]
    for name, (_, path) in vectors.items():
        r = answers[name]
        assert r.status_code == 400, (name, r.status_code, r.text)
        body = r.json()
        assert body["error_type"] == "query_error" and body["field"] == path, (name, body)
        assert path in body["message"], (name, body)
    assert leaked == []
    figures.add(
        f"search confinement ({env.engine.name})",
        "attack vectors refused / secrets returned",
        len(vectors),
        f"vectors, {len(leaked)} leaks",
    )


def test_a_legitimate_filtered_search_works_and_returns_only_configured_fields(env: Env) -> None:
    with env.service.client() as client:
        filtered = client.post("/v1/search", json={"query": "cats", "k": 5, "filters": [{"term": {"lang": "en"}}]})
        own_body = client.post(
            "/v1/search",
            json={"query": "cats", "k": 5, "body": {"query": {"bool": {"must": {"match": {"text": "cats"}}, "must_not": [{"term": {"lang": "de"}}]}}}},
        )
        everything = client.post("/v1/search", json={"query": "cats", "k": 5})
    for r in (filtered, own_body, everything):
        assert r.status_code == 200, r.text
        # (doc 3's title is the token on purpose; the unconfigured field must never show)
        assert INTERNAL not in r.text and '"internal"' not in r.text
    assert {h["id"] for h in filtered.json()["hits"]} == {"1", "3"}
    assert {h["id"] for h in own_body.json()["hits"]} == {"1", "3"}
    hits = everything.json()["hits"]
    assert {h["id"] for h in hits} == {"1", "2", "3"}
    for hit in hits:
        assert set(hit["source"]) == {"title", "text", "lang"}, hit["source"]


def test_refusal_happens_before_any_engine_call(env: Env) -> None:
    """A refused request never reaches the engine: its search counter does not move."""

    def searches() -> int:
        stats = httpx.get(f"{env.engine.url}/{env.docs}/_stats/search", timeout=30).json()
        return int(stats["_all"]["primaries"]["search"]["query_total"])

    before = searches()
    with env.service.client() as client:
        for payload, _ in _vectors(env.secret).values():
            assert client.post("/v1/search", json={"query": "cats", **payload}).status_code == 400
    assert searches() == before
