"""Keep a caller's query DSL inside one index and the configured fields (pure, no I/O).

A service that forwards its clients' ``filters`` and ``body`` to the engine lends
them the engine's whole query language, and much of it reaches beyond the
configured index: a ``terms`` lookup reads a document of another index,
``more_like_this`` and ``pinned`` name other indices' documents, ``script``
runs code, ``wrapper`` hides DSL in base64, ``aggs`` and ``docvalue_fields``
read fields no one meant to expose, and ``query_string`` turns text into field
names and wildcards. A deny-list of those misses the next one the engine adds,
so :class:`Confinement` is an ALLOW-LIST: every clause, every option and every
field name must be one it knows; anything else is refused with
:class:`RefusedQueryError`, whose ``field`` is the JSON path of the offending
part (``filters[0].terms.title``), before any engine call.

Field names must be configured ones (a boost ``title^2`` in the configuration is
dropped) or a sub-field of one (``title.keyword``: the ``_source`` of ``title``
already reveals it); wildcards and ``_``-prefixed metadata fields never pass.
Nesting depth and the number of clauses are bounded, so no input can make the
check itself expensive or overflow the stack.

Example:
    >>> confinement = Confinement(fields=["title^2", "body", "lang"])
    >>> confinement.check(filters=[{"term": {"lang": "en"}}], body={"match": {"title": "cats"}})
    >>> confinement.check(filters=[{"terms": {"title": {"index": "secret", "id": "1", "path": "t"}}}])
    Traceback (most recent call last):
    ...
    secondpass.errors.RefusedQueryError: filters[0].terms.title: a terms lookup reads a document of another index; give the values as a list
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from secondpass.connectors._query import SEARCH_BODY_KEYS, split_boost
from secondpass.errors import ConfigurationError, RefusedQueryError

__all__ = ["MAX_CLAUSES", "MAX_DEPTH", "Confinement", "RefusedQueryError"]

MAX_DEPTH = 20
"""Deepest nesting of query clauses (a ``bool`` inside a ``bool`` is depth 2)."""

MAX_CLAUSES = 256
"""Most query clauses in one request (filters and body together)."""


# ---------------------------------------------------------------------------- paths

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_path(path: str, key: Any) -> str:
    """``path.key``, or ``path["odd key"]`` when the key is not a plain name (dots, quotes)."""
    if isinstance(key, str) and len(key) <= 60 and _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_shown(key)}]"


def _shown(value: Any) -> str:
    """A client-supplied name as it may appear in a message: JSON-quoted, at most 60 chars."""
    text = json.dumps(value if isinstance(value, str) else repr(value), ensure_ascii=True)
    return text if len(text) <= 60 else text[:56] + '..."'


# ------------------------------------------------------------- why known clauses are refused

_CLAUSE_WHY: Mapping[str, str] = {
    "more_like_this": "it can read documents of other indices (like/unlike with _index and _id)",
    "script": "scripts run code on the engine",
    "script_score": "scripts run code on the engine",
    "function_score": "its functions can run scripts and read other fields",
    "percolate": "it reads stored queries, possibly from another index",
    "geo_shape": "an indexed_shape reads a document of another index",
    "query_string": "it parses syntax that names fields and wildcards",
    "simple_query_string": "it parses syntax that names fields and wildcards",
    "wildcard": "wildcard patterns are costly on the engine",
    "regexp": "regular expressions are costly on the engine",
    "fuzzy": "fuzzy term expansion is costly on the engine; use match with fuzziness",
    "has_child": "it joins documents this service does not return",
    "has_parent": "it joins documents this service does not return",
    "parent_id": "it joins documents this service does not return",
    "wrapper": "it hides query DSL in base64",
    "pinned": "it can pin documents of other indices",
    "terms_set": "its minimum_should_match_script runs code",
    "distance_feature": "it is not needed for text search",
    "rank_feature": "it is not needed for text search",
}

_BODY_WHY: Mapping[str, str] = {
    "aggs": "aggregations read whole fields of the index",
    "aggregations": "aggregations read whole fields of the index",
    "script_fields": "scripts run code on the engine",
    "runtime_mappings": "runtime fields run scripts on the engine",
    "_source": "the service decides which _source fields come back",
    "fields": "the service decides which fields come back",
    "docvalue_fields": "the service decides which fields come back",
    "stored_fields": "the service decides which fields come back",
    "highlight": "highlighting returns fields the service does not",
    "indices_boost": "it names other indices",
    "pit": "a point in time can span other indices",
    "suggest": "suggesters read terms of the whole index",
    "rescore": "the service reranks; an engine rescore can run scripts",
    "collapse": "collapsing returns inner hits the service does not",
    "explain": "explanations expose index statistics",
    "profile": "profiles expose index internals",
    "stats": "stats groups are recorded on the engine",
    "ext": "plugin extensions are not allowed",
    "retriever": "retrievers nest their own DSL; send a query",
    "rank": "engine-side rank fusion is not allowed; the service fuses",
    "sub_searches": "engine-side sub-searches are not allowed",
    "slice": "sliced scrolls are not allowed",
    "version": "document versions are not returned",
    "seq_no_primary_term": "sequence numbers are not returned",
    "terminate_after": "it makes results depend on shard layout",
}


# ------------------------------------------------------------------------ the walker

Check = Callable[["_Walk", Any, str, int], None]


class _Walk:
    """One check of one request: the confinement plus the running clause count."""

    def __init__(self, confinement: Confinement) -> None:
        self.c = confinement
        self.clauses = 0

    def refuse(self, path: str, message: str) -> NoReturn:
        raise RefusedQueryError(message, path=path)

    # -- query clauses -----------------------------------------------------------

    def query(self, node: Any, path: str, depth: int) -> None:
        self.clauses += 1
        if self.clauses > self.c.max_clauses:
            self.refuse(path, f"more than {self.c.max_clauses} query clauses in one request")
        if depth > self.c.max_depth:
            self.refuse(path, f"query clauses nested deeper than {self.c.max_depth}")
        name, spec, here = _single_entry(
            self,
            node,
            path,
            "a query clause must be an object, got {kind}",
            "a query clause must have exactly one key (its name), got {count}",
        )
        check = _CLAUSES.get(name) if isinstance(name, str) else None
        if check is None:
            why = _CLAUSE_WHY.get(name) if isinstance(name, str) else None
            if why is None and isinstance(name, str) and name.startswith("span_"):
                why = "span queries are not allowed"
            detail = f" ({why})" if why else f"; allowed: {', '.join(sorted(_CLAUSES))}"
            self.refuse(here, f"{_shown(name)} is not an allowed query clause{detail}")
        check(self, spec, here, depth)

    # -- field names -------------------------------------------------------------

    def field(self, name: Any, path: str) -> None:
        if not isinstance(name, str) or not name:
            self.refuse(path, f"a field name must be a non-empty string, got {_kind(name)}")
        problem = self.c.field_problem(name)
        if problem is not None:
            self.refuse(path, problem)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


# -- value kinds: each checks one value at one path ------------------------------------


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _number(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not _is_number(value):
        w.refuse(path, f"must be a finite number, got {_kind(value)}")


def _count(w: _Walk, value: Any, path: str, depth: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        w.refuse(path, f"must be a non-negative integer, got {_kind(value)}")


def _text(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, str):
        w.refuse(path, f"must be a string, got {_kind(value)}")


def _flag(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, bool):
        w.refuse(path, f"must be true or false, got {_kind(value)}")


def _scalar(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not (isinstance(value, (str, bool)) or _is_number(value)):
        w.refuse(path, f"must be a string, number or boolean, got {_kind(value)}")


def _scalars(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, list):
        w.refuse(path, f"must be a list of literal values, got {_kind(value)}")
    for i, item in enumerate(value):
        _scalar(w, item, f"{path}[{i}]", depth)


def _vector(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, list) or not value:
        w.refuse(path, f"must be a non-empty list of numbers, got {_kind(value)}")
    for i, item in enumerate(value):
        _number(w, item, f"{path}[{i}]", depth)


def _int_options(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, Mapping):
        w.refuse(path, f"must be an object of integers, got {_kind(value)}")
    for key, item in value.items():
        if key not in ("ef_search", "nprobes"):
            w.refuse(_key_path(path, key), f"{_shown(key)} is not an allowed option here")
        _count(w, item, _key_path(path, key), depth)


def _field(w: _Walk, value: Any, path: str, depth: int) -> None:
    w.field(value, path)


def _field_specs(w: _Walk, value: Any, path: str, depth: int) -> None:
    """``multi_match.fields``: required, so the engine never falls back to every field."""
    if not isinstance(value, list) or not value:
        w.refuse(path, f"must be a non-empty list of field names, got {_kind(value)}")
    for i, spec in enumerate(value):
        here = f"{path}[{i}]"
        if not isinstance(spec, str):
            w.refuse(here, f"a field name must be a string, got {_kind(spec)}")
        name, caret, boost = spec.partition("^")
        w.field(name, here)
        if caret and not _is_boost(boost):
            w.refuse(here, "a field boost must be a non-negative number (title^2)")


def _is_boost(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value >= 0


def _vector_field(w: _Walk, value: Any, path: str, depth: int) -> None:
    vector = w.c.vector_field
    if vector is None:
        w.refuse(path, "knn needs a vector field, and none is configured")
    if value != vector:
        w.refuse(path, f"{_shown(value)} is not the configured vector field {_shown(vector)}")


def _one_query(w: _Walk, value: Any, path: str, depth: int) -> None:
    w.query(value, path, depth + 1)


def _one_or_list(check: Check) -> Check:
    """``check`` for an option that takes one value or a list of them, each item at its index."""

    def each(w: _Walk, value: Any, path: str, depth: int) -> None:
        if isinstance(value, list):
            for i, item in enumerate(value):
                check(w, item, f"{path}[{i}]", depth)
        else:
            check(w, value, path, depth)

    return each


_queries = _one_or_list(_one_query)
"""A clause or a list of clauses (``bool.must``, ``knn.filter``)."""


def _query_list(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, list):
        w.refuse(path, f"must be a list of query clauses, got {_kind(value)}")
    _queries(w, value, path, depth)


# -- clause shapes ---------------------------------------------------------------------

Options = Mapping[str, Check]
_NAMED: Options = {"boost": _number, "_name": _text}


def _options(
    w: _Walk, spec: Any, path: str, depth: int, allowed: Options, required: Iterable[str] = ()
) -> None:
    """An object whose keys must all be in ``allowed``, each value of its kind."""
    if not isinstance(spec, Mapping):
        w.refuse(path, f"must be an object, got {_kind(spec)}")
    for key, value in spec.items():
        check = allowed.get(key) if isinstance(key, str) else None
        if check is None:
            w.refuse(
                _key_path(path, key),
                f"{_shown(key)} is not an allowed option here; allowed: {', '.join(sorted(allowed))}",
            )
        check(w, value, _key_path(path, key), depth)
    for key in required:
        if key not in spec:
            w.refuse(path, f"{_shown(key)} is required")


def _single_entry(
    w: _Walk, spec: Any, path: str, not_object: str, not_one: str | None = None
) -> tuple[Any, Any, str]:
    """The one ``{name: value}`` entry of an object that must have exactly one, and its path.

    The client is told ``not_object`` when ``spec`` is no object and ``not_one``
    (by default the same) when it names none or several; ``{kind}`` and
    ``{count}`` in them become what was sent.
    """
    if not isinstance(spec, Mapping):
        w.refuse(path, not_object.format(kind=_kind(spec)))
    if len(spec) != 1:
        w.refuse(path, (not_object if not_one is None else not_one).format(count=len(spec)))
    ((name, value),) = spec.items()
    return name, value, _key_path(path, name)


def _object(allowed: Options, *, required: Sequence[str] = ()) -> Check:
    table = {**_NAMED, **allowed}

    def check(w: _Walk, spec: Any, path: str, depth: int) -> None:
        _options(w, spec, path, depth, table, required)

    return check


def _per_field(value_key: str, allowed: Options, *, short: bool) -> Check:
    """``{"<field>": value}`` or ``{"<field>": {value_key: value, ...options}}`` (one field)."""
    table = {**_NAMED, value_key: _scalar, **allowed}

    def check(w: _Walk, spec: Any, path: str, depth: int) -> None:
        name, value, here = _single_entry(
            w,
            spec,
            path,
            "must be an object naming one field, got {kind}",
            "must name exactly one field, got {count} keys",
        )
        w.field(name, here)
        if short and not isinstance(value, Mapping):
            _scalar(w, value, here, depth)
        else:
            _options(w, value, here, depth, table, (value_key,) if value_key else ())

    return check


def _range(w: _Walk, spec: Any, path: str, depth: int) -> None:
    bounds: Options = {
        **_NAMED,
        "gt": _scalar,
        "gte": _scalar,
        "lt": _scalar,
        "lte": _scalar,
        "format": _text,
        "time_zone": _text,
        "relation": _text,
    }
    name, value, here = _single_entry(w, spec, path, "must be an object naming exactly one field")
    w.field(name, here)
    _options(w, value, here, depth, bounds)


def _terms(w: _Walk, spec: Any, path: str, depth: int) -> None:
    """``{"<field>": [values], "boost": n}``; a lookup object reads another document."""
    if not isinstance(spec, Mapping):
        w.refuse(path, f"must be an object naming one field, got {_kind(spec)}")
    fields = [k for k in spec if k not in _NAMED]
    if len(fields) != 1:
        w.refuse(path, f"must name exactly one field, got {len(fields)}")
    for key, value in spec.items():
        here = _key_path(path, key)
        if key in _NAMED:
            _NAMED[key](w, value, here, depth)
            continue
        w.field(key, here)
        if isinstance(value, Mapping):
            w.refuse(here, "a terms lookup reads a document of another index; give the values as a list")
        _scalars(w, value, here, depth)


def _knn(w: _Walk, spec: Any, path: str, depth: int) -> None:
    """The kNN query: Elasticsearch shape (``field``/``query_vector``) or OpenSearch's."""
    if isinstance(spec, Mapping) and "query_vector" in spec:
        _ES_KNN(w, spec, path, depth)
        return
    opensearch: Options = {
        "vector": _vector,
        "k": _count,
        "filter": _one_query,
        "min_score": _number,
        "max_distance": _number,
        "boost": _number,
        "method_parameters": _int_options,
    }
    name, value, here = _single_entry(
        w, spec, path, "must be an object naming exactly one vector field"
    )
    _vector_field(w, name, here, depth)
    _options(w, value, here, depth, opensearch, ("vector",))


_ES_KNN = _object(
    {
        "field": _vector_field,
        "query_vector": _vector,
        "k": _count,
        "num_candidates": _count,
        "filter": _queries,
        "similarity": _number,
    },
    required=("field", "query_vector"),
)

_MATCH_COMMON: Options = {
    "analyzer": _text,
    "zero_terms_query": _text,
}
_MATCH: Options = {
    **_MATCH_COMMON,
    "operator": _text,
    "minimum_should_match": _scalar,
    "lenient": _flag,
    "fuzziness": _scalar,
    "prefix_length": _count,
    "max_expansions": _count,
    "fuzzy_transpositions": _flag,
    "auto_generate_synonyms_phrase_query": _flag,
}

_CLAUSES: Mapping[str, Check] = {
    "bool": _object(
        {
            "must": _queries,
            "should": _queries,
            "filter": _queries,
            "must_not": _queries,
            "minimum_should_match": _scalar,
        }
    ),
    "constant_score": _object({"filter": _one_query}, required=("filter",)),
    "dis_max": _object({"queries": _query_list, "tie_breaker": _number}, required=("queries",)),
    "boosting": _object(
        {"positive": _one_query, "negative": _one_query, "negative_boost": _number},
        required=("positive", "negative", "negative_boost"),
    ),
    "nested": _object(
        {"path": _field, "query": _one_query, "score_mode": _text, "ignore_unmapped": _flag},
        required=("path", "query"),
    ),
    "match": _per_field("query", _MATCH, short=True),
    "match_phrase": _per_field("query", {**_MATCH_COMMON, "slop": _count}, short=True),
    "match_phrase_prefix": _per_field(
        "query", {**_MATCH_COMMON, "slop": _count, "max_expansions": _count}, short=True
    ),
    "multi_match": _object(
        {
            **_MATCH,
            "query": _scalar,
            "fields": _field_specs,
            "type": _text,
            "tie_breaker": _number,
            "slop": _count,
        },
        required=("query", "fields"),
    ),
    "term": _per_field("value", {"case_insensitive": _flag}, short=True),
    "prefix": _per_field("value", {"case_insensitive": _flag}, short=True),
    "terms": _terms,
    "range": _range,
    "exists": _object({"field": _field}, required=("field",)),
    "ids": _object({"values": _scalars}, required=("values",)),
    "match_all": _object({}),
    "match_none": _object({}),
    "knn": _knn,
}


# -- body keys -------------------------------------------------------------------------


def _sort_key(w: _Walk, name: Any, path: str) -> None:
    if name in ("_score", "_doc"):
        return
    if name in ("_script", "_geo_distance"):
        w.refuse(path, f"{_shown(name)} sorts are not allowed (scripts and geo points)")
    w.field(name, path)


_SORT_OPTIONS: Options = {
    "order": _text,
    "missing": _scalar,
    "mode": _text,
    "unmapped_type": _text,
    "numeric_type": _text,
    "format": _text,
}


def _sort_one(w: _Walk, item: Any, path: str, depth: int) -> None:
    if isinstance(item, str):
        _sort_key(w, item, path)
        return
    name, how, here = _single_entry(
        w, item, path, "a sort must be a field name or an object naming exactly one field"
    )
    _sort_key(w, name, here)
    if isinstance(how, str):
        return
    _options(w, how, here, depth, _SORT_OPTIONS)


def _hits_total(w: _Walk, value: Any, path: str, depth: int) -> None:
    if not isinstance(value, bool):
        _count(w, value, path, depth)


_BODY: Options = {
    "query": _one_query,
    "post_filter": _one_query,
    "knn": _one_or_list(_ES_KNN),
    "size": _count,
    "from": _count,
    "sort": _one_or_list(_sort_one),
    "track_total_hits": _hits_total,
    "track_scores": _flag,
    "min_score": _number,
    "timeout": _text,
    "search_after": _scalars,
}


# ------------------------------------------------------------------------ public API


class Confinement:
    """The allow-list for one index's configured fields; ``check`` refuses the rest.

    Args:
        fields: field names callers may name (search fields, ``^boost`` allowed,
            plus any filter-only fields). Sub-fields (``title.keyword``) of a
            listed field are allowed too.
        vector_field: the dense vector field ``knn`` clauses may name (none: no knn).
        max_depth: deepest nesting of query clauses.
        max_clauses: most clauses in one request.

    Construction checks the configured names (no wildcards, no ``_`` metadata,
    no commas), so a misconfiguration fails at start, not per request.

    Example:
        >>> Confinement(fields=["title"]).field_problem("secret")
        '"secret" is not a configured field; allowed: title (and their sub-fields)'
    """

    def __init__(
        self,
        *,
        fields: Iterable[str],
        vector_field: str | None = None,
        max_depth: int = MAX_DEPTH,
        max_clauses: int = MAX_CLAUSES,
    ) -> None:
        names: list[str] = []
        for spec in fields:
            if not isinstance(spec, str):
                msg = f"field names must be strings, got {spec!r}"
                raise ConfigurationError(msg)
            names.append(split_boost(spec))
        for name in [*names, *([vector_field] if vector_field is not None else [])]:
            problem = _shape_problem(name)
            if problem is not None:
                msg = f"configured field {name!r}: {problem}"
                raise ConfigurationError(msg)
        if max_depth < 1 or max_clauses < 1:
            msg = "max_depth and max_clauses must be at least 1"
            raise ConfigurationError(msg)
        self.fields = tuple(dict.fromkeys(names))
        self.vector_field = vector_field
        self.max_depth = max_depth
        self.max_clauses = max_clauses

    def __repr__(self) -> str:
        return f"Confinement(fields={list(self.fields)!r}, vector_field={self.vector_field!r})"

    def field_problem(self, name: str) -> str | None:
        """Why ``name`` may not be used in a caller's clause, or ``None`` if it may."""
        problem = _shape_problem(name)
        if problem is not None:
            return f"{_shown(name)}: {problem}"
        if any(name == f or name.startswith(f + ".") for f in self.fields):
            return None
        allowed = ", ".join(self.fields) or "none"
        return f"{_shown(name)} is not a configured field; allowed: {allowed} (and their sub-fields)"

    def check(self, *, filters: Sequence[Any] = (), body: Any = None) -> None:
        """Refuse ``filters`` (clauses, ANDed) and ``body`` (a search body or one clause).

        The body is read the way :func:`~secondpass.connectors._query.caller_body`
        reads it: with any search-body key (``query``, ``sort``, ``aggs``...) it is
        a whole body, otherwise a bare clause. Nothing is changed; what passes is
        sent as is.

        Raises:
            RefusedQueryError: the first part outside the allow-list, by JSON path.
        """
        walk = _Walk(self)
        if not isinstance(filters, (list, tuple)):
            walk.refuse("filters", f"must be a list of query clauses, got {_kind(filters)}")
        for i, clause in enumerate(filters):
            walk.query(clause, f"filters[{i}]", 1)
        if body is None:
            return
        if not isinstance(body, Mapping):
            walk.refuse("body", f"must be an object, got {_kind(body)}")
        if not SEARCH_BODY_KEYS.intersection(body):
            walk.query(body, "body", 1)
            return
        for key, value in body.items():
            here = _key_path("body", key)
            check = _BODY.get(key) if isinstance(key, str) else None
            if check is None:
                why = _BODY_WHY.get(key) if isinstance(key, str) else None
                detail = f" ({why})" if why else f"; allowed: {', '.join(sorted(_BODY))}"
                walk.refuse(here, f"{_shown(key)} is not an allowed body key{detail}")
            check(walk, value, here, 0)


def _shape_problem(name: str) -> str | None:
    """Name rules that hold whatever is configured: no patterns, no metadata, no lists."""
    if not name:
        return "a field name must not be empty"
    if "*" in name or "?" in name:
        return "wildcards in field names are not allowed"
    if "," in name or any(c.isspace() for c in name):
        return "a field name must not contain commas or spaces"
    if any(not part or part.startswith("_") for part in name.split(".")):
        return "metadata fields (starting with _) and empty path segments are not allowed"
    return None
