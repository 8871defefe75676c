"""Request bodies are pure data: check their shape and that user text stays a value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secondpass.connectors import extract_fields
from secondpass.connectors._query import (
    caller_body,
    hits_from_response,
    index_body,
    knn_body,
    lexical_body,
    search_body,
    server_timeout,
    source_filter,
)
from secondpass.errors import ConfigurationError
from secondpass.types import KnnQuery, SearchRequest

FILTER = {"term": {"lang": "en"}}


def _paths_of(value: Any, needle: str, path: str = "") -> list[str]:
    """Every JSON path in ``value`` whose string value or key equals ``needle``."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == needle:
                found.append(f"{path}/{k} (key)")
            found += _paths_of(v, needle, f"{path}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths_of(v, needle, f"{path}/{i}")
    elif value == needle:
        found.append(path)
    return found


def test_lexical_body_is_multi_match_with_boosts_filters_size_source_and_timeout() -> None:
    body = lexical_body(
        SearchRequest("cats and dogs", size=7, filters=[FILTER]),
        fields=["title^2", "body"],
        source={"includes": ["body", "title"]},
        timeout="1500ms",
    )
    assert body == {
        "query": {
            "bool": {
                "must": [
                    {"multi_match": {"query": "cats and dogs", "fields": ["title^2", "body"]}}
                ],
                "filter": [FILTER],
            }
        },
        "size": 7,
        "_source": {"includes": ["body", "title"]},
        "timeout": "1500ms",
        "track_total_hits": False,
    }


def test_default_size_is_100_and_no_filter_clause_without_filters() -> None:
    body = lexical_body(SearchRequest("x"), fields=["body"])
    assert body["size"] == 100
    assert "filter" not in body["query"]["bool"]


@given(st.text(max_size=200))
def test_user_text_is_only_ever_a_multi_match_value(text: str) -> None:
    body = lexical_body(SearchRequest(text, filters=[FILTER]), fields=["title^2", "body"])
    serialised = json.dumps(body)
    assert "query_string" not in serialised
    if text not in {
        "",
        "must",
        "bool",
        "filter",
        "query",
        "fields",
        "body",
        "title^2",
        "size",
        "_source",
        "lang",
        "en",
        "term",
        "multi_match",
        "track_total_hits",
    }:
        assert _paths_of(body, text) == ["/query/bool/must/0/multi_match/query"]
    assert body["query"]["bool"]["must"][0]["multi_match"]["query"] == text


@pytest.mark.parametrize(
    "hostile", ["title:secret OR *", '{"match_all": {}}', "a AND (b OR c)~2 ^9"]
)
def test_query_syntax_in_user_text_is_not_interpreted(hostile: str) -> None:
    body = lexical_body(SearchRequest(hostile), fields=["body"])
    assert body["query"]["bool"]["must"] == [
        {"multi_match": {"query": hostile, "fields": ["body"]}}
    ]


def test_non_string_query_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="query must be a string"):
        lexical_body(SearchRequest({"match_all": {}}), fields=["body"])  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, True, 2.5])
def test_bad_sizes_are_refused(size: Any) -> None:
    with pytest.raises(ConfigurationError, match="size"):
        lexical_body(SearchRequest("x", size=size), fields=["body"])


def test_filters_must_be_clauses() -> None:
    with pytest.raises(ConfigurationError, match="filter"):
        lexical_body(SearchRequest("x", filters=["lang:en"]), fields=["body"])  # type: ignore[list-item]


def test_complete_caller_body_keeps_everything_but_size_and_source() -> None:
    given_body = {
        "query": {"match": {"body": "x"}},
        "sort": ["_score"],
        "size": 3,
        "_source": False,
        "timeout": "5s",
    }
    body = caller_body(
        SearchRequest("rerank me", size=20, body=given_body), source=True, timeout="1s"
    )
    assert body == {
        "query": {"match": {"body": "x"}},
        "sort": ["_score"],
        "size": 20,
        "_source": True,
        "timeout": "5s",
    }
    assert given_body["size"] == 3  # the caller's mapping is not modified


def test_bare_query_clause_is_wrapped_and_filters_restrict_it_in_filter_context() -> None:
    body = caller_body(SearchRequest("q", size=5, body={"match": {"body": "x"}}, filters=[FILTER]))
    assert body["query"] == {"bool": {"must": [{"match": {"body": "x"}}], "filter": [FILTER]}}
    assert body["size"] == 5


def test_filters_cannot_silently_miss_a_knn_or_retriever_body() -> None:
    with pytest.raises(ConfigurationError, match="knn"):
        caller_body(SearchRequest("q", body={"knn": {"field": "v"}}, filters=[FILTER]))


def test_body_and_knn_together_are_refused() -> None:
    request = SearchRequest("q", body={"match_all": {}}, knn=KnnQuery("v", (1.0,)))
    with pytest.raises(ConfigurationError, match="either"):
        search_body(request, engine="opensearch", fields=["b"], text_fields=["b"])


def test_elasticsearch_knn_is_top_level_with_filter_list() -> None:
    request = SearchRequest(
        "q", size=10, filters=[FILTER], knn=KnnQuery("vec", (0.5, 1), k=10, num_candidates=50)
    )
    body = knn_body(request, engine="elasticsearch")
    assert body["knn"] == {
        "field": "vec",
        "query_vector": [0.5, 1.0],
        "k": 10,
        "num_candidates": 50,
        "filter": [FILTER],
    }
    assert "query" not in body
    assert body["size"] == 10


def test_opensearch_knn_is_a_knn_query_with_filter() -> None:
    request = SearchRequest("q", size=10, filters=[FILTER], knn=KnnQuery("vec", (0.5, 1), k=10))
    body = knn_body(request, engine="opensearch")
    assert body["query"] == {
        "knn": {"vec": {"vector": [0.5, 1.0], "k": 10, "filter": {"bool": {"filter": [FILTER]}}}}
    }


@pytest.mark.parametrize(
    ("knn", "match"),
    [
        (KnnQuery("", (1.0,)), "field"),
        (KnnQuery("v", ()), "empty"),
        (KnnQuery("v", (1.0,), k=0), "at least 1"),
        (KnnQuery("v", (1.0,), k=10, num_candidates=5), "num_candidates"),
    ],
)
def test_bad_knn_requests_are_refused(knn: KnnQuery, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        knn_body(SearchRequest("q", knn=knn), engine="elasticsearch")


def test_search_body_dispatches_and_uses_source_filter_and_timeout() -> None:
    args = {
        "engine": "elasticsearch",
        "fields": ["title^3", "body"],
        "text_fields": ["title", "body"],
    }
    lexical = search_body(SearchRequest("q"), source_includes=["url"], timeout_s=2.5, **args)  # type: ignore[arg-type]
    assert lexical["_source"] == {"includes": ["body", "title", "url"]}
    assert lexical["timeout"] == "2500ms"
    assert "multi_match" in json.dumps(lexical)
    assert "knn" in search_body(SearchRequest("q", knn=KnnQuery("v", (1.0,))), **args)  # type: ignore[arg-type]
    assert search_body(SearchRequest("q", body={"term": {"a": 1}}), **args)["query"] == {
        "term": {"a": 1}
    }  # type: ignore[arg-type]


def test_source_filter_and_timeout_formatting() -> None:
    assert source_filter(["a"], None) is True
    assert source_filter(["b", "a"], ["a", "c"]) == {"includes": ["a", "b", "c"]}
    assert server_timeout(None) is None
    assert server_timeout(0.0001) == "1ms"


def test_extract_fields_reads_dotted_paths_lists_and_missing_fields() -> None:
    source = {"title": "Cats", "n": 3, "meta": {"tags": ["a", None, "b"]}, "dotted.key": "flat"}
    assert extract_fields(
        source, ["title", "n", "meta.tags", "dotted.key", "absent", "meta.none"]
    ) == {
        "title": "Cats",
        "n": "3",
        "meta.tags": "a b",
        "dotted.key": "flat",
        "absent": "",
        "meta.none": "",
    }


def test_hits_keep_engine_order_with_one_based_ranks(caplog: pytest.LogCaptureFixture) -> None:
    response = {
        "timed_out": True,
        "hits": {
            "hits": [
                {"_index": "docs", "_id": "b", "_score": 2.0, "_source": {"title": "B", "x": 1}},
                {"_index": "docs", "_id": 7, "_score": None, "_source": {"title": "A"}},
            ]
        },
    }
    hits = hits_from_response(response, ["title"])
    assert [(h.id, h.rank, h.score) for h in hits] == [("b", 1, 2.0), ("7", 2, None)]
    assert hits[0].fields == {"title": "B"} and hits[0].source == {"title": "B", "x": 1}
    assert "timed out" in caplog.text
    assert hits_from_response({"hits": {"hits": []}}, ["title"]) == []


def test_index_body_elasticsearch_dense_vector() -> None:
    body = index_body(
        engine="elasticsearch",
        text_fields=["title"],
        keyword_fields=["lang"],
        vector_field="vec",
        dims=4,
    )
    assert body == {
        "mappings": {
            "properties": {
                "title": {"type": "text"},
                "lang": {"type": "keyword"},
                "vec": {"type": "dense_vector", "dims": 4, "index": True, "similarity": "cosine"},
            }
        }
    }


def test_index_body_opensearch_knn_vector() -> None:
    body = index_body(
        engine="opensearch",
        text_fields=["title"],
        vector_field="vec",
        dims=4,
        similarity="dot_product",
    )
    assert body["settings"] == {"index": {"knn": True}}
    assert body["mappings"]["properties"]["vec"] == {
        "type": "knn_vector",
        "dimension": 4,
        "method": {"name": "hnsw", "engine": "lucene", "space_type": "innerproduct"},
    }


def test_index_body_without_vectors_and_bad_vector_settings() -> None:
    assert index_body(engine="opensearch", text_fields=["t"]) == {
        "mappings": {"properties": {"t": {"type": "text"}}}
    }
    with pytest.raises(ConfigurationError, match="dims"):
        index_body(engine="opensearch", text_fields=["t"], vector_field="v")
    with pytest.raises(ConfigurationError, match="similarity"):
        index_body(
            engine="elasticsearch",
            text_fields=["t"],
            vector_field="v",
            dims=3,
            similarity="hamming",
        )
