"""Engine JSON becomes hits one way, and a malformed hit is named and left out, never a crash."""

from __future__ import annotations

from typing import Any

import pytest

from secondpass.connectors import EngineHits, read_hits
from secondpass.connectors._query import hits_from_response


def good(doc_id: str, score: float | None = 1.0, **extra: Any) -> dict[str, Any]:
    return {"_index": "docs", "_id": doc_id, "_score": score, "_source": {"title": doc_id}, **extra}


def response(*hits: Any) -> dict[str, Any]:
    return {"hits": {"total": {"value": len(hits)}, "hits": list(hits)}}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("a string", "not an object"),
        (["a", "list"], "not an object"),
        ({"_index": "docs", "_score": 1.0}, "no _id"),
        ({"_index": "docs", "_id": None}, "no _id"),
        ({"_index": "docs", "_id": {"x": 1}}, "_id is not a string"),
        ({"_index": "docs", "_id": True}, "_id is not a string"),
        ({"_index": 3, "_id": "x"}, "_index is not a string"),
        ({"_index": "docs", "_id": "x", "_source": ["not", "an", "object"]}, "_source is not"),
        ({"_index": "docs", "_id": "x", "_source": "text"}, "_source is not an object"),
        ({"_index": "docs", "_id": "x", "_score": "2.5"}, "_score is not a number"),
        ({"_index": "docs", "_id": "x", "_score": False}, "_score is not a number"),
        ({"_index": "docs", "_id": "x", "_score": [1]}, "_score is not a number"),
    ],
)
def test_a_malformed_hit_is_left_out_and_named(bad: Any, reason: str) -> None:
    read = read_hits(response(good("a", 3.0), bad, good("b", 2.0)), ["title"])
    assert [(h.id, h.rank, h.score) for h in read.hits] == [("a", 1, 3.0), ("b", 2, 2.0)]
    assert len(read.malformed) == 1
    assert read.malformed[0].startswith("hit 2: ") and reason in read.malformed[0]


def test_well_formed_variants_are_read_not_refused() -> None:
    read = read_hits(
        response(
            {"_index": "docs", "_id": 7, "_score": 1},  # integer id and score, no _source
            {"_id": "n", "_score": None, "_source": None},  # no index, null score and source
        ),
        ["title"],
    )
    assert read.malformed == ()
    assert [(h.index, h.id, h.score, h.fields, dict(h.source)) for h in read.hits] == [
        ("docs", "7", 1.0, {"title": ""}, {}),
        ("", "n", None, {"title": ""}, {}),
    ]


@pytest.mark.parametrize(
    "body",
    [{}, {"hits": None}, {"hits": []}, {"hits": {"total": 0}}, {"hits": {"hits": None}}],
)
def test_a_response_without_hits_has_none(body: dict[str, Any]) -> None:
    assert read_hits(body, ["title"]) == EngineHits(())


def test_hits_that_are_not_a_list_are_reported() -> None:
    assert read_hits({"hits": {"hits": {"0": good("a")}}}, ["title"]) == EngineHits(
        (), ("hits.hits is not a list",)
    )


def test_a_field_reader_replaces_source_reading() -> None:
    read = read_hits(response(good("a")), lambda raw: {"passage": f"<{raw['_id']}>"})
    assert read.hits[0].fields == {"passage": "<a>"}


def test_connectors_log_what_they_left_out(caplog: pytest.LogCaptureFixture) -> None:
    hits = hits_from_response(response(good("a"), {"_source": {}}, 5), ["title"])
    assert [h.id for h in hits] == ["a"]
    assert "left out 2 malformed hit(s)" in caplog.text
    assert "hit 2: no _id" in caplog.text and "hit 3: not an object" in caplog.text
