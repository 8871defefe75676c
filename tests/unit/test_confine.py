"""The allow-list for callers' filters and bodies: refuses by JSON path, passes legit DSL unchanged.

Attacks are the leaf clauses that escape an index or its fields, each placed in
filters, in a body's ``query``/``post_filter``, as a bare body clause, and wrapped
in every compound clause at several depths. The property test builds random DSL
trees from allowed and forbidden parts and checks acceptance against two oracles
that do not use the validator: a structural walker, and a marker that every
forbidden part carries.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secondpass.connectors.confine import MAX_CLAUSES, MAX_DEPTH, Confinement, RefusedQueryError
from secondpass.errors import ConfigurationError, QueryError

CONFIGURED = ["title^2", "text", "lang"]
FIELDS = {"title", "text", "lang"}
VECTOR = "embedding"
CONFINE = Confinement(fields=CONFIGURED, vector_field=VECTOR)


def refused(*, filters: Any = (), body: Any = None) -> RefusedQueryError:
    with pytest.raises(RefusedQueryError) as info:
        CONFINE.check(filters=filters, body=body)
    return info.value


# -- attack leaves: (clause, path of the offending part relative to the clause) -----------

LEAVES: dict[str, tuple[dict[str, Any], str]] = {
    "terms lookup": ({"terms": {"title": {"index": "secret", "id": "1", "path": "token"}}}, ".terms.title"),
    "terms lookup, boost first": (
        {"terms": {"boost": 1, "lang": {"index": "secret", "id": "1", "path": "token"}}},
        ".terms.lang",
    ),
    "more_like_this docs": (
        {"more_like_this": {"fields": ["title"], "like": [{"_index": "secret", "_id": "1"}]}},
        ".more_like_this",
    ),
    "script": ({"script": {"script": {"source": "doc['token'].value == 'x'"}}}, ".script"),
    "script_score": ({"script_score": {"query": {"match_all": {}}, "script": {"source": "1"}}}, ".script_score"),
    "function_score": ({"function_score": {"script_score": {"script": "1"}}}, ".function_score"),
    "percolate": ({"percolate": {"field": "q", "index": "secret", "id": "1"}}, ".percolate"),
    "geo_shape indexed": (
        {"geo_shape": {"loc": {"indexed_shape": {"index": "secret", "id": "1", "path": "shape"}}}},
        ".geo_shape",
    ),
    "query_string": ({"query_string": {"query": "token:*"}}, ".query_string"),
    "simple_query_string": ({"simple_query_string": {"query": "x", "fields": ["*"]}}, ".simple_query_string"),
    "wildcard": ({"wildcard": {"title": "*a*"}}, ".wildcard"),
    "regexp": ({"regexp": {"title": ".*"}}, ".regexp"),
    "fuzzy": ({"fuzzy": {"title": "cat"}}, ".fuzzy"),
    "has_child": ({"has_child": {"type": "c", "query": {"match_all": {}}}}, ".has_child"),
    "has_parent": ({"has_parent": {"parent_type": "p", "query": {"match_all": {}}}}, ".has_parent"),
    "wrapper base64": ({"wrapper": {"query": "eyJtYXRjaF9hbGwiOnt9fQ=="}}, ".wrapper"),
    "pinned other index": (
        {"pinned": {"docs": [{"_index": "secret", "_id": "1"}], "organic": {"match_all": {}}}},
        ".pinned",
    ),
    "span_term": ({"span_term": {"title": "x"}}, ".span_term"),
    "key case Terms": ({"Terms": {"title": ["x"]}}, ".Terms"),
    "key case MATCH": ({"MATCH": {"title": "x"}}, ".MATCH"),
    "key with space": ({"term ": {"title": "x"}}, '["term "]'),
    "term on unconfigured": ({"term": {"token": "x"}}, ".term.token"),
    "term on _id": ({"term": {"_id": "1"}}, ".term._id"),
    "term on _index": ({"term": {"_index": "secret"}}, ".term._index"),
    "term on _routing": ({"term": {"_routing": "r"}}, ".term._routing"),
    "match on wildcard field": ({"match": {"title*": "x"}}, '.match["title*"]'),
    "match on star": ({"match": {"*": "x"}}, '.match["*"]'),
    "match on comma list": ({"match": {"title,token": "x"}}, '.match["title,token"]'),
    "sub-field of unconfigured": ({"match": {"token.title": "x"}}, '.match["token.title"]'),
    "metadata sub-field": ({"match": {"title._x": "x"}}, '.match["title._x"]'),
    "prefix on _source": ({"prefix": {"_source": "x"}}, ".prefix._source"),
    "exists on unconfigured": ({"exists": {"field": "token"}}, ".exists.field"),
    "exists on _id": ({"exists": {"field": "_id"}}, ".exists.field"),
    "multi_match field": ({"multi_match": {"query": "x", "fields": ["title", "token^3"]}}, ".multi_match.fields[1]"),
    "multi_match all fields": ({"multi_match": {"query": "x"}}, ".multi_match"),
    "multi_match wildcard": ({"multi_match": {"query": "x", "fields": ["t*"]}}, ".multi_match.fields[0]"),
    "range object value": ({"range": {"title": {"gte": {"nested": "object"}}}}, ".range.title.gte"),
    "range on unconfigured": ({"range": {"price": {"gte": 1}}}, ".range.price"),
    "term value object": ({"term": {"title": {"value": "x", "_index": "secret"}}}, ".term.title._index"),
    "term value list": ({"term": {"title": ["x"]}}, ".term.title"),
    "bool index option": ({"bool": {"_index": "secret", "must": []}}, ".bool._index"),
    "nested path": ({"nested": {"path": "token", "query": {"match_all": {}}}}, ".nested.path"),
    "nested inner_hits": (
        {"nested": {"path": "title", "query": {"match_all": {}}, "inner_hits": {}}},
        ".nested.inner_hits",
    ),
    "ids lookup": ({"ids": {"values": {"index": "secret"}}}, ".ids.values"),
    "knn other field": ({"knn": {"token": {"vector": [1.0], "k": 1}}}, ".knn.token"),
    "two clause names": ({"match": {"title": "x"}, "terms": {"title": ["y"]}}, ""),
    "clause is a list": ([{"match": {"title": "x"}}], ""),  # type: ignore[dict-item]
    "clause is a string": ("match_all", ""),  # type: ignore[dict-item]
    "empty clause": ({}, ""),
    "nan value": ({"term": {"title": math.nan}}, ".term.title"),
}

# Compound clauses that wrap a clause: (wrap(clause), path from the wrapper to the clause).
WRAPPERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "bool.filter[]": (lambda q: {"bool": {"filter": [{"match_all": {}}, q]}}, ".bool.filter[1]"),
    "bool.must{}": (lambda q: {"bool": {"must": q}}, ".bool.must"),
    "bool.should[]": (lambda q: {"bool": {"should": [q]}}, ".bool.should[0]"),
    "bool.must_not[]": (lambda q: {"bool": {"must_not": [q]}}, ".bool.must_not[0]"),
    "constant_score": (lambda q: {"constant_score": {"filter": q}}, ".constant_score.filter"),
    "dis_max": (lambda q: {"dis_max": {"queries": [{"match_all": {}}, q]}}, ".dis_max.queries[1]"),
    "nested": (lambda q: {"nested": {"path": "title", "query": q}}, ".nested.query"),
    "boosting.negative": (
        lambda q: {"boosting": {"positive": {"match_all": {}}, "negative": q, "negative_boost": 0.5}},
        ".boosting.negative",
    ),
    "knn.filter (OpenSearch)": (
        lambda q: {"knn": {VECTOR: {"vector": [0.1, 0.2], "k": 3, "filter": q}}},
        ".knn.embedding.filter",
    ),
    "knn.filter (Elasticsearch)": (
        lambda q: {"knn": {"field": VECTOR, "query_vector": [0.1], "k": 3, "filter": [q]}},
        ".knn.filter[0]",
    ),
}
CHAINS = [
    [],
    ["bool.filter[]"],
    ["constant_score", "bool.must{}"],
    ["knn.filter (OpenSearch)", "dis_max", "nested"],
    ["bool.should[]", "boosting.negative", "knn.filter (Elasticsearch)", "bool.must_not[]"],
]
PLACEMENTS: dict[str, Callable[[Any], tuple[dict[str, Any], str]]] = {
    "filters": lambda q: ({"filters": [{"term": {"lang": "en"}}, q]}, "filters[1]"),
    "body.query": lambda q: ({"body": {"query": q, "size": 5}}, "body.query"),
    "body.post_filter": lambda q: ({"body": {"query": {"match_all": {}}, "post_filter": q}}, "body.post_filter"),
    "bare body": lambda q: ({"body": q}, "body"),
    "es top-level knn": lambda q: (
        {"body": {"knn": {"field": VECTOR, "query_vector": [1.0], "k": 1, "filter": q}}},
        "body.knn.filter",
    ),
}


def _wrapped(leaf: Any, chain: list[str]) -> tuple[Any, str]:
    clause, path = leaf, ""
    for name in chain:
        wrap, step = WRAPPERS[name]
        clause, path = wrap(clause), step + path
    return clause, path


def _attack_cases() -> Iterator[Any]:
    """Every leaf x wrapper chain x placement, less the combinations that are not attacks."""
    for placement in PLACEMENTS:
        for chain in CHAINS:
            for leaf, (clause, _) in LEAVES.items():
                bare = placement == "bare body" and not chain
                # A bare body must be a non-empty object with one clause name: covered by
                # test_body_must_be_an_object, test_empty_bodies and the wrapped cases.
                if bare and (not isinstance(clause, dict) or not clause or leaf == "two clause names"):
                    continue
                # Elasticsearch's top-level knn.filter takes a list of clauses: legitimate.
                if placement == "es top-level knn" and not chain and leaf == "clause is a list":
                    continue
                case_id = f"{leaf}-{'/'.join(chain) or 'bare'}-{placement}"
                yield pytest.param(leaf, chain, placement, id=case_id)


@pytest.mark.parametrize(("leaf", "chain", "placement"), list(_attack_cases()))
def test_attack_is_refused_with_its_json_path(leaf: str, chain: list[str], placement: str) -> None:
    clause, leaf_path = LEAVES[leaf]
    wrapped, wrap_path = _wrapped(clause, chain)
    request, root = PLACEMENTS[placement](wrapped)
    error = refused(**request)
    assert error.path == root + wrap_path + leaf_path, str(error)
    assert error.field == error.path and str(error).startswith(error.path + ": ")
    assert error.status == 400


@pytest.mark.parametrize(
    ("leaf", "words"),
    [
        ("terms lookup", "terms lookup reads a document of another index"),
        ("script", "scripts run code"),
        ("wrapper base64", "base64"),
        ("more_like_this docs", "other indices"),
        ("term on unconfigured", "not a configured field; allowed: title, text, lang"),
        ("term on _id", "metadata fields"),
        ("match on wildcard field", "wildcards"),
        ("key case Terms", "not an allowed query clause; allowed: bool,"),
    ],
)
def test_refusal_says_why(leaf: str, words: str) -> None:
    assert words in str(refused(filters=[LEAVES[leaf][0]]))


BODY_KEYS = {
    "aggs": {"a": {"terms": {"field": "token"}}},
    "aggregations": {"a": {"max": {"field": "title"}}},
    "script_fields": {"s": {"script": "1"}},
    "runtime_mappings": {"r": {"type": "keyword", "script": "emit('x')"}},
    "docvalue_fields": ["token"],
    "stored_fields": ["*"],
    "fields": ["token"],
    "_source": True,
    "highlight": {"fields": {"token": {}}},
    "indices_boost": [{"secret": 2}],
    "suggest": {"s": {"text": "x", "term": {"field": "token"}}},
    "ext": {},
    "pit": {"id": "abc"},
    "collapse": {"field": "lang"},
    "rescore": {"query": {"rescore_query": {"match_all": {}}}},
    "explain": True,
    "profile": True,
    "stats": ["g"],
    "retriever": {"standard": {"query": {"match_all": {}}}},
    "version": True,
    "slice": {"id": 0, "max": 2},
    "terminate_after": 1,
}


@pytest.mark.parametrize("key", list(BODY_KEYS))
def test_body_keys_outside_the_allow_list_are_refused(key: str) -> None:
    error = refused(body={"query": {"match_all": {}}, key: BODY_KEYS[key]})
    assert error.path == ("body." + key if key.isidentifier() else f"body[{json.dumps(key)}]")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"query": {"match_all": {}}, "sort": [{"_script": {"script": "1"}}]}, "body.sort[0]._script"),
        ({"query": {"match_all": {}}, "sort": [{"token": "asc"}]}, "body.sort[0].token"),
        ({"query": {"match_all": {}}, "sort": "_id"}, "body.sort"),
        ({"query": {"match_all": {}}, "sort": [{"title": {"order": "asc", "nested": {}}}]}, "body.sort[0].title.nested"),
        ({"query": {"match_all": {}}, "sort": [{"_geo_distance": {}}]}, "body.sort[0]._geo_distance"),
        ({"query": {"match_all": {}}, "search_after": [{"a": 1}]}, "body.search_after[0]"),
        ({"query": {"match_all": {}}, "size": "10"}, "body.size"),
        ({"query": {"match_all": {}}, "from": -1}, "body.from"),
        ({"query": {"match_all": {}}, "track_total_hits": "true"}, "body.track_total_hits"),
        ({"query": {"match_all": {}}, "min_score": math.inf}, "body.min_score"),
        ({"query": [{"match_all": {}}]}, "body.query"),
        ({"knn": {"field": "token", "query_vector": [1.0]}}, "body.knn.field"),
        ({"knn": {"field": VECTOR, "query_vector": [1.0], "query_vector_builder": {}}}, "body.knn.query_vector_builder"),
        ({"knn": {"field": VECTOR, "query_vector": [1.0], "inner_hits": {}}}, "body.knn.inner_hits"),
        ({"query": {"match_all": {}}, "Aggs": {}}, "body.Aggs"),
    ],
)
def test_body_options_are_checked(body: dict[str, Any], path: str) -> None:
    assert refused(body=body).path == path


def test_body_must_be_an_object_and_filters_a_list() -> None:
    assert refused(body=[{"match_all": {}}]).path == "body"
    assert refused(body="match_all").path == "body"
    assert refused(filters={"term": {"lang": "en"}}).path == "filters"  # type: ignore[arg-type]


def test_empty_bodies() -> None:
    assert refused(body={}).path == "body"
    assert refused(filters=[{}]).path == "filters[0]"


def test_knn_without_a_configured_vector_field_is_refused() -> None:
    plain = Confinement(fields=["title"])
    with pytest.raises(RefusedQueryError, match="no.*vector field|none is configured") as info:
        plain.check(filters=[{"knn": {"embedding": {"vector": [1.0], "k": 1}}}])
    assert info.value.path == "filters[0].knn.embedding"


def _bools(levels: int, leaf: Any) -> Any:
    clause = leaf
    for _ in range(levels):
        clause = {"bool": {"filter": [clause]}}
    return clause


def test_depth_is_bounded_at_the_limit() -> None:
    leaf = {"term": {"lang": "en"}}
    CONFINE.check(filters=[_bools(MAX_DEPTH - 1, leaf)])  # the leaf sits at depth MAX_DEPTH
    error = refused(filters=[_bools(MAX_DEPTH, leaf)])
    assert "nested deeper than 20" in str(error)
    assert error.path == "filters[0]" + ".bool.filter[0]" * MAX_DEPTH


def test_very_deep_input_is_refused_without_recursion_error() -> None:
    deep: Any = {"match_all": {}}
    for i in range(100_000):
        deep = {"bool": {"must": deep}} if i % 2 else {"constant_score": {"filter": deep}}
    assert "nested deeper" in str(refused(filters=[deep]))
    assert "nested deeper" in str(refused(body={"query": deep}))


def test_clause_count_is_bounded_across_filters_and_body() -> None:
    many = [{"term": {"lang": str(i)}} for i in range(MAX_CLAUSES)]
    CONFINE.check(filters=many)
    error = refused(filters=many, body={"match_all": {}})
    assert error.path == "body" and f"more than {MAX_CLAUSES} query clauses" in str(error)
    assert refused(filters=[{"bool": {"should": many}}]).path == f"filters[0].bool.should[{MAX_CLAUSES - 1}]"


LEGIT: list[dict[str, Any]] = [
    {"filters": [{"term": {"lang": "en"}}]},
    {"filters": [{"term": {"lang.keyword": {"value": "en", "case_insensitive": True, "boost": 2}}}]},
    {"filters": [{"terms": {"lang": ["en", "de"], "boost": 1.5, "_name": "langs"}}]},
    {"filters": [{"range": {"lang": {"gte": "a", "lt": "m", "format": "x"}}}, {"exists": {"field": "title"}}]},
    {"filters": [{"ids": {"values": ["1", "2"]}}, {"prefix": {"title": "ca"}}]},
    {"body": {"match": {"title": "cats"}}},
    {"body": {"match": {"title": {"query": "cats", "operator": "and", "fuzziness": "AUTO"}}}},
    {"body": {"match_phrase": {"text": {"query": "cats sleep", "slop": 2}}}},
    {"body": {"match_phrase_prefix": {"title": "cat"}}},
    {"body": {"multi_match": {"query": "cats", "fields": ["title^2", "text"], "type": "best_fields"}}},
    {
        "body": {
            "query": {
                "bool": {
                    "must": [{"match": {"text": "cats"}}],
                    "should": {"match_phrase": {"title": "cats"}},
                    "must_not": [{"term": {"lang": "xx"}}],
                    "filter": [{"constant_score": {"filter": {"exists": {"field": "lang"}}, "boost": 1}}],
                    "minimum_should_match": 0,
                }
            },
            "size": 20,
            "from": 0,
            "sort": ["_score", {"lang": {"order": "asc", "missing": "_last"}}, "title.keyword"],
            "track_total_hits": 1000,
            "min_score": 0.5,
            "timeout": "2s",
            "search_after": [1.5, "a"],
        }
    },
    {"body": {"query": {"dis_max": {"queries": [{"match": {"title": "x"}}, {"match": {"text": "x"}}], "tie_breaker": 0.3}}}},
    {"body": {"query": {"boosting": {"positive": {"match": {"text": "x"}}, "negative": {"term": {"lang": "de"}}, "negative_boost": 0.2}}}},
    {"body": {"query": {"nested": {"path": "title", "query": {"match": {"title.text": "x"}}, "score_mode": "avg"}}}},
    {"body": {"query": {"knn": {VECTOR: {"vector": [0.1, 0.2], "k": 5, "filter": {"term": {"lang": "en"}}}}}}},
    {"body": {"knn": {"field": VECTOR, "query_vector": [0.1], "k": 5, "num_candidates": 50, "filter": [{"term": {"lang": "en"}}]}}},
    {"body": {"query": {"match_all": {"boost": 1}}, "post_filter": {"match_none": {}}}},
    {"filters": [{"term": {"lang": "en"}}], "body": {"query": {"match": {"text": "cats"}}, "sort": "_doc"}},
]


@pytest.mark.parametrize("request_", LEGIT, ids=range(len(LEGIT)))
def test_legitimate_dsl_is_accepted_unchanged(request_: dict[str, Any]) -> None:
    before = copy.deepcopy(request_)
    CONFINE.check(**request_)
    assert request_ == before


@pytest.mark.parametrize("name", ["title*", "_id", "a,b", "", "x..y", "has space"])
def test_misconfigured_field_names_fail_at_construction(name: str) -> None:
    with pytest.raises(ConfigurationError, match="configured field"):
        Confinement(fields=["title", name])
    with pytest.raises(ConfigurationError):
        Confinement(fields=["title"], vector_field=name)


def test_the_error_is_a_400_query_error_and_a_value_error() -> None:
    error = refused(filters=[LEAVES["terms lookup"][0]])
    assert isinstance(error, QueryError) and isinstance(error, ValueError)
    assert error.status == 400 and error.reason == str(error)


def test_long_hostile_names_are_shortened_in_messages() -> None:
    error = refused(filters=[{"x" * 5000: {}}])
    assert len(str(error)) < 400


# -- property: random DSL trees -------------------------------------------------------------

MARK = "FORBIDDEN-MARK"
BAD_FIELDS = ["token", "_id", "_index", "title*", "*", "Title", "token.title", "title._meta"]
GOOD_FIELDS = ["title", "text", "lang", "title.keyword"]
ALLOWED_CLAUSES = {
    "bool", "constant_score", "dis_max", "boosting", "nested", "match", "match_phrase",
    "match_phrase_prefix", "multi_match", "term", "terms", "prefix", "range", "exists", "ids",
    "match_all", "match_none", "knn",
}  # fmt: skip
NAMED = {"boost", "_name"}

fields_st = st.one_of(st.sampled_from(GOOD_FIELDS), st.sampled_from(BAD_FIELDS))
values_st = st.one_of(
    st.text(max_size=5), st.integers(-3, 3), st.booleans(), st.sampled_from([None, math.nan, [], {}])
)

allowed_leaves = st.one_of(
    st.builds(lambda f, v: {"term": {f: v}}, fields_st, values_st),
    st.builds(lambda f, v: {"match": {f: {"query": v}}}, fields_st, values_st),
    st.builds(lambda f, vs: {"terms": {f: vs}}, fields_st, st.lists(values_st, max_size=3)),
    st.builds(lambda f, v: {"range": {f: {"gte": v}}}, fields_st, values_st),
    st.builds(lambda f: {"exists": {"field": f}}, fields_st),
    st.builds(lambda fs: {"multi_match": {"query": "q", "fields": fs}}, st.lists(fields_st, max_size=3)),
    st.builds(lambda f: {"prefix": {f: "ca"}}, fields_st),
    st.just({"match_all": {}}),
    st.builds(lambda vs: {"ids": {"values": vs}}, st.lists(st.text(max_size=3), max_size=3)),
)
forbidden_leaves = st.one_of(
    st.builds(lambda f: {"terms": {f: {"index": MARK, "id": "1", "path": "t"}}}, fields_st),
    st.just({"script": {"script": {"source": MARK}}}),
    st.just({"wrapper": {"query": MARK}}),
    st.just({"query_string": {"query": MARK}}),
    st.just({"more_like_this": {"like": [{"_index": MARK, "_id": "1"}]}}),
    st.builds(lambda f: {"wildcard": {f: MARK}}, fields_st),
    st.builds(lambda f: {"term": {f: {"value": "x", "_index": MARK}}}, fields_st),
    st.builds(lambda k: {k: {"title": MARK}}, st.text(max_size=8)),
)


def _compounds(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    occurrences = st.dictionaries(
        st.sampled_from(["must", "should", "filter", "must_not"]),
        st.one_of(children, st.lists(children, max_size=3)),
        max_size=3,
    )
    return st.one_of(
        st.builds(lambda o: {"bool": o}, occurrences),
        st.builds(lambda o: {"bool": {**o, "_index": MARK}}, occurrences),
        st.builds(lambda c: {"constant_score": {"filter": c}}, children),
        st.builds(lambda cs: {"dis_max": {"queries": cs}}, st.lists(children, max_size=3)),
        st.builds(lambda p, c: {"nested": {"path": p, "query": c}}, fields_st, children),
        st.builds(
            lambda a, b: {"boosting": {"positive": a, "negative": b, "negative_boost": 0.5}}, children, children
        ),
        st.builds(lambda c: {"knn": {VECTOR: {"vector": [0.5], "k": 2, "filter": c}}}, children),
        st.builds(  # two clause names in one object
            lambda a, b: {**a, **b} if isinstance(a, dict) and isinstance(b, dict) else a, children, children
        ),
        st.builds(lambda c: [c], children),  # a list where a clause belongs
    )


trees = st.recursive(st.one_of(allowed_leaves, forbidden_leaves), _compounds, max_leaves=12)


def _walk(clause: Any, clauses: list[str], fields: list[Any], depth: int = 1) -> int:
    """The oracle: clause names and field names of a tree, by the documented DSL shapes."""
    assert isinstance(clause, dict) and len(clause) == 1
    ((name, spec),) = clause.items()
    clauses.append(name)
    deepest = depth
    children: list[Any] = []
    if name == "bool":
        for key in ("must", "should", "filter", "must_not"):
            value = spec.get(key, [])
            children += value if isinstance(value, list) else [value]
    elif name == "constant_score":
        children.append(spec["filter"])
    elif name == "dis_max":
        children += spec["queries"]
    elif name == "nested":
        fields.append(spec["path"])
        children.append(spec["query"])
    elif name == "boosting":
        children += [spec["positive"], spec["negative"]]
    elif name == "knn":
        children += [v["filter"] for v in spec.values() if "filter" in v]
    elif name == "exists":
        fields.append(spec["field"])
    elif name == "multi_match":
        fields += [f.split("^")[0] for f in spec["fields"]]
    elif name in ("ids", "match_all"):
        pass
    else:
        fields += [k for k in spec if k not in NAMED]
    for child in children:
        deepest = max(deepest, _walk(child, clauses, fields, depth + 1))
    return deepest


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(tree=trees, where=st.sampled_from(["filters", "query", "bare"]))
def test_random_trees_are_accepted_only_inside_the_allow_list(tree: Any, where: str) -> None:
    request: dict[str, Any] = {
        "filters": {"filters": [tree]},
        "query": {"body": {"query": tree}},
        "bare": {"body": tree},
    }[where]
    before = copy.deepcopy(request)
    try:
        CONFINE.check(**request)
    except RefusedQueryError as exc:
        assert exc.status == 400 and exc.path.split(".")[0].split("[")[0] in ("filters", "body")
        return
    finally:
        assert request == before, "the check changed its input"
    # Accepted: both oracles must agree it is inside the allow-list.
    assert MARK not in json.dumps(tree, default=str), "a forbidden part was accepted"
    clauses: list[str] = []
    fields: list[Any] = []
    depth = _walk(tree, clauses, fields)
    assert set(clauses) <= ALLOWED_CLAUSES, clauses
    assert all(isinstance(f, str) and (f in FIELDS or f.split(".")[0] in FIELDS) for f in fields), fields
    assert not set(fields) & set(BAD_FIELDS), fields
    assert depth <= MAX_DEPTH and len(clauses) <= MAX_CLAUSES


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    value=st.recursive(
        st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=6)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.one_of(st.sampled_from(sorted(ALLOWED_CLAUSES) + GOOD_FIELDS + ["query", "filter"]), st.text(max_size=6)),
                inner,
                max_size=4,
            ),
        ),
        max_leaves=30,
    )
)
def test_any_json_gets_only_the_documented_error(value: Any) -> None:
    for request in ({"filters": [value]}, {"body": value}, {"body": {"query": value, "sort": value}}):
        try:
            CONFINE.check(**request)
        except RefusedQueryError:
            pass
