"""The proxy's pure rules: when to rerank, the query text, the window rewrite, page cuts."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secondpass.proxy import rules
from secondpass.proxy.rules import IndexText, IndexTextRules, SearchPlan, Skip
from secondpass.types import Hit, PassageScore, RankedHit, SearchResult

WINDOW = 50
FIELDS = ("title", "body")


def params(raw: bytes = b"") -> list[rules.QueryParam]:
    return rules.split_query(raw)


def plan(
    body: dict, raw: bytes = b"", *, header: str | None = None, window: int = WINDOW
) -> SearchPlan:
    result = rules.plan_search(
        body, params(raw), window=window, text_fields=FIELDS, header_query=header
    )
    assert isinstance(result, SearchPlan), result
    return result


MATCH = {"query": {"match": {"body": "what do cats eat"}}}


# ------------------------------------------------------------------ pass-through


@pytest.mark.parametrize(
    ("body", "raw", "reason"),
    [
        ({**MATCH, "size": 0}, b"", "size is 0"),
        (MATCH, b"size=0", "size is 0"),
        ({**MATCH, "sort": [{"date": "desc"}]}, b"", "sorted by a field"),
        ({**MATCH, "sort": ["_score", "date"]}, b"", "sorted by a field"),
        ({**MATCH, "sort": [{"_score": "asc"}]}, b"", "sorted by a field"),
        ({**MATCH, "sort": "date", "track_scores": False}, b"", "sorted by a field"),
        (MATCH, b"sort=date:asc", "sorted by a field"),
        (MATCH, b"scroll=1m", "scroll"),
        ({**MATCH, "search_after": [1.0, "a"]}, b"", "search_after"),
        ({**MATCH, "pit": {"id": "abc", "keep_alive": "1m"}}, b"", "point in time (pit)"),
        ({"retriever": {"standard": MATCH}}, b"", "retriever API"),
        ({**MATCH, "stored_fields": "_none_"}, b"", "stored_fields is _none_"),
        ({**MATCH, "from": 50}, b"", "page starts at 50, past the rerank window of 50"),
        ({**MATCH, "size": "ten"}, b"", "size is not a non-negative integer"),
        ({**MATCH, "from": -1}, b"", "from is not a non-negative integer"),
        (MATCH, b"source=%7B%7D", "request body given in the URL (source=)"),
        (MATCH, b"filter_path=hits.hits._id", "filter_path"),
    ],
)
def test_searches_that_cannot_be_reranked_pass_through(body: dict, raw: bytes, reason: str) -> None:
    assert rules.plan_search(body, params(raw), window=WINDOW, text_fields=FIELDS) == Skip(reason)


@pytest.mark.parametrize(
    "sort",
    ["_score", ["_score"], [{"_score": "desc"}], {"_score": {"order": "desc"}}, []],
)
def test_sorting_by_score_descending_is_still_reranked(sort: object) -> None:
    assert isinstance(plan({**MATCH, "sort": sort}), SearchPlan)
    assert isinstance(plan(MATCH, b"sort=_score:desc"), SearchPlan)


def test_no_configured_fields_or_no_text_pass_through_with_a_reason() -> None:
    assert rules.plan_search(MATCH, [], window=WINDOW, text_fields=()) == Skip(
        "no passage fields configured for this index"
    )
    no_text = {"query": {"term": {"tag": "cats"}}}
    assert rules.plan_search(no_text, [], window=WINDOW, text_fields=FIELDS) == Skip(
        "no query text found (set X-SecondPass-Query)"
    )
    assert isinstance(plan(no_text, header="cats"), SearchPlan)


@pytest.mark.parametrize("value", ["off", "false", "0", "OFF"])
def test_client_opt_out_by_header_or_parameter(value: str) -> None:
    assert rules.opted_out(params(f"secondpass_rerank={value}".encode()), None)
    assert rules.opted_out(params(), value)
    assert not rules.opted_out(params(b"secondpass_rerank=on"), "on")
    assert not rules.opted_out(params(), None)


def test_own_parameters_are_stripped_and_other_bytes_kept_verbatim() -> None:
    raw = b"q=caf%C3%A9+bar&secondpass_rerank=off&filter_path=hits.hits._id&x"
    assert rules.strip_own_params(raw) == b"q=caf%C3%A9+bar&filter_path=hits.hits._id&x"
    assert rules.strip_own_params(b"a=1&b=%2F") == b"a=1&b=%2F"


# -------------------------------------------------------------------- query text


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"match": {"body": "cats"}}, "cats"),
        ({"match": {"body": {"query": "cats", "operator": "and"}}}, "cats"),
        ({"match_phrase": {"body": "black cat"}}, "black cat"),
        ({"match_phrase_prefix": {"body": {"query": "black ca"}}}, "black ca"),
        ({"multi_match": {"query": "cats", "fields": ["title^2", "body"]}}, "cats"),
        ({"combined_fields": {"query": "cats", "fields": ["title"]}}, "cats"),
        ({"simple_query_string": {"query": '"fried eggs" +(eggplant | potato) -frittata'}},
         "fried eggs eggplant potato"),
        ({"query_string": {"query": "title:(cats AND dogs) OR body:mice~2"}}, "cats dogs mice"),
        ({"bool": {"must": {"match": {"title": "cats"}},
                   "should": [{"match": {"body": "food"}}, {"match": {"body": "cats"}}],
                   "filter": [{"match": {"lang": "en"}}],
                   "must_not": [{"match": {"body": "dogs"}}]}}, "cats food"),
        ({"function_score": {"query": {"dis_max": {"queries": [{"match": {"t": "a b"}}]}}}}, "a b"),
        ({"boosting": {"positive": {"match": {"t": "good"}}, "negative": {"match": {"t": "bad"}}}},
         "good"),
        ({"nested": {"path": "c", "query": {"match": {"c.text": "inner"}}}}, "inner"),
        ({"constant_score": {"filter": {"match": {"t": "x"}}}}, None),
        ({"term": {"tag": "x"}}, None),
        ({"match_all": {}}, None),
        ({"neural": {"emb": {"query_text": "semantic words", "k": 5}}}, "semantic words"),
    ],
)  # fmt: skip
def test_query_text_comes_from_the_scoring_clauses(query: dict, text: str | None) -> None:
    assert rules.extract_query_text({"query": query}) == text


def test_header_wins_and_is_percent_decoded_and_q_is_the_last_resort() -> None:
    assert rules.extract_query_text(MATCH, header="caf%C3%A9 au lait") == "café au lait"
    assert rules.extract_query_text(MATCH, header="1+1 = 2") == "1+1 = 2"
    assert rules.extract_query_text(MATCH, header="  ") == "what do cats eat"
    assert rules.extract_query_text({}, params(b"q=title%3Acats+-dogs")) == "cats"
    assert rules.extract_query_text({}) is None


def test_clean_query_syntax_keeps_words_only() -> None:
    assert rules.clean_query_syntax('title:(cats AND "big dogs")^2 -mice') == "cats big dogs"
    assert rules.clean_query_syntax("NOT spam || ham*") == "ham"


# ----------------------------------------------------------------------- rewrite


def test_window_rewrite_asks_for_the_window_and_never_touches_the_callers_body() -> None:
    body = {**MATCH, "from": 10, "size": 5, "aggs": {"n": {"terms": {"field": "tag"}}}}
    original = copy.deepcopy(body)
    p = plan(body)
    assert (p.offset, p.size, p.fetch) == (10, 5, WINDOW)
    assert p.body["from"] == 0 and p.body["size"] == WINDOW
    assert p.body["aggs"] == body["aggs"] and p.body["query"] == body["query"]
    assert body == original
    assert p.query_text == "what do cats eat"


def test_a_page_past_the_window_end_fetches_up_to_the_page_end() -> None:
    p = plan({**MATCH, "from": 45, "size": 20})
    assert (p.offset, p.size, p.fetch) == (45, 20, 65)
    assert plan(MATCH).fetch == WINDOW and plan(MATCH).size == rules.DEFAULT_SIZE


def test_url_from_and_size_win_and_move_into_the_body() -> None:
    p = plan({**MATCH, "from": 1, "size": 2}, b"from=3&size=4&typed_keys=true&secondpass_rerank=on")
    assert (p.offset, p.size) == (3, 4)
    assert p.query == b"typed_keys=true"
    assert (p.body["from"], p.body["size"]) == (0, WINDOW)


@pytest.mark.parametrize(
    ("source", "raw", "hidden"),
    [
        (None, b"", ()),
        (True, b"", ()),
        (False, b"", FIELDS),
        (["title"], b"", ("body",)),
        ("ti*", b"", ("body",)),
        ({"includes": ["*"], "excludes": ["body"]}, b"", ("body",)),
        ({"excludes": ["meta"]}, b"", ()),
        (None, b"_source=false", FIELDS),
        (True, b"_source_includes=title", ("body",)),
        (False, b"_source=title,body", ()),
        (None, b"_source_excludes=*", FIELDS),
    ],
)
def test_fields_hidden_by_the_source_filter_are_added_to_fields(
    source: object, raw: bytes, hidden: tuple[str, ...]
) -> None:
    body = dict(MATCH) if source is None else {**MATCH, "_source": source}
    p = plan(body, raw)
    assert p.added_fields == hidden
    assert set(p.from_source) == set(FIELDS) - set(hidden)
    assert p.body.get("_source") == body.get("_source")  # _source itself is never changed
    if hidden:
        assert p.body["fields"][-len(hidden) :] == list(hidden)
    else:
        assert "fields" not in p.body


def test_stored_fields_without_source_reads_text_from_fields() -> None:
    p = plan({**MATCH, "stored_fields": ["tag"]})
    assert p.added_fields == FIELDS


def test_client_fields_patterns_are_kept_and_not_added_twice() -> None:
    p = plan({**MATCH, "_source": False, "fields": ["ti*", {"field": "date", "format": "yyyy"}]})
    assert p.added_fields == ("body",)
    assert p.body["fields"] == ["ti*", {"field": "date", "format": "yyyy"}, "body"]


def test_source_filter_matches_object_paths() -> None:
    f = rules.SourceFilter(includes=("meta",))
    assert f.returns("meta.title") and not f.returns("body")
    assert not rules.SourceFilter(excludes=("meta.title.raw",)).returns("meta.title")
    assert not rules.SourceFilter(enabled=False).returns("title")


# ---------------------------------------------------------------------- reading


def engine_hit(i: int, *, index: str = "docs", **extra: object) -> dict:
    return {
        "_index": index,
        "_id": str(i),
        "_score": float(100 - i),
        "_source": {"title": f"t{i}", "body": f"b{i}", "tags": ["x", "y"]},
        **extra,
    }


def engine_response(n: int, **extra: object) -> dict:
    return {
        "took": 3,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": 1234, "relation": "eq"},
            "max_score": 99.0,
            "hits": [engine_hit(i) for i in range(n)],
        },
        "aggregations": {"n": {"buckets": [{"key": "x", "doc_count": 3}]}},
        **extra,
    }


def test_hits_are_built_in_engine_order_with_text_from_source_or_fields() -> None:
    p = plan({**MATCH, "_source": ["title"]})
    raw = engine_response(3)
    raw["hits"]["hits"][1] = {**raw["hits"]["hits"][1], "_source": {"title": "t1"},
                              "fields": {"body": ["first", "second"]}}  # fmt: skip
    hits = rules.build_hits(raw, p).hits
    assert [(h.id, h.rank, h.score) for h in hits] == [
        ("0", 1, 100.0),
        ("1", 2, 99.0),
        ("2", 3, 98.0),
    ]
    assert hits[1].fields == {"title": "t1", "body": "first second"}
    narrowed = rules.build_hits(raw, p, fields_for=lambda index: ("body",)).hits
    assert narrowed[1].fields == {"body": "first second"}


def test_dotted_fields_and_missing_fields_read_as_the_connectors_do() -> None:
    p = rules.plan_search(MATCH, [], window=WINDOW, text_fields=("meta.title", "nope"))
    assert isinstance(p, SearchPlan)
    fields = rules.hit_fields({"_source": {"meta": {"title": ["a", "b"]}}}, p)
    assert fields == {"meta.title": "a b", "nope": ""}


# -------------------------------------------------------------------- responses


def ranked_result(order: list[int], n: int, window: int) -> SearchResult:
    """A retriever-shaped result: the window in ``order`` with scores, the rest unscored."""
    hits = {i: Hit("docs", str(i), float(100 - i), i + 1) for i in range(n)}
    ranked = [
        RankedHit(hits[i], pos, 1.0 - pos / 100, PassageScore(1.0 - pos / 100, 1.0 - pos / 100))
        for pos, i in enumerate(order, start=1)
    ]
    ranked += [
        RankedHit(hits[i], pos, None) for pos, i in enumerate(range(window, n), start=window + 1)
    ]
    return SearchResult(hits=tuple(ranked), status="ok", window=window, reranked=window)


def test_reranked_page_keeps_the_engine_shape_and_carries_first_stage_evidence() -> None:
    p = plan({**MATCH, "from": 2, "size": 3}, window=5)
    response = engine_response(5)
    result = ranked_result([4, 3, 2, 1, 0], 5, 5)
    out = rules.reranked_response(response, p, result)
    ids = [h["_id"] for h in out["hits"]["hits"]]
    assert ids == ["2", "1", "0"]
    assert [h["_score"] for h in out["hits"]["hits"]] == [0.97, 0.96, 0.95]
    assert out["hits"]["max_score"] == 0.99
    assert out["hits"]["total"] == response["hits"]["total"]
    assert out["aggregations"] == response["aggregations"] and out["took"] == 3
    first = out["hits"]["hits"][0]
    assert first["fields"] == {rules.FIRST_STAGE_SCORE: [98.0], rules.FIRST_STAGE_RANK: [3]}
    assert first["_source"] == response["hits"]["hits"][2]["_source"]
    assert response["hits"]["hits"][2]["_score"] == 98.0  # the input is not modified

    other = rules.reranked_response(response, p, result, annotation="_secondpass")
    assert other["hits"]["hits"][0]["_secondpass"] == {
        "first_stage_score": 98.0,
        "first_stage_rank": 3,
    }
    assert "fields" not in other["hits"]["hits"][0]
    bare = rules.reranked_response(response, p, result, annotation="none")
    assert set(bare["hits"]["hits"][0]) == set(response["hits"]["hits"][2])


def test_a_page_straddling_the_window_end_continues_in_engine_order() -> None:
    p = plan({**MATCH, "from": 3, "size": 4}, window=5)
    response = engine_response(p.fetch)
    out = rules.reranked_response(response, p, ranked_result([4, 3, 2, 1, 0], 7, 5))
    assert [h["_id"] for h in out["hits"]["hits"]] == ["1", "0", "5", "6"]
    assert [h["_score"] for h in out["hits"]["hits"]][2:] == [None, None]


def test_added_fields_are_removed_before_answering() -> None:
    p = plan({**MATCH, "_source": False, "fields": ["title"]})
    assert p.added_fields == ("body",)
    response = engine_response(2)
    for h in response["hits"]["hits"]:
        del h["_source"]
        h["fields"] = {"title": ["t"], "body": ["b"]}
    engine_order = rules.engine_order_response(response, p)
    assert [h["fields"] for h in engine_order["hits"]["hits"]] == [{"title": ["t"]}] * 2

    q = plan({**MATCH, "_source": False})
    out = rules.engine_order_response(response, q)
    assert all("fields" not in h for h in out["hits"]["hits"])
    reranked = rules.reranked_response(response, q, ranked_result([1, 0], 2, 2))
    assert [set(h["fields"]) for h in reranked["hits"]["hits"]] == [
        {rules.FIRST_STAGE_SCORE, rules.FIRST_STAGE_RANK}
    ] * 2


@given(st.integers(0, 30), st.integers(1, 30))
def test_engine_order_fallback_is_the_clients_own_page(offset: int, size: int) -> None:
    p = plan({**MATCH, "from": offset, "size": size}, window=31)
    response = engine_response(p.fetch)
    out = rules.engine_order_response(response, p)
    assert out["hits"]["hits"] == response["hits"]["hits"][offset : offset + size]
    assert {k: v for k, v in out.items() if k != "hits"} == {
        k: v for k, v in response.items() if k != "hits"
    }


@given(st.permutations(list(range(12))), st.integers(1, 5))
def test_pages_cut_from_the_reranked_order_concatenate_to_it(order: list[int], size: int) -> None:
    window = 12
    result = ranked_result(order, window, window)
    response = engine_response(window)
    seen = []
    for offset in range(0, window, size):
        p = plan({**MATCH, "from": offset, "size": size}, window=window)
        seen += [h["_id"] for h in rules.reranked_response(response, p, result)["hits"]["hits"]]
    assert seen == [str(i) for i in order]


def test_took_grows_by_the_proxys_time() -> None:
    assert rules.add_took({"took": 5}, 2.6)["took"] == 8
    assert rules.add_took({"took": 5}, -1)["took"] == 5
    assert rules.add_took({"x": 1}, 3) == {"x": 1}


# ------------------------------------------------------------------ msearch & misc


def test_msearch_bodies_parse_into_pairs() -> None:
    data = b'{"index":"a"}\n{"query":{"match":{"t":"x"}}}\n{}\n{"size":0}\n'
    parsed = rules.parse_msearch(data)
    assert parsed is not None
    assert [i.header for i in parsed.items] == [{"index": "a"}, {}]
    assert rules.msearch_index(parsed.items[0].header, "b") == "a"
    assert rules.msearch_index(parsed.items[1].header, "b") == "b"
    assert rules.msearch_index({"index": ["a", "c"]}, None) == "a,c"
    assert rules.parse_msearch(b'{"index":"a"}\n') is None
    assert rules.parse_msearch(b"{}\nnot json\n") is None


def test_status_header_is_one_ascii_line() -> None:
    assert rules.status_header("ok") == "ok"
    value = rules.status_header("failed", "boom;\nnewline, and ümlaut")
    assert value == "failed; reason=boom newline and mlaut"
    assert value.isascii()


def test_index_rules_pick_entries_by_name_pattern_alias_and_default() -> None:
    docs = IndexText("docs", ("title", "body"))
    logs = IndexText("logs-*", ("message",), "{message}")
    default = IndexText("*", ("text",))
    with_default = IndexTextRules((docs, logs), default)
    assert with_default.resolve("docs").fields == ("title", "body", "text")
    assert with_default.resolve("logs-2024").for_hit("logs-2024") is logs
    assert with_default.resolve(None).fields == ("title", "body", "message", "text")
    assert with_default.resolve("other").for_hit("other") is default

    only = IndexTextRules((docs, logs))
    alias = only.resolve("docs")  # 'docs' is an alias of docs-v2 here
    assert alias.for_hit("docs-v2") is docs
    assert only.resolve("docs,logs-1").for_hit("docs-v2") is None
    assert only.resolve("nothing").fields == ()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 60) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["query", "from", "size", "sort", "_source", "fields", "stored_fields", "match", "bool",
     "must", "should", "multi_match", "query_string", "includes", "excludes", "aggs"]
)  # fmt: skip
BODIES = st.recursive(
    st.dictionaries(KEYS, JSON, max_size=4),
    lambda inner: st.dictionaries(KEYS, inner | JSON | st.lists(inner, max_size=2), max_size=4),
    max_leaves=10,
)


@given(BODIES, st.binary(max_size=40))
def test_any_client_body_is_planned_or_passed_through_never_crashes(body: dict, raw: bytes) -> None:
    result = rules.plan_search(body, params(raw), window=WINDOW, text_fields=FIELDS)
    assert isinstance(result, (SearchPlan, Skip))
    if isinstance(result, SearchPlan):
        assert result.body["from"] == 0 and result.body["size"] == result.fetch >= WINDOW
